"""One keep-alive connection to a backend target, speaking HTTP/1.1 with httptools.

The connection does not decide anything about the request it carries: it parses the response and
hands events to its owner (an `UpstreamOwner`, the edge's exchange), and reports failures with a
kind the metrics and the status mapping understand. A fresh response parser is made for every
exchange, so a HEAD response (whose Content-Length describes a body that never comes) cannot
confuse the next one. Bytes that arrive while the connection sits idle in the pool mean the
backend is broken or closing: the connection is dropped, never reused.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

import httptools

from lbcdn.http.errors import HttpError
from lbcdn.http.head import ResponseHead, check_response
from lbcdn import writebatch
from lbcdn.timers import Deadline
from lbcdn.writebatch import Writer

if TYPE_CHECKING:
    from lbcdn.upstream.pool import Pool, Target


class UpstreamOwner(Protocol):
    def upstream_interim(self, status: int, reason: bytes,
                         headers: list[tuple[bytes, bytes]]) -> None: ...
    def upstream_head(self, head: ResponseHead) -> None: ...
    def upstream_body(self, data: bytes) -> None: ...
    def upstream_done(self) -> None: ...
    def upstream_upgraded(self, head: ResponseHead, rest: bytes) -> None: ...
    def upstream_failed(self, kind: str) -> None: ...
    def upstream_paused(self, paused: bool) -> None: ...
    def upstream_reusable(self) -> bool: ...


class UpstreamConnection(Writer, asyncio.Protocol):
    def __init__(self, pool: Pool, target: Target) -> None:
        self.pool = pool
        self.target = target
        self.transport: asyncio.Transport | None = None
        self._pending: list[bytes] | None = None
        self.owner: UpstreamOwner | None = None
        self.reused = False          # has carried at least one complete exchange
        self.got_bytes = False       # any response byte for the current exchange
        self.closed = False
        self.idle_since = 0.0
        self.in_idle = False
        self.tunnel: UpstreamOwner | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._head_only = False
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head: ResponseHead | None = None
        self._interim = False
        self._close_delimited = False
        self._deadline = Deadline(asyncio.get_event_loop(), self._timed_out)

    # -- lifecycle ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = transport  # type: ignore[assignment]
        self.pool.connection_opened(self)

    def begin(self, owner: UpstreamOwner, head_only: bool) -> None:
        """Take on a new exchange; the caller writes the request right after."""
        self.owner = owner
        self.got_bytes = False
        self._head_only = head_only
        self._head = None
        self._headers = []
        self._interim = False
        self._close_delimited = False
        self._parser = httptools.HttpResponseParser(self)
        self._deadline.set(self.pool.config.response_timeout_s)

    def touch(self) -> None:
        """The exchange made progress (a body chunk sent): push the deadline back."""
        if self._deadline.at is not None:
            self._deadline.set(self.pool.config.response_timeout_s)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()
            self._deadline.clear()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
            if self.owner is not None and self.tunnel is None:
                self._deadline.set(self.pool.config.response_timeout_s)

    def close(self) -> None:
        if not self.closed:
            self.flush()
            self.closed = True
            self._deadline.cancel()
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self._pending = None
        self.closed = True
        self._deadline.cancel()
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._deadline.cancel()
        self.pool.connection_closed(self)
        owner, self.owner = self.owner, None
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.upstream_failed("closed")
        elif owner is not None:
            if self._head is not None and self._close_delimited:
                owner.upstream_done()  # read-until-close framing ends here
            else:
                owner.upstream_failed("reset")

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost finishes the exchange

    def pause_writing(self) -> None:
        target = self.tunnel or self.owner
        if target is not None:
            target.upstream_paused(True)

    def resume_writing(self) -> None:
        target = self.tunnel or self.owner
        if target is not None:
            target.upstream_paused(False)

    def _timed_out(self) -> None:
        owner, self.owner = self.owner, None
        self.abort()
        if owner is not None:
            owner.upstream_failed("response_timeout")

    # -- data -----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        owner = writebatch.begin()
        try:
            self._received(data)
        finally:
            if owner:
                writebatch.end()

    def _received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_body(data)
            return
        owner = self.owner
        if owner is None or self._parser is None:
            self.abort()  # unsolicited bytes on an idle connection
            return
        self.got_bytes = True
        if self._deadline.at is not None:
            self._deadline.set(self.pool.config.response_timeout_s)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            head = self._head
            if head is None or head.status != 101:
                self._fail("malformed_response")
                return
            self._deadline.cancel()
            self.tunnel = owner
            self.owner = None
            owner.upstream_upgraded(head, data[exc.args[0]:])
        except (httptools.HttpParserError, HttpError, ValueError):
            self._fail("malformed_response")

    def _fail(self, kind: str) -> None:
        owner, self.owner = self.owner, None
        self.abort()
        if owner is not None:
            owner.upstream_failed(kind)

    # httptools callbacks
    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None and self.owner is not None
        status = parser.get_status_code()
        headers, self._headers = self._headers, []
        reason, self._reason = self._reason, b""
        if 100 <= status < 200 and status != 101:
            self._interim = True
            self.owner.upstream_interim(status, reason, headers)
            return
        head = check_response(status, reason, headers, parser.should_keep_alive())
        self._head = head
        if status == 101:
            return  # the parser raises HttpParserUpgrade next
        self._close_delimited = (head.content_length is None and not head.chunked
                                 and not self._head_only and status not in (204, 304))
        self.owner.upstream_head(head)
        if self._head_only:
            self._finish(head.keep_alive)

    def on_body(self, data: bytes) -> None:
        if self.owner is not None and not self._head_only:
            self.owner.upstream_body(data)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        head = self._head
        if head is None or head.status == 101 or self._head_only:
            return
        self._finish(head.keep_alive and not self._close_delimited)

    def _finish(self, keep_alive: bool) -> None:
        owner, self.owner = self.owner, None
        self._deadline.clear()
        self._parser = None
        if keep_alive and owner is not None and owner.upstream_reusable():
            self.reused = True
            self.pool.release(self)
        else:
            self.close()
        if owner is not None:
            owner.upstream_done()
