"""The DNS component at run time: zones and engine built from the config, Route 53 health
checks on the shared prober, and the UDP/TCP servers.

A reload builds a new engine and hands it to the running servers (the sockets stay open); the
health checks are rebuilt only when their configuration changed, so their state survives
reloads. Changes made through the admin API are kept in `dns.state_dir` and replayed on top of
the configuration at start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from lbcdn.dns.alias import aliases_from_config
from lbcdn.dns.changes import JsonChangeStore, MemoryStore
from lbcdn.dns.config import DnsConfig
from lbcdn.dns.engine import Engine
from lbcdn.dns.server import DnsServer, servers_from_config
from lbcdn.dns.zone import build_zones
from lbcdn.health.checker import Check, HealthChecker

log = logging.getLogger("lbcdn.dns")


class _Health:
    """The engine's HealthView over the Route 53 checks (and, for `pool/...` ids, the pools'
    target health when the daemon provides it). `generation` bumps on every change so the
    engine drops its prepared answers."""

    def __init__(self, pool_health: Callable[[str], bool | None] | None) -> None:
        self.checker: HealthChecker[str] = HealthChecker(on_change=self._changed, name="dns")
        self.generation = 0
        self._pool_health = pool_health

    def _changed(self, key: str, transition: object) -> None:
        self.generation += 1

    def is_healthy(self, check_id: str) -> bool:
        if check_id.startswith("pool/"):
            known = self._pool_health(check_id) if self._pool_health is not None else None
            return True if known is None else known
        try:
            return self.checker.state_of(check_id).serving
        except KeyError:
            return True  # an unknown check fails open, as Route 53 treats a deleted one


class DnsRuntime:
    def __init__(self, config: DnsConfig, listeners: object, pools: object, *,
                 base_dir: str = ".",
                 pool_health: Callable[[str], bool | None] | None = None) -> None:
        self.config = config
        self.health = _Health(pool_health)
        for hc in config.health_checks:
            port = hc.port or (443 if hc.protocol == "https" else 80)
            self.health.checker.add_target(hc.id, Check.route53(
                protocol=hc.protocol, address=hc.host, port=port, path=hc.path,
                search_string=hc.search_string, request_interval_s=hc.interval_s,
                failure_threshold=hc.failure_threshold, timeout_s=hc.timeout_s))
        aliases = aliases_from_config(listeners, pools, config.public_addresses)  # type: ignore[arg-type]
        store = JsonChangeStore(config.state_dir) if config.state_dir else MemoryStore()
        self.engine = Engine(build_zones(config, now=time.time(), aliases=aliases,
                                         base_dir=base_dir),
                             self.health, store=store, aliases=aliases)
        for problem in self.engine.restore_problems:
            log.warning("dns: saved change not applied: %s", problem)
        self.servers: list[DnsServer] = servers_from_config(config, self.engine)

    async def start(self) -> None:
        await self.health.checker.start()
        for server in self.servers:
            await server.start()
            log.info("dns on %s:%d (udp+tcp)", server.address, server.udp_port)

    async def stop(self) -> None:
        for server in reversed(self.servers):
            await server.stop()
        await self.health.checker.stop()

    def describe(self) -> dict[str, object]:
        return {"zones": [z.name for z in self.config.zones],
                "listeners": [{"address": s.address, "port": s.udp_port} for s in self.servers],
                "version": self.engine.version}
