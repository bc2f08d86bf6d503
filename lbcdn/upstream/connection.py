"""One keep-alive connection to a backend target, speaking HTTP/1.1.

The connection does not decide anything about the request it carries: it reads the response with
lbcdn.http.response.ResponseReader and hands events to its owner (an `UpstreamOwner`, the edge's
exchange), and reports failures with a kind the metrics and the status mapping understand. A
fresh reader is made for every exchange, so a HEAD response (whose Content-Length describes a
body that never comes) cannot confuse the next one. Bytes that arrive while the connection sits
idle in the pool mean the backend is broken or closing: the connection is dropped, never reused.

The response timeout (the pool's `response_timeout_s`) runs while the connection waits for the
backend: from the moment the whole request was written (`sent()`), and between response reads.
While the request body is still coming from the client, the client's pace is not the backend's
fault: the listener's body timeout governs then, unless the backend stops reading what we send
(the transport pauses writing) or has started to answer.
"""

from __future__ import annotations

import asyncio
import select
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from lbcdn import writebatch
from lbcdn.http.errors import HttpError
from lbcdn.http.head import ResponseHead
from lbcdn.http.response import ResponseReader, ResponseSink
from lbcdn.timers import Deadline
from lbcdn.writebatch import Writer, flush_to, write_to, writelines_to

if TYPE_CHECKING:
    # Only the annotation of `target`: the edge reads a connection's target as the pool's
    # Target. At run time connection.py imports nothing of the pool (which imports it).
    from lbcdn.upstream.pool import Target


@mypyc_attr(allow_interpreted_subclasses=True)
class UpstreamOwner:
    """Who an upstream connection works for (the edge's exchange, the cache's origin fetch).
    A base class for the reason given at lbcdn.http.response.ResponseSink."""

    def upstream_interim(self, head: ResponseHead) -> None:
        raise NotImplementedError

    def upstream_head(self, head: ResponseHead) -> None:
        raise NotImplementedError

    def upstream_body(self, data: bytes) -> None:
        raise NotImplementedError

    def upstream_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        """Trailer fields of the response (from an HTTP/2 target; HTTP/1.1 trailers are not
        forwarded), before `upstream_done`. An owner that cannot carry them drops them."""

    def upstream_done(self) -> None:
        raise NotImplementedError

    def upstream_upgraded(self, head: ResponseHead, rest: bytes) -> None:
        raise NotImplementedError

    def upstream_failed(self, kind: str) -> None:
        raise NotImplementedError

    def upstream_paused(self, paused: bool) -> None:
        raise NotImplementedError

    def upstream_reusable(self) -> bool:
        raise NotImplementedError


@mypyc_attr(allow_interpreted_subclasses=True)
class ConnectionHome:
    """What a connection needs from the pool that opened it (lbcdn.upstream.pool.Pool, or a
    test's fake): the pool subclasses it, so this module does not import the pool. A base class
    for the reason given at lbcdn.http.response.ResponseSink."""

    # the pool's response_timeout_s, read by each new connection
    response_timeout_s: float

    def connection_opened(self, conn: UpstreamConnection) -> None:
        raise NotImplementedError

    def connection_closed(self, conn: UpstreamConnection) -> None:
        raise NotImplementedError

    def release(self, conn: UpstreamConnection) -> None:
        """An exchange finished cleanly on `conn`: keep it for reuse, or close it."""
        raise NotImplementedError


# An asyncio protocol by its methods only; see lbcdn.edge.connection.ClientConnection.
# lbcdn.upstream.h2connection.H2Stream subclasses it (interpreted): one stream of an HTTP/2
# connection, handed to the exchange in place of a connection.
@mypyc_attr(allow_interpreted_subclasses=True)
class UpstreamConnection(ResponseSink, Writer):
    def __init__(self, pool: ConnectionHome, target: Target) -> None:
        self.pool = pool
        self.target = target
        self.transport = None
        self._pending: list[bytes] | None = None
        self.owner: UpstreamOwner | None = None
        self.reused = False          # has carried at least one complete exchange
        self.got_bytes = False       # any response byte for the current exchange
        self.closed = False
        self.idle_since = 0.0
        self.in_idle = False
        self.tunnel: UpstreamOwner | None = None
        self.multiplexed = False     # an HTTP/2 stream: never kept idle, closed when done
        self.sending = False         # the request body is still coming from the client
        self._reading_paused = False
        self._writing_paused = False
        self._reader: ResponseReader | None = None
        self._timeout = pool.response_timeout_s
        self._deadline = Deadline(asyncio.get_event_loop(), self._timed_out)

    # The Writer methods again, as this class's own: compiled code calls a trait's methods
    # through the compiled class's table, which an interpreted subclass (H2Stream) cannot
    # override; a method of this class it can.
    def write(self, data: bytes) -> None:
        write_to(self, data)

    def writelines(self, parts: list[bytes]) -> None:
        writelines_to(self, parts)

    def flush(self) -> None:
        flush_to(self)

    # -- lifecycle ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = transport  # type: ignore[assignment]
        self.pool.connection_opened(self)

    def begin(self, owner: UpstreamOwner, head_only: bool, sending: bool = False) -> None:
        """Take on a new exchange; the caller writes the request right after. `sending`: more
        of the request body is to come from the client (see `sent()`)."""
        self.owner = owner
        self.got_bytes = False
        self.sending = sending
        self._reader = ResponseReader(self, head_only)
        self._arm()

    def sent(self) -> None:
        """The whole request has been written: from now on the backend is waited for."""
        if self.sending:
            self.sending = False
            self._arm()

    def body_follows(self) -> None:
        """The backend asked for the body (100 Continue): until it has all been sent, the
        client's pace governs."""
        if not self.sending:
            self.sending = True
            self._arm()

    def touch(self) -> None:
        """The exchange made progress (a body chunk sent): push a running deadline back."""
        if self._deadline.at is not None:
            self._deadline.set(self._timeout)

    def _arm(self) -> None:
        """Run the response timeout while the exchange waits for the backend, else stop it."""
        if self.owner is not None and self.tunnel is None and not self._reading_paused and (
                not self.sending or self._writing_paused or self.got_bytes):
            self._deadline.set(self._timeout)
        else:
            self._deadline.clear()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()
            self._reading_paused = True
            self._deadline.clear()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
            self._reading_paused = False
            self._arm()

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

    def peer_closed(self) -> bool:
        """Has the backend closed or reset this idle connection already? Its FIN or RST may
        sit in the kernel while the loop has not delivered it yet (it comes in the loop's next
        round), and a request written now would be lost with it. One poll(2), no wait: an
        idle connection that is readable at all (EOF, RST, unsolicited bytes) is not reused."""
        transport = self.transport
        if transport is None:
            return True
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._deadline.cancel()
        self.pool.connection_closed(self)
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.upstream_failed("closed")
            return
        reader = self._reader
        if self.owner is not None and reader is not None:
            try:
                if reader.eof():
                    return  # read-until-close framing ended here
            except HttpError:
                pass
            owner, self.owner = self.owner, None
            owner.upstream_failed("reset")

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost finishes the exchange

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._arm()
        target = self.tunnel or self.owner
        if target is not None:
            target.upstream_paused(True)

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._arm()
        target = self.tunnel or self.owner
        if target is not None:
            target.upstream_paused(False)

    def waiting_since(self) -> float | None:
        """Since when (the loop's clock) the backend owes this exchange a response head, or
        None when it owes none (idle, still receiving the body, answering, a tunnel)."""
        at = self._deadline.at
        if self.owner is None or self.got_bytes or self.sending or at is None:
            return None
        return at - self._timeout

    def _timed_out(self) -> None:
        owner, self.owner = self.owner, None
        self.abort()
        if owner is not None:
            owner.upstream_failed("response_timeout")

    # -- data -----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.upstream_body(data)
            return
        reader = self._reader
        if self.owner is None or reader is None:
            self.abort()  # unsolicited bytes on an idle connection
            return
        self.got_bytes = True
        owns_batch = writebatch.begin()
        try:
            reader.feed(data)
        except HttpError:
            self._fail("malformed_response")
        finally:
            if owns_batch:
                writebatch.end()
        # progress pushes the deadline back, if the exchange still runs (usually this read
        # completed it, and the deadline was cleared; `_arm` reads the owner afresh)
        self._arm()

    def cut(self) -> None:
        """The target's deregistration delay ran out with this connection busy: end its
        exchange (or tunnel) as ALB does, by closing the connection."""
        self._fail("deregistered")

    def _fail(self, kind: str) -> None:
        owner, self.owner = self.owner, None
        self.abort()
        if owner is not None:
            owner.upstream_failed(kind)

    # -- ResponseSink ---------------------------------------------------------------------
    def response_interim(self, head: ResponseHead) -> None:
        if self.owner is not None:
            self.owner.upstream_interim(head)

    def response_head(self, head: ResponseHead) -> None:
        self.target.answered_at = writebatch.now()  # alive: see Pool.check_stalls
        if self.owner is not None:
            self.owner.upstream_head(head)

    def response_body(self, data: bytes) -> None:
        if self.owner is not None:
            self.owner.upstream_body(data)

    def response_upgrade(self, head: ResponseHead, rest: bytes) -> None:
        owner, self.owner = self.owner, None
        self._deadline.cancel()
        self._reader = None
        if owner is None:
            self.abort()
            return
        self.tunnel = owner
        owner.upstream_upgraded(head, rest)

    def response_done(self, reusable: bool) -> None:
        owner, self.owner = self.owner, None
        self._deadline.clear()
        self._reader = None
        if reusable and owner is not None and owner.upstream_reusable():
            self.reused = True
            self.pool.release(self)
        else:
            self.close()
        if owner is not None:
            owner.upstream_done()
