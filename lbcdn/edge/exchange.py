"""One request and its response at the edge: route it, answer it or proxy it.

The exchange is driven by events from the client connection (request body chunks, end of
request, client gone, client stopped/started reading) and from the upstream connection (interim,
head, body, done, failed, upgraded, stopped/started reading). It writes to both and decides:
- whether the response has a body (HEAD, 1xx, 204 and 304 carry none) and its length when known;
  how that is framed is the client stream's business (lbcdn.edge.stream);
- framing towards the backend: always HTTP/1.1, request bodies keep their Content-Length or are
  re-chunked;
- the one transparent retry: a reused keep-alive connection that dies before any response byte
  (the backend closed it while we were sending) is retried once on a new connection, provided the
  request body sent so far was small enough to keep (the pool's
  `retries.buffer_body_max_bytes`);
- failures before the response started get the status of lbcdn.http.errors.failure_status (502,
  503 or 504, the same map as the cache's); after it started, a failure can only be signalled
  by closing the client stream.

The exchange writes to its client through a ClientStream (lbcdn.edge.stream) and never sees
the protocol adapter behind it: it hands over a head object and the body's bytes, and the
adapter frames them for its protocol. Its state is one state machine in h11's style, with a
side for each direction: the request (REQ_HEAD ... REQ_FAILED) and the response (WAITING ...
FINISHED), each with a table of the transitions allowed (below).
"""

from __future__ import annotations

from typing import Final, TYPE_CHECKING

from lbcdn import writebatch
from lbcdn.acme import answers
from lbcdn.edge import cache_flow, route_actions
from lbcdn.edge.accounting import record
from lbcdn.edge.mirror import Mirror, start as mirror_start
from lbcdn.edge.stream import PAUSE_UPSTREAM, ClientStream, ExchangeTap
from lbcdn.routing.config import FixedResponseAction, ForwardAction, MirrorConfig, \
    RedirectAction, RouteConfig
from lbcdn.http.date import http_date
from lbcdn.http import grpc
from lbcdn.http.errors import HttpError, error_body, error_fields, failure_status, reason
from lbcdn.http.head import ALLOWED_METHODS, Head, RequestHead, ResponseHead, origin_request, \
    response_has_body
from lbcdn.http.request_id import new_request_id
from lbcdn.routing import redirect_location
from lbcdn.routing.router import normalize_host
from lbcdn.tasks import spawn
from lbcdn.balancer.retry import IDEMPOTENT, Failure, Retry, decide_retry
from lbcdn.health.outlier import Result
from lbcdn.metrics import UPSTREAM_RETRIES
from lbcdn.upstream.connection import UpstreamConnection, UpstreamOwner
from lbcdn.upstream.pool import ConnectError, Pool, Target

if TYPE_CHECKING:
    from lbcdn.edge.listener import RoutePlan
    from lbcdn.edge.policy import RoutePolicy
    from lbcdn.http.headeractions import Values

MAX_TUNNEL_BUFFER: Final = 1024 * 1024

# The exchange's state, h11's style: a state for each side, and for each side a table of the
# transitions allowed; any other is a bug and raises InvalidTransition.
#
# The request side. Ordered: from REQ_DONE on, no more of the request will be read.
REQ_HEAD: Final = 0      # the head arrived; its body is to come
REQ_BODY: Final = 1      # body bytes are arriving
REQ_DISCARD: Final = 2   # the response ended before the body did: the rest is read and dropped
REQ_DONE: Final = 3      # the whole request was read (a request without a body starts here)
REQ_DROPPED: Final = 4   # the whole request was read, the end of its body dropped
REQ_FAILED: Final = 5    # the body broke a rule or timed out: no more of it is read
REQ_STATE_NAMES: Final = ("REQ_HEAD", "REQ_BODY", "REQ_DISCARD", "REQ_DONE", "REQ_DROPPED",
                          "REQ_FAILED")
# allowed next states of each state, as bits (1 << state)
_REQ_NEXT: Final = (
    1 << REQ_BODY | 1 << REQ_DISCARD | 1 << REQ_DONE | 1 << REQ_FAILED,   # REQ_HEAD
    1 << REQ_DISCARD | 1 << REQ_DONE | 1 << REQ_FAILED,                   # REQ_BODY
    1 << REQ_DROPPED | 1 << REQ_FAILED,                                   # REQ_DISCARD
    0,                                                                    # REQ_DONE
    0,                                                                    # REQ_DROPPED
    0,                                                                    # REQ_FAILED
)

# The response side. Ordered: from SENDING on, bytes of the response went out.
WAITING: Final = 0     # no response yet
SWITCHING: Final = 1   # no response yet; the request asked to switch protocols (Upgrade)
SENDING: Final = 2     # the head went out, the body is on its way
SENT: Final = 3        # the whole response went out (the request body may still be arriving)
TUNNEL: Final = 4      # the backend switched protocols: bytes pass both ways
FINISHED: Final = 5    # recorded: nothing more happens
STATE_NAMES: Final = ("WAITING", "SWITCHING", "SENDING", "SENT", "TUNNEL", "FINISHED")
_NEXT: Final = (
    1 << SENDING | 1 << SENT | 1 << FINISHED,                          # WAITING
    1 << WAITING | 1 << SENDING | 1 << SENT | 1 << TUNNEL | 1 << FINISHED,  # SWITCHING
    1 << WAITING | 1 << SENT | 1 << FINISHED,   # SENDING (WAITING: an unsent head taken back)
    1 << FINISHED,                                                     # SENT
    1 << FINISHED,                                                     # TUNNEL
    0,                                                                 # FINISHED
)


class InvalidTransition(Exception):
    pass


def next_state(state: int, new: int) -> int:
    """The response side's `new` state if the table allows it after `state`, else
    InvalidTransition."""
    if not _NEXT[state] >> new & 1:
        raise InvalidTransition(f"exchange: {STATE_NAMES[state]} -> {STATE_NAMES[new]}")
    return new


def next_req_state(state: int, new: int) -> int:
    """The request side's `new` state if the table allows it after `state`, else
    InvalidTransition."""
    if not _REQ_NEXT[state] >> new & 1:
        raise InvalidTransition(
            f"exchange: {REQ_STATE_NAMES[state]} -> {REQ_STATE_NAMES[new]}")
    return new

_ERROR_HEAD: Final = RequestHead(b"-", b"-", b"-", None, b"1.1", [], b"")


_FAILURES: Final = {"connect_refused": Failure.CONNECT, "connect_timeout": Failure.CONNECT,
                    "tls_handshake": Failure.CONNECT, "reset": Failure.RESET,
                    "malformed_response": Failure.BAD_GATEWAY,
                    "response_timeout": Failure.TIMEOUT, "deregistered": Failure.CUT}


def split_host(value: str) -> tuple[str, int | None]:
    """`example.com:8080` -> (example.com, 8080); `[::1]` -> ([::1], None)."""
    if value.startswith("["):
        end = value.find("]")
        host, rest = value[:end + 1], value[end + 1:]
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = value.partition(":")
    return host, int(port) if port.isdigit() and 0 < int(port) < 65536 else None


class Exchange(UpstreamOwner):
    # Class-level defaults: an exchange is created per request, and most of its state keeps
    # the default for most requests; only what differs is stored on the instance.
    route: RouteConfig | None = None
    plan: RoutePlan | None = None
    error: HttpError | None = None
    upstream: UpstreamConnection | None = None
    pool: Pool | None = None
    target: Target | None = None
    status = 0
    state = WAITING        # the response side
    req = REQ_DONE         # the request side (REQ_HEAD when a body is to come)
    body_bytes = 0
    sent_at = 0.0
    upstream_time: float | None = None
    replay_bytes = 0
    retried = False
    reused_conn = False
    out_mark: tuple[list[bytes], int] | None = None
    inflight_target: Target | None = None   # the target this exchange counts as in flight
    tried: list[Target] | None = None       # targets that failed this request (retries)
    retries = 0
    extra_headers = b""   # header lines the route adds to every response (HSTS)
    policy: RoutePolicy | None = None   # the route's header actions, CORS, rate limit
    tap: ExchangeTap | None = None   # the edge cache's view of this exchange
    client_head: RequestHead | None = None   # the request as received, when `head` is rewritten
    mirror: Mirror | None = None     # the copy of this request the route's `mirror` sends

    def __init__(self, conn: ClientStream, head: RequestHead, started: float) -> None:
        self.conn = conn
        self.head = head
        self.listener = conn.listener
        self.started = started
        rid = head.request_id
        self.request_id = rid or new_request_id()
        if head.chunked or head.content_length:
            self.req = REQ_HEAD
        self.body_buf: list[bytes] = []
        # an upgrade request's connection cannot carry another request unless it switches
        self.keep_alive = head.keep_alive
        self.replay: list[bytes] | None = []
        if head.upgrade is not None:
            self.keep_alive = False
            self.state = SWITCHING
            self.tunnel_buf: list[bytes] = []

    @classmethod
    def for_error(cls, conn: ClientStream, err: HttpError, started: float) -> Exchange:
        ex = cls(conn, _ERROR_HEAD, started)
        ex.error = err
        ex.keep_alive = False
        return ex

    # -- start ----------------------------------------------------------------------------
    def start(self) -> None:
        """Called when this exchange becomes the connection's active one."""
        if self.error is not None:
            self.respond_error(self.error)
            return
        head = self.head
        if head.final_recipient:  # OPTIONS with Max-Forwards: 0 (RFC 9110 7.6.2)
            self.respond_local(200, [(b"Allow", ALLOWED_METHODS)], b"")
            return
        listener = self.listener
        if answers.HTTP01 and listener.tls is None and \
                head.path.startswith(answers.HTTP01_PREFIX):  # before routing: ours
            key_authorization = answers.HTTP01.get(
                head.path[len(answers.HTTP01_PREFIX):].decode("latin-1"))
            if key_authorization is not None:
                self.respond_local(200, [(b"Content-Type", b"application/octet-stream")],
                                   key_authorization.encode())
                return
        router = listener.router
        route = self.route = router.match(head.host, head.path, listener.request_facts(
            head, self.conn.client_ip_bytes) if router.conditional else None)
        plan = self.plan = listener.route_plan(route)
        if plan.forward is not None:
            self.forward(plan.forward)
            return
        if route.viewer_protocol != "allow-all" or route.hsts_max_age_s is not None:
            if listener.tls is None:
                if route.viewer_protocol == "https-only":
                    self.respond_error(HttpError(403, "this resource is served over HTTPS only",
                                                 close=False))
                    return
                if route.viewer_protocol == "redirect-to-https":
                    self.redirect_to_https(route.https_redirect_status)
                    return
            elif route.hsts_max_age_s is not None:
                self.extra_headers = b"Strict-Transport-Security: max-age=%d\r\n" % (
                    route.hsts_max_age_s)
        if plan.policy is not None and self._apply_policy(plan.policy):
            return
        limit = route.max_body_bytes
        if limit is not None and (head.content_length or 0) > limit or \
                limit is not None and self.body_bytes > limit:
            self.respond_error(HttpError(413, "request body too large"))
            return
        actions = plan.actions
        if actions is not None and actions.auth is not None and \
                not route_actions.authorized(self, actions.auth):
            return
        self.authorized()

    def authorized(self) -> None:
        """Carry on with the route's action (after basic authentication, if it asks for it)."""
        route = self.route
        plan = self.plan
        assert route is not None and plan is not None
        if route.cache is not None:
            cache_flow.start(self, route.cache)
            return
        action = route.action
        if isinstance(action, ForwardAction):
            if route.mirror is not None and self.head.upgrade is None:
                self._start_mirror(route.mirror)
            route_actions.forward(self, action, plan.actions)
        elif isinstance(action, RedirectAction):
            self.redirect(action)
        elif isinstance(action, FixedResponseAction):
            body = action.body.encode()
            self.respond_local(action.status, [(b"Content-Type", action.content_type.encode())],
                               body)
        else:  # pragma: no cover - the loader admits no other action
            self.respond_error(HttpError(500, "route has no action"))

    def _apply_policy(self, policy: RoutePolicy) -> bool:
        """The route's rate limit, CORS preflight and request header actions
        (lbcdn.edge.policy); True when that answered the request."""
        head = self.head
        refused, lines = policy.admit(head, self.conn.client_ip_bytes)
        if refused is not None:
            self.respond_error(refused)
            return True
        self.extra_headers += lines
        answer = policy.preflight(head)
        if answer is not None:  # answered as the Fetch standard says, with nothing else
            self.respond_local(answer[0], answer[1], b"")
            return True
        self.policy = policy
        self.head = policy.request_head(head, self._values())
        return False

    def _values(self) -> Values:
        """What `#{...}` in a header action stands for here (lbcdn.http.headeractions)."""
        return (self.conn.client_ip_bytes, self.request_id, normalize_host(self.head.host),
                self.listener.scheme.encode())

    def _added_lines(self) -> bytes:
        """The lines this exchange adds to a response it writes itself or from the cache."""
        policy = self.policy
        if policy is None:
            return self.extra_headers
        return self.extra_headers + policy.local_lines(self.head, self._values())

    def _start_mirror(self, config: MirrorConfig) -> None:
        pool = self.listener.pools[config.pool]
        mode = pool.host_header
        mirror = self.mirror = mirror_start(
            config, pool, lambda target: self._mirror_head(target, mode), self.head.chunked)
        if mirror is not None:
            for chunk in self.body_buf:   # what arrived before this exchange became active
                mirror.body(chunk)
            if self.req == REQ_DONE:
                mirror.done()

    def _mirror_head(self, target: Target, mode: bytes) -> bytes:
        """The head of the copy: as the real one would be for `target`, closing after it."""
        return b"".join((self._upstream_lead(target, mode, self.conn.client_ip_bytes),
                         self.request_id, b"\r\nConnection: close\r\n\r\n"))

    def redirect_to_https(self, status: int) -> None:
        head = self.head
        host, _ = split_host(head.host.decode("latin-1"))
        self.respond_local(status, [(b"Location", b"https://%s%s" % (
            host.encode("latin-1"), head.target)), (b"Content-Type", b"text/plain")], b"")

    def redirect(self, action: RedirectAction) -> None:
        head = self.head
        host, port = split_host(head.host.decode("latin-1"))
        location = redirect_location(
            action, scheme=self.listener.scheme, host=host, port=port or self.listener.port,
            path=head.path.decode("latin-1"), query=(head.query or b"").decode("latin-1"))
        if location is None:
            self.respond_error(HttpError(500, "redirect loop", close=False))
            return
        self.respond_local(action.status, [(b"Location", location.encode("latin-1")),
                                           (b"Content-Type", b"text/plain")], b"")

    # -- local answers --------------------------------------------------------------------
    def respond_local(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        has_body = response_has_body(b"GET", status)
        head = Head(status, b"", len(body) if has_body else None,
                    [(b"Server", b"lbcdn"), (b"Date", http_date())] + headers,
                    extra=self._added_lines())
        self._respond(head, (body,) if has_body and self.head.method != b"HEAD" else ())

    def respond_error(self, err: HttpError) -> None:
        state = self.state
        if state == FINISHED:
            return  # answered, or the client left: nobody to tell
        if state >= SENDING and not self._unsend_response():
            self.abort()  # part of the response is on its way: only closing can tell
            return
        if err.close:
            self.keep_alive = False
        if grpc.is_grpc_request(self.head.headers):
            # a gRPC client reads grpc-status, not an HTML page: a trailers-only answer
            self._respond(Head(200, b"", 0, grpc.error_fields(
                err.status, err.detail or reason(err.status).decode()) + [
                    (self.listener.id_header, self.request_id)]), ())
            return
        body = error_body(err.status, self.request_id, err.detail)
        head = Head(err.status, b"", len(body),
                    error_fields(self.request_id, self.listener.id_header), extra=err.headers)
        self._respond(head, () if self.head.method == b"HEAD" else (body,))

    def _respond(self, head: Head, body: tuple[bytes, ...]) -> None:
        """A whole response at once (this exchange's own `head`: it may add to it)."""
        self._end_request_early()
        self.status = head.status
        self.state = next_state(self.state, SENT)
        self.keep_alive = self.conn.respond(head, body, self.keep_alive)
        self._maybe_finish()

    def _unsend_response(self) -> bool:
        """Take back the response written so far, if it is all still in the write batch (a
        backend that sends a good head and a broken body in one packet then gets a 502)."""
        mark = self.out_mark
        if mark is None or self.state != SENDING or not self.conn.take_back(mark):
            return False
        self.out_mark = None
        self.state = next_state(self.state, WAITING)
        return True

    # -- the cache side's surface (lbcdn.edge.cache_*) ---------------------------------------
    def set_tap(self, tap: ExchangeTap | None) -> None:
        """Who hears of this exchange's upstream head and end, and its client's flow."""
        self.tap = tap

    def is_finished(self) -> bool:
        return self.state == FINISHED

    def respond_cached(self, head: Head, body: tuple[bytes, ...] | None) -> None:
        """A whole response from the edge cache: its own `head` (this exchange adds its
        lines), then `body` (None: no body, as for a HEAD request)."""
        added = self._added_lines()
        if added:
            head.extra += added
        self._respond(head, body or ())

    def start_cached(self, head: Head, body: bool) -> None:
        """The head of a response from the edge cache whose body follows (`send_cached`,
        `end_cached`) when `body`."""
        self._end_request_early()
        added = self._added_lines()
        if added:
            head.extra += added
        self.status = head.status
        self.state = next_state(self.state, SENDING)
        self.keep_alive = self.conn.start_response(head, body, self.keep_alive)

    def send_cached(self, parts: list[bytes]) -> None:
        """Body bytes from the cache."""
        self.conn.send_body_parts(parts)

    def end_cached(self) -> None:
        self.conn.end_response()
        self.state = next_state(self.state, SENT)
        self._maybe_finish()

    def origin_answered(self, elapsed: float) -> None:
        """The cache's origin fetch for this exchange got its head after `elapsed` s."""
        if self.upstream_time is None:
            self.upstream_time = elapsed

    def forward_as(self, head: RequestHead, pool: Pool, tap: ExchangeTap) -> None:
        """Proxy `head` (the request as the origin gets it) to `pool`, told to `tap`."""
        self.head = head
        self.tap = tap
        self.forward(pool)

    def answered_as(self, head: RequestHead, lines: bytes) -> None:
        """The origin answered: from here on this exchange (and its access log line) sees the
        request as `head` again, and its response head gets `lines` too."""
        self.head = head
        self.extra_headers += lines

    def _end_request_early(self) -> None:
        """A final response goes out before the request body was read: drop what is left of
        it. A client that asked for 100-continue will probably never send it, so close."""
        if self.req < REQ_DISCARD:
            self.req = next_req_state(self.req, REQ_DISCARD)
            self.body_buf = []
            if self.head.expect_continue:
                self.keep_alive = False

    # -- proxying -------------------------------------------------------------------------
    def forward(self, pool: Pool) -> None:
        """Send the request to a target of `pool`: the policy's pick (sticky, hashed, least
        loaded...), another one on a retry, or a place in the pool's wait queue when every
        target is at its connection limit."""
        if self.pool is None:
            self.pool = pool
            pool.budget.request(writebatch.now())
        head = self.head
        choice = pool.choose(head.headers, head.path, self.conn.client_ip_bytes,
                             self.tried or ())
        if choice is None:
            pool.metrics.error("no_target")
            self.respond_error(HttpError(503, "no target available", close=False))
            return
        if isinstance(choice, str):  # BUSY: every target at max_connections_per_target
            if not pool.enqueue(self._dequeued):
                pool.metrics.error("no_target")
                self.respond_error(HttpError(503, "pool at capacity", close=False))
            return
        target, cookie = choice
        if cookie is not None and self.tried is None:
            self.extra_headers += b"Set-Cookie: " + cookie + b"\r\n"
        self.target = self.inflight_target = target
        pool.started(target)
        # a request that is not retried when a reused connection turns out dead is not
        # written on one the backend has visibly closed already
        conn = pool.take_idle(target, head.method not in IDEMPOTENT)
        if conn is not None:
            self.reused_conn = True
            self.attach(conn)
        else:
            spawn(self._connect(pool, target), "upstream-connect")

    def _dequeued(self, free: bool) -> bool:
        """The pool's wait queue calls back: a slot is free (True) or the wait timed out."""
        pool = self.pool
        if self.state == FINISHED or self.conn.is_closed() or pool is None:
            return False
        if free:
            self.forward(pool)
            return self.inflight_target is not None
        pool.metrics.error("no_target")
        self.respond_error(HttpError(503, "pool at capacity", close=False))
        return False

    async def _connect(self, pool: Pool, target: Target) -> None:
        try:
            conn = await pool.connect(target, (self.conn.client_ip, self.conn.client_port))
        except ConnectError as exc:
            if self.state != FINISHED and self.inflight_target is target:
                self._attempt_failed(exc.kind, None)
            return
        if self.state == FINISHED or self.conn.is_closed() or \
                self.inflight_target is not target:
            pool.release(conn)
            return
        self.reused_conn = False
        self.attach(conn)

    def attach(self, upstream: UpstreamConnection) -> None:
        self.upstream = upstream
        head = self.head
        self.sent_at = writebatch.now()
        # the response timeout waits for the whole request, unless the client waits for a
        # 100 Continue: then the backend is what everyone waits for
        upstream.begin(self, head.method == b"HEAD",
                       sending=self.req < REQ_DONE and not head.expect_continue)
        upstream.write(self._upstream_head(upstream.target))
        buffered, self.body_buf = self.body_buf, []
        if buffered:
            size = 0
            for chunk in buffered:
                size += len(chunk)
                self._send_body(chunk)
            self.conn.body_unbuffered(size)
        if self.req == REQ_DONE and head.chunked:
            upstream.write(b"0\r\n\r\n")

    def _upstream_head(self, target: Target) -> bytes:
        """The request head for `target` (lbcdn.http.head.origin_request), its request id last. All before the id depends only
        on the head, the target, the pool's Host mode, the client's address and the listener
        (its config and port), and keep-alive clients repeat their heads byte for byte (the
        listener's known heads hand out the same RequestHead), so it is kept on the head with
        what it was made from, and made again when any of that differs."""
        head = self.head
        listener = self.listener
        pool = self.pool
        mode = pool.host_header if pool is not None else b"preserve"
        client = self.conn.client_ip_bytes
        config = listener.config
        forwarded = listener.forwarded_headers
        memo = head.upstream_lead
        if memo is None or memo[0] is not target or memo[1] is not mode or \
                memo[2] is not config or memo[3] is not forwarded or memo[4] != client:
            memo = head.upstream_lead = (target, mode, config, forwarded, client,
                                         self._upstream_lead(target, mode, client))
        return b"".join((memo[5], self.request_id, b"\r\n\r\n"))

    def _upstream_lead(self, target: Target, mode: bytes, client: bytes) -> bytes:
        head = self.head
        listener = self.listener
        if mode == b"preserve":
            host = head.host or target.key_bytes
        elif mode == b"target":
            host = target.key_bytes
        else:
            host = mode
        return b"".join(origin_request(
            head.method, head.target, host, head.fwd, [], head, listener.config.x_forwarded_for,
            client, listener.forwarded_headers, listener.id_header, chunked=head.chunked,
            upgrade=head.upgrade))

    def _send_body(self, data: bytes) -> None:
        upstream = self.upstream
        assert upstream is not None
        if self.head.chunked:
            upstream.writelines([b"%x\r\n" % len(data), data, b"\r\n"])
        else:
            upstream.write(data)
        upstream.touch()
        replay = self.replay
        if replay is not None:
            self.replay_bytes += len(data)
            pool = self.pool
            if pool is None or self.replay_bytes > pool.config.retries.buffer_body_max_bytes:
                self.replay = None
            else:
                replay.append(data)

    # -- events from the client connection ------------------------------------------------
    def request_body(self, data: bytes) -> None:
        self.body_bytes += len(data)
        route = self.route
        if route is not None and route.max_body_bytes is not None and \
                self.body_bytes > route.max_body_bytes:
            self.request_broken(HttpError(413, "request body too large"))
            return
        req = self.req
        if req == REQ_HEAD:
            self.req = next_req_state(req, REQ_BODY)
        elif req == REQ_DISCARD:
            return
        mirror = self.mirror
        if mirror is not None:
            mirror.body(data)
        if self.upstream is not None:
            self._send_body(data)
        else:
            self.body_buf.append(data)
            self.conn.body_buffered(len(data))

    def request_done(self) -> None:
        if self.mirror is not None:
            self.mirror.done()
        req = self.req
        if req == REQ_DISCARD:
            self.req = next_req_state(req, REQ_DROPPED)
            self._maybe_finish()
            return
        if req < REQ_DONE:
            self.req = next_req_state(req, REQ_DONE)
        upstream = self.upstream
        if upstream is not None:
            if self.head.chunked:
                upstream.write(b"0\r\n\r\n")
            upstream.sent()

    def request_broken(self, err: HttpError) -> None:
        """The request body broke a rule or timed out: no more of it will be read."""
        self.req = next_req_state(self.req, REQ_FAILED)
        if self.mirror is not None:
            self.mirror.drop()
        self.keep_alive = False
        if not self.conn.request_stopped(self):
            self.error = err  # answered in turn, when it becomes active
            return
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
        self.respond_error(err)

    def client_paused(self, paused: bool) -> None:
        if self.tap is not None:
            self.tap.client_paused(paused)
        upstream = self.upstream
        if upstream is not None:
            if paused:
                upstream.pause_reading()
            else:
                upstream.resume_reading()

    def client_lost(self) -> None:
        if self.tap is not None:
            self.tap.client_lost()
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abort()
        if self.state != FINISHED:
            if self.state != SENT and self.status == 0:
                self.status = 499  # nginx's "client closed request"
            self._record()

    def client_eof(self) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            if upstream.transport.can_write_eof():
                upstream.flush()
                upstream.transport.write_eof()
            else:
                upstream.close()

    def client_tunnel_data(self, data: bytes) -> None:
        self.body_bytes += len(data)  # a tunnel's bytes in, as its access log line counts them
        if self.state == SWITCHING:
            self.tunnel_buf.append(data)
            if sum(map(len, self.tunnel_buf)) > MAX_TUNNEL_BUFFER:
                self.abort()
        elif self.upstream is not None:
            self.upstream.write(data)

    # -- events from the upstream connection ----------------------------------------------
    def upstream_interim(self, resp: ResponseHead) -> None:
        if resp.status == 100 and self.req < REQ_DONE and self.upstream is not None:
            self.upstream.body_follows()
        if self.state < SENDING:
            self.conn.interim(resp)

    def upstream_head(self, resp: ResponseHead) -> None:
        if self.state == SWITCHING and not self.conn.switch_accepted(resp):
            # the upstream connection ends the attempt as malformed_response (a 502)
            raise HttpError(502, "the answer to an upgrade does not complete it")
        if self.tap is not None:
            self.tap.head(resp)
        if self.policy is not None:
            resp = self.policy.response_head(resp, self.head, self._values())
        self.upstream_time = writebatch.now() - self.sent_at
        if self.pool is not None:
            self.pool.metrics.upstream_time(self.upstream_time)
        self.replay = None
        status = self.status = resp.status
        if not resp.keep_alive and self.req < REQ_DONE:
            self.keep_alive = False
        extra = self.extra_headers
        if not resp.has_date:
            # RFC 9110 6.6.1: a recipient with a clock adds the Date a response lacks
            extra += b"Date: " + http_date() + b"\r\n"
        # no field of ours to add: the remembered head as it is
        out = resp if not extra else Head(status, resp.reason, resp.content_length,
                                          wire=resp.lead, extra=extra)
        self.state = next_state(self.state, SENDING)
        self.out_mark = self.conn.checkpoint()
        self.keep_alive = self.conn.start_response(
            out, response_has_body(self.head.method, status),
            self.keep_alive)

    def upstream_body(self, data: bytes) -> None:
        if self.state == TUNNEL:
            self.conn.tunnel_active()
        self.conn.send_body(data)

    def upstream_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.conn.send_trailers(fields)  # an HTTP/2 target's (grpc-status...)

    def upstream_done(self) -> None:
        if self.tap is not None:
            self.tap.done()
        self.upstream = None
        self.conn.end_response()
        self.state = next_state(self.state, SENT)
        self._maybe_finish()

    def upstream_reusable(self) -> bool:
        """Whether the upstream connection may carry another request: only when all of this
        request went out, or the backend would read our next request as this one's body."""
        return self.req == REQ_DONE

    def upstream_failed(self, kind: str) -> None:
        upstream, self.upstream = self.upstream, None
        state = self.state
        if state == TUNNEL:
            self.conn.close()  # the tunnel's backend side closed
            return
        if state == FINISHED:
            return
        pool = self.pool
        if (kind == "reset" and self.reused_conn and not self.retried and upstream is not None
                and not upstream.got_bytes and self.replay is not None and pool is not None
                and self.target is not None and state < SENDING
                and self.head.method in IDEMPOTENT):
            # the backend closed a pooled connection as we reused it: one fresh try on the
            # same target. Only for idempotent methods (RFC 9110 9.2.2): whether the backend
            # closed before or after reading the request cannot be told apart, and a POST
            # must not be applied twice.
            self.retried = True
            self.body_buf = self.replay + self.body_buf
            self.replay = []
            self.replay_bytes = 0
            spawn(self._connect(pool, self.target), "upstream-retry")
            return
        self._attempt_failed(kind, upstream)

    def _attempt_failed(self, kind: str, upstream: UpstreamConnection | None) -> None:
        """One attempt on a target failed: retry it on another target when the retry rules
        and the pool's budget allow, else answer 502/504."""
        pool = self.pool
        target, self.inflight_target = self.inflight_target, None
        failure = _FAILURES.get(kind, Failure.RESET)
        if pool is not None and target is not None:
            # a failed connect ejects the target before the retry picks another one; a cut is
            # the edge's doing, not a failure of the target
            pool.finished(target, 0, self.upstream_time,
                          None if failure is Failure.CUT else
                          Result.CONNECT_FAILURE if failure is Failure.CONNECT else
                          Result.RESET if failure is Failure.RESET else Result.HTTP_5XX)
            pool.metrics.error(kind)  # type: ignore[arg-type]
            cfg = pool.config.retries
            # nothing sent (a failed connect): the body is all still in body_buf
            replayable = upstream is None or (
                self.replay is not None and self.replay_bytes <= cfg.buffer_body_max_bytes)
            retry = decide_retry(self.head.method, failure,
                                 response_started=self.state >= SENDING,
                                 body_replayable=replayable, retries_done=self.retries,
                                 max_retries=cfg.max)
            if retry is not Retry.NO and not self.conn.is_closed():
                # every failed target is excluded, so free retries end with the pool's targets
                tried = (self.tried or []) + [target]
                if not pool.has_other(tried):
                    pass  # nowhere else to go: the failure is the answer
                elif retry is Retry.FREE or pool.budget.try_retry(writebatch.now()):
                    UPSTREAM_RETRIES.labels(pool.name, "retried").inc()
                    if retry is Retry.BUDGETED:
                        self.retries += 1
                    self.tried = tried
                    if upstream is not None:
                        self.body_buf = (self.replay or []) + self.body_buf
                        self.replay = []
                        self.replay_bytes = 0
                    self.upstream_time = None
                    self.forward(pool)
                    return
                else:
                    UPSTREAM_RETRIES.labels(pool.name, "budget_exhausted").inc()
        status = failure_status(kind)
        self.respond_error(HttpError(
            status, ("upstream connect timed out" if kind == "connect_timeout" else
                     "upstream timed out") if status == 504 else
            "upstream connection failed" if failure is Failure.CONNECT else
            "the target was deregistered" if failure is Failure.CUT else
            "bad response from upstream", close=self.req < REQ_DONE))

    def upstream_paused(self, paused: bool) -> None:
        if paused:
            self.conn.pause(PAUSE_UPSTREAM)
        else:
            self.conn.resume(PAUSE_UPSTREAM)

    def upstream_upgraded(self, resp: ResponseHead, rest: bytes) -> None:
        upstream = self.upstream
        if upstream is None:
            self.abort()
            return
        if self.state != SWITCHING or not self.conn.switch_accepted(resp):
            # a 101 to a request that asked for no upgrade: a broken backend (RFC 9110 15.2.2);
            # or one that does not complete the handshake its client stream made
            upstream.tunnel = None
            upstream.abort()
            self.upstream_failed("malformed_response")
            return
        self.status = 101
        self.upstream_time = writebatch.now() - self.sent_at
        if self.pool is not None:
            self.pool.metrics.upstream_time(self.upstream_time)
        lines: list[bytes] = []
        for name, value in resp.headers:
            if name.lower() == b"upgrade":
                lines += (name, b": ", value, b"\r\n")
        conn = self.conn
        conn.start_response(Head(101, resp.reason, None, wire=resp.lead,
                                 extra=b"".join(lines)), False, False)
        # the stream now belongs to the tunnel. The tunnel stays in flight on its target
        # (drained, and cut at the end of a deregistration delay, like a request) and is
        # recorded when it closes (client_lost), with the bytes that went through it both ways.
        self.state = next_state(self.state, TUNNEL)
        conn.become_tunnel(self)
        if rest:
            conn.send_body(rest)
        for chunk in self.tunnel_buf:
            upstream.write(chunk)
        self.tunnel_buf = []

    # -- the end --------------------------------------------------------------------------
    def _maybe_finish(self) -> None:
        if self.state != SENT:
            return
        req = self.req
        if req >= REQ_DONE or not self.keep_alive:
            self._record()
            self.conn.end(self.keep_alive)
        elif req != REQ_DISCARD:
            # finish when the rest of the request body has been read
            self.req = next_req_state(req, REQ_DISCARD)

    def abort(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abort()
        self.keep_alive = False
        if self.state != FINISHED:
            self._record()
        self.conn.abort()

    def _record(self) -> None:
        # the response's bytes: none unless it started (a later one may be under way)
        bytes_out = self.conn.response_bytes() if self.state >= SENDING else 0
        self.state = next_state(self.state, FINISHED)
        attempt, self.inflight_target = self.inflight_target, None
        if attempt is not None and self.pool is not None:
            self.pool.finished(attempt, self.status, self.upstream_time)
        plan = self.plan
        head = self.client_head
        record(self.conn, head if head is not None else self.head,
               plan.metrics if plan is not None else self.listener.route_metrics("-"),
               self.status, self.started, self.body_bytes, bytes_out, self.target,
               self.upstream_time, self.request_id)

