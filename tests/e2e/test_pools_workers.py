"""Pools with `--workers 2`: health checks run in the control process and their states reach
every worker; a deregistered target becomes unused once every worker reports it drained, and
what is still in flight when its deregistration delay ends is cut (in one process as well)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import DaemonProcess, listener_port, raw_request, until
from tests.e2e.pools_backend import PoolBackend, pool_backends
from tests.e2e.test_pools import api, check_pool_metrics_from_start, check_runtime_pools, get, \
    key, pool_config, scrape, state_is, targets


@contextlib.asynccontextmanager
async def two_workers(tmp_path: Path, a: PoolBackend, b: PoolBackend
                      ) -> AsyncIterator[dict[str, Any]]:
    """`lbcdn serve --workers 2` over a pool of `a`, healthy, and `b`, failing its checks."""
    b.health_status = 500
    cfg = pool_config(a, b, health={"interval_s": 0.1, "timeout_s": 0.05})
    daemon = await asyncio.to_thread(DaemonProcess, cfg, tmp_path, ["--workers", "2"])
    try:
        await state_is(cfg, a, "healthy")
        await state_is(cfg, b, "unhealthy")
        yield cfg
    finally:
        await asyncio.to_thread(daemon.stop)


@pytest.mark.slow
async def test_health_states_and_draining_reach_every_worker(tmp_path: Path) -> None:
    async with pool_backends("a", "b", "c") as (a, b, c), two_workers(tmp_path, a, b) as cfg:
        for _ in range(10):  # new connections: the kernel spreads them over both workers
            assert (await get(listener_port(cfg))).body == b"a"
        status, _ = await api(cfg, "POST", "/api/pools/app/targets", {"address": key(c)})
        assert status == 201
        await state_is(cfg, c, "healthy")
        await asyncio.sleep(0.3)  # the snapshot is on its way to the workers
        status, _ = await api(cfg, "DELETE", f"/api/pools/app/targets/{key(a)}")
        assert status == 202
        started = time.monotonic()
        await state_is(cfg, a, "unused")  # both workers drained, long before the 5 s delay
        assert time.monotonic() - started < 3
        for _ in range(10):
            assert (await get(listener_port(cfg))).body == b"c"
        async def counted() -> bool:  # workers send their numbers every second
            return (await targets(cfg))[key(c)]["requests"] >= 10
        await until(counted)


@pytest.mark.slow
async def test_runtime_adds_up_the_workers_numbers(tmp_path: Path) -> None:
    async with pool_backends("a", "b") as (a, b), two_workers(tmp_path, a, b) as cfg:
        await asyncio.sleep(0.3)  # the snapshot is on its way to the workers
        for _ in range(12):  # new connections: the kernel spreads them over both workers
            assert (await get(listener_port(cfg))).body == b"a"

        async def counted() -> bool:  # workers send their numbers every second
            return (await targets(cfg))[key(a)]["requests"] == 12
        await until(counted)
        row = (await targets(cfg))[key(a)]
        assert row["latency_s"] is not None and row["open_connections"] >= 1
        assert (row["errors"], row["error_rate"]) == (0, 0.0)
        status, view = await api(cfg, "GET", "/api/runtime")
        assert status == 200
        assert len(view["workers"]) == 2
        check_runtime_pools(view["pools"], a, b, 12)


@pytest.mark.slow
async def test_metrics_unavailable_targets_and_zero_counters_with_workers(tmp_path: Path
                                                                          ) -> None:
    async with pool_backends("a") as (a,):
        cfg = pool_config(a, health={"enabled": False})
        daemon = await asyncio.to_thread(DaemonProcess, cfg, tmp_path, ["--workers", "2"])
        try:
            check_pool_metrics_from_start(await scrape(cfg), key(a))
        finally:
            await asyncio.to_thread(daemon.stop)


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_deregistration_delay_cuts_what_is_still_in_flight(tmp_path: Path,
                                                                 workers: str) -> None:
    """ALB's rule: in-flight requests finish for at most the delay, then their connections
    close: a 502 before the response head, a cut response after it."""
    async with pool_backends("a") as (a,):
        a.slow_s = 30.0
        log_path = tmp_path / "access.log"
        cfg = pool_config(a, health={"enabled": False}, deregistration_delay_s=1)
        cfg["logging"] = {"level": "warning",
                          "access_log": {"enabled": True, "path": str(log_path)}}
        daemon = await asyncio.to_thread(DaemonProcess, cfg, tmp_path, ["--workers", workers])
        try:
            port = listener_port(cfg)

            def request(path: str) -> asyncio.Future[Any]:
                return asyncio.ensure_future(raw_request(
                    port, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" %
                    path.encode(), read_timeout_s=20))
            before_head, mid_body = request("/slow"), request("/stall")
            await until(lambda: a.hits["/slow"] == 1 and a.hits["/stall"] == 1)
            started = time.monotonic()
            status, _ = await api(cfg, "DELETE", f"/api/pools/app/targets/{key(a)}")
            assert status == 202
            slow, stall = await before_head, await mid_body
            cut_at = time.monotonic() - started
            assert 0.8 <= cut_at < 5, cut_at  # at the delay, not after the backend's 30 s
            assert slow.closed and stall.closed, (slow, stall)
            assert slow.data.startswith(b"HTTP/1.1 502 "), slow
            assert b"the target was deregistered" in slow.data
            head, _, body = stall.data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 2" in head, stall
            assert body == b"a"  # half of it: the rest never came
            await state_is(cfg, a, "unused")
        finally:
            await asyncio.to_thread(daemon.stop)
        lines = {line["path"]: line for line in map(json.loads, log_path.read_text().splitlines())}
        assert lines["/slow"]["status"] == 502 and lines["/slow"]["target"] == key(a)
        assert lines["/stall"]["status"] == 200 and lines["/stall"]["target"] == key(a)
