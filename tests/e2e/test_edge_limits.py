"""A connection flood on an edge listener cannot take the daemon's file descriptors: its
`max_connections` (fitted under a low descriptor limit) holds, a connection idle for a second
makes room for a new client, past the cap with none idle a new client gets 503 with
Retry-After, and meanwhile health checks, DNS, the admin API and proxied requests (each with
its upstream connection) keep working, with no traceback and a few log lines. Real daemons on
loopback, in one process (descriptors shared with the control listeners, health checks and DNS)
and with `--workers 2` (a cap per worker)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rdatatype
import pytest

from tests.e2e.harness import (HOST, BackendProcess, DaemonProcess, admin_port, free_port,
                               listener_port, proxy_config, wait_for_port)

NOFILE = 500     # one process: edge cap 40 (2 fds each), admin 40; a worker: edge cap 61
FLOOD = 1200     # connections: more than the descriptor limit of each process
HEADER_TIMEOUT_S = 6.0

WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "workers-2"])


async def status_of(port: int, path: str = "/", timeout_s: float = 5.0) -> bytes:
    """A normal client's request on a fresh connection: its whole answer."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
        async with asyncio.timeout(timeout_s):
            return await reader.read()
    finally:
        writer.close()


async def www(port: int) -> list[str]:
    q = dns.message.make_query("www.example.test.", dns.rdatatype.A)
    r = await dns.asyncquery.udp(q, HOST, port=port, timeout=3)
    return sorted(rd.address for rrset in r.answer for rd in rrset)


@contextlib.asynccontextmanager
async def flood(port: int, data: bytes) -> AsyncIterator[None]:
    """FLOOD connections to `port`, each sending `data` (nothing: idle), held open."""
    writers: list[asyncio.StreamWriter] = []
    try:
        for _ in range(FLOOD):
            with contextlib.suppress(ConnectionError):
                _, writer = await asyncio.open_connection(HOST, port)
                writers.append(writer)
                if data:
                    writer.write(data)
        yield
    finally:
        for writer in writers:
            writer.close()


@pytest.mark.slow
@WORKERS
async def test_a_connection_flood_leaves_the_daemon_working(tmp_path: Path, workers: int) -> None:
    backend = BackendProcess()
    dns_port = free_port()
    config = proxy_config(backend.port, logging={"level": "info",
                                                 "access_log": {"enabled": False}})
    config["listeners"][0]["header_timeout_s"] = HEADER_TIMEOUT_S
    # a new connection (a descriptor) for each check: without the cap, in one process, the
    # flood took them all and the target was marked unhealthy
    config["pools"]["app"]["health"] = {"path": "/", "interval_s": 0.5, "timeout_s": 0.4,
                                        "reuse_connection": False}
    config["dns"] = {"listeners": [{"address": HOST, "port": dns_port}], "zones": [
        {"name": "example.test", "records": [
            {"name": "www", "type": "A", "ttl_s": 5,
             "alias": {"pool": "app", "evaluate_target_health": True}}]}]}
    daemon = DaemonProcess(config, tmp_path, ["--workers", str(workers)], nofile=NOFILE)
    try:
        web, admin = listener_port(config), admin_port(config)
        wait_for_port(admin, proc=daemon.proc)
        async with asyncio.timeout(10):
            while await www(dns_port) != [HOST]:   # the target's first health checks
                await asyncio.sleep(0.2)
        assert (await status_of(web)).startswith(b"HTTP/1.1 200 ")

        # idle connections (nothing sent): one idle for a second makes room for a new client
        async with flood(web, b""):
            await asyncio.sleep(1.2)
            for _ in range(3):
                assert (await status_of(web)).startswith(b"HTTP/1.1 200 ")
            assert (await status_of(admin, "/healthz")).startswith(b"HTTP/1.1 200 ")
            assert await www(dns_port) == [HOST]
            if workers == 1:
                assert len(os.listdir(f"/proc/{daemon.pid}/fd")) < NOFILE - 200

        # heads in progress keep their places: past the cap, 503 with Retry-After
        async with flood(web, b"GET / HTTP/1.1\r\nHost: x\r\n"):
            # past min(64, cap) lingering refusals new ones are closed at once: let those go
            await asyncio.sleep(1.2)
            refusal = await status_of(web)
            assert refusal.startswith(b"HTTP/1.1 503 "), refusal
            assert b"\r\nRetry-After: 1\r\n" in refusal
            assert (await status_of(admin, "/healthz")).startswith(b"HTTP/1.1 200 ")
            assert await www(dns_port) == [HOST]
            await asyncio.sleep(1.5)   # three health checks of the pool
            if workers == 1:
                assert len(os.listdir(f"/proc/{daemon.pid}/fd")) < NOFILE - 200

        await asyncio.sleep(1.5)   # the refused ones' linger ends
        for _ in range(3):
            assert (await status_of(web)).startswith(b"HTTP/1.1 200 ")
        assert await www(dns_port) == [HOST]
        log = daemon.stderr()
        assert "Traceback" not in log
        assert "-> unhealthy" not in log
        noted = [line for line in log.splitlines() if "max_connections" in line and
                 ("refusing more" in line or "closing idle" in line)]
        assert 1 <= len(noted) <= 4 * workers, noted
        # the cap, unset, is what the limit holds: with the admin API's in one process
        cap = 40 if workers == 1 else 61
        assert f"listener web: max_connections {cap} (what the file descriptor limit, " \
               f"{NOFILE}, holds)" in log
    finally:
        daemon.stop()
        backend.stop()
