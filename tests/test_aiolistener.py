"""lbcdn.aiolistener in one event loop, real sockets: body timeout, a response left unread, a
bad head behind a request in progress, the connection cap (idle connections make room, others get 503), and the admin
API's JSON error shape. The daemon-level behaviour is in tests/e2e/test_control_listeners.py."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from lbcdn import aiolistener
from lbcdn.aiolistener import AppListener, serve_app
from lbcdn.configkit.limits import HttpLimitsConfig

HOST = "127.0.0.1"


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "0")))
    if "big" in request.query:
        return web.Response(body=b"x" * (32 << 20))
    body = await request.read()
    return web.Response(text=f"got {len(body)}\n")


async def listening(limits: HttpLimitsConfig, cap: int = 100,
                    json_errors: bool = False) -> AppListener:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _slow)
    return await serve_app(app, "test", HOST, 0, limits, cap, shutdown_timeout_s=1.0,
                           json_errors=json_errors)


async def read_all(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bytes:
    async with asyncio.timeout(timeout_s):
        return await reader.read(-1)


async def test_a_stalled_body_is_cut_at_the_body_timeout(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    listener = await listening(HttpLimitsConfig(body_timeout_s=0.3))
    try:
        reader, writer = await asyncio.open_connection(HOST, listener.port)
        writer.write(b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await read_all(reader) == b""      # closed; the app was reading the body
        assert 0.25 < loop.time() - started < 2
        writer.close()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        await listener.stop()


async def test_a_bad_head_behind_a_request_in_progress_closes_after_its_answer() -> None:
    listener = await listening(HttpLimitsConfig())
    try:
        reader, writer = await asyncio.open_connection(HOST, listener.port)
        writer.write(b"GET /?s=0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.1)
        writer.write(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await read_all(reader)
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"got 0\n"), data
        writer.close()
    finally:
        await listener.stop()


async def test_admin_errors_keep_the_json_shape() -> None:
    listener = await listening(HttpLimitsConfig(), json_errors=True)
    try:
        reader, writer = await asyncio.open_connection(HOST, listener.port)
        writer.write(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await read_all(reader)
        assert data.startswith(b"HTTP/1.1 414 URI Too Long\r\n")
        assert b"Content-Type: application/json" in data
        assert data.endswith(b'{"error": "request line too long"}')
        writer.close()
    finally:
        await listener.stop()


async def test_at_the_cap_an_idle_connection_makes_room_else_503(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiolistener, "EVICT_IDLE_S", 0.2)
    listener = await listening(HttpLimitsConfig(), cap=2)
    try:
        idle_reader, idle_writer = await asyncio.open_connection(HOST, listener.port)
        _, busy_writer = await asyncio.open_connection(HOST, listener.port)
        busy_writer.write(b"GET / HTTP/1.1\r\n")      # a head in progress keeps its place
        await asyncio.sleep(0.3)
        reader, writer = await asyncio.open_connection(HOST, listener.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await read_all(reader)).startswith(b"HTTP/1.1 200 ")
        assert await read_all(idle_reader) == b""       # it made room
        _, busy2_writer = await asyncio.open_connection(HOST, listener.port)
        busy2_writer.write(b"GET / HTTP/1.1\r\n")
        await asyncio.sleep(0.1)
        refused_reader, refused_writer = await asyncio.open_connection(HOST, listener.port)
        refused_writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        refusal = await read_all(refused_reader)
        assert refusal.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 1\r\n" in refusal
        for w in (idle_writer, busy_writer, busy2_writer, writer, refused_writer):
            w.close()
    finally:
        await listener.stop()


async def test_a_response_left_unread_is_cut_at_the_idle_timeout() -> None:
    listener = await listening(HttpLimitsConfig(idle_timeout_s=0.5))
    try:
        reader, writer = await asyncio.open_connection(HOST, listener.port)
        writer.write(b"GET /?big HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(2)      # reading nothing
        got = len(await read_all(reader))
        assert 0 < got < 32 << 20, got
        writer.close()
    finally:
        await listener.stop()
