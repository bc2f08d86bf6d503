"""One cache per machine (lbcdn.cache.shared) against a real `lbcdn serve`: the workers share one
store, so an origin change reaches every worker at once (no client sees old and new versions
alternate), and a worker killed with SIGKILL in the middle of a fill leaves nothing damaged
behind: the others fetch the key themselves and the store stays consistent across a restart.
One process is run too where the behaviour applies to it (the answers must be the same)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lbcdn.cache.disk import decode
from tests.e2e.cache_origin import Answer, Origin, scripted_origin
from tests.e2e.harness import HOST, DaemonProcess, RawClient, RawResponse, admin_port, \
    free_port, listener_port, until, wait_for_port
from tests.e2e.test_cache import cdn_config
from tests.e2e.test_cache_collapse import burst
from tests.e2e.test_cache_workers import fetch_many

TOKEN = "tok"
MAX_AGE_600 = [("Cache-Control", "max-age=600")]


async def serve(origin: Origin, tmp: Path, workers: int,
                storage: dict[str, Any] | None = None) -> tuple[DaemonProcess, dict[str, Any]]:
    config = cdn_config(origin.port, storage=storage,
                        admin={"address": HOST, "port": free_port(), "token": TOKEN})
    daemon = await asyncio.to_thread(DaemonProcess, config, tmp, ["--workers", str(workers)])
    await asyncio.to_thread(wait_for_port, admin_port(config))
    if workers > 1:  # the listener answers as soon as one worker does
        async def ready() -> bool:
            return all(w["ready"] for w in (await runtime(config))["workers"])
        await until(ready, 30)
    return daemon, config


async def runtime(config: dict[str, Any]) -> dict[str, Any]:
    url = f"http://{HOST}:{admin_port(config)}/api/runtime"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
        async with s.get(url) as resp:
            assert resp.status == 200
            view: dict[str, Any] = await resp.json()
            return view


def port_owner(port: int, pids: list[int]) -> int:
    """The process among `pids` holding the TCP socket whose local port is `port`."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return pid
    raise AssertionError(f"no worker holds local port {port}")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
async def test_every_worker_serves_the_refreshed_version(tmp_path: Path, workers: int) -> None:
    async with scripted_origin() as origin:
        daemon, config = await serve(origin, tmp_path, workers)
        port = listener_port(config)
        try:
            origin.set("/v", Answer(headers=[("Cache-Control", "max-age=1")], body=b"v1"))
            answers = await burst(port, "/v", 50)
            assert {(s, b) for s, b, _ in answers} == {(200, b"v1")}
            assert origin.hits["/v"] == 1
            # expired everywhere at once: one refresh machine-wide, everyone gets its answer
            origin.set("/v", Answer(headers=MAX_AGE_600, body=b"v2", delay_s=0.3))
            await asyncio.sleep(1.2)
            answers = await burst(port, "/v")
            assert {(s, b) for s, b, _ in answers} == {(200, b"v2")}
            assert origin.hits["/v"] == 2
            assert set(await fetch_many(port, 40, "/v")) == {b"v2"}
            # a refresh one worker makes while the others' copies are still fresh (a client's
            # no-cache) replaces those copies too: no alternation between v2 and v3
            origin.set("/v", Answer(headers=MAX_AGE_600, body=b"v3"))
            c = await RawClient.open(port)
            try:
                r = await c.request("GET", "/v", headers=[("Cache-Control", "no-cache")])
                assert (r.status, r.body) == (200, b"v3")
            finally:
                await c.close()
            # the client has its answer as it streams; the entry is stored (and the other
            # copies dropped) once the whole body is in: a moment later, as with nginx
            await asyncio.sleep(0.3)
            assert set(await fetch_many(port, 40, "/v")) == {b"v3"}
            assert origin.hits["/v"] == 3
            if workers > 1:  # the control process's view of the shared store
                shared = (await runtime(config))["cache"]["shared"]
                assert (shared["objects"], shared["leads"]) == (1, 0)
        finally:
            daemon.stop()


@pytest.mark.slow
async def test_a_worker_killed_mid_fill_leaves_the_store_consistent(tmp_path: Path) -> None:
    body = bytes(range(256)) * 256
    disk = tmp_path / "disk"
    async with scripted_origin() as origin:
        # the head and half the body come at once, the rest 2 s later
        origin.set("/big", Answer(headers=MAX_AGE_600, body=body, chunked=True, stall_s=2.0))
        daemon, config = await serve(origin, tmp_path, 2, {"disk_path": str(disk)})
        port = listener_port(config)
        try:
            pids = [w["pid"] for w in (await runtime(config))["workers"]]
            clients = await asyncio.gather(*(RawClient.open(port) for _ in range(20)))
            pending = asyncio.gather(*(c.request("GET", "/big", timeout_s=20) for c in clients),
                                     return_exceptions=True)
            await until(lambda: origin.hits["/big"] == 1)
            await asyncio.sleep(0.5)  # the fill holds half the body
            leader = port_owner(origin.peers[0], pids)
            os.kill(leader, signal.SIGKILL)
            killed = time.monotonic()
            results = await pending
            # released when the leader died, not after the 5 s lock timeout: the waiters'
            # own fetch took the origin's 2 s
            assert time.monotonic() - killed < 4.5
            await asyncio.gather(*(c.close() for c in clients))
            served = [r for r in results if isinstance(r, RawResponse)]
            # the killed worker's clients are cut; the other worker's waiters fetch themselves
            assert served and all((r.status, r.body) == (200, body) for r in served), \
                [r if not isinstance(r, RawResponse) else r.status for r in results]
            assert origin.hits["/big"] == 2

            async def restarted() -> bool:
                workers = (await runtime(config))["workers"]
                return all(w["ready"] for w in workers) and leader not in \
                    [w["pid"] for w in workers]
            await until(restarted)
            answers = await burst(port, "/big", 40)
            assert {(s, b) for s, b, _ in answers} == {(200, body)}
            assert origin.hits["/big"] == 2   # the restarted worker reads the shared store
        finally:
            daemon.stop()
        stored = list(disk.rglob("*.lbc"))
        assert len(stored) == 1 and decode(stored[0].read_bytes()).body == body
        assert not list((disk / "tmp").iterdir())
        # the same directory after a restart: the store is still the cache, for every worker
        daemon, config = await serve(origin, tmp_path, 2, {"disk_path": str(disk)})
        try:
            answers = await burst(listener_port(config), "/big", 40)
            assert {(s, b) for s, b, _ in answers} == {(200, body)}
            assert origin.hits["/big"] == 2
        finally:
            daemon.stop()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
async def test_one_background_refresh_machine_wide(tmp_path: Path, workers: int) -> None:
    async with scripted_origin() as origin:
        daemon, config = await serve(origin, tmp_path, workers)
        port = listener_port(config)
        try:
            swr = [("Cache-Control", "max-age=1, stale-while-revalidate=60")]
            origin.set("/s", Answer(headers=swr, body=b"v1"))
            await burst(port, "/s", 20)
            assert origin.hits["/s"] == 1
            origin.set("/s", Answer(headers=swr, body=b"v2", delay_s=0.5))
            await asyncio.sleep(1.2)
            answers = await burst(port, "/s", 100)  # all stale hits, during the refresh
            assert {(s, b) for s, b, _ in answers} == {(200, b"v1")}
            await asyncio.sleep(0.8)
            assert origin.hits["/s"] == 2
            assert set(await fetch_many(port, 20, "/s")) == {b"v2"}
        finally:
            daemon.stop()
