"""AppListener: an aiohttp application served with the edge's protections.

The admin API, the S3 API and the bucket websites are aiohttp apps in the control process,
beside the health checks and the DNS server. A client of theirs must not be able to take that
process's memory or descriptors, nor fill its log, so each connection gets what an edge
connection gets (lbcdn.http.headguard decides, this module acts):
- the head limits (414/431/400) and the header timeout (408), checked on every byte before
  aiohttp parses it; the body timeout between body reads; the idle timeout between requests
  and while the client leaves a response unread (sendfile bodies: lbcdn.bucket.sendfile);
- a cap on open connections (`max_connections`): at the cap, the connection idle longest (as
  nginx reuses connections; idle for EVICT_IDLE_S at least, so a burst of new connections does
  not close its own members before their first byte) makes room; with none idle, the new one is answered 503 with
  Retry-After and closed (its bytes are read and dropped for a moment, so the answer is not
  lost to a reset; past min(REFUSING_MAX, cap) such at once, new ones are closed at once);
- a bad request or a refusal costs at most one short daemon-log line per listener every few
  seconds (LogLimiter), never a traceback; nor does a client that goes away mid-response.

A request with a head error is answered by the guard directly when nothing is in progress on
its connection; behind a request still being answered, the connection closes after that answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from lbcdn.configkit.limits import HttpLimitsConfig
from lbcdn.http.date import http_date
from lbcdn.http.errors import HttpError, error_response, reason
from lbcdn.http.headguard import BODY, HEAD, IDLE, HeadGuard
from lbcdn.http.request_id import new_request_id
from lbcdn.logs import LogLimiter, held_note
from lbcdn.refusal import REFUSING_MAX, RETRY_AFTER, Refusal
from lbcdn.timers import Deadline

log = logging.getLogger("lbcdn.listener")

EVICT_IDLE_S: Final = 1.0       # idle this long, a connection may make room for a new one

_LOG_LIMIT: Final = LogLimiter()


def error_bytes(status: int, detail: str, json_errors: bool, extra_headers: bytes = b"") -> bytes:
    """A complete error response that closes the connection: the edge's text, or the admin
    API's JSON shape `{"error": ...}`."""
    if not json_errors:
        return error_response(status, new_request_id(), detail, extra_headers=extra_headers)
    body = json.dumps({"error": detail}).encode()
    return b"HTTP/1.1 %d %s\r\nServer: lbcdn\r\nDate: %s\r\nContent-Type: application/json; " \
           b"charset=utf-8\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n%s" % (
               status, reason(status), http_date(), len(body), extra_headers, body)


class AppListener:
    """One listening socket serving `runner`'s app. `name` is said in log lines."""

    def __init__(self, name: str, runner: web.AppRunner, limits: HttpLimitsConfig,
                 max_connections: int, json_errors: bool = False) -> None:
        server = runner.server
        assert server is not None, "runner.setup() first"
        self.name = name
        self.runner = runner
        self.server = server
        self.limits = limits
        self.max_connections = max_connections
        self.json_errors = json_errors
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Handler] = set()
        # the idle ones among them and since when, longest idle first (a dict keeps
        # insertion order)
        self.idle: dict[_Handler, float] = {}
        self.refusing: set[Refusal] = set()
        self.port = 0
        self._listening: asyncio.AbstractServer | None = None

    async def start(self, address: str, port: int, backlog: int = 1024) -> None:
        self._listening = await self.loop.create_server(
            self._protocol, address, port, backlog=backlog, reuse_address=True)
        self.port = int(self._listening.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._listening is not None:
            self._listening.close()
            self._listening = None
        for refused in list(self.refusing):
            refused.abort()
        await self.runner.cleanup()

    def _protocol(self) -> asyncio.BaseProtocol:
        # Counted here, not in connection_made: the loop may accept a batch before any of them
        # is told it is made.
        if len(self.connections) >= self.max_connections and self.idle and \
                next(iter(self.idle.values())) <= self.loop.time() - EVICT_IDLE_S:
            # as nginx reuses connections: the one idle longest (between requests, or not yet
            # sent a byte) makes room, as its idle timeout would later
            self.note("reused", logging.WARNING, "%d connections open (max_connections): "
                      "closing idle ones for new ones", len(self.connections))
            next(iter(self.idle)).evict()
        if len(self.connections) < self.max_connections:
            handler = _Handler(self)
            self.connections.add(handler)
            return handler
        self.note("refused", logging.WARNING,
                  "%d connections open (max_connections): refusing more", len(self.connections))
        answer = error_bytes(503, "too many connections", self.json_errors, RETRY_AFTER) \
            if len(self.refusing) < min(REFUSING_MAX, self.max_connections) else None
        return Refusal(self.refusing, self.loop, answer)

    def note(self, kind: str, level: int, message: str, *args: Any) -> None:
        """One daemon-log line about a client, unless one of this `kind` went out lately."""
        held = _LOG_LIMIT.allow(f"{self.name} {kind}", time.monotonic())
        if held is not None:
            log.log(level, "%s listener: " + message + "%s", self.name, *args, held_note(held))

    def client_error(self, status: int, detail: str, peer: str) -> None:
        self.note("client", logging.INFO, "%d to %s (%s)", status, peer, detail)


class _Handler(RequestHandler):
    """aiohttp's connection protocol, with the guard in front of its parser."""

    def __init__(self, listener: AppListener) -> None:
        limits = listener.limits
        # aiohttp's own line and count limits a little above the guard's: the guard answers
        # first, with the edge's status
        super().__init__(listener.server, loop=listener.loop,
                         access_log=None,  # type: ignore[arg-type]  # None: off, as AppRunner's
                         keepalive_timeout=limits.idle_timeout_s,
                         max_line_size=limits.max_request_line_bytes + 64,
                         max_field_size=limits.max_header_bytes,
                         max_headers=limits.max_header_count + 1,
                         # a body is what was sent: an S3 PUT with Content-Encoding: gzip
                         # stores the gzip bytes, as S3 does
                         auto_decompress=False)
        self._listener = listener
        self._limits = limits
        self._guard = HeadGuard(limits)
        self._deadline = Deadline(listener.loop, self._timed_out)
        # a client that leaves our response unread: cut after its idle timeout, as on the edge
        self._unread = Deadline(listener.loop, self._cut)
        self._stopped = False    # the guard refused: nothing more is read
        self._passed = 0         # request heads handed to aiohttp
        self._answered = 0       # ... and answered by it
        self._peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        if peer:
            self._peer = str(peer[0])
        super().connection_made(transport)
        self._listener.idle[self] = self._listener.loop.time()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._deadline.cancel()
        self._unread.cancel()
        self._listener.connections.discard(self)
        self._listener.idle.pop(self, None)
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._unread.set(self._limits.idle_timeout_s)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._unread.clear()

    def _cut(self) -> None:
        if self.transport is not None:
            self.transport.abort()   # close() would wait for the unread bytes to be taken
        self.force_close()

    def evict(self) -> None:
        """Close this idle connection now: a new one needs its place."""
        self._listener.connections.discard(self)
        self._listener.idle.pop(self, None)
        self._stopped = True
        self.force_close()

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        self._listener.idle.pop(self, None)
        guard = self._guard
        was_head, heads = guard.phase == HEAD, guard.heads
        err = guard.feed(data)
        if err is not None:
            self._refuse(err)
            return
        if guard.phase == HEAD:
            if not was_head or guard.heads != heads:   # a new head began: its clock starts
                self._deadline.set(self._limits.header_timeout_s)
        elif guard.phase == BODY:
            self._deadline.set(self._limits.body_timeout_s)
        else:
            self._deadline.clear()   # between requests aiohttp's keep-alive timer applies
        self._passed = guard.heads
        super().data_received(data)

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._answered += 1
            if self._answered == self._passed and self._guard.phase == IDLE and \
                    not self._stopped and self.transport is not None:
                self._listener.idle[self] = self._listener.loop.time()

    def _refuse(self, err: HttpError) -> None:
        self._stopped = True
        self._deadline.cancel()
        self._listener.client_error(err.status, err.detail, self._peer)
        transport = self.transport
        if transport is None:
            return
        if self._passed > self._answered:
            self.close()   # aiohttp closes after the answer it is writing
            return
        transport.write(error_bytes(err.status, err.detail, self._listener.json_errors))
        self.force_close()

    def _timed_out(self) -> None:
        transport = self.transport
        if transport is None or self._stopped:
            return
        if self._guard.phase == HEAD:
            self._refuse(HttpError(408, "timed out reading the request head"))
        elif self._guard.phase == BODY:
            if not transport.is_reading():   # aiohttp paused reading: the app is behind
                self._deadline.set(self._limits.body_timeout_s)
                return
            # the app is reading this body: it sees the connection end, nothing is written
            self._stopped = True
            self._listener.client_error(408, "timed out reading the request body", self._peer)
            self.force_close()

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if isinstance(exc, ConnectionError):
            # the client went away mid-request (an S3 GET it stopped reading): nothing to say
            raise ConnectionResetError("client went away") from exc
        if isinstance(exc, HttpProcessingError):
            # refused by aiohttp's parser, though not by the guard: a short line, not a trace
            status = exc.code if 400 <= exc.code < 500 else 400
            detail = f"malformed request ({type(exc).__name__})"
            self._listener.client_error(status, detail, self._peer)
            if self._listener.json_errors:
                resp: web.StreamResponse = web.json_response({"error": detail}, status=status)
            else:
                resp = web.Response(status=status, text=detail + "\n")
            resp.force_close()
            return resp
        return super().handle_error(request, status, exc, message)


async def serve_app(app: web.Application, name: str, address: str, port: int,
                    limits: HttpLimitsConfig, max_connections: int, *,
                    shutdown_timeout_s: float, json_errors: bool = False) -> AppListener:
    """Start serving `app` on address:port (0 picks a free port; `.port` tells which)."""
    # access_log=None: probes and scrapes every few seconds would drown the daemon log
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=shutdown_timeout_s)
    await runner.setup()
    listener = AppListener(name, runner, limits, max_connections, json_errors)
    try:
        await listener.start(address, port)
    except BaseException:
        await runner.cleanup()
        raise
    return listener
