"""The cache side of an exchange: a route with `cache:` is answered here instead of by its action.

Job: drive lbcdn.cache's pure decisions with real sockets. For one request: pick the behavior,
build the key, look up memory (then disk, or the workers' shared store, in a thread), and then
(plain fresh hits never get here: lbcdn.edge.cache_hit answers them; the pieces below live in
fill_sender, miss_job, origin_fetch and passthrough)
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
- with the workers' shared store (lbcdn.cache.shared): a memory entry that cannot be used as it
  is is looked up there too (another worker may have refreshed it), and the leader of a key in
  this worker asks the control process for the machine lead before it goes to the origin; a
  worker that does not get it waits, then answers from the shared store.
- unsafe methods and requests with bodies pass through the exchange's own proxy path (a tap adds
  the cache headers and, on success, invalidates the target URI, Location and Content-Location).

Rules:
- The origin request (lbcdn.http.head.origin_request, the builder the proxy path uses too):
  origin path + path, and of the viewer's query, headers and
  cookies only what the behavior's Forwarding lets through (lbcdn.cache.forwarding: the cache
  key plus the origin request policy, so nothing the key ignores can shape a stored answer),
  then the edge's own fields; a pass-through gets the same filter, with the fields its origin
  needs to answer it. HEAD misses fetch with GET so the answer can be stored.
- An origin fetch outlives its client when others read it or the cache wants it; a pass-through
  fetch whose only client left is aborted. A storable fill is read at origin speed (bounded by the
  largest object a tier keeps); a pass-through one pauses the origin while its client is slow.
- The runtime is per process (lbcdn.edge.cache_hit.set_runtime, done by the daemon on start and
  reload).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from lbcdn.cache.behavior import Behavior, Distribution
from lbcdn.cache.collapse import Lead, Result, Reuse, Waiter
from lbcdn.cache.conditional import FULL, RangeKind, plan_range, precondition
from lbcdn.cache.entry import CachedResponse, serialize_head, with_date
from lbcdn.cache.headers import (Outcome, cache_lines, cache_status, not_modified_headers,
                                 serialize, with_status, x_cache)
from lbcdn.cache.key import variant_key
from lbcdn.cache.policy import RequestDirectives, Use, evaluate, parse_request, usable_on_error
from lbcdn.cache.runtime import CacheRuntime
from lbcdn.cache.shared import FAILED, LEAD, STORED
from lbcdn.cache.store import Fill, Miss
from lbcdn.edge.cache_hit import CONDITIONAL_FIELDS, DIRECTIVE_FIELDS, PLAIN, fast_hit, \
    get_runtime
from lbcdn.edge.fill_sender import FillSender
from lbcdn.edge.miss_job import MissJob, background_refresh
from lbcdn.edge.passthrough import PassThrough
from lbcdn.edge.slice_flow import SliceFlow
from lbcdn.edge.stream import ExchangeTap
from lbcdn.http.errors import HttpError, failure_status
from lbcdn.http.head import Head, ResponseHead
from lbcdn.tasks import spawn

if TYPE_CHECKING:
    from lbcdn.edge.exchange import Exchange


def start(ex: Exchange, distribution: str) -> None:
    """Entry point from Exchange.start() for a route with `cache:`."""
    rt = get_runtime()
    dist = rt.distributions.get(distribution) if rt is not None else None
    if rt is None or dist is None:
        ex.respond_error(HttpError(503, "edge cache not configured", close=False))
        return
    head = ex.head
    signed = dist.select(head.path).signed
    if signed is not None:
        denial = signed.check(ex.listener.scheme.encode(), head.host, head.path, head.query,
                              head.headers, ex.conn.client_ip, rt.clock())
        if denial is not None:
            ex.respond_local(403, [(b"Content-Type", b"text/xml")], denial.body())
            return
    if not fast_hit(ex, rt, dist):
        CacheFlow(ex, rt, dist).start()


class CacheFlow(ExchangeTap):
    """One request through the cache (see the module docstring)."""

    entry: CachedResponse | None = None       # the stale entry being revalidated
    waiter: Waiter | None = None
    timer: asyncio.TimerHandle | None = None
    sender: FillSender | None = None
    lost = False
    conditional = False

    def __init__(self, ex: Exchange, rt: CacheRuntime, dist: Distribution,
                 path: bytes | None = None, status_override: int | None = None,
                 reported: bytes | None = None) -> None:
        self.ex = ex
        self.rt = rt
        self.dist = dist
        head = ex.head
        self.path = path if path is not None else head.path
        self.query = head.query if path is None else None
        self.status_override = status_override
        # A custom error page's flow reports the origin error it answers for (its Age,
        # Cache-Status and X-Cache lines): that is what the client asked for and what decides
        # when the origin is asked again; the page's own lookup is ours.
        self.reported = reported
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
        self.req = parse_request(head.headers) if not names.isdisjoint(DIRECTIVE_FIELDS) \
            else PLAIN
        self.conditional = not names.isdisjoint(CONDITIONAL_FIELDS)
        self.key = self.behavior.keys.primary(head.method, head.host, self.path, self.query,
                                              head.headers)
        if policy.slice_bytes and method in ("GET", "HEAD"):
            SliceFlow(self).start()
            return
        found = self.rt.memory.lookup(self.key, head.headers)
        if isinstance(found, CachedResponse):
            self.found(found)
        elif self.rt.has_store:
            spawn(self._store_lookup(found), "cache-store-lookup")
        else:
            self.miss(found)

    @staticmethod
    def _lines(outcome: Outcome) -> list[tuple[bytes, bytes]]:
        return [(b"Cache-Status", cache_status(outcome)), (b"X-Cache", x_cache(outcome))]

    async def _store_lookup(self, reason_: str) -> None:
        rt = self.rt
        entry = await rt.store_lookup(self.key, self.ex.head.headers)
        if self.lost:
            return
        if entry is None:
            # the fill another request led may have ended (and been stored) while we looked
            found = rt.memory.lookup(self.key, self.ex.head.headers)
            if isinstance(found, CachedResponse):
                self.found(found, looked=True)
            else:
                self.miss(reason_)
            return
        self.found(entry, looked=True)

    async def _shared_recheck(self, stale: CachedResponse) -> None:
        """A memory entry that cannot be used as it is: another worker may have refreshed it."""
        entry = await self.rt.store_lookup(self.key, self.ex.head.headers)
        if not self.lost:
            self.found(entry if entry is not None else stale, looked=True)

    # -- hits --------------------------------------------------------------------------------
    def found(self, entry: CachedResponse, looked: bool = False) -> None:
        """Answer from (or revalidate) a stored entry; `looked`: the shared store was looked
        up already (else a memory entry that cannot be used is looked for there first)."""
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
        elif self.rt.shared is not None and not looked:
            spawn(self._shared_recheck(entry), "cache-shared-lookup")
        else:
            self.entry = entry
            # RFC 9211 2.2: a response was selected but could not be used as it was
            self.outcome = Outcome.REQUEST if self.req.no_cache else Outcome.STALE_MISS
            if self.policy.collapse and not (self.req.no_cache or self.req.authorization):
                self.join()  # one revalidation per key; the others answer from it
            else:
                self.start_fetch(conditional=entry)

    def gateway_timeout(self) -> None:
        self.ex.respond_local(504, [(b"Content-Type", b"text/plain")]
                              + self._lines(Outcome.MISS), b"not in cache (only-if-cached)\n")

    def serve_entry(self, entry: CachedResponse, outcome: Outcome, age: float | None,
                    ttl: float | None, *, stored: bool = False, fwd_status: int | None = None,
                    collapsed: bool = False) -> None:
        """Answer with a stored response, or with the custom error response that replaces
        it when it is an origin error that has one."""
        lines = cache_lines(outcome, age, ttl=ttl, stored=stored, fwd_status=fwd_status,
                            collapsed=collapsed)
        page = self.error_page(entry.status)
        if page is not None:
            self.on_error_page(page, lines)
            return
        if self.reported is not None:
            lines = self.reported
        ex = self.ex
        head = ex.head
        method = head.method
        status = self.status_override or entry.status
        if self.conditional and 200 <= entry.status < 300 and self.status_override is None:
            pre = precondition(method, head.headers, entry.etag, entry.last_modified,
                               entry.date, entry.response_time)
            if pre == 304:
                self._finish_head(Head(304, b"", None, wire=b"HTTP/1.1 304 Not Modified\r\n"
                                       + serialize(not_modified_headers(entry.headers)),
                                       extra=lines), None)
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
            first = entry.head if self.status_override is None else with_status(entry.head,
                                                                                status)
            self._finish_head(Head(status, b"", entry.size, wire=first, extra=lines),
                              None if method == b"HEAD" else entry.chunks)
            return
        kept = [(n, v) for n, v in with_date(entry.headers, entry.response_time)
                if n.lower() != b"content-range"]
        if plan.kind is RangeKind.UNSATISFIABLE:
            self._finish_head(Head(416, b"", 0, wire=serialize_head(
                416, kept + [(b"Content-Range", plan.content_range(entry.size))], 0),
                extra=lines), ())
            return
        self._finish_head(Head(206, b"", plan.length, wire=serialize_head(
            206, kept + [(b"Content-Range", plan.content_range(entry.size))], plan.length),
            extra=lines), None if method == b"HEAD" else (entry.body[plan.start:plan.end + 1],))

    def _finish_head(self, head: Head, chunks: tuple[bytes, ...] | None) -> None:
        """Write a complete response from cache: `head` (its HTTP/1.1 form, which has the
        Content-Length of its body when it has one), then `chunks` (None: no body)."""
        ex = self.ex
        ex.set_tap(None)
        ex.respond_cached(head, chunks)

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
        self.join()

    def join(self) -> None:
        """Join the key's collapsing: lead the one origin request (a fetch, or a revalidation
        of `self.entry`), follow the fill in progress, or wait for the leader's outcome."""
        loop = asyncio.get_running_loop()
        joined = self.rt.collapser.join(self.key, loop.time(), self.policy.lock_timeout_s,
                                        self._collapsed)
        if isinstance(joined, Lead):
            if self.rt.shared is None:
                self.start_fetch(lead=joined, conditional=self.entry)
            else:
                spawn(self._machine_lead(joined), "cache-machine-lead")
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
        elif isinstance(result, Reuse):
            if self.reuse(result):
                self.rt.metrics.collapsed_shared.inc()
                return
        self.rt.metrics.collapsed_alone.inc()
        self.start_fetch(conditional=self.entry)

    async def _machine_lead(self, lead: Lead) -> None:
        """Leading `key` in this worker: lead it machine-wide too, or wait for the worker that
        does and answer from what it stored (lbcdn.cache.shared)."""
        rt = self.rt
        shared = rt.shared
        assert shared is not None
        result, status = await shared.leads.lead(self.key, self.policy.lock_timeout_s)
        if result == LEAD or result == STORED:
            # as leader too: a lead that ended while we looked up may have stored it
            entry = await rt.store_lookup(self.key, self.ex.head.headers)
            fresh = entry is not None and \
                evaluate(entry, self.req, rt.clock()).use is Use.FRESH
            if result == LEAD and not fresh:
                self.start_fetch(lead=lead, conditional=self.entry, machine=True)
                return
            if result == LEAD:
                shared.leads.done(self.key, STORED)
            if entry is not None and fresh:
                rt.collapser.settle(lead, Reuse(entry, hit=True))
                if not self.lost:
                    self.found(entry, looked=True)
                return
        elif result == FAILED and self.entry is not None and \
                usable_on_error(self.entry, self.req, rt.clock()):
            rt.collapser.settle(lead, Reuse(self.entry, failed=True, fwd_status=status))
            if not self.lost:
                self.on_stale_on_error(self.entry, status, collapsed=True)
            return
        self.start_fetch(lead=lead, conditional=self.entry)

    def reuse(self, result: Reuse) -> bool:
        """Answer from the entry a collapsed revalidation settled on; False when it cannot
        answer this request (another variant; stale that this request does not accept)."""
        entry = result.entry
        if variant_key(entry.vary, self.ex.head.headers) != entry.variant:
            return False
        now = self.rt.clock()
        if result.failed:
            if not usable_on_error(entry, self.req, now):
                return False
            self.rt.metrics.results["stale"].inc()
            outcome = Outcome.STALE_ON_ERROR
        elif result.hit:
            if evaluate(entry, self.req, now).use is not Use.FRESH:
                return False
            self.rt.metrics.count_hit()
            outcome = Outcome.HIT
        else:
            self.rt.metrics.results["refresh_hit"].inc()
            outcome = Outcome.REFRESH_HIT
        d = evaluate(entry, self.req, now)
        self.serve_entry(entry, outcome, d.age, d.ttl, fwd_status=result.fwd_status,
                         collapsed=True)
        return True

    def follow(self, fill: Fill, outcome: Outcome, *, collapsed: bool = False,
               stored: bool = False) -> bool:
        """Answer from a fill in progress; False when it cannot answer this request."""
        info = fill.info
        if info is None or variant_key(info.vary, self.ex.head.headers) != info.variant:
            return False
        page = self.error_page(fill.status)
        if page is not None:
            self.on_error_page(page, cache_lines(outcome, info.age, stored=stored,
                                                 collapsed=collapsed))
            return True
        reader = fill.reader()
        if reader is None:
            return False
        self.sender = FillSender(self, fill, reader, outcome, collapsed=collapsed,
                                 stored=stored)
        self.sender.start()
        return True

    def start_fetch(self, *, lead: Lead | None = None,
                    conditional: CachedResponse | None = None, machine: bool = False) -> None:
        job = MissJob(self.rt, self.dist, self.behavior, self.ex, self.key, self.path,
                      self.query, lead=lead, conditional=conditional, client=self,
                      machine=machine)
        job.start()

    # -- results of a MissJob for our client --------------------------------------------------
    def on_not_modified(self, entry: CachedResponse) -> None:
        d = evaluate(entry, self.req, self.rt.clock())
        self.serve_entry(entry, Outcome.REFRESH_HIT, d.age, d.ttl, stored=True)

    def on_stale_on_error(self, entry: CachedResponse, status: int | None,
                          collapsed: bool = False) -> None:
        d = evaluate(entry, self.req, self.rt.clock())
        self.rt.metrics.results["stale"].inc()
        self.serve_entry(entry, Outcome.STALE_ON_ERROR, d.age, d.ttl, fwd_status=status,
                         collapsed=collapsed)

    def on_failed(self, kind: str) -> None:
        if self.lost or self.ex.is_finished():
            return
        self.rt.metrics.results["error"].inc()
        status = failure_status(kind)
        lines = self._lines(Outcome.ERROR)
        err = HttpError(status, "origin failed" if status != 504 else "origin timed out",
                        close=False, headers=b"".join(b"%s: %s\r\n" % p for p in lines))
        self.ex.respond_error(err)

    def error_page(self, status: int) -> tuple[bytes, int] | None:
        """The custom error response (page path, status) that replaces an origin's `status`
        for this request; None: the origin's answer as it is (the page's own flow has
        `status_override`)."""
        if status < 400 or self.status_override is not None:
            return None
        return self.dist.error_page(status)

    def on_error_page(self, page: tuple[bytes, int], reported: bytes) -> None:
        """Answer with a custom error response: the page, fetched through the cache, with the
        `reported` cache lines of the origin error it replaces."""
        if not self.lost:
            path, code = page
            CacheFlow(self.ex, self.rt, self.dist, path=path, status_override=code,
                      reported=reported).start()

    # -- tap: events from the exchange --------------------------------------------------------
    def head(self, resp: ResponseHead) -> None:
        pass

    def done(self) -> None:
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
