"""A fill written to one client as it grows: a miss's own client, a collapsed waiter, or a
newcomer reading a fill in progress (lbcdn.cache.store.Fill). Framing follows the fill: its
Content-Length when the origin sent one, else chunked (close-delimited for HTTP/1.0)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lbcdn.cache.conditional import precondition
from lbcdn.cache.directives import get_first
from lbcdn.cache.headers import Outcome, cache_lines, not_modified_headers, serialize, \
    with_status
from lbcdn.cache.store import Fill, FillReader

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
        head = info.head if self.flow.status_override is None else with_status(info.head,
                                                                                status)
        reported = self.flow.reported
        parts = [head, reported if reported is not None else cache_lines(
            self.outcome, info.age, stored=self.stored, collapsed=self.collapsed)]
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
