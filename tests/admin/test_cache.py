"""The invalidation API on a real admin listener, with a fake daemon that records what it was
asked to purge."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest

from lbcdn.admin.app import create_admin_app, start_admin
from lbcdn.cache.invalidation import Invalidation


@dataclass
class FakeDaemon:
    applied: list[Invalidation] = field(default_factory=list)
    draining: bool = False

    def describe(self) -> dict[str, object]:
        return {}

    async def reload(self) -> None:
        pass

    def dns_engine(self) -> None:
        return None

    async def invalidate_cache(self, inv: Invalidation) -> int:
        self.applied.append(inv)
        return 7


@dataclass
class NoCache:
    draining: bool = False

    def describe(self) -> dict[str, object]:
        return {}

    async def reload(self) -> None:
        pass

    def dns_engine(self) -> None:
        return None


async def _serve(state: object) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    app = create_admin_app(state, "tok")  # type: ignore[arg-type]
    server = await start_admin(app, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer tok"}) as s:
            yield s, f"http://127.0.0.1:{server.port}/api/cache/invalidations"
    finally:
        await server.stop()


@pytest.fixture
async def api() -> AsyncIterator[tuple[aiohttp.ClientSession, str, FakeDaemon]]:
    daemon = FakeDaemon()
    async for s, url in _serve(daemon):
        yield s, url, daemon


async def test_create_get_list(api: tuple[aiohttp.ClientSession, str, FakeDaemon]) -> None:
    s, url, daemon = api
    async with s.post(url, json={"paths": ["/a", "/img/*"], "mode": "soft",
                                 "hosts": ["Example.com"]}) as r:
        assert r.status == 201
        inv = await r.json()
    assert inv["status"] == "Completed" and inv["purged"] == 7 and inv["mode"] == "soft"
    assert daemon.applied[0].paths == ("/a", "/img/*") and daemon.applied[0].soft
    assert daemon.applied[0].hosts == ("example.com",)
    async with s.get(f"{url}/{inv['id']}") as r:
        assert (await r.json())["purged"] == 7
    async with s.get(f"{url}/INOPE") as r:
        assert r.status == 404
    async with s.post(url, json={"tags": ["blue"]}) as r:
        assert r.status == 201
    async with s.get(url) as r:
        assert [i["tags"] for i in (await r.json())["invalidations"]] == [["blue"], []]


@pytest.mark.parametrize("body", [
    {"paths": ["no-slash"]}, {"paths": ["/a*b"]}, {}, {"paths": "/a"},
    {"paths": ["/a"], "mode": "gentle"}, {"tags": ["two words"]}, [1, 2]])
async def test_bad_requests(api: tuple[aiohttp.ClientSession, str, FakeDaemon],
                            body: object) -> None:
    s, url, daemon = api
    async with s.post(url, json=body) as r:
        assert r.status == 400 and "error" in await r.json()
    assert daemon.applied == []


async def test_caller_reference_is_idempotent(
        api: tuple[aiohttp.ClientSession, str, FakeDaemon]) -> None:
    s, url, daemon = api
    body = {"paths": ["/x"], "caller_reference": "deploy-1"}
    async with s.post(url, json=body) as r:
        first = await r.json()
    async with s.post(url, json=body) as r:
        assert r.status == 200 and (await r.json())["id"] == first["id"]
    async with s.post(url, json={"paths": ["/y"], "caller_reference": "deploy-1"}) as r:
        assert r.status == 400
    assert len(daemon.applied) == 1


async def test_no_cache_is_404() -> None:
    async for s, url in _serve(NoCache()):
        async with s.post(url, json={"paths": ["/a"]}) as r:
            assert r.status == 404
