"""The pool plan: health, fail-open, ejections and slow start together, with a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from lbcdn.balancer.plan import plan
from lbcdn.health.state import Outcome, TargetHealth, Thresholds


@dataclass(eq=False)
class T:
    key: str
    weight: int = 2
    in_flight: int = 0
    health: TargetHealth = field(default_factory=lambda: TargetHealth(Thresholds(2, 1), 0.0))
    ejected: bool = False


def healthy_at(t: T, when: float) -> T:
    t.health.observe(Outcome.PASS, when)
    return t


def keys(ts: tuple[T, ...]) -> list[str]:
    return [t.key for t in ts]


def test_healthy_only_and_fail_open() -> None:
    a, b = healthy_at(T("a"), 0.0), T("b")
    p = plan([a, b], health_of=lambda t: t.health, now=1.0)
    assert keys(p.targets) == ["a"] and p.weights == (2.0,) and not p.failed_open
    a.health.observe(Outcome.TIMEOUT, 2.0)
    p = plan([a, b], health_of=lambda t: t.health, now=3.0)
    assert keys(p.targets) == ["a", "b"] and p.failed_open and p.refresh_at is None
    assert plan([a, b], health_of=lambda t: t.health, now=3.0, fail_open=False).targets == ()


def test_ejected_left_out() -> None:
    a, b = healthy_at(T("a"), 0.0), healthy_at(T("b"), 0.0)
    a.ejected = True
    p = plan([a, b], health_of=lambda t: t.health, now=1.0, ejected=lambda t: t.ejected)
    assert keys(p.targets) == ["b"]


def test_slow_start_ramps_the_newcomer_and_asks_for_refreshes() -> None:
    old, new = healthy_at(T("old"), 0.0), healthy_at(T("new"), 100.0)
    p = plan([old, new], health_of=lambda t: t.health, now=130.0, slow_start_s=60)
    assert p.weights == pytest.approx((2.0, 1.0)) and p.refresh_at == 131.0
    p = plan([old, new], health_of=lambda t: t.health, now=159.5, slow_start_s=60)
    assert p.refresh_at == 160.0
    p = plan([old, new], health_of=lambda t: t.health, now=160.0, slow_start_s=60)
    assert p.weights == (2.0, 2.0) and p.refresh_at is None


def test_no_ramp_for_all_new_checks_disabled_anchor_or_consistent_hash() -> None:
    a, b = healthy_at(T("a"), 100.0), healthy_at(T("b"), 100.0)
    p = plan([a, b], health_of=lambda t: t.health, now=110.0, slow_start_s=60)
    assert p.weights == (2.0, 2.0) and p.refresh_at is None
    off = T("off", health=TargetHealth(Thresholds(), 0.0, checks_enabled=False))
    p = plan([off, a], health_of=lambda t: t.health, now=110.0, slow_start_s=60)
    assert p.weights == pytest.approx((2.0, 2 / 6))
    p = plan([off, a], health_of=lambda t: t.health, now=110.0, slow_start_s=60, ramp=False)
    assert p.weights == (2.0, 2.0)
