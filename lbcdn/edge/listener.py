"""A listening socket and the state its connections share.

A Listener is built from its ListenerConfig plus the shared runtime parts (router, pools, access
log). It owns the set of open client connections so shutdown can drain them: stop accepting,
close idle connections, let busy ones finish their exchange (they then close instead of keeping
alive), and abort whatever is left at the deadline.

Connection cap (`max_connections`, fitted under the descriptor limit by lbcdn.fdlimit): a flood
of idle connections must not take the descriptors that upstream connections, cache files,
health checks and DNS need. At the cap, a connection waiting for a request for EVICT_IDLE_S or
more makes room (as nginx reuses connections); with none found among the first EVICT_SCAN, the
new one gets 503 with Retry-After and is closed (lbcdn.refusal). Refusing rather than leaving
clients in the backlog: a client learns at once to come back, and a refusal costs a descriptor
for a second at most. Counted when the loop asks for the protocol (it may accept a batch
before any of them is made): one compare per connection, nothing per request.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final, Protocol, cast

from lbcdn.edge.config import ListenerConfig
from lbcdn.routing.config import ForwardAction, RouteConfig
from lbcdn.edge.cache_hit import KnownHead
from lbcdn.edge.connection import ClientConnection, Limits
from lbcdn.edge.h2connection import H2Connection
from lbcdn.edge.policy import RoutePolicy
from lbcdn.edge.proxy_gate import ProxyGate, proxy_settings
from lbcdn.edge.tls_gate import TlsGate
from lbcdn.tls import ServerTls
from lbcdn.http.head import RequestHead, request_header_kinds
from lbcdn.http.errors import error_response
from lbcdn.http.request_id import new_request_id
from lbcdn.logs import AccessLog, LogLimiter, held_note
from lbcdn.memo import remember
from lbcdn.metrics import RouteMetrics, listener_metrics, route_metrics
from lbcdn.refusal import REFUSING_MAX, RETRY_AFTER, Refusal
from lbcdn.routing import Router
from lbcdn.routing.actions import RouteActions
from lbcdn.routing.conditions import RequestFacts
from lbcdn.upstream.pool import Pool

log = logging.getLogger("lbcdn.edge")

KNOWN_HEADS_MAX: Final = 4096
EVICT_IDLE_S: Final = 1.0   # waiting this long, a connection may make room for a new one
EVICT_SCAN: Final = 64      # connections looked at for one to close (a flood is not O(n^2))

_LOG_LIMIT: Final = LogLimiter()


def alpn_protocols(versions: Sequence[str]) -> list[str]:
    """The ALPN names of a listener's `http_versions`, in the order of preference given."""
    return ["http/1.1" if v == "http1.1" else v for v in versions]


class _Server(Protocol):
    """What is used of the loop's server. Typed by its methods: uvloop's `sockets` is a list
    where asyncio's stubs say tuple, and compiled code checks the declared type."""
    @property
    def sockets(self) -> Sequence[socket.socket]: ...
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


class RoutePlan:
    """What a listener works out once per route: its metrics, its actions beyond one pool
    (lbcdn.routing.actions), its RoutePolicy when it has header actions, CORS, security headers
    or a rate limit (lbcdn.edge.policy), and for a plain forward to one pool (any viewer
    protocol, no HSTS, no body limit, no cache, none of those actions, no policy) the pool, so
    that a request on such a route reads no more of the route's settings."""
    __slots__ = ("route", "metrics", "forward", "actions", "policy")

    def __init__(self, route: RouteConfig, metrics: RouteMetrics, forward: Pool | None,
                 actions: RouteActions | None, policy: RoutePolicy | None) -> None:
        self.route = route
        self.metrics = metrics
        self.forward = forward
        self.actions = actions
        self.policy = policy   # header actions, CORS, security headers, rate limit


class Listener:
    def __init__(self, config: ListenerConfig, router: Router, pools: Mapping[str, Pool],
                 access_log: AccessLog, max_connections: int) -> None:
        self.config = config
        self.max_connections = max_connections   # config's, or lower (lbcdn.control)
        self.limits = Limits(config)
        self.name = config.name
        self.router = router
        self.pools = pools
        self.access_log = access_log
        self.loop = asyncio.get_running_loop()
        self.connections: set[ClientConnection | H2Connection] = set()
        # connections before their PROXY header is read or their TLS handshake done
        self.gates: set[TlsGate | ProxyGate] = set()
        self.refusing: set[Refusal] = set()
        self.metrics = listener_metrics(config.name)
        self.id_header = config.request_id_header.encode()
        self.id_header_lower = self.id_header.lower()
        self.header_kinds = request_header_kinds(self.id_header_lower)
        # a handshake asking for a certificate on demand (lbcdn.acme.manager), set by the
        # daemon: awaits the certificate being served (None) or the reason it is not
        self.acme_demand: Callable[[str, str], Awaitable[str | None]] | None = None
        # what a TLS handshake offers by ALPN, and whether a plain connection may begin with
        # the HTTP/2 preface (h2c with prior knowledge)
        self.h2 = "h2" in config.http_versions
        self.tls = ServerTls(config.tls, alpn=alpn_protocols(config.http_versions)) \
            if config.tls is not None else None
        # trusted networks and `required`, when a PROXY header is read (lbcdn.edge.proxy_gate)
        self.proxy = proxy_settings(config.proxy_protocol)
        self.scheme = "https" if self.tls is not None else "http"
        self._set_port(config.port)
        self._route_metrics: dict[str, RouteMetrics] = {}
        self._plans: dict[int, RoutePlan] = {}   # by id(route): no dataclass field read
        # raw head bytes -> their validated head (see lbcdn.edge.connection, "Known heads")
        self.known_heads: dict[bytes, KnownHead] = {}
        self._server: _Server | None = None

    def update(self, config: ListenerConfig, router: Router, pools: Mapping[str, Pool],
               access_log: AccessLog, max_connections: int) -> None:
        """Reload: new connections see the new config; open ones keep theirs, and exchanges in
        flight keep the route and pool they started with. The socket stays open."""
        self.config = config
        self.max_connections = max_connections
        self.limits = Limits(config)
        self.name = config.name
        self.router = router
        self.pools = pools
        self.access_log = access_log
        self.metrics = listener_metrics(config.name)
        self.id_header = config.request_id_header.encode()
        self.id_header_lower = self.id_header.lower()
        self.header_kinds = request_header_kinds(self.id_header_lower)
        self.proxy = proxy_settings(config.proxy_protocol)
        self.h2 = "h2" in config.http_versions
        if self.tls is not None and config.tls is not None:
            self.tls.alpn = alpn_protocols(config.http_versions)
            self.tls.load(config.tls)  # new handshakes use the new certificates
        self._route_metrics = {}
        self._plans = {}
        self.known_heads = {}

    def remember_head(self, raw: bytes, head: KnownHead) -> None:
        remember(self.known_heads, raw, head, KNOWN_HEADS_MAX)

    def _set_port(self, port: int) -> None:
        self.port = port
        self.forwarded_headers = b"X-Forwarded-Proto: %s\r\nX-Forwarded-Port: %d\r\n" % (
            self.scheme.encode(), port)

    def route_metrics(self, route: str) -> RouteMetrics:
        rm = self._route_metrics.get(route)
        if rm is None:
            rm = self._route_metrics[route] = route_metrics(self.name, route)
        return rm

    def route_plan(self, route: RouteConfig) -> RoutePlan:
        plan = self._plans.get(id(route))
        if plan is None or plan.route is not route:
            action = route.action
            actions = self.router.actions.get(route.name)
            forward = None
            policy = None
            if route.request_headers is not None or route.response_headers is not None or \
                    route.cors is not None or route.security_headers is not None or \
                    route.rate_limit is not None:
                policy = RoutePolicy(route, self.tls is not None)
            if isinstance(action, ForwardAction) and action.pool is not None \
                    and actions is None and policy is None \
                    and route.viewer_protocol == "allow-all" \
                    and route.hsts_max_age_s is None and route.max_body_bytes is None \
                    and route.cache is None and route.mirror is None:
                forward = self.pools[action.pool]
            plan = self._plans[id(route)] = RoutePlan(route, self.route_metrics(route.name),
                                                       forward, actions, policy)
        return plan

    def request_facts(self, head: RequestHead, client: bytes) -> RequestFacts:
        """What the router's header, query, method and source-IP conditions read."""
        return RequestFacts(head.method, head.headers, head.query, client, head.xff,
                            self.config.trusted_proxy_hops)

    async def start(self, reuse_port: bool = False) -> None:
        server = await self.loop.create_server(
            self._connection, self.config.address, self.config.port,
            backlog=self.config.backlog, reuse_address=True, reuse_port=reuse_port or None)
        self._server = cast(_Server, server)
        sock = self._server.sockets[0]
        self._set_port(sock.getsockname()[1])
        log.info("listener %s on %s:%d", self.name, self.config.address, self.port)

    def _connection(self) -> asyncio.Protocol:
        if len(self.connections) + len(self.gates) >= self.max_connections and \
                not self._make_room():
            return self._refusal()
        if self.proxy is not None:
            proxy = ProxyGate(self, self.proxy[0], self.proxy[1])
            self.gates.add(proxy)
            return proxy
        if self.tls is not None:
            gate = TlsGate(self, self.tls)  # TLS starts after it has read the ClientHello
            self.gates.add(gate)
            return gate
        conn = ClientConnection(self)
        self.connections.add(conn)   # counted now: see the module docstring
        # the loop takes any object with the protocol methods; the stubs want the base class
        return cast(asyncio.Protocol, conn)

    def _make_room(self) -> bool:
        """At the cap: close a connection waiting for a request since EVICT_IDLE_S ago."""
        before = self.loop.time() - EVICT_IDLE_S
        idle: ClientConnection | H2Connection | None = None
        looked = 0
        for conn in self.connections:
            if conn.idle_since(before):
                idle = conn
                break
            looked += 1
            if looked >= EVICT_SCAN:
                break
        if idle is None:
            return False
        self._note("reused", "closing idle connections for new ones")
        self.connection_lost(idle)   # its place is taken now, not when the loop says it closed
        idle.close()
        return True

    def _refusal(self) -> asyncio.Protocol:
        self._note("refused", "refusing more")
        answer: bytes | None = None
        if len(self.refusing) < min(REFUSING_MAX, self.max_connections):
            answer = error_response(503, new_request_id(), "too many connections",
                                    extra_headers=RETRY_AFTER)
        return Refusal(self.refusing, self.loop, answer)

    def _note(self, kind: str, what: str) -> None:
        """One daemon-log line, unless one of this kind went out lately (LogLimiter)."""
        held = _LOG_LIMIT.allow(f"{self.name} {kind}", time.monotonic())
        if held is not None:
            log.warning("listener %s: %d connections open (max_connections %d): %s%s",
                        self.name, len(self.connections) + len(self.gates),
                        self.max_connections, what, held_note(held))

    def connection_made(self, conn: ClientConnection | H2Connection) -> None:
        self.connections.add(conn)
        conn.gauge = self.metrics  # the listener may be renamed by a reload meanwhile
        self.metrics.connection_opened()

    def connection_lost(self, conn: ClientConnection | H2Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            conn.gauge.connection_closed()

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def drain(self, deadline: float) -> None:
        """Stop accepting and wait (until the loop time `deadline`) for connections to end."""
        self.stop_accepting()
        for conn in list(self.connections):
            conn.drain()
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        for gate in list(self.gates):
            gate.abort()
        for refused in list(self.refusing):
            refused.abort()
        if self._server is not None:
            await self._server.wait_closed()

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "address": self.config.address, "port": self.port,
                "open_connections": len(self.connections), "protocol": self.scheme}
