"""Pick policies with seeded rngs: shares, load awareness, O(log n) structures, weight 0,
fractional weights, and build_policy."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from lbcdn.balancer.least_outstanding import least_outstanding
from lbcdn.balancer.policy import build_policy
from lbcdn.balancer.random_choice import RandomTwoChoices, WeightedRandom
from lbcdn.balancer.round_robin import SMOOTH_MAX, RoundRobin
from lbcdn.health.config import BalanceConfig


@dataclass(eq=False)
class T:
    key: str
    weight: int = 1
    in_flight: int = 0


def targets(*weights: int) -> list[T]:
    return [T(f"t{i}", w) for i, w in enumerate(weights)]


# -- round robin on large pools (EDF) --------------------------------------------------------

def test_large_unequal_pool_uses_heap_and_keeps_exact_shares() -> None:
    ts = [T(f"t{i}", 1 + i % 3) for i in range(SMOOTH_MAX + 36)]
    rr = RoundRobin(ts)
    total = sum(t.weight for t in ts)
    for _ in range(3):
        counts = Counter(rr.pick().key for _ in range(total))  # type: ignore[union-attr]
        assert counts == {t.key: t.weight for t in ts}


def test_fractional_weights_override() -> None:
    ts = targets(1, 1)
    rr = RoundRobin(ts, weights=[1.0, 0.25])
    counts = Counter(rr.pick().key for _ in range(500))  # type: ignore[union-attr]
    assert counts == {"t0": 400, "t1": 100}


# -- least outstanding -------------------------------------------------------------------------

@pytest.mark.parametrize("w", [1, 4])
def test_least_outstanding_picks_the_least_loaded_and_rotates_ties(w: int) -> None:
    ts = targets(w, w, w)
    lor = least_outstanding(ts)
    assert [lor.pick().key for _ in range(3)] == ["t0", "t1", "t2"]  # type: ignore[union-attr]
    lor.started(ts[0])
    lor.started(ts[1])
    assert lor.pick() is ts[2]
    lor.started(ts[2])
    lor.started(ts[2])
    assert lor.pick() in (ts[0], ts[1])
    lor.finished(ts[2])
    lor.finished(ts[2])
    assert lor.pick() is ts[2]
    assert lor.outstanding(ts[0]) == 1


@pytest.mark.parametrize("weights", [[1, 2, 5], [1], [3]])
def test_least_outstanding_is_exact_against_brute_force(weights: list[int]) -> None:
    rng = random.Random(5)
    ts = [T(f"t{i}", rng.choice(weights)) for i in range(200)]
    lor = least_outstanding(ts)
    count = {t.key: 0 for t in ts}
    for _ in range(5000):
        if rng.random() < 0.6:
            t = lor.pick()
            assert t is not None
            best = min(c / u.weight for u, c in ((u, count[u.key]) for u in ts))
            assert count[t.key] / t.weight == best
            lor.started(t)
            count[t.key] += 1
        else:
            busy = [u for u in ts if count[u.key]]
            if busy:
                u = rng.choice(busy)
                lor.finished(u)
                count[u.key] -= 1


def test_least_outstanding_heap_rotates_ties_too() -> None:
    ts = targets(2, 1, 1)
    lor = least_outstanding(ts)
    assert [lor.pick().key for _ in range(3)] == ["t0", "t1", "t2"]  # type: ignore[union-attr]
    lor.started(ts[0])
    lor.started(ts[0])   # 2 per weight 2 = 1.0
    lor.started(ts[1])   # 1.0
    assert lor.pick() is ts[2]


def test_least_outstanding_starts_from_in_flight_and_skips_weight_zero() -> None:
    ts = targets(1, 1, 0)
    ts[0].in_flight = 3
    lor = least_outstanding(ts)
    assert [lor.pick() for _ in range(4)] == [ts[1]] * 4  # never the busy one, never weight 0
    lor.finished(ts[2])  # not in the policy: ignored
    assert least_outstanding([]).pick() is None


# -- random ------------------------------------------------------------------------------------

def test_weighted_random_shares() -> None:
    wr = WeightedRandom(targets(1, 3, 0, 6), rng=random.Random(1))
    counts = Counter(wr.pick().key for _ in range(20000))  # type: ignore[union-attr]
    assert "t2" not in counts
    assert abs(counts["t0"] / 20000 - 0.1) < 0.01
    assert abs(counts["t1"] / 20000 - 0.3) < 0.015
    assert abs(counts["t3"] / 20000 - 0.6) < 0.015
    assert WeightedRandom([], rng=random.Random(1)).pick() is None


def test_seeded_rng_repeats() -> None:
    a = WeightedRandom(targets(1, 2, 3), rng=random.Random(9))
    b = WeightedRandom(targets(1, 2, 3), rng=random.Random(9))
    assert [a.pick().key for _ in range(50)] == [b.pick().key for _ in range(50)]  # type: ignore[union-attr]


def test_two_choices_prefers_less_loaded_and_never_the_busiest() -> None:
    ts = targets(1, 1, 1, 1)
    for i, t in enumerate(ts):
        t.in_flight = i * 10
    p2c = RandomTwoChoices(ts, rng=random.Random(3))
    counts = Counter(p2c.pick().key for _ in range(4000))  # type: ignore[union-attr]
    assert "t3" not in counts  # it always loses its duel
    assert counts["t0"] > counts["t1"] > counts["t2"]
    assert abs(counts["t0"] / 4000 - 0.5) < 0.04  # wins every duel it is drawn into: 3/6


def test_two_choices_load_per_weight() -> None:
    ts = targets(4, 1)
    ts[0].in_flight, ts[1].in_flight = 3, 1   # 0.75 per weight vs 1.0
    p2c = RandomTwoChoices(ts, rng=random.Random(3))
    assert {p2c.pick().key for _ in range(50)} == {"t0"}  # type: ignore[union-attr]
    assert RandomTwoChoices(targets(2), rng=random.Random(1)).pick() is not None


@pytest.mark.parametrize("algorithm, cls", [
    ("round_robin", "RoundRobin"), ("weighted_round_robin", "RoundRobin"),
    ("least_outstanding_requests", "LeastOutstanding"), ("weighted_random", "WeightedRandom"),
    ("random_two_choices", "RandomTwoChoices"), ("consistent_hash", "ConsistentHash"),
])
def test_build_policy(algorithm: str, cls: str) -> None:
    ts = targets(1, 2)
    policy = build_policy(BalanceConfig(algorithm=algorithm), ts,  # type: ignore[arg-type]
                          rng=random.Random(1))
    assert cls in {c.__name__ for c in type(policy).__mro__}
    picked = policy.pick(b"k")
    assert picked in ts
    policy.started(picked)
    policy.finished(picked)
    assert build_policy(BalanceConfig(algorithm=algorithm), [],  # type: ignore[arg-type]
                        rng=random.Random(1)).pick(b"k") is None
