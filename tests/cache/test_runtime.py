"""CacheRuntime built from config: origins, failover plans, what a reload keeps, purges."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lbcdn.bucket.config import BucketsConfig
from lbcdn.cache.entry import build
from lbcdn.cache.invalidation import Registry
from lbcdn.cache.runtime import CacheRuntime, ParentTier
from lbcdn.cache.config import CacheConfig, CachePolicyConfig, ParentTierConfig
from lbcdn.config.load import parse_config


def cache_config(raw: dict[str, Any]) -> CacheConfig:
    config = parse_config({"listeners": [{"name": "w", "port": 1}],
                           "pools": {"app": {"targets": ["127.0.0.1:1"]}}, "cache": raw})
    return config.cache


def entry(path: bytes, tags: bytes = b"") -> Any:
    headers = [(b"Cache-Control", b"max-age=60")] + ([(b"Surrogate-Key", tags)] if tags else [])
    return build(key=b"GET\0h\0" + path, variant=b"", host=b"h", path=path, query=b"",
                 status=200, headers=headers, chunks=(b"body",), request_time=0.0,
                 response_time=0.0, policy=CachePolicyConfig(), now=0.0)


async def test_origins_and_group_plans() -> None:
    rt = CacheRuntime(cache_config({
        "origins": {"web": {"url": "https://cdn.example.com", "origin_path": "/v1"},
                    "alt": {"url": "http://10.0.0.1:8080", "connect_attempts": 2},
                    "app": {"pool": "app"}},
        "origin_groups": {"g": {"primary": "web", "secondary": "alt",
                                "failover_statuses": [404, 503]}}}))
    web = rt.endpoints["web"]
    assert web.host_header == b"cdn.example.com" and web.origin_path == b"/v1"
    assert web.pool is not None and web.pool.targets[0].port == 443 and web.pool.ssl is not None
    alt = rt.endpoints["alt"]
    assert alt.host_header == b"10.0.0.1:8080" and alt.connect_attempts == 2
    assert rt.endpoints["app"].pool is None and rt.endpoints["app"].pool_name == "app"
    plan = rt.plans["g"]
    assert [a.endpoint.id for a in plan] == ["web", "alt"]
    assert plan[0].failover_statuses == frozenset({404, 503})
    rt.close()


async def test_bucket_origin_is_the_website_endpoint() -> None:
    buckets = BucketsConfig(root="/tmp/x", port=9000, website_port=9100,
                            website_host_suffixes=("web.localhost",))
    rt = CacheRuntime(cache_config({"origins": {"b": {"bucket": "photos"}}}), buckets)
    b = rt.endpoints["b"]
    assert b.host_header == b"photos.web.localhost"
    assert b.pool is not None and b.pool.targets[0].port == 9100
    with pytest.raises(ValueError):
        CacheRuntime(cache_config({"origins": {"b": {"bucket": "photos"}}}), None)


async def test_reload_keeps_stores_unless_storage_changed() -> None:
    rt = CacheRuntime(cache_config({}))
    rt.memory.put(entry(b"/a"))
    same = rt.reconfigured(cache_config({"policies": {"p": {}}}), None)
    assert same.memory is rt.memory and len(same.memory) == 1
    other = rt.reconfigured(cache_config({"storage": {"memory_max_bytes": 1 << 20}}), None)
    assert other.memory is not rt.memory and len(other.memory) == 0


async def test_invalidate_and_purge_uri() -> None:
    rt = CacheRuntime(cache_config({}))
    for p, t in ((b"/img/a", b"x"), (b"/img/b", b""), (b"/c", b"x")):
        rt.memory.put(entry(p, t))
    reg = Registry()
    assert rt.invalidate(reg.create(["/img/*"], now=0)) == 2
    assert rt.invalidate(reg.create(tags=["x"], soft=True, now=0)) == 1
    assert len(rt.memory) == 1
    assert rt.purge_uri(b"h", b"/c") == 1 and len(rt.memory) == 0


async def test_store_lookup_promotes_to_memory(tmp_path: Any) -> None:
    assert await CacheRuntime(cache_config({})).store_lookup(b"GET\0h\0/a", []) is None
    rt = CacheRuntime(cache_config({"storage": {"disk_path": str(tmp_path)}}))
    assert rt.disk is not None and rt.disk.put(entry(b"/a"))
    assert await rt.store_lookup(b"GET\0h\0/b", []) is None
    found = await rt.store_lookup(b"GET\0h\0/a", [])
    assert found is not None and found.body == b"body"
    assert rt.memory.lookup(b"GET\0h\0/a", []) == found


def test_max_object_bytes() -> None:
    rt = CacheRuntime(cache_config({"storage": {"memory_max_bytes": 1000,
                                                "max_object_bytes": 5000}}))
    assert rt.max_object_bytes() == 1000


async def test_parent_tier_plan() -> None:
    rt = CacheRuntime(cache_config({
        "origins": {"o": {"url": "http://10.0.0.9:80"}},
        "distributions": {
            "d": {"default_behavior": {"path_pattern": "*", "origin": "o"},
                  "parent_tier": {"peers": ["10.0.0.1:80", "10.0.0.2:80"],
                                  "self_peer": "10.0.0.1:80"}},
            "plain": {"default_behavior": {"path_pattern": "*", "origin": "o"}}}}))
    d, plain = rt.distributions["d"], rt.distributions["plain"]
    b = d.default
    keys = [b"GET\0h\0/%d" % i for i in range(50)]
    plans = {k: [a.endpoint.id for a in rt.plan(d, b, k, [])] for k in keys}
    # about half the keys are this replica's own (straight to the origin), the rest the peer's
    assert {tuple(p) for p in plans.values()} == {("o",), ("parent:10.0.0.2:80", "o")}
    parent_first = next(k for k, p in plans.items() if len(p) == 2)
    assert rt.plan(d, b, parent_first, [(b"X-LBCDN-Tier", b"1")]) == rt.plans["o"]
    assert rt.plan(plain, plain.default, parent_first, []) == rt.plans["o"]
    attempt = rt.plan(d, b, parent_first, [])[0]
    assert attempt.endpoint.host_header is None and attempt.endpoint.origin_path == b""
    assert attempt.endpoint.marker == b"X-Lbcdn-Tier"
    assert attempt.failover_statuses == frozenset({500, 502, 503, 504})
    rt.close()


async def test_parent_tier_follows_its_dns_name() -> None:
    answers = [["198.51.100.1", "127.0.0.1"], ["198.51.100.1", "127.0.0.1", "198.51.100.2"],
               ["198.51.100.2", "127.0.0.1"]]
    asked: list[tuple[str, int]] = []
    changed = asyncio.Event()

    async def resolver(name: str, port: int) -> list[str]:
        asked.append((name, port))
        if len(asked) > len(answers):
            changed.set()
            raise OSError("resolver down")  # the last peers stay
        return answers[len(asked) - 1]
    tier = ParentTier(ParentTierConfig(dns_name="edges.svc", port=8080, self_peer="auto",
                                       dns_refresh_s=0.1), resolver)
    assert tier.peers == () and tier.attempt(b"k", []) is None  # nothing resolved yet
    first_pools: list[Any] = []
    for i, answer in enumerate(answers):
        await until_true(lambda: set(tier.peers) == {f"{a}:8080".encode() for a in answer})
        assert tier.me == b"127.0.0.1:8080"  # the address this host can bind
        if i == 0:
            first_pools = [a.endpoint.pool for a in tier.attempts.values()]
    await asyncio.wait_for(changed.wait(), 5)
    assert set(tier.peers) == {b"198.51.100.2:8080", b"127.0.0.1:8080"}
    # a peer that stays keeps its pool; one that left had its pool closed
    assert tier.attempts[b"127.0.0.1:8080"].endpoint.pool is first_pools[1]
    assert asked[0] == ("edges.svc", 8080)
    tier.stop()


async def until_true(predicate: Any) -> None:
    for _ in range(100):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not within 5 s")
