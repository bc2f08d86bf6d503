"""Benchmark (not a test): microseconds per pick for every policy at 10 and 10,000 targets.

`python -m lbcdn.balancer.bench [--picks 200000]` builds each policy over targets with mixed
weights (1-3) and prints the mean time of a pick (plus started/finished for least outstanding,
since the data plane calls them with every request) and the time to build the policy. A pick
must not slow down measurably from 10 to 10,000 targets (O(1) or O(log n)).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from lbcdn.balancer.consistent_hash import ConsistentHash
from lbcdn.balancer.least_outstanding import LeastOutstanding
from lbcdn.balancer.random_choice import RandomTwoChoices, WeightedRandom
from lbcdn.balancer.round_robin import RoundRobin
from lbcdn.balancer.sticky import StickySessions, target_token


@dataclass(eq=False)
class _Target:
    key: str
    weight: int
    in_flight: int = 0


def _time(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--picks", type=int, default=200000)
    args = ap.parse_args()
    n = args.picks
    keys = [f"client-{i}".encode() for i in range(4096)]
    print(f"{'policy':30} {'targets':>8} {'us/pick':>8} {'build ms':>9}")
    for size in (10, 10000):
        rng = random.Random(1)
        ts = [_Target(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}:80", 1 + i % 3)
              for i in range(size)]
        uniform = [_Target(t.key, 1) for t in ts]
        builders: list[tuple[str, Callable[[], object], str]] = [
            ("round_robin (equal weights)", lambda: RoundRobin(uniform), "pick"),
            ("round_robin (weighted)", lambda: RoundRobin(ts), "pick"),
            ("least_outstanding (equal)", lambda: LeastOutstanding(uniform), "lor"),
            ("least_outstanding (weighted)", lambda: LeastOutstanding(ts), "lor"),
            ("weighted_random", lambda: WeightedRandom(ts, rng=rng), "pick"),
            ("random_two_choices", lambda: RandomTwoChoices(ts, rng=rng), "pick"),
            ("consistent_hash", lambda: ConsistentHash(ts), "hash"),
            ("sticky (valid cookie)", lambda: StickySessions(ts, RoundRobin(ts),
                                                             cookie_name="LB",
                                                             duration_s=60), "sticky"),
        ]
        for name, build, how in builders:
            t0 = time.perf_counter()
            policy = build()
            build_ms = (time.perf_counter() - t0) * 1000
            if how == "lor":
                lor: LeastOutstanding[_Target] = policy  # type: ignore[assignment]

                def one() -> None:
                    t = lor.pick()
                    assert t is not None
                    lor.started(t)
                    lor.finished(t)
                us = _time(one, n)
            elif how == "hash":
                ch: ConsistentHash[_Target] = policy  # type: ignore[assignment]
                it = iter(range(1 << 62))
                us = _time(lambda: ch.pick(keys[next(it) & 4095]), n)
            elif how == "sticky":
                st: StickySessions[_Target] = policy  # type: ignore[assignment]
                cookie = target_token(ts[size // 2].key)
                us = _time(lambda: st.pick(cookie), n)
            else:
                pick = policy.pick  # type: ignore[attr-defined]
                us = _time(pick, n)
            print(f"{name:30} {size:>8} {us:>8.2f} {build_ms:>9.1f}")


if __name__ == "__main__":
    main()
