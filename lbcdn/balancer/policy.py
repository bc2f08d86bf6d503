"""What every pick policy offers, and building one from a pool's `balance:` config.

A policy is built from the targets that may take traffic now (the pool rebuilds it when that set
or a weight changes: health transitions, slow-start steps, registrations), then asked for picks.

Rules for every policy:
- `pick(key)` is O(1) or O(log n) in the number of targets; `key` is the request's hash key
  (consistent_hash uses it, the others ignore it); None means nothing can be picked.
- `started(t)` / `finished(t)` are called when a request to `t` begins and ends, if the
  policy's `counts_requests` is true: only least-outstanding-requests keeps state from them,
  the others read `t.in_flight` or nothing (and are spared two calls a request).
- Weight 0 targets are never picked. `weights` overrides the targets' own weights.
- Randomness comes from the injected `rng`, so tests are repeatable.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, TypeVar

from lbcdn.balancer.base import Policy
from lbcdn.balancer.consistent_hash import ConsistentHash
from lbcdn.balancer.least_outstanding import least_outstanding
from lbcdn.balancer.random_choice import RandomTwoChoices, WeightedRandom
from lbcdn.balancer.round_robin import RoundRobin
from lbcdn.health.config import BalanceConfig


class TargetView(Protocol):
    """What policies read from a target."""
    @property
    def key(self) -> str: ...
    @property
    def weight(self) -> int: ...
    @property
    def in_flight(self) -> int: ...


T = TypeVar("T", bound=TargetView)


def build_policy(config: BalanceConfig, targets: Sequence[T], *,
                 weights: Sequence[float] | None = None,
                 rng: random.Random | None = None,
                 after: Policy[T] | None = None) -> Policy[T]:
    """The policy `config.algorithm` names, over `targets`; `after` is the one it replaces
    (round robin goes on from where that one was)."""
    rng = rng or random.Random()
    algorithm = config.algorithm
    if algorithm in ("round_robin", "weighted_round_robin"):
        return RoundRobin(targets, weights,
                          after=after if isinstance(after, RoundRobin) else None)
    if algorithm == "least_outstanding_requests":
        return least_outstanding(targets, weights)
    if algorithm == "weighted_random":
        return WeightedRandom(targets, weights, rng=rng)
    if algorithm == "random_two_choices":
        return RandomTwoChoices(targets, weights, rng=rng)
    if algorithm == "consistent_hash":
        return ConsistentHash(targets, weights, vnodes=config.vnodes)
    raise ValueError(f"unknown algorithm {algorithm!r}")
