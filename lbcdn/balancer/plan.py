"""Which targets a pool balances over now, and with which weights (pure).

Job: the one place where health states (fail open), outlier ejections and slow start meet, so
the pool runtime only has to call `plan(...)` when something changed (a health transition, an
ejection or its end, a registration) or when `refresh_at` comes (a slow-start step), and build
its policy from the result: `build_policy(cfg.balance, p.targets, weights=p.weights)`.

Rules: targets come from `routable` (serving and not ejected; else serving; else every
registered one when failing open; else none: 503). Slow start ramps healthy targets only, not
when failing open, and not for consistent_hash (every step would move keys). A target whose
checks are disabled (`unavailable`) counts as long healthy: it anchors, it never ramps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from lbcdn.balancer.slow_start import slow_start_ends, slow_start_weights, step_s
from lbcdn.health.state import State, TargetHealth, routable


class Weighted(Protocol):
    @property
    def weight(self) -> int: ...


T = TypeVar("T", bound=Weighted)


@dataclass(frozen=True)
class Plan(Generic[T]):
    targets: tuple[T, ...]
    weights: tuple[float, ...]
    failed_open: bool
    refresh_at: float | None  # plan again then (a slow-start step); None: only on a change


def plan(targets: Sequence[T], *, health_of: Callable[[T], TargetHealth], now: float,
         fail_open: bool = True, slow_start_s: float = 0.0,
         ejected: Callable[[T], bool] | None = None, ramp: bool = True) -> Plan[T]:
    """`ramp=False` turns slow start off (consistent_hash)."""
    routing = routable(targets, health_of, fail_open=fail_open, ejected=ejected)
    chosen = routing.targets
    weights = [float(t.weight) for t in chosen]
    if not ramp or slow_start_s <= 0 or routing.failed_open or not chosen:
        return Plan(chosen, tuple(weights), routing.failed_open, None)
    since: list[float | None] = []
    for t in chosen:
        h = health_of(t)
        since.append(h.since if h.state is State.HEALTHY else float("-inf"))
    ramped = slow_start_weights(weights, since, now, slow_start_s)
    ends = slow_start_ends(since, now, slow_start_s)
    refresh = None if ends is None or ramped == weights else min(ends, now + step_s(slow_start_s))
    return Plan(chosen, tuple(ramped), False, refresh)
