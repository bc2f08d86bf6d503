"""WebSockets over HTTP/2 (RFC 8441) to an HTTP/1.1 WebSocket backend, end to end: a viewer
speaking HTTP/2 (python-hyper's `h2` over a real socket, WebSocket frames made by hand) opens an
extended CONNECT through the daemon to aiohttp's WebSocket server.

- The daemon advertises SETTINGS_ENABLE_CONNECT_PROTOCOL; the backend gets the GET with
  Upgrade, Connection and a Sec-WebSocket-Key of the daemon's making; its 101 is the viewer's
  200, and the stream carries the WebSocket's bytes both ways, flow-controlled (a message much
  larger than the windows goes through whole, each way).
- A close from either side ends the other; a backend that refuses (403) is the viewer's 403;
  one whose 101 does not answer the key, or that answers 200 without switching, is a 502; a
  route answering 200 itself (a fixed response) a 501; a plain CONNECT stays a 405. A tunnel
  idle for the listener's idle timeout is cut.
One process and --workers 2. And a real browser: headless Chromium opens one over HTTPS, on the
HTTP/2 connection its page came by (the access log says HTTP/2.0).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import trustme
from aiohttp import WSMsgType, web

from lbcdn.demo.websocket import OP_BINARY, OP_CLOSE, OP_TEXT, encode_frame
from lbcdn.http.websocket import accept_key
from tests.e2e.harness import HOST, DaemonProcess, free_port, listener_port, proxy_config, \
    raw_backend, read_request, until
from tests.e2e.test_proxy import access_log_lines

# each test starts a daemon process (or two workers) and a backend: several seconds each
pytestmark = pytest.mark.slow

BIG = os.urandom(3 << 20)   # 3 MiB: many times each window on the way (64 KiB .. 1 MiB)


@dataclass
class Backend:
    port: int
    handshakes: list[dict[str, str]] = field(default_factory=list)
    closes: list[int | None] = field(default_factory=list)   # close codes the backend saw
    echoed: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.asynccontextmanager
async def ws_backend(page: str = "") -> AsyncIterator[Backend]:
    """aiohttp's WebSocket server: /ws echoes each message (the text `close-me` makes it close
    with 4000), /refuse answers 403, /plain 200 (as a server ignoring Upgrade may), / `page`
    and /after-echo.js a script once /ws echoed a message."""
    backend = Backend(free_port())

    async def ws(request: web.Request) -> web.StreamResponse:
        backend.handshakes.append(dict(request.headers))
        sock = web.WebSocketResponse(max_msg_size=16 << 20)
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT and msg.data == "close-me":
                await sock.close(code=4000, message=b"asked")
            elif msg.type == WSMsgType.TEXT:
                await sock.send_str(msg.data)
                backend.echoed.set()
            elif msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        backend.closes.append(sock.close_code)
        return sock

    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.Response(status=403, text="not you")

    async def plain(request: web.Request) -> web.StreamResponse:
        return web.Response(text="a page, not a WebSocket")   # the Upgrade ignored

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_get("/refuse", refuse)
    app.router.add_get("/plain", plain)

    async def index(request: web.Request) -> web.StreamResponse:
        return web.Response(text=page, content_type="text/html")

    async def after_echo(request: web.Request) -> web.StreamResponse:
        # the page's load waits for this script: a browser dumping the page once it loaded
        # then shows what its WebSocket received
        await asyncio.wait_for(backend.echoed.wait(), 20)
        await asyncio.sleep(0.5)
        return web.Response(text="//", content_type="text/javascript")

    app.router.add_get("/", index)
    app.router.add_get("/after-echo.js", after_echo)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, HOST, backend.port).start()
    try:
        yield backend
    finally:
        await runner.cleanup()


def server_frames(buf: bytearray) -> Iterator[tuple[int, bytes]]:
    """Whole (unmasked, server-to-client) frames at the start of `buf`, taken out of it."""
    while len(buf) >= 2:
        size, pos = buf[1] & 0x7F, 2
        if size >= 126:
            pos = 4 if size == 126 else 10
            if len(buf) < pos:
                return
            size = int.from_bytes(buf[2:pos], "big")
        if len(buf) < pos + size:
            return
        opcode, payload = buf[0] & 0x0F, bytes(buf[pos:pos + size])
        del buf[:pos + size]
        yield opcode, payload


class H2WebSocket:
    """One HTTP/2 connection with a WebSocket CONNECT stream on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.sid = 0
        self.status: int | None = None
        self.headers: dict[bytes, bytes] = {}
        self.buf = bytearray()
        self.ended = self.reset = self.eof = False
        self.sent = 0   # WebSocket bytes sent
        self.changed = asyncio.Event()
        self.pump = asyncio.create_task(self._pump())

    @classmethod
    async def open(cls, port: int) -> H2WebSocket:
        reader, writer = await asyncio.open_connection(HOST, port)
        client = cls(reader, writer)
        client.h2.initiate_connection()
        client.flush()
        await client.until(lambda: client.h2.remote_settings.enable_connect_protocol == 1)
        return client

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def _pump(self) -> None:
        while data := await self.reader.read(65536):
            for event in self.h2.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    self.headers = dict(event.headers)
                    self.status = int(self.headers[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    self.buf += event.data
                    self.h2.acknowledge_received_data(event.flow_controlled_length,
                                                      event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended = True
                elif isinstance(event, h2.events.StreamReset):
                    self.reset = True
            self.flush()
            self.changed.set()
        self.eof = True
        self.changed.set()

    async def until(self, done: Any, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not done():
                if self.eof:
                    raise AssertionError("connection closed")
                self.changed.clear()
                await self.changed.wait()

    async def connect(self, path: str = "/ws") -> int:
        """A new WebSocket CONNECT stream (the state of the one before forgotten)."""
        self.sid = self.h2.get_next_available_stream_id()
        self.status, self.ended, self.reset, self.buf = None, False, False, bytearray()
        self.h2.send_headers(self.sid, [
            (b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
            (b":path", path.encode()), (b":authority", b"ws.test"),
            (b"sec-websocket-version", b"13"), (b"origin", b"http://ws.test")])
        self.flush()
        await self.until(lambda: self.status is not None or self.reset)
        return self.status or 0

    async def send(self, opcode: int, payload: bytes) -> None:
        """A masked frame, as the stream's and connection's windows let it go."""
        data = memoryview(encode_frame(opcode, payload, mask=os.urandom(4)))
        while data:
            room = min(self.h2.local_flow_control_window(self.sid),
                       self.h2.max_outbound_frame_size)
            if room <= 0:
                await self.until(lambda: self.h2.local_flow_control_window(self.sid) > 0)
                continue
            self.h2.send_data(self.sid, bytes(data[:room]))
            self.sent += min(room, len(data))
            data = data[room:]
            self.flush()

    async def receive(self) -> tuple[int, bytes]:
        frames: list[tuple[int, bytes]] = []
        await self.until(lambda: bool(frames.extend(server_frames(self.buf)) or frames))
        assert len(frames) == 1, frames
        return frames[0]

    def end(self) -> None:
        self.h2.end_stream(self.sid)
        self.flush()

    def close(self) -> None:
        self.pump.cancel()
        self.writer.close()


@contextlib.contextmanager
def daemon(config: dict[str, Any], tmp: Path, workers: int) -> Iterator[int]:
    proc = DaemonProcess(config, tmp, extra_args=["--workers", str(workers)])
    try:
        yield listener_port(config)
    finally:
        proc.stop()


WORKERS = pytest.mark.parametrize("workers", [1, 2])


@WORKERS
async def test_echo_and_a_message_larger_than_the_windows(tmp_path: Path, workers: int) -> None:
    async with ws_backend() as backend:
        with daemon(proxy_config(backend.port), tmp_path, workers) as port:
            ws = await H2WebSocket.open(port)
            try:
                assert await ws.connect() == 200
                assert b"sec-websocket-accept" not in ws.headers and not ws.ended
                for text in ("hello", "é" * 1000):
                    await ws.send(OP_TEXT, text.encode())
                    assert await ws.receive() == (OP_TEXT, text.encode())
                await ws.send(OP_BINARY, BIG)
                assert await ws.receive() == (OP_BINARY, BIG)
                # the viewer closes: the backend sees its close and answers it, and its TCP
                # close ends the stream
                await ws.send(OP_CLOSE, (1000).to_bytes(2, "big") + b"done")
                opcode, payload = await ws.receive()
                assert opcode == OP_CLOSE and payload[:2] == (1000).to_bytes(2, "big")
                await ws.until(lambda: ws.ended)
                await until(lambda: backend.closes == [1000])
            finally:
                ws.close()
    seen = {k.lower(): v for k, v in backend.handshakes[0].items()}
    assert seen["upgrade"].lower() == "websocket" and "upgrade" in seen["connection"].lower()
    assert len(seen["sec-websocket-key"]) == 24 and seen["sec-websocket-version"] == "13"
    assert seen["origin"] == "http://ws.test" and seen["host"] == "ws.test"


@WORKERS
async def test_the_viewer_ending_or_resetting_its_stream_ends_the_backends(
        tmp_path: Path, workers: int) -> None:
    async with ws_backend() as backend:
        with daemon(proxy_config(backend.port), tmp_path, workers) as port:
            ws = await H2WebSocket.open(port)
            try:
                # END_STREAM: the backend's connection is half-closed (a TCP FIN, RFC 8441 5)
                assert await ws.connect() == 200
                await ws.send(OP_TEXT, b"x")
                assert await ws.receive() == (OP_TEXT, b"x")
                ws.end()
                await until(lambda: len(backend.closes) == 1)
                await ws.until(lambda: ws.ended or ws.reset)
                # RST_STREAM: the backend's connection is cut
                assert await ws.connect() == 200
                ws.h2.reset_stream(ws.sid)
                ws.flush()
                await until(lambda: len(backend.closes) == 2)
            finally:
                ws.close()


@WORKERS
async def test_the_backend_closing_ends_the_stream(tmp_path: Path, workers: int) -> None:
    async with ws_backend() as backend:
        with daemon(proxy_config(backend.port), tmp_path, workers) as port:
            ws = await H2WebSocket.open(port)
            try:
                assert await ws.connect() == 200
                await ws.send(OP_TEXT, b"close-me")
                opcode, payload = await ws.receive()
                assert opcode == OP_CLOSE and payload[:2] == (4000).to_bytes(2, "big")
                await ws.send(OP_CLOSE, payload[:2])   # the answer the backend waits for
                await ws.until(lambda: ws.ended or ws.reset)   # its TCP close: END_STREAM
                assert ws.ended
                # the connection carries on: another WebSocket on it
                assert await ws.connect() == 200
                await ws.send(OP_TEXT, b"again")
                assert await ws.receive() == (OP_TEXT, b"again")
            finally:
                ws.close()


@WORKERS
async def test_a_refusal_is_passed_through_and_a_failed_switch_is_a_502(
        tmp_path: Path, workers: int) -> None:
    async def wrong_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA="
                     b"\r\n\r\n")
        await reader.read()

    async with ws_backend() as backend, raw_backend(wrong_accept) as liar:
        config = proxy_config(backend.port, pools={
            "app": {"targets": [f"{HOST}:{backend.port}"], "health": {"enabled": False}},
            "liar": {"targets": [f"{HOST}:{liar}"], "health": {"enabled": False}}},
            routes=[{"name": "liar", "match": {"path_prefix": "/liar"}, "forward": "liar"},
                    {"name": "fixed", "match": {"path_prefix": "/fixed"},
                     "fixed_response": {"status": 200, "body": "no WebSocket here"}}])
        with daemon(config, tmp_path, workers) as port:
            ws = await H2WebSocket.open(port)
            try:
                assert await ws.connect("/refuse") == 403
                await ws.until(lambda: ws.ended)
                assert bytes(ws.buf) == b"not you"
                assert await ws.connect("/liar") == 502
                # a 200 over HTTP/2 would say the switch was made: a backend that ignored it
                assert await ws.connect("/plain") == 502
                # nor may a 200 of lbcdn's own (a fixed response, the cache)
                assert await ws.connect("/fixed") == 501
                await ws.until(lambda: ws.ended)
                assert bytes(ws.buf) == b""
                # a plain CONNECT (no :protocol) is refused as over HTTP/1.1
                sid = ws.sid = ws.h2.get_next_available_stream_id()
                ws.status = None
                ws.h2.send_headers(sid, [(b":method", b"CONNECT"),
                                         (b":authority", b"example.com:443")])
                ws.flush()
                await ws.until(lambda: ws.status is not None)
                assert ws.status == 405 and ws.headers[b"allow"].startswith(b"GET")
            finally:
                ws.close()


async def test_an_idle_tunnel_is_cut_after_the_idle_timeout(tmp_path: Path) -> None:
    async with ws_backend() as backend:
        config = proxy_config(backend.port)
        config["listeners"][0]["idle_timeout_s"] = 1.0
        with daemon(config, tmp_path, 1) as port:
            ws = await H2WebSocket.open(port)
            try:
                assert await ws.connect() == 200
                loop = asyncio.get_running_loop()
                started = loop.time()
                for _ in range(3):   # traffic keeps it open past the timeout
                    await asyncio.sleep(0.6)
                    await ws.send(OP_TEXT, b"still here")
                    assert await ws.receive() == (OP_TEXT, b"still here")
                await ws.until(lambda: ws.reset, timeout_s=8)
                assert 2.5 <= loop.time() - started < 8
                await until(lambda: len(backend.closes) == 1)
                # the connection's other streams are unaffected
                assert await ws.connect() == 200
            finally:
                ws.close()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PAGE = """<!doctype html><html><body><pre id="out"></pre><script>
const ws = new WebSocket("wss://" + location.host + "/ws");
const out = document.getElementById("out");
ws.onopen = () => ws.send("hello from chromium");
ws.onmessage = (e) => { out.textContent = e.data; ws.close(1000); };
ws.onerror = () => { out.textContent = "error"; };
</script><script src="/after-echo.js"></script></body></html>"""


async def test_chromium_opens_a_websocket_over_http2(tmp_path: Path) -> None:
    """A real browser: headless Chromium loads a page over HTTPS (h2 by ALPN) whose script
    opens a WebSocket to the same origin, on the same HTTP/2 connection (RFC 8441)."""
    assert CHROMIUM is not None, "install the Debian package chromium (make test does)"
    ca = trustme.CA()
    cert = ca.issue_cert("ws.test")
    crt, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.cert_chain_pems[0].write_to_path(str(crt))
    cert.private_key_pem.write_to_path(str(key))
    log_path = tmp_path / "access.log"
    async with ws_backend(page=PAGE) as backend:
        config = proxy_config(backend.port, logging={"level": "warning", "access_log": {
            "enabled": True, "path": str(log_path)}})
        config["listeners"][0]["tls"] = {"certificates": [
            {"cert_file": str(crt), "key_file": str(key)}]}
        with daemon(config, tmp_path, 1) as port:
            proc = await asyncio.create_subprocess_exec(
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                "--ignore-certificate-errors", f"--host-resolver-rules=MAP ws.test {HOST}",
                "--virtual-time-budget=10000", "--dump-dom", f"https://ws.test:{port}/",
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), 60)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await until(lambda: len(backend.closes) == 1)
    assert '<pre id="out">hello from chromium</pre>' in out.decode(), out.decode()[:2000]
    lines = {(e["path"], e["protocol"], e["status"]) for e in access_log_lines(log_path)}
    assert ("/ws", "HTTP/2.0", 101) in lines, lines


async def test_a_backend_that_does_not_read_holds_the_viewer_back(tmp_path: Path) -> None:
    """Flow control from the backend's socket to the viewer's window: while the backend reads
    nothing, the daemon stops acknowledging the stream's DATA, so the viewer gets to send a
    window and what the sockets between hold (5 MiB here), not the 48 MiB it tries to."""
    switched = asyncio.Event()

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers, _ = await read_request(reader)
        key = {n.lower(): v for n, v in headers}["sec-websocket-key"]
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                     % accept_key(key).encode())
        switched.set()
        await asyncio.sleep(60)   # and reads nothing more

    async with raw_backend(deaf) as backend:
        with daemon(proxy_config(backend), tmp_path, 1) as port:
            ws = await H2WebSocket.open(port)
            try:
                assert await ws.connect() == 200
                await switched.wait()
                sending = asyncio.create_task(ws.send(OP_BINARY, bytes(48 << 20)))
                await asyncio.sleep(3)
                # without the pause all of it goes in well under a second, into the daemon
                assert not sending.done() and ws.sent < 16 << 20, ws.sent
                assert ws.h2.local_flow_control_window(ws.sid) == 0
                sending.cancel()
            finally:
                ws.close()
