"""One origin fetch for the cache (a miss, a revalidation, a background refresh) and the fill
it feeds: what its response head means is decided by lbcdn.cache.miss; this module acts on it.

A fetch that holds the machine lead of its key (lbcdn.cache.shared, `machine`) ends it exactly
once: by storing (the runtime tells the control process when the file is in place), else with
how it ended (`failed`: stale-if-error territory; `alone`: nothing the other workers can use)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbcdn.cache.behavior import Behavior, Distribution
from lbcdn.cache.collapse import Lead, Reuse
from lbcdn.cache.compress import Compressor
from lbcdn.cache.entry import CachedResponse, build, with_date
from lbcdn.cache.headers import cache_lines, serialize
from lbcdn.cache.miss import Revalidated, fill_head, refreshed, revalidated
from lbcdn.cache.policy import RequestDirectives, ResponseMeta, corrected_initial_age, \
    usable_on_error, validators
from lbcdn.cache.runtime import CacheRuntime
from lbcdn.cache.shared import ALONE, FAILED, LEAD
from lbcdn.cache.store import Fill, FillInfo
from lbcdn.edge.fill_sender import FillSender
from lbcdn.edge.origin_fetch import FetchReceiver, OriginFetch
from lbcdn.http.errors import reason
from lbcdn.http.head import ResponseHead
from lbcdn.routing.router import normalize_host
from lbcdn.tasks import spawn

if TYPE_CHECKING:
    from lbcdn.edge.cache_flow import CacheFlow
    from lbcdn.edge.exchange import Exchange


class MissJob(FetchReceiver):
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
                 client: CacheFlow | None = None, machine: bool = False) -> None:
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
        self.machine = machine
        self.req = client.req if client is not None else RequestDirectives()
        self.request_time = 0.0
        self.headers: list[tuple[bytes, bytes]] = []

    def start(self) -> None:
        extra = validators(self.conditional) if self.conditional is not None else []
        self.request_time = self.rt.clock()
        forwarding = self.behavior.forwarding
        plan = self.rt.plan(self.dist, self.behavior, self.key, self.head.headers)
        self.fetch = OriginFetch(self.rt, plan, self.ex,
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
            verdict = revalidated(entry, status, self.req, now)
            rt.metrics.revalidations[verdict.value].inc()
            if verdict is Revalidated.NOT_MODIFIED:
                self.fetch.discard()
                entry, replaces = refreshed(entry, headers, self.request_time, now, self.policy)
                if replaces:
                    self._store(entry)
                else:
                    self._machine_end(ALONE)
                self._release(Reuse(entry))
                if client is not None:
                    rt.metrics.results["refresh_hit"].inc()
                    client.on_not_modified(entry)
                return
            if verdict is Revalidated.STALE_ON_ERROR:
                self.fetch.abort()
                self._machine_end(FAILED, status)
                self._release(Reuse(entry, failed=True, fwd_status=status))
                if client is not None:
                    client.on_stale_on_error(entry, status)
                return
        page = client.error_page(status) if client is not None else None
        plan = fill_head(self.head.method, status, headers, resp.content_length, self.req,
                         self.policy, self.head.headers, negotiated=client is not None)
        if client is not None and page is not None and plan.why is not None:
            self.fetch.abort()  # nothing to keep: the client gets the page
            self._release()
            self._machine_end(ALONE)
            client.on_error_page(page, cache_lines(client.outcome, None, stored=self.storable))
            return
        meta = self.meta = plan.meta
        if plan.coding is not None:
            self.compressor = Compressor(plan.coding)
        served = self.headers = plan.headers
        length = plan.length
        self.storable = plan.why is None
        fill = self.fill = Fill(status, served, expected_bytes=length,
                                max_bytes=rt.max_object_bytes())
        fill.storable = fill.storable and self.storable
        fill.info = FillInfo(plan.vary, plan.variant,
                             b"HTTP/1.1 %d %s\r\n" % (status, resp.reason or reason(status))
                             + serialize(with_date(served, now)), length,
                             corrected_initial_age(meta.age, meta.date, self.request_time, now)
                             if meta.age else None)
        if self.lead is not None:
            if self.storable:
                rt.collapser.publish(self.lead, fill)
            else:
                rt.collapser.release(self.lead)
            self.lead = None
        if not self.storable:
            self._machine_end(ALONE)
        if client is not None and page is not None:
            # a custom error response: the origin's error is read on and stored (for the
            # error caching minimum TTL when it gives none); the client gets the page
            client.on_error_page(page, cache_lines(client.outcome, None, stored=self.storable))
        elif client is not None and not client.lost:
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
            self._machine_end(ALONE)
            return
        now = self.rt.clock()
        info = fill.info
        assert info is not None and info.variant is not None
        entry = build(key=self.key, variant=info.variant, host=normalize_host(self.head.host),
                      path=self.path,
                      query=self.behavior.keys.kept_query(self.query) or b"",
                      status=fill.status, headers=self.headers, chunks=body,
                      request_time=self.request_time, response_time=now, policy=self.policy,
                      now=now, error_ttl_s=self.dist.error_ttl_s(fill.status),
                      age=self.meta.age)
        self._store(entry)

    def fetch_failed(self, kind: str) -> None:
        rt = self.rt
        rt.refreshing.discard(self.key)
        fill = self.fill
        entry = self.conditional
        if fill is not None or entry is None:
            self._release()
            self._machine_end(ALONE)
        else:  # a revalidation with no answer: waiters may stand the stale entry in for it
            self._release(Reuse(entry, failed=True))
            self._machine_end(FAILED)
        if fill is not None:
            fill.fail(kind)
            return
        client = self.client
        if entry is not None:
            rt.metrics.revalidations["error"].inc()
            if client is not None and usable_on_error(entry, self.req, rt.clock()):
                client.on_stale_on_error(entry, None)
                return
        if client is not None:
            client.on_failed(kind)

    def _release(self, reuse: Reuse | None = None) -> None:
        """Let the waiters collapsed on our lead go: answered from `reuse`, else alone."""
        lead = self.lead
        if lead is not None:
            self.lead = None
            if reuse is not None:
                self.rt.collapser.settle(lead, reuse)
            else:
                self.rt.collapser.release(lead)

    def _store(self, entry: CachedResponse) -> None:
        self.machine = False  # the store tells the control process (CacheRuntime.store)
        self.rt.store(entry)

    def _machine_end(self, outcome: str, status: int | None = None) -> None:
        """End our machine lead (if we hold it) with `outcome`, for the other workers."""
        shared = self.rt.shared
        if self.machine and shared is not None:
            self.machine = False
            shared.leads.done(self.key, outcome, status=status)

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
    """stale-while-revalidate: one revalidation per key, with no client waiting; with the
    workers' shared store, one machine-wide (a worker that does not get the lead leaves it to
    the one that does, whose store drops our copy)."""
    if entry.key in rt.refreshing:
        return
    rt.refreshing.add(entry.key)
    if rt.shared is None:
        MissJob(rt, dist, behavior, ex, entry.key, path, query, conditional=entry).start()
    else:
        spawn(_machine_refresh(rt, dist, behavior, ex, entry, path, query),
              "cache-machine-refresh")


async def _machine_refresh(rt: CacheRuntime, dist: Distribution, behavior: Behavior,
                           ex: Exchange, entry: CachedResponse, path: bytes,
                           query: bytes | None) -> None:
    shared = rt.shared
    assert shared is not None
    result, _ = await shared.leads.lead(entry.key, behavior.policy.lock_timeout_s)
    if result == LEAD:
        MissJob(rt, dist, behavior, ex, entry.key, path, query, conditional=entry,
                machine=True).start()
    else:
        rt.refreshing.discard(entry.key)
