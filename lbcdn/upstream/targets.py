"""The control plane of pools: which targets each pool has, their health, and the changes made
to them through the admin API or found in DNS.

Job: `TargetsControl` runs once per daemon (in the single process, or in the control process
with workers). Per pool it keeps the target set (config targets, minus those deregistered
through the API, plus those registered through it, plus those DNS discovery finds), runs the
active health checks (lbcdn.health.checker) with ALB states and reasons, and publishes a snapshot
(every target's host, port, weight, state and reason) through `publish(pool, snapshot)` after
every change. The data plane (lbcdn.upstream.pool.Pool.apply) balances over what it is told.

Rules:
- The config file stays the base; API changes are kept in `admin.state_dir`/targets.json
  (written atomically on every change) and applied over it at start and on reload.
- Deregistering (API, a target gone from DNS or from the config on reload) drains: state
  `draining` with Target.DeregistrationInProgress, no new requests, `unused` at the pool's
  deregistration_delay_s or as soon as every data plane reports nothing in flight (`drained`).
  Targets that are gone for good (DNS, config) are then forgotten; API-deregistered ones stay
  listed as `unused` until the daemon restarts or they are registered again.
- Registering a draining or unused target takes it back: it starts over as a new target
  (`initial`, traffic only after its first passing check).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from lbcdn.atomicfile import write_atomic
from lbcdn.upstream.config import PoolConfig
from lbcdn.health.checker import Check, HealthChecker
from lbcdn.health.prober import ProbeResult, ProbeSpec
from lbcdn.health.state import State, Transition
from lbcdn.metrics import health_check_metrics, set_target_health
from lbcdn.upstream.discovery import Discovery, Found, Resolver, system_resolver
from lbcdn.upstream.pool import target_key

log: Final = logging.getLogger("lbcdn.targets")

Snapshot = list[dict[str, Any]]
Publish = Callable[[str, Snapshot], None]
ProbeFn = Callable[[ProbeSpec], Awaitable[ProbeResult]]


class TargetError(Exception):
    """An admin request that cannot be done; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# -- what survives a restart ---------------------------------------------------------------

@dataclass
class PoolOverrides:
    """The API's changes to one pool, over its config."""
    added: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> host, port, weight
    removed: set[str] = field(default_factory=set)                   # config targets taken out
    weights: dict[str, int] = field(default_factory=dict)
    maintenance: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {"added": self.added, "removed": sorted(self.removed), "weights": self.weights,
                "maintenance": sorted(self.maintenance)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PoolOverrides:
        return cls(dict(data.get("added", {})), set(data.get("removed", ())),
                   {k: int(v) for k, v in data.get("weights", {}).items()},
                   set(data.get("maintenance", ())))


class StateStore:
    """`<state_dir>/targets.json`: every pool's overrides, rewritten whole (write to a temporary
    file, fsync, rename), so a crash leaves either the old file or the new one."""

    def __init__(self, state_dir: str | None) -> None:
        self.path = None if state_dir is None else os.path.join(state_dir, "targets.json")

    def load(self) -> dict[str, PoolOverrides]:
        if self.path is None or not os.path.exists(self.path):
            return {}
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            return {name: PoolOverrides.from_json(body)
                    for name, body in data.get("pools", {}).items()}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("ignoring unreadable target state %s: %s", self.path, exc)
            return {}

    def save(self, overrides: dict[str, PoolOverrides]) -> None:
        if self.path is None:
            return
        body = {"version": 1, "pools": {n: o.to_json() for n, o in sorted(overrides.items())
                                        if o.added or o.removed or o.weights or o.maintenance}}
        write_atomic(self.path, json.dumps(body, indent=1, sort_keys=True),
                     prefix=".targets.")


# -- one pool ------------------------------------------------------------------------------

class _Target:
    __slots__ = ("key", "host", "port", "weight", "origins", "gone")

    def __init__(self, host: str, port: int, weight: int) -> None:
        self.key = target_key(host, port)
        self.host = host
        self.port = port
        self.weight = weight
        self.origins: set[str] = set()   # config | api | dns
        self.gone = False                # forget it once unused (not API-deregistered)


class PoolTargets:
    def __init__(self, config: PoolConfig, overrides: PoolOverrides, *,
                 on_change: Callable[[PoolTargets], None], save: Callable[[], None],
                 resolver: Resolver = system_resolver, probe_fn: ProbeFn | None = None
                 ) -> None:
        self.config = config
        self.name = config.name
        self._check_metrics = health_check_metrics(config.name)
        self.overrides = overrides
        self._on_change = on_change
        self._save = save
        self.targets: dict[str, _Target] = {}
        self.checker: HealthChecker[str] = HealthChecker(
            on_result=self._checked, on_change=self._changed,
            deregistration_delay_s=config.deregistration_delay_s, name=f"pool {config.name}",
            probe_fn=probe_fn)
        self.discovered: Found = frozenset()
        self.discovery = (None if config.discovery is None else
                          Discovery(config.discovery, self._found, resolver=resolver,
                                    name=config.name))
        # which data planes said a draining target has nothing in flight
        self._drained: dict[str, set[object]] = {}
        self.data_planes: Callable[[], int] = lambda: 1
        self._quiet = True   # no publishing while (re)building
        self._sync()
        self._quiet = False

    # -- the target set ------------------------------------------------------------------
    def _wanted(self) -> dict[str, tuple[str, int, int, set[str]]]:
        o = self.overrides
        out: dict[str, tuple[str, int, int, set[str]]] = {}

        def want(host: str, port: int, weight: int, origin: str) -> None:
            key = target_key(host, port)
            prev = out.get(key)
            origins = (prev[3] if prev else set()) | {origin}
            out[key] = (host, port, weight if prev is None else prev[2], origins)

        for t in self.config.targets:
            if target_key(t.host, t.port) not in o.removed:
                want(t.host, t.port, t.weight, "config")
        for body in o.added.values():
            want(str(body["host"]), int(body["port"]), int(body.get("weight", 1)), "api")
        for host, port, weight in sorted(self.discovered):
            if target_key(host, port) not in o.removed:
                want(host, port, weight, "dns")
        for key in list(out):
            if key in o.weights:
                h, p, _, origins = out[key]
                out[key] = (h, p, o.weights[key], origins)
        return out

    def _check_for(self, t: _Target) -> Check:
        return Check.for_target(self.config.health, t.host, t.port,
                                self.config.proxy_protocol, self.config.tls is not None)

    def _sync(self) -> None:
        """Bring the checker in line with the wanted set: new targets start `initial`, gone
        ones drain, returning ones start over."""
        wanted = self._wanted()
        checker = self.checker
        for key, (host, port, weight, origins) in wanted.items():
            t = self.targets.get(key)
            if t is None:
                t = self.targets[key] = _Target(host, port, weight)
                # its series from the start: `initial`, or `unavailable` without health checks
                # (a state no transition ever reaches for a target that starts in it)
                set_target_health(self.name, key, str(checker.add_target(
                    key, self._check_for(t)).state))
            t.weight = weight
            t.origins = origins
            t.gone = False
            health = checker.state_of(key)
            if health.state in (State.DRAINING, State.UNUSED) and not health.in_maintenance:
                checker.register(key)
            on = key in self.overrides.maintenance
            if on != health.in_maintenance:
                checker.set_maintenance(key, on)
        for key, t in list(self.targets.items()):
            if key in wanted:
                continue
            api_removed = key in self.overrides.removed or not t.origins - {"api"}
            t.origins = set()
            t.gone = not api_removed
            state = checker.state_of(key).state
            if state is State.UNUSED:
                if t.gone:
                    self._forget(key)
            elif state is not State.DRAINING:
                checker.deregister(key, 1)  # every data plane reports when it is drained
        self._publish()

    def _forget(self, key: str) -> None:
        self.checker.remove_target(key)
        self.targets.pop(key, None)
        self._drained.pop(key, None)
        set_target_health(self.name, key, None)

    def update_config(self, config: PoolConfig) -> None:
        """A reload: the same pool with a new config. Health is kept for targets that stay."""
        old = self.config
        self.config = config
        if config.health != old.health:
            for key, t in self.targets.items():
                self.checker.add_target(key, self._check_for(t))  # keeps its TargetHealth
        self.checker._delay = config.deregistration_delay_s
        if config.discovery != old.discovery:
            self.discovered = frozenset()
            self.discovery = (None if config.discovery is None else
                              Discovery(config.discovery, self._found,
                                        resolver=old_resolver(self.discovery), name=self.name))
        self._sync()

    def _found(self, found: Found) -> None:
        self.discovered = found
        log.info("pool %s: discovery found %d targets", self.name, len(found))
        self._sync()

    # -- health events -------------------------------------------------------------------
    def _checked(self, key: str, result: ProbeResult, transition: Transition | None) -> None:
        self._check_metrics.observe(str(result.outcome), result.latency_s)

    def _changed(self, key: str, transition: Transition) -> None:
        set_target_health(self.name, key, str(transition.new))
        t = self.targets.get(key)
        if transition.new is not State.DRAINING:
            self._drained.pop(key, None)
        if transition.new is State.UNUSED and t is not None and t.gone:
            self._forget(key)
        self._publish()

    def drained(self, key: str, source: object = None) -> None:
        """A data plane has nothing in flight to draining target `key`."""
        if key not in self.targets or self.checker.state_of(key).state is not State.DRAINING:
            return
        seen = self._drained.setdefault(key, set())
        seen.add(source)
        if len(seen) >= self.data_planes():
            self.checker.in_flight_changed(key, 0)

    def _publish(self) -> None:
        if not self._quiet:
            self._on_change(self)

    def snapshot(self) -> Snapshot:
        out: Snapshot = []
        for key, t in self.targets.items():
            h = self.checker.state_of(key)
            out.append({"host": t.host, "port": t.port, "weight": t.weight,
                        "state": str(h.state),
                        "reason": None if h.reason is None else str(h.reason)})
        return out

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for key, t in self.targets.items():
            h = self.checker.state_of(key)
            out.append({"target": key, "host": t.host, "port": t.port, "weight": t.weight,
                        "state": str(h.state),
                        "reason": None if h.reason is None else str(h.reason),
                        "classic": h.classic, "detail": h.detail,
                        "maintenance": h.in_maintenance, "origins": sorted(t.origins),
                        "last_check": None if h.last_outcome is None else str(h.last_outcome)})
        return out

    # -- admin operations ----------------------------------------------------------------
    def _known(self, key: str) -> _Target:
        t = self.targets.get(key)
        if t is None:
            raise TargetError(404, f"pool {self.name} has no target {key}")
        return t

    def register(self, host: str, port: int, weight: int = 1) -> str:
        if not 1 <= port <= 65535 or not 0 <= weight <= 1000 or not host:
            raise TargetError(400, "need host, port 1-65535 and weight 0-1000")
        key = target_key(host, port)
        o = self.overrides
        o.removed.discard(key)
        in_config = any(target_key(t.host, t.port) == key for t in self.config.targets)
        if not in_config:
            o.added[key] = {"host": host, "port": port, "weight": weight}
        if in_config or weight != 1:
            o.weights[key] = weight
        self._save()
        self._sync()
        return key

    def deregister(self, key: str) -> None:
        t = self._known(key)
        o = self.overrides
        o.added.pop(key, None)
        o.weights.pop(key, None)
        o.maintenance.discard(key)
        if "config" in t.origins or "dns" in t.origins:
            o.removed.add(key)
        self._save()
        self._sync()

    def set_weight(self, key: str, weight: int) -> None:
        self._known(key)
        if not 0 <= weight <= 1000:
            raise TargetError(400, "weight must be 0-1000")
        self.overrides.weights[key] = weight
        if key in self.overrides.added:
            self.overrides.added[key]["weight"] = weight
        self._save()
        self._sync()

    def set_maintenance(self, key: str, on: bool) -> None:
        self._known(key)
        if on:
            self.overrides.maintenance.add(key)
        else:
            self.overrides.maintenance.discard(key)
        self._save()
        self._sync()

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        await self.checker.start()
        if self.discovery is not None:
            self.discovery.start()

    async def stop(self) -> None:
        if self.discovery is not None:
            await self.discovery.stop()
        await self.checker.stop()
        for key in self.targets:
            set_target_health(self.name, key, None)


def old_resolver(discovery: Discovery | None) -> Resolver:
    return discovery.resolver if discovery is not None else system_resolver


# -- every pool ----------------------------------------------------------------------------

class TargetsControl:
    """All pools' target sets and health checks. `publish(pool, snapshot)` tells the data
    plane(s); `stats(pool)` reads live per-target numbers from them (in-flight, latency, error
    rate) for the API and the status page."""

    def __init__(self, publish: Publish, *, state_dir: str | None = None,
                 resolver: Resolver = system_resolver,
                 stats: Callable[[str], dict[str, dict[str, Any]]] | None = None,
                 data_planes: Callable[[], int] = lambda: 1,
                 probe_fn: ProbeFn | None = None) -> None:
        self.probe_fn = probe_fn  # tests: replaces the network probe
        self.publish = publish
        self.store = StateStore(state_dir)
        self.resolver = resolver
        self.stats = stats or (lambda pool: {})
        self.data_planes = data_planes
        self.overrides: dict[str, PoolOverrides] = {}
        self.pools: dict[str, PoolTargets] = {}
        self.started = False
        # bumps on every change of a target set or state: readers in this process that keep
        # answers derived from the states (the DNS engine) know when to drop them
        self.generation = 0

    def _pool_changed(self, pool: PoolTargets) -> None:
        self.generation += 1
        if self.pools.get(pool.name) is pool:
            self.publish(pool.name, pool.snapshot())

    def _save(self) -> None:
        try:
            self.store.save(self.overrides)
        except OSError as exc:
            raise TargetError(500, f"could not save the target state: {exc}") from exc

    def _build(self, config: PoolConfig) -> PoolTargets:
        overrides = self.overrides.setdefault(config.name, PoolOverrides())
        pool = PoolTargets(config, overrides, on_change=self._pool_changed, save=self._save,
                           resolver=self.resolver, probe_fn=self.probe_fn)
        pool.data_planes = self.data_planes
        return pool

    async def start(self, pools: dict[str, PoolConfig]) -> None:
        self.overrides = self.store.load()
        self.pools = {name: self._build(pc) for name, pc in pools.items()}
        for pool in self.pools.values():
            await pool.start()
        self.started = True
        self.publish_all()

    def publish_all(self) -> None:
        """Send every pool's snapshot (after a reload built new data-plane pools, or to a
        worker that just started)."""
        self.generation += 1
        for pool in self.pools.values():
            self.publish(pool.name, pool.snapshot())

    async def apply(self, pools: dict[str, PoolConfig]) -> None:
        for name in list(self.pools):
            if name not in pools:
                await self.pools.pop(name).stop()
        for name, pc in pools.items():
            pool = self.pools.get(name)
            if pool is None:
                pool = self.pools[name] = self._build(pc)
                if self.started:
                    await pool.start()
            elif pool.config != pc:
                had_discovery = pool.discovery
                pool.update_config(pc)
                if pool.discovery is not had_discovery:
                    if had_discovery is not None:
                        await had_discovery.stop()
                    if pool.discovery is not None and self.started:
                        pool.discovery.start()
        self.publish_all()

    async def stop(self) -> None:
        for pool in self.pools.values():
            await pool.stop()
        self.started = False

    def pool(self, name: str) -> PoolTargets:
        pool = self.pools.get(name)
        if pool is None:
            raise TargetError(404, f"no pool named {name}")
        return pool

    def drained(self, pool: str, key: str, source: object = None) -> None:
        p = self.pools.get(pool)
        if p is not None:
            p.drained(key, source)

    # -- views ---------------------------------------------------------------------------
    def target_healthy(self, pool: str, key: str) -> bool | None:
        """Whether the balancer may send `pool`'s target `key` traffic now (healthy, or
        unchecked): what DNS records that follow a pool target answer by. None when the pool
        has no such target."""
        p = self.pools.get(pool)
        if p is None or key not in p.targets:
            return None
        return p.checker.state_of(key).serving

    def describe_pool(self, name: str) -> dict[str, Any]:
        pool = self.pool(name)
        live = self.stats(name)
        targets = []
        for row in pool.describe():
            row.update({"ejected": False, "in_flight": 0, "requests": 0, "error_rate": 0.0,
                        "latency_s": None, "requests_per_s": 0.0})
            row.update(live.get(row["target"], {}))
            targets.append(row)
        cfg = pool.config
        return {"name": name, "algorithm": cfg.balance.algorithm,
                "health_check": {"enabled": cfg.health.enabled,
                                 "protocol": cfg.health.protocol, "path": cfg.health.path,
                                 "interval_s": cfg.health.interval_s},
                "fail_open": cfg.fail_open,
                "discovery": None if pool.discovery is None else {
                    "dns_name": pool.discovery.config.dns_name,
                    "lookups": pool.discovery.lookups,
                    "error": pool.discovery.last_error},
                "targets": targets}

    def describe(self) -> list[dict[str, Any]]:
        return [self.describe_pool(name) for name in self.pools]


def stats_of(pools: Iterable[Any], name: str) -> dict[str, dict[str, Any]]:
    """Live numbers from this process's data-plane pools (lbcdn.upstream.pool.Pool)."""
    for pool in pools:
        if pool.name == name:
            out: dict[str, dict[str, Any]] = {}
            for row in pool.details()["targets"]:
                out[row["target"]] = {k: row[k] for k in (
                    "ejected", "in_flight", "requests", "errors", "error_rate", "latency_s",
                    "requests_per_s", "open_connections", "idle_connections")}
            return out
    return {}
