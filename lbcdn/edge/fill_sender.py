"""A fill written to one client as it grows: a miss's own client, a collapsed waiter, or a
newcomer reading a fill in progress (lbcdn.cache.store.Fill). The head has the fill's length
when the origin sent one; the client stream frames the body (chunked, or close-delimited for
HTTP/1.0, when it has none)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbcdn.cache.conditional import RangeKind, plan_range, precondition
from lbcdn.cache.directives import get_first
from lbcdn.cache.headers import Outcome, cache_lines, not_modified_headers, serialize, \
    with_status
from lbcdn.cache.store import Fill, FillReader
from lbcdn.http.head import Head

if TYPE_CHECKING:
    from lbcdn.edge.cache_flow import CacheFlow
    from lbcdn.edge.miss_job import MissJob


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
        self.head_only = False
        self.closed = False
        self.paused = False
        self.job: MissJob | None = None
        # the byte range of the fill this client asked for (Range on a miss, as nginx and
        # CloudFront answer it: 206 cut from the fill as it arrives); None: all of it
        self.window: tuple[int, int] | None = None
        self.offset = 0  # bytes of the fill taken so far

    def start(self) -> None:
        ex, fill = self.ex, self.fill
        info = fill.info
        assert info is not None
        ex.set_tap(self.flow)
        status = self.flow.status_override or fill.status
        head = info.head if self.flow.status_override is None else with_status(info.head,
                                                                                status)
        reported = self.flow.reported
        lines = reported if reported is not None else cache_lines(
            self.outcome, info.age, stored=self.stored, collapsed=self.collapsed)
        method = ex.head.method
        if self.flow.status_override is None and fill.status == 200:
            pre = precondition(method, ex.head.headers,
                               get_first(fill.headers, b"etag"), None, None, 0.0)
            if pre == 304:
                head = b"HTTP/1.1 304 Not Modified\r\n" + serialize(
                    not_modified_headers(fill.headers))
                status = 304
        has_body = not (status < 200 or status in (204, 304))
        self.head_only = method == b"HEAD" or not has_body
        length = info.length if has_body else None
        if status == 200 and length is not None and self.flow.conditional:
            size = length
            plan = plan_range(method, status, ex.head.headers, size,
                              get_first(fill.headers, b"etag"), None, None)
            if plan.kind is not RangeKind.FULL:
                fields = head[head.index(b"\r\n") + 2:]
                if plan.kind is RangeKind.UNSATISFIABLE:
                    status, length, self.head_only = 416, 0, True
                    head = b"HTTP/1.1 416 Range Not Satisfiable\r\n" + fields
                else:
                    status, length = 206, plan.length
                    head = b"HTTP/1.1 206 Partial Content\r\n" + fields
                    self.window = (plan.start, plan.end + 1)
                head += b"Content-Range: %s\r\n" % plan.content_range(size)
        if length is not None:
            head += b"Content-Length: %d\r\n" % length
        ex.start_cached(Head(status, b"", length, wire=head, extra=lines), not self.head_only)
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
        window = self.window
        if window is not None:
            chunks, done = self._cut(chunks, window)
            if done:
                self.close()
                ex.end_cached()
                return
        if chunks:
            ex.send_cached(chunks)
        if self.reader.at_end:
            self.close()
            if fill.error is not None:
                ex.abort()  # the response has started: only closing can tell
                return
            ex.end_cached()

    def _cut(self, chunks: list[bytes], window: tuple[int, int]) -> tuple[list[bytes], bool]:
        """The part of `chunks` (the fill's next bytes) inside `window`, and whether the
        window's last byte has been reached (the response is then complete)."""
        start, end = window
        out = []
        offset = self.offset
        for chunk in chunks:
            n = len(chunk)
            if offset + n > start and offset < end:
                out.append(chunk[max(start - offset, 0):end - offset])
            offset += n
        self.offset = offset
        if offset >= end:
            if out:
                self.ex.send_cached(out)
            return [], True
        return out, False

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
