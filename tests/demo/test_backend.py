"""The demo backend over real sockets on 127.0.0.1: every endpoint, HTTP/1.1 framing and
connection handling (raw bytes, so framing is seen exactly), the aiohttp client, WebSocket echo,
and memory staying bounded while 64 MiB go each way through a backend in a subprocess."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lbcdn.demo.backend import bound_address, start_backend, start_demo_backend
from lbcdn.demo.routes import PATTERN
from lbcdn.demo.websocket import OP_TEXT, encode_frame

NAME = "demo-t"
BIG = 64 * 1024 * 1024
TIMEOUT = 5.0


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    interim: list[Response] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[-1] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> Response:
    """One response, framed the way a client must (Content-Length, chunked, or close)."""
    interim: list[Response] = []
    while True:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        lines = head.decode("latin-1").split("\r\n")
        version, status, _ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1"
        headers = [(k, v.strip()) for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)]
        resp = Response(int(status), headers, interim=interim)
        if 100 <= resp.status < 200 and resp.status != 101:
            interim.append(resp)
            continue
        break
    if head_only or resp.status in (101, 204, 304):
        return resp
    if resp.header("transfer-encoding") == "chunked":
        body = bytearray()
        while True:
            size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), TIMEOUT)
            assert re.fullmatch(rb"[0-9a-f]+\r\n", size_line), size_line
            size = int(size_line, 16)
            chunk = await asyncio.wait_for(reader.readexactly(size + 2), TIMEOUT)
            assert chunk.endswith(b"\r\n")
            if size == 0:
                break
            body += chunk[:-2]
        resp.body = bytes(body)
    elif resp.header("content-length") is not None:
        length = int(resp.header("content-length") or "0")
        resp.body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
    else:
        resp.body = await asyncio.wait_for(reader.read(), TIMEOUT)
    return resp


def pattern(offset: int, length: int) -> bytes:
    start = offset % 16
    reps = (start + length) // 16 + 1
    return (PATTERN * reps)[start:start + length]


async def at_eof(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(1), TIMEOUT) == b""


@pytest.fixture
async def port() -> AsyncIterator[int]:
    server, state = await start_backend("127.0.0.1", 0, NAME)
    yield bound_address(server)[1]
    server.close()
    state.close_connections()
    await server.wait_closed()


@pytest.fixture
async def conn(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    yield reader, writer
    writer.close()


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def get(path: str, *extra: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: demo", *extra, "", ""]
    return "\r\n".join(lines).encode()


# --- echo, keep-alive, pipelining, HTTP/1.0 -------------------------------------------------


async def test_start_demo_backend_serves_on_a_free_port() -> None:
    server = await start_demo_backend("127.0.0.1", 0, "public")
    try:
        port = bound_address(server)[1]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/") as resp:
                assert resp.status == 200
                assert resp.headers["X-Backend"] == "public"
    finally:
        server.close()
        await server.wait_closed()


async def test_echo_describes_the_request(conn: Conn) -> None:
    reader, writer = conn
    writer.write(get("/some/where?x=1&y=%20", "X-B: 2", "x-a: 1"))
    resp = await read_response(reader)
    assert resp.status == 200
    assert resp.header("X-Backend") == NAME
    assert resp.header("Content-Type") == "application/json"
    assert int(resp.header("Content-Length") or -1) == len(resp.body)
    date = resp.header("Date") or ""  # an origin server with a clock sends Date
    assert email.utils.parsedate_to_datetime(date).tzname() == "UTC", date
    echo = resp.json()
    local = writer.get_extra_info("sockname")
    assert echo == {"backend": NAME, "method": "GET", "path": "/some/where",
                    "query": "x=1&y=%20", "http_version": "1.1",
                    "headers": [["Host", "demo"], ["X-B", "2"], ["x-a", "1"]],
                    "body_bytes": 0, "client": f"{local[0]}:{local[1]}"}


async def test_head_has_the_get_headers_and_no_body(conn: Conn) -> None:
    reader, writer = conn
    writer.write(get("/x") + get("/x", method="HEAD") + get("/after"))
    full = await read_response(reader)
    head = await read_response(reader, head_only=True)
    assert head.status == 200
    assert [k for k, _ in head.headers] == [k for k, _ in full.headers]
    # The echo a HEAD describes says "HEAD" where the GET's says "GET": one byte longer.
    assert int(head.header("Content-Length") or 0) == len(full.body) + 1
    # Had HEAD sent a body, it would be read here as the next response's head.
    after = await read_response(reader)
    assert after.json()["path"] == "/after"


async def test_other_methods_echo_and_count_the_body(conn: Conn) -> None:
    reader, writer = conn
    writer.write(get("/thing", "Content-Length: 5", method="DELETE") + b"hello")
    writer.write(get("/", "Transfer-Encoding: chunked", method="POST")
                 + b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
    first, second = await read_response(reader), await read_response(reader)
    assert (first.json()["method"], first.json()["body_bytes"]) == ("DELETE", 5)
    assert (second.json()["method"], second.json()["body_bytes"]) == ("POST", 7)


async def test_keep_alive_reuses_the_connection(conn: Conn) -> None:
    reader, writer = conn
    clients = set()
    for i in range(3):
        writer.write(get(f"/{i}"))
        resp = await read_response(reader)
        assert resp.header("Connection") is None
        clients.add(resp.json()["client"])
    assert len(clients) == 1


async def test_pipelined_requests_are_answered_in_order(conn: Conn) -> None:
    reader, writer = conn
    # A slow first answer must not let the quick ones overtake it.
    writer.write(get("/delay/150") + get("/status/404") + get("/bytes/20")
                 + get("/echo", "Content-Length: 3", method="POST") + b"abc" + get("/last"))
    responses = [await read_response(reader) for _ in range(5)]
    assert responses[0].json()["path"] == "/delay/150"
    assert responses[1].status == 404
    assert responses[2].body == pattern(0, 20)
    assert responses[3].body == b"abc"
    assert responses[4].json()["path"] == "/last"


async def test_http10_closes_unless_keep_alive(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/", version="1.0"))
    resp = await read_response(reader)
    assert resp.json()["http_version"] == "1.0"
    assert resp.header("Connection") == "close"
    assert await at_eof(reader)
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/a", "Connection: keep-alive", version="1.0"))
    resp = await read_response(reader)
    assert resp.header("Connection") == "keep-alive"
    writer.write(get("/b", "Connection: keep-alive", version="1.0"))
    assert (await read_response(reader)).json()["path"] == "/b"
    writer.close()


async def test_http10_gets_no_chunked_and_no_interim_responses(conn: Conn) -> None:
    reader, writer = conn
    writer.write(get("/bytes/40?chunked=1", version="1.0"))
    resp = await read_response(reader)
    assert resp.header("Transfer-Encoding") is None and resp.header("Content-Length") is None
    assert resp.body == pattern(0, 40)


async def test_half_closed_client_still_gets_its_answers(conn: Conn) -> None:
    reader, writer = conn
    writer.write(get("/delay/30") + get("/second"))
    writer.write_eof()
    assert (await read_response(reader)).json()["path"] == "/delay/30"
    assert (await read_response(reader)).json()["path"] == "/second"
    assert await at_eof(reader)


async def test_declined_upgrade_is_answered_and_http_goes_on(conn: Conn) -> None:
    reader, writer = conn
    writer.write(get("/", "Upgrade: h2c", "Connection: Upgrade") + get("/next"))
    assert (await read_response(reader)).json()["path"] == "/"
    assert (await read_response(reader)).json()["path"] == "/next"


async def test_connection_close_is_honoured(conn: Conn) -> None:
    reader, writer = conn
    writer.write(get("/", "Connection: close") + get("/never"))
    resp = await read_response(reader)
    assert resp.header("Connection") == "close"
    assert await at_eof(reader)


async def test_close_endpoint(conn: Conn) -> None:
    reader, writer = conn
    writer.write(get("/close"))
    resp = await read_response(reader)
    assert resp.status == 200 and resp.header("Connection") == "close"
    assert await at_eof(reader)


async def test_count_counts_requests(port: int) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}"
        async with session.get(url + "/count") as resp:
            before = (await resp.json())["requests"]
        for _ in range(3):
            async with session.get(url + "/x") as resp:
                await resp.read()
        async with session.get(url + "/count") as resp:
            assert (await resp.json())["requests"] == before + 4


# --- /bytes framing -------------------------------------------------------------------------


async def test_bytes_content_length(conn: Conn) -> None:
    reader, writer = conn
    n = 200_000  # several 64 KiB chunks and a short last one
    writer.write(get(f"/bytes/{n}") + get("/bytes/0"))
    resp = await read_response(reader)
    assert resp.header("Content-Length") == str(n) and resp.body == pattern(0, n)
    empty = await read_response(reader)
    assert empty.header("Content-Length") == "0" and empty.body == b""


async def test_bytes_head(conn: Conn) -> None:
    reader, writer = conn
    writer.write(get("/bytes/1000", method="HEAD") + get("/next"))
    resp = await read_response(reader, head_only=True)
    assert resp.header("Content-Length") == "1000"
    assert (await read_response(reader)).json()["path"] == "/next"


async def test_bytes_chunked(conn: Conn) -> None:
    reader, writer = conn
    writer.write(get("/bytes/70000?chunked=1") + get("/next"))
    resp = await read_response(reader)
    assert resp.header("Transfer-Encoding") == "chunked" and resp.header("Content-Length") is None
    assert resp.body == pattern(0, 70000)
    assert (await read_response(reader)).json()["path"] == "/next"


async def test_bytes_read_until_close(conn: Conn) -> None:
    reader, writer = conn
    writer.write(get("/bytes/70000?close=1"))
    resp = await read_response(reader)
    assert resp.header("Content-Length") is None and resp.header("Connection") == "close"
    assert resp.body == pattern(0, 70000)


async def test_bytes_abort_after(conn: Conn) -> None:
    reader, writer = conn
    writer.write(get("/bytes/100000?abort_after=70000"))
    resp = await read_response(reader, head_only=True)
    assert resp.header("Content-Length") == "100000"
    body = await asyncio.wait_for(reader.read(), TIMEOUT)
    assert body == pattern(0, 70000)


# --- /status, /delay, /headers/set, 426 -----------------------------------------------------


async def test_status(conn: Conn) -> None:
    reader, writer = conn
    writer.write(get("/status/418") + get("/status/204") + get("/status/304")
                 + get("/status/101") + get("/status/abc") + get("/after"))
    teapot = await read_response(reader)
    assert teapot.status == 418 and teapot.body == b"status 418\n"
    no_content = await read_response(reader)
    assert no_content.status == 204 and no_content.header("Content-Length") is None
    assert (await read_response(reader)).status == 304
    assert (await read_response(reader)).status == 400
    assert (await read_response(reader)).status == 400
    assert (await read_response(reader)).json()["path"] == "/after"


async def test_delay_waits_without_blocking_others(port: int) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        slow = asyncio.ensure_future(session.get(url + "/delay/400"))
        await asyncio.sleep(0.05)
        async with session.get(url + "/quick") as quick:
            assert quick.status == 200
            quick_done = time.monotonic() - started
        async with await slow as resp:
            assert (await resp.json())["path"] == "/delay/400"
            slow_done = time.monotonic() - started
    assert quick_done < 0.3 <= 0.39 <= slow_done


async def test_headers_set(port: int) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}/headers/set"
        query = "Set-Cookie=a%3D1&Set-Cookie=b%3D2&Cache-Control=max-age%3D60"
        async with session.get(f"{url}?{query}") as resp:
            assert resp.headers.getall("Set-Cookie") == ["a=1", "b=2"]
            assert resp.headers["Cache-Control"] == "max-age=60"
            assert (await resp.json())["path"] == "/headers/set"
        async with session.get(f"{url}?X-Evil=1%0d%0aX-Injected:%201") as resp:
            assert resp.status == 400 and "X-Injected" not in resp.headers


async def test_ws_without_upgrade_is_426(conn: Conn) -> None:
    reader, writer = conn
    writer.write(get("/ws"))
    resp = await read_response(reader)
    assert resp.status == 426 and resp.header("Upgrade") == "websocket"


# --- bodies: /echo, /sink, 100-continue, 103 ------------------------------------------------


async def test_echo_streams_back_with_the_same_framing(conn: Conn) -> None:
    reader, writer = conn
    data = os.urandom(150_000)
    writer.write(get("/echo", f"Content-Length: {len(data)}", method="POST") + data)
    resp = await read_response(reader)
    assert resp.header("Content-Length") == str(len(data)) and resp.body == data
    writer.write(get("/echo", "Transfer-Encoding: chunked", method="PUT")
                 + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    resp = await read_response(reader)
    assert resp.header("Transfer-Encoding") == "chunked" and resp.body == b"hello world"


async def test_sink_hashes_the_body(port: int) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{port}/sink", data=data) as resp:
            assert await resp.json() == {"body_bytes": len(data),
                                         "sha256": hashlib.sha256(data).hexdigest()}


async def test_100_continue_comes_before_the_body_is_sent(conn: Conn) -> None:
    reader, writer = conn
    writer.write(get("/sink", "Content-Length: 4", "Expect: 100-continue", method="POST"))
    line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert line == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"data")
    resp = await read_response(reader)
    assert resp.json()["body_bytes"] == 4


async def test_expect_fail_answers_417_without_the_body(conn: Conn) -> None:
    reader, writer = conn
    writer.write(get("/expect-fail", "Content-Length: 4", "Expect: 100-continue",
                     method="POST"))
    resp = await read_response(reader)
    assert resp.status == 417 and resp.interim == []
    assert await at_eof(reader)


async def test_early_hints(conn: Conn) -> None:
    reader, writer = conn
    writer.write(get("/early-hints"))
    resp = await read_response(reader)
    assert [r.status for r in resp.interim] == [103]
    assert resp.interim[0].header("Link") == "</style.css>; rel=preload"
    assert resp.status == 200 and resp.json()["path"] == "/early-hints"


# --- malformed input ------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"NOT A REQUEST\r\n\r\n",
])
async def test_malformed_requests_get_400_and_close(conn: Conn, raw: bytes) -> None:
    reader, writer = conn
    writer.write(raw)
    resp = await read_response(reader)
    assert resp.status == 400 and resp.header("Connection") == "close"
    assert await at_eof(reader)


async def test_answers_before_a_malformed_request_still_go_out(conn: Conn) -> None:
    reader, writer = conn
    writer.write(get("/delay/50") + b"GARBAGE\r\n\r\n")
    assert (await read_response(reader)).status == 200
    assert (await read_response(reader)).status == 400
    assert await at_eof(reader)


async def test_head_over_64_kib_is_refused(conn: Conn) -> None:
    reader, writer = conn
    writer.write(get("/", *(f"X-Fill-{i}: {'v' * 1000}" for i in range(70))))
    resp = await read_response(reader)
    assert resp.status == 431
    assert await at_eof(reader)


async def test_one_endless_header_line_is_refused(conn: Conn) -> None:
    reader, writer = conn
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ")
    for _ in range(40):  # 160 KiB in several reads, and never a line end
        writer.write(b"v" * 4096)
        await writer.drain()
        await asyncio.sleep(0.001)
    resp = await read_response(reader)
    assert resp.status == 431


async def test_many_pipelined_requests_in_one_write(conn: Conn) -> None:
    reader, writer = conn
    # Far more than 64 KiB of small requests at once: none of them is too large.
    batch = b"".join(get(f"/{i}", "X-Pad: " + "p" * 200) for i in range(600))
    writer.write(batch)
    for i in range(600):
        assert (await read_response(reader)).json()["path"] == f"/{i}"


# --- WebSocket ------------------------------------------------------------------------------


async def test_websocket_echo(port: int) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://127.0.0.1:{port}/ws", autoping=False) as ws:
            await ws.send_str("hello ☃")
            assert (await ws.receive(TIMEOUT)).data == "hello ☃"
            for size in (10, 1000, 70_000):  # 7-, 16- and 64-bit lengths
                data = os.urandom(size)
                await ws.send_bytes(data)
                msg = await ws.receive(TIMEOUT)
                assert msg.type is aiohttp.WSMsgType.BINARY and msg.data == data
            await ws.ping(b"are you there")
            pong = await ws.receive(TIMEOUT)
            assert pong.type is aiohttp.WSMsgType.PONG and pong.data == b"are you there"
            await ws.close(code=4001)
            assert ws.close_code == 4001


async def test_websocket_handshake_queued_behind_a_slow_answer(conn: Conn) -> None:
    reader, writer = conn
    # The handshake and a first frame arrive while /delay is still pending; the frame must wait
    # for the 101 and then be echoed.
    writer.write(get("/delay/50")
                 + get("/ws", "Upgrade: websocket", "Connection: Upgrade",
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                       "Sec-WebSocket-Version: 13")
                 + encode_frame(OP_TEXT, b"early", mask=b"abcd"))
    assert (await read_response(reader)).status == 200
    upgrade = await read_response(reader)
    assert upgrade.status == 101
    assert upgrade.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    frame = await asyncio.wait_for(reader.readexactly(7), TIMEOUT)
    assert frame == encode_frame(OP_TEXT, b"early")


async def test_write_buffer_stays_bounded_while_the_client_does_not_read() -> None:
    # uvloop queues references to the same pattern chunk, so RSS alone would not show a
    # missing pause; the transport's own count of unsent bytes does, on any loop.
    server, state = await start_backend("127.0.0.1", 0, NAME)
    reader, writer = await asyncio.open_connection("127.0.0.1", bound_address(server)[1])
    try:
        writer.write(get(f"/bytes/{BIG}"))
        await asyncio.sleep(0.3)
        (conn,) = state.connections
        buffered = conn._transport.get_write_buffer_size()  # type: ignore[union-attr]
        assert buffered <= 512 * 1024
        head = await read_response(reader, head_only=True)
        assert head.header("Content-Length") == str(BIG)
        got = 0
        while got < 4 * 1024 * 1024:  # it resumes once the client reads
            data = await asyncio.wait_for(reader.read(1 << 20), TIMEOUT)
            assert data == pattern(got, len(data))
            got += len(data)
    finally:
        writer.close()
        server.close()
        state.close_connections()
        await server.wait_closed()


# --- memory under 64 MiB each way, in a subprocess ------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{key} missing")


def _read_head(sock: socket.socket) -> bytes:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        assert byte, "connection closed inside a response head"
        head += byte
    return head


def _request(port: int, raw: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(raw)
    return sock


def _upload_blocks() -> list[bytes]:
    block = os.urandom(1024 * 1024)
    return [block] * (BIG // len(block))


@pytest.mark.slow
def test_big_transfers_keep_memory_bounded() -> None:
    code = "from lbcdn.demo.backend import run_demo_backend; run_demo_backend('127.0.0.1', 0, 'mem')"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        port = int(line.rsplit(":", 1)[1])
        warm = _request(port, get("/"))
        _read_head(warm)
        warm.close()
        base = _status_kib(proc.pid, "VmRSS")
        limit = base + 60 * 1024

        # Download with a stalled reader: without back-pressure the backend would queue it all.
        sock = _request(port, get(f"/bytes/{BIG}"))
        time.sleep(0.5)
        assert _status_kib(proc.pid, "VmRSS") < limit
        head = _read_head(sock)
        assert f"Content-Length: {BIG}".encode() in head
        got = 0
        while got < BIG:
            data = sock.recv(1 << 20)
            assert data, "download cut short"
            assert data == pattern(got, len(data))
            got += len(data)
        sock.close()

        # Upload to /sink: hashed as it arrives, never stored.
        blocks = _upload_blocks()
        expected = hashlib.sha256()
        sock = _request(port, get("/sink", f"Content-Length: {BIG}", method="POST"))
        for block in blocks:
            sock.sendall(block)
            expected.update(block)
        _read_head(sock)
        assert json.loads(sock.recv(4096)) == {"body_bytes": BIG, "sha256": expected.hexdigest()}
        sock.close()

        # Upload to /echo without reading the answer for a while: the backend must stop reading.
        sock = _request(port, get("/echo", f"Content-Length: {BIG}", method="POST"))
        def send_all() -> None:
            for block in blocks:
                sock.sendall(block)

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        time.sleep(0.5)
        assert _status_kib(proc.pid, "VmRSS") < limit
        _read_head(sock)
        got = 0
        while got < BIG:
            data = sock.recv(1 << 20)
            assert data, "echo cut short"
            got += len(data)
        sender.join(10)
        sock.close()

        assert _status_kib(proc.pid, "VmHWM") < limit
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
