"""Interim (1xx) responses and the Upgrade tunnel through the proxy.

- 103 Early Hints from the backend reaches an HTTP/1.1 client before the final response, and
  never an HTTP/1.0 client (RFC 9110 15.2).
- A WebSocket handshake is passed to the backend, its 101 to the client, and from then on the
  connection is a byte tunnel both ways (text, binary, 1 MiB messages, ping/pong, close). When
  either side goes away, the other side's connection is closed too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from lbcdn.demo.backend import BackendState, start_backend
from lbcdn.http.websocket import accept_key
from tests.e2e.harness import HOST, admin_port, demo_backend, listener_port, proxy_config, \
    running_daemon, until
from tests.e2e.test_proxy import access_log_lines

TIMEOUT = aiohttp.ClientTimeout(total=10)


def tunnel_config(backend_port: int) -> dict[str, Any]:
    # a short drain: a tunnel the proxy failed to close must not hold each test's teardown
    # for the default 5 s
    return proxy_config(backend_port, shutdown={"drain_timeout_s": 1})


@contextlib.asynccontextmanager
async def observed_backend() -> AsyncIterator[tuple[int, BackendState]]:
    """A demo backend in this loop whose open connections the test can see."""
    server, state = await start_backend(HOST, 0, "b1")
    try:
        yield int(server.sockets[0].getsockname()[1]), state
    finally:
        server.close()
        state.close_connections()


async def exchange(port: int, request: bytes, timeout_s: float = 3.0) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            return await reader.read(-1)
    finally:
        writer.close()


def split_responses(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """Split a response byte stream into (status line, head, body) triples: 1xx and 204/304
    have no body, others are framed by Content-Length (what the demo backend sends)."""
    out = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, head
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        length = 0
        if status >= 200 and status not in (204, 304):
            values = [line.split(b":", 1)[1].strip() for line in lines[1:]
                      if line.lower().startswith(b"content-length:")]
            assert len(values) == 1, head
            length = int(values[0])
        assert len(data) >= length, (head, data)
        out.append((lines[0], head, data[:length]))
        data = data[length:]
    return out


# -- 1xx ---------------------------------------------------------------------------------

async def test_early_hints_reach_http11_client_before_the_200() -> None:
    async with demo_backend() as backend_port:
        config = tunnel_config(backend_port)
        async with running_daemon(config):
            data = await exchange(listener_port(config),
                                  b"GET /early-hints HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    responses = split_responses(data)
    assert [r[0] for r in responses] == [b"HTTP/1.1 103 Early Hints", b"HTTP/1.1 200 OK"]
    hints = responses[0][1].split(b"\r\n")
    assert b"Link: </style.css>; rel=preload" in hints
    assert not any(h.lower().startswith((b"content-length", b"transfer-encoding"))
                   for h in hints)
    assert json.loads(responses[1][2])["path"] == "/early-hints"


async def test_early_hints_not_sent_to_http10_client() -> None:
    async with demo_backend() as backend_port:
        config = tunnel_config(backend_port)
        async with running_daemon(config):
            data = await exchange(listener_port(config),
                                  b"GET /early-hints HTTP/1.0\r\nHost: t\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:200]
    responses = split_responses(data)
    assert [r[0] for r in responses] == [b"HTTP/1.1 200 OK"]
    assert json.loads(responses[0][2])["path"] == "/early-hints"


async def test_early_hints_then_keep_alive_continues() -> None:
    """The 103 is not the response: the next request on the connection gets its own answer."""
    async with demo_backend() as backend_port:
        config = tunnel_config(backend_port)
        async with running_daemon(config):
            data = await exchange(listener_port(config),
                                  b"GET /early-hints HTTP/1.1\r\nHost: t\r\n\r\n"
                                  b"GET /status/201 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    responses = split_responses(data)
    assert [r[0] for r in responses] == [b"HTTP/1.1 103 Early Hints", b"HTTP/1.1 200 OK",
                                         b"HTTP/1.1 201 Created"]
    assert json.loads(responses[1][2])["path"] == "/early-hints"
    assert responses[2][2] == b"status 201\n"


# -- WebSocket ---------------------------------------------------------------------------

async def test_websocket_echo_through_the_proxy_and_clean_close() -> None:
    async with observed_backend() as (backend_port, state):
        config = tunnel_config(backend_port)
        async with running_daemon(config) as daemon, \
                aiohttp.ClientSession(timeout=TIMEOUT) as session:
            url = f"http://{HOST}:{listener_port(config)}/ws"
            async with session.ws_connect(url, autoping=False, max_msg_size=4 << 20) as ws:
                assert ws._response.status == 101
                assert ws._response.headers.get("X-Backend") == "b1"
                assert len(state.connections) == 1
                await ws.send_str("hello ✓")
                msg = await ws.receive(timeout=3)
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "hello ✓")
                await ws.send_bytes(b"\x00\x01\xff")
                msg = await ws.receive(timeout=3)
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, b"\x00\x01\xff")
                big = os.urandom(1 << 20)
                await ws.send_bytes(big)
                msg = await ws.receive(timeout=5)
                assert msg.type == aiohttp.WSMsgType.BINARY
                assert msg.data == big
                await ws.ping(b"are you there")
                msg = await ws.receive(timeout=3)
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"are you there")
                # several messages in flight at once arrive in order
                for i in range(20):
                    await ws.send_str(f"m{i}")
                got = [(await ws.receive(timeout=3)).data for _ in range(20)]
                assert got == [f"m{i}" for i in range(20)]
                assert await ws.close(code=1000, message=b"bye")
                assert ws.close_code == 1000
            # the client closed: the tunnel ends and the backend connection goes away
            listener = daemon.listeners[0]
            await until(lambda: not state.connections, what="backend connection closed")
            await until(lambda: not listener.connections, what="client connection closed")


async def test_websocket_access_log_line_counts_both_ways_and_the_upstream_time(
        tmp_path: Path) -> None:
    """One line per tunnel, written when it closes: what went through it each way (frames
    included) and the time to the backend's 101."""
    log_path = tmp_path / "access.log"
    async with observed_backend() as (backend_port, _):
        config = tunnel_config(backend_port)
        config["logging"] = {"level": "warning",
                             "access_log": {"enabled": True, "path": str(log_path)}}
        async with running_daemon(config) as daemon, \
                aiohttp.ClientSession(timeout=TIMEOUT) as session:
            url = f"http://{HOST}:{listener_port(config)}/ws"
            async with session.ws_connect(url, autoping=False, compress=0) as ws:
                await ws.send_bytes(b"x" * 100_000)
                msg = await ws.receive(timeout=5)
                assert (msg.type, len(msg.data)) == (aiohttp.WSMsgType.BINARY, 100_000)
                assert await ws.close(code=1000)
            listener = daemon.listeners[0]
            await until(lambda: not listener.connections, what="client connection closed")
    lines = [line for line in access_log_lines(log_path) if line["path"] == "/ws"]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["status"] == 101 and line["target"] == f"{HOST}:{backend_port}"
    # client frames: 2 + 8 (64-bit length) + 4 (mask) + payload; its close: 2 + 4 + code
    assert line["bytes_in"] == 14 + 100_000 + 8
    # the 101 head, the echo (2 + 8 + payload, unmasked) and the backend's close (2 + code)
    assert 10 + 100_000 + 4 + 60 < line["bytes_out"] < 10 + 100_000 + 4 + 400, line
    assert line["upstream_time_s"] is not None
    assert 0 < line["upstream_time_s"] <= line["total_time_s"]


async def test_websocket_tunnel_drains_and_closes_at_the_deregistration_delay() -> None:
    """A tunnel counts as in flight on its target: deregistering the target lets it run for
    the delay (it is not cut at once), then closes it."""
    async with observed_backend() as (backend_port, _):
        config = tunnel_config(backend_port)
        config["pools"]["app"]["deregistration_delay_s"] = 1
        config["admin"]["token"] = "t"
        async with running_daemon(config), \
                aiohttp.ClientSession(timeout=TIMEOUT) as session:
            url = f"http://{HOST}:{listener_port(config)}/ws"
            async with session.ws_connect(url, autoping=False, compress=0) as ws:
                async with session.delete(
                        f"http://{HOST}:{admin_port(config)}/api/pools/app/targets/"
                        f"{HOST}:{backend_port}", headers={"Authorization": "Bearer t"}) as r:
                    assert r.status == 202
                started = asyncio.get_running_loop().time()
                await ws.send_str("still here")
                msg = await ws.receive(timeout=3)
                assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "still here")
                msg = await ws.receive(timeout=5)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                    aiohttp.WSMsgType.ERROR), msg
                assert 0.7 < asyncio.get_running_loop().time() - started < 4


async def test_websocket_client_vanishing_closes_backend_connection() -> None:
    """No close handshake: the client's TCP connection just ends."""
    async with observed_backend() as (backend_port, state):
        config = tunnel_config(backend_port)
        async with running_daemon(config) as daemon:
            reader, writer = await asyncio.open_connection(HOST, listener_port(config))
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(f"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                         f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
            async with asyncio.timeout(3):
                head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 "), head
            assert f"Sec-WebSocket-Accept: {accept_key(key)}".encode() in head
            await until(lambda: len(state.connections) == 1, what="backend connected")
            writer.transport.abort()
            await until(lambda: not state.connections, what="backend connection closed")
            await until(lambda: not daemon.listeners[0].connections,
                             what="client connection gone")


async def test_websocket_backend_closing_closes_client_connection() -> None:
    async with observed_backend() as (backend_port, state):
        config = tunnel_config(backend_port)
        async with running_daemon(config) as daemon, \
                aiohttp.ClientSession(timeout=TIMEOUT) as session:
            url = f"http://{HOST}:{listener_port(config)}/ws"
            async with session.ws_connect(url) as ws:
                await ws.send_str("x")
                assert (await ws.receive(timeout=3)).data == "x"
                state.close_connections()  # the backend drops the connection (FIN)
                msg = await ws.receive(timeout=3)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                    aiohttp.WSMsgType.CLOSING), msg
            await until(lambda: not daemon.listeners[0].connections,
                             what="client connection closed by the proxy")


async def test_websocket_bytes_sent_with_the_handshake_are_not_lost() -> None:
    """A client may send its first frame right behind the upgrade request, before the 101;
    the proxy must hold those bytes and forward them once the tunnel is up."""
    async with demo_backend() as backend_port:
        config = tunnel_config(backend_port)
        async with running_daemon(config):
            reader, writer = await asyncio.open_connection(HOST, listener_port(config))
            try:
                key = base64.b64encode(os.urandom(16)).decode()
                mask = b"\x01\x02\x03\x04"
                payload = b"early"
                frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(
                    b ^ mask[i % 4] for i, b in enumerate(payload))
                writer.write(f"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                             f"Sec-WebSocket-Version: 13\r\n\r\n".encode() + frame)
                await writer.drain()
                async with asyncio.timeout(3):
                    head = await reader.readuntil(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 101 "), head
                    echoed = await reader.readexactly(2 + len(payload))
                assert echoed == bytes([0x81, len(payload)]) + payload
            finally:
                writer.close()


async def test_ws_without_upgrade_gets_426_from_backend() -> None:
    async with demo_backend() as backend_port:
        config = tunnel_config(backend_port)
        async with running_daemon(config), aiohttp.ClientSession(timeout=TIMEOUT) as session:
            async with session.get(f"http://{HOST}:{listener_port(config)}/ws") as resp:
                assert resp.status == 426
                assert resp.headers["X-Backend"] == "b1"
                assert await resp.text() == "this endpoint needs Upgrade: websocket\n"
            # the connection is still usable afterwards (a plain request, not an upgrade)
            async with session.get(f"http://{HOST}:{listener_port(config)}/status/200") as resp:
                assert resp.status == 200
