"""Builds the runtime from a Config, starts components in order, swaps it on reload, and stops
it in reverse.

Start order: demo backends (so the first proxied request finds them), pools, listeners, admin.

Reload (SIGHUP or POST /api/reload): the file is read and validated first; if it is invalid
nothing changes and the error is reported. Otherwise new listeners are opened before anything
else changes (a port that cannot be bound fails the reload, and what was opened is closed again),
then the new router, pools and access log are swapped into the listeners that stay — their
sockets are never closed, so no connection attempt is refused. Requests already in flight finish
with the route and pool they started with; listeners that are gone stop accepting and drain.

Stop (SIGTERM / SIGINT): /healthz turns 503 at once, listeners stop accepting and drain up to
`shutdown.drain_timeout_s`, then pools, admin and demo backends close, and the access log is
flushed. A second signal during the drain cuts it short. SIGUSR1 reopens the access log file
(after logrotate moved it), as nginx does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from lbcdn import native
from lbcdn.acme import answers
from lbcdn.acme.manager import AcmeManager
from lbcdn.cache.invalidation import Invalidation
from lbcdn.cache.runtime import CacheRuntime
from lbcdn.cache.shared import Shared
from lbcdn.control import EDGE, ControlPlane, config_dir, connection_caps, log_lowered
from lbcdn.edge import cache_hit
from lbcdn.dns.engine import Engine
from lbcdn.config.load import load_config
from lbcdn.config.schema import Config
from lbcdn.edge.config import ListenerConfig
from lbcdn.edge.listener import Listener
from lbcdn.tls import CertificateConfig, ServerTls
from lbcdn.tlstickets import Rotator, set_keys
from lbcdn.health.outlier import Ejection
from lbcdn.fdlimit import nofile, raise_nofile
from lbcdn.logs import AccessLog, setup_logging
from lbcdn.metrics import OUTLIER_EJECTIONS
from lbcdn.routing import Router
from lbcdn.routing.weighted import WeightedForward
from lbcdn.tasks import spawn
from lbcdn.upstream.pool import Pool
from lbcdn.upstream.targets import TargetsControl, stats_of

log = logging.getLogger("lbcdn.daemon")


def _listener_key(lc: ListenerConfig) -> tuple[str, int, bool]:
    """Listeners with the same key keep their socket across a reload."""
    return lc.address, lc.port, lc.tls is not None


class ReloadError(Exception):
    """A reload that changed nothing; the message says why."""


class Daemon:
    """The running daemon; also the admin API's view of it (lbcdn.admin.state.AdminState)."""

    def __init__(self, config: Config, config_path: str | os.PathLike[str] | None = None,
                 log_level: str | None = None, role: str = "single") -> None:
        # role "single": everything in this process; "worker": the data plane only, listeners
        # shared with the other workers through SO_REUSEPORT (lbcdn.workers runs the rest)
        self.role = role
        self.config = config
        self.config_path = config_path
        self.log_level = log_level   # from the command line: wins over the file's
        self.access_log = AccessLog(config.logging.access_log.enabled,
                                    config.logging.access_log.path)
        self.pools: dict[str, Pool] = {}
        self.listeners: list[Listener] = []
        self.router: Router | None = None   # the listeners' (one per configuration)
        self.cache: CacheRuntime | None = None   # edge cache stores, per process
        # a worker's share of the machine cache (lbcdn.cache.shared; set by lbcdn.workers)
        self.cache_shared: Shared | None = None
        # pools' targets and health checks: here, unless a control process runs them (then
        # `on_drained` tells it when a draining target has nothing in flight here)
        self.targets: TargetsControl | None = None
        if role == "single":
            self.targets = TargetsControl(self.apply_targets, state_dir=config.admin.state_dir,
                                          stats=lambda name: stats_of(self.pools.values(), name))
        self.on_drained: Callable[[str, str], None] | None = None
        # admin API, demo backends, bucket origin, DNS (following the pools' health): here,
        # unless a control process runs them
        self.control = (ControlPlane(self, config_dir(config_path), self.targets, edge=True,
                                     publish_acme=self._publish_acme)
                        if role == "single" else None)
        # what ACME wants served (lbcdn.acme.manager.AcmeManager.view): kept for listeners
        # opened later (start, reload)
        self.acme_view: dict[str, Any] = {"http01": {}, "alpn": {}, "certs": {}}
        # asks the ACME manager for an on-demand certificate (a worker's goes to the control
        # process: lbcdn.workers); handed to every listener
        self.acme_demand: Callable[[str, str], Awaitable[str | None]] | None = (
            self.control.acme_demand if self.control is not None else None)
        # TLS session-ticket keys: rotated here, unless a control process hands them out
        self.tickets = Rotator(config.tls_session_tickets, set_keys) if role == "single" \
            else None
        self.reloads = 0
        self._draining = False
        self._stopped = False
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()

    @property
    def draining(self) -> bool:
        return self._draining

    def targets_control(self) -> TargetsControl | None:
        return self.targets

    def acme_manager(self) -> AcmeManager | None:
        return self.control.acme if self.control is not None else None

    async def _publish_acme(self, view: dict[str, Any]) -> None:
        self.apply_acme(view)

    def apply_acme(self, view: dict[str, Any]) -> None:
        """Serve ACME's challenge answers and certificates (hot: the listeners' sockets and
        open connections stay; new handshakes use the new certificates)."""
        self.acme_view = view
        answers.install(view["http01"], {n: (c, k) for n, (c, k) in view["alpn"].items()})
        for listener in self.listeners:
            tls = listener.tls
            if tls is None:
                continue
            listener.acme_demand = self.acme_demand
            certs = tuple(CertificateConfig(cert, key, tuple(names))
                          for names, cert, key in view["certs"].get(listener.name, ()))
            if certs != tls.acme:
                try:
                    tls.set_acme(certs)
                except (OSError, ssl.SSLError) as exc:
                    log.error("listener %s: ACME certificate not loaded, keeping the "
                              "previous one: %s", listener.name, exc)

    def weighted_forward(self, route: str) -> WeightedForward | None:
        """The live weights of a route's weighted forward (lbcdn.admin.keys.WeightsProvider)."""
        return self.router.weighted(route) if self.router is not None else None

    def set_weights(self, route: str, weights: dict[str, int]) -> None:
        """New weights for a route's weighted forward, at once for the next request;
        LookupError (no such route) or ValueError (lbcdn.routing.weighted)."""
        forward = self.weighted_forward(route)
        if forward is None:
            raise LookupError(f"route {route!r} has no weighted forward")
        forward.set_weights(weights)

    def apply_targets(self, pool: str, snapshot: list[dict[str, Any]]) -> None:
        """The control plane's view of a pool's targets (lbcdn.upstream.targets)."""
        p = self.pools.get(pool)
        if p is not None:
            p.apply(snapshot)

    def _wire_pool(self, pool: Pool) -> Pool:
        name = pool.name

        def drained(key: str) -> None:
            if self.targets is not None:
                self.targets.drained(name, key)
            elif self.on_drained is not None:
                self.on_drained(name, key)
        pool.on_drained = drained

        def ejected(key: str, ejection: Ejection) -> None:
            OUTLIER_EJECTIONS.labels(name, key, str(ejection.cause)).inc()
        pool.on_ejected = ejected
        return pool

    def dns_engine(self) -> Engine | None:
        dns = self.control.dns if self.control is not None else None
        return dns.engine if dns is not None else None

    def describe(self) -> dict[str, object]:
        return {
            "listeners": [listener.describe() for listener in self.listeners],
            "routes": [r.name for r in self.config.routes] + [self.config.default_route.name],
            # the data plane's view (README, /api/runtime): algorithm, failed_open, queued, and
            # per target its state and reason with the live numbers
            "pools": [pool.details() for pool in self.pools.values()],
            "reloads": self.reloads,
            **(self.control.describe() if self.control is not None else {}),
        }

    # -- start ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start everything, or (when a port is taken, say) nothing: what had started is
        stopped again before the error propagates."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        config = self.config
        self.access_log.start()
        if self.tickets is not None:
            self.tickets.start()
        if self.control is not None:
            await self.control.start(config)
        self.pools = {name: self._wire_pool(Pool(pool)) for name, pool in config.pools.items()}
        if self.targets is not None:
            await self.targets.start(config.pools)
        self.cache = CacheRuntime(config.cache, config.buckets, shared=self.cache_shared)
        cache_hit.set_runtime(self.cache)
        router = self.router = Router(config.routes, config.default_route)
        caps = self._edge_caps(config)
        for lc in config.listeners:
            listener = Listener(lc, router, self.pools, self.access_log, caps[EDGE + lc.name])
            self.listeners.append(listener)
            await listener.start(reuse_port=self.role == "worker")
        self.apply_acme(self.acme_view)
        if self.control is not None:
            self.control.run_acme()

    def _edge_caps(self, config: Config) -> dict[str, int]:
        """The edge listeners' connection caps, fitted under the descriptor limit with the
        control listeners' when they share this process (lbcdn.control.connection_caps)."""
        limit = nofile()
        caps = connection_caps(config, limit, control=self.control is not None, edge=True)
        log_lowered(config, limit, caps, edge=True)
        return caps

    # -- reload ---------------------------------------------------------------------------
    async def reload(self) -> None:
        """Re-read the config file and swap the runtime. Raises ConfigError (invalid file,
        nothing changed) or ReloadError (e.g. a new port could not be bound)."""
        if self.config_path is None:
            raise ReloadError("the daemon was not started from a config file")
        async with self._reload_lock:
            if self._draining:
                raise ReloadError("shutting down")
            await self.apply(load_config(self.config_path))
            log.info("configuration reloaded from %s", self.config_path)

    async def apply(self, config: Config) -> None:
        """Swap in a validated configuration (see the module docstring)."""
        await self._apply(config)
        self.reloads += 1

    def update_gauges(self) -> None:
        """Set the connection gauges (workers: prometheus-client's multiprocess mode cannot
        read them through functions at scrape time)."""
        for pool in self.pools.values():
            pool.update_gauges()

    async def _apply(self, config: Config) -> None:
        old = self.config
        loop = asyncio.get_running_loop()
        # 1. what can fail: open the new listeners first
        kept = {_listener_key(l.config): l for l in self.listeners}
        pools = {name: (self.pools[name] if name in self.pools and
                        self.pools[name].config == pc else self._wire_pool(Pool(pc)))
                 for name, pc in config.pools.items()}
        for name, pool in pools.items():  # a rebuilt pool starts from the states known now
            if self.targets is not None and pool is not self.pools.get(name) \
                    and name in self.targets.pools:
                pool.apply(self.targets.pools[name].snapshot())
        router = Router(config.routes, config.default_route)
        access_log = self.access_log
        if config.logging.access_log != old.logging.access_log:
            access_log = AccessLog(config.logging.access_log.enabled,
                                   config.logging.access_log.path)
        opened: list[Listener] = []
        caps = self._edge_caps(config)
        cache = self.cache
        try:
            if cache is not None:  # kept stores when `cache.storage` did not change
                cache = cache.reconfigured(config.cache, config.buckets)
            for lc in config.listeners:
                if _listener_key(lc) not in kept:
                    listener = Listener(lc, router, pools, access_log, caps[EDGE + lc.name])
                    await listener.start(reuse_port=self.role == "worker")
                    opened.append(listener)
            if self.control is not None:
                await self.control.apply(config)
            for lc in config.listeners:  # certificates of the listeners that stay
                staying = kept.get(_listener_key(lc))
                if staying is not None and staying.tls is not None and lc.tls is not None:
                    ServerTls(lc.tls)  # loads them once: a bad file fails here, not mid-swap
        except Exception as exc:  # a port in use, a certificate or zone file that fails
            for listener in opened:
                listener.stop_accepting()
            for name, pool in pools.items():
                if self.pools.get(name) is not pool:
                    pool.close()
            raise ReloadError(f"could not apply the new configuration: {exc}") from exc
        # 2. swap: nothing below can fail (weights set through the admin API end here too:
        # the configuration's are the truth again)
        self.router = router
        if access_log is not self.access_log:
            access_log.start()
        listeners: list[Listener] = []
        new_iter = iter(opened)
        for lc in config.listeners:
            key = _listener_key(lc)
            if key in kept:
                listener = kept.pop(key)
                listener.update(lc, router, pools, access_log, caps[EDGE + lc.name])
            else:
                listener = next(new_iter)
            listeners.append(listener)
        deadline = loop.time() + config.shutdown.drain_timeout_s
        for gone in kept.values():
            log.info("listener %s removed: draining", gone.name)
            self._retire(gone.drain(deadline))
        for name, pool in self.pools.items():
            if pools.get(name) is not pool:
                pool.close()  # idle connections now; busy ones when their exchange ends
        if access_log is not self.access_log:
            self.access_log.stop()
        if cache is not self.cache:
            if self.cache is not None:
                self.cache.close()
            self.cache = cache
            cache_hit.set_runtime(cache)
        self.listeners, self.pools, self.access_log, self.config = \
            listeners, pools, access_log, config
        if self.log_level is None and config.logging.level != old.logging.level:
            setup_logging(config.logging.level)
        self.apply_acme(self.acme_view)  # listeners opened by this reload
        if self.tickets is not None:
            self.tickets.apply(config.tls_session_tickets)
        if self.targets is not None:
            await self.targets.apply(config.pools)

    def _retire(self, coro: Coroutine[Any, Any, None]) -> None:
        task = spawn(coro, "daemon-retire")
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    def request_reload(self) -> None:
        spawn(self._reload_logged(), "reload")

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except Exception as exc:  # ConfigError, ReloadError: the old config stays
            log.error("reload failed, configuration unchanged: %s", exc)

    def drop_cached(self, key: bytes) -> None:
        """Another worker stored a newer response for `key` in the shared store: our memory
        copy is older (the next request takes the new one from the shared store)."""
        memory = self.cache.memory if self.cache is not None else None
        if memory is not None and memory.variants(key):  # else no change (its generation
            memory.delete(key)                            # stays: remembered hits stay valid)

    async def invalidate_cache(self, inv: Invalidation) -> int:
        """Apply an invalidation to this process's cache (admin API, lbcdn.admin.cache)."""
        return self.cache.invalidate(inv) if self.cache is not None else 0

    def reopen_logs(self) -> None:
        self.access_log.reopen()
        log.info("access log reopened")

    # -- stop -----------------------------------------------------------------------------
    def request_stop(self) -> None:
        if self._stop.is_set():
            self._draining = True
            for listener in self.listeners:
                for conn in list(listener.connections):
                    conn.abort()  # second signal: stop waiting
        self._stop.set()

    async def run_until_stopped(self) -> None:
        await self._stop.wait()
        await self.stop()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown.drain_timeout_s
        log.info("draining (up to %.1f s)", self.config.shutdown.drain_timeout_s)
        await asyncio.gather(*(listener.drain(deadline) for listener in self.listeners),
                             *self._retired)
        if self.targets is not None:
            await self.targets.stop()
        for pool in self.pools.values():
            pool.close()
        if self.cache is not None:
            self.cache.close()
            if cache_hit.get_runtime() is self.cache:
                cache_hit.set_runtime(None)
        if self.control is not None:
            await self.control.stop()
        if self.tickets is not None:
            self.tickets.stop()
        self.access_log.stop()
        log.info("stopped")


class Runnable(Protocol):
    """A whole daemon process: the single-process Daemon, or the workers' control process."""
    def request_stop(self) -> None: ...
    def request_reload(self) -> None: ...
    def reopen_logs(self) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def run_until_stopped(self) -> None: ...


async def run_process(target: Runnable) -> int:
    """Signals as nginx: TERM/INT drain and stop, HUP reloads, USR1 reopens logs. Returns the
    exit code."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, target.request_stop)
    loop.add_signal_handler(signal.SIGHUP, target.request_reload)
    loop.add_signal_handler(signal.SIGUSR1, target.reopen_logs)
    try:
        await target.start()
    except OSError as exc:
        log.error("could not start: %s", exc)
        await target.stop()
        return 1
    log.info("running; hot path %s", native.describe())
    await target.run_until_stopped()
    return 0


async def _main(config: Config, config_path: str | os.PathLike[str] | None,
                log_level: str | None) -> int:
    return await run_process(Daemon(config, config_path, log_level))


def serve(config: Config, log_level: str | None = None,
          config_path: str | os.PathLike[str] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; return the process exit code. With `config_path`,
    SIGHUP and POST /api/reload re-read that file. Logging is set up already (lbcdn.cli)."""
    raise_nofile()  # before any socket
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        return asyncio.run(_main(config, config_path, log_level))
    return uvloop.run(_main(config, config_path, log_level))
