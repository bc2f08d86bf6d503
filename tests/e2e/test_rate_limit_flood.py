"""A rate limit of 100 req/s with a burst of 20 under a 1,000 req/s flood lets through 100 +- 5
a second, in one process and with `--workers 2` (the workers share the buckets), and the
refused requests are counted in the metrics. Bounded: 127.0.0.1 only, a few seconds."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import urllib.request
import contextlib
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    DaemonProcess, RawClient, admin_port, free_port, listener_port, proxy_config, until,
)

RATE, BURST = 100, 20
FLOOD_PER_S, SECONDS, CONNECTIONS = 1000, 4, 16


def admin_get(cfg: dict[str, Any], path: str) -> str:
    req = urllib.request.Request(f"http://127.0.0.1:{admin_port(cfg)}{path}",
                                 headers={"Authorization": "Bearer t"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(resp.read().decode())


def connections_by_pid(pids: list[int], port: int) -> dict[int, int]:
    """Established connections to `port` each process holds (/proc: socket inodes)."""
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if int(f[1].split(":")[1], 16) == port and f[3] == "01":
                established.add(f"socket:[{f[9]}]")
    out = {}
    for pid in pids:
        links = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        out[pid] = sum(1 for link in links if link in established)
    return out


async def flood(cfg: dict[str, Any]) -> list[tuple[float, int]]:
    """(send time from the start, status) of FLOOD_PER_S * SECONDS requests, paced over
    CONNECTIONS keep-alive connections, spread by the kernel over every worker."""
    def workers() -> list[dict[str, Any]]:   # none in one process
        return list(json.loads(admin_get(cfg, "/api/runtime")).get("workers", []))

    def ready() -> bool:
        try:
            return all(w["ready"] for w in workers())
        except OSError:   # the admin API is not listening yet
            return False
    await until(lambda: asyncio.to_thread(ready))
    pids = [w["pid"] for w in workers()]
    port = listener_port(cfg)
    out: list[tuple[float, int]] = []
    clients = [await RawClient.open(port) for _ in range(CONNECTIONS)]
    if len(pids) > 1:   # the test is only worth its name if every worker takes part
        spread = await asyncio.to_thread(connections_by_pid, pids, port)
        assert all(spread.values()), spread
    start = time.monotonic() + 0.1

    async def one(j: int, client: RawClient) -> None:
        for k in range(j, FLOOD_PER_S * SECONDS, CONNECTIONS):
            delay = start + k / FLOOD_PER_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.monotonic() - start
            resp = await client.request("GET", "/", host="limited.example")
            out.append((sent, resp.status))

    try:
        await asyncio.gather(*(one(j, c) for j, c in enumerate(clients)))
    finally:
        for c in clients:
            await c.close()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_flood_gets_the_rate(tmp_path: Path, workers: str) -> None:
    cfg = proxy_config(free_port(), routes=[{
        "name": "limited", "match": {"host": "limited.example"},
        "fixed_response": {"status": 200, "body": "ok"},
        "rate_limit": {"rate_per_s": RATE, "burst": BURST}}],  # the pool is never used
        admin={"token": "t"})
    daemon = await asyncio.to_thread(DaemonProcess, cfg, tmp_path, ["--workers", workers])
    try:
        answers = await flood(cfg)
        metrics = await asyncio.to_thread(admin_get, cfg, "/metrics")
    finally:
        await asyncio.to_thread(daemon.stop)
    assert {s for _, s in answers} <= {200, 429}
    last = max(t for t, _ in answers)
    assert last < SECONDS + 1, f"the flood fell behind: {last:.2f} s"
    passed = sum(1 for _, s in answers if s == 200)
    # the burst, then the rate for as long as the flood lasted
    per_s = (passed - BURST) / last
    windows = [sum(1 for t, s in answers if s == 200 and second <= t < second + 1)
               for second in range(1, SECONDS - 1)]
    assert abs(per_s - RATE) <= 5, (passed, last, windows)
    # a window is counted by the time the client sent, which a loaded machine blurs a little
    assert all(abs(w - RATE) <= 10 for w in windows), windows
    limited = re.search(r'^lbcdn_rate_limited_requests_total\{route="limited"\} (\S+)$',
                        metrics, re.M)
    assert limited is not None and float(limited.group(1)) == len(answers) - passed
