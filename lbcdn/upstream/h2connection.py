"""HTTP/2 to a pool's targets (`protocol: h2` over TLS with ALPN, `h2c` with prior knowledge).

Job: carry the exchanges of an HTTP/2 pool on few connections per target, many streams on each,
so that the edge's exchange (an `UpstreamOwner`) works unchanged:
- an `H2Stream` is what the pool hands the exchange instead of an `UpstreamConnection` (it is
  one, by subclassing: the same begin/write/sent/abort calls, the same response timeout). The
  exchange writes the HTTP/1.1 request it would send any backend; the stream reads it back
  (lbcdn made those bytes, so their shape is known: a request line, `name: value` lines, then
  a Content-Length, chunked or absent body) and sends HEADERS and DATA frames. `Host` becomes
  `:authority`; connection-specific fields are left out (RFC 9113 8.2.2); `te: trailers` is
  always sent (gRPC servers require it, and it is the only `te` HTTP/2 allows);
- the response comes back through the owner's callbacks: its head as a ResponseHead (built
  from HTTP/2 fields through lbcdn.http.response.parse_head, so the same checks apply), DATA as
  body bytes, trailers with `upstream_trailers` (grpc-status and grpc-message reach the
  client), END_STREAM as `upstream_done`. A trailers-only response (a gRPC error: one HEADERS
  frame with END_STREAM) is given as a head and its grpc-* fields as trailers, so a viewer
  speaking HTTP/2 sends them as trailers again, where gRPC clients look for them;
- flow control both ways: request DATA is sent only within the stream's and the connection's
  send windows (the rest waits for WINDOW_UPDATE, and the client is paused meanwhile); response
  DATA is acknowledged (window given back) when the owner took it; while the owner asked to
  pause reading, only the connection's window is given back, the stream's when it reads
  again: a slow client stops its own stream (at most a stream window, 64 KiB, waits in lbcdn)
  and not the other streams;
- a connection takes new streams while fewer than the target's SETTINGS_MAX_CONCURRENT_STREAMS
  are open on it (100 until its SETTINGS arrive) and it did not send GOAWAY; streams above a
  GOAWAY's last stream id fail as `reset` (never processed: the exchange's rules may retry
  them). A connection with no stream closes after the pool's `idle_timeout_s`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import TYPE_CHECKING, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from lbcdn import writebatch
from lbcdn.http.errors import HttpError
from lbcdn.http.response import parse_head
from lbcdn.upstream.connection import UpstreamConnection, UpstreamOwner

if TYPE_CHECKING:
    from lbcdn.upstream.pool import Pool, Target

# assumed until the target's SETTINGS say otherwise (RFC 9113 6.5.2 recommends >= 100)
DEFAULT_MAX_STREAMS = 100
# request body bytes a stream holds beyond its send window before it pauses the client
SEND_BUFFER_BYTES = 256 * 1024
# fields of an HTTP/1.1 request that HTTP/2 does not carry (RFC 9113 8.2.2), and Host
# (carried as :authority) and TE (we send `te: trailers` ourselves)
_LEFT_OUT = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                       b"upgrade", b"host", b"te"))
# request reading states
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _CHUNK_END, _DONE = range(7)


class H2Stream(UpstreamConnection):
    """One request/response on an H2Connection, as the exchange sees an upstream connection."""

    def __init__(self, pool: Pool, target: Target, link: H2Connection) -> None:
        super().__init__(pool, target)
        self.multiplexed = True
        self.link = link
        self.stream_id = 0
        self._buf = b""
        self._state = _HEAD
        self._left = 0             # body bytes still to come (Content-Length or chunk)
        self._outq: list[bytes] = []   # request body waiting for the send window
        self._queued = 0
        self._end_queued = False
        self._unacked = 0          # response bytes taken while reading was paused
        self._head_only = False
        self._client_paused = False

    def begin(self, owner: UpstreamOwner, head_only: bool, sending: bool = False) -> None:
        super().begin(owner, head_only, sending)
        self._reader = None   # the response is read from frames, not parsed from bytes
        self._head_only = head_only

    # -- the request, as the exchange writes it -------------------------------------------
    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self._buf += data
        try:
            self._parse()
        except (ValueError, IndexError):
            self._fail("malformed_request")

    def writelines(self, parts: list[bytes]) -> None:
        self.write(b"".join(parts))

    def flush(self) -> None:
        pass

    def _parse(self) -> None:
        while self._buf or self._state == _DONE:
            state = self._state
            buf = self._buf
            if state == _DONE:
                self._buf = b""
                return
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                self._buf = buf[end + 4:]
                self._send_head(buf[:end])
            elif state == _LENGTH or state == _CHUNK_DATA:
                take = buf[:self._left]
                self._buf = buf[len(take):]
                self._left -= len(take)
                self._send_data(take)
                if self._left == 0:
                    if state == _LENGTH:
                        self._end_request()
                    else:
                        self._state = _CHUNK_CRLF
            elif state == _CHUNK_CRLF or state == _CHUNK_SIZE or state == _CHUNK_END:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                line, self._buf = buf[:end], buf[end + 2:]
                if state == _CHUNK_CRLF:
                    self._state = _CHUNK_SIZE
                elif state == _CHUNK_END:
                    if not line:   # the blank line after the last chunk (no trailers)
                        self._end_request()
                else:
                    size = int(line.split(b";", 1)[0], 16)
                    if size == 0:
                        self._state = _CHUNK_END
                    else:
                        self._left = size
                        self._state = _CHUNK_DATA
            if self._state == _DONE:
                self._buf = b""
                return

    def _send_head(self, block: bytes) -> None:
        lines = block.split(b"\r\n")
        method, target, _ = lines[0].split(b" ", 2)
        authority = b""
        length: int | None = None
        chunked = False
        fields: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            if name == b"host":
                authority = value
            elif name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.lower().endswith(b"chunked")
            if name not in _LEFT_OUT:
                fields.append((name, value))
        headers = [(b":method", method),
                   (b":scheme", b"https" if self.link.tls else b"http"),
                   (b":authority", authority or self.target.key_bytes),
                   (b":path", target), (b"te", b"trailers")] + fields
        if chunked:
            self._state = _CHUNK_SIZE
        elif length:
            self._state = _LENGTH
            self._left = length
        else:
            self._state = _DONE
        self.stream_id = self.link.open_stream(self, headers, self._state == _DONE)

    def _send_data(self, data: bytes) -> None:
        if data:
            self._outq.append(data)
            self._queued += len(data)
            self.link.send_queued(self)

    def _end_request(self) -> None:
        self._state = _DONE
        self._end_queued = True
        self.link.send_queued(self)

    # -- called by the H2Connection -------------------------------------------------------
    def queue_changed(self) -> None:
        """What waits for the send window went above or below SEND_BUFFER_BYTES."""
        paused = self._queued > SEND_BUFFER_BYTES
        if paused != self._writing_paused:
            if paused:
                self.pause_writing()
            else:
                self.resume_writing()

    def response_head_fields(self, fields: list[tuple[bytes, bytes]], ended: bool) -> None:
        status = 0
        lines: list[bytes] = []
        trailers: list[tuple[bytes, bytes]] = []
        grpc = False
        for name, value in fields:
            if name == b":status":
                status = int(value)
            elif name.startswith(b":"):
                raise HttpError(502, "unknown pseudo-header from upstream")
            elif ended and name.startswith(b"grpc-") and name != b"grpc-encoding":
                trailers.append((name, value))
            else:
                if name == b"content-type" and value.startswith(b"application/grpc"):
                    grpc = True
                lines.append(b"%s: %s\r\n" % (name, value))
        if ended and not grpc:
            lines += [b"%s: %s\r\n" % t for t in trailers]
            trailers = []
        head = parse_head(b"HTTP/1.1 %d \r\n%s\r\n" % (status, b"".join(lines)))
        self.got_bytes = True
        owner = self.owner
        if owner is None:
            return
        if status < 200:
            owner.upstream_interim(head)
            return
        self.target.answered_at = writebatch.now()
        owner.upstream_head(head)
        if trailers and self.owner is not None:
            self.owner.upstream_trailers(trailers)
        self._arm()

    def response_data(self, data: bytes, flow_length: int) -> None:
        owner = self.owner
        if owner is not None and data and not self._head_only:
            owner.upstream_body(data)
        if self._reading_paused:
            # the connection's window goes back at once (the other streams go on), the
            # stream's when the owner reads again: at most its window waits here
            self.link.ack_connection(flow_length)
            self._unacked += flow_length
        else:
            self.link.ack(self.stream_id, flow_length)
        self._arm()

    def response_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        if self.owner is not None:
            self.owner.upstream_trailers(fields)

    def response_ended(self) -> None:
        owner, self.owner = self.owner, None
        self._deadline.cancel()
        self._finish()
        if owner is not None:
            owner.upstream_done()

    def failed(self, kind: str) -> None:
        owner, self.owner = self.owner, None
        self._deadline.cancel()
        self._finish()
        if owner is not None:
            owner.upstream_failed(kind)

    def _finish(self) -> None:
        if not self.closed:
            self.closed = True
            self.link.pool.connections.discard(self)
            self.link.stream_finished(self)

    # -- what the exchange may call -------------------------------------------------------
    def pause_reading(self) -> None:
        self._reading_paused = True
        self._deadline.clear()

    def resume_reading(self) -> None:
        self._reading_paused = False
        unacked, self._unacked = self._unacked, 0
        if unacked and not self.closed:
            self.link.ack_stream(self.stream_id, unacked)
        self._arm()

    def close(self) -> None:
        """The exchange is done with this stream (or never used it): cancel what still runs."""
        self.abort()

    def abort(self) -> None:
        self.owner = None
        self._deadline.cancel()
        if not self.closed:
            self.link.reset(self)
            self._finish()

    def peer_closed(self) -> bool:
        return self.link.closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raise AssertionError("an H2Stream has no transport of its own")


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection to a target, carrying H2Streams."""

    def __init__(self, pool: Pool, target: Target, tls: bool) -> None:
        self.pool = pool
        self.target = target
        self.tls = tls
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Stream] = {}
        self.active = 0           # streams handed out and not finished
        self.closed = False
        self.going_away = False
        self.blocked: list[H2Stream] = []   # streams with request body waiting for a window
        self._idle: asyncio.TimerHandle | None = None
        self._counted = False     # in the target's count of open connections

    # -- capacity -------------------------------------------------------------------------
    def capacity(self) -> int:
        if self.closed or self.going_away:
            return 0
        limit = self.h2.remote_settings.max_concurrent_streams
        if limit > 2 ** 31:
            limit = DEFAULT_MAX_STREAMS   # no SETTINGS from the target yet
        return limit - self.active

    def new_stream(self) -> H2Stream:
        self.active += 1
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        stream = H2Stream(self.pool, self.target, self)
        self.pool.connections.add(stream)   # stall checks and deregistration cuts see it
        return stream

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # small frames (WINDOW_UPDATE, a HEADERS) must not wait for the peer's delayed
            # ACK behind Nagle's algorithm: that stalls a transfer to a few windows a second
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.target.open += 1
        self._counted = True
        self.h2.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()
            self._lost("malformed_response")
            return
        owns_batch = writebatch.begin()
        try:
            for event in events:
                self._event(event, events)
        finally:
            if owns_batch:
                writebatch.end()
        self._flush()

    def _event(self, event: h2.events.Event, events: list[h2.events.Event]) -> None:
        if isinstance(event, (h2.events.ResponseReceived,
                              h2.events.InformationalResponseReceived)):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None:
                ended = isinstance(event, h2.events.ResponseReceived) and \
                    event.stream_ended is not None
                try:
                    stream.response_head_fields(event.headers,
                                                ended)
                except (HttpError, ValueError):
                    self._reset_stream(stream, "malformed_response")
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None:
                stream.response_data(event.data or b"", event.flow_controlled_length or 0)
            else:
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0,
                                                  event.stream_id or 0)
        elif isinstance(event, h2.events.TrailersReceived):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None:
                stream.response_trailers(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.pop(event.stream_id or 0, None)
            if stream is not None:
                stream.response_ended()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id or 0, None)
            if stream is not None:
                stream.failed("reset")
        elif isinstance(event, h2.events.WindowUpdated):
            for stream in list(self.blocked):
                self.send_queued(stream)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.going_away = True
            last = event.last_stream_id or 0
            for sid, stream in list(self.streams.items()):
                if sid > last:
                    del self.streams[sid]
                    stream.failed("reset")
            if not self.streams:
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self.target.open -= 1
        self._lost("reset")

    def _lost(self, kind: str) -> None:
        self.closed = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            stream.failed(kind)
        if self.transport is not None:
            self.transport.abort()
        self.pool.h2_lost(self)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            try:
                self.h2.close_connection()
                self._flush()
            except h2.exceptions.ProtocolError:
                pass
            self.transport.close()
        self.going_away = True

    # -- what streams ask -----------------------------------------------------------------
    def open_stream(self, stream: H2Stream, headers: list[tuple[bytes, bytes]],
                    end: bool) -> int:
        if self.closed:
            raise ValueError("connection closed")
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, headers, end_stream=end)
        self.streams[sid] = stream
        self._flush()
        return sid

    def send_queued(self, stream: H2Stream) -> None:
        """Send what the windows allow of the stream's request body, and its end."""
        sid = stream.stream_id
        if sid not in self.streams or self.closed:
            return
        h = self.h2
        while stream._outq:
            room = min(h.local_flow_control_window(sid), h.max_outbound_frame_size)
            if room <= 0:
                break
            chunk = stream._outq[0]
            if len(chunk) > room:
                stream._outq[0] = chunk[room:]
                chunk = chunk[:room]
            else:
                stream._outq.pop(0)
            stream._queued -= len(chunk)
            h.send_data(sid, chunk)
        if not stream._outq and stream._end_queued:
            stream._end_queued = False
            h.end_stream(sid)
            stream.sent()
        waiting = bool(stream._outq) or stream._end_queued
        if waiting and stream not in self.blocked:
            self.blocked.append(stream)
        elif not waiting and stream in self.blocked:
            self.blocked.remove(stream)
        stream.queue_changed()
        self._flush()

    def ack(self, sid: int, size: int) -> None:
        """Give `size` bytes back to the connection's and the stream's windows."""
        self.ack_connection(size)
        self.ack_stream(sid, size)

    def ack_connection(self, size: int) -> None:
        if size and not self.closed:
            self.h2.increment_flow_control_window(size)
            self._flush()

    def ack_stream(self, sid: int, size: int) -> None:
        if size and not self.closed:
            try:
                self.h2.increment_flow_control_window(size, stream_id=sid)
            except h2.exceptions.StreamClosedError:
                pass
            self._flush()

    def reset(self, stream: H2Stream) -> None:
        sid = stream.stream_id
        if self.streams.pop(sid, None) is not None and not self.closed:
            try:
                self.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            except h2.exceptions.StreamClosedError:
                pass
            self._flush()

    def _reset_stream(self, stream: H2Stream, kind: str) -> None:
        self.reset(stream)
        stream.failed(kind)

    def stream_finished(self, stream: H2Stream) -> None:
        self.active -= 1
        if stream in self.blocked:
            self.blocked.remove(stream)
        if self.active <= 0 and not self.closed:
            if self.going_away:
                self.close()
            else:
                loop = asyncio.get_running_loop()
                self._idle = loop.call_later(self.pool.config.idle_timeout_s, self.close)

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)


def client_ssl(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """A pool's TLS context, offering only h2 by ALPN."""
    ctx.set_alpn_protocols(["h2"])
    return ctx
