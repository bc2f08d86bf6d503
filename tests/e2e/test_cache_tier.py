"""A parent tier across replicas (origin shield): three `lbcdn serve` daemons on 127.0.0.1, each
listing all three as `parent_tier.peers`, in front of one counting origin. A miss goes to the
replica owning its key (rendezvous hashing), which alone asks the origin; a dead or failing
parent falls back to the origin; a request marked as coming from a replica never goes to
another parent."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from lbcdn.cache.key import KeyBuilder
from lbcdn.cache.config import CachePolicyConfig, QueryStringsConfig
from lbcdn.cache.tier import owner
from tests.e2e.cache_origin import Answer, Origin, scripted_origin
from tests.e2e.harness import HOST, DaemonProcess, RawClient, free_port, until
from tests.e2e.test_cache import cdn_config

CACHED = [("Cache-Control", "max-age=600")]


def edge_config(origin: int, peers: list[int] | None, me: int | None) -> dict[str, Any]:
    config = cdn_config(origin)
    if me is not None:
        config["listeners"][0]["port"] = me
    if peers is not None:
        tier: dict[str, Any] = {"peers": [f"{HOST}:{p}" for p in peers]}
        if me is not None:
            tier["self_peer"] = f"{HOST}:{me}"
        config["cache"]["distributions"]["site"]["parent_tier"] = tier
    return config


def edges(origin: int, tmp: Path, n: int, *, shield: bool,
          workers: int = 1) -> list[DaemonProcess]:
    ports = [free_port() for _ in range(n)]
    started: list[DaemonProcess] = []
    try:
        for i, port in enumerate(ports):
            d = tmp / f"edge{i}"
            d.mkdir()
            started.append(DaemonProcess(edge_config(origin, ports if shield else None, port),
                                         d, ["--workers", str(workers)]))
    except BaseException:
        for daemon in started:
            daemon.stop()
        raise
    return started


async def spread_burst(ports: list[int], path: str, n: int) -> list[int]:
    """`n` requests for `path` at once, spread round-robin over `ports`, each on its own
    connection (all connected first): the statuses."""
    clients = await asyncio.gather(*(RawClient.open(ports[i % len(ports)]) for i in range(n)))
    try:
        answers = await asyncio.wait_for(asyncio.gather(
            *(c.request("GET", path, timeout_s=60) for c in clients)), 90)
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    return [r.status for r in answers]


async def origin_requests_per_object(origin: Origin, ports: list[int], objects: int,
                                     n: int) -> list[int]:
    counts = []
    for i in range(objects):
        path = f"/obj{i}"
        origin.set(path, Answer(headers=CACHED, body=b"x" * 1024, delay_s=0.5))
        assert set(await spread_burst(ports, path, n)) == {200}
        counts.append(origin.hits[path])
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
async def test_a_fleet_with_a_shield_makes_one_origin_request_per_object(
        tmp_path: Path, workers: int) -> None:
    async with scripted_origin() as origin:
        fleet = await asyncio.to_thread(edges, origin.port, tmp_path, 3, shield=True,
                                        workers=workers)
        try:
            counts = await origin_requests_per_object(
                origin, [d.config["listeners"][0]["port"] for d in fleet], 3, 1000)
        finally:
            for d in fleet:
                d.stop()
    # the owning replica's workers share one cache (lbcdn.cache.shared): one fetch in all
    assert counts == [1, 1, 1]


@pytest.mark.slow
async def test_a_fleet_without_a_shield_fetches_once_per_edge(tmp_path: Path) -> None:
    async with scripted_origin() as origin:
        fleet = await asyncio.to_thread(edges, origin.port, tmp_path, 3, shield=False)
        try:
            counts = await origin_requests_per_object(
                origin, [d.config["listeners"][0]["port"] for d in fleet], 3, 1000)
        finally:
            for d in fleet:
                d.stop()
    assert counts == [3, 3, 3]


def key_of(path: str, query: str | None = None) -> bytes:
    """The cache key the edge builds for GET `path` from the test client (Host test.local)."""
    keys = KeyBuilder(CachePolicyConfig(query_strings=QueryStringsConfig(behavior="all")))
    return keys.primary(b"GET", b"test.local", path.encode(),
                        query.encode() if query is not None else None, [])


def path_owned_by(peers: tuple[bytes, ...], peer: bytes) -> str:
    return next(p for p in (f"/p{i}" for i in range(1000))
                if owner(peers, key_of(p)) == peer)


async def test_a_dead_parent_falls_back_to_the_origin(tmp_path: Path) -> None:
    me, dead = free_port(), free_port()  # nothing listens on `dead`
    peers = (f"{HOST}:{me}".encode(), f"{HOST}:{dead}".encode())
    async with scripted_origin() as origin:
        path = path_owned_by(peers, peers[1])
        origin.set(path, Answer(headers=CACHED, body=b"from origin"))
        daemon = await asyncio.to_thread(DaemonProcess, edge_config(origin.port, [me, dead], me),
                                         tmp_path)
        try:
            c = await RawClient.open(me)
            try:
                r = await c.request("GET", path)
                assert (r.status, r.body) == (200, b"from origin")
                r = await c.request("GET", path)
                assert r.status == 200 and "hit" in (r.header("Cache-Status") or ""), r
            finally:
                await c.close()
        finally:
            daemon.stop()
    assert origin.hits[path] == 1


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_failing_parent_falls_back_and_a_marked_request_skips_the_tier(
        tmp_path: Path, workers: int) -> None:
    async with scripted_origin() as origin, scripted_origin() as parent:
        me = free_port()
        peers = (f"{HOST}:{me}".encode(), f"{HOST}:{parent.port}".encode())
        failing = path_owned_by(peers, peers[1])
        parent.set(failing, Answer(503, [], b"parent down"))
        origin.set(failing, Answer(headers=CACHED, body=b"from origin"))
        marked = next(p for p in (f"/m{i}" for i in range(1000))
                      if owner(peers, key_of(p)) == peers[1])
        origin.set(marked, Answer(headers=CACHED, body=b"marked"))
        mine = path_owned_by(peers, peers[0])
        origin.set(mine, Answer(headers=CACHED, body=b"mine"))
        daemon = await asyncio.to_thread(
            DaemonProcess, edge_config(origin.port, [me, parent.port], me), tmp_path,
            ["--workers", str(workers)])
        try:
            c = await RawClient.open(me)
            try:
                r = await c.request("GET", failing)
                assert (r.status, r.body) == (200, b"from origin")
                # the parent got the viewer's Host and path and the marker
                line, headers = parent.requests[-1]
                assert line.split(" ")[1] == failing
                h = {n.lower(): v for n, v in headers}
                assert h["host"] == "test.local" and h["x-lbcdn-tier"] == "1"
                # the origin never sees the marker
                assert "x-lbcdn-tier" not in origin.last_headers(failing)
                r = await c.request("GET", marked, headers=[("X-Lbcdn-Tier", "1")])
                assert (r.status, r.body) == (200, b"marked")
                r = await c.request("GET", mine)
                assert (r.status, r.body) == (200, b"mine")
            finally:
                await c.close()
        finally:
            daemon.stop()
    assert parent.hits[failing] == 1 and origin.hits[failing] == 1
    assert parent.hits[marked] == 0 and origin.hits[marked] == 1
    assert parent.hits[mine] == 0 and origin.hits[mine] == 1


async def test_a_reload_changes_the_replica_set(tmp_path: Path) -> None:
    async with scripted_origin() as origin, scripted_origin() as parent:
        me = free_port()
        peers = (f"{HOST}:{me}".encode(), f"{HOST}:{parent.port}".encode())
        path = path_owned_by(peers, peers[1])
        parent.set(path, Answer(headers=CACHED, body=b"from parent"))
        daemon = await asyncio.to_thread(
            DaemonProcess, edge_config(origin.port, [me, parent.port], me), tmp_path)
        try:
            async def get(target: str) -> bytes:
                c = await RawClient.open(me)
                try:
                    r = await c.request("GET", target)
                    assert r.status == 200, r
                    return r.body
                finally:
                    await c.close()
            assert await get(path) == b"from parent"
            # the parent leaves the tier: this replica owns every key
            daemon.path.write_text(yaml.safe_dump(edge_config(origin.port, [me], me)))
            os.kill(daemon.pid, signal.SIGHUP)
            origin.set(path, Answer(headers=CACHED, body=b"from origin"))
            # new keys the parent owned before the reload: from the origin once it is applied
            tries = iter(f"{path}?try={i}" for i in range(5000)
                         if owner(peers, key_of(path, f"try={i}")) == peers[1])

            async def own_fetch() -> bool:
                return await get(next(tries)) == b"from origin"
            await until(own_fetch, 10, what="the reload to drop the parent")
        finally:
            daemon.stop()


async def test_peers_from_a_dns_name(tmp_path: Path) -> None:
    async with scripted_origin() as origin, scripted_origin() as parent:
        parent.set("/d", Answer(headers=CACHED, body=b"from parent"))
        config = edge_config(origin.port, None, None)
        config["cache"]["distributions"]["site"]["parent_tier"] = {
            "dns_name": HOST, "port": parent.port, "dns_refresh_s": 0.2}
        daemon = await asyncio.to_thread(DaemonProcess, config, tmp_path)
        try:
            async def via_parent() -> bool:
                c = await RawClient.open(config["listeners"][0]["port"])
                try:
                    r = await c.request("GET", "/d", headers=[("Cache-Control", "no-cache")])
                    return r.body == b"from parent"
                finally:
                    await c.close()
            # misses go to the origin until the name is first resolved
            await until(via_parent, 10, what="misses to go to the resolved parent")
        finally:
            daemon.stop()
