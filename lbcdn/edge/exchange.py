"""One request and its response at the edge: route it, answer it or proxy it.

The exchange is driven by events from the client connection (request body chunks, end of
request, client gone, client stopped/started reading) and from the upstream connection (interim,
head, body, done, failed, upgraded, stopped/started reading). It writes to both and decides:
- framing towards the client: Content-Length kept; an unknown length becomes chunked for HTTP/1.1
  clients and close-delimited for HTTP/1.0 ones; HEAD, 1xx, 204 and 304 carry no body;
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
the protocol adapter behind it; its response side is one state machine (WAITING ... FINISHED
below, with the table of allowed transitions).
"""

from __future__ import annotations

from typing import Final, TYPE_CHECKING

from lbcdn import writebatch
from lbcdn.acme import answers
from lbcdn.edge import cache_flow
from lbcdn.edge.accounting import record
from lbcdn.edge.mirror import Mirror, start as mirror_start
from lbcdn.edge.stream import PAUSE_UPSTREAM, ClientStream, ExchangeTap
from lbcdn.routing.config import FixedResponseAction, ForwardAction, MirrorConfig, \
    RedirectAction, RouteConfig
from lbcdn.http.date import http_date
from lbcdn.http.errors import HttpError, error_response, failure_status, reason
from lbcdn.http.head import ALLOWED_METHODS, RequestHead, ResponseHead, origin_request, \
    response_has_body
from lbcdn.http.request_id import new_request_id
from lbcdn.routing import redirect_location
from lbcdn.tasks import spawn
from lbcdn.balancer.retry import IDEMPOTENT, Failure, Retry, decide_retry
from lbcdn.health.outlier import Result
from lbcdn.metrics import UPSTREAM_RETRIES
from lbcdn.upstream.connection import UpstreamConnection, UpstreamOwner
from lbcdn.upstream.pool import ConnectError, Pool, Target

if TYPE_CHECKING:
    from lbcdn.edge.listener import RoutePlan

MAX_TUNNEL_BUFFER: Final = 1024 * 1024

# The response side of an exchange, one state at a time (h11's style: the states, and a table
# of the transitions allowed; any other is a bug and raises). Ordered: from SENDING on, bytes of
# the response went out.
WAITING: Final = 0     # no response yet
SWITCHING: Final = 1   # no response yet; the request asked to switch protocols (Upgrade)
SENDING: Final = 2     # the head went out, the body is on its way
SENT: Final = 3        # the whole response went out (the request body may still be arriving)
TUNNEL: Final = 4      # the backend switched protocols: bytes pass both ways
FINISHED: Final = 5    # recorded: nothing more happens
STATE_NAMES: Final = ("WAITING", "SWITCHING", "SENDING", "SENT", "TUNNEL", "FINISHED")
# allowed next states of each state, as bits (1 << state)
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
    """`new` if the table allows it after `state`, else InvalidTransition."""
    if not _NEXT[state] >> new & 1:
        raise InvalidTransition(f"exchange: {STATE_NAMES[state]} -> {STATE_NAMES[new]}")
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
    discard = False
    upstream: UpstreamConnection | None = None
    pool: Pool | None = None
    target: Target | None = None
    status = 0
    state = WAITING
    resp_chunked = False
    bytes_out = 0
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
    tap: ExchangeTap | None = None   # the edge cache's view of this exchange
    mirror: Mirror | None = None     # the copy of this request the route's `mirror` sends

    def __init__(self, conn: ClientStream, head: RequestHead, started: float) -> None:
        self.conn = conn
        self.head = head
        self.listener = conn.listener
        self.started = started
        rid = head.request_id
        self.request_id = rid or new_request_id()
        self.body_done = not (head.chunked or head.content_length)
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
        route = self.route = listener.router.match(head.host, head.path)
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
        limit = route.max_body_bytes
        if limit is not None and (head.content_length or 0) > limit or \
                limit is not None and self.body_bytes > limit:
            self.respond_error(HttpError(413, "request body too large"))
            return
        if route.cache is not None:
            cache_flow.start(self, route.cache)
            return
        action = route.action
        if isinstance(action, ForwardAction):
            if route.mirror is not None and head.upgrade is None:
                self._start_mirror(route.mirror)
            self.forward(self.listener.pools[action.pool])
        elif isinstance(action, RedirectAction):
            self.redirect(action)
        elif isinstance(action, FixedResponseAction):
            body = action.body.encode()
            self.respond_local(action.status, [(b"Content-Type", action.content_type.encode())],
                               body)
        else:  # pragma: no cover - the loader admits no other action
            self.respond_error(HttpError(500, "route has no action"))

    def _start_mirror(self, config: MirrorConfig) -> None:
        pool = self.listener.pools[config.pool]
        mode = pool.host_header
        mirror = self.mirror = mirror_start(
            config, pool, lambda target: self._mirror_head(target, mode), self.head.chunked)
        if mirror is not None:
            for chunk in self.body_buf:   # what arrived before this exchange became active
                mirror.body(chunk)
            if self.body_done:
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
        self._end_request_early()
        parts = [b"HTTP/1.1 %d %s\r\nServer: lbcdn\r\nDate: %s\r\n" % (
            status, reason(status), http_date())]
        for name, value in headers:
            parts += [name, b": ", value, b"\r\n"]
        parts.append(self.extra_headers)
        if response_has_body(b"GET", status):
            parts.append(b"Content-Length: %d\r\n" % len(body))
        self._connection_header(parts)
        parts.append(b"\r\n")
        if self.head.method != b"HEAD" and response_has_body(b"GET", status):
            parts.append(body)
        data = b"".join(parts)
        self.status = status
        self.state = next_state(self.state, SENT)
        self.bytes_out += len(data)
        self.conn.respond(data)
        self._maybe_finish()

    def respond_error(self, err: HttpError) -> None:
        state = self.state
        if state == FINISHED:
            return  # answered, or the client left: nobody to tell
        if state >= SENDING and not self._unsend_response():
            self.abort()  # part of the response is on its way: only closing can tell
            return
        self._end_request_early()
        if err.close:
            self.keep_alive = False
        if not self.keep_alive or self.conn.draining:
            self.keep_alive = False
            connection = b"close"
        else:
            connection = b"keep-alive" if self.head.version == b"1.0" else b""
        data = error_response(err.status, self.request_id, err.detail, connection=connection,
                              head_only=self.head.method == b"HEAD",
                              extra_headers=err.headers, id_header=self.listener.id_header)
        self.status = err.status
        self.state = next_state(self.state, SENT)
        self.bytes_out += len(data)
        self.conn.respond(data)
        self._maybe_finish()

    def _unsend_response(self) -> bool:
        """Take back the response written so far, if it is all still in the write batch (a
        backend that sends a good head and a broken body in one packet then gets a 502)."""
        mark = self.out_mark
        if mark is None or self.state != SENDING or not self.conn.take_back(mark):
            return False
        self.out_mark = None
        self.state = next_state(self.state, WAITING)
        self.resp_chunked = False
        self.bytes_out = 0
        return True

    # -- the cache side's surface (lbcdn.edge.cache_*) ---------------------------------------
    def set_tap(self, tap: ExchangeTap | None) -> None:
        """Who hears of this exchange's upstream head and end, and its client's flow."""
        self.tap = tap

    def is_finished(self) -> bool:
        return self.state == FINISHED

    def respond_cached(self, parts: list[bytes], status: int,
                       body: tuple[bytes, ...] | None) -> None:
        """A whole response from the edge cache: `parts` are its head lines (this exchange
        adds its own and the blank line), then `body`."""
        self._end_request_early()
        parts.append(self.extra_headers)
        self._connection_header(parts)
        parts.append(b"\r\n")
        if body:
            parts.extend(body)
        n = 0
        for p in parts:
            n += len(p)
        self.status = status
        self.state = next_state(self.state, SENT)
        self.bytes_out += n
        self.conn.respond_parts(parts)
        self._maybe_finish()

    def start_cached(self, parts: list[bytes], status: int, close_delimited: bool) -> None:
        """The head of a response from the edge cache whose body follows (`send_cached`,
        `end_cached`); `close_delimited`: the body ends with the connection."""
        self._end_request_early()
        if close_delimited:
            self.keep_alive = False
        parts.append(self.extra_headers)
        self._connection_header(parts)
        parts.append(b"\r\n")
        data = b"".join(parts)
        self.status = status
        self.state = next_state(self.state, SENDING)
        self.bytes_out += len(data)
        self.conn.start_response(data)

    def send_cached(self, parts: list[bytes], size: int) -> None:
        """Body bytes from the cache, framed; `size` of them are the body's."""
        self.bytes_out += size
        self.conn.send_body_parts(parts)

    def end_cached(self) -> None:
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
        if not self.body_done:
            self.discard = True
            self.body_buf = []
            if self.head.expect_continue:
                self.keep_alive = False

    def _connection_header(self, parts: list[bytes]) -> None:
        if not self.keep_alive or self.conn.draining:
            self.keep_alive = False
            parts.append(b"Connection: close\r\n")
        elif self.head.version == b"1.0":
            parts.append(b"Connection: keep-alive\r\n")

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
                       sending=not self.body_done and not head.expect_continue)
        upstream.write(self._upstream_head(upstream.target))
        buffered, self.body_buf = self.body_buf, []
        if buffered:
            size = 0
            for chunk in buffered:
                size += len(chunk)
                self._send_body(chunk)
            self.conn.body_unbuffered(size)
        if self.body_done and head.chunked and not self.discard:
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
        if self.discard:
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
        self.body_done = True
        if self.mirror is not None:
            self.mirror.done()
        upstream = self.upstream
        if self.discard:
            self._maybe_finish()
        elif upstream is not None:
            if self.head.chunked:
                upstream.write(b"0\r\n\r\n")
            upstream.sent()

    def request_broken(self, err: HttpError) -> None:
        """The request body broke a rule or timed out: no more of it will be read."""
        self.body_done = True
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
        if resp.status == 100 and not self.body_done and self.upstream is not None:
            self.upstream.body_follows()
        if self.head.version != b"1.1" or self.state >= SENDING:
            return  # HTTP/1.0 clients do not expect 1xx (RFC 9110 15.2)
        self.conn.start_response(resp.lead + b"\r\n")

    def upstream_head(self, resp: ResponseHead) -> None:
        if self.tap is not None:
            self.tap.head(resp)
        self.upstream_time = writebatch.now() - self.sent_at
        if self.pool is not None:
            self.pool.metrics.upstream_time(self.upstream_time)
        self.replay = None
        status = self.status = resp.status
        head = self.head
        if resp.content_length is None and head.method != b"HEAD" and \
                response_has_body(b"GET", status):
            if head.version == b"1.1":
                self.resp_chunked = True
            else:
                self.keep_alive = False  # close-delimited, the only framing 1.0 knows
        if not resp.keep_alive and not self.body_done:
            self.keep_alive = False
        if self.keep_alive and head.version == b"1.1" and not self.resp_chunked and \
                not self.extra_headers and resp.has_date and not self.conn.draining:
            data = resp.whole  # no line of ours to add: the remembered head as it is
        else:
            parts = [resp.lead, self.extra_headers]
            if not resp.has_date:
                # RFC 9110 6.6.1: a recipient with a clock adds the Date a response lacks
                parts += (b"Date: ", http_date(), b"\r\n")
            if self.resp_chunked:
                parts.append(b"Transfer-Encoding: chunked\r\n")
            self._connection_header(parts)
            parts.append(b"\r\n")
            data = b"".join(parts)
        self.state = next_state(self.state, SENDING)
        self.bytes_out += len(data)
        self.out_mark = self.conn.checkpoint()
        self.conn.start_response(data)

    def upstream_body(self, data: bytes) -> None:
        self.bytes_out += len(data)
        if self.state == TUNNEL:
            self.conn.tunnel_active()
            self.conn.send_body(data)
        elif self.resp_chunked:
            self.conn.send_body_parts([b"%x\r\n" % len(data), data, b"\r\n"])
        else:
            self.conn.send_body(data)

    def upstream_done(self) -> None:
        if self.tap is not None:
            self.tap.done()
        self.upstream = None
        if self.resp_chunked:
            self.conn.send_body(b"0\r\n\r\n")
            self.bytes_out += 5
        self.state = next_state(self.state, SENT)
        self._maybe_finish()

    def upstream_reusable(self) -> bool:
        """Whether the upstream connection may carry another request: only when all of this
        request went out, or the backend would read our next request as this one's body."""
        return self.body_done and not self.discard

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
            "bad response from upstream", close=not self.body_done))

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
        if self.state != SWITCHING:
            # a 101 to a request that asked for no upgrade: a broken backend (RFC 9110 15.2.2)
            upstream.tunnel = None
            upstream.abort()
            self.upstream_failed("malformed_response")
            return
        self.status = 101
        self.upstream_time = writebatch.now() - self.sent_at
        if self.pool is not None:
            self.pool.metrics.upstream_time(self.upstream_time)
        parts = [resp.lead, b"Connection: upgrade\r\n"]
        for name, value in resp.headers:
            if name.lower() == b"upgrade":
                parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        data = b"".join(parts)
        self.bytes_out += len(data)
        conn = self.conn
        conn.start_response(data)
        # the stream now belongs to the tunnel. The tunnel stays in flight on its target
        # (drained, and cut at the end of a deregistration delay, like a request) and is
        # recorded when it closes (client_lost), with the bytes that went through it both ways.
        self.state = next_state(self.state, TUNNEL)
        conn.become_tunnel(self)
        if rest:
            self.bytes_out += len(rest)
            conn.send_body(rest)
        for chunk in self.tunnel_buf:
            upstream.write(chunk)
        self.tunnel_buf = []

    # -- the end --------------------------------------------------------------------------
    def _maybe_finish(self) -> None:
        if self.state != SENT:
            return
        if self.body_done or not self.keep_alive:
            self._record()
            self.conn.end(self.keep_alive)
        else:
            self.discard = True  # finish when the rest of the request body has been read

    def abort(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abort()
        self.keep_alive = False
        if self.state != FINISHED:
            self._record()
        self.conn.abort()

    def _record(self) -> None:
        self.state = next_state(self.state, FINISHED)
        attempt, self.inflight_target = self.inflight_target, None
        if attempt is not None and self.pool is not None:
            self.pool.finished(attempt, self.status, self.upstream_time)
        plan = self.plan
        record(self.conn, self.head,
               plan.metrics if plan is not None else self.listener.route_metrics("-"),
               self.status, self.started, self.body_bytes, self.bytes_out, self.target,
               self.upstream_time, self.request_id)

