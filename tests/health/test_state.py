"""The ALB target state machine with a fake clock: thresholds counted exactly, reasons,
draining, maintenance, Classic words, and the pool's fail-open decision."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lbcdn.health.state import (Outcome, Reason, State, TargetHealth, Thresholds, Transition,
                                routable)

P, F, T = Outcome.PASS, Outcome.CONNECT_FAILED, Outcome.TIMEOUT


def feed(h: TargetHealth, outcomes: list[Outcome], start: float = 1.0) -> list[Transition]:
    out = []
    for i, o in enumerate(outcomes):
        t = h.observe(o, start + i)
        if t is not None:
            out.append(t)
    return out


def new(healthy: int = 5, unhealthy: int = 2, **kw: object) -> TargetHealth:
    return TargetHealth(Thresholds(healthy, unhealthy), 0.0, **kw)  # type: ignore[arg-type]


def test_new_target_is_initial_registration_in_progress() -> None:
    h = new()
    assert (h.state, h.reason, h.classic) == (State.INITIAL, Reason.REGISTRATION_IN_PROGRESS,
                                              "OutOfService")
    assert not h.serving and h.registered and h.probed


def test_first_pass_makes_a_new_target_healthy() -> None:
    h = new()
    assert feed(h, [P]) == [Transition(State.INITIAL, State.HEALTHY, None, 1.0)]
    assert h.serving and h.classic == "InService" and h.reason is None and h.since == 1.0


def test_initial_failures_below_threshold_keep_initial_checking() -> None:
    h = new(unhealthy=3)
    assert feed(h, [F, F]) == []
    assert (h.state, h.reason) == (State.INITIAL, Reason.INITIAL_HEALTH_CHECKING)
    assert feed(h, [F], start=5) == [Transition(State.INITIAL, State.UNHEALTHY,
                                                Reason.FAILED_HEALTH_CHECKS, 5)]


@pytest.mark.parametrize("unhealthy", range(1, 11))
def test_unhealthy_threshold_counted_exactly(unhealthy: int) -> None:
    h = new(unhealthy=unhealthy)
    feed(h, [P])
    assert feed(h, [T] * (unhealthy - 1)) == []
    assert h.state is State.HEALTHY
    assert len(feed(h, [T])) == 1
    assert (h.state, h.reason) == (State.UNHEALTHY, Reason.TIMEOUT)


@pytest.mark.parametrize("healthy", range(1, 11))
def test_healthy_threshold_counted_exactly(healthy: int) -> None:
    h = new(healthy=healthy, unhealthy=1)
    feed(h, [F])
    assert h.state is State.UNHEALTHY
    assert feed(h, [P] * (healthy - 1)) == []
    assert h.state is State.UNHEALTHY
    assert len(feed(h, [P])) == 1 and h.describe()["state"] == "healthy"


def test_an_opposite_outcome_restarts_the_count() -> None:
    h = new(healthy=3, unhealthy=2)
    feed(h, [P])
    assert feed(h, [F, P, F, P, F, P]) == []  # never two failures in a row
    assert h.describe()["state"] == "healthy"
    feed(h, [F, F])
    assert h.state is State.UNHEALTHY
    assert feed(h, [P, P, F, P, P]) == []
    assert h.state is State.UNHEALTHY
    feed(h, [P])
    assert h.describe()["state"] == "healthy"


@pytest.mark.parametrize("outcome, reason", [
    (Outcome.TIMEOUT, Reason.TIMEOUT),
    (Outcome.CONNECT_FAILED, Reason.FAILED_HEALTH_CHECKS),
    (Outcome.BAD_RESPONSE, Reason.FAILED_HEALTH_CHECKS),
    (Outcome.CODE_MISMATCH, Reason.RESPONSE_CODE_MISMATCH),
    (Outcome.STRING_MISMATCH, Reason.RESPONSE_STRING_MISMATCH),
    (Outcome.INTERNAL_ERROR, Reason.INTERNAL_ERROR),
])
def test_reason_follows_the_latest_failure(outcome: Outcome, reason: Reason) -> None:
    h = new(unhealthy=1)
    feed(h, [Outcome.TIMEOUT])
    h.observe(outcome, 9.0, detail="why")
    assert (h.state, h.reason, h.detail) == (State.UNHEALTHY, reason, "why")
    assert str(reason).startswith(("Elb.", "Target."))


def test_draining_ends_at_the_deadline() -> None:
    h = new(deregistration_delay_s=300.0)
    feed(h, [P])
    t = h.deregister(10.0, in_flight=2)
    assert t == Transition(State.HEALTHY, State.DRAINING, Reason.DEREGISTRATION_IN_PROGRESS, 10.0)
    assert not h.serving and not h.registered and not h.probed
    assert h.next_deadline() == 310.0
    assert h.tick(309.9) is None
    assert h.observe(P, 200.0) is None and h.state is State.DRAINING  # not probed any more
    assert h.tick(310.0) == Transition(State.DRAINING, State.UNUSED, Reason.NOT_REGISTERED, 310.0)
    assert h.next_deadline() is None


def test_draining_ends_early_when_nothing_is_in_flight() -> None:
    h = new()
    feed(h, [P])
    h.deregister(10.0, in_flight=1)
    assert h.in_flight_changed(1, 11.0) is None
    assert h.in_flight_changed(0, 12.0) == Transition(State.DRAINING, State.UNUSED,
                                                      Reason.NOT_REGISTERED, 12.0)
    assert h.tick(1000.0) is None


def test_deregister_idle_or_without_delay_is_unused_at_once() -> None:
    h = new()
    assert h.deregister(1.0, in_flight=0) is not None and h.state is State.UNUSED
    h2 = new(deregistration_delay_s=0.0)
    h2.deregister(1.0, in_flight=5)
    assert (h2.state, h2.reason) == (State.UNUSED, Reason.NOT_REGISTERED)
    assert h2.deregister(2.0, in_flight=5) is None


def test_register_again_starts_over() -> None:
    h = new()
    feed(h, [P])
    h.deregister(1.0, in_flight=3)
    t = h.register(2.0)
    assert t is not None and (h.state, h.reason) == (State.INITIAL, Reason.REGISTRATION_IN_PROGRESS)
    assert h.register(3.0) is None  # already registered
    feed(h, [P], start=4)
    assert h.state is State.HEALTHY


def test_maintenance_takes_out_and_back_needs_a_pass() -> None:
    h = new()
    feed(h, [P])
    assert h.set_maintenance(True, 5.0) == Transition(State.HEALTHY, State.UNUSED,
                                                      Reason.IN_MAINTENANCE, 5.0)
    assert h.in_maintenance and not h.probed and not h.registered
    assert h.register(6.0) is None  # maintenance is left only explicitly
    assert h.set_maintenance(True, 6.0) is None
    h.set_maintenance(False, 7.0)
    assert (h.state, h.reason) == (State.INITIAL, Reason.REGISTRATION_IN_PROGRESS)
    feed(h, [P], start=8)
    assert h.state is State.HEALTHY


def test_deregister_while_in_maintenance() -> None:
    h = new()
    h.set_maintenance(True, 1.0)
    h.deregister(2.0, in_flight=0)
    assert (h.state, h.reason, h.in_maintenance) == (State.UNUSED, Reason.NOT_REGISTERED, False)


def test_checks_disabled_is_unavailable_and_serving() -> None:
    h = new(checks_enabled=False)
    assert (h.state, h.reason, h.classic) == (State.UNAVAILABLE, Reason.HEALTH_CHECK_DISABLED,
                                              "InService")
    assert h.serving and not h.probed and h.observe(F, 1.0) is None
    h.set_maintenance(True, 2.0)
    h.set_maintenance(False, 3.0)
    assert h.state is State.UNAVAILABLE


def test_describe() -> None:
    h = new()
    assert h.describe() == {"state": "initial", "reason": "Elb.RegistrationInProgress",
                            "classic": "OutOfService", "detail": "", "since": 0.0}


def test_thresholds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Thresholds(0, 2)


# -- the pool's decision ----------------------------------------------------------------

@dataclass
class Tg:
    name: str
    health: TargetHealth
    ejected: bool = False


def pool(*states: str) -> list[Tg]:
    out = []
    for i, s in enumerate(states):
        h = new(unhealthy=1)
        if s == "healthy":
            feed(h, [P])
        elif s == "unhealthy":
            feed(h, [F])
        elif s == "draining":
            feed(h, [P])
            h.deregister(0.5, in_flight=1)
        elif s == "maint":
            h.set_maintenance(True, 0.5)
        out.append(Tg(f"t{i}", h))
    return out


def names(targets: tuple[Tg, ...]) -> list[str]:
    return [t.name for t in targets]


def test_routes_to_healthy_only() -> None:
    r = routable(pool("healthy", "unhealthy", "initial", "healthy"), lambda t: t.health,
                 fail_open=True)
    assert names(r.targets) == ["t0", "t3"] and not r.failed_open


def test_fails_open_to_registered_targets_only() -> None:
    r = routable(pool("unhealthy", "initial", "draining", "maint", "unhealthy"),
                 lambda t: t.health, fail_open=True)
    assert names(r.targets) == ["t0", "t1", "t4"] and r.failed_open


def test_fail_closed_answers_503() -> None:
    r = routable(pool("unhealthy", "unhealthy"), lambda t: t.health, fail_open=False)
    assert r.targets == () and not r.failed_open
    assert routable(pool("draining"), lambda t: t.health, fail_open=True).targets == ()


def test_ejected_targets_skipped_unless_all_are() -> None:
    ts = pool("healthy", "healthy", "unhealthy")
    ts[0].ejected = True
    r = routable(ts, lambda t: t.health, fail_open=True, ejected=lambda t: t.ejected)
    assert names(r.targets) == ["t1"]
    ts[1].ejected = True
    r = routable(ts, lambda t: t.health, fail_open=True, ejected=lambda t: t.ejected)
    assert names(r.targets) == ["t0", "t1"] and not r.failed_open
