"""The built-in demo backend: a small, fast HTTP/1.1 app server the daemon starts as a backend.

It makes the default config work with nothing else installed, is the peer of the end-to-end
tests and a load-test target, so it has to speak HTTP/1.1 exactly (keep-alive, HTTP/1.0,
pipelining, 100-continue, 1xx, upgrades) and must never be the bottleneck of a benchmark.
Endpoints are listed in lbcdn/demo/__init__.py; which one a request hits is decided by the pure
`routes.route()`.

Rules:
- One `DemoProtocol` per connection: an asyncio.Protocol fed by httptools. No task per request;
  slow answers (/delay, /bytes streaming, /echo streaming) are driven by timers and the
  transport's pause_writing/resume_writing callbacks.
- Responses go out strictly in request order. Requests parsed while an earlier response is still
  in progress wait in `_queue`; reading pauses when that queue or its buffered bodies grow.
- Nothing holds a whole body: /bytes writes a shared 64 KiB chunk while the transport accepts
  more, /echo writes what arrives and stops reading while the client does not read, /sink hashes
  as it reads.
- Closing after a response is a lingering close (FIN, then discard input for a while), so a
  client that is still sending does not lose the response to a TCP reset.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import signal
from collections import deque
from collections.abc import Callable
from typing import cast

import httptools

from lbcdn.demo import routes
from lbcdn.demo.routes import PATTERN_CHUNK, Kind, Route, has_no_body, status_line
from lbcdn.demo.websocket import (OP_CLOSE, OP_PING, OP_PONG, FrameDecoder, WebSocketError,
                                  encode_frame)
from lbcdn.http.date import http_date
from lbcdn.http.websocket import accept_key

log = logging.getLogger("lbcdn.demo")

MAX_HEAD_BYTES = 64 * 1024
# A pipelining client may run ahead of slow responses by this much before reading pauses.
_MAX_QUEUED_REQUESTS = 16
_MAX_QUEUED_BODY_BYTES = 256 * 1024
# Write buffer above which the transport calls pause_writing: large enough that /bytes at full
# speed is not woken up for every chunk, small enough to bound memory per connection.
_WRITE_HIGH_WATER = 256 * 1024
_LINGER_S = 2.0
_CHUNK = routes.CHUNK_BYTES

_TEXT = b"Content-Type: text/plain; charset=utf-8\r\n"
_JSON = b"Content-Type: application/json\r\n"
_OCTETS = b"Content-Type: application/octet-stream\r\n"
_CLOSE = b"Connection: close\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n"
_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
_ERROR_BODIES = {400: b"bad request\n", 431: b"request head too large\n",
                 500: b"demo backend failed\n"}
# Request headers the router or the framing needs; all others are only echoed.
_SPECIAL = frozenset({b"expect", b"content-length", b"transfer-encoding", b"upgrade",
                      b"sec-websocket-key", b"sec-websocket-version"})


class _Reject(Exception):
    """Raised inside a parser callback to stop parsing and answer `status`."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class BackendState:
    """What all connections of one demo backend share."""

    def __init__(self, name: str) -> None:
        if not name.isprintable() or not name.isascii() or not name:
            raise ValueError(f"demo backend name {name!r} must be printable ASCII")
        self.name = name
        self.backend_line = b"X-Backend: " + name.encode("ascii") + b"\r\n"
        self._date = b""
        self._lines = b""
        self.requests = 0
        self.connections: set[DemoProtocol] = set()

    def lines(self) -> bytes:
        """X-Backend and Date (RFC 9110 6.6.1: an origin server with a clock sends one), the
        same bytes object for a whole second."""
        date = http_date()
        if date is not self._date:
            self._date = date
            self._lines = b"%sDate: %s\r\n" % (self.backend_line, date)
        return self._lines

    def close_connections(self) -> None:
        for conn in list(self.connections):
            conn.close()


class _Request:
    __slots__ = ("method", "path", "query", "version", "headers", "keep_alive", "route",
                 "expect_continue", "has_body", "chunked_in", "content_length", "ws_key",
                 "started", "complete", "busy", "done", "body_bytes", "hasher", "chunks",
                 "chunked_out", "remaining", "abort")

    def __init__(self, method: bytes, path: str, query: str, version: str,
                 headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.route = routes.ECHO
        self.expect_continue = False
        self.has_body = False
        self.chunked_in = False
        self.content_length: int | None = None
        self.ws_key = ""
        self.started = False    # became the head of the queue: its response may begin
        self.complete = False   # the whole request, body included, has been parsed
        self.busy = False       # a response is in progress (timer or producer)
        self.done = False       # the response has been written completely
        self.body_bytes = 0
        self.hasher: hashlib._Hash | None = None
        self.chunks: list[bytes] = []  # body received before its turn (ECHO_STREAM only)
        self.chunked_out = False
        self.remaining = 0
        self.abort = False


class DemoProtocol(asyncio.Protocol):
    def __init__(self, state: BackendState) -> None:
        self._state = state
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._client = ""
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[_Request] = deque()
        self._cur: _Request | None = None    # the request being parsed
        self._last: _Request | None = None   # the last request whose head was parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._special: dict[bytes, bytes] | None = None
        self._in_head = False
        self._head_size = 0
        self._head_seen = 0
        self._head_fresh = False
        self._queued_bytes = 0
        self._fail_status = 0
        self._peer_eof = False
        self._closing = False
        self._write_paused = False
        self._reading_paused = False
        self._producer: _Request | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._ws: FrameDecoder | None = None
        self._upgrade_buf: bytearray | None = None  # bytes after a queued WebSocket handshake

    # --- transport callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio's.
        self._transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            host = str(peer[0])
            self._client = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
        self._state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._state.connections.discard(self)
        self._producer = None
        for handle in (self._timer, self._linger):
            if handle is not None:
                handle.cancel()
        self._timer = self._linger = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # lingering close: input is read and dropped
        if self._ws is not None:
            self._ws_data(data)
        elif self._upgrade_buf is not None:
            self._upgrade_buf += data
        else:
            self._feed(data)

    def eof_received(self) -> bool:
        self._peer_eof = True
        if self._closing or self._ws is not None:
            return False
        # A half-closed client still gets the answers to the requests it sent in full; a
        # request cut short can never complete, so it is dropped.
        req = self._cur
        if req is not None and self._queue and self._queue[-1] is req:
            if req.started and req.route.kind is Kind.ECHO_STREAM:
                return False
            self._queue.pop()
        self._cur = None
        self._advance()
        return True

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        req = self._producer
        if req is not None and self._pump(req):
            self._producer = None
            req.busy = False
            self._advance()
        else:
            self._update_reading()

    def close(self) -> None:
        """Close now (server shutdown); whatever is in flight is cut off."""
        if self._transport is not None and not self._transport.is_closing():
            self._closing = True
            self._transport.close()

    # --- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_fresh = True
        self._head_seen = 0
        self._head_size = 0
        self._url = b""
        self._headers = []
        self._special = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD_BYTES:
            raise _Reject(431)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD_BYTES:
            raise _Reject(431)
        lname = name.lower()
        if lname in _SPECIAL:
            if self._special is None:
                self._special = {}
            self._special[lname] = value

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_seen = 0
        if self._closing:
            return
        parser = self._parser
        method = parser.get_method()
        url = self._url
        if url[:1] == b"/":
            q = url.find(b"?")
            path, query = (url, b"") if q < 0 else (url[:q], url[q + 1:])
        elif url == b"*" and method == b"OPTIONS":
            path, query = url, b""
        else:
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise _Reject(400) from None
            if parsed.schema is None:
                raise _Reject(400)
            path, query = parsed.path or b"/", parsed.query or b""
        req = _Request(method, path.decode("latin-1"), query.decode("latin-1"),
                       parser.get_http_version(), self._headers, parser.should_keep_alive())
        special = self._special
        if special is None:
            req.route = routes.route(method, req.path, req.query)
        else:
            self._read_special(req, special)
        if req.route.kind is Kind.SINK:
            req.hasher = hashlib.sha256()
        self._cur = self._last = req
        self._queue.append(req)
        if len(self._queue) == 1:
            # Its turn has come. Only what precedes the body can be said yet, so the full
            # _advance() is needed only when that already finished the exchange (417, 101).
            req.started = True
            self._begin(req)
            if req.done:
                self._advance()
        else:
            self._update_reading()

    def _read_special(self, req: _Request, special: dict[bytes, bytes]) -> None:
        def text(name: bytes) -> str | None:
            value = special.get(name)
            return None if value is None else value.decode("latin-1")

        te = special.get(b"transfer-encoding")
        cl = special.get(b"content-length")
        req.chunked_in = te is not None
        if cl is not None:
            req.content_length = int(cl)  # llhttp has already refused anything but digits
        req.has_body = req.chunked_in or bool(req.content_length)
        req.expect_continue = special.get(b"expect", b"").lower() == b"100-continue"
        req.ws_key = (text(b"sec-websocket-key") or "").strip()
        req.route = routes.route(req.method, req.path, req.query,
                                 upgrade=text(b"upgrade"), ws_key=text(b"sec-websocket-key"),
                                 ws_version=text(b"sec-websocket-version"),
                                 can_upgrade=self._parser.should_upgrade())

    def on_body(self, body: bytes) -> None:
        req = self._cur
        if req is None or self._closing:
            return
        req.body_bytes += len(body)
        kind = req.route.kind
        if kind is Kind.SINK:
            assert req.hasher is not None
            req.hasher.update(body)
        elif kind is Kind.ECHO_STREAM:
            if req.started:
                self._write_echo_chunk(req, body)
            else:
                req.chunks.append(body)
                self._queued_bytes += len(body)
                self._update_reading()

    def on_message_complete(self) -> None:
        req = self._cur
        self._cur = None
        if req is None or self._closing:
            return
        req.complete = True
        if self._queue and self._queue[0] is req:
            self._advance()

    # --- parsing -------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._after_upgrade(data[int(exc.args[0]):])
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._parse_failed(cause.status)
            else:
                log.error("demo backend %s: request handling failed", self._state.name,
                          exc_info=cause)
                self._parse_failed(500)
            return
        except httptools.HttpParserError:
            self._parse_failed(400)
            return
        if self._in_head:
            # httptools buffers a header line until it ends, out of sight of on_header; this
            # bounds that buffer too. The chunk a head began in is not counted: it may hold
            # many whole pipelined requests before it.
            if self._head_fresh:
                self._head_fresh = False
            else:
                self._head_seen += len(data)
                if self._head_seen > MAX_HEAD_BYTES:
                    self._parse_failed(431)

    def _after_upgrade(self, rest: bytes) -> None:
        req = self._last
        if req is not None and req.route.kind is Kind.WEBSOCKET:
            if self._ws is not None:
                if rest:
                    self._ws_data(rest)
            elif not self._closing:
                # Its turn has not come: keep what follows the handshake for the WebSocket.
                self._upgrade_buf = bytearray(rest)
                self._update_reading()
            return
        # Any other upgrade is declined by answering normally; HTTP goes on with a fresh parser
        # because llhttp stopped at the upgrade.
        self._parser = httptools.HttpRequestParser(self)
        if rest and not self._closing:
            self._feed(rest)

    def _parse_failed(self, status: int) -> None:
        self._in_head = False
        req = self._cur
        self._cur = None
        if req is not None and self._queue and self._queue[-1] is req:
            if req.started and req.route.kind is Kind.ECHO_STREAM:
                self._abort()  # its response is already on the wire: all we can do is cut it
                return
            self._queue.pop()
            self._queued_bytes -= sum(len(c) for c in req.chunks)
        self._fail_status = status
        self._advance()

    # --- responses in order --------------------------------------------------------------

    def _advance(self) -> None:
        """Start, finish and retire responses in request order until one must wait."""
        queue = self._queue
        while queue and not self._closing:
            req = queue[0]
            if not req.started:
                req.started = True
                self._begin(req)
                if self._ws is not None:
                    return
            if req.busy:
                break
            if not req.done:
                if not req.complete:
                    break
                self._respond(req)
                if not req.done:
                    break
            queue.popleft()
            if not req.keep_alive:
                self._close()
                return
        if not queue and not self._closing:
            if self._fail_status:
                self._write_error(self._fail_status)
                self._close()
                return
            if self._peer_eof:
                self._close()
                return
        self._update_reading()

    def _begin(self, req: _Request) -> None:
        """The request is next to be answered: say what can be said before its body."""
        self._state.requests += 1
        kind = req.route.kind
        if kind is Kind.EXPECT_FAIL:
            req.keep_alive = False
            self._write_response(req, 417, b"expectation failed\n", _TEXT)
            req.done = True
            return
        if kind is Kind.WEBSOCKET:
            self._accept_websocket(req)
            return
        if req.expect_continue and req.has_body and not req.complete and req.version != "1.0":
            self._write(_CONTINUE)
        if kind is Kind.ECHO_STREAM:
            self._start_echo_stream(req)

    def _respond(self, req: _Request) -> None:
        """The request has been read completely: answer it (or start answering it)."""
        route = req.route
        kind = route.kind
        if kind is Kind.ECHO or kind is Kind.CLOSE:
            if kind is Kind.CLOSE:
                req.keep_alive = False
            self._write_response(req, 200, self._echo_json(req), _JSON)
        elif kind is Kind.ECHO_STREAM:
            if req.chunked_out:
                self._write(_LAST_CHUNK)
        elif kind is Kind.SINK:
            assert req.hasher is not None
            summary = {"body_bytes": req.body_bytes, "sha256": req.hasher.hexdigest()}
            self._write_response(req, 200, json.dumps(summary).encode(), _JSON)
        elif kind is Kind.BYTES:
            self._start_bytes(req, route)
            return
        elif kind is Kind.STATUS:
            self._write_response(req, route.number, b"status %d\n" % route.number, _TEXT)
        elif kind is Kind.DELAY:
            req.busy = True
            self._timer = self._loop.call_later(route.number / 1000, self._delay_done, req)
            return
        elif kind is Kind.EARLY_HINTS:
            if req.version != "1.0":  # RFC 9110 15.2: no 1xx to an HTTP/1.0 client
                self._write(_EARLY_HINTS)
            self._write_response(req, 200, self._echo_json(req), _JSON)
        elif kind is Kind.HEADERS_SET:
            self._headers_set(req, route)
        elif kind is Kind.COUNT:
            body = json.dumps({"requests": self._state.requests}).encode()
            self._write_response(req, 200, body, _JSON)
        elif kind is Kind.NEED_UPGRADE:
            self._write_response(req, 426, b"this endpoint needs Upgrade: websocket\n", _TEXT,
                                 b"Upgrade: websocket\r\n")
        else:  # BAD
            extra = b"".join(f"{n}: {v}\r\n".encode("latin-1") for n, v in route.headers)
            self._write_response(req, route.number, route.reason.encode() + b"\n", _TEXT, extra)
        req.done = True

    def _echo_json(self, req: _Request) -> bytes:
        return json.dumps({
            "backend": self._state.name,
            "method": req.method.decode("latin-1"),
            "path": req.path,
            "query": req.query,
            "http_version": req.version,
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in req.headers],
            "body_bytes": req.body_bytes,
            "client": self._client,
        }).encode()

    def _headers_set(self, req: _Request, route: Route) -> None:
        extra = b"".join(f"{n}: {v}\r\n".encode("latin-1") for n, v in route.headers)
        connection = [v.lower() for n, v in route.headers if n.lower() == "connection"]
        if connection and any("close" in v for v in connection):
            req.keep_alive = False
        self._write_response(req, 200, self._echo_json(req), _JSON, extra,
                             connection_header=not connection)

    def _delay_done(self, req: _Request) -> None:
        self._timer = None
        if self._closing:
            return
        self._write_response(req, 200, self._echo_json(req), _JSON)
        req.busy = False
        req.done = True
        self._advance()

    def _write_response(self, req: _Request, status: int, body: bytes, content_type: bytes,
                        extra: bytes = b"", *, connection_header: bool = True) -> None:
        parts = [status_line(status), self._state.lines()]
        if has_no_body(status):
            body = b""
            parts.append(extra)
        else:
            parts += (content_type, extra, b"Content-Length: %d\r\n" % len(body))
        if connection_header:
            if not req.keep_alive:
                parts.append(_CLOSE)
            elif req.version == "1.0":
                parts.append(_KEEP_ALIVE)
        parts.append(b"\r\n")
        if body and req.method != b"HEAD":
            parts.append(body)
        self._write(b"".join(parts))

    def _write_error(self, status: int) -> None:
        body = _ERROR_BODIES.get(status, b"error\n")
        self._write(b"".join((status_line(status), self._state.lines(), _TEXT,
                              b"Content-Length: %d\r\n" % len(body), _CLOSE, b"\r\n", body)))

    def _connection_line(self, req: _Request) -> bytes:
        if not req.keep_alive:
            return _CLOSE
        return _KEEP_ALIVE if req.version == "1.0" else b""

    # --- streamed bodies -----------------------------------------------------------------

    def _start_echo_stream(self, req: _Request) -> None:
        framing: bytes
        if req.chunked_in and req.version != "1.0":
            req.chunked_out = True
            framing = _CHUNKED
        elif req.chunked_in:
            req.keep_alive = False  # no chunked to HTTP/1.0: the end of the body is the close
            framing = b""
        else:
            framing = b"Content-Length: %d\r\n" % (req.content_length or 0)
        self._write(b"".join((status_line(200), self._state.lines(), _OCTETS, framing,
                              self._connection_line(req), b"\r\n")))
        for chunk in req.chunks:
            self._queued_bytes -= len(chunk)
            self._write_echo_chunk(req, chunk)
        req.chunks.clear()

    def _write_echo_chunk(self, req: _Request, data: bytes) -> None:
        if self._transport is None or self._closing:
            return
        if req.chunked_out:
            self._transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self._transport.write(data)

    def _start_bytes(self, req: _Request, route: Route) -> None:
        chunked = route.chunked and req.version != "1.0"
        if route.close or route.chunked and not chunked:
            req.keep_alive = False
            framing = b""  # read-until-close
        elif chunked:
            framing = _CHUNKED
        else:
            framing = b"Content-Length: %d\r\n" % route.number
        self._write(b"".join((status_line(200), self._state.lines(), _OCTETS, framing,
                              self._connection_line(req), b"\r\n")))
        if req.method == b"HEAD":
            req.done = True
            return
        req.chunked_out = chunked
        req.abort = route.abort_after is not None
        req.remaining = route.number if route.abort_after is None else route.abort_after
        if self._pump(req):
            return
        req.busy = True
        self._producer = req

    def _pump(self, req: _Request) -> bool:
        """Write /bytes chunks while the transport takes them; True when the body is done."""
        transport = self._transport
        while req.remaining > 0:
            if self._write_paused or self._closing or transport is None:
                return False
            n = _CHUNK if req.remaining >= _CHUNK else req.remaining
            data = PATTERN_CHUNK if n == _CHUNK else PATTERN_CHUNK[:n]
            if req.chunked_out:
                transport.writelines((b"%x\r\n" % n, data, b"\r\n"))
            else:
                transport.write(data)
            req.remaining -= n
        if req.abort:
            self._close()  # the client sees fewer bytes than announced, then the end
        elif req.chunked_out:
            self._write(_LAST_CHUNK)
        req.done = True
        return True

    # --- WebSocket -----------------------------------------------------------------------

    def _accept_websocket(self, req: _Request) -> None:
        self._write(b"".join((
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
            b"Sec-WebSocket-Accept: ", accept_key(req.ws_key).encode("ascii"), b"\r\n",
            self._state.lines(), b"\r\n")))
        req.done = True
        self._queue.clear()
        self._ws = FrameDecoder()
        pending = self._upgrade_buf
        self._upgrade_buf = None
        if pending:
            self._ws_data(bytes(pending))
        self._update_reading()

    def _ws_data(self, data: bytes) -> None:
        assert self._ws is not None
        try:
            frames = self._ws.feed(data)
        except WebSocketError as exc:
            self._write(encode_frame(OP_CLOSE, exc.code.to_bytes(2, "big")))
            self._close()
            return
        out: list[bytes] = []
        for frame in frames:
            if frame.opcode == OP_PING:
                out.append(encode_frame(OP_PONG, frame.payload))
            elif frame.opcode == OP_PONG:
                continue
            elif frame.opcode == OP_CLOSE:
                out.append(encode_frame(OP_CLOSE, frame.payload))
                self._write(b"".join(out))
                self._close()
                return
            else:
                out.append(encode_frame(frame.opcode, frame.payload, fin=frame.fin))
        if out and self._transport is not None:
            self._transport.writelines(out)

    # --- plumbing ------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._closing:
            self._transport.write(data)

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        pause = (self._write_paused or self._fail_status != 0
                 or self._upgrade_buf is not None
                 or len(self._queue) > _MAX_QUEUED_REQUESTS
                 or self._queued_bytes > _MAX_QUEUED_BODY_BYTES)
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _close(self) -> None:
        """Lingering close: FIN after the buffered output, then drop input until the peer
        closes too or the linger time ends."""
        transport = self._transport
        if transport is None or self._closing:
            return
        self._closing = True
        if self._peer_eof or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        self._linger = self._loop.call_later(_LINGER_S, transport.close)

    def _abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()


async def start_backend(address: str, port: int,
                        name: str) -> tuple[asyncio.AbstractServer, BackendState]:
    """Start listening; the state gives access to the counters and open connections."""
    state = BackendState(name)
    loop = asyncio.get_running_loop()
    factory: Callable[[], DemoProtocol] = lambda: DemoProtocol(state)  # noqa: E731
    server = await loop.create_server(factory, address, port, reuse_address=True, backlog=1024)
    return server, state


async def start_demo_backend(address: str, port: int, name: str) -> asyncio.AbstractServer:
    """Start a demo backend on the running loop. Port 0 picks a free port: read it from
    `server.sockets[0].getsockname()[1]`."""
    server, _ = await start_backend(address, port, name)
    return server


def bound_address(server: asyncio.AbstractServer) -> tuple[str, int]:
    """(host, port) of the first listening socket; uvloop's Server is no asyncio.Server, so
    the attribute is looked up rather than typed."""
    sockets = getattr(server, "sockets")
    host, port = sockets[0].getsockname()[:2]
    return str(host), int(port)


async def _serve_until_signal(address: str, port: int, name: str) -> int:
    server, state = await start_backend(address, port, name)
    bound = bound_address(server)
    # Scripts and tests that pass port 0 learn the real port from this line.
    print(f"demo backend {name} listening on http://{bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        state.close_connections()
        await server.wait_closed()
    return 0


def run_demo_backend(address: str, port: int, name: str) -> int:
    """Run a demo backend in this process (uvloop when available) until SIGINT or SIGTERM;
    the exit status is 0 after a signal."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_serve_until_signal(address, port, name))
