"""The client connection's known heads, through real sockets: a head repeated byte for byte on
a keep-alive connection is taken from the listener's table instead of being parsed again, and
only heads that parsed cleanly, alone and without a body are remembered."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from lbcdn.daemon import Daemon
from tests.e2e.harness import (listener_port, proxy_config, raw_backend, raw_client,
                               read_request, running_daemon)

HEAD = b"GET /k?x=1 HTTP/1.1\r\nHost: test.local\r\nUser-Agent: t\r\n\r\n"


async def _echo_ids(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A backend answering every request with the request id and target it received."""
    while True:
        line, headers, _ = await read_request(reader)
        rid = next(v for n, v in headers if n.lower() == "x-request-id")
        body = f"{line.split()[1]} {rid}".encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()


def known(daemon: Daemon) -> dict[bytes, Any]:
    return daemon.listeners[0].known_heads


@contextlib.asynccontextmanager
async def echo_proxy() -> AsyncIterator[tuple[Daemon, int]]:
    """A daemon proxying to `_echo_ids`; yields it and its listener's port."""
    async with raw_backend(_echo_ids) as backend:
        config = proxy_config(backend)
        async with running_daemon(config) as daemon:
            yield daemon, listener_port(config)


async def test_a_repeated_head_is_remembered_and_answered_like_the_first() -> None:
    async with echo_proxy() as (daemon, port):
        async with raw_client(port) as c:
            answers = []
            for _ in range(3):
                await c.send(HEAD)
                answers.append(await c.response())
        assert list(known(daemon)) == [HEAD]
        assert known(daemon)[HEAD].head.target == b"/k?x=1"
        bodies = [r.body.split() for r in answers]
        assert all(r.status == 200 for r in answers)
        assert [b[0] for b in bodies] == [b"/k?x=1"] * 3
        ids = {b[1] for b in bodies}
        assert len(ids) == 3, "every request gets its own request id"


async def test_heads_with_bodies_pipelined_or_rejected_are_not_remembered() -> None:
    async with echo_proxy() as (daemon, port):
        async with raw_client(port) as c:
            post = b"POST /p HTTP/1.1\r\nHost: test.local\r\nContent-Length: 2\r\n\r\n"
            await c.send(post)  # the head alone in one read, its body in the next
            await asyncio.sleep(0.05)
            await c.send(b"ab")
            assert (await c.response()).status == 200
            await c.send(HEAD + HEAD)  # two requests in one read
            assert (await c.response()).status == 200
            assert (await c.response()).status == 200
        bad = b"GET /b HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
        for _ in range(2):  # rejected every time: a refused head is never remembered
            async with raw_client(port) as c:
                await c.send(bad)
                assert (await c.response()).status == 400
        assert known(daemon) == {}


async def test_a_reload_forgets_the_known_heads() -> None:
    async with echo_proxy() as (daemon, port):
        async with raw_client(port) as c:
            await c.send(HEAD)
            assert (await c.response()).status == 200
            assert HEAD in known(daemon)
            listener = daemon.listeners[0]
            listener.update(listener.config, listener.router, listener.pools,
                            listener.access_log, listener.max_connections)
            assert known(daemon) == {}
            await c.send(HEAD)
            assert (await c.response()).status == 200
