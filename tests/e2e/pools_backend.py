"""A scriptable backend for the pool tests, on 127.0.0.1 (or another loopback address, for
DNS answers that must tell targets apart) with a run-time port.

`/health` answers `health_status` (200 by default); `/slow` waits `slow_s` before answering;
`/stall` sends its head and half of its body, then waits `slow_s` for the rest; `/boom` closes
the connection without a byte (a reset before any response byte); `/fail`
answers 500; anything else 200 with the backend's name as the body. Every request is counted
by path, so tests can count health checks and proxied requests exactly."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

from tests.e2e.harness import HOST, read_request


class PoolBackend:
    def __init__(self, name: str, address: str = HOST) -> None:
        self.name = name
        self.address = address
        self.health_status = 200
        self.slow_s = 1.0
        self.hits: Counter[str] = Counter()
        self.methods: Counter[tuple[str, str]] = Counter()
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.open = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.address, self.port,
                                                 reuse_address=True)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self.writers):
                w.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None

    def requests(self) -> int:
        """Proxied requests (everything but /health)."""
        return sum(n for path, n in self.hits.items() if path != "/health")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        self.connections += 1
        self.open += 1
        try:
            while True:
                try:
                    line, _, _ = await read_request(reader, timeout_s=30)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                method, target, _ = line.split(" ", 2)
                path = target.split("?")[0]
                self.hits[path] += 1
                self.methods[(method, path)] += 1
                if path == "/boom":
                    writer.transport.abort()
                    return
                if path == "/health":
                    status, body = self.health_status, b"health"
                elif path == "/stall":
                    body = self.name.encode() * 2
                    writer.write(b"HTTP/1.1 200 X\r\nContent-Length: %d\r\n\r\n%s" % (
                        len(body), body[:len(body) // 2]))
                    await writer.drain()
                    await asyncio.sleep(self.slow_s)
                    writer.write(body[len(body) // 2:])
                    await writer.drain()
                    continue
                elif path == "/fail":
                    status, body = 500, b"failed"
                else:
                    if path == "/slow":
                        await asyncio.sleep(self.slow_s)
                    status, body = 200, self.name.encode()
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (
                    status, len(body), body))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            self.writers.discard(writer)
            writer.close()


@contextlib.asynccontextmanager
async def pool_backends(*names: str) -> AsyncIterator[list[PoolBackend]]:
    backends = [PoolBackend(n) for n in names]
    try:
        for b in backends:
            await b.start()
        yield backends
    finally:
        for b in backends:
            await b.stop()
