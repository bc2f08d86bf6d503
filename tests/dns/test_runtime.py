"""The DNS runtime's health view: Route 53 checks of its own, pool targets read from the pools'
health (lbcdn.dns.runtime.PoolHealth), and a generation that moves with either."""

from __future__ import annotations

from pathlib import Path

import dns.message
import dns.rdatatype
import pytest

from lbcdn.config.load import parse_config
from lbcdn.dns.runtime import DnsRuntime


class Pools:
    """A PoolHealth: targets by (pool, key)."""

    def __init__(self) -> None:
        self.generation = 0
        self.healthy: dict[tuple[str, str], bool] = {}

    def target_healthy(self, pool: str, key: str) -> bool | None:
        return self.healthy.get((pool, key))

    def set(self, pool: str, key: str, healthy: bool) -> None:
        self.healthy[(pool, key)] = healthy
        self.generation += 1


def runtime(pools: Pools | None) -> DnsRuntime:
    config = parse_config({
        "listeners": [{"name": "web", "address": "127.0.0.1", "port": 8080}],
        "pools": {"app": {"targets": ["192.0.2.10:80", "192.0.2.11:80"]}},
        "default_route": {"forward": "app"},
        "dns": {"listeners": [{"address": "127.0.0.1", "port": 5399}],
                "zones": [{"name": "example.com", "records": [
                    {"name": "www", "type": "A", "alias": {"pool": "app"}},
                    {"name": "svc", "type": "A", "policy": "failover", "set_identifier": "p",
                     "failover": "PRIMARY", "health_check": "pool/app/192.0.2.10:80",
                     "values": ["192.0.2.1"]},
                    {"name": "svc", "type": "A", "policy": "failover", "set_identifier": "s",
                     "failover": "SECONDARY", "values": ["192.0.2.2"]}]}]}})
    assert config.dns is not None
    return DnsRuntime(config.dns, config.listeners, config.pools, pool_health=pools)


def addresses(rt: DnsRuntime, name: str) -> list[str]:
    q = dns.message.make_query(name, dns.rdatatype.A)
    wire = rt.engine.answer(q.to_wire(), tcp=False)
    assert wire is not None
    return sorted(rd.address for rrset in dns.message.from_wire(wire).answer for rd in rrset)


def test_pool_targets_follow_the_pools_health() -> None:
    pools = Pools()
    rt = runtime(pools)
    # a target the pools do not know (yet) fails open
    assert addresses(rt, "www.example.com.") == ["192.0.2.10", "192.0.2.11"]
    assert addresses(rt, "svc.example.com.") == ["192.0.2.1"]
    version = rt.engine.version
    pools.set("app", "192.0.2.10:80", False)
    pools.set("app", "192.0.2.11:80", True)
    assert rt.engine.version != version  # prepared answers go
    assert addresses(rt, "www.example.com.") == ["192.0.2.11"]
    assert addresses(rt, "svc.example.com.") == ["192.0.2.2"]
    version = rt.engine.version
    assert rt.engine.version == version  # stays while nothing changes
    pools.set("app", "192.0.2.10:80", True)
    assert rt.engine.version != version
    assert addresses(rt, "www.example.com.") == ["192.0.2.10", "192.0.2.11"]
    assert addresses(rt, "svc.example.com.") == ["192.0.2.1"]


def test_without_pool_health_every_pool_target_reads_healthy() -> None:
    rt = runtime(None)
    assert rt.health.is_healthy("pool/app/192.0.2.10:80")
    assert rt.health.is_healthy("no-such-check")
    assert addresses(rt, "www.example.com.") == ["192.0.2.10", "192.0.2.11"]


def test_calculated_and_inverted_checks_follow_their_children() -> None:
    pools = Pools()
    a, b = "pool/app/192.0.2.10:80", "pool/app/192.0.2.11:80"
    config = parse_config({
        "listeners": [{"name": "web", "address": "127.0.0.1", "port": 8080}],
        "pools": {"app": {"targets": ["192.0.2.10:80", "192.0.2.11:80"]}},
        "default_route": {"forward": "app"},
        "dns": {"listeners": [{"address": "127.0.0.1", "port": 5399}],
                "health_checks": [
                    {"id": "and", "protocol": "calculated", "child_health_checks": [a, b]},
                    {"id": "or", "protocol": "calculated", "child_health_checks": [a, b],
                     "health_threshold": 1},
                    {"id": "none", "protocol": "calculated", "child_health_checks": [a, b],
                     "health_threshold": 0},
                    {"id": "nand", "protocol": "calculated", "child_health_checks": [a, b],
                     "invert": True}],
                "zones": [{"name": "example.com", "records": [
                    {"name": "svc", "type": "A", "policy": "failover", "set_identifier": "p",
                     "failover": "PRIMARY", "health_check": "and", "values": ["192.0.2.1"]},
                    {"name": "svc", "type": "A", "policy": "failover", "set_identifier": "s",
                     "failover": "SECONDARY", "values": ["192.0.2.2"]}]}]}})
    assert config.dns is not None
    rt = DnsRuntime(config.dns, config.listeners, config.pools, pool_health=pools)
    def states() -> dict[str, bool]:
        return {c: rt.health.is_healthy(c) for c in ("and", "or", "none", "nand")}
    assert states() == {"and": True, "or": True, "none": True, "nand": False}
    assert addresses(rt, "svc.example.com.") == ["192.0.2.1"]
    pools.set("app", "192.0.2.10:80", False)
    assert states() == {"and": False, "or": True, "none": True, "nand": True}
    assert addresses(rt, "svc.example.com.") == ["192.0.2.2"]   # the version moved with it
    pools.set("app", "192.0.2.11:80", False)
    assert states() == {"and": False, "or": False, "none": True, "nand": True}
    pools.set("app", "192.0.2.10:80", True)
    pools.set("app", "192.0.2.11:80", True)
    assert addresses(rt, "svc.example.com.") == ["192.0.2.1"]


def test_a_location_database_that_cannot_be_read_stops_the_start(tmp_path: Path) -> None:
    config = parse_config({
        "listeners": [{"name": "web", "address": "127.0.0.1", "port": 8080}],
        "pools": {"app": {"targets": ["192.0.2.10:80"]}},
        "default_route": {"forward": "app"},
        "dns": {"listeners": [{"address": "127.0.0.1", "port": 5399}],
                "location_database": "geo.mmdb", "zones": [{"name": "example.com"}]}})
    assert config.dns is not None
    with pytest.raises(ValueError, match=r"dns.location_database: cannot read .*geo.mmdb"):
        DnsRuntime(config.dns, config.listeners, config.pools, base_dir=str(tmp_path))
    (tmp_path / "geo.mmdb").write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="not a MaxMind DB file"):
        DnsRuntime(config.dns, config.listeners, config.pools, base_dir=str(tmp_path))
