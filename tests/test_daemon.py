"""The Daemon class in this process: what start() brings up and in which order, what stop()
takes down and in which order, the runtime view `describe()`, and a start that fails."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

import aiohttp
import pytest

from lbcdn.config.load import parse_config
from lbcdn.daemon import Daemon
from tests.e2e.harness import HOST, admin_port, free_port, listener_port, proxy_config, until

TIMEOUT = aiohttp.ClientTimeout(total=5)


def demo_config(**overrides: Any) -> tuple[dict[str, Any], int]:
    """A daemon that starts its own demo backend and forwards to it."""
    demo = free_port()
    config = proxy_config(demo, demo_backends=[{"name": "d1", "address": HOST, "port": demo}],
                          **overrides)
    return config, demo


async def accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(HOST, port)
    except ConnectionRefusedError:
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """A one-shot GET with `Connection: close`, read to the end."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(5):
            data = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body


async def test_start_brings_everything_up_and_first_request_works() -> None:
    config, demo = demo_config()
    daemon = Daemon(parse_config(config))
    await daemon.start()
    try:
        # demo backends start before listeners: the very first request finds its backend
        status, headers, body = await http_get(listener_port(config), "/")
        assert status == 200
        assert headers["x-backend"] == "d1"
        assert await accepts(demo)
        status, _, body = await http_get(admin_port(config), "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        assert daemon.draining is False
    finally:
        await daemon.stop()
    for port in (listener_port(config), admin_port(config), demo):
        assert not await accepts(port), port


async def test_describe_shape() -> None:
    config, demo = demo_config(routes=[{"name": "hello", "match": {"path": "/hello"},
                                        "fixed_response": {"body": "hi"}}])
    port = listener_port(config)
    daemon = Daemon(parse_config(config))
    await daemon.start()
    try:
        view = daemon.describe()
        pools = view.pop("pools")
        assert view == {
            "listeners": [{"name": "web", "address": HOST, "port": port,
                           "open_connections": 0, "protocol": "http"}],
            "routes": ["hello", "default"],
            "reloads": 0,
        }
        [pool] = pools  # type: ignore[misc]
        assert {k: pool[k] for k in ("name", "algorithm", "queued")} == \
            {"name": "app", "algorithm": "round_robin", "queued": 0}
        [row] = pool["targets"]
        assert {k: row[k] for k in ("target", "host", "port", "weight", "in_flight",
                                    "open_connections", "idle_connections", "requests",
                                    "errors", "latency_s")} == \
            {"target": f"{HOST}:{demo}", "host": HOST, "port": demo, "weight": 1,
             "in_flight": 0, "open_connections": 0, "idle_connections": 0, "requests": 0,
             "errors": 0, "latency_s": None}
        assert {"state", "reason", "classic", "failed_open"} <= set(row) | set(pool)
        view["pools"] = pools
        # a client connection held open after one proxied request: one open client
        # connection, one idle pooled upstream connection
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        view = daemon.describe()
        assert view["listeners"][0]["open_connections"] == 1  # type: ignore[index]
        target = view["pools"][0]["targets"][0]  # type: ignore[index]
        assert (target["in_flight"], target["open_connections"],
                target["idle_connections"]) == (0, 1, 1)
        writer.close()
        # JSON as the admin API serves it
        assert json.loads(json.dumps(view)) == view
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            async with session.get(f"http://{HOST}:{admin_port(config)}/api/runtime") as resp:
                assert resp.status == 200
                served = await resp.json()
        assert served["routes"] == ["hello", "default"]
        assert served["pools"][0]["name"] == "app"
        assert served["listeners"][0]["port"] == port
    finally:
        await daemon.stop()


async def test_stop_order_drains_listeners_before_admin_and_backends() -> None:
    """During the drain: the listener no longer accepts, /healthz says 503, the demo backend
    still serves the in-flight request; after stop() nothing is left listening."""
    config, demo = demo_config(shutdown={"drain_timeout_s": 5})
    port, admin = listener_port(config), admin_port(config)
    daemon = Daemon(parse_config(config))
    await daemon.start()
    stopping: asyncio.Task[None] | None = None
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET /delay/600 HTTP/1.1\r\nHost: t\r\n\r\n")
        await writer.drain()
        await until(lambda: daemon.pools["app"].targets[0].in_flight == 1,
                    what="the request with the backend")
        assert daemon.draining is False
        stopping = asyncio.create_task(daemon.stop())
        await asyncio.sleep(0)
        assert daemon.draining is True  # flips as soon as stop begins
        await asyncio.sleep(0.1)
        assert not stopping.done()
        assert not await accepts(port)
        status, _, body = await http_get(admin, "/healthz")
        assert (status, json.loads(body)) == (503, {"status": "draining"})
        assert await accepts(demo)
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            rest = await reader.read(-1)  # the connection closes after the response
        writer.close()
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert b"\r\nconnection: close\r\n" in head.lower()
        assert json.loads(rest)["path"] == "/delay/600"
        async with asyncio.timeout(3):
            await stopping
        assert daemon.draining is True
        for p in (port, admin, demo):
            assert not await accepts(p), p
    finally:
        if stopping is None:
            await daemon.stop()
        elif not stopping.done():
            await stopping


async def test_listener_port_in_use_fails_start_and_leaves_nothing_listening() -> None:
    config, demo = demo_config()
    busy = free_port()
    config["listeners"].append({"name": "second", "address": HOST, "port": busy})
    with socket.socket() as blocker:
        blocker.bind((HOST, busy))
        blocker.listen()
        daemon = Daemon(parse_config(config))
        try:
            with pytest.raises(OSError):
                await daemon.start()
            # what start() had already opened is closed again: a failed start is no start
            for port in (demo, listener_port(config), admin_port(config)):
                assert not await accepts(port), port
        finally:
            async with asyncio.timeout(5):
                await daemon.stop()  # stop after a failed start is harmless
        for port in (demo, listener_port(config), admin_port(config)):
            assert not await accepts(port), port


async def test_admin_port_in_use_fails_start_and_leaves_nothing_listening() -> None:
    config, demo = demo_config()
    with socket.socket() as blocker:
        blocker.bind((HOST, admin_port(config)))
        blocker.listen()
        daemon = Daemon(parse_config(config))
        try:
            with pytest.raises(OSError):
                await daemon.start()
            for port in (demo, listener_port(config)):
                assert not await accepts(port), port
        finally:
            async with asyncio.timeout(5):
                await daemon.stop()


async def test_stop_twice_is_harmless() -> None:
    config, _ = demo_config()
    daemon = Daemon(parse_config(config))
    await daemon.start()
    await daemon.stop()
    async with asyncio.timeout(5):
        await daemon.stop()
    assert not await accepts(listener_port(config))
