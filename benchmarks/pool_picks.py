"""Microseconds per pick for every balancing policy at 10 and 10,000 targets (no sockets).

    python benchmarks/pool_picks.py [--picks 100000] [--json]

Builds each policy of lbcdn.balancer over targets with mixed weights (1-3; equal weights too
for round robin and least outstanding) and times a pick in a tight loop in this process. For
least outstanding a pick is timed with its started/finished, since the data plane calls them
with every request; consistent_hash hashes 4,096 distinct keys in turn; sticky is a pick with a
valid cookie. Also prints the time to build each policy (done on every target-set change).
Issue 3: a pick is O(1) or O(log n), so 10,000 targets must not slow the hot path measurably.
Run by scenario_pools.py (pinned with taskset), or alone.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lbcdn.balancer.consistent_hash import ConsistentHash  # noqa: E402
from lbcdn.balancer.least_outstanding import LeastOutstanding, least_outstanding  # noqa: E402
from lbcdn.balancer.random_choice import RandomTwoChoices, WeightedRandom  # noqa: E402
from lbcdn.balancer.round_robin import RoundRobin  # noqa: E402
from lbcdn.balancer.sticky import StickySessions, target_token  # noqa: E402

SIZES = (10, 10_000)


@dataclass(eq=False)
class _Target:
    key: str
    weight: int
    in_flight: int = 0


@dataclass(frozen=True)
class PickCost:
    policy: str
    targets: int
    us_per_pick: float
    build_ms: float


def _time(fn: Callable[[], object], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def _timed_build(build: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    built = build()
    return built, (time.perf_counter() - t0) * 1000


def measure(size: int, picks: int) -> list[PickCost]:
    """Every policy over `size` targets: mean µs per pick over `picks` picks."""
    rng = random.Random(1)
    ts = [_Target(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}:80", 1 + i % 3) for i in range(size)]
    uniform = [_Target(t.key, 1) for t in ts]
    keys = [f"client-{i}".encode() for i in range(4096)]
    out: list[PickCost] = []

    def add(name: str, build_ms: float, one: Callable[[], object]) -> None:
        out.append(PickCost(name, size, _time(one, picks), build_ms))

    for label, group in (("equal", uniform), ("weighted", ts)):
        rr, ms = _timed_build(lambda: RoundRobin(group))
        assert isinstance(rr, RoundRobin)
        add(f"round_robin ({label})", ms, rr.pick)
    for label, group in (("equal", uniform), ("weighted", ts)):
        built, ms = _timed_build(lambda: least_outstanding(group))
        assert isinstance(built, LeastOutstanding)
        lor: LeastOutstanding[_Target] = built

        def pick_lor() -> None:
            t = lor.pick()
            assert t is not None
            lor.started(t)
            lor.finished(t)
        add(f"least_outstanding ({label})", ms, pick_lor)
    wr, ms = _timed_build(lambda: WeightedRandom(ts, rng=rng))
    assert isinstance(wr, WeightedRandom)
    add("weighted_random", ms, wr.pick)
    p2, ms = _timed_build(lambda: RandomTwoChoices(ts, rng=rng))
    assert isinstance(p2, RandomTwoChoices)
    add("random_two_choices", ms, p2.pick)
    built_ch, ms = _timed_build(lambda: ConsistentHash(ts))
    assert isinstance(built_ch, ConsistentHash)
    ch: ConsistentHash[_Target] = built_ch
    counter = iter(range(1 << 62))
    add("consistent_hash", ms, lambda: ch.pick(keys[next(counter) & 4095]))
    built_st, ms = _timed_build(lambda: StickySessions(ts, RoundRobin(ts), cookie_name="LB",
                                                       duration_s=60))
    assert isinstance(built_st, StickySessions)
    st: StickySessions[_Target] = built_st
    cookie = target_token(ts[size // 2].key)
    add("sticky (valid cookie)", ms, lambda: st.pick(cookie))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--picks", type=int, default=100_000, help="picks timed per policy and size")
    ap.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    args = ap.parse_args()
    rows = [c for size in SIZES for c in measure(size, args.picks)]
    if args.json:
        print(json.dumps([c.__dict__ for c in rows]))
        return
    print(f"{'policy':30} {'targets':>8} {'us/pick':>8} {'build ms':>9}")
    for c in rows:
        print(f"{c.policy:30} {c.targets:>8} {c.us_per_pick:>8.2f} {c.build_ms:>9.1f}")


if __name__ == "__main__":
    main()
