"""A bounded load generator for the fault tests: a few keep-alive client connections on
127.0.0.1 sending requests back to back until a count or a deadline, counting every answer.

A client error is anything but a 2xx: an error status, or a connection that broke or timed out
(the connection is then opened again, so one failure costs one request, not the rest of the
run). Latencies are those of the answered requests, so a stall shows as a slow tail."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

from tests.e2e.harness import RawClient


class LoadResult:
    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.failures: Counter[str] = Counter()   # exception names: no answer at all
        self.latencies: list[float] = []
        self.bodies: Counter[bytes] = Counter()    # the demo backends' X-Backend

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + sum(self.failures.values())

    @property
    def errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300) + \
            sum(self.failures.values())

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]

    def __repr__(self) -> str:
        return (f"LoadResult(sent={self.sent}, errors={self.errors}, "
                f"statuses={dict(self.statuses)}, failures={dict(self.failures)}, "
                f"p50={self.percentile(50):.4f}s, p99={self.percentile(99):.4f}s, "
                f"max={max(self.latencies, default=0.0):.4f}s, "
                f"backends={dict(self.bodies)})")


async def run_load(port: int, *, method: str = "GET", path: str = "/", body: bytes = b"",
                   connections: int = 8, count: int | None = None,
                   duration_s: float | None = None, timeout_s: float = 10.0) -> LoadResult:
    """Send `count` requests in all, or as many as fit in `duration_s` (one of them is needed),
    over `connections` concurrent keep-alive connections; each request waits at most
    `timeout_s` for its answer."""
    assert count is not None or duration_s is not None
    result = LoadResult()
    deadline = None if duration_s is None else time.monotonic() + duration_s
    left = [count if count is not None else -1]

    def more() -> bool:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        if left[0] == 0:
            return False
        left[0] -= 1
        return True

    async def one_connection() -> None:
        client: RawClient | None = None
        try:
            while more():
                started = time.monotonic()
                try:
                    if client is None:
                        client = await RawClient.open(port, timeout_s=timeout_s)
                    resp = await client.request(method, path, body=body, timeout_s=timeout_s)
                except (OSError, EOFError, TimeoutError, asyncio.IncompleteReadError,
                        ValueError) as exc:
                    result.failures[type(exc).__name__] += 1
                    if client is not None:
                        await client.close()
                        client = None
                    continue
                result.latencies.append(time.monotonic() - started)
                result.statuses[resp.status] += 1
                result.bodies[(resp.header("X-Backend") or "-").encode()] += 1
                if (resp.header("Connection") or "").lower() == "close":
                    await client.close()
                    client = None
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return result
