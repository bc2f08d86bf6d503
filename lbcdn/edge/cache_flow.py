"""The cache side of an exchange: a route with `cache:` is answered here instead of by its action.

Job: drive lbcdn.cache's pure decisions with real sockets. For one request: pick the behavior,
build the key, look up memory (then disk, in a thread), and then
- hit (fresh, or stale that the client or stale-while-revalidate allows): write the stored head,
  Age / Cache-Status / X-Cache and the stored chunks; client conditionals and ranges are answered
  from the entry (304 / 412 / 206 / 416), HEAD from the GET entry; stale-while-revalidate starts
  one background revalidation per key;
- stale and not servable: revalidate with the entry's validators; a 304 freshens the entry
  (RefreshHit), a 5xx / timeout / refused connection serves it stale when stale-if-error allows;
- miss: join the collapser; the leader fetches (`OriginFetch`) into a streaming `Fill` that its
  own client, collapsed waiters and newcomers read as bytes arrive; when the fill ends well and
  the response is storable, the entry goes to memory (or disk). Compression happens in the fill,
  so every reader and the stored variant share it.
- unsafe methods and requests with bodies pass through the exchange's own proxy path (a tap adds
  the cache headers and, on success, invalidates the target URI, Location and Content-Location).

Rules:
- The origin request is built here: origin path + path, and of the viewer's query, headers and
  cookies only what the behavior's Forwarding lets through (lbcdn.cache.forwarding: the cache
  key plus the origin request policy, so nothing the key ignores can shape a stored answer),
  then the edge's own fields; a pass-through gets the same filter, with the fields its origin
  needs to answer it. HEAD misses fetch with GET so the answer can be stored.
- An origin fetch outlives its client when others read it or the cache wants it; a pass-through
  fetch whose only client left is aborted. A storable fill is read at origin speed (bounded by the
  largest object a tier keeps); a pass-through one pauses the origin while its client is slow.
- The runtime is per process (`set_runtime`, done by the daemon on start and reload).
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import TYPE_CHECKING, Protocol

from lbcdn.cache.behavior import Behavior, Distribution
from lbcdn.cache.collapse import Lead, Result, Waiter
from lbcdn.cache.compress import VARIANT_FIELDS, Compressor, add_vary, compressed_headers, \
    eligible, negotiate
from lbcdn.cache.conditional import FULL, RangeKind, plan_range, precondition
from lbcdn.cache.directives import get_first
from lbcdn.cache.entry import CachedResponse, build, freshened, serialize_head, with_date
from lbcdn.cache.headers import (Outcome, cache_lines, cache_status, invalidated_uris,
                                 not_modified_headers, serialize, storable_headers,
                                 validator_matches, x_cache)
from lbcdn.cache.key import variant_key
from lbcdn.cache.policy import (F_NO_CACHE, F_PURGED, RequestDirectives, ResponseMeta, Use,
                                 evaluate,
                                is_origin_error, not_storable, parse_request, parse_response,
                                removed_fields, usable_on_error, validators)
from lbcdn.cache.runtime import Attempt, CacheRuntime
from lbcdn.edge.accounting import record
from lbcdn.cache.store import Fill, FillInfo, FillReader, Miss
from lbcdn.http.errors import HttpError, reason
from lbcdn.http.head import RequestHead, ResponseHead, forwarded_for
from lbcdn.routing.router import normalize_host
from lbcdn.tasks import spawn
from lbcdn.upstream.connection import UpstreamConnection, UpstreamOwner
from lbcdn.upstream.pool import ConnectError, Pool, Target

if TYPE_CHECKING:
    from lbcdn.edge.exchange import Exchange
    from lbcdn.edge.stream import ClientStream
    from lbcdn.metrics import RouteMetrics

_runtime: CacheRuntime | None = None

# Request fields that make a request more than a plain lookup: without any of them (most hits)
# the directive parsing and the precondition / range evaluation are skipped.
_DIRECTIVE_FIELDS = frozenset({b"cache-control", b"pragma", b"authorization"})
_CONDITIONAL_FIELDS = frozenset({b"if-none-match", b"if-modified-since", b"if-match",
                                 b"if-unmodified-since", b"range"})
_PLAIN = RequestDirectives()
# Entries the fast path leaves to the full flow: validated on every use, or soft-purged.
_NOT_FAST = F_NO_CACHE | F_PURGED


class ExchangeTap(Protocol):
    """What an exchange tells the cache side of it (Exchange.tap)."""
    def head(self, ex: Exchange, resp: ResponseHead) -> None: ...
    def done(self, ex: Exchange) -> None: ...
    def client_paused(self, paused: bool) -> None: ...
    def client_lost(self) -> None: ...


def set_runtime(runtime: CacheRuntime | None) -> None:
    global _runtime
    _runtime = runtime


def get_runtime() -> CacheRuntime | None:
    return _runtime


def start(ex: Exchange, distribution: str) -> None:
    """Entry point from Exchange.start() for a route with `cache:`."""
    rt = _runtime
    dist = rt.distributions.get(distribution) if rt is not None else None
    if rt is None or dist is None:
        ex.respond_error(HttpError(503, "edge cache not configured", close=False))
        return
    if not _fast_hit(ex, rt, dist):
        CacheFlow(ex, rt, dist).start()


# The hit fast path: Age, Cache-Status and X-Cache of a fresh hit in one formatting operation.
_HIT_LINES = b"Age: %d\r\nCache-Status: lbcdn; hit; ttl=%d\r\nX-Cache: Hit from lbcdn\r\n"
_MAX_AGE = 2147483648
_SLOW_FIELDS = _DIRECTIVE_FIELDS | _CONDITIONAL_FIELDS


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
    if entry.flags & _NOT_FAST:
        return None
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


def _fast_hit(ex: Exchange, rt: CacheRuntime, dist: Distribution) -> bool:
    """Answer a plain fresh hit from memory without a CacheFlow (most requests of a CDN)."""
    head = ex.head
    primary = _plain_key(head, dist)
    if primary is None:
        return False
    hit = _fresh_hit(rt, primary, head)
    if hit is None:
        return False
    entry, age, ttl = hit
    ex.respond_cached([entry.head, _HIT_LINES % (age, ttl)], entry.status,
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
                 "answer", "status")

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


NO_PLAN = HitPlan(None, None, b"")


class KnownHead:
    """A head the listener remembers (lbcdn.edge.connection, "Known heads") and what the edge
    cache worked out for it once: `plan` is None until asked, NO_PLAN when the head can never
    be a plain cache hit."""
    __slots__ = ("head", "plan")

    def __init__(self, head: RequestHead) -> None:
        self.head = head
        self.plan: HitPlan | None = None


def answer_known(conn: ClientStream, known: KnownHead) -> bool:
    """Answer a known head from memory when it is a plain fresh hit, with no Exchange: the
    connection has nothing in progress and no write batch is open, so the answer goes out at
    once. False: nothing was done, the caller starts an Exchange as usual (which may still
    find the hit)."""
    rt = _runtime
    plan = known.plan
    if plan is None or plan.rt is not rt:
        plan = known.plan = _plan(conn, known.head, rt)
        if plan is NO_PLAN:
            return False
    assert rt is not None and plan.metrics is not None
    head = known.head
    started = monotonic()
    generation = rt.memory.generation
    if plan.generation == generation and plan.since <= rt.clock() < plan.until:
        rt.metrics.count_hit()
        answer = plan.answer
        conn.respond(answer)
        record(conn, head, plan.metrics, plan.status, started, 0, len(answer))
        return True
    remembered = plan.entry
    if remembered is not None and plan.generation == generation:
        hit = _fresh(rt, remembered)
    else:
        hit = _fresh_hit(rt, plan.primary, head)
    if hit is None:
        return False
    entry, age, ttl = hit
    parts = [entry.head, _HIT_LINES % (age, ttl), b"\r\n"]
    if head.method == b"GET":
        parts.extend(entry.chunks)
    if entry.size <= _RENDER_MAX:  # joined once: kept for the next hits and written as one
        answer = b"".join(parts)
        _keep(rt, plan, entry, age, ttl, answer, generation)
        conn.respond(answer)
        n = len(answer)
    else:
        conn.respond_parts(parts)
        n = sum(map(len, parts))
    record(conn, head, plan.metrics, entry.status, started, 0, n)
    return True


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
    cache route that adds nothing of its own (HTTPS redirects, HSTS) to its answers."""
    if rt is None or head.version != b"1.1" or not head.keep_alive:
        return NO_PLAN
    route = conn.listener.router.match(head.host, head.path)
    if route.cache is None or route.viewer_protocol != "allow-all" or \
            route.hsts_max_age_s is not None:
        return NO_PLAN
    dist = rt.distributions.get(route.cache)
    primary = _plain_key(head, dist) if dist is not None else None
    if primary is None:
        return NO_PLAN
    return HitPlan(rt, conn.listener.route_metrics(route.name), primary)


def parse_fwd(fwd: list[bytes]) -> list[tuple[bytes, bytes]]:
    """A ResponseHead's `fwd` lines back to (name, value) pairs."""
    out: list[tuple[bytes, bytes]] = []
    for line in b"".join(fwd).split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            out.append((name, value.strip(b" \t")))
    return out


def _with_status(head: bytes, status: int) -> bytes:
    """A serialized head with another status line (custom error responses)."""
    return b"HTTP/1.1 %d %s" % (status, reason(status)) + head[head.index(b"\r\n"):]


class CacheFlow:
    """One request through the cache (see the module docstring)."""

    entry: CachedResponse | None = None       # the stale entry being revalidated
    waiter: Waiter | None = None
    timer: asyncio.TimerHandle | None = None
    sender: FillSender | None = None
    fetch: OriginFetch | None = None
    lost = False
    conditional = False

    def __init__(self, ex: Exchange, rt: CacheRuntime, dist: Distribution,
                 path: bytes | None = None, status_override: int | None = None) -> None:
        self.ex = ex
        self.rt = rt
        self.dist = dist
        head = ex.head
        self.path = path if path is not None else head.path
        self.query = head.query if path is None else None
        self.status_override = status_override
        self.behavior: Behavior = dist.select(self.path)
        self.policy = self.behavior.policy
        self.method = head.method
        self.req: RequestDirectives = RequestDirectives()
        self.key = b""
        self.outcome = Outcome.MISS

    # -- start -------------------------------------------------------------------------------
    def start(self) -> None:
        ex, head, policy = self.ex, self.ex.head, self.policy
        method = head.method.decode("latin-1")
        if method not in policy.allowed_methods:
            ex.respond_local(405, [(b"Allow", ", ".join(policy.allowed_methods).encode()),
                                   (b"Content-Type", b"text/plain")] + self._lines(Outcome.ERROR),
                             b"method not allowed\n")
            return
        cacheable = method in ("GET", "HEAD") or method in policy.cached_methods
        if not cacheable or head.has_body:
            PassThrough(self).start()
            return
        ex.set_tap(self)
        names = {n.lower() for n, _ in head.headers}
        self.req = parse_request(head.headers) if not names.isdisjoint(_DIRECTIVE_FIELDS) \
            else _PLAIN
        self.conditional = not names.isdisjoint(_CONDITIONAL_FIELDS)
        self.key = self.behavior.keys.primary(head.method, head.host, self.path, self.query,
                                              head.headers)
        found = self.rt.memory.lookup(self.key, head.headers)
        if isinstance(found, CachedResponse):
            self.found(found)
        elif self.rt.disk is not None:
            spawn(self._disk_lookup(found), "cache-disk-lookup")
        else:
            self.miss(found)

    @staticmethod
    def _lines(outcome: Outcome) -> list[tuple[bytes, bytes]]:
        return [(b"Cache-Status", cache_status(outcome)), (b"X-Cache", x_cache(outcome))]

    async def _disk_lookup(self, reason_: str) -> None:
        disk = self.rt.disk
        assert disk is not None
        entry = await asyncio.to_thread(disk.lookup, self.key, self.ex.head.headers)
        if self.lost:
            return
        if entry is None:
            self.miss(reason_)
            return
        self.rt.memory.put(entry)  # promote: the next hit is served without a thread hop
        self.found(entry)

    # -- hits --------------------------------------------------------------------------------
    def found(self, entry: CachedResponse) -> None:
        now = self.rt.clock()
        d = evaluate(entry, self.req, now)
        use = d.use
        if use is Use.FRESH:
            self.rt.metrics.count_hit()
            self.serve_entry(entry, Outcome.HIT, d.age, d.ttl)
        elif use is Use.STALE or use is Use.STALE_REVALIDATE:
            self.rt.metrics.results["stale"].inc()
            self.serve_entry(entry, Outcome.STALE_HIT, d.age, d.ttl)
            if use is Use.STALE_REVALIDATE:
                background_refresh(self.rt, self.dist, self.behavior, self.ex, entry,
                                   self.path, self.query)
        elif use is Use.GATEWAY_TIMEOUT:
            self.gateway_timeout()
        else:
            self.entry = entry
            # RFC 9211 2.2: a response was selected but could not be used as it was
            self.outcome = Outcome.REQUEST if self.req.no_cache else Outcome.STALE_MISS
            self.start_fetch(conditional=entry)

    def gateway_timeout(self) -> None:
        self.ex.respond_local(504, [(b"Content-Type", b"text/plain")]
                              + self._lines(Outcome.MISS), b"not in cache (only-if-cached)\n")

    def serve_entry(self, entry: CachedResponse, outcome: Outcome, age: float | None,
                    ttl: float | None, *, stored: bool = False, fwd_status: int | None = None
                    ) -> None:
        ex = self.ex
        head = ex.head
        method = head.method
        lines = cache_lines(outcome, age, ttl=ttl, stored=stored, fwd_status=fwd_status)
        status = self.status_override or entry.status
        if self.conditional and 200 <= entry.status < 300 and self.status_override is None:
            pre = precondition(method, head.headers, entry.etag, entry.last_modified,
                               entry.date, entry.response_time)
            if pre == 304:
                parts = [b"HTTP/1.1 304 Not Modified\r\n",
                         serialize(not_modified_headers(entry.headers)), lines]
                self._finish_head(parts, 304, None)
                return
            if pre == 412:
                ex.respond_local(412, [(b"Content-Type", b"text/plain")]
                                 + self._lines(outcome), b"precondition failed\n")
                return
        if self.conditional and self.status_override is None:
            plan = plan_range(method, entry.status, head.headers, entry.size, entry.etag,
                              entry.last_modified, entry.date)
        else:
            plan = FULL
        if plan.kind is RangeKind.FULL:
            first = entry.head if self.status_override is None else _with_status(entry.head,
                                                                                status)
            parts = [first, lines]
            if method == b"HEAD":
                self._finish_head(parts, status, None)
                return
            self._finish_head(parts, status, entry.chunks, entry.size)
            return
        kept = [(n, v) for n, v in with_date(entry.headers, entry.response_time)
                if n.lower() != b"content-range"]
        if plan.kind is RangeKind.UNSATISFIABLE:
            parts = [serialize_head(416, kept + [(b"Content-Range", plan.content_range(
                entry.size))], 0), lines]
            self._finish_head(parts, 416, (), 0)
            return
        parts = [serialize_head(206, kept + [(b"Content-Range", plan.content_range(
            entry.size))], plan.length), lines]
        if method == b"HEAD":
            self._finish_head(parts, 206, None)
            return
        self._finish_head(parts, 206, (entry.body[plan.start:plan.end + 1],), plan.length)

    def _finish_head(self, parts: list[bytes], status: int,
                     chunks: tuple[bytes, ...] | None, size: int = 0) -> None:
        """Write a complete response from cache (head parts without the final CRLF)."""
        ex = self.ex
        ex.set_tap(None)
        ex.respond_cached(parts, status, chunks)

    # -- misses ------------------------------------------------------------------------------
    def miss(self, why: str) -> None:
        if self.req.only_if_cached:
            self.gateway_timeout()
            return
        if self.req.no_cache:
            self.outcome = Outcome.REQUEST
        elif why == Miss.URI:
            self.outcome = Outcome.URI_MISS
        elif why == Miss.VARY:
            self.outcome = Outcome.VARY_MISS
        if not self.policy.collapse:
            self.start_fetch()
            return
        loop = asyncio.get_running_loop()
        joined = self.rt.collapser.join(self.key, loop.time(), self.policy.lock_timeout_s,
                                        self._collapsed)
        if isinstance(joined, Lead):
            self.start_fetch(lead=joined)
        elif isinstance(joined, Fill):
            self.rt.metrics.collapsed_shared.inc()
            self.follow(joined, Outcome.HIT, collapsed=True)
        else:
            self.waiter = joined
            self.timer = loop.call_at(joined.deadline, self.rt.collapser.expire,
                                      joined.deadline)

    def _collapsed(self, result: Result) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.waiter = None
        if self.lost:
            return
        if isinstance(result, Fill):
            if self.follow(result, Outcome.HIT, collapsed=True):
                self.rt.metrics.collapsed_shared.inc()
                return
        self.rt.metrics.collapsed_alone.inc()
        self.start_fetch()

    def follow(self, fill: Fill, outcome: Outcome, *, collapsed: bool = False,
               stored: bool = False) -> bool:
        """Answer from a fill in progress; False when it cannot answer this request."""
        info = fill.info
        if info is None or variant_key(info.vary, self.ex.head.headers) != info.variant:
            return False
        reader = fill.reader()
        if reader is None:
            return False
        self.sender = FillSender(self, fill, reader, outcome, collapsed=collapsed,
                                 stored=stored)
        self.sender.start()
        return True

    def start_fetch(self, *, lead: Lead | None = None,
                    conditional: CachedResponse | None = None) -> None:
        job = MissJob(self.rt, self.dist, self.behavior, self.ex, self.key, self.path,
                      self.query, lead=lead, conditional=conditional, client=self)
        job.start()

    # -- results of a MissJob for our client --------------------------------------------------
    def on_not_modified(self, entry: CachedResponse) -> None:
        d = evaluate(entry, self.req, self.rt.clock())
        self.serve_entry(entry, Outcome.REFRESH_HIT, d.age, d.ttl, stored=True)

    def on_stale_on_error(self, entry: CachedResponse, status: int | None) -> None:
        d = evaluate(entry, self.req, self.rt.clock())
        self.rt.metrics.results["stale"].inc()
        self.serve_entry(entry, Outcome.STALE_ON_ERROR, d.age, d.ttl, fwd_status=status)

    def on_failed(self, kind: str) -> None:
        if self.lost or self.ex.is_finished():
            return
        self.rt.metrics.results["error"].inc()
        status = 504 if kind in ("connect_timeout", "response_timeout") else (
            503 if kind == "no_target" else 502)
        lines = self._lines(Outcome.ERROR)
        err = HttpError(status, "origin failed" if status != 504 else "origin timed out",
                        close=False, headers=b"".join(b"%s: %s\r\n" % p for p in lines))
        self.ex.respond_error(err)

    def on_error_page(self, page: bytes, code: int) -> None:
        """A custom error response: the page, fetched through the cache, with `code`."""
        if self.lost:
            return
        CacheFlow(self.ex, self.rt, self.dist, path=page, status_override=code).start()

    # -- tap: events from the exchange --------------------------------------------------------
    def head(self, ex: Exchange, resp: ResponseHead) -> None:
        pass

    def done(self, ex: Exchange) -> None:
        pass

    def client_paused(self, paused: bool) -> None:
        sender = self.sender
        if sender is not None:
            sender.client_paused(paused)

    def client_lost(self) -> None:
        self.lost = True
        if self.waiter is not None:
            self.rt.collapser.cancel(self.waiter)
            self.waiter = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.sender is not None:
            self.sender.close()


class FillSender:
    """Writes a fill to one client as it grows."""

    def __init__(self, flow: CacheFlow, fill: Fill, reader: FillReader, outcome: Outcome,
                 *, collapsed: bool, stored: bool) -> None:
        self.flow = flow
        self.ex = flow.ex
        self.fill = fill
        self.reader = reader
        self.outcome = outcome
        self.collapsed = collapsed
        self.stored = stored
        self.chunked = False
        self.head_only = False
        self.closed = False
        self.paused = False
        self.job: MissJob | None = None

    def start(self) -> None:
        ex, fill = self.ex, self.fill
        info = fill.info
        assert info is not None
        ex.set_tap(self.flow)
        status = self.flow.status_override or fill.status
        head = info.head if self.flow.status_override is None else _with_status(info.head,
                                                                                status)
        parts = [head, cache_lines(self.outcome, info.age, stored=self.stored,
                                   collapsed=self.collapsed)]
        method = ex.head.method
        if self.flow.status_override is None and fill.status == 200:
            pre = precondition(method, ex.head.headers,
                               get_first(fill.headers, b"etag"), None, None, 0.0)
            if pre == 304:
                parts[0] = b"HTTP/1.1 304 Not Modified\r\n" + serialize(
                    not_modified_headers(fill.headers))
                status = 304
                self.head_only = True
        has_body = not (status < 200 or status in (204, 304))
        if method == b"HEAD" or not has_body:
            self.head_only = True
            if info.length is not None and has_body:
                parts.append(b"Content-Length: %d\r\n" % info.length)
        elif info.length is not None:
            parts.append(b"Content-Length: %d\r\n" % info.length)
        elif ex.head.version == b"1.1":
            parts.append(b"Transfer-Encoding: chunked\r\n")
            self.chunked = True
        ex.start_cached(parts, status, close_delimited=not self.head_only and
                        info.length is None and not self.chunked)
        if self.head_only:
            self.close()
            ex.end_cached()
            return
        fill.listen(self.on_fill)
        self.on_fill(fill)

    def on_fill(self, fill: Fill) -> None:
        if self.closed:
            return
        ex = self.ex
        chunks = self.reader.take()
        if chunks:
            n = 0
            for c in chunks:
                n += len(c)
            if self.chunked:
                out: list[bytes] = []
                for c in chunks:
                    out += (b"%x\r\n" % len(c), c, b"\r\n")
                ex.send_cached(out, n)
            else:
                ex.send_cached(chunks, n)
        if self.reader.at_end:
            self.close()
            if fill.error is not None:
                ex.abort()  # the response has started: only closing can tell
                return
            if self.chunked:
                ex.send_cached([b"0\r\n\r\n"], 5)
            ex.end_cached()

    def client_paused(self, paused: bool) -> None:
        self.paused = paused
        if self.job is not None:
            self.job.client_paused(paused)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.fill.unlisten(self.on_fill)
            self.fill.close_reader(self.reader)
            if self.job is not None:
                self.job.sender_gone()


class MissJob:
    """One origin fetch for the cache: a miss (leader or alone), a revalidation, or a
    background refresh (no client). Owns the fill and stores the entry when it ends well."""

    fill: Fill | None = None
    compressor: Compressor | None = None
    meta: ResponseMeta | None = None
    sender: FillSender | None = None
    storable = False
    status = 0

    def __init__(self, rt: CacheRuntime, dist: Distribution, behavior: Behavior, ex: Exchange,
                 key: bytes, path: bytes, query: bytes | None, *, lead: Lead | None = None,
                 conditional: CachedResponse | None = None,
                 client: CacheFlow | None = None) -> None:
        self.rt = rt
        self.dist = dist
        self.behavior = behavior
        self.policy = behavior.policy
        self.ex = ex
        self.head = ex.head
        self.key = key
        self.path = path
        self.query = query
        self.lead = lead
        self.conditional = conditional
        self.client = client
        self.req = client.req if client is not None else RequestDirectives()
        self.request_time = 0.0
        self.headers: list[tuple[bytes, bytes]] = []

    def start(self) -> None:
        extra = validators(self.conditional) if self.conditional is not None else []
        self.request_time = self.rt.clock()
        forwarding = self.behavior.forwarding
        self.fetch = OriginFetch(self.rt, self.rt.plans[self.behavior.origin], self.ex,
                                 self.path, forwarding.query_for(self.query),
                                 forwarding.lines(self.head.fwd, passthrough=False), extra,
                                 self)
        self.fetch.start()

    # -- events from the fetch ---------------------------------------------------------------
    def fetch_head(self, resp: ResponseHead, headers: list[tuple[bytes, bytes]]) -> None:
        rt = self.rt
        now = rt.clock()
        self.status = status = resp.status
        client = self.client
        entry = self.conditional
        if entry is not None:
            if status == 304:
                rt.metrics.revalidations["not_modified"].inc()
                self.fetch.discard()
                keep = VARIANT_FIELDS if get_first(entry.headers, b"content-encoding") \
                    else frozenset()
                if validator_matches(entry.etag, entry.last_modified_raw, headers):
                    entry = freshened(entry, headers, self.request_time, now, self.policy, now,
                                      keep)
                    rt.store(entry)
                else:
                    # the 304 is for another representation: use it once, keep ours as is
                    entry = freshened(entry, headers, self.request_time, now, self.policy,
                                      now, keep)
                self._release()
                if client is not None:
                    rt.metrics.results["refresh_hit"].inc()
                    client.on_not_modified(entry)
                return
            if is_origin_error(status) and usable_on_error(entry, self.req, now):
                rt.metrics.revalidations["error"].inc()
                self.fetch.abort()
                self._release()
                if client is not None:
                    client.on_stale_on_error(entry, status)
                return
            rt.metrics.revalidations["modified"].inc()
        if status >= 400 and client is not None and client.status_override is None:
            err = self.dist.errors.get(status)
            if err is not None and err.response_page_path is not None:
                self.fetch.abort()
                self._release()
                client.on_error_page(err.response_page_path.encode(),
                                     err.response_code or status)
                return
        method = b"GET" if self.head.method == b"HEAD" else self.head.method
        meta = self.meta = parse_response(status, headers)
        why = not_storable(method, self.req, meta, self.policy)
        served = storable_headers(headers, removed_fields(meta))
        length = resp.content_length
        if eligible(self.policy.compress, status, served, length):
            coding = negotiate(get_first(self.head.headers, b"accept-encoding")) \
                if client is not None else b"identity"
            if coding != b"identity":
                self.compressor = Compressor(coding)
                served = compressed_headers(served, coding, None)
                length = None
            else:
                served = add_vary(served)
        self.headers = served
        served_meta = parse_response(status, served)
        variant = variant_key(served_meta.vary, self.head.headers)
        if variant is None:
            why = why or "Vary: *"
        self.storable = why is None
        fill = self.fill = Fill(status, served, expected_bytes=length,
                                max_bytes=rt.max_object_bytes())
        fill.storable = fill.storable and self.storable
        fill.info = FillInfo(served_meta.vary, variant,
                             b"HTTP/1.1 %d %s\r\n" % (status, resp.reason or reason(status))
                             + serialize(with_date(served, now)), length,
                             float(meta.age) if meta.age else None)
        if self.lead is not None:
            if self.storable:
                rt.collapser.publish(self.lead, fill)
            else:
                rt.collapser.release(self.lead)
            self.lead = None
        if client is not None and not client.lost:
            outcome = client.outcome
            if self.storable:
                rt.metrics.results["miss"].inc()
            else:
                rt.metrics.results["bypass"].inc()
            if not client.follow(fill, outcome, stored=self.storable):
                # our own variant did not match ourselves (Vary on a field we rewrote):
                # serve it anyway, it is the origin's answer to this request
                reader = fill.reader()
                assert reader is not None
                client.sender = FillSender(client, fill, reader, outcome, collapsed=False,
                                           stored=self.storable)
                client.sender.start()
            self.sender = client.sender
            if self.sender is not None:
                self.sender.job = self
        elif not self.storable:
            self.fetch.abort()  # nobody reads it and nothing keeps it
            fill.fail("no reader")

    def fetch_body(self, data: bytes) -> None:
        fill = self.fill
        if fill is None:
            return
        if self.compressor is not None:
            data = self.compressor.feed(data)
            if not data:
                return
        fill.append(data)
        if not fill.storable and self.sender is None and not fill.readers:
            self.fetch.abort()
            fill.fail("no reader")

    def fetch_done(self) -> None:
        fill = self.fill
        self.rt.refreshing.discard(self.key)
        if fill is None:
            return
        if self.compressor is not None:
            tail = self.compressor.finish()
            if tail:
                fill.append(tail)
        fill.finish()
        body = fill.complete_body
        if body is None or not self.storable or self.meta is None:
            return
        now = self.rt.clock()
        info = fill.info
        assert info is not None and info.variant is not None
        entry = build(key=self.key, variant=info.variant, host=normalize_host(self.head.host),
                      path=self.path,
                      query=self.behavior.keys.kept_query(self.query) or b"",
                      status=fill.status, headers=self.headers, chunks=body,
                      request_time=self.request_time, response_time=now, policy=self.policy,
                      now=now, error_ttl_s=self.dist.error_ttl_s(fill.status))
        self.rt.store(entry)

    def fetch_failed(self, kind: str) -> None:
        rt = self.rt
        rt.refreshing.discard(self.key)
        self._release()
        fill = self.fill
        if fill is not None:
            fill.fail(kind)
            return
        entry = self.conditional
        client = self.client
        if entry is not None:
            rt.metrics.revalidations["error"].inc()
            if client is not None and usable_on_error(entry, self.req, rt.clock()):
                client.on_stale_on_error(entry, None)
                return
        if client is not None:
            client.on_failed(kind)

    def _release(self) -> None:
        if self.lead is not None:
            self.rt.collapser.release(self.lead)
            self.lead = None

    # -- from our client's sender -----------------------------------------------------------
    def client_paused(self, paused: bool) -> None:
        fill = self.fill
        if fill is not None and not fill.storable:
            self.fetch.pause(paused)

    def sender_gone(self) -> None:
        fill = self.fill
        self.sender = None
        if fill is not None and not fill.finished and not fill.storable and \
                not fill.readers:
            self.fetch.abort()
            fill.fail("client gone")
        elif fill is not None:
            self.fetch.pause(False)


def background_refresh(rt: CacheRuntime, dist: Distribution, behavior: Behavior,
                       ex: Exchange, entry: CachedResponse, path: bytes,
                       query: bytes | None) -> None:
    """stale-while-revalidate: one revalidation per key, with no client waiting."""
    if entry.key in rt.refreshing:
        return
    rt.refreshing.add(entry.key)
    MissJob(rt, dist, behavior, ex, entry.key, path, query, conditional=entry).start()


class OriginFetch(UpstreamOwner):
    """One request to an origin (with connect attempts and origin-group failover), as the
    owner of an upstream connection. Reports to a MissJob."""

    upstream: UpstreamConnection | None = None
    target: Target | None = None
    pool: Pool | None = None
    got_head = False
    finished = False
    reused = False
    retried = False
    paused = False

    def __init__(self, rt: CacheRuntime, plan: tuple[Attempt, ...], ex: Exchange, path: bytes,
                 query: bytes | None, lines: list[bytes], extra: list[tuple[bytes, bytes]],
                 job: MissJob) -> None:
        self.rt = rt
        self.plan = plan
        self.step = 0
        self.ex = ex
        self.listener = ex.listener
        self.job = job
        head = ex.head
        self.method = b"GET" if head.method == b"HEAD" else head.method
        target = path + (b"?" + query if query else b"")
        self.target_bytes = target
        self.request_id = ex.request_id
        for n, v in extra:
            lines += (n, b": ", v, b"\r\n")
        xff = forwarded_for(self.listener.config.x_forwarded_for, head.xff,
                            ex.conn.client_ip_bytes)
        if xff is not None:
            lines += (b"X-Forwarded-For: ", xff, b"\r\n")
        via = b", ".join(head.via) + b", 1.1 lbcdn" if head.via else b"1.1 lbcdn"
        lines += (self.listener.forwarded_headers, b"Via: ", via, b"\r\n",
                  self.listener.id_header, b": ", self.request_id, b"\r\n")
        self.rest = b"".join(lines)

    def start(self) -> None:
        self._try()

    def _request(self, endpoint_host: bytes | None, origin_path: bytes) -> bytes:
        host = endpoint_host if endpoint_host is not None else self.ex.head.host
        return b"".join([self.method, b" ", origin_path, self.target_bytes,
                         b" HTTP/1.1\r\nHost: ", host, b"\r\n", self.rest, b"\r\n"])

    def _try(self) -> None:
        attempt = self.plan[self.step]
        e = attempt.endpoint
        pool = e.pool if e.pool is not None else self.listener.pools.get(e.pool_name or "")
        if pool is None:
            self._failed("no_target")
            return
        target = pool.pick()
        if target is None:
            pool.metrics.error("no_target")
            self._failed("no_target")
            return
        self.pool, self.target = pool, target
        conn = pool.take_idle(target)
        if conn is not None:
            self.reused = True
            self._send(conn)
        else:
            self.reused = False
            spawn(self._connect(pool, target, e.connect_attempts), "cache-origin-connect")

    async def _connect(self, pool: Pool, target: Target, attempts: int) -> None:
        kind = "connect_refused"
        for _ in range(attempts):
            if self.finished:
                return
            try:
                conn = await pool.connect(target)
            except ConnectError as exc:
                kind = exc.kind
                continue
            if self.finished:
                pool.release(conn)
                return
            self._send(conn)
            return
        pool.metrics.error(kind)  # type: ignore[arg-type]
        self._failed(kind)

    def _send(self, conn: UpstreamConnection) -> None:
        e = self.plan[self.step].endpoint
        self.upstream = conn
        self.sent_at = monotonic()
        conn.begin(self, False)
        conn.write(self._request(e.host_header, e.origin_path))
        conn.flush()

    def _failed(self, kind: str) -> None:
        if self.finished:
            return
        if not self.got_head and self.step + 1 < len(self.plan) and \
                self.ex.head.method in (b"GET", b"HEAD", b"OPTIONS"):
            self.step += 1  # origin group: the secondary on a connection failure
            self._try()
            return
        self.finished = True
        self.job.fetch_failed(kind)

    # -- UpstreamOwner -----------------------------------------------------------------------
    def upstream_interim(self, head: ResponseHead) -> None:
        pass

    def upstream_head(self, resp: ResponseHead) -> None:
        elapsed = monotonic() - self.sent_at
        attempt = self.plan[self.step]
        self.rt.metrics.origin_time(attempt.endpoint.id, elapsed)
        self.ex.origin_answered(elapsed)
        if resp.status in attempt.failover_statuses and self.step + 1 < len(self.plan):
            self.abort_connection()
            self.step += 1
            self._try()
            return
        self.got_head = True
        # `fwd` keeps Content-Length; the fill frames the body itself
        self.job.fetch_head(resp, [(n, v) for n, v in parse_fwd(resp.fwd)
                                   if n.lower() != b"content-length"])

    def upstream_body(self, data: bytes) -> None:
        if not self.finished:
            self.job.fetch_body(data)

    def upstream_done(self) -> None:
        self.upstream = None
        if not self.finished:
            self.finished = True
            self.job.fetch_done()

    def upstream_upgraded(self, head: ResponseHead, rest: bytes) -> None:
        self.abort_connection()
        self._failed("malformed_response")

    def upstream_failed(self, kind: str) -> None:
        upstream, self.upstream = self.upstream, None
        if self.finished:
            return
        if (kind == "reset" and self.reused and not self.retried and not self.got_head
                and upstream is not None and not upstream.got_bytes
                and self.pool is not None and self.target is not None):
            # a pooled connection the origin had closed: one fresh try, as the exchange does
            self.retried = True
            self.reused = False
            spawn(self._connect(self.pool, self.target, 1), "cache-origin-retry")
            return
        if self.pool is not None and kind in ("reset", "response_timeout",
                                              "malformed_response"):
            self.pool.metrics.error(kind)  # type: ignore[arg-type]
        if self.got_head:
            self.finished = True
            self.job.fetch_failed(kind)
            return
        self._failed(kind)

    def upstream_paused(self, paused: bool) -> None:
        pass  # we send no request body

    def upstream_reusable(self) -> bool:
        return True

    # -- control from the job ----------------------------------------------------------------
    def abort_connection(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.owner = None
            upstream.abort()

    def abort(self) -> None:
        self.finished = True
        self.abort_connection()

    def discard(self) -> None:
        """A 304: nothing more to read; the connection finishes by itself."""
        self.finished = True

    def pause(self, paused: bool) -> None:
        upstream = self.upstream
        if upstream is None or paused == self.paused:
            return
        self.paused = paused
        if paused:
            upstream.pause_reading()
        else:
            upstream.resume_reading()


class PassThrough:
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
        ex.forward_as(_forwarded(head, target, query,
                                 forwarding.lines(head.fwd, passthrough=True)), pool, self)

    def head(self, ex: Exchange, resp: ResponseHead) -> None:
        # the request is not sent again (no retry after a response head): from here on the
        # exchange, and its access log line, see what the client asked
        self.status = resp.status
        self.headers = parse_fwd(resp.fwd)
        ex.answered_as(self.original, cache_lines(Outcome.BYPASS, None))  # heads: not ours

    def done(self, ex: Exchange) -> None:
        head = self.original
        uris = invalidated_uris(head.method, self.status, head.host, head.target, self.headers)
        for host, uri in uris:
            path = uri.partition(b"?")[0]
            self.flow.rt.purge_uri(normalize_host(host), path)

    def client_paused(self, paused: bool) -> None:
        pass

    def client_lost(self) -> None:
        pass


def _forwarded(head: RequestHead, target: bytes, query: bytes | None,
               fwd: list[bytes]) -> RequestHead:
    """A copy of the request head as the origin gets it: another target (origin path, the
    forwarded query) and the forwarded header lines."""
    return RequestHead(head.method, target, target.partition(b"?")[0], query, head.version,
                       head.headers, head.host, head.content_length, head.chunked,
                       head.keep_alive, head.upgrade, head.expect_continue, fwd, head.xff,
                       head.via, head.request_id, head.user_agent)

