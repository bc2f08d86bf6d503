"""The ALB target state machine and the pool's fail-open decision (pure).

Job: turn health-check outcomes, registration changes, maintenance and in-flight counts into a
target's state and reason code, exactly as an ALB target group reports them, and decide which
targets of a pool may take traffic.

Rules:
- States: `initial` -> `healthy` | `unhealthy`; `draining` after deregistration; `unused` when
  deregistered (or in maintenance); `unavailable` when health checks are off (it serves).
- Thresholds are counted exactly: a new target is healthy after `initial_healthy` consecutive
  passes (1, as ALB: traffic after its first passing check); a healthy target turns unhealthy
  after `unhealthy` consecutive failures; an unhealthy one recovers after `healthy` consecutive
  passes. Any opposite outcome restarts the count.
- While unhealthy, the reason is that of the latest failure. Draining and unused targets ignore
  check outcomes (they are not probed).
- A draining target becomes `unused` at its deadline or as soon as nothing is in flight.
- Nothing here reads a clock: every call takes `now` (seconds, any monotonic origin).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar


class State(enum.StrEnum):
    INITIAL = "initial"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"
    UNUSED = "unused"
    UNAVAILABLE = "unavailable"


class Reason(enum.StrEnum):
    REGISTRATION_IN_PROGRESS = "Elb.RegistrationInProgress"
    INITIAL_HEALTH_CHECKING = "Elb.InitialHealthChecking"
    INTERNAL_ERROR = "Elb.InternalError"
    RESPONSE_CODE_MISMATCH = "Target.ResponseCodeMismatch"
    TIMEOUT = "Target.Timeout"
    FAILED_HEALTH_CHECKS = "Target.FailedHealthChecks"
    DEREGISTRATION_IN_PROGRESS = "Target.DeregistrationInProgress"
    NOT_REGISTERED = "Target.NotRegistered"
    HEALTH_CHECK_DISABLED = "Target.HealthCheckDisabled"
    # lbcdn's own: ALB has no body match (Route 53 does) and no maintenance mode (HAProxy does)
    RESPONSE_STRING_MISMATCH = "Target.ResponseStringMismatch"
    IN_MAINTENANCE = "Target.InMaintenance"


class Outcome(enum.StrEnum):
    """What one health check found."""
    PASS = "pass"
    TIMEOUT = "timeout"
    CONNECT_FAILED = "connect_failed"      # refused, reset, closed before a full answer
    CODE_MISMATCH = "code_mismatch"
    STRING_MISMATCH = "string_mismatch"
    BAD_RESPONSE = "bad_response"          # not parseable as HTTP
    INTERNAL_ERROR = "internal_error"      # a bug or resource problem on our side


FAILURE_REASON: dict[Outcome, Reason] = {
    Outcome.TIMEOUT: Reason.TIMEOUT,
    Outcome.CONNECT_FAILED: Reason.FAILED_HEALTH_CHECKS,
    Outcome.CODE_MISMATCH: Reason.RESPONSE_CODE_MISMATCH,
    Outcome.STRING_MISMATCH: Reason.RESPONSE_STRING_MISMATCH,
    Outcome.BAD_RESPONSE: Reason.FAILED_HEALTH_CHECKS,
    Outcome.INTERNAL_ERROR: Reason.INTERNAL_ERROR,
}

SERVING = frozenset({State.HEALTHY, State.UNAVAILABLE})
REGISTERED = frozenset({State.INITIAL, State.HEALTHY, State.UNHEALTHY, State.UNAVAILABLE})


@dataclass(frozen=True)
class Thresholds:
    healthy: int = 5
    unhealthy: int = 2
    initial_healthy: int = 1

    def __post_init__(self) -> None:
        if min(self.healthy, self.unhealthy, self.initial_healthy) < 1:
            raise ValueError("thresholds must be >= 1")


@dataclass(frozen=True)
class Transition:
    old: State
    new: State
    reason: Reason | None
    at: float


class TargetHealth:
    """One target's health as ALB reports it. Methods return a Transition when the state
    changed, else None."""

    __slots__ = ("thresholds", "checks_enabled", "deregistration_delay_s", "state", "reason",
                 "detail", "since", "passes", "failures", "drain_until", "last_outcome",
                 "last_check_at", "_maintenance")

    def __init__(self, thresholds: Thresholds, now: float, *, checks_enabled: bool = True,
                 deregistration_delay_s: float = 300.0) -> None:
        self.thresholds = thresholds
        self.checks_enabled = checks_enabled
        self.deregistration_delay_s = deregistration_delay_s
        self.state = State.INITIAL
        self.reason: Reason | None = Reason.REGISTRATION_IN_PROGRESS
        self.detail = ""
        self.since = now
        self.passes = 0
        self.failures = 0
        self.drain_until: float | None = None
        self.last_outcome: Outcome | None = None
        self.last_check_at: float | None = None
        self._maintenance = False
        if not checks_enabled:
            self.state, self.reason = State.UNAVAILABLE, Reason.HEALTH_CHECK_DISABLED

    # -- reading -------------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        """Takes traffic in a pool that has any serving target."""
        return self.state in SERVING

    @property
    def registered(self) -> bool:
        """Registered and not draining: may take traffic when the pool fails open."""
        return self.state in REGISTERED

    @property
    def classic(self) -> Literal["InService", "OutOfService"]:
        """The Classic ELB word for the state."""
        return "InService" if self.state in SERVING else "OutOfService"

    @property
    def in_maintenance(self) -> bool:
        return self._maintenance

    @property
    def probed(self) -> bool:
        """Should the prober check this target?"""
        return self.checks_enabled and self.state in (State.INITIAL, State.HEALTHY,
                                                      State.UNHEALTHY)

    def next_deadline(self) -> float | None:
        """When `tick` next has something to do (the end of draining)."""
        return self.drain_until if self.state is State.DRAINING else None

    # -- events --------------------------------------------------------------------------

    def _move(self, state: State, reason: Reason | None, now: float) -> Transition | None:
        old = self.state
        self.reason = reason
        if state is old:
            return None
        self.state = state
        self.since = now
        self.passes = self.failures = 0
        return Transition(old, state, reason, now)

    def observe(self, outcome: Outcome, now: float, detail: str = "") -> Transition | None:
        """A health check finished with `outcome`."""
        if not self.probed:
            return None
        self.last_outcome = outcome
        self.last_check_at = now
        state = self.state
        if outcome is Outcome.PASS:
            self.failures = 0
            self.passes += 1
            if state is State.HEALTHY:
                return None
            need = (self.thresholds.initial_healthy if state is State.INITIAL
                    else self.thresholds.healthy)
            if self.passes >= need:
                self.detail = ""
                return self._move(State.HEALTHY, None, now)
            if state is State.INITIAL:
                self.reason = Reason.INITIAL_HEALTH_CHECKING
            return None
        self.passes = 0
        self.failures += 1
        self.detail = detail
        reason = FAILURE_REASON[outcome]
        if state is State.UNHEALTHY:
            self.reason = reason
            return None
        if self.failures >= self.thresholds.unhealthy:
            return self._move(State.UNHEALTHY, reason, now)
        if state is State.INITIAL:
            self.reason = Reason.INITIAL_HEALTH_CHECKING
        return None

    def deregister(self, now: float, in_flight: int) -> Transition | None:
        """Start draining; straight to unused when nothing is in flight or the delay is 0."""
        if self.state in (State.DRAINING, State.UNUSED) and not self._maintenance:
            return None
        self._maintenance = False
        if in_flight <= 0 or self.deregistration_delay_s <= 0:
            return self._move(State.UNUSED, Reason.NOT_REGISTERED, now)
        self.drain_until = now + self.deregistration_delay_s
        return self._move(State.DRAINING, Reason.DEREGISTRATION_IN_PROGRESS, now)

    def register(self, now: float) -> Transition | None:
        """Registered again (after deregistration, or at once when draining is cancelled):
        starts over as a new target."""
        if self.state not in (State.DRAINING, State.UNUSED) or self._maintenance:
            return None
        return self._restart(now)

    def _restart(self, now: float) -> Transition | None:
        self.drain_until = None
        self.detail = ""
        if not self.checks_enabled:
            return self._move(State.UNAVAILABLE, Reason.HEALTH_CHECK_DISABLED, now)
        return self._move(State.INITIAL, Reason.REGISTRATION_IN_PROGRESS, now)

    def set_maintenance(self, on: bool, now: float) -> Transition | None:
        """Maintenance takes a registered target out of service (no traffic, no checks);
        leaving it the target starts over and needs a passing check again."""
        if on == self._maintenance:
            return None
        if on:
            if not self.registered:
                return None  # draining or deregistered: nothing to take out of service
            self._maintenance = True
            return self._move(State.UNUSED, Reason.IN_MAINTENANCE, now)
        self._maintenance = False
        return self._restart(now)

    def in_flight_changed(self, in_flight: int, now: float) -> Transition | None:
        """A draining target with nothing left in flight is done early."""
        if self.state is State.DRAINING and in_flight <= 0:
            self.drain_until = None
            return self._move(State.UNUSED, Reason.NOT_REGISTERED, now)
        return None

    def tick(self, now: float) -> Transition | None:
        """Time passed: end draining at its deadline."""
        if (self.state is State.DRAINING and self.drain_until is not None
                and now >= self.drain_until):
            self.drain_until = None
            return self._move(State.UNUSED, Reason.NOT_REGISTERED, now)
        return None

    def describe(self) -> dict[str, object]:
        return {"state": str(self.state), "reason": None if self.reason is None else
                str(self.reason), "classic": self.classic, "detail": self.detail,
                "since": self.since}


T = TypeVar("T")


@dataclass(frozen=True)
class Routing(Generic[T]):
    """The targets that may take traffic now. `failed_open`: no target was serving and the
    pool routes to every registered one; an empty tuple means answer 503."""
    targets: tuple[T, ...]
    failed_open: bool = False


def routable(targets: Sequence[T], health_of: Callable[[T], TargetHealth], *, fail_open: bool,
             ejected: Callable[[T], bool] | None = None) -> Routing[T]:
    """Serving targets not ejected by outlier detection; else serving ones even if ejected
    (the ejection cap should prevent that); else, when failing open, every registered target
    (initial and unhealthy ones, never draining or unused ones); else none."""
    serving = [t for t in targets if health_of(t).serving]
    if serving:
        if ejected is not None:
            kept = [t for t in serving if not ejected(t)]
            if kept:
                return Routing(tuple(kept))
        return Routing(tuple(serving))
    if fail_open:
        registered = tuple(t for t in targets if health_of(t).registered)
        if registered:
            return Routing(registered, failed_open=True)
    return Routing(())
