"""The services that run once per daemon, beside the HTTP data plane: the admin API, the
demo backends, the bucket origin and the DNS server.

In a single process the Daemon owns them; with `--workers N` the control process does, so a
DNS answer or an S3 upload never depends on which worker the kernel picked. On reload a service
whose configuration did not change keeps running untouched; one that changed is stopped and
started again from the new configuration (a taken port fails the reload, and the old service is
started back).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping

from lbcdn.acme.manager import AcmeManager, Publish, Wanted, wanted
from lbcdn.admin.app import create_admin_app, start_admin
from lbcdn.admin.state import AdminState
from lbcdn.aiolistener import AppListener
from lbcdn.bucket.server import BucketServer
from lbcdn.config.schema import Config, DemoBackendConfig
from lbcdn.demo.backend import start_demo_backend
from lbcdn.dns.runtime import DnsRuntime, PoolHealth
from lbcdn.fdlimit import fit_caps, nofile
from lbcdn.refusal import REFUSING_MAX

log = logging.getLogger("lbcdn.control")


class ControlPlane:
    def __init__(self, state: AdminState, base_dir: str = ".",
                 pool_health: PoolHealth | None = None, edge: bool = False,
                 publish_acme: Publish | None = None) -> None:
        self.state = state
        # ACME certificates: the manager runs here; `publish_acme` installs its challenge
        # answers and certificates in every data-plane process (lbcdn.acme.manager)
        self.publish_acme = publish_acme
        self.acme: AcmeManager | None = None
        # the edge listeners run in this process too (one process): their connections share
        # its descriptors with these listeners' (see connection_caps)
        self.edge = edge
        self.base_dir = base_dir
        # the pools' health checks, which run beside this in the same process: DNS records
        # that follow a pool target answer by their states
        self.pool_health = pool_health
        self.config: Config | None = None
        self.admin: AppListener | None = None
        self.demo_servers: dict[DemoBackendConfig, asyncio.AbstractServer] = {}
        self.buckets: BucketServer | None = None
        self.dns: DnsRuntime | None = None

    async def start(self, config: Config) -> None:
        """Start everything, or raise (OSError: a port in use) with nothing left running."""
        log_lowered(config, nofile(), self.caps(config), edge=False)
        try:
            await self._sync_demo_backends(config)
            if config.buckets is not None:
                self.buckets = await _start_buckets(config, self.caps(config))
                log.info("bucket origin on %s", self.buckets.ports)
            if config.dns is not None:
                self.dns = self._dns(config)
                await self.dns.start()
            await self._sync_acme(config)
            await self._start_admin(config)
        except BaseException:
            await self.stop()
            raise
        self.config = config

    def caps(self, config: Config) -> dict[str, int]:
        return connection_caps(config, nofile(), control=True, edge=self.edge)

    def _dns(self, config: Config) -> DnsRuntime:
        assert config.dns is not None
        return DnsRuntime(config.dns, config.listeners, config.pools, base_dir=self.base_dir,
                          pool_health=self.pool_health, key_dir=config.admin.state_dir)

    async def _start_admin(self, config: Config) -> None:
        if config.admin.port:
            app = create_admin_app(self.state, config.admin.token, config.admin)
            self.admin = await start_admin(app, config.admin.address, config.admin.port,
                                           config.admin.limits,
                                           self.caps(config)["admin"])
            log.info("admin API on %s:%d", config.admin.address, self.admin.port)

    async def _sync_demo_backends(self, config: Config) -> None:
        wanted = set(config.demo_backends)
        for backend, server in list(self.demo_servers.items()):
            if backend not in wanted:
                server.close()
                del self.demo_servers[backend]
        for backend in config.demo_backends:
            if backend not in self.demo_servers:
                self.demo_servers[backend] = await start_demo_backend(
                    backend.address, backend.port, backend.name)
                log.info("demo backend %s on %s:%d", backend.name, backend.address,
                         backend.port)

    async def apply(self, config: Config) -> None:
        """Reload: restart what changed. Raises OSError when a new port cannot be bound."""
        old = self.config
        assert old is not None
        await self._sync_demo_backends(config)
        if config.buckets != old.buckets:
            if self.buckets is not None:
                await self.buckets.stop()
                self.buckets = None
            if config.buckets is not None:
                self.buckets = await _start_buckets(config, self.caps(config))
        if (config.dns, config.listeners, config.pools) != (old.dns, old.listeners, old.pools):
            fresh = self._dns(config) if config.dns is not None else None  # may raise
            if self.dns is not None:
                await self.dns.stop()
            self.dns = fresh
            if fresh is not None:
                await fresh.start()
        await self._sync_acme(config)
        self.config = config
        if config.admin != old.admin:
            # after this request's answer: the reload may have come through the admin API
            asyncio.get_running_loop().call_later(
                0.1, lambda: asyncio.ensure_future(self._restart_admin(config)))

    async def _restart_admin(self, config: Config) -> None:
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
        await self._start_admin(config)

    async def _sync_acme(self, config: Config) -> None:
        """Start, reconfigure or stop the ACME manager (after DNS: dns-01 needs it)."""
        asked = acme_wanted(config)
        on_demand = {lc.name: (lc.tls.on_demand, lc.port) for lc in config.listeners
                     if lc.tls is not None and lc.tls.on_demand is not None}
        if not (asked or on_demand) or config.admin.state_dir is None or \
                self.publish_acme is None:
            if self.acme is not None:
                await self.acme.stop()
                self.acme = None
            return
        if self.acme is None:
            self.acme = AcmeManager(config.admin.state_dir, self.publish_acme,
                                    lambda: self.dns.engine if self.dns is not None else None)
        await self.acme.apply(asked, on_demand)
        if self.config is not None:  # a reload: the listeners are up already
            self.acme.run()

    async def acme_demand(self, listener: str, name: str) -> str | None:
        """A handshake asks for a certificate on demand (lbcdn.acme.manager.demand)."""
        if self.acme is None:
            return "no ACME certificates are managed here"
        return await self.acme.demand(listener, name)

    def run_acme(self) -> None:
        """Start issuing and renewing: called once the edge listeners are up."""
        if self.acme is not None:
            self.acme.run()

    async def stop(self) -> None:
        if self.acme is not None:
            await self.acme.stop()
            self.acme = None
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
        if self.dns is not None:
            await self.dns.stop()
            self.dns = None
        if self.buckets is not None:
            await self.buckets.stop()
            self.buckets = None
        for server in self.demo_servers.values():
            server.close()
        self.demo_servers.clear()

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.buckets is not None:
            out["buckets"] = self.buckets.ports
        if self.dns is not None:
            out["dns"] = self.dns.describe()
        return out


# Descriptors one connection may hold: its socket; on the bucket listeners also the object
# file it reads and the socket's duplicate that sendfile writes through; on an edge listener
# also the upstream connection it may be forwarding to (cache files: in the reserve).
_FDS_ADMIN = 1
_FDS_BUCKETS = 3
_FDS_EDGE = 2
_EDGE_UNSET = 1_000_000   # an edge listener's max_connections unset: what the limit holds
EDGE = "edge "   # an edge listener's key among the caps: EDGE + its name


def _configured_caps(config: Config, control: bool, edge: bool) -> dict[str, tuple[int, int]]:
    """The max_connections of the control listeners and/or the edge listeners, and the
    descriptors one connection may hold."""
    wanted: dict[str, tuple[int, int]] = {}
    if control:
        wanted["admin"] = (config.admin.limits.max_connections, _FDS_ADMIN)
        if config.buckets is not None:
            wanted["s3"] = (config.buckets.limits.max_connections, _FDS_BUCKETS)
            if config.buckets.website_port is not None:
                wanted["website"] = (config.buckets.limits.max_connections, _FDS_BUCKETS)
    if edge:
        for lc in config.listeners:
            cap = _EDGE_UNSET if lc.max_connections is None else lc.max_connections
            wanted[EDGE + lc.name] = (cap, _FDS_EDGE)
    return wanted


def connection_caps(config: Config, limit: int, control: bool, edge: bool) -> dict[str, int]:
    """The connection cap of each listener in a process: the control listeners ("admin", "s3",
    "website") when `control`, the edge listeners (EDGE + name) when `edge`; as configured,
    or lower when their descriptors (with those of the connections being refused) would not
    fit under the descriptor limit `limit` with room left for health checks, DNS and files."""
    return fit_caps(_configured_caps(config, control, edge), limit, REFUSING_MAX)


def log_lowered(config: Config, limit: int, caps: Mapping[str, int], edge: bool) -> None:
    """A warning for each edge listener (`edge`) or control listener (not `edge`) in `caps`
    (connection_caps under `limit`) whose cap is lower than configured; an edge listener's
    cap that is unset, sized from the limit, is said at INFO."""
    configured = _configured_caps(config, control=True, edge=True)
    unset = {EDGE + lc.name for lc in config.listeners if lc.max_connections is None}
    for name, cap in caps.items():
        if name.startswith(EDGE) != edge:
            continue
        label = f"listener {name[len(EDGE):]}" if edge else f"{name} listener"
        if name in unset:
            log.info("%s: max_connections %d (what the file descriptor limit, %d, holds)",
                     label, cap, limit)
        elif cap < configured[name][0]:
            log.warning("%s: max_connections lowered from %d to %d to fit the file "
                        "descriptor limit (%d)", label, configured[name][0], cap, limit)


async def _start_buckets(config: Config, caps: dict[str, int]) -> BucketServer:
    assert config.buckets is not None
    server = BucketServer(config.buckets)
    try:
        await server.start(caps)
    except OSError as exc:
        b = config.buckets
        raise OSError(exc.errno, f"bucket origin (buckets.port {b.port}, website_port "
                                 f"{b.website_port}): {exc.strerror or exc}") from None
    return server


def acme_wanted(config: Config) -> list[Wanted]:
    """The ACME certificates `config` asks for; dns-01 is the default where our own DNS
    serves the name (lbcdn.acme.plan.default_challenge)."""
    zones = [z.name.lower().rstrip(".") for z in config.dns.zones] if config.dns else []

    def authoritative(name: str) -> bool:
        name = name.lower().rstrip(".")
        return any(name == z or name.endswith("." + z) for z in zones)
    return wanted([(lc.name, lc.port, lc.tls.acme) for lc in config.listeners
                   if lc.tls is not None and lc.tls.acme], authoritative)


def config_dir(path: str | os.PathLike[str] | None) -> str:
    """Relative file names in the config (zone files) are relative to its directory."""
    return os.path.dirname(os.path.abspath(path)) if path is not None else "."
