"""Outlier detection with a fake clock: consecutive counts, growing ejections that decay, the
share cap, never ejecting the last target, and the ejection at a target's first failed
connect."""

from __future__ import annotations

import pytest

from lbcdn.health.config import OutlierConfig
from lbcdn.health.outlier import Ejection, OutlierDetector, Result, stalled

S, E5, EC, ER = Result.SUCCESS, Result.HTTP_5XX, Result.CONNECT_FAILURE, Result.RESET


def detector(n: int = 10, **kw: object) -> OutlierDetector[str]:
    """Consecutive counting only (failed connects do not eject at once) unless `kw` says."""
    args: dict[str, object] = {"enabled": True, "consecutive_5xx": 3,
                               "consecutive_connect_failures": 2, "base_ejection_s": 10.0,
                               "max_ejection_s": 25.0, "max_ejection_percent": 20.0,
                               "connect_failure_ejection_s": 0}
    args.update(kw)
    d: OutlierDetector[str] = OutlierDetector(OutlierConfig(**args))  # type: ignore[arg-type]
    for i in range(n):
        d.add(f"t{i}")
    return d


def test_consecutive_5xx_counted_exactly_and_reset_by_success() -> None:
    d = detector()
    assert d.record("t0", E5, 0) is None
    assert d.record("t0", E5, 0) is None
    assert d.record("t0", S, 0) is None          # resets
    assert d.record("t0", E5, 1) is None
    assert d.record("t0", E5, 1) is None
    assert d.record("t0", E5, 1) == Ejection(11.0, 1, E5)
    assert d.is_ejected("t0", 10.9) and not d.is_ejected("t0", 11.0)


def test_connect_failures_counted_separately() -> None:
    d = detector()
    d.record("t0", E5, 0)
    d.record("t0", E5, 0)
    assert d.record("t0", EC, 0) is None
    assert d.record("t0", EC, 0) == Ejection(10.0, 1, EC)


def test_ejection_time_grows_caps_and_decays() -> None:
    d = detector()
    assert d.record("t0", EC, 0) is None
    assert d.record("t0", EC, 0) == Ejection(10.0, 1, EC)
    d.record("t0", EC, 10)
    assert d.record("t0", EC, 10) == Ejection(30.0, 2, EC)        # 2 x base
    d.record("t0", EC, 30)
    assert d.record("t0", EC, 30) == Ejection(55.0, 3, EC)        # 3 x base capped at 25
    # clean from 55: the count falls one per base_ejection_s
    d.record("t0", EC, 75)
    assert d.record("t0", EC, 75) == Ejection(95.0, 2, EC)        # (3 - 2 + 1) x base


def test_cap_on_the_ejected_share() -> None:
    d = detector(n=10)  # 20% of 10: two at once
    for k in ("t0", "t1", "t2"):
        d.record(k, EC, 0)
        d.record(k, EC, 0)
    assert sorted(d.ejected(0)) == ["t0", "t1"]
    assert d.record("t2", EC, 10.5) is not None   # room again once the first two are back


def test_at_least_one_but_never_the_last() -> None:
    d = detector(n=2, max_ejection_percent=0)
    d.record("t0", EC, 0)
    assert d.record("t0", EC, 0) is not None  # at least one may go
    d.record("t1", EC, 0)
    assert d.record("t1", EC, 0) is None      # not the last one standing
    single = detector(n=1)
    single.record("t0", EC, 0)
    assert single.record("t0", EC, 0) is None


def test_disabled_unknown_and_removed() -> None:
    d = detector(enabled=False)
    for _ in range(10):
        assert d.record("t0", E5, 0) is None
    d2 = detector()
    assert d2.record("nope", E5, 0) is None and not d2.is_ejected("nope", 0)
    d2.record("t0", EC, 0)
    d2.record("t0", EC, 0)
    d2.remove("t0")
    assert not d2.is_ejected("t0", 1)


def test_zero_threshold_ignores_that_kind() -> None:
    d = detector(consecutive_5xx=0)
    assert all(d.record("t0", E5, 0) is None for _ in range(50))


def test_resets_count_as_connect_failures() -> None:
    d = detector()
    assert d.record("t0", ER, 0) is None
    assert d.record("t0", EC, 0) == Ejection(10.0, 1, EC)  # ejected as a connect failure


def test_first_failed_connect_ejects_at_once_even_with_outlier_detection_off() -> None:
    d = detector(n=3, enabled=False, connect_failure_ejection_s=1.0, max_ejection_s=5.0)
    assert d.record("t0", E5, 0) is None                      # off for everything else
    assert d.record("t0", EC, 0) == Ejection(1.0, 1, EC)
    assert d.record("t0", EC, 0.5) is None                    # already out: not lengthened
    assert d.ejected(0.9) == ["t0"] and d.ejected(1.0) == []
    # the share cap (20% of 3) does not hold a second refusing target back
    assert d.record("t1", EC, 0.2) == Ejection(1.2, 1, EC)
    # still refusing when tried again: the ejection doubles, up to max_ejection_s
    assert d.record("t0", EC, 1.0) == Ejection(3.0, 2, EC)
    assert d.record("t0", EC, 3.0) == Ejection(7.0, 3, EC)
    assert d.record("t0", EC, 7.0) == Ejection(12.0, 4, EC)   # 8 s capped at 5
    # clean for a while: the count decays as for every ejection (one per base_ejection_s)
    assert d.record("t0", EC, 42.0) == Ejection(44.0, 2, EC)   # 4 - 3 + 1: 2 s


def test_first_failed_connect_ejects_with_outlier_detection_on() -> None:
    d = detector(connect_failure_ejection_s=2.0)
    d.record("t0", E5, 0)
    assert d.record("t0", EC, 0) == Ejection(2.0, 1, EC)
    assert d.record("t0", ER, 0) is None                      # resets still count to 2
    assert d.record("t0", ER, 2.0) == Ejection(22.0, 2, EC)   # 2 x base_ejection_s


def test_a_long_outage_does_not_overflow_the_backoff() -> None:
    d = detector(n=2, enabled=False, connect_failure_ejection_s=1.0, max_ejection_s=300.0)
    now = 0.0
    for _ in range(2000):
        e = d.record("t0", EC, now)
        assert e is not None and e.until - now <= 300.0
        now = e.until


@pytest.mark.parametrize("waiting, silent, others, expected", [
    (10, 10, 0.5, True),     # waited, silent, and another target answered meanwhile
    (30, 30, 12, True),      # the others answered since it was sent, if not recently
    (9.9, 10, 0.5, False),   # not waiting long enough
    (10, 9.9, 0.5, False),   # answered someone else recently: slow request, live target
    (10, 10, 10, False),     # nobody answered since: a slow pool, not one stalled target
    (30, 30, 31, False),
])
def test_stalled(waiting: float, silent: float, others: float, expected: bool) -> None:
    assert stalled(waiting, silent, others, 10.0) is expected
    assert stalled(waiting, silent, others, 0.0) is False  # off


def test_a_stalled_target_is_ejected_like_an_outlier_even_when_detection_is_off() -> None:
    d = detector(n=3, enabled=False, max_ejection_percent=0)
    assert d.record("t0", Result.STALLED, 0) == Ejection(10.0, 1, Result.STALLED)
    assert d.record("t0", Result.STALLED, 5) is None      # already out
    assert d.record("t1", Result.STALLED, 5) is None      # the share cap holds (one of three)
    assert d.record("t0", Result.STALLED, 10) == Ejection(30.0, 2, Result.STALLED)


def test_reinstate_ends_an_ejection_and_its_count() -> None:
    d = detector(n=3, enabled=False, connect_failure_ejection_s=1.0)
    for now in (0.0, 1.0, 3.0):
        d.record("t0", EC, now)
    assert d.is_ejected("t0", 5.0)
    d.reinstate("t0")
    d.reinstate("nope")
    assert not d.is_ejected("t0", 5.0)
    assert d.record("t0", EC, 5.0) == Ejection(6.0, 1, EC)  # starts over at 1 s
