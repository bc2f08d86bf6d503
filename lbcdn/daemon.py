"""Builds the runtime from a Config, starts components in order and stops them in reverse.

Start order: demo backends (so the first proxied request finds them), pools, listeners, admin.
Stop (SIGTERM / SIGINT): /healthz turns 503 at once, listeners stop accepting and drain up to
`shutdown.drain_timeout_s`, then pools, admin and demo backends close, and the access log is
flushed. A second signal during the drain cuts it short.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from lbcdn.admin.app import AdminServer, create_admin_app, start_admin
from lbcdn.config.schema import Config
from lbcdn.demo.backend import start_demo_backend
from lbcdn.edge.listener import Listener
from lbcdn.logs import AccessLog, setup_logging
from lbcdn.routing import Router
from lbcdn.upstream.pool import Pool

log = logging.getLogger("lbcdn.daemon")


class Daemon:
    """The running daemon; also the admin API's view of it (lbcdn.admin.state.AdminState)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.access_log = AccessLog(config.logging.access_log)
        self.pools: dict[str, Pool] = {}
        self.listeners: list[Listener] = []
        self.admin: AdminServer | None = None
        self.demo_servers: list[asyncio.AbstractServer] = []
        self._draining = False
        self._stopped = False
        self._stop = asyncio.Event()

    @property
    def draining(self) -> bool:
        return self._draining

    def describe(self) -> dict[str, object]:
        return {
            "listeners": [listener.describe() for listener in self.listeners],
            "routes": [r.name for r in self.config.routes] + [self.config.default_route.name],
            "pools": [pool.describe() for pool in self.pools.values()],
        }

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
        for backend in config.demo_backends:
            self.demo_servers.append(
                await start_demo_backend(backend.address, backend.port, backend.name))
            log.info("demo backend %s on %s:%d", backend.name, backend.address, backend.port)
        self.pools = {name: Pool(pool) for name, pool in config.pools.items()}
        router = Router(config.routes, config.default_route)
        for lc in config.listeners:
            listener = Listener(lc, router, self.pools, self.access_log)
            await listener.start()
            self.listeners.append(listener)
        if config.admin.port:
            app = create_admin_app(self, config.admin.token)
            self.admin = await start_admin(app, config.admin.address, config.admin.port)
            log.info("admin API on %s:%d", config.admin.address, self.admin.port)

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
        await asyncio.gather(*(listener.drain(deadline) for listener in self.listeners))
        for pool in self.pools.values():
            pool.close()
        if self.admin is not None:
            await self.admin.stop()
        for server in self.demo_servers:
            server.close()
        self.access_log.stop()
        log.info("stopped")


async def _main(config: Config) -> int:
    daemon = Daemon(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)
    try:
        await daemon.start()
    except OSError as exc:
        log.error("could not start: %s", exc)
        return 1
    await daemon.run_until_stopped()
    return 0


def serve(config: Config, log_level: str | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; return the process exit code."""
    setup_logging(log_level or config.logging.level)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        return asyncio.run(_main(config))
    return uvloop.run(_main(config))
