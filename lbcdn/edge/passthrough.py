"""Unsafe methods and requests with bodies on a cache route: the exchange's own proxy path to
the behavior's origin, with what the behavior forwards, the cache headers added, and the URIs the
response invalidates purged when it succeeds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbcdn.cache.headers import Outcome, cache_lines, invalidated_uris, parse_fwd
from lbcdn.edge.stream import ExchangeTap
from lbcdn.http.head import RequestHead, ResponseHead
from lbcdn.routing.router import normalize_host

if TYPE_CHECKING:
    from lbcdn.edge.cache_flow import CacheFlow


class PassThrough(ExchangeTap):
    """Unsafe methods and requests with bodies: the exchange's proxy path to the behavior's
    origin (the first of a group), with the cache headers added and invalidation on success."""

    def __init__(self, flow: CacheFlow) -> None:
        self.flow = flow
        self.ex = flow.ex
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.original = flow.ex.head

    def start(self) -> None:
        flow, ex = self.flow, self.ex
        attempt = flow.rt.plans[flow.behavior.origin][0]
        e = attempt.endpoint
        pool = e.pool if e.pool is not None else ex.listener.pools.get(e.pool_name or "")
        if pool is None:
            flow.on_failed("no_target")
            return
        # the exchange builds the upstream request from its head (Host comes from the pool:
        # literal for URL and bucket origins): a copy with what the behavior forwards
        head = ex.head
        forwarding = flow.behavior.forwarding
        query = forwarding.query_for(head.query)
        target = e.origin_path + head.path + (b"?" + query if query else b"")
        flow.rt.metrics.results["bypass"].inc()
        ex.forward_as(forwarded_head(head, target, query,
                                 forwarding.lines(head.fwd, passthrough=True)), pool, self)

    def head(self, resp: ResponseHead) -> None:
        # the request is not sent again (no retry after a response head): from here on the
        # exchange, and its access log line, see what the client asked
        self.status = resp.status
        self.headers = parse_fwd(resp.fwd)
        self.ex.answered_as(self.original, cache_lines(Outcome.BYPASS, None))  # heads: not ours

    def done(self) -> None:
        head = self.original
        uris = invalidated_uris(head.method, self.status, head.host, head.target, self.headers)
        for host, uri in uris:
            path = uri.partition(b"?")[0]
            self.flow.rt.purge_uri(normalize_host(host), path)

    def client_paused(self, paused: bool) -> None:
        pass

    def client_lost(self) -> None:
        pass


def forwarded_head(head: RequestHead, target: bytes, query: bytes | None,
               fwd: list[bytes]) -> RequestHead:
    """A copy of the request head as the origin gets it: another target (origin path, the
    forwarded query) and the forwarded header lines."""
    return RequestHead(head.method, target, target.partition(b"?")[0], query, head.version,
                       head.headers, head.host, head.content_length, head.chunked,
                       head.keep_alive, head.upgrade, head.expect_continue, fwd, head.xff,
                       head.via, head.request_id, head.user_agent)
