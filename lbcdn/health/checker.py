"""The health checker: many targets, each probed on its own jittered schedule, feeding its
ALB state machine and a callback.

Job: `HealthChecker` keeps one `TargetHealth` per key, probes each key on its own `Check` and
pushes every result to the state machine and to `on_result`. Keys are any hashable (a pool
target, a Route 53 health-check id), so pools and DNS share the checker; `Check.for_target`
builds a pool target's check from its `health:` config, `Check.route53` a Route 53 style one.

Rules:
- Scheduling: a target's first check comes at a random point within min(interval, 1 s) of its
  registration, then every interval stretched or shrunk by up to `jitter` (seeded rng
  injectable), counted from the scheduled start of the previous check so slow answers do not
  drift it. No task per check on the fast path (see lbcdn.health.prober).
- Checks due close together share one loop timer: a check is started at its scheduled time
  rounded up to a grid of min(20 ms, interval / 20), one timer per grid slot. Waking the loop
  is what checks cost most here (~40 us of CPU per sleep and wake on the 2-core dev box, more
  than the probe's own syscalls), and 1,000 targets on separate timers woke it ~1,600 times a
  second; on the grid the probes of a slot go out together and their answers come back while
  the loop is still awake. The shift is a fraction of the jitter, so targets are still not hit
  in lockstep.
- Targets that the state machine says are not probed (draining, unused, maintenance) keep their
  timer but skip the check; `check_soon` brings the next check forward.
- `stop()` cancels checks in flight and closes kept connections.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from lbcdn.health.config import HealthCheckConfig
from lbcdn.health.matcher import parse_matcher
from lbcdn.health.prober import (Cancellable, ConnectionSlot, ProbeResult, ProbeSpec,
                                 host_port, start_probe)
from lbcdn.health.state import TargetHealth, Thresholds, Transition
from lbcdn.http.proxyproto import build as proxy_header
from lbcdn.tasks import spawn

log = logging.getLogger("lbcdn.health")

FIRST_CHECK_SPREAD_S = 1.0
# the start grid: at most this coarse, and at most 1/20 of a check's interval
GRID_S = 0.02
GRID_SHARE = 0.05


@dataclass(frozen=True)
class Check:
    """One target's health check: the probe, how often, and the thresholds."""
    spec: ProbeSpec
    interval_s: float = 30.0
    thresholds: Thresholds = field(default_factory=Thresholds)
    jitter: float = 0.1
    enabled: bool = True

    def __post_init__(self) -> None:
        if not self.spec.timeout_s < self.interval_s:
            raise ValueError("the timeout must be less than the interval")

    @classmethod
    def for_target(cls, cfg: HealthCheckConfig, host: str, port: int,
                   proxy_protocol: str | None = None, tls: bool = False) -> Check:
        """A pool target's check from its pool's `health:` section; `proxy_protocol`: the
        version of PROXY header the target requires (a LOCAL one: the check is lbcdn's);
        `tls`: the pool speaks TLS to its targets (a grpc check then uses h2 over TLS, else
        h2c)."""
        header = b"" if proxy_protocol is None else proxy_header(proxy_protocol, None, ("", 0))
        grpc = cfg.protocol == "grpc"
        spec = ProbeSpec(
            protocol=cfg.protocol, address=host, port=cfg.port or port, path=cfg.path,
            method=cfg.method, host_header=cfg.host or host_port(host, port),
            timeout_s=cfg.timeout_s,
            matcher=parse_matcher(cfg.success_codes(), grpc=grpc),
            grpc_service=cfg.service, grpc_tls=tls,
            search_string=None if cfg.search_string is None else cfg.search_string.encode(),
            keep_alive=cfg.reuse_connection and cfg.protocol == "http" and not header,
            proxy_header=header)
        return cls(spec, cfg.interval_s,
                   Thresholds(cfg.healthy_threshold, cfg.unhealthy_threshold),
                   cfg.jitter, cfg.enabled)

    @classmethod
    def route53(cls, *, protocol: Literal["http", "https", "tcp"], address: str, port: int,
                path: str = "/", fqdn: str | None = None, search_string: str | None = None,
                request_interval_s: float = 30.0, failure_threshold: int = 3,
                timeout_s: float = 4.0, jitter: float = 0.1) -> Check:
        """A Route 53 style check: 2xx and 3xx pass, the same threshold both ways."""
        spec = ProbeSpec(
            protocol=protocol, address=address, port=port, path=path,
            host_header=fqdn or None, timeout_s=timeout_s, matcher=parse_matcher("200-399"),
            search_string=None if search_string is None else search_string.encode())
        return cls(spec, request_interval_s,
                   Thresholds(failure_threshold, failure_threshold, initial_healthy=1), jitter)


K = TypeVar("K", bound=Hashable)


class _Entry(Generic[K]):
    __slots__ = ("key", "check", "health", "timer", "task", "next_at", "slot", "drain_timer",
                 "due", "grid")

    def __init__(self, key: K, check: Check, health: TargetHealth) -> None:
        self.key = key
        self.check = check
        self.health = health
        self.timer: asyncio.Handle | None = None
        self.task: Cancellable | None = None
        self.next_at = 0.0
        self.slot = ConnectionSlot()
        self.drain_timer: asyncio.TimerHandle | None = None
        self.due: float | None = None  # the grid slot it waits in (None: not waiting)
        self.grid = min(GRID_S, check.interval_s * GRID_SHARE)


class HealthChecker(Generic[K]):
    """Probes registered keys on their own schedules and keeps their TargetHealth.

    `on_result(key, result, transition)` runs after every check (transition None when the
    state did not change); `on_change(key, transition)` after every state change, whether a
    check, draining, maintenance or registration caused it; `clock` gives `now` for the state
    machines (default: the loop's clock); `probe_fn` replaces the network probe (tests, or a
    DNS-side wrapper)."""

    def __init__(self, *, on_result: Callable[[K, ProbeResult, Transition | None], None]
                 | None = None,
                 on_change: Callable[[K, Transition], None] | None = None,
                 rng: random.Random | None = None,
                 clock: Callable[[], float] | None = None,
                 probe_fn: Callable[[ProbeSpec], Awaitable[ProbeResult]] | None = None,
                 deregistration_delay_s: float = 300.0, name: str = "health") -> None:
        self._entries: dict[K, _Entry[K]] = {}
        self._on_result = on_result
        self._on_change = on_change
        self._rng = rng or random.Random()
        self._clock = clock
        self._probe = probe_fn
        self._delay = deregistration_delay_s
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        # grid slot (loop time) -> the entries waiting in it, and the slot's one loop timer
        self._slots: dict[float, list[_Entry[K]]] = {}
        self._slot_timers: dict[float, asyncio.TimerHandle] = {}
        self.checks_run = 0

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        if self._loop is not None:
            return self._loop.time()
        return time.monotonic()  # what asyncio's loop clock is

    # -- registry ------------------------------------------------------------------------

    def add_target(self, key: K, check: Check, health: TargetHealth | None = None
                   ) -> TargetHealth:
        """Start checking `key` (replacing its check if already known; its health is kept)."""
        old = self._entries.get(key)
        if old is not None:
            self._cancel(old)
            health = health or old.health
        if health is None:
            health = TargetHealth(check.thresholds, self._now(), checks_enabled=check.enabled,
                                  deregistration_delay_s=self._delay)
        entry = _Entry(key, check, health)
        self._entries[key] = entry
        if self._loop is not None:
            self._schedule_first(entry)
        return health

    def remove_target(self, key: K) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._cancel(entry)

    def state_of(self, key: K) -> TargetHealth:
        return self._entries[key].health

    def next_check_at(self, key: K) -> float:
        """Loop time the current or next check of `key` was scheduled for."""
        return self._entries[key].next_at

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[K]:
        return list(self._entries)

    def check_soon(self, key: K) -> None:
        """Probe `key` now (e.g. after maintenance ends) instead of at its next turn."""
        entry = self._entries[key]
        if self._loop is not None and entry.task is None:
            if entry.timer is not None:
                entry.timer.cancel()
            entry.due = None
            entry.next_at = self._loop.time()
            entry.timer = self._loop.call_soon(self._fire, entry)

    # -- registration, draining, maintenance ---------------------------------------------

    def _emit(self, key: K, transition: Transition | None) -> None:
        if transition is None:
            return
        log.info("%s %s: %s -> %s (%s)", self._name, key, transition.old, transition.new,
                 transition.reason or "-")
        if self._on_change is not None:
            try:
                self._on_change(key, transition)
            except Exception:
                log.exception("health change callback failed for %s", key)

    def deregister(self, key: K, in_flight: int) -> Transition | None:
        """Start draining `key` (unused at once when nothing is in flight); its checks stop.
        The target stays known (state `draining`, then `unused`) until remove_target."""
        entry = self._entries[key]
        transition = entry.health.deregister(self._now(), in_flight)
        self._emit(key, transition)
        self._arm_drain(entry)
        return transition

    def register(self, key: K) -> Transition | None:
        """Take a draining or deregistered target back: it starts over as a new target."""
        entry = self._entries[key]
        transition = entry.health.register(self._now())
        self._disarm_drain(entry)
        self._emit(key, transition)
        if transition is not None:
            self.check_soon(key)
        return transition

    def set_maintenance(self, key: K, on: bool) -> Transition | None:
        entry = self._entries[key]
        transition = entry.health.set_maintenance(on, self._now())
        self._emit(key, transition)
        if transition is not None and not on:
            self.check_soon(key)
        return transition

    def in_flight_changed(self, key: K, in_flight: int) -> Transition | None:
        """The data plane's in-flight count for a draining target: at 0 draining ends."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        transition = entry.health.in_flight_changed(in_flight, self._now())
        if transition is not None:
            self._disarm_drain(entry)
            self._emit(key, transition)
        return transition

    def _arm_drain(self, entry: _Entry[K]) -> None:
        self._disarm_drain(entry)
        deadline = entry.health.next_deadline()
        if deadline is not None and self._loop is not None:
            # a delay, not call_at: the injected clock need not be the loop's
            entry.drain_timer = self._loop.call_later(max(0.0, deadline - self._now()),
                                                      self._drain_due, entry)

    def _disarm_drain(self, entry: _Entry[K]) -> None:
        if entry.drain_timer is not None:
            entry.drain_timer.cancel()
            entry.drain_timer = None

    def _drain_due(self, entry: _Entry[K]) -> None:
        entry.drain_timer = None
        if self._entries.get(entry.key) is not entry:
            return
        transition = entry.health.tick(self._now())
        self._emit(entry.key, transition)
        if transition is None:
            self._arm_drain(entry)  # the clocks disagreed by a hair: wait the rest

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for entry in self._entries.values():
            self._schedule_first(entry)
            self._arm_drain(entry)

    async def stop(self) -> None:
        tasks = [e.task for e in self._entries.values() if isinstance(e.task, asyncio.Task)]
        for entry in self._entries.values():
            self._cancel(entry)
        for handle in self._slot_timers.values():
            handle.cancel()
        self._slots.clear()
        self._slot_timers.clear()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._loop = None

    # -- scheduling ----------------------------------------------------------------------

    def _cancel(self, entry: _Entry[K]) -> None:
        self._disarm_drain(entry)
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        entry.due = None  # its slot skips it
        if entry.task is not None:
            entry.task.cancel()
            entry.task = None
        entry.slot.close()

    def _schedule_first(self, entry: _Entry[K]) -> None:
        assert self._loop is not None
        spread = min(entry.check.interval_s, FIRST_CHECK_SPREAD_S)
        entry.next_at = self._loop.time() + self._rng.random() * spread
        self._wait(entry)

    def _wait(self, entry: _Entry[K]) -> None:
        """Put `entry` in the grid slot at or after its next_at."""
        loop = self._loop
        assert loop is not None
        grid = entry.grid
        due = math.ceil(entry.next_at / grid) * grid if grid > 0 else entry.next_at
        entry.due = due
        waiting = self._slots.get(due)
        if waiting is None:
            self._slots[due] = [entry]
            self._slot_timers[due] = loop.call_at(due, self._slot_due, due)
        else:
            waiting.append(entry)

    def _slot_due(self, due: float) -> None:
        self._slot_timers.pop(due, None)
        for entry in self._slots.pop(due, ()):
            # skipped when cancelled, removed or moved since (check_soon, a new check)
            if entry.due == due and self._entries.get(entry.key) is entry:
                entry.due = None
                self._fire(entry)

    def _schedule_next(self, entry: _Entry[K]) -> None:
        loop = self._loop
        if loop is None or self._entries.get(entry.key) is not entry:
            return
        check = entry.check
        j = check.jitter
        step = check.interval_s * (1.0 + self._rng.uniform(-j, j)) if j else check.interval_s
        entry.next_at = max(entry.next_at + step, loop.time())
        self._wait(entry)

    def _fire(self, entry: _Entry[K]) -> None:
        entry.timer = None
        if not entry.health.probed:
            self._schedule_next(entry)
            return
        if self._probe is None:
            entry.task = start_probe(entry.check.spec, lambda r: self._done(entry, r),
                                     entry.slot)
        else:
            entry.task = spawn(self._run_custom(entry, self._probe), f"{self._name}-check")

    async def _run_custom(self, entry: _Entry[K],
                          fn: Callable[[ProbeSpec], Awaitable[ProbeResult]]) -> None:
        self._done(entry, await fn(entry.check.spec))

    def _done(self, entry: _Entry[K], result: ProbeResult) -> None:
        entry.task = None
        self.checks_run += 1
        if self._entries.get(entry.key) is not entry:
            return  # removed or replaced while probing
        transition = entry.health.observe(result.outcome, self._now(), result.detail)
        self._emit(entry.key, transition)
        if self._on_result is not None:
            try:
                self._on_result(entry.key, result, transition)
            except Exception:
                log.exception("health result callback failed for %s", entry.key)
        self._schedule_next(entry)
