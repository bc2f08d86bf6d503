"""The admin view of a zone: every record set and which health state it follows."""

from __future__ import annotations

from lbcdn.dns.alias import StaticAliases
from lbcdn.dns.config import load_dns_config
from lbcdn.dns.view import check_view, zone_records
from lbcdn.dns.zone import build_zones


class Down:
    def __init__(self, *down: str) -> None:
        self.down = set(down)

    def is_healthy(self, check_id: str) -> bool:
        return check_id not in self.down


POOL = {"app": [("192.0.2.10", "pool/app/192.0.2.10:80"),
                ("192.0.2.11", "pool/app/192.0.2.11:80")]}


def zone_view(*records: dict[str, object], health: Down) -> dict[str, dict[str, object]]:
    cfg = load_dns_config({"health_checks": [{"id": "ext", "host": "192.0.2.1"}],
                           "zones": [{"name": "example.com", "records": list(records)}]})
    (zone,) = build_zones(cfg, now=1_700_000_000, aliases=StaticAliases(pools=POOL))
    return {f'{r["name"]} {r["type"]} {r["set_identifier"]}': r
            for r in zone_records(zone, health)}


def test_check_view_names_the_source() -> None:
    health = Down("pool/a/b/[2001:db8::1]:80")
    assert check_view(None, health) is None
    assert check_view("pool/a/b/[2001:db8::1]:80", health) == {
        "source": "pool", "id": "pool/a/b/[2001:db8::1]:80", "pool": "a/b",
        "target": "[2001:db8::1]:80", "healthy": False}
    assert check_view("ext", health) == {"source": "route53_check", "id": "ext",
                                         "healthy": True}


def test_records_show_set_and_value_health() -> None:
    view = zone_view(
        {"name": "www", "type": "A", "alias": {"pool": "app"}},
        {"name": "raw", "type": "A", "alias": {"pool": "app", "evaluate_target_health": False}},
        {"name": "svc", "type": "A", "policy": "failover", "set_identifier": "p",
         "failover": "PRIMARY", "health_check": "pool/app/192.0.2.10:80",
         "values": ["192.0.2.1"]},
        {"name": "svc", "type": "A", "policy": "failover", "set_identifier": "s",
         "failover": "SECONDARY", "health_check": "ext", "values": ["192.0.2.2"]},
        health=Down("pool/app/192.0.2.10:80"))
    www = view["www.example.com. A None"]
    assert www["health"] is None
    assert www["alias"] == {"listener": None, "pool": "app", "evaluate_target_health": True}
    assert [(v["value"], v["health"]["healthy"]) for v in www["values"]] == [
        ("192.0.2.10", False), ("192.0.2.11", True)]
    assert [v["health"] for v in view["raw.example.com. A None"]["values"]] == [None, None]
    primary = view["svc.example.com. A p"]
    assert (primary["policy"], primary["failover"]) == ("failover", "PRIMARY")
    assert primary["health"] == {"source": "pool", "id": "pool/app/192.0.2.10:80",
                                 "pool": "app", "target": "192.0.2.10:80", "healthy": False}
    assert primary["values"] == [{"value": "192.0.2.1", "health": None}]
    assert view["svc.example.com. A s"]["health"]["source"] == "route53_check"
    assert view["example.com. SOA None"]["health"] is None


def test_following_health_lists_only_sets_that_follow_one() -> None:
    cfg = load_dns_config({"zones": [{"name": "example.com", "records": [
        {"name": "www", "type": "A", "alias": {"pool": "app"}},
        {"name": "raw", "type": "A", "values": ["192.0.2.9"]}]}]})
    (zone,) = build_zones(cfg, now=1_700_000_000, aliases=StaticAliases(pools=POOL))
    assert [r["name"] for r in zone_records(zone, Down(), following_health=True)] == [
        "www.example.com."]
