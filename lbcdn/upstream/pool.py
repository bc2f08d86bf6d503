"""A backend pool at run time: its targets, the balancer, and keep-alive connections per target.

Rules: idle connections are kept per target, newest first (LIFO keeps a few connections hot and
lets the rest time out), at most `max_idle_per_target` of them, each for at most
`idle_timeout_s`. A connection leaves the idle list the moment it is taken or closed, so the data
plane never writes to a connection the backend has already closed — except in the race where the
backend closes while our request is in flight, which the edge retries once.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

from lbcdn.balancer.round_robin import RoundRobin
from lbcdn.config.schema import PoolConfig, TargetConfig
from lbcdn.tls import client_context
from lbcdn.metrics import PoolMetrics, pool_metrics
from lbcdn.upstream.connection import UpstreamConnection


class Target:
    __slots__ = ("host", "port", "weight", "key", "key_bytes", "idle", "in_flight", "open")

    def __init__(self, config: TargetConfig) -> None:
        self.host = config.host
        self.port = config.port
        self.weight = config.weight
        host = f"[{config.host}]" if ":" in config.host else config.host
        self.key = f"{host}:{config.port}"
        self.key_bytes = self.key.encode()
        self.idle: list[UpstreamConnection] = []
        self.in_flight = 0
        self.open = 0


class ConnectError(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind  # connect_refused | connect_timeout


class Pool:
    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.name = config.name
        self.host_header = config.host_header.encode()
        self.ssl = client_context(config.tls) if config.tls is not None else None
        self.targets = [Target(t) for t in config.targets]
        self.balancer: RoundRobin[Target] = RoundRobin(self.targets)
        self.metrics: PoolMetrics = pool_metrics(config.name)
        # read at scrape time: moving a gauge on every request would cost more than the request
        self.metrics.idle.set_function(self.idle_count)
        self.metrics.active.set_function(lambda: len(self.connections) - self.idle_count())
        self.connections: set[UpstreamConnection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False

    def update_gauges(self) -> None:
        idle = self.idle_count()
        self.metrics.idle.set(idle)
        self.metrics.active.set(len(self.connections) - idle)

    def idle_count(self) -> int:
        return sum(len(t.idle) for t in self.targets)

    def pick(self) -> Target | None:
        return self.balancer.pick()

    def take_idle(self, target: Target) -> UpstreamConnection | None:
        idle = target.idle
        while idle:
            conn = idle.pop()
            self._leave_idle(conn)
            if not conn.closed:
                return conn
        return None

    def _leave_idle(self, conn: UpstreamConnection) -> None:
        conn.in_idle = False

    async def connect(self, target: Target) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(self, target),
                                       target.host, target.port, ssl=self.ssl,
                                       server_hostname=self._server_name(target)),
                self.config.connect_timeout_s)
        except asyncio.TimeoutError:
            raise ConnectError("connect_timeout") from None
        except ssl.SSLError:
            raise ConnectError("tls_handshake") from None
        except OSError:
            raise ConnectError("connect_refused") from None
        return conn

    def _server_name(self, target: Target) -> str | None:
        tls = self.config.tls
        if tls is None:
            return None
        if tls.server_name:
            return tls.server_name
        if self.config.host_header not in ("preserve", "target"):
            return self.config.host_header
        return target.host

    def connection_opened(self, conn: UpstreamConnection) -> None:
        assert conn.transport is not None
        sock = conn.transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections.add(conn)
        conn.target.open += 1

    def connection_closed(self, conn: UpstreamConnection) -> None:
        if conn not in self.connections:
            return  # the connection never completed its handshake with us
        self.connections.discard(conn)
        conn.target.open -= 1
        if conn.in_idle:
            conn.target.idle.remove(conn)
            self._leave_idle(conn)

    def release(self, conn: UpstreamConnection) -> None:
        """An exchange finished cleanly on `conn`: keep it for reuse, or close it."""
        idle = conn.target.idle
        if self.closed or conn.closed or len(idle) >= self.config.max_idle_per_target:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        conn.in_idle = True
        idle.append(conn)
        if self._sweeper is None:
            self._schedule_sweep()

    def _schedule_sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(min(1.0, self.config.idle_timeout_s), self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        limit = time.monotonic() - self.config.idle_timeout_s
        any_idle = False
        for target in self.targets:
            # oldest first: the list is used as a stack, so expired ones sit at the bottom
            while target.idle and target.idle[0].idle_since <= limit:
                conn = target.idle.pop(0)
                self._leave_idle(conn)
                conn.close()
            any_idle = any_idle or bool(target.idle)
        if any_idle and not self.closed:
            self._schedule_sweep()

    def close(self) -> None:
        """Stop keeping connections: close the idle ones now; busy ones close when done."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for target in self.targets:
            while target.idle:
                conn = target.idle.pop()
                self._leave_idle(conn)
                conn.close()

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "targets": [{"target": t.key, "weight": t.weight, "in_flight": t.in_flight,
                         "open_connections": t.open, "idle_connections": len(t.idle)}
                        for t in self.targets],
        }
