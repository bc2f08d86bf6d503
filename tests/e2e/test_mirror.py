"""Request mirroring through real sockets: a route's `mirror` copies about `percent` of its
requests (head and body) to another pool, and a slow or dead mirror pool changes nothing for the
real requests (their latency is measured); drops over `max_in_flight` are counted."""

from __future__ import annotations

import asyncio
import contextlib
import re
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.harness import HOST, DaemonProcess, RawClient, admin_port, free_port, \
    listener_port, proxy_config, raw_backend, read_request, until


class Seen:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []


@contextlib.asynccontextmanager
async def backend(seen: Seen, delay_s: float = 0.0) -> AsyncIterator[int]:
    """Answers 200 `real` (after `delay_s`), recording what it got."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line, headers, body = await read_request(reader, 30)
            seen.requests.append((line, {n.lower(): v for n, v in headers}, body))
            if delay_s:
                await asyncio.sleep(delay_s)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
            await writer.drain()
    async with raw_backend(handler) as port:
        yield port


def mirror_config(real: int, mirror: int, **mirror_opts: Any) -> dict[str, Any]:
    cfg = proxy_config(real)
    cfg["pools"]["shadow"] = {"targets": [f"{HOST}:{mirror}"], "health": {"enabled": False},
                              "connect_timeout_s": 1, "response_timeout_s": 5}
    cfg["routes"] = [{"name": "app", "forward": "app",
                      "mirror": {"pool": "shadow", **mirror_opts}}]
    return cfg


async def timed_requests(port: int, n: int, body: bytes = b"") -> list[float]:
    """`n` sequential requests on one keep-alive connection; each one's latency."""
    times = []
    c = await RawClient.open(port)
    try:
        for i in range(n):
            started = time.monotonic()
            r = await c.request("POST" if body else "GET", f"/m/{i}", body=body)
            times.append(time.monotonic() - started)
            assert r.status == 200 and r.body == b"real", r
    finally:
        await c.close()
    return times


async def mirror_counts(cfg: dict[str, Any]) -> dict[str, float]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{HOST}:{admin_port(cfg)}/metrics") as r:
            text = await r.text()
    return {m[1]: float(m[2]) for m in re.finditer(
        r'lbcdn_mirror_requests_total\{outcome="(\w+)",pool="shadow"\} (\S+)', text)}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
async def test_a_share_of_requests_with_their_bodies_is_copied(tmp_path: Path,
                                                                workers: int) -> None:
    real, shadow = Seen(), Seen()
    async with backend(real) as r, backend(shadow) as m:
        cfg = mirror_config(r, m, percent=30)
        d = DaemonProcess(cfg, tmp_path, ["--workers", str(workers)])
        try:
            await timed_requests(listener_port(cfg), 300, body=b"payload")
            await until(lambda: len(shadow.requests) >= 60, 10, what="copies arrive")
            await asyncio.sleep(0.5)
            assert len(real.requests) == 300
            # 30% of 300: 90, binomial sd ~8; the bounds are 3.5 sd
            assert 60 <= len(shadow.requests) <= 120, len(shadow.requests)
            line, headers, body = shadow.requests[0]
            assert line.startswith("POST /m/") and body == b"payload"
            assert headers["x-forwarded-for"] == HOST and headers["connection"] == "close"
            counts = await mirror_counts(cfg)
            assert counts.get("sent") == len(shadow.requests), counts
        finally:
            d.stop()


@pytest.mark.slow
async def test_a_slow_or_dead_mirror_does_not_slow_the_real_requests(tmp_path: Path) -> None:
    real, slow = Seen(), Seen()
    n = 60
    async with backend(real) as r, backend(slow, delay_s=3) as m:
        baseline_cfg = proxy_config(r)
        d = DaemonProcess(baseline_cfg, tmp_path)
        try:
            baseline = await timed_requests(listener_port(baseline_cfg), n)
        finally:
            d.stop()
        runs = {}
        for what, target in (("slow", m), ("dead", free_port())):
            cfg = mirror_config(r, target, max_in_flight=10)
            d = DaemonProcess(cfg, tmp_path)
            try:
                runs[what] = await timed_requests(listener_port(cfg), n, body=b"x" * 1000)
                counts = await mirror_counts(cfg)
            finally:
                d.stop()
            if what == "slow":
                # 10 copies wait on the slow mirror (the cap); the rest are dropped, counted
                assert len(slow.requests) == 10, len(slow.requests)
                assert counts.get("dropped", 0) >= n - 10 - 2, counts
            else:
                assert counts.get("failed", 0) + counts.get("dropped", 0) == n, counts
    base = statistics.median(baseline)
    for what, times in runs.items():
        med = statistics.median(times)
        # the mirror answers after 3 s or never: waiting on it would show in every request
        assert med < base + 0.05 and max(times) < 1.0, (what, base, med, max(times))
