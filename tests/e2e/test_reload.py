"""Reload (SIGHUP, POST /api/reload, Daemon.reload) and log reopening (SIGUSR1), end to end:
a valid new config takes effect without refusing or failing a single request, an invalid one
changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from lbcdn.config.load import load_config
from lbcdn.configkit.errors import ConfigError
from lbcdn.daemon import Daemon, ReloadError
from tests.e2e.harness import (HOST, DaemonProcess, RawClient, admin_port, backend_process,
                               demo_backend, free_port, listener_port, proxy_config, until)


@contextlib.asynccontextmanager
async def daemon_from_file(tmp_path: Path, config: dict[str, Any]
                           ) -> AsyncIterator[tuple[Daemon, Path]]:
    """A daemon started from a config file the test can then rewrite and reload."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    daemon = Daemon(load_config(path), path)
    await daemon.start()
    try:
        yield daemon, path
    finally:
        await daemon.stop()


def with_hello(config: dict[str, Any], body: str) -> dict[str, Any]:
    config = dict(config)
    config["routes"] = [{"name": "hello", "match": {"path": "/hello"},
                         "fixed_response": {"body": body}}]
    return config


async def get(session: aiohttp.ClientSession, port: int, path: str) -> tuple[int, str]:
    async with session.get(f"http://{HOST}:{port}{path}") as resp:
        return resp.status, await resp.text()


async def test_reload_swaps_routes_and_keeps_open_connections(tmp_path: Path) -> None:
    async with demo_backend() as bport:
        config = with_hello(proxy_config(bport), "one")
        async with daemon_from_file(tmp_path, config) as (daemon, path):
            port = listener_port(config)
            async with aiohttp.ClientSession() as session:
                assert await get(session, port, "/hello") == (200, "one")
                path.write_text(yaml.safe_dump(with_hello(config, "two")))
                await daemon.reload()
                # the same pooled client connection now sees the new route
                assert await get(session, port, "/hello") == (200, "two")
                status, body = await get(session, port, "/proxied")
                assert status == 200 and '"backend"' in body
            assert daemon.reloads == 1


async def test_invalid_config_changes_nothing(tmp_path: Path) -> None:
    config = with_hello(proxy_config(free_port()), "one")
    async with daemon_from_file(tmp_path, config) as (daemon, path):
        path.write_text("listeners: [{name: web, port: 0}]\nsurprise: 1\n")
        with pytest.raises(ConfigError) as info:
            await daemon.reload()
        assert "surprise" in str(info.value)
        async with aiohttp.ClientSession() as session:
            assert await get(session, listener_port(config), "/hello") == (200, "one")
        assert daemon.reloads == 0


async def test_listeners_added_and_removed(tmp_path: Path) -> None:
    config = with_hello(proxy_config(free_port()), "x")
    async with daemon_from_file(tmp_path, config) as (daemon, path):
        old_port = listener_port(config)
        new_port = free_port()
        config2 = dict(config, listeners=[{"name": "second", "address": HOST,
                                           "port": new_port}])
        path.write_text(yaml.safe_dump(config2))
        await daemon.reload()
        async with aiohttp.ClientSession() as session:
            assert await get(session, new_port, "/hello") == (200, "x")

        async def refused() -> bool:
            try:
                _, w = await asyncio.open_connection(HOST, old_port)
            except OSError:
                return True
            w.close()
            return False
        # the removed listener stops accepting (after draining: nothing open)
        await until(refused, timeout_s=5, interval_s=0.05, what="the removed listener refusing")


async def test_port_taken_fails_the_reload_and_keeps_the_old_runtime(tmp_path: Path) -> None:
    import socket
    config = with_hello(proxy_config(free_port()), "x")
    async with daemon_from_file(tmp_path, config) as (daemon, path):
        with socket.socket() as blocker:
            blocker.bind((HOST, 0))
            blocker.listen()
            busy = blocker.getsockname()[1]
            config2 = dict(config, listeners=config["listeners"] + [
                {"name": "busy", "address": HOST, "port": busy}])
            config2 = with_hello(config2, "y")
            path.write_text(yaml.safe_dump(config2))
            with pytest.raises(ReloadError):
                await daemon.reload()
        async with aiohttp.ClientSession() as session:
            assert await get(session, listener_port(config), "/hello") == (200, "x")


async def test_admin_reload_endpoint(tmp_path: Path) -> None:
    config = with_hello(proxy_config(free_port(), admin={"token": "s3cret"}), "one")
    url = f"http://{HOST}:{admin_port(config)}/api/reload"
    auth = {"Authorization": "Bearer s3cret"}
    async with daemon_from_file(tmp_path, config) as (daemon, path):
        async with aiohttp.ClientSession() as session:
            async with session.post(url) as resp:
                assert resp.status == 401
            path.write_text("listeners: []\n")
            async with session.post(url, headers=auth) as resp:
                assert resp.status == 400
                body = await resp.json()
                assert body["problems"] and "listeners" in body["problems"][0]
            path.write_text(yaml.safe_dump(with_hello(config, "two")))
            async with session.post(url, headers=auth) as resp:
                assert (resp.status, await resp.json()) == (200, {"status": "reloaded"})
            assert await get(session, listener_port(config), "/hello") == (200, "two")


async def test_without_a_token_the_api_cannot_change_state(tmp_path: Path) -> None:
    config = proxy_config(free_port())
    async with daemon_from_file(tmp_path, config) as (daemon, path):
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://{HOST}:{admin_port(config)}/api/reload") as resp:
                assert resp.status == 403
                assert "admin.token" in (await resp.json())["error"]
        assert daemon.reloads == 0


async def _load(port: int, rate: int, seconds: float) -> list[int | str]:
    """A fixed-rate load: `rate` requests a second for `seconds`, half on a kept-alive
    connection pool, half on new connections. Returns statuses, or the error text."""
    results: list[int | str] = []
    keep = aiohttp.ClientSession()
    fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))

    async def one(session: aiohttp.ClientSession, path: str) -> None:
        try:
            async with session.get(f"http://{HOST}:{port}{path}",
                                   timeout=aiohttp.ClientTimeout(total=10)) as resp:
                await resp.read()
                results.append(resp.status)
        except Exception as exc:  # a refused or reset request is a failure to count
            results.append(f"{type(exc).__name__}: {exc}")

    tasks = []
    start = time.monotonic()
    n = int(rate * seconds)
    for i in range(n):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        tasks.append(asyncio.ensure_future(one(keep if i % 2 else fresh, f"/r{i}")))
    await asyncio.gather(*tasks)
    await keep.close()
    await fresh.close()
    return results


@pytest.mark.slow
async def test_sighup_reloads_under_load_without_a_failed_request(tmp_path: Path) -> None:
    with backend_process() as backend:
        config = with_hello(proxy_config(backend.port), "v0")
        config["logging"]["level"] = "info"
        daemon = DaemonProcess(config, tmp_path)
        try:
            port = listener_port(config)
            async with aiohttp.ClientSession() as session:
                slow = asyncio.ensure_future(get(session, port, "/delay/2500"))
                load = asyncio.ensure_future(_load(port, rate=100, seconds=3.0))
                for i in range(1, 6):
                    await asyncio.sleep(0.45)
                    daemon.path.write_text(yaml.safe_dump(with_hello(config, f"v{i}")))
                    os.kill(daemon.pid, signal.SIGHUP)
                results = await load
                status, _ = await slow
                await until(lambda: daemon.stderr().count("configuration reloaded") == 5,
                            what="the fifth reload")
                assert await get(session, port, "/hello") == (200, "v5")
            failures = [r for r in results if r != 200]
            assert not failures, failures[:5]
            assert len(results) == 300
            assert status == 200  # the slow request in flight across all five reloads
            assert daemon.stderr().count("configuration reloaded") == 5
        finally:
            assert daemon.stop() == 0


def storm_config(config: dict[str, Any], step: int, b1: int, b2: int) -> dict[str, Any]:
    """Step `step` of a reload storm: every step changes what a reload can change while
    requests run: the fixed route's body, the pool's targets (one, then both) and settings
    (a rebuilt pool), health checks, a listener limit."""
    config = with_hello(config, f"v{step}")
    targets = [f"{HOST}:{b1}"] if step % 2 == 0 else [f"{HOST}:{b1}", f"{HOST}:{b2}"]
    config["pools"] = {"app": {
        "targets": targets, "max_idle_per_target": 8 + step,
        "health": {"enabled": step % 3 != 2, "path": "/status/200", "interval_s": 0.2,
                   "timeout_s": 0.1,
                   "healthy_threshold": 2}}}
    config["listeners"] = [{**config["listeners"][0], "idle_timeout_s": 60 + step}]
    return config


async def keepalive_load(port: int, clients: int, seconds: float,
                         requests: list[tuple[str, str, bytes]], most: int = 4000
                         ) -> tuple[int, list[str]]:
    """`clients` keep-alive connections, each sending `requests` (method, path, body) in turn
    for `seconds` (and at most `most` requests): (answered, failures). A failure is anything
    but a 200, or a connection that closed or broke under a request; the client then opens a
    new one."""
    failures: list[str] = []
    answered = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal answered
        conn = await RawClient.open(port)
        try:
            for n in range(most):
                if time.monotonic() > deadline:
                    break
                method, path, body = requests[n % len(requests)]
                try:
                    resp = await conn.request(method, path, body=body, timeout_s=10)
                except Exception as exc:
                    failures.append(f"{path}: {type(exc).__name__}: {exc}")
                    await conn.close()
                    conn = await RawClient.open(port)
                    continue
                answered += 1
                if resp.status != 200:
                    failures.append(f"{path}: {resp.status} {resp.body[:200]!r}")
        finally:
            await conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return answered, failures


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_reload_storm_under_keepalive_load_loses_nothing(tmp_path: Path,
                                                               workers: str) -> None:
    """Five SIGHUPs, each with a changed config, while six keep-alive clients send requests
    (some with bodies) as fast as they are answered and two more send slow ones that are in
    flight across the reloads: not one request lost or failed, no connection closed."""
    with backend_process("b1") as b1, backend_process("b2") as b2:
        config = storm_config(proxy_config(b1.port), 0, b1.port, b2.port)
        config["logging"]["level"] = "info"
        daemon = await asyncio.to_thread(DaemonProcess, config, tmp_path,
                                         ["--workers", workers])
        try:
            port = listener_port(config)
            load = asyncio.gather(
                keepalive_load(port, clients=6, seconds=4.0, requests=[
                    ("GET", "/", b""), ("GET", "/hello", b""), ("GET", "/bytes/4096", b""),
                    ("POST", "/echo", b"x" * 20_000)]),
                # requests in flight across every reload
                keepalive_load(port, clients=2, seconds=4.0, requests=[
                    ("GET", "/delay/400", b"")]))
            for step in range(1, 6):
                await asyncio.sleep(0.6)
                daemon.path.write_text(yaml.safe_dump(storm_config(config, step, b1.port,
                                                                   b2.port)))
                os.kill(daemon.pid, signal.SIGHUP)
            (answered, failures), (slow, slow_failures) = await load
            print(f"reload storm, --workers {workers}: {answered} + {slow} slow requests")
            assert not failures + slow_failures, (failures + slow_failures)[:5]
            assert answered >= 300 and slow >= 10, (answered, slow)
            # logged once every worker has applied it
            await until(lambda: daemon.stderr().count("configuration reloaded") == 5,
                        what="the fifth reload")
            async with aiohttp.ClientSession() as session:
                assert await get(session, port, "/hello") == (200, "v5")
            assert daemon.stderr().count("configuration reloaded") == 5, daemon.stderr()
        finally:
            assert await asyncio.to_thread(daemon.stop) == 0


async def test_sigusr1_reopens_the_access_log(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    config = with_hello(proxy_config(free_port()), "x")
    config["logging"] = {"level": "info", "access_log": {"enabled": True,
                                                         "path": str(log_path)}}
    daemon = DaemonProcess(config, tmp_path)
    try:
        port = listener_port(config)
        async with aiohttp.ClientSession() as session:
            await get(session, port, "/hello?before")
            # the access log is written by a thread of its own
            await until(lambda: log_path.exists() and "before" in log_path.read_text(),
                        what="the first request's log line")
            os.rename(log_path, tmp_path / "access.log.1")
            os.kill(daemon.pid, signal.SIGUSR1)
            await until(lambda: "access log reopened" in daemon.stderr(), what="the reopen")
            await get(session, port, "/hello?after")
    finally:
        assert daemon.stop() == 0
    assert "before" in (tmp_path / "access.log.1").read_text()
    after = log_path.read_text()
    assert "after" in after and "before" not in after


async def test_open_websocket_tunnel_survives_a_reload(tmp_path: Path) -> None:
    async with demo_backend() as bport:
        config = with_hello(proxy_config(bport), "one")
        async with daemon_from_file(tmp_path, config) as (daemon, path):
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(
                        f"http://{HOST}:{listener_port(config)}/ws") as ws:
                    await ws.send_str("before")
                    assert (await ws.receive(timeout=3)).data == "before"
                    path.write_text(yaml.safe_dump(with_hello(config, "two")))
                    await daemon.reload()
                    assert await get(session, listener_port(config), "/hello") == (200, "two")
                    await ws.send_str("after")  # the tunnel opened before still carries data
                    assert (await ws.receive(timeout=3)).data == "after"
