"""The edge listener's connection cap (`max_connections`), through real sockets: at the cap a
connection waiting for a request for a second or more is closed to make room for a new one;
with none such, the new one is answered 503 with Retry-After and closed; a connection with a
request under way is never closed to make room."""

from __future__ import annotations

import contextlib
import asyncio
from collections.abc import AsyncIterator

from lbcdn.daemon import Daemon
from tests.e2e.harness import demo_backend, listener_port, proxy_config, raw_client, \
    running_daemon

HEAD = b"GET / HTTP/1.1\r\nHost: test.local\r\n"


@contextlib.asynccontextmanager
async def capped(max_connections: int) -> AsyncIterator[tuple[Daemon, int]]:
    async with demo_backend() as backend:
        config = proxy_config(backend)
        config["listeners"][0]["max_connections"] = max_connections
        async with running_daemon(config) as daemon:
            yield daemon, listener_port(config)


async def test_past_the_cap_with_requests_under_way_a_new_client_gets_503() -> None:
    async with capped(2) as (daemon, port):
        async with raw_client(port) as a, raw_client(port) as b:
            await a.send(HEAD)
            await b.send(HEAD)
            await asyncio.sleep(1.1)   # long enough to be closed, were they idle
            async with raw_client(port) as c:
                refusal = await c.request()
                assert refusal.status == 503
                assert refusal.header("Retry-After") == "1"
                assert await c.closed_by_peer()
            assert daemon.listeners[0].describe()["open_connections"] == 2
            for client in (a, b):   # their requests go on
                await client.send(b"\r\n")
                assert (await client.response()).status == 200
        async with raw_client(port) as d:
            assert (await d.request()).status == 200


async def test_a_connection_idle_for_a_second_makes_room_for_a_new_one() -> None:
    async with capped(2) as (daemon, port):
        async with raw_client(port) as a, raw_client(port) as b:
            assert (await a.request()).status == 200   # then idle between requests
            await asyncio.sleep(1.1)
            async with raw_client(port) as c, raw_client(port) as d:
                assert (await c.request()).status == 200
                assert (await d.request()).status == 200
                assert await a.closed_by_peer() and await b.closed_by_peer()
                # c and d have been idle for less than a second: no room yet
                async with raw_client(port) as e:
                    assert (await e.request()).status == 503
        assert daemon.listeners[0].max_connections == 2
