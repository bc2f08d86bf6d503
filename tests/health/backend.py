"""A scriptable HTTP backend on 127.0.0.1 for the prober and checker tests: it can pass, fail,
hang, answer 500, close, talk garbage, keep connections, go away and come back."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import pytest

from lbcdn.health.prober import ConnectionSlot, ProbeResult, ProbeSpec, start_probe


class Backend:
    """A scriptable HTTP backend on 127.0.0.1. `mode` decides each answer."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.mode = "ok"
        self.hits = 0
        self.heads: list[bytes] = []
        self.port = 0
        self.tls = tls
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port,
                                                 ssl=self.tls, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        await self.server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        self.connections += 1
        try:
            while self.mode == "keep":  # answer on one connection until the client leaves
                head = await reader.readuntil(b"\r\n\r\n")
                self.hits += 1
                self.heads.append(head)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nkept")
                await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            self.hits += 1
            self.heads.append(head)
            mode = self.mode
            if mode == "hang":
                await asyncio.sleep(30)
            elif mode == "close":
                pass
            elif mode == "garbage":
                writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            elif mode.startswith("status:"):
                writer.write(f"HTTP/1.1 {mode[7:]} X\r\ncontent-length: 0\r\n\r\n".encode())
            elif mode.startswith("body:"):
                body = mode[5:].encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(body), body))
            elif mode == "big":  # the needle sits after byte 5120
                body = b"x" * 6000 + b"needle" + b"y" * 4000
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            elif mode == "chunked":
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                             b"3\r\nnee\r\n3\r\ndle\r\n0\r\n\r\n")
            elif mode == "eof":
                writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nthe needle, then EOF")
            elif mode == "interim":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            elif mode == "slowbody":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                await writer.drain()
                await asyncio.sleep(30)
            elif mode == "slowhead":
                writer.write(b"HTTP/1.1 200 OK\r\n")
                await writer.drain()
                await asyncio.sleep(30)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nall good")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writers.discard(writer)
            writer.transport.abort()


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:  # used through tests/health/conftest.py
    b = Backend()
    await b.start()
    yield b
    await b.stop()


def spec(port: int, **kw: object) -> ProbeSpec:
    args: dict[str, object] = {"protocol": "http", "address": "127.0.0.1", "port": port,
                               "timeout_s": 2.0}
    args.update(kw)
    return ProbeSpec(**args)  # type: ignore[arg-type]


async def free_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


async def check(s: ProbeSpec, slot: ConnectionSlot) -> ProbeResult:
    done: asyncio.Future[ProbeResult] = asyncio.get_running_loop().create_future()
    start_probe(s, done.set_result, slot)
    return await done
