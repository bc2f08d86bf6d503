"""The edge cache's fast paths for a plain fresh hit, and the cache runtime of this process.

- `fast_hit`: an exchange on a cache route whose request is plain (GET or HEAD, no body, none of
  the fields that need directive parsing, preconditions or ranges) and whose entry is fresh in
  memory is answered here, without a CacheFlow (most requests of a CDN).
- `answer_known`: a known head (lbcdn.edge.connection, "Known heads") on an idle keep-alive
  HTTP/1.1 connection is answered without an Exchange at all, from a HitPlan worked out once per
  head. It is the HTTP/1.1 adapter's shortcut, the one place the cache side makes wire bytes:
  a known head is a request's HTTP/1.1 bytes, and its answer is the HTTP/1.1 answer, stored
  head and body as they are, which the adapter writes.
Both decide exactly as the full flow (lbcdn.edge.cache_flow) would: they only skip work that has
no effect on such a request; anything else goes to the full flow.
- The runtime is per process (`set_runtime`, done by the daemon on start and reload).
"""

from __future__ import annotations

from time import monotonic
from typing import TYPE_CHECKING

from lbcdn.cache.behavior import Distribution
from lbcdn.cache.entry import CachedResponse
from lbcdn.cache.policy import F_NO_CACHE, F_PURGED, RequestDirectives
from lbcdn.cache.runtime import CacheRuntime
from lbcdn.cache.signedurl import Verifier
from lbcdn.edge.accounting import record
from lbcdn.http.head import Head, RequestHead

if TYPE_CHECKING:
    from lbcdn.edge.exchange import Exchange
    from lbcdn.edge.stream import ClientStream
    from lbcdn.metrics import RouteMetrics

_runtime: CacheRuntime | None = None

# Request fields that make a request more than a plain lookup: without any of them (most hits)
# the directive parsing and the precondition / range evaluation are skipped.
DIRECTIVE_FIELDS = frozenset({b"cache-control", b"pragma", b"authorization"})
CONDITIONAL_FIELDS = frozenset({b"if-none-match", b"if-modified-since", b"if-match",
                                 b"if-unmodified-since", b"range"})
PLAIN = RequestDirectives()
# Entries the fast path leaves to the full flow: validated on every use, or soft-purged.
_NOT_FAST = F_NO_CACHE | F_PURGED


def set_runtime(runtime: CacheRuntime | None) -> None:
    global _runtime
    _runtime = runtime


def get_runtime() -> CacheRuntime | None:
    return _runtime


# The hit fast path: Age, Cache-Status and X-Cache of a fresh hit in one formatting operation.
_HIT_LINES = b"Age: %d\r\nCache-Status: lbcdn; hit; ttl=%d\r\nX-Cache: Hit from lbcdn\r\n"
_MAX_AGE = 2147483648
_SLOW_FIELDS = DIRECTIVE_FIELDS | CONDITIONAL_FIELDS


def _plain_key(head: RequestHead, dist: Distribution) -> bytes | None:
    """The primary key of a plain request, or None when the request is not plain.

    Plain: GET or HEAD, no body, none of the fields that need directive parsing,
    preconditions or ranges, a method the behavior allows. Anything else goes to the full
    flow, which decides exactly as before: the fast paths only skip work that has no effect
    on such a request (see CacheFlow.start / found / serve_entry)."""
    method = head.method
    if method == b"GET":
        allowed = "GET"
    elif method == b"HEAD":
        allowed = "HEAD"
    else:
        return None
    if head.has_body:
        return None
    for name, _ in head.headers:
        if name.lower() in _SLOW_FIELDS:
            return None
    path = head.path
    behavior = dist.select(path)
    if allowed not in behavior.policy.allowed_methods:
        return None
    return behavior.keys.primary(method, head.host, path, head.query, head.headers)


def _fresh_hit(rt: CacheRuntime, primary: bytes, head: RequestHead
               ) -> tuple[CachedResponse, int, int] | None:
    """A fresh memory entry for a plain request, with its Age and remaining ttl in whole
    seconds, or None for the full flow (a miss, a stale entry, one that must be validated on
    every use)."""
    entry = rt.memory.lookup(primary, head.headers)
    if not isinstance(entry, CachedResponse):
        return None
    return _fresh(rt, entry)


def _fresh(rt: CacheRuntime, entry: CachedResponse) -> tuple[CachedResponse, int, int] | None:
    if entry.flags & _NOT_FAST or entry.status >= 400:
        return None  # errors too: a custom error response may replace them (CacheFlow.found)
    age, ttl = _age_ttl(entry, rt.clock())
    if ttl <= 0.0:
        return None  # stale: the flow decides (stale-while-revalidate, revalidation)
    rt.metrics.count_hit()
    return entry, int(age) if age < _MAX_AGE else _MAX_AGE, int(ttl)


def _age_ttl(entry: CachedResponse, now: float) -> tuple[float, float]:
    """RFC 9111 4.2.3 current age, and the freshness left, at wall-clock time `now`."""
    resident = now - entry.response_time
    age = entry.initial_age + resident if resident > 0.0 else entry.initial_age
    return age, entry.lifetime - age


def fast_hit(ex: Exchange, rt: CacheRuntime, dist: Distribution) -> bool:
    """Answer a plain fresh hit from memory without a CacheFlow (most requests of a CDN)."""
    head = ex.head
    primary = _plain_key(head, dist)
    if primary is None:
        return False
    hit = _fresh_hit(rt, primary, head)
    if hit is None:
        return False
    entry, age, ttl = hit
    ex.respond_cached(Head(entry.status, b"", entry.size, wire=entry.head,
                           extra=_HIT_LINES % (age, ttl)),
                      entry.chunks if head.method == b"GET" else None)
    return True


# Answers up to this size are kept whole in the HitPlan for the second they are valid in.
_RENDER_MAX = 8192


class HitPlan:
    """How a known head (lbcdn.edge.connection.KnownHead) is looked up: its route's metrics
    and its primary key, worked out once per head and cache runtime; and the last small answer
    made from it. While the memory store's generation is the one the entry was found under, nothing
    stored has changed and the entry is used without a lookup (its LRU position is then
    refreshed by the first lookup after the next change, before any eviction could pick it);
    and from `since` until `until` (wall clock), when the whole seconds of its Age or ttl next
    change, the answer made is the answer to send."""
    __slots__ = ("rt", "metrics", "primary", "entry", "generation", "since", "until",
                 "answer", "status", "signed")

    def __init__(self, rt: CacheRuntime | None, metrics: RouteMetrics | None,
                 primary: bytes) -> None:
        self.rt = rt
        self.metrics = metrics
        self.primary = primary
        self.entry: CachedResponse | None = None
        self.generation = -1
        self.since = self.until = 0.0
        self.status = 0
        self.answer = b""
        # the behavior's trusted keys: the head's signature is checked on every use (its
        # time and address conditions), a refusal is the full flow's to send
        self.signed: Verifier | None = None


NO_PLAN = HitPlan(None, None, b"")


class KnownHead:
    """A head the listener remembers (lbcdn.edge.connection, "Known heads") and what the edge
    cache worked out for it once: `plan` is None until asked, NO_PLAN when the head can never
    be a plain cache hit."""
    __slots__ = ("head", "plan")

    def __init__(self, head: RequestHead) -> None:
        self.head = head
        self.plan: HitPlan | None = None


def answer_known(conn: ClientStream, known: KnownHead) -> bytes | list[bytes] | None:
    """The whole HTTP/1.1 answer to a known head when it is a plain fresh hit from memory, for
    the adapter to write at once (the connection has nothing in progress), with no Exchange;
    the hit is counted and recorded. None: nothing was done, the caller starts an Exchange as
    usual (which may still find the hit)."""
    rt = _runtime
    plan = known.plan
    if plan is None or plan.rt is not rt:
        plan = known.plan = _plan(conn, known.head, rt)
        if plan is NO_PLAN:
            return None
    assert rt is not None and plan.metrics is not None
    head = known.head
    signed = plan.signed
    if signed is not None and signed.check(conn.listener.scheme.encode(), head.host, head.path,
                                           head.query, head.headers, conn.client_ip,
                                           rt.clock()) is not None:
        return None
    started = monotonic()
    generation = rt.memory.generation
    if plan.generation == generation and plan.since <= rt.clock() < plan.until:
        rt.metrics.count_hit()
        answer = plan.answer
        record(conn, head, plan.metrics, plan.status, started, 0, len(answer))
        return answer
    remembered = plan.entry
    if remembered is not None and plan.generation == generation:
        hit = _fresh(rt, remembered)
    else:
        hit = _fresh_hit(rt, plan.primary, head)
    if hit is None:
        return None
    entry, age, ttl = hit
    parts = [entry.head, _HIT_LINES % (age, ttl), b"\r\n"]
    if head.method == b"GET":
        parts.extend(entry.chunks)
    if entry.size <= _RENDER_MAX:  # joined once: kept for the next hits and written as one
        answer = b"".join(parts)
        _keep(rt, plan, entry, age, ttl, answer, generation)
        record(conn, head, plan.metrics, entry.status, started, 0, len(answer))
        return answer
    record(conn, head, plan.metrics, entry.status, started, 0, sum(map(len, parts)))
    return parts


def _keep(rt: CacheRuntime, plan: HitPlan, entry: CachedResponse, age: int, ttl: int,
          answer: bytes, generation: int) -> None:
    """Keep a small answer in its plan until the next whole second of its Age, or of its ttl
    counting down, whichever comes first (zero or less when one already moved: the next
    request works it out again)."""
    plan.entry, plan.generation, plan.status = entry, generation, entry.status
    plan.answer = answer
    now = plan.since = rt.clock()   # a wall clock set back must not keep the answer longer
    exact_age, exact_ttl = _age_ttl(entry, now)
    plan.until = now + min(age + 1 - exact_age, exact_ttl - ttl)


def _plan(conn: ClientStream, head: RequestHead, rt: CacheRuntime | None) -> HitPlan:
    """The HitPlan of a head: NO_PLAN unless it is an HTTP/1.1 keep-alive plain request to a
    cache route that adds nothing of its own (HTTPS redirects, HSTS, a RoutePolicy) to its
    answers."""
    router = conn.listener.router
    # a route chosen by more than Host and path (headers, client address) may differ for the
    # next request with these very head bytes; one behind basic auth checks every request
    if rt is None or head.version != b"1.1" or not head.keep_alive or router.conditional:
        return NO_PLAN
    route = router.match(head.host, head.path)
    if route.cache is None or route.viewer_protocol != "allow-all" or \
            route.hsts_max_age_s is not None or route.basic_auth is not None or \
            conn.listener.route_plan(route).policy is not None:  # a rate limit, CORS...
        return NO_PLAN
    dist = rt.distributions.get(route.cache)
    primary = _plain_key(head, dist) if dist is not None else None
    if primary is None or dist is None:
        return NO_PLAN
    plan = HitPlan(rt, conn.listener.route_metrics(route.name), primary)
    plan.signed = dist.select(head.path).signed
    return plan
