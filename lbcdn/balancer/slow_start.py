"""Slow start: a new or recovered target's weight ramps up linearly over a window.

Pure: given each target's weight and when it became healthy, returns the weights to balance
with now. A target is in slow start while less than `window_s` has passed since it became
healthy; its weight is scaled by the elapsed share of the window, never below `min_fraction`
(Envoy's min_weight_percent, so a target just back still gets some traffic). As ALB and Envoy
do, nobody ramps when no healthy target is out of slow start: with all targets new, holding all
back would only hold back traffic. The pool rebuilds its policy every `step_s(window)` while a
target ramps (and not for consistent_hash, whose keys would move at every step).
"""

from __future__ import annotations

from collections.abc import Sequence


def in_slow_start(healthy_since: float | None, now: float, window_s: float) -> bool:
    return window_s > 0 and healthy_since is not None and now - healthy_since < window_s


def slow_start_weights(weights: Sequence[float], healthy_since: Sequence[float | None],
                       now: float, window_s: float, min_fraction: float = 0.1) -> list[float]:
    """Effective weights; `healthy_since[i]` None means target i is not healthy (it keeps its
    weight: the caller leaves unhealthy targets out of the pick anyway)."""
    ramping = [in_slow_start(s, now, window_s) for s in healthy_since]
    anchor = any(s is not None and not r for s, r in zip(healthy_since, ramping))
    if not anchor or not any(ramping):
        return [float(w) for w in weights]
    out = []
    for w, s, r in zip(weights, healthy_since, ramping):
        if r:
            assert s is not None
            out.append(w * max(min_fraction, (now - s) / window_s))
        else:
            out.append(float(w))
    return out


def slow_start_ends(healthy_since: Sequence[float | None], now: float,
                    window_s: float) -> float | None:
    """When the last ramp in progress ends, or None when no target ramps."""
    ends = [s + window_s for s in healthy_since
            if s is not None and in_slow_start(s, now, window_s)]
    return max(ends) if ends else None


def step_s(window_s: float) -> float:
    """How often to refresh ramped weights: 20 steps a window, at most once a second."""
    return min(1.0, window_s / 20)
