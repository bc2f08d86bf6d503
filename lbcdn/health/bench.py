"""Benchmark (not a test): the CPU cost of checking many targets.

`python -m lbcdn.health.bench [--targets 1000] [--interval 1] [--seconds 10]` starts a small
HTTP server in a child process on 127.0.0.1 (its CPU is not counted), registers N targets on it
(spread over a few ports) with a 1 s interval, runs the checker under uvloop, and prints the
checker process's CPU time as a share of one core, checks per second and failures. Issue 3's
target: 1,000 targets at 1 s cost < 10% of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import resource
import time
from collections import Counter
from typing import cast

from lbcdn.health.checker import Check, HealthChecker
from lbcdn.health.prober import ProbeResult, ProbeSpec
from lbcdn.health.state import Transition

_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


_KEEP = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class _Server(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            if b"Connection: close" in data:
                self.transport.write(_ANSWER)
                self.transport.close()
            else:
                self.transport.write(_KEEP)


def _serve(ports: list[int], ready: "multiprocessing.queues.Queue[list[int]]") -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(_Server, "127.0.0.1", p, backlog=4096)
                   for p in ports]
        ready.put([s.sockets[0].getsockname()[1] for s in servers])
        await asyncio.sleep(3600)

    uvloop.run(main())


def _cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


async def _run(ports: list[int], targets: int, interval: float, seconds: float,
               keep_alive: bool) -> None:
    outcomes: Counter[str] = Counter()

    def on_result(key: int, result: ProbeResult, tr: Transition | None) -> None:
        outcomes[str(result.outcome)] += 1

    checker: HealthChecker[int] = HealthChecker(on_result=on_result, rng=random.Random(1))
    for i in range(targets):
        spec = ProbeSpec("http", "127.0.0.1", ports[i % len(ports)], timeout_s=interval * 0.9,
                         keep_alive=keep_alive)
        checker.add_target(i, Check(spec, interval_s=interval, jitter=0.1))
    await checker.start()
    await asyncio.sleep(2 * interval)  # warm-up: first checks spread, caches warm
    outcomes.clear()
    cpu0, wall0 = _cpu(), time.monotonic()
    await asyncio.sleep(seconds)
    (user1, sys1), wall = _cpu(), time.monotonic() - wall0
    user, system = user1 - cpu0[0], sys1 - cpu0[1]
    cpu = user + system
    await checker.stop()
    total = sum(outcomes.values())
    print(f"targets={targets} interval={interval:g}s window={wall:.1f}s "
          f"{'one kept connection per target' if keep_alive else 'a new connection per check'}")
    print(f"checks/s={total / wall:.0f} outcomes={dict(outcomes)}")
    print(f"checker CPU: {100 * cpu / wall:.1f}% of one core "
          f"({1e6 * cpu / max(total, 1):.0f} us per check: {1e6 * user / max(total, 1):.0f} "
          f"user, {1e6 * system / max(total, 1):.0f} system)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=1000)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--ports", type=int, default=4)
    ap.add_argument("--keep-alive", action="store_true",
                    help="reuse one connection per target between checks")
    args = ap.parse_args()
    ctx = multiprocessing.get_context("spawn")
    ready: multiprocessing.queues.Queue[list[int]] = ctx.Queue()
    server = ctx.Process(target=_serve, args=([0] * args.ports, ready), daemon=True)
    server.start()
    try:
        ports = ready.get(timeout=10)
        import uvloop
        uvloop.run(_run(ports, args.targets, args.interval, args.seconds, args.keep_alive))
    finally:
        server.terminate()
        server.join(5)


if __name__ == "__main__":
    main()
