"""A cache request for a behavior with `slice_bytes`: the object in aligned slices, each fetched
(with the one origin request builder, lbcdn.edge.origin_fetch, and the parent tier's plan) and
cached on its own; the client's answer streamed from them (lbcdn.cache.slices has the rules).

The slice holding the first byte asked for comes first: its Content-Range gives the object's
size, and its ETag is the one every other slice must carry. The client's Range is then planned
against that size (206, 416, or the whole object as 200). The head goes out once the first slice
of the answer is there, then each slice's part in order, each slice taken from the cache
(memory, then disk) or fetched only when the client has taken the one before (its connection is
not paused): a multi-GiB answer holds about two slices in memory, whatever the client's speed. A
slice that is not the right piece of the same version ends the request: with a 502 before the
head went out, by cutting the connection after (only closing can tell the client then); nothing
of it is stored.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from lbcdn.cache.conditional import RangeKind, plan_range, precondition
from lbcdn.cache.directives import get_first
from lbcdn.cache.entry import CachedResponse, build, serialize_head, with_date
from lbcdn.cache.headers import Outcome, cache_lines, not_modified_headers, serialize
from lbcdn.cache.policy import Use, evaluate
from lbcdn.cache.slices import covering, first_slice, part, range_field, slice_key, \
    slice_problem
from lbcdn.edge.origin_fetch import FetchReceiver, OriginFetch
from lbcdn.edge.stream import ExchangeTap
from lbcdn.http.head import Head, ResponseHead
from lbcdn.routing.router import normalize_host
from lbcdn.tasks import spawn

if TYPE_CHECKING:
    from lbcdn.edge.cache_flow import CacheFlow

# Fields of the first slice's answer that describe the slice, not the object.
_SLICE_FIELDS = frozenset({b"content-range", b"content-length"})


class SliceError(Exception):
    pass


class SliceFetch(FetchReceiver):
    """One slice's origin answer, collected whole (a slice is bounded by `slice_bytes`)."""

    def __init__(self) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] = []

    def fetch_head(self, resp: ResponseHead, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = resp.status
        self.headers = headers

    def fetch_body(self, data: bytes) -> None:
        self.parts.append(data)

    def fetch_done(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def fetch_failed(self, kind: str) -> None:
        if not self.done.done():
            self.done.set_exception(SliceError(f"origin failed: {kind}"))


class SliceFlow(ExchangeTap):
    """One request's answer from slices; the exchange's tap while its body is sent."""

    def __init__(self, flow: CacheFlow) -> None:
        self.flow = flow
        self.n = flow.policy.slice_bytes
        self.fetched = 0   # slices fetched from the origin (0: the answer is a hit)
        self.paused = False
        self.resumed: asyncio.Future[None] | None = None

    def start(self) -> None:
        spawn(self.run(), "cache-slices")

    async def run(self) -> None:
        flow, n = self.flow, self.n
        ex = flow.ex
        head = ex.head
        k0 = first_slice(get_first(head.headers, b"range"), n)
        try:
            first, total = await self.slice(k0, None)
            if flow.conditional and self.preconditions(first):
                return
            plan = plan_range(b"GET", 200, head.headers, total, first.etag,
                              first.last_modified, first.date)
            if plan.kind is RangeKind.UNSATISFIABLE or total == 0:
                self.respond(416 if total else 200, first, plan.content_range(total)
                             if total else None, 0)
                return
            partial = plan.kind is RangeKind.PARTIAL
            start, end = (plan.start, plan.end) if partial else (0, total - 1)
            status, content_range = (206, plan.content_range(total)) if partial \
                else (200, None)
            if head.method == b"HEAD":  # the size is all it needs: the first slice had it
                self.respond(status, first, content_range, end - start + 1)
                return
            wanted = covering(start, end, n)
            etag = first.etag
            # a suffix range may begin past the slice fetched for the size: its first slice
            # is there before the head goes out, so the head's Cache-Status covers it too
            entry = first if wanted.start == k0 else (await self.slice(wanted.start, etag))[0]
        except SliceError as exc:
            if not flow.lost:
                ex.respond_local(502, [(b"Content-Type", b"text/plain")]
                                 + flow._lines(Outcome.ERROR), f"{exc}\n".encode())
            return
        if flow.lost:
            return
        ex.set_tap(self)
        ex.start_cached(self.answer_head(status, first, content_range, end - start + 1), True)
        ex.send_cached(part(entry.chunks, wanted.start, start, end, n))
        del first, entry  # sent: held, they would keep their slices for the whole answer
        for k in wanted[1:]:
            if not await self.send_slice(k, etag, start, end):
                return
        ex.end_cached()

    async def send_slice(self, k: int, etag: bytes | None, start: int, end: int) -> bool:
        """Send slice `k`'s part of bytes `start`..`end` once the client has taken the slice
        before; False when the answer ends here (the client left, or the slice was not the
        right piece of this version: the connection is then cut)."""
        flow = self.flow
        await self.taken()
        if flow.lost:
            return False
        try:
            entry = (await self.slice(k, etag))[0]
        except SliceError:
            if not flow.lost:
                flow.ex.abort()  # the response has started: only closing can tell
            return False
        if flow.lost:
            return False
        flow.ex.send_cached(part(entry.chunks, k, start, end, self.n))
        return True

    async def taken(self) -> None:
        """Until the client has taken what was sent (its connection stopped being paused), or
        has gone (a client that stops reading is timed out by its connection)."""
        while self.paused and not self.flow.lost:
            self.resumed = asyncio.get_running_loop().create_future()
            await self.resumed

    def _wake(self) -> None:
        resumed, self.resumed = self.resumed, None
        if resumed is not None and not resumed.done():
            resumed.set_result(None)

    async def slice(self, k: int, etag: bytes | None) -> tuple[CachedResponse, int]:
        """Slice `k` from the cache or the origin, with the object's size; `etag`: the one it
        must carry (a cached slice of another version is fetched again)."""
        flow = self.flow
        rt, head = flow.rt, flow.ex.head
        key = slice_key(flow.key, k)
        found: CachedResponse | str | None = rt.memory.lookup(key, head.headers)
        if not isinstance(found, CachedResponse) and rt.has_store:
            found = await rt.store_lookup(key, head.headers)  # slices too big for memory
        if isinstance(found, CachedResponse) and (etag is None or found.etag == etag) and \
                evaluate(found, flow.req, rt.clock()).use is Use.FRESH:
            total, why = slice_problem(k, self.n, 206, found.headers, etag)
            if why is None:
                return found, total
        pending = rt.slicing.get(key)
        if pending is not None:  # collapsed on the fetch another request leads
            entry, total = await asyncio.shield(pending)
            why = slice_problem(k, self.n, 206, entry.headers, etag)[1]
            if why is not None:
                raise SliceError(why)
            return entry, total
        lead: asyncio.Future[tuple[CachedResponse, int]] = \
            asyncio.get_running_loop().create_future()
        rt.slicing[key] = lead
        try:
            got = await self.fetch(k, key, etag)
        except BaseException as exc:
            lead.set_exception(exc if isinstance(exc, SliceError)
                               else SliceError("slice fetch abandoned"))
            lead.exception()  # retrieved: no waiter is no error
            raise
        finally:
            if rt.slicing.get(key) is lead:
                del rt.slicing[key]
        lead.set_result(got)
        return got

    async def fetch(self, k: int, key: bytes, etag: bytes | None
                    ) -> tuple[CachedResponse, int]:
        """Slice `k` from the origin (or the parent tier), stored when it may be."""
        flow = self.flow
        rt, head = flow.rt, flow.ex.head
        fwd = flow.behavior.forwarding
        receiver = SliceFetch()
        request_time = rt.clock()
        OriginFetch(rt, rt.plan(flow.dist, flow.behavior, key, head.headers), flow.ex,
                    flow.path, fwd.query_for(flow.query),
                    fwd.lines(head.fwd, passthrough=False),
                    [(b"Range", range_field(k, self.n))], receiver).start()
        await receiver.done
        total, why = slice_problem(k, self.n, receiver.status, receiver.headers, etag)
        if why is not None:
            raise SliceError(why)
        self.fetched += 1
        now = rt.clock()
        entry = build(key=key, variant=b"", host=normalize_host(head.host), path=flow.path,
                      query=flow.behavior.keys.kept_query(flow.query) or b"", status=206,
                      headers=receiver.headers, chunks=tuple(receiver.parts),
                      request_time=request_time, response_time=now, policy=flow.policy,
                      now=now)
        if entry.lifetime > 0:
            rt.store(entry)
        return entry, total

    def preconditions(self, first: CachedResponse) -> bool:
        """Answer the client's conditionals from the object's validators (the first slice's);
        True when they decided the answer (304, 412)."""
        flow = self.flow
        ex = flow.ex
        pre = precondition(ex.head.method, ex.head.headers, first.etag, first.last_modified,
                           first.date, first.response_time)
        if pre is None or flow.lost:
            return pre is not None
        if pre == 304:
            ex.set_tap(None)
            ex.respond_cached(Head(304, b"", None, wire=b"HTTP/1.1 304 Not Modified\r\n"
                                   + serialize(not_modified_headers(first.headers)),
                                   extra=self.lines()), None)
        else:
            ex.respond_local(412, [(b"Content-Type", b"text/plain")]
                             + flow._lines(Outcome.ERROR), b"precondition failed\n")
        return True

    def lines(self) -> bytes:
        outcome = Outcome.MISS if self.fetched else Outcome.HIT
        return cache_lines(outcome, None if self.fetched else 0.0, stored=bool(self.fetched))

    def answer_head(self, status: int, first: CachedResponse, content_range: bytes | None,
                    length: int) -> Head:
        """The answer's head: `length` bytes, the object's fields from the first slice, and
        Cache-Status from the slices fetched so far (a streamed answer's later slices come
        after it went out)."""
        headers = [(nm, v) for nm, v in with_date(first.headers, first.response_time)
                   if nm.lower() not in _SLICE_FIELDS]
        if content_range is not None:
            headers.append((b"Content-Range", content_range))
        return Head(status, b"", length, wire=serialize_head(status, headers, length),
                    extra=self.lines())

    def respond(self, status: int, first: CachedResponse, content_range: bytes | None,
                length: int) -> None:
        """An answer without a body (a HEAD, a 416, an empty object)."""
        flow = self.flow
        if flow.lost:
            return
        flow.ex.set_tap(None)
        flow.ex.respond_cached(self.answer_head(status, first, content_range, length), None)

    # -- tap: the client's flow while the body is sent ---------------------------------------
    def head(self, resp: ResponseHead) -> None:
        pass  # the origin's heads come to the slice fetches, not here

    def done(self) -> None:
        pass

    def client_paused(self, paused: bool) -> None:
        self.paused = paused
        if not paused:
            self._wake()

    def client_lost(self) -> None:
        self.flow.client_lost()
        self._wake()
