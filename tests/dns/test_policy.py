"""Routing policies as pure functions, the query reader, and alias directories."""

from __future__ import annotations

import random
import struct

import dns.message

from lbcdn.dns.alias import aliases_from_config, parse_pool_check, pool_check_id
from lbcdn.dns.config import AliasConfig
from lbcdn.dns.policy import select, static_values
from lbcdn.dns.rdata import parse_rdata_text
from lbcdn.dns.wire import FORMERR, NOTIMP, cache_key, parse_query
from lbcdn.dns.zone import RecordSet, Value

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
