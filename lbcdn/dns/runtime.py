"""The DNS component at run time: zones and engine built from the config, Route 53 health
checks on the shared prober, and the UDP/TCP servers.

A reload builds a new engine and hands it to the running servers (the sockets stay open); the
health checks are rebuilt only when their configuration changed, so their state survives
reloads. Changes made through the admin API are kept in `dns.state_dir` and replayed on top of
the configuration at start.

Pool health: a record set that follows a pool target (`health_check: pool/NAME/HOST:PORT`, or an
alias to a pool with `evaluate_target_health`) reads the state the pools' health checks keep
(`PoolHealth`: lbcdn.upstream.targets.TargetsControl), the one the balancer is given. It runs in
the process that runs DNS, in one process and in the workers' control process alike; DNS keeps
no pool state of its own.

Calculated checks (Route 53's): healthy while at least `health_threshold` of their children
are (all: AND, 1: OR), read from the children's current states on every question, so they
change with them and need no state of their own; `invert` turns any check's result around
(an unknown child fails open before its parent inverts it, as Route 53 treats a deleted one).

Scheduled key rollovers (`dnssec.rollover`): checked every second (lbcdn.dns.keys.rollover_step)
against the keys' ages, the finish waiting for the zone's largest TTL as it is then (the DNSKEY
set's included) plus the propagation delay and the DS wait; the steps are the admin API's
(Engine.roll_keys), logged with the DS to put at the parent.

Location data: the CIDR collections and the `.mmdb` location database are loaded here and
handed to the engine (lbcdn.dns.locate); a database that cannot be read stops the start
with its path named.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Protocol

from lbcdn.dns.alias import aliases_from_config, parse_pool_check
from lbcdn.dns.changes import JsonChangeStore, MemoryStore
from lbcdn.dns.config import DnsConfig, nsid_bytes
from lbcdn.dns.dnssec import Signer
from lbcdn.dns.engine import Engine
from lbcdn.dns.keys import (ALGORITHMS, DnssecKeyError, key_path, key_rows, load_or_create,
                            rollover_step, saved_serial)
from lbcdn.dns.names import Name
from lbcdn.dns.locate import CidrCollection, open_location_database
from lbcdn.dns.server import DnsServer, servers_from_config
from lbcdn.dns.tsig import build_keys
from lbcdn.dns.zone import build_zones, zone_origin
from lbcdn.tasks import spawn
from lbcdn.health.checker import Check, HealthChecker

log = logging.getLogger("lbcdn.dns")


class PoolHealth(Protocol):
    """The pools' target health (lbcdn.upstream.targets.TargetsControl)."""

    @property
    def generation(self) -> int:
        """Bumps on every change of a target's state."""
        ...

    def target_healthy(self, pool: str, key: str) -> bool | None:
        """None: the pool has no such target."""
        ...


class _Health:
    """The engine's HealthView over the Route 53 checks and, for `pool/...` ids, the pools'
    target health. `generation` changes on every change of either, so the engine drops its
    prepared answers."""

    def __init__(self, pools: PoolHealth | None,
                 calculated: Mapping[str, tuple[tuple[str, ...], int]] | None = None,
                 inverted: frozenset[str] = frozenset()) -> None:
        self.checker: HealthChecker[str] = HealthChecker(on_change=self._changed, name="dns")
        self._own = 0
        self._pools = pools
        self._calculated = dict(calculated or {})   # id -> (children, threshold)
        self._inverted = inverted

    def _changed(self, key: str, transition: object) -> None:
        self._own += 1

    @property
    def generation(self) -> int:
        # both only grow, so their sum changes whenever either does (read on every query)
        return self._own + (self._pools.generation if self._pools is not None else 0)

    def is_healthy(self, check_id: str) -> bool:
        found = self._found(check_id)
        return not found if check_id in self._inverted else found

    def _found(self, check_id: str) -> bool:
        calculated = self._calculated.get(check_id)
        if calculated is not None:
            children, threshold = calculated
            return sum(self.is_healthy(c) for c in children) >= threshold
        pool_target = parse_pool_check(check_id)
        if pool_target is not None:
            known = (self._pools.target_healthy(*pool_target) if self._pools is not None
                     else None)
            return True if known is None else known  # a target the pool lacks fails open
        try:
            return self.checker.state_of(check_id).serving
        except KeyError:
            return True  # an unknown check fails open, as Route 53 treats a deleted one


def signers_from_config(config: DnsConfig, key_dir: str | None) -> dict[Name, Signer]:
    """A signer per zone with `dnssec.enabled`, its keys read from (or made in) `key_dir`
    (admin.state_dir: the config check requires it for a signed zone)."""
    out: dict[Name, Signer] = {}
    for zc in config.zones:
        if not zc.dnssec.enabled:
            continue
        if key_dir is None:
            raise ValueError(f"zone {zc.name}: DNSSEC needs admin.state_dir for its keys")
        origin = zone_origin(zc.name)
        algorithm = ALGORITHMS[zc.dnssec.algorithm]
        out[origin] = Signer(origin, load_or_create(key_dir, origin, algorithm),
                             dnskey_ttl=zc.dnssec.dnskey_ttl_s, algorithm=algorithm,
                             key_file=key_path(key_dir, origin),
                             serial=saved_serial(key_dir, origin))
    return out


class DnsRuntime:
    def __init__(self, config: DnsConfig, listeners: object, pools: object, *,
                 base_dir: str = ".", pool_health: PoolHealth | None = None,
                 key_dir: str | None = None) -> None:
        self.config = config
        self.health = _Health(
            pool_health,
            {hc.id: (hc.child_health_checks, len(hc.child_health_checks)
                     if hc.health_threshold is None else hc.health_threshold)
             for hc in config.health_checks if hc.protocol == "calculated"},
            frozenset(hc.id for hc in config.health_checks if hc.invert))
        for hc in config.health_checks:
            if hc.protocol == "calculated":
                continue
            assert hc.host is not None   # the config check requires it
            port = hc.port or (443 if hc.protocol == "https" else 80)
            self.health.checker.add_target(hc.id, Check.route53(
                protocol=hc.protocol, address=hc.host, port=port, path=hc.path,
                search_string=hc.search_string, request_interval_s=hc.interval_s,
                failure_threshold=hc.failure_threshold, timeout_s=hc.timeout_s))
        aliases = aliases_from_config(listeners, pools, config.public_addresses)  # type: ignore[arg-type]
        store = JsonChangeStore(config.state_dir) if config.state_dir else MemoryStore()
        keys = build_keys(config.tsig_keys, base_dir)
        self.engine = Engine(build_zones(config, now=time.time(), aliases=aliases,
                                         base_dir=base_dir),
                             self.health, store=store, aliases=aliases, tsig_keys=keys,
                             nsid=nsid_bytes(config.nsid) if config.nsid else b"",
                             signers=signers_from_config(config, key_dir),
                             cidr_collections=[
                                 CidrCollection(c.name, {loc.name: loc.cidrs
                                                         for loc in c.locations})
                                 for c in config.cidr_collections],
                             geo=open_location_database(config.location_database, base_dir))
        self._tasks: list[asyncio.Task[None]] = []
        for problem in self.engine.restore_problems:
            log.warning("dns: saved change not applied: %s", problem)
        self.servers: list[DnsServer] = servers_from_config(config, self.engine, tsig_keys=keys)

    async def start(self) -> None:
        await self.health.checker.start()
        if any(z.dnssec.enabled for z in self.config.zones):
            self._tasks.append(spawn(self._refresh_signatures(), "dns-signatures"))
        if any(z.dnssec.enabled and z.dnssec.rollover for z in self.config.zones):
            self._tasks.append(spawn(self._roll_on_schedule(), "dns-rollovers"))
        for server in self.servers:
            await server.start()
            log.info("dns on %s:%d (udp+tcp)", server.address, server.udp_port)

    async def _refresh_signatures(self) -> None:
        while True:
            await asyncio.sleep(60)
            self.engine.refresh_signatures()

    async def _roll_on_schedule(self) -> None:
        while True:
            await asyncio.sleep(1)
            self.roll_due(time.time())

    def roll_due(self, now: float) -> None:
        """Take every scheduled rollover step due at `now`."""
        for zc in self.config.zones:
            rc = zc.dnssec.rollover
            signer = self.engine.signer(zc.name) if zc.dnssec.enabled else None
            if rc is None or signer is None:
                continue
            zone = self.engine.zone_for(zc.name)
            assert zone is not None   # served: signer() raises KeyError otherwise
            wait_s = (rc.propagation_delay_s + max(rs.ttl for rs in zone.record_sets())
                      + rc.ds_wait_s)
            step = rollover_step(signer.keys, now, rc.csk_lifetime_s, wait_s)
            if step is None:
                continue
            try:
                keys = self.engine.roll_keys(zc.name, step, now)
            except (DnssecKeyError, OSError) as e:
                log.error("dns: scheduled key rollover of %s (%s) failed: %s", zc.name, step, e)
                continue
            if step == "start":
                log.warning("dns: %s: key rollover started; put this DS at the parent within "
                            "%d s (the old key is dropped then): %s", zc.name,
                            wait_s, key_rows(signer.origin, keys[1:])[0]["ds"])
            else:
                log.warning("dns: %s: key rollover finished; the DS of the old key may go: "
                            "the parent needs only %s", zc.name,
                            key_rows(signer.origin, keys)[0]["ds"])

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        for server in reversed(self.servers):
            await server.stop()
        await self.health.checker.stop()

    def describe(self) -> dict[str, object]:
        return {"zones": [z.name for z in self.config.zones],
                "listeners": [{"address": s.address, "port": s.udp_port} for s in self.servers],
                "version": self.engine.version}
