"""Routing policies as pure functions, the query reader, and alias directories."""

from __future__ import annotations

import ipaddress
import math
import random
import struct
from collections.abc import Iterator

import dns.message
import pytest

from lbcdn.dns.alias import aliases_from_config, parse_pool_check, pool_check_id
from lbcdn.dns.config import (AliasConfig, CidrRoutingConfig, GeolocationConfig,
                              GeoproximityConfig)
from lbcdn.dns.locate import CidrCollection, Client, GeoDatabase
from lbcdn.dns.policy import Where, distance_km, select, static_values
from lbcdn.dns.rdata import parse_rdata_text
from lbcdn.dns.wire import FORMERR, NOTIMP, cache_key, parse_query
from lbcdn.dns.zone import RecordSet, Value
from tests.dns.geodb import city, write_geo_db

NAME = (b"x", b"example", b"com")


class Down:
    def __init__(self, *down: str) -> None:
        self.down = set(down)

    def is_healthy(self, check_id: str) -> bool:
        return check_id not in self.down


def a(*addresses: str, check: str | None = None) -> tuple[Value, ...]:
    return tuple(Value.of(parse_rdata_text(1, x, ()), check) for x in addresses)


def rs(values: tuple[Value, ...], policy: str = "simple", **kw: object) -> RecordSet:
    return RecordSet(NAME, 1, 60, values, policy=policy, **kw)  # type: ignore[arg-type]


def text(values: list[Value]) -> list[str]:
    return [str(v.rd) for v in values]


def test_simple_rotation_and_value_health() -> None:
    group = [rs(a("192.0.2.1") + a("192.0.2.2", check="c") + a("192.0.2.3"))]
    assert text(select(group, Down(), random.Random(), 1)[1]) == [
        "192.0.2.2", "192.0.2.3", "192.0.2.1"]
    assert text(select(group, Down("c"), random.Random(), 0)[1]) == ["192.0.2.1", "192.0.2.3"]
    all_down = [rs(a("192.0.2.1", "192.0.2.2", check="c"))]
    assert len(select(all_down, Down("c"), random.Random(), 0)[1]) == 2  # fail open


def test_weighted_zero_weights_and_fail_open() -> None:
    group = [rs(a("192.0.2.1"), "weighted", set_identifier="a", weight=0),
             rs(a("192.0.2.2"), "weighted", set_identifier="b", weight=0, health_check="h")]
    got = {text(select(group, Down(), random.Random(i), 0)[1])[0] for i in range(20)}
    assert got == {"192.0.2.1", "192.0.2.2"}
    group = [rs(a("192.0.2.1"), "weighted", set_identifier="a", weight=5, health_check="h")]
    assert text(select(group, Down("h"), random.Random(), 0)[1]) == ["192.0.2.1"]


def test_static_values() -> None:
    weighted = [rs(a("192.0.2.1"), "weighted", set_identifier="a", weight=1),
                rs(a("192.0.2.2"), "weighted", set_identifier="b", weight=0)]
    assert text(static_values(weighted)[1]) == ["192.0.2.1"]
    failover = [rs(a("192.0.2.2"), "failover", set_identifier="s", failover="SECONDARY"),
                rs(a("192.0.2.1"), "failover", set_identifier="p", failover="PRIMARY")]
    assert text(static_values(failover)[1]) == ["192.0.2.1"]


def period(group: list[RecordSet], health: Down | None = None) -> int | None:
    return select(group, health or Down(), random.Random(1), 0).period


def test_period_says_how_a_selection_varies() -> None:
    three = [rs(a("192.0.2.1", "192.0.2.2") + a("192.0.2.3", check="c"))]
    assert period(three) == 3 and period(three, Down("c")) == 2
    assert [text(select(three, Down(), random.Random(), t).values) for t in (0, 3)] == [
        ["192.0.2.1", "192.0.2.2", "192.0.2.3"]] * 2
    assert period([rs(a("192.0.2.1"))]) == 1
    weighted = [rs(a("192.0.2.1"), "weighted", set_identifier="a", weight=1, health_check="h"),
                rs(a("192.0.2.2"), "weighted", set_identifier="b", weight=2)]
    assert period(weighted) is None
    assert period(weighted, Down("h")) == 1  # one candidate left: no chance involved
    zeros = [rs(a("192.0.2.1"), "weighted", set_identifier="a", weight=0),
             rs(a("192.0.2.2"), "weighted", set_identifier="b", weight=0)]
    assert period(zeros) is None and period(zeros[:1]) == 1
    failover = [rs(a("192.0.2.1", "192.0.2.2"), "failover", set_identifier="p",
                   failover="PRIMARY")]
    assert period(failover) == 1
    multi = [rs(a("192.0.2.1"), "multivalue", set_identifier="a"),
             rs(a("192.0.2.1"), "multivalue", set_identifier="b")]
    assert period(multi) == 1  # one distinct value
    multi.append(rs(a("192.0.2.2"), "multivalue", set_identifier="c"))
    assert period(multi) is None


def test_ns_sets_keep_their_order() -> None:
    """Route 53 and Knot DNS answer an NS set in one order; so does a referral here."""
    ns = tuple(Value.of(parse_rdata_text(2, x, ()), None) for x in ("ns1.example.com.",
                                                                     "ns2.example.net."))
    group = [RecordSet(NAME, 2, 60, ns)]
    firsts = {str(select(group, Down(), random.Random(), t).values[0].rd) for t in range(4)}
    assert firsts == {"ns1.example.com."} and period(group) == 1


def test_parse_query_shapes() -> None:
    q = dns.message.make_query("Www.Example.com", "AAAA", use_edns=0, payload=1400,
                               want_dnssec=True)
    p = parse_query(q.to_wire())
    assert p is not None and p.error == 0
    assert p.qname == (b"www", b"example", b"com") and p.qtype == 28 and p.qclass == 1
    assert p.edns is not None and (p.edns.payload, p.edns.version, p.edns.do) == (1400, 0, True)
    assert p.question is not None and p.question[:p.qname_len].startswith(b"\x03Www")
    assert cache_key(p).endswith(b"\x03www\x07example\x03com\x00\x00\x1c\x00\x01")
    header = struct.pack("!HHHHHH", 7, 0x2800, 1, 0, 0, 0)  # opcode 5 (UPDATE)
    p = parse_query(header + b"\x00\x00\x06\x00\x01")
    assert p is not None and p.error == NOTIMP and p.question == b"\x00\x00\x06\x00\x01"
    p = parse_query(struct.pack("!HHHHHH", 7, 0, 1, 0, 0, 0) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01")
    assert p is not None and p.error == FORMERR and p.question is None
    assert parse_query(struct.pack("!HHHHHH", 7, 0x8000, 1, 0, 0, 0)) is None


def test_aliases_from_config() -> None:
    class L:
        def __init__(self, name: str, address: str) -> None:
            self.name, self.address = name, address

    class T:
        def __init__(self, host: str, port: int) -> None:
            self.host, self.port = host, port

    class P:
        def __init__(self, *targets: T) -> None:
            self.targets = targets

    d = aliases_from_config([L("pub", "0.0.0.0"), L("lo", "127.0.0.1")],
                            {"web": P(T("192.0.2.1", 80), T("app.internal", 80),
                                      T("2001:db8::1", 8080))}, ["198.51.100.1"])
    assert d.alias_addresses(AliasConfig(listener="pub")) == [("198.51.100.1", None)]
    assert d.alias_addresses(AliasConfig(listener="lo")) == [("127.0.0.1", None)]
    assert d.alias_addresses(AliasConfig(pool="web")) == [
        ("192.0.2.1", "pool/web/192.0.2.1:80"), ("2001:db8::1", "pool/web/[2001:db8::1]:8080")]
    assert pool_check_id("p", "::1", 1) == "pool/p/[::1]:1"
    assert parse_pool_check("pool/p/[::1]:1") == ("p", "[::1]:1")
    assert parse_pool_check("pool/a/b/192.0.2.1:80") == ("a/b", "192.0.2.1:80")
    assert parse_pool_check("ext") is None
    assert parse_pool_check("pool/192.0.2.1:80") is None


# -- client-dependent policies ------------------------------------------------------------

def _client(text: str) -> Client:
    addr, _, plen = text.partition("/")
    ip = ipaddress.ip_address(addr)
    return Client(ip.version, int(ip), int(plen or ip.max_prefixlen))


OFFICES = {"offices": CidrCollection("offices", {"berlin": ["198.51.100.0/24"],
                                                 "paris": ["203.0.113.0/24"]})}


def cidr_group(*locations: str) -> list[RecordSet]:
    return [rs(a(f"192.0.2.{i + 1}"), "cidr", set_identifier=loc,
               health_check=f"hc-{loc}", cidr_routing=CidrRoutingConfig("offices", loc))
            for i, loc in enumerate(locations)]


def pick(group: list[RecordSet], client: str | None, health: Down | None = None,
         geo: GeoDatabase | None = None) -> tuple[list[str], int]:
    where = Where(_client(client) if client else None, OFFICES, geo)
    sel = select(group, health or Down(), random.Random(), 0, where)
    assert sel.period == 1
    return text(sel.values), sel.scope


def test_cidr_picks_the_location_then_the_default() -> None:
    group = cidr_group("berlin", "paris", "*")
    assert pick(group, "198.51.100.7") == (["192.0.2.1"], 24)
    assert pick(group, "203.0.113.0/24") == (["192.0.2.2"], 24)
    assert pick(group, "192.0.2.0/24")[0] == ["192.0.2.3"]          # in no location
    assert pick(group, "198.51.100.0/0") == (["192.0.2.3"], 0)      # ECS /0: opted out
    assert pick(group, None) == (["192.0.2.3"], 0)                  # no address at all
    # an unhealthy location gives way to the default; everything down: fail open
    assert pick(group, "198.51.100.7", Down("hc-berlin")) == (["192.0.2.3"], 24)
    assert pick(group, "198.51.100.7", Down("hc-berlin", "hc-*")) == (["192.0.2.1"], 24)


def test_cidr_without_a_default_answers_nothing_for_other_clients() -> None:
    group = cidr_group("berlin")
    assert pick(group, "10.0.0.1") == ([], 1)       # 10/8 and 198, 203/8 differ in bit 1
    assert pick(group, "203.0.113.1") == ([], 24)   # paris has no record set here
    assert pick(group, "198.51.100.1") == (["192.0.2.1"], 24)


def _geo_rs(i: int, **where: str) -> RecordSet:
    return rs(a(f"192.0.2.{i}"), "geolocation", set_identifier=str(i),
              health_check=f"g{i}", geolocation=GeolocationConfig(**where))


@pytest.fixture(scope="module")
def geo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GeoDatabase]:
    path = write_geo_db(tmp_path_factory.mktemp("geo") / "geo.mmdb", {
        "198.51.100.0/24": city("EU", "DE", "BY", (48.14, 11.58)),     # Munich
        "198.51.101.0/24": city("EU", "DE", "BE", (52.52, 13.40)),     # Berlin
        "203.0.113.0/24": city("EU", "FR", None, (48.86, 2.35)),       # Paris
        "192.0.2.0/24": city("NA", "US", "CA", (37.77, -122.42)),      # San Francisco
        "100.64.0.0/24": city("AS", "JP"),                              # no coordinates
    })
    db = GeoDatabase(str(path))
    yield db
    db.close()


def test_geolocation_most_specific_first(geo: GeoDatabase) -> None:
    group = [_geo_rs(1, country="DE", subdivision="BY"), _geo_rs(2, country="DE"),
             _geo_rs(3, continent="EU"), _geo_rs(4, country="*")]
    assert pick(group, "198.51.100.1", geo=geo) == (["192.0.2.1"], 24)
    assert pick(group, "198.51.101.1", geo=geo) == (["192.0.2.2"], 24)
    assert pick(group, "203.0.113.0/24", geo=geo) == (["192.0.2.3"], 24)
    assert pick(group, "192.0.2.1", geo=geo)[0] == ["192.0.2.4"]
    assert pick(group, "10.9.9.9", geo=geo)[0] == ["192.0.2.4"]   # not in the database
    # unhealthy: the next broader location answers
    assert pick(group, "198.51.100.1", Down("g1"), geo=geo)[0] == ["192.0.2.2"]
    assert pick(group, "198.51.100.1", Down("g1", "g2"), geo=geo)[0] == ["192.0.2.3"]
    assert pick(group[:3], "192.0.2.1", geo=geo)[0] == []             # no default: NODATA


def _prox_rs(i: int, lat: float, lon: float, bias: int = 0) -> RecordSet:
    return rs(a(f"192.0.2.{i}"), "geoproximity", set_identifier=str(i), health_check=f"p{i}",
              geoproximity=GeoproximityConfig(lat, lon, bias))


def test_geoproximity_nearest_with_bias(geo: GeoDatabase) -> None:
    frankfurt, virginia = (50.11, 8.68), (38.9, -77.0)
    group = [_prox_rs(1, *frankfurt), _prox_rs(2, *virginia)]
    assert pick(group, "203.0.113.1", geo=geo) == (["192.0.2.1"], 24)   # Paris
    assert pick(group, "192.0.2.1", geo=geo) == (["192.0.2.2"], 24)     # San Francisco
    # Paris-Frankfurt ~480 km, Paris-Virginia ~6200 km: a +99 bias on Virginia (x0.01)
    # draws Paris over
    biased = [_prox_rs(1, *frankfurt), _prox_rs(2, *virginia, bias=99)]
    assert pick(biased, "203.0.113.1", geo=geo)[0] == ["192.0.2.2"]
    assert pick(group, "203.0.113.1", Down("p1"), geo=geo)[0] == ["192.0.2.2"]
    # no coordinates for the client: the first healthy set
    assert pick(group, "100.64.0.1", Down("p1"), geo=geo)[0] == ["192.0.2.2"]


def test_distance_km() -> None:
    assert distance_km(48.86, 2.35, 51.51, -0.13) == pytest.approx(344, abs=5)  # Paris-London
    assert distance_km(0, 0, 0, 180) == pytest.approx(math.pi * 6371, rel=1e-6)


def test_static_values_of_client_policies() -> None:
    assert text(static_values(cidr_group("berlin", "*"))[1]) == ["192.0.2.2"]
    assert text(static_values(cidr_group("berlin", "paris"))[1]) == ["192.0.2.1", "192.0.2.2"]
