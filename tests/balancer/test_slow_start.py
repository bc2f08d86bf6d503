"""Slow start: a linear ramp over the window, only while another healthy target is not ramping;
and the ramp seen through a real policy's shares."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from lbcdn.balancer.round_robin import RoundRobin
from lbcdn.balancer.slow_start import (in_slow_start, slow_start_ends, slow_start_weights,
                                       step_s)


def test_linear_ramp_with_floor() -> None:
    w = [2, 2]
    since = [0.0, 100.0]  # target 1 became healthy at 100 s; window 60 s
    assert slow_start_weights(w, since, 100.0, 60) == [2.0, pytest.approx(0.2)]   # the floor
    assert slow_start_weights(w, since, 115.0, 60) == [2.0, pytest.approx(0.5)]
    assert slow_start_weights(w, since, 130.0, 60) == [2.0, pytest.approx(1.0)]
    assert slow_start_weights(w, since, 145.0, 60) == [2.0, pytest.approx(1.5)]
    assert slow_start_weights(w, since, 160.0, 60) == [2.0, 2.0]  # the window is over


def test_no_ramp_without_a_healthy_anchor() -> None:
    # both new: nobody is held back
    assert slow_start_weights([1, 1], [100.0, 100.0], 110.0, 60) == [1.0, 1.0]
    # the other one is unhealthy (None): no anchor either
    assert slow_start_weights([1, 1], [None, 100.0], 110.0, 60) == [1.0, 1.0]
    # disabled
    assert slow_start_weights([1, 1], [0.0, 100.0], 110.0, 0) == [1.0, 1.0]


def test_helpers() -> None:
    assert in_slow_start(100.0, 159.9, 60) and not in_slow_start(100.0, 160.0, 60)
    assert slow_start_ends([0.0, 100.0, 120.0], 130.0, 60) == 180.0
    assert slow_start_ends([0.0], 130.0, 60) is None
    assert step_s(900) == 1.0 and step_s(10) == 0.5


@dataclass
class T:
    key: str
    weight: int = 1
    in_flight: int = 0


def test_share_rises_linearly_through_a_policy() -> None:
    ts = [T("old"), T("new")]
    shares = []
    for now in (100.0, 110.0, 120.0, 130.0, 140.0, 150.0):
        weights = slow_start_weights([1, 1], [0.0, 100.0], now, 50)
        rr = RoundRobin(ts, weights)
        counts = Counter(rr.pick().key for _ in range(1000))  # type: ignore[union-attr]
        shares.append(counts["new"] / 1000)
    expected = [0.1 / 1.1, 0.2 / 1.2, 0.4 / 1.4, 0.6 / 1.6, 0.8 / 1.8, 0.5]
    assert shares == pytest.approx(expected, abs=0.002)
