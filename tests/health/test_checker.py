"""The checker against real local servers, and with fake probes: thresholds counted exactly,
reasons, jittered schedules from a seeded rng, unprobed targets skipped, kept connections
closed, stop() leaving nothing behind; Check built from config and Route 53 style."""

from __future__ import annotations

import asyncio
import random

import pytest

from lbcdn.health.checker import Check, HealthChecker
from lbcdn.health.config import HealthCheckConfig
from lbcdn.health.prober import ProbeResult, ProbeSpec
from lbcdn.health.state import Outcome, Reason, State, Thresholds, Transition
from tests.e2e.harness import until
from tests.health.backend import Backend, spec


async def test_checker_closes_kept_connections(backend: Backend) -> None:
    backend.mode = "keep"
    checker: HealthChecker[str] = HealthChecker(rng=random.Random(5))
    cfg = HealthCheckConfig(reuse_connection=True, interval_s=0.05, timeout_s=0.04, jitter=0)
    checker.add_target("a", Check.for_target(cfg, "127.0.0.1", backend.port))
    await checker.start()
    await until(lambda: backend.hits >= 3, what="three checks")
    assert backend.hits >= 3 and backend.connections == 1
    await checker.stop()
    await until(lambda: not backend.writers, what="our side closing it")


def test_check_from_config_and_route53() -> None:
    cfg = HealthCheckConfig(port=9000, path="/h", matcher="200-299", search_string="ok",
                            interval_s=10, timeout_s=2, healthy_threshold=3,
                            unhealthy_threshold=4)
    c = Check.for_target(cfg, "10.0.0.5", 8080)
    assert (c.spec.address, c.spec.port, c.spec.path, c.spec.host_header) == (
        "10.0.0.5", 9000, "/h", "10.0.0.5:8080")
    assert c.spec.search_string == b"ok" and 204 in c.spec.matcher
    assert c.thresholds == Thresholds(3, 4) and c.interval_s == 10 and c.spec.keep_alive
    assert not Check.for_target(HealthCheckConfig(reuse_connection=False), "h",
                                1).spec.keep_alive
    # tcp checks have nothing to keep
    assert not Check.for_target(HealthCheckConfig(protocol="tcp"), "h", 1).spec.keep_alive
    r53 = Check.route53(protocol="http", address="192.0.2.1", port=80, fqdn="www.example",
                        request_interval_s=10, failure_threshold=2)
    assert 301 in r53.spec.matcher and 404 not in r53.spec.matcher
    assert r53.thresholds == Thresholds(2, 2, 1) and r53.spec.host_header == "www.example"
    with pytest.raises(ValueError):
        Check(ProbeSpec("tcp", "h", 1, timeout_s=5), interval_s=5)


# -- the checker ---------------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.items: list[tuple[str, ProbeResult, Transition | None, State]] = []
        self.checker: HealthChecker[str] | None = None
        self.changed = asyncio.Event()

    def __call__(self, key: str, result: ProbeResult, tr: Transition | None) -> None:
        assert self.checker is not None
        self.items.append((key, result, tr, self.checker.state_of(key).state))
        self.changed.set()

    async def wait_for(self, pred: object, timeout: float = 5.0) -> None:
        async def loop() -> None:
            while not pred():  # type: ignore[operator]
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(loop(), timeout)


async def test_checker_counts_thresholds_exactly(backend: Backend) -> None:
    rec = Recorder()
    checker: HealthChecker[str] = HealthChecker(on_result=rec, rng=random.Random(1))
    rec.checker = checker
    check = Check(spec(backend.port, timeout_s=0.14), interval_s=0.15,
                  thresholds=Thresholds(healthy=3, unhealthy=2), jitter=0)
    checker.add_target("a", check)
    assert checker.state_of("a").state is State.INITIAL
    await checker.start()
    try:
        # initial -> healthy on the very first pass
        await rec.wait_for(lambda: len(rec.items) >= 1)
        assert rec.items[0][2] is not None and rec.items[0][3] is State.HEALTHY

        def run(mode: str, outcome: Outcome, n_after: int) -> int:
            """Index of the first result with `outcome` after switching to `mode`."""
            return next(i for i, it in enumerate(rec.items) if i >= n_after
                        and it[1].outcome is outcome)

        for mode, outcome, threshold, after, reason in [
            ("status:500", Outcome.CODE_MISMATCH, 2, State.UNHEALTHY,
             Reason.RESPONSE_CODE_MISMATCH),
            ("ok", Outcome.PASS, 3, State.HEALTHY, None),
        ]:
            n = len(rec.items)
            backend.mode = mode
            await rec.wait_for(lambda: any(it[1].outcome is outcome for it in rec.items[n:])
                               and rec.items[-1][3] is after and len(rec.items) > n + threshold)
            first = run(mode, outcome, n)
            states = [it[3] for it in rec.items[first:first + threshold]]
            transitions = [it[2] for it in rec.items[first:first + threshold]]
            assert states[:-1] == [rec.items[first - 1][3]] * (threshold - 1)
            assert states[-1] is after
            assert transitions[:-1] == [None] * (threshold - 1)
            assert transitions[-1] is not None and transitions[-1].reason == reason

        # the backend goes away: refused connections -> FailedHealthChecks
        n = len(rec.items)
        await backend.stop()
        await rec.wait_for(lambda: rec.items[-1][3] is State.UNHEALTHY and len(rec.items) > n)
        assert checker.state_of("a").reason is Reason.FAILED_HEALTH_CHECKS
        # and comes back on the same port
        await backend.start()
        await rec.wait_for(lambda: rec.items[-1][3] is State.HEALTHY)
        assert checker.state_of("a").classic == "InService"
    finally:
        await checker.stop()


async def test_checker_timeout_reason(backend: Backend) -> None:
    rec = Recorder()
    checker: HealthChecker[str] = HealthChecker(on_result=rec, rng=random.Random(2))
    rec.checker = checker
    backend.mode = "hang"
    checker.add_target("a", Check(spec(backend.port, timeout_s=0.1), interval_s=0.15,
                                  thresholds=Thresholds(unhealthy=2), jitter=0))
    await checker.start()
    try:
        await rec.wait_for(lambda: len(rec.items) >= 2)
        assert [it[1].outcome for it in rec.items[:2]] == [Outcome.TIMEOUT] * 2
        assert [it[3] for it in rec.items[:2]] == [State.INITIAL, State.UNHEALTHY]
        assert checker.state_of("a").reason is Reason.TIMEOUT
    finally:
        await checker.stop()


async def test_jittered_schedule_with_seeded_rng() -> None:
    times: dict[str, list[float]] = {}
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    # the spec's address carries the key; the times are those scheduled (timer lateness on a
    # busy machine is not the checker's doing)
    async def fake_probe(s: ProbeSpec) -> ProbeResult:
        times.setdefault(s.address, []).append(checker.next_check_at(s.address) - t0)
        return ProbeResult(Outcome.PASS)

    checker: HealthChecker[str] = HealthChecker(rng=random.Random(7), probe_fn=fake_probe)
    interval, jitter = 0.2, 0.2
    for i in range(40):
        checker.add_target(f"t{i}", Check(ProbeSpec("tcp", f"t{i}", 1, timeout_s=0.1),
                                          interval_s=interval, jitter=jitter))
    await checker.start()
    await asyncio.sleep(0.75)
    await checker.stop()
    firsts = sorted(ts[0] for ts in times.values())
    assert len(firsts) == 40
    assert firsts[-1] - firsts[0] > interval / 2    # spread over the first interval
    assert len({round(t, 3) for t in firsts}) > 30   # not in lockstep
    gaps = [b - a for ts in times.values() for a, b in zip(ts, ts[1:])]
    assert gaps and all(interval * (1 - jitter) - 1e-9 <= g <= interval * (1 + jitter) + 1e-9
                        for g in gaps), gaps
    assert len({round(g, 3) for g in gaps}) > 10    # the intervals themselves vary


async def test_unprobed_and_removed_targets_are_not_checked(backend: Backend) -> None:
    checker: HealthChecker[str] = HealthChecker(rng=random.Random(3))
    check = Check(spec(backend.port, timeout_s=0.05), interval_s=0.06, jitter=0)
    h = checker.add_target("a", check)
    await checker.start()
    try:
        await asyncio.sleep(0.3)
        assert backend.hits >= 2 and h.state is State.HEALTHY
        h.set_maintenance(True, 1.0)
        await asyncio.sleep(0.1)  # a check already in flight may still land
        hits = backend.hits
        await asyncio.sleep(0.3)
        assert backend.hits == hits
        h.set_maintenance(False, 2.0)
        checker.check_soon("a")
        await asyncio.sleep(0.2)
        assert backend.hits > hits and h.state is State.HEALTHY
        checker.remove_target("a")
        assert "a" not in checker
        await asyncio.sleep(0.1)
        hits = backend.hits
        await asyncio.sleep(0.3)
        assert backend.hits == hits
    finally:
        await checker.stop()


async def test_stop_cancels_probes_in_flight(backend: Backend) -> None:
    backend.mode = "hang"
    checker: HealthChecker[str] = HealthChecker(rng=random.Random(4))
    checker.add_target("a", Check(spec(backend.port, timeout_s=5), interval_s=10))
    await checker.start()
    await asyncio.sleep(1.1)  # the first check comes within min(interval, 1 s)
    assert backend.hits == 1
    await asyncio.wait_for(checker.stop(), 1.0)
    left = [t for t in asyncio.all_tasks() if t.get_name() == "health-check"]
    assert left == []




async def passing(_: ProbeSpec) -> ProbeResult:
    return ProbeResult(Outcome.PASS)


async def test_draining_ends_at_the_deadline_or_when_idle() -> None:
    changes: list[tuple[str, State, State]] = []
    checker: HealthChecker[str] = HealthChecker(
        on_change=lambda k, t: changes.append((k, t.old, t.new)), rng=random.Random(6),
        probe_fn=passing, deregistration_delay_s=0.2)
    tcp = Check(ProbeSpec("tcp", "a", 1, timeout_s=0.01), interval_s=0.02, jitter=0)
    checker.add_target("a", tcp)
    checker.add_target("b", tcp)
    await checker.start()
    try:
        await asyncio.sleep(0.1)
        assert checker.state_of("a").state is State.HEALTHY
        checker.deregister("a", in_flight=2)
        checker.deregister("b", in_flight=1)
        assert checker.state_of("a").reason is Reason.DEREGISTRATION_IN_PROGRESS
        checker.in_flight_changed("b", 0)               # b: nothing left in flight, done early
        assert checker.state_of("b").state is State.UNUSED
        await asyncio.sleep(0.1)
        assert checker.state_of("a").state is State.DRAINING
        await asyncio.sleep(0.2)                         # a: the deadline
        assert (checker.state_of("a").state, checker.state_of("a").reason) == (
            State.UNUSED, Reason.NOT_REGISTERED)
        assert ("a", State.DRAINING, State.UNUSED) in changes
        assert ("b", State.DRAINING, State.UNUSED) in changes
        checker.register("a")                            # back: checked again at once
        await asyncio.sleep(0.05)
        assert checker.state_of("a").state is State.HEALTHY
        checker.set_maintenance("a", True)
        assert checker.state_of("a").reason is Reason.IN_MAINTENANCE
        checker.set_maintenance("a", False)
        await asyncio.sleep(0.05)
        assert checker.state_of("a").state is State.HEALTHY
        assert checker.in_flight_changed("nope", 0) is None
    finally:
        await checker.stop()


async def test_checks_due_close_together_share_one_timer() -> None:
    """Starts go out on a grid of min(20 ms, interval / 20): one loop timer per grid slot, each
    check at or after its scheduled time and less than one grid step (plus timer lateness)
    after it."""
    loop = asyncio.get_running_loop()
    lag: list[float] = []

    async def fake_probe(s: ProbeSpec) -> ProbeResult:
        lag.append(loop.time() - checker.next_check_at(s.address))
        return ProbeResult(Outcome.PASS)

    checker: HealthChecker[str] = HealthChecker(rng=random.Random(11), probe_fn=fake_probe)
    for i in range(300):
        checker.add_target(f"t{i}", Check(ProbeSpec("tcp", f"t{i}", 1, timeout_s=0.1),
                                          interval_s=1.0))
    await checker.start()
    try:
        # 300 first checks spread over 1 s would take ~300 timers; the 20 ms grid has 51 slots
        assert len(checker._slot_timers) <= 51
        await asyncio.sleep(1.2)
    finally:
        await checker.stop()
    assert len(lag) >= 300
    assert min(lag) >= -1e-9
    assert sorted(lag)[len(lag) // 2] < 0.02 + 0.01  # median within one grid step (+ lateness)
    assert not checker._slot_timers


async def test_short_intervals_get_a_finer_grid() -> None:
    check = Check(ProbeSpec("tcp", "a", 1, timeout_s=0.01), interval_s=0.02, jitter=0)
    times: list[float] = []
    loop = asyncio.get_running_loop()

    async def fake_probe(s: ProbeSpec) -> ProbeResult:
        times.append(loop.time())
        return ProbeResult(Outcome.PASS)

    checker: HealthChecker[str] = HealthChecker(rng=random.Random(1), probe_fn=fake_probe)
    checker.add_target("a", check)
    await checker.start()
    await asyncio.sleep(0.5)
    await checker.stop()
    # a 20 ms grid would let a 20 ms interval slip to 40 ms; its 1 ms grid keeps ~25 checks
    assert len(times) >= 15
