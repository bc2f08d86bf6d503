"""The answer engine, fed wire bytes built with dnspython: rcode, flags, every section, TTLs,
case, EDNS, truncation sizes, routing policies, cache keys, versions, and a fuzz test."""

from __future__ import annotations

import random
import struct
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbcdn.dns.changes import ChangeError, parse_changes
from lbcdn.dns.config import load_dns_config
from lbcdn.dns.engine import Engine
from lbcdn.dns.locate import CidrCollection
from lbcdn.dns.zone import build_zones

RECORDS: list[dict[str, Any]] = [
    {"name": "@", "type": "A", "values": ["192.0.2.1"]},
    {"name": "@", "type": "MX", "values": ["10 mx1"]},
    {"name": "@", "type": "TXT", "values": ['"v=spf1 -all"']},
    {"name": "@", "type": "CAA", "values": ['0 issue "letsencrypt.org"']},
    {"name": "www", "type": "CNAME", "values": ["web"]},
    {"name": "web", "type": "A", "values": ["192.0.2.10"], "ttl_s": 60},
    {"name": "web", "type": "AAAA", "values": ["2001:db8::10"], "ttl_s": 60},
    {"name": "mx1", "type": "A", "values": ["192.0.2.25"]},
    {"name": "out", "type": "CNAME", "values": ["www.example.net."]},
    {"name": "dangling", "type": "CNAME", "values": ["missing"]},
    {"name": "loop1", "type": "CNAME", "values": ["loop2"]},
    {"name": "loop2", "type": "CNAME", "values": ["loop1"]},
    {"name": "*.wild", "type": "A", "values": ["192.0.2.77"]},
    {"name": "*.wild", "type": "TXT", "values": ['"wild"']},
    {"name": "exists.wild", "type": "TXT", "values": ['"explicit"']},
    {"name": "deep.ent", "type": "A", "values": ["192.0.2.5"]},
    {"name": "child", "type": "NS", "values": ["ns1.child", "ns.elsewhere.net."]},
    {"name": "ns1.child", "type": "A", "values": ["192.0.2.53"]},
    {"name": "_sip._tcp", "type": "SRV", "values": ["10 5 5060 mx1"]},
    {"name": "big", "type": "TXT",
     "values": [f'"{i:02d}' + "x" * 200 + '"' for i in range(12)]},
    {"name": "many", "type": "A", "values": [f"192.0.2.{i}" for i in range(100, 140)]},
]


class Health:
    def __init__(self) -> None:
        self.down: set[str] = set()
        self.generation = 0

    def is_healthy(self, check_id: str) -> bool:
        return check_id not in self.down

    def set(self, check_id: str, healthy: bool) -> None:
        (self.down.discard if healthy else self.down.add)(check_id)
        self.generation += 1


def make_engine(records: list[dict[str, Any]] | None = None, health: Health | None = None,
                **zone: Any) -> Engine:
    cfg = load_dns_config({
        "health_checks": [{"id": "a", "host": "192.0.2.1"}, {"id": "b", "host": "192.0.2.2"}],
        "zones": [{"name": "example.com", "ns": ["ns1", "ns2.example.net."],
                   "records": RECORDS if records is None else records,
                   "soa": {"serial": 7, "minimum_s": 120, "ttl_s": 900}, **zone}]})
    return Engine(build_zones(cfg, now=1_700_000_000), health or Health(), random.Random(5))


@pytest.fixture(scope="module")
def engine() -> Engine:
    return make_engine()


def ask(engine: Engine, name: str, rtype: str = "A", *, tcp: bool = False, max_udp: int = 1232,
        **kw: Any) -> dns.message.Message:
    q = dns.message.make_query(name, rtype, **kw)
    wire = engine.answer(q.to_wire(), tcp=tcp, max_udp=max_udp)
    assert wire is not None
    r = dns.message.from_wire(wire)
    assert r.id == q.id
    return r


def rrs(section: list[dns.rrset.RRset]) -> list[str]:
    return sorted(str(rr).lower() for rrset in section for rr in rrset.to_text().splitlines())


def flags(r: dns.message.Message) -> set[str]:
    return set(dns.flags.to_text(r.flags).split())


SOA = "example.com. 120 in soa ns1.example.com. hostmaster.example.com. 7 7200 900 1209600 120"


def test_positive_answer_flags_and_sections(engine: Engine) -> None:
    r = ask(engine, "web.example.com", "A")
    assert r.rcode() == dns.rcode.NOERROR
    assert flags(r) == {"QR", "AA", "RD"}
    assert rrs(r.answer) == ["web.example.com. 60 in a 192.0.2.10"]
    assert r.authority == [] and r.additional == []


def test_rd_and_cd_copied_ra_z_ad_clear(engine: Engine) -> None:
    q = dns.message.make_query("web.example.com", "A")
    q.flags = dns.flags.CD | dns.flags.AD  # no RD
    wire = bytearray(q.to_wire())
    wire[3] |= 0x40  # the Z bit
    r = dns.message.from_wire(engine.answer(bytes(wire), tcp=False) or b"")
    assert flags(r) == {"QR", "AA", "CD"}
    assert r.to_wire()[3] & 0x40 == 0


def test_nxdomain_with_soa_and_negative_ttl(engine: Engine) -> None:
    r = ask(engine, "nope.example.com")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert flags(r) == {"QR", "AA", "RD"}
    assert r.answer == []
    assert rrs(r.authority) == [SOA]


def test_nodata_for_missing_and_unknown_types(engine: Engine) -> None:
    for rtype in ("AAAA", "TYPE65400", "HINFO"):
        r = ask(engine, "mx1.example.com", rtype)
        assert r.rcode() == dns.rcode.NOERROR and r.answer == []
        assert rrs(r.authority) == [SOA]
        assert "AA" in flags(r)


def test_empty_non_terminal_is_nodata_not_nxdomain(engine: Engine) -> None:
    r = ask(engine, "ent.example.com")
    assert r.rcode() == dns.rcode.NOERROR and r.answer == [] and rrs(r.authority) == [SOA]


def test_case_kept_in_question_and_owner(engine: Engine) -> None:
    r = ask(engine, "WeB.ExAmPlE.CoM", "A")
    assert r.question[0].name.to_text() == "WeB.ExAmPlE.CoM."
    assert r.answer[0].name.to_text() == "WeB.ExAmPlE.CoM."
    assert rrs(r.answer) == ["web.example.com. 60 in a 192.0.2.10"]


def test_cname_chain_inside_zone(engine: Engine) -> None:
    r = ask(engine, "www.example.com", "AAAA")
    assert r.rcode() == dns.rcode.NOERROR and "AA" in flags(r)
    assert rrs(r.answer) == ["web.example.com. 60 in aaaa 2001:db8::10",
                             "www.example.com. 300 in cname web.example.com."]
    # Asking for the CNAME itself does not follow it.
    r = ask(engine, "www.example.com", "CNAME")
    assert rrs(r.answer) == ["www.example.com. 300 in cname web.example.com."]


def test_cname_out_of_zone_dangling_and_loop(engine: Engine) -> None:
    r = ask(engine, "out.example.com")
    assert r.rcode() == dns.rcode.NOERROR
    assert rrs(r.answer) == ["out.example.com. 300 in cname www.example.net."]
    assert r.authority == []
    r = ask(engine, "dangling.example.com")
    assert r.rcode() == dns.rcode.NXDOMAIN  # RFC 6604: the last name's rcode
    assert rrs(r.answer) == ["dangling.example.com. 300 in cname missing.example.com."]
    assert rrs(r.authority) == [SOA]
    r = ask(engine, "loop1.example.com")
    assert r.rcode() == dns.rcode.NOERROR
    assert len(r.answer) == 2


def test_wildcards(engine: Engine) -> None:
    r = ask(engine, "a.b.wild.example.com", "A")
    assert rrs(r.answer) == ["a.b.wild.example.com. 300 in a 192.0.2.77"]
    r = ask(engine, "x.wild.example.com", "MX")
    assert r.rcode() == dns.rcode.NOERROR and r.answer == [] and rrs(r.authority) == [SOA]
    # An existing name is not covered by the wildcard.
    r = ask(engine, "exists.wild.example.com", "A")
    assert r.rcode() == dns.rcode.NOERROR and r.answer == []
    r = ask(engine, "x.exists.wild.example.com", "A")
    assert r.rcode() == dns.rcode.NXDOMAIN
    # The wildcard owner itself answers literally.
    r = ask(engine, "*.wild.example.com", "TXT")
    assert rrs(r.answer) == ['*.wild.example.com. 300 in txt "wild"']


def test_referral_with_glue(engine: Engine) -> None:
    for name in ("child.example.com", "host.deep.child.example.com"):
        r = ask(engine, name, "A")
        assert r.rcode() == dns.rcode.NOERROR
        assert flags(r) == {"QR", "RD"}  # not authoritative
        assert r.answer == []
        assert rrs(r.authority) == ["child.example.com. 300 in ns ns.elsewhere.net.",
                                    "child.example.com. 300 in ns ns1.child.example.com."]
        assert rrs(r.additional) == ["ns1.child.example.com. 300 in a 192.0.2.53"]
    # Glue is never answered authoritatively: it is below the cut.
    r = ask(engine, "ns1.child.example.com", "A")
    assert "AA" not in flags(r) and r.answer == []


def test_ds_at_delegation_answered_by_parent(engine: Engine) -> None:
    r = ask(engine, "child.example.com", "DS")
    assert "AA" in flags(r) and r.answer == [] and rrs(r.authority) == [SOA]


def test_refused_outside_zones_and_other_classes(engine: Engine) -> None:
    for name, rdclass in (("example.org", "IN"), ("com", "IN"), ("example.com", "CH")):
        q = dns.message.make_query(name, "A", rdclass=rdclass)
        r = dns.message.from_wire(engine.answer(q.to_wire(), tcp=False) or b"")
        assert r.rcode() == dns.rcode.REFUSED
        assert flags(r) == {"QR", "RD"}
        assert r.answer == r.authority == []
        assert r.question[0].name == dns.name.from_text(name)


def test_any_is_answered_minimally(engine: Engine) -> None:
    r = ask(engine, "example.com", "ANY")
    assert len(r.answer) == 1 and r.answer[0].rdtype == dns.rdatatype.A
    r = ask(engine, "www.example.com", "ANY")
    assert rrs(r.answer) == ["www.example.com. 300 in cname web.example.com."]


def test_additional_addresses_for_mx_srv_ns(engine: Engine) -> None:
    r = ask(engine, "example.com", "MX")
    assert rrs(r.additional) == ["mx1.example.com. 300 in a 192.0.2.25"]
    r = ask(engine, "_sip._tcp.example.com", "SRV")
    assert rrs(r.additional) == ["mx1.example.com. 300 in a 192.0.2.25"]
    r = ask(engine, "example.com", "NS")
    assert rrs(r.answer) == ["example.com. 172800 in ns ns1.example.com.",
                             "example.com. 172800 in ns ns2.example.net."]


def test_soa_txt_caa(engine: Engine) -> None:
    assert rrs(ask(engine, "example.com", "SOA").answer) == [SOA.replace(" 120 in", " 900 in")]
    assert rrs(ask(engine, "example.com", "TXT").answer) == [
        'example.com. 300 in txt "v=spf1 -all"']
    assert rrs(ask(engine, "example.com", "CAA").answer) == [
        'example.com. 300 in caa 0 issue "letsencrypt.org"']


# -- EDNS and sizes ----------------------------------------------------------------------


def test_edns_echoed_with_our_size_and_do(engine: Engine) -> None:
    r = ask(engine, "web.example.com", use_edns=0, payload=4096, want_dnssec=True)
    assert r.edns == 0 and r.payload == 1232
    assert r.ednsflags & dns.flags.DO
    r = ask(engine, "web.example.com", use_edns=0, payload=4096)
    assert r.edns == 0 and not r.ednsflags & dns.flags.DO
    r = ask(engine, "web.example.com")
    assert r.edns == -1


def test_badvers(engine: Engine) -> None:
    r = ask(engine, "web.example.com", use_edns=1)
    assert r.rcode() == dns.rcode.BADVERS
    assert r.edns == 0 and r.answer == []
    assert "AA" not in flags(r)


def test_unknown_options_ignored(engine: Engine) -> None:
    opts = [dns.edns.GenericOption(65001, b"hello"), dns.edns.GenericOption(10, b"12345678")]
    r = ask(engine, "web.example.com", use_edns=0, options=opts)
    assert r.rcode() == dns.rcode.NOERROR and list(r.options) == []
    assert rrs(r.answer) == ["web.example.com. 60 in a 192.0.2.10"]


def _size(engine: Engine, name: str, rtype: str, *, tcp: bool = False, max_udp: int = 1232,
          **kw: Any) -> tuple[int, dns.message.Message]:
    q = dns.message.make_query(name, rtype, **kw)
    wire = engine.answer(q.to_wire(), tcp=tcp, max_udp=max_udp) or b""
    return len(wire), dns.message.from_wire(wire)


def test_truncation_without_edns_at_512(engine: Engine) -> None:
    n, r = _size(engine, "big.example.com", "TXT")
    assert n <= 512 and "TC" in flags(r) and r.answer == [] and "AA" in flags(r)
    assert r.question[0].name == dns.name.from_text("big.example.com")
    n, r = _size(engine, "big.example.com", "TXT", tcp=True)
    assert n > 2400 and "TC" not in flags(r) and len(r.answer[0]) == 12


def test_truncation_follows_client_size_capped(engine: Engine) -> None:
    # 40 A records: ~ 12 + 21 + 40*16 = 673 bytes: fits 1232 and 700, not 600 or 512.
    n, r = _size(engine, "many.example.com", "A", use_edns=0, payload=4096)
    assert "TC" not in flags(r) and len(r.answer[0]) == 40 and n <= 1232
    n, r = _size(engine, "many.example.com", "A", use_edns=0, payload=600)
    assert "TC" in flags(r) and n <= 600 and r.edns == 0
    n, r = _size(engine, "many.example.com", "A", use_edns=0, payload=100)  # below 512 -> 512
    assert "TC" in flags(r) and n <= 512
    n, r = _size(engine, "big.example.com", "TXT", use_edns=0, payload=65000)
    assert "TC" in flags(r) and n <= 1232  # the cap, whatever the client says
    n, r = _size(engine, "many.example.com", "A", use_edns=0, payload=4096, max_udp=600)
    assert "TC" in flags(r) and n <= 600  # the server's own max


def test_optional_additional_dropped_before_truncating() -> None:
    many = [f"{i} mx{i}" for i in range(20)]
    records = [{"name": "@", "type": "MX", "values": many}] + [
        {"name": f"mx{i}", "type": "AAAA", "values": [f"2001:db8::{i + 1}"]} for i in range(20)]
    e = make_engine(records)
    n, r = _size(e, "example.com", "MX", tcp=True)
    assert len(r.additional) == 20
    n, r = _size(e, "example.com", "MX")
    assert n <= 512 and "TC" not in flags(r) and len(r.answer[0]) == 20 and r.additional == []


def test_referral_glue_that_does_not_fit_sets_tc() -> None:
    records = [{"name": "sub", "type": "NS", "values": [f"ns{i}.sub" for i in range(12)]}] + [
        {"name": f"ns{i}.sub", "type": "AAAA", "values": [f"2001:db8::{i + 1}"]}
        for i in range(12)]
    e = make_engine(records)
    n, r = _size(e, "x.sub.example.com", "A")
    assert "TC" in flags(r) and n <= 512
    n, r = _size(e, "x.sub.example.com", "A", tcp=True)
    assert len(r.additional) == 12


# -- malformed and unusual packets -------------------------------------------------------


def test_silence_for_responses_and_short_headers(engine: Engine) -> None:
    q = dns.message.make_query("web.example.com", "A")
    q.flags |= dns.flags.QR
    assert engine.answer(q.to_wire(), tcp=False) is None
    assert engine.answer(b"\x12\x34\x01", tcp=False) is None
    assert engine.answer(b"", tcp=True) is None


def _header(qid: int, flags_: int, qd: int, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags_, qd, an, ns, ar)


def _rcode(wire: bytes | None) -> int:
    assert wire is not None and len(wire) >= 12
    assert wire[2] & 0x80  # QR
    return wire[3] & 0x0F


def test_formerr_cases(engine: Engine) -> None:
    good_q = b"\x03web\x07example\x03com\x00\x00\x01\x00\x01"
    cases = [
        _header(1, 0x0100, 0),                                   # no question
        _header(1, 0x0100, 2) + good_q + good_q,                 # two questions
        _header(1, 0x0100, 1) + good_q[:-2],                     # cut short
        _header(1, 0x0100, 1) + b"\xc0\x0c\x00\x01\x00\x01",     # compressed qname
        _header(1, 0x0100, 1) + good_q + b"junk",                # trailing bytes
        _header(1, 0x0100, 1, an=1) + good_q,                    # answer count, no answer
        _header(1, 0x0100, 1, ar=2) + good_q + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00" * 2,
        _header(1, 0x0100, 1, ar=1) + good_q + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x03abc",
    ]
    for wire in cases:
        out = engine.answer(wire, tcp=False)
        assert _rcode(out) == dns.rcode.FORMERR, wire
        assert out is not None and out[:2] == b"\x00\x01"


def test_formerr_and_notimp_answers_to_an_opt_carry_an_opt(engine: Engine) -> None:
    """RFC 6891 6.1.1/7: whatever is wrong with the query, its OPT gets one back."""
    good_q = b"\x03web\x07example\x03com\x00\x00\x01\x00\x01"
    opt = b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"
    tsig_like = b"\x01k\x00\x00\xfa\x00\xff\x00\x00\x00\x00\x00\x00"
    cases = [
        (_header(1, 0x0100, 0, ar=1) + opt, dns.rcode.FORMERR),                # no question
        (_header(1, 0x0100, 2, ar=1) + good_q + good_q + opt, dns.rcode.FORMERR),
        (_header(1, 0x0100, 1, ar=2) + good_q + opt * 2, dns.rcode.FORMERR),    # two OPTs
        (_header(1, 0x0100, 1, ar=1) + good_q + b"\xc0\x0c" + opt[1:], dns.rcode.FORMERR),
        (_header(1, 0x0100, 1, ar=1) + good_q + opt[:-2] + b"\x00\x03abc",   # broken option
         dns.rcode.FORMERR),
        (_header(1, 0x0100, 1, ar=2) + good_q + tsig_like + opt, dns.rcode.FORMERR),  # TSIG 1st
        (_header(1, 0x1000, 1, ar=1) + good_q + opt, dns.rcode.NOTIMP),         # STATUS
    ]
    for wire, rcode in cases:
        out = engine.answer(wire, tcp=False)
        assert _rcode(out) == rcode, wire
        r = dns.message.from_wire(out or b"")
        assert r.edns == 0 and r.payload >= 512, wire


def test_notimp_for_other_opcodes(engine: Engine) -> None:
    for opcode in (dns.opcode.IQUERY, dns.opcode.STATUS, dns.opcode.NOTIFY, dns.opcode.UPDATE, 7):
        q = dns.message.make_query("example.com", "SOA")
        wire = bytearray(q.to_wire())
        wire[2] = (wire[2] & 0x87) | (opcode << 3)
        out = engine.answer(bytes(wire), tcp=False)
        assert _rcode(out) == dns.rcode.NOTIMP
        assert out is not None and (out[2] >> 3) & 0xF == opcode


def test_transfer_types_over_engine_are_notimp(engine: Engine) -> None:
    for rtype in ("AXFR", "IXFR"):
        q = dns.message.make_query("example.com", rtype)
        assert _rcode(engine.answer(q.to_wire(), tcp=False)) == dns.rcode.NOTIMP


def test_other_additional_records_are_skipped(engine: Engine) -> None:
    q = dns.message.make_query("web.example.com", "A", use_edns=0)
    q.additional.append(dns.rrset.from_text("x.example.com.", 0, "IN", "A", "192.0.2.9"))
    r = dns.message.from_wire(engine.answer(q.to_wire(), tcp=False) or b"")
    assert r.rcode() == dns.rcode.NOERROR and len(r.answer) == 1 and r.edns == 0


# -- routing policies --------------------------------------------------------------------


def _addresses(engine: Engine, name: str) -> list[str]:
    r = ask(engine, name)
    return [rd.address for rrset in r.answer for rd in rrset]


def test_simple_rotates(engine: Engine) -> None:
    e = make_engine([{"name": "rr", "type": "A", "values": ["192.0.2.1", "192.0.2.2",
                                                            "192.0.2.3"]}])
    firsts = [_addresses(e, "rr.example.com")[0] for _ in range(6)]
    assert firsts == ["192.0.2.1", "192.0.2.2", "192.0.2.3"] * 2
    assert sorted(_addresses(e, "rr.example.com")) == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]


def test_weighted_distribution_and_health() -> None:
    health = Health()
    e = make_engine([
        {"name": "w", "type": "A", "values": ["192.0.2.1"], "policy": "weighted",
         "set_identifier": "one", "weight": 3, "health_check": "a"},
        {"name": "w", "type": "A", "values": ["192.0.2.2"], "policy": "weighted",
         "set_identifier": "two", "weight": 1},
        {"name": "w", "type": "A", "values": ["192.0.2.3"], "policy": "weighted",
         "set_identifier": "zero", "weight": 0},
    ], health)
    counts: dict[str, int] = {}
    for _ in range(400):
        (a,) = _addresses(e, "w.example.com")
        counts[a] = counts.get(a, 0) + 1
    assert set(counts) == {"192.0.2.1", "192.0.2.2"}
    assert 240 <= counts["192.0.2.1"] <= 360
    health.set("a", False)
    assert {_addresses(e, "w.example.com")[0] for _ in range(20)} == {"192.0.2.2"}


def test_failover() -> None:
    health = Health()
    e = make_engine([
        {"name": "f", "type": "A", "values": ["192.0.2.1"], "policy": "failover",
         "set_identifier": "p", "failover": "PRIMARY", "health_check": "a"},
        {"name": "f", "type": "A", "values": ["192.0.2.2"], "policy": "failover",
         "set_identifier": "s", "failover": "SECONDARY", "health_check": "b"},
    ], health)
    q = dns.message.make_query("f.example.com", "A").to_wire()
    assert e.cacheable_key(q) is not None  # varies only with health: the version covers it
    v0 = e.version
    assert _addresses(e, "f.example.com") == ["192.0.2.1"]
    health.set("a", False)
    assert e.version != v0
    assert _addresses(e, "f.example.com") == ["192.0.2.2"]
    health.set("b", False)  # both down: fail open to the primary
    assert _addresses(e, "f.example.com") == ["192.0.2.1"]


def test_multivalue_up_to_eight_healthy() -> None:
    health = Health()
    records = [{"name": "m", "type": "A", "values": [f"192.0.2.{i}"], "policy": "multivalue",
                "set_identifier": f"s{i}", **({"health_check": "a"} if i < 3 else {})}
               for i in range(1, 13)]
    e = make_engine(records, health)
    seen: set[str] = set()
    for _ in range(30):
        got = _addresses(e, "m.example.com")
        assert len(got) == 8 and len(set(got)) == 8
        seen.update(got)
    assert len(seen) == 12
    health.set("a", False)
    for _ in range(30):
        assert not {"192.0.2.1", "192.0.2.2"} & set(_addresses(e, "m.example.com"))


def test_alias_to_pool_follows_target_health() -> None:
    from lbcdn.dns.alias import StaticAliases, pool_check_id
    health = Health()
    aliases = StaticAliases(pools={"web": [("192.0.2.1", pool_check_id("web", "192.0.2.1", 80)),
                                           ("192.0.2.2", pool_check_id("web", "192.0.2.2", 80)),
                                           ("2001:db8::1", None)]})
    cfg = load_dns_config({"zones": [{"name": "example.com", "records": [
        {"name": "@", "type": "A", "alias": {"pool": "web"}},
        {"name": "@", "type": "AAAA", "alias": {"pool": "web"}}]}]})
    e = Engine(build_zones(cfg, now=0, aliases=aliases), health, random.Random(1))
    assert sorted(_addresses(e, "example.com")) == ["192.0.2.1", "192.0.2.2"]
    health.set("pool/web/192.0.2.1:80", False)
    assert _addresses(e, "example.com") == ["192.0.2.2"]
    r = ask(e, "example.com", "AAAA")
    assert rrs(r.answer) == ["example.com. 300 in aaaa 2001:db8::1"]


# -- cache keys and versions -------------------------------------------------------------


def _key(engine: Engine, name: str, rtype: str = "A", **kw: Any) -> bytes | None:
    return engine.cacheable_key(dns.message.make_query(name, rtype, **kw).to_wire())


def test_cacheable_key_ignores_case_and_id(engine: Engine) -> None:
    k1 = _key(engine, "web.example.com")
    assert k1 is not None
    assert _key(engine, "WEB.example.COM") == k1
    assert _key(engine, "web.example.com", "AAAA") != k1
    assert _key(engine, "web.example.com", use_edns=0) != k1
    assert _key(engine, "web.example.com", use_edns=0, payload=1232) != _key(
        engine, "web.example.com", use_edns=0, payload=4096)
    assert _key(engine, "web.example.com", use_edns=0, want_dnssec=True) != _key(
        engine, "web.example.com", use_edns=0)
    q = dns.message.make_query("web.example.com", "A")
    q.flags = 0
    assert engine.cacheable_key(q.to_wire()) != k1  # RD is copied, so it is in the key
    assert _key(engine, "nope.example.com") is not None
    assert _key(engine, "example.org") is not None


def test_replay_with_patched_id_and_case_equals_answer(engine: Engine) -> None:
    """What the fast path does with a key hit gives what answer() gives."""
    first = dns.message.make_query("www.example.com", "A", use_edns=0)
    stored = engine.answer(first.to_wire(), tcp=False, max_udp=1232) or b""
    second = dns.message.make_query("WwW.EXAMPLE.com", "A", use_edns=0)
    wire2 = second.to_wire()
    assert engine.cacheable_key(wire2) == engine.cacheable_key(first.to_wire())
    qlen = len(b"\x03www\x07example\x03com\x00")
    replayed = wire2[:2] + stored[2:12] + wire2[12:12 + qlen] + stored[12 + qlen:]
    assert replayed == engine.answer(wire2, tcp=False, max_udp=1232)


def _prepared(engine: Engine, name: str, rtype: str = "A",
              tcp: bool = False) -> tuple[list[list[str]], bool]:
    """prepare() for one question -> (the answer section of each answer, replay)."""
    p = engine.prepare(dns.message.make_query(name, rtype).to_wire(), tcp=tcp, max_udp=1232)
    assert p is not None
    return [[rd.to_text() for rrset in dns.message.from_wire(a).answer for rd in rrset]
            for a in p.answers], p.replay


VARYING = [
    {"name": "rr", "type": "A", "values": ["192.0.2.1", "192.0.2.2"]},
    {"name": "rr", "type": "MX", "values": ["10 mail"]},
    {"name": "one", "type": "A", "values": ["192.0.2.1"]},
    {"name": "to-rr", "type": "CNAME", "values": ["rr"]},
    {"name": "to-to-rr", "type": "CNAME", "values": ["to-rr"]},
    {"name": "*.w", "type": "A", "values": ["192.0.2.1", "192.0.2.2"]},
    {"name": "*.w", "type": "TXT", "values": ['"fixed"']},
    {"name": "w8", "type": "A", "values": ["192.0.2.1"], "policy": "weighted",
     "set_identifier": "a", "weight": 1},
    {"name": "w8", "type": "A", "values": ["192.0.2.2"], "policy": "weighted",
     "set_identifier": "b", "weight": 1},
    {"name": "w8", "type": "TXT", "values": ['"fixed"']},
    {"name": "w-rr", "type": "CNAME", "values": ["rr"], "policy": "weighted",
     "set_identifier": "a", "weight": 1},
    {"name": "w-rr", "type": "CNAME", "values": ["one"], "policy": "weighted",
     "set_identifier": "b", "weight": 1},
    {"name": "huge", "type": "A", "values": [f"10.0.{i // 250}.{i % 250}" for i in range(65)]},
]


def test_prepared_rotations_are_per_name_and_type() -> None:
    e = make_engine(VARYING)
    rotations = [["192.0.2.1", "192.0.2.2"], ["192.0.2.2", "192.0.2.1"]]
    assert _prepared(e, "rr.example.com") == (rotations, True)
    assert _prepared(e, "rr.example.com", "MX") == ([["10 mail.example.com."]], True)
    assert _prepared(e, "one.example.com") == ([["192.0.2.1"]], True)
    for name in ("to-rr", "to-to-rr"):
        answers, replay = _prepared(e, f"{name}.example.com")
        assert replay and [a[-2:] for a in answers] == rotations
    assert _prepared(e, "x.w.example.com") == (rotations, True)
    assert _prepared(e, "x.w.example.com", "TXT") == ([['"fixed"']], True)
    assert _prepared(e, "w8.example.com", "TXT") == ([['"fixed"']], True)
    assert _prepared(e, "w8.example.com")[1] is False
    assert _prepared(e, "nothing.example.com")[1] is True
    # the apex NS set (two values) is answered in one order, like Knot DNS and Route 53
    assert _prepared(e, "example.com", "NS") == (
        [["ns1.example.com.", "ns2.example.net."]], True)


def test_prepared_rotations_are_what_answer_gives_in_turn() -> None:
    for name in ("rr", "to-to-rr", "x.w"):
        wire = dns.message.make_query(f"{name}.example.com", "A", use_edns=0).to_wire()
        prepared = make_engine(VARYING).prepare(wire, tcp=True)
        e = make_engine(VARYING)
        assert prepared is not None
        assert list(prepared.answers) == [e.answer(wire, tcp=True) for _ in range(2)]


def test_random_picks_and_huge_sets_are_prepared_per_query_and_still_rotate() -> None:
    e = make_engine(VARYING)
    firsts = set()
    for _ in range(40):
        answers, replay = _prepared(e, "w-rr.example.com")
        assert not replay and len(answers) == 1
        if len(answers[0]) == 3:  # the weighted CNAME led to the rotating set
            firsts.add(answers[0][1])
    assert firsts == {"192.0.2.1", "192.0.2.2"}
    seen = []
    for _ in range(3):
        answers, replay = _prepared(e, "huge.example.com", tcp=True)
        assert not replay and len(answers) == 1 and len(answers[0]) == 65
        seen.append(answers[0][0])
    assert seen == ["10.0.0.0", "10.0.0.1", "10.0.0.2"]


def test_prepare_stays_silent_where_answer_does(engine: Engine) -> None:
    assert engine.prepare(b"\x00", tcp=False) is None
    response = bytearray(dns.message.make_query("www.example.com", "A").to_wire())
    response[2] |= 0x80
    assert engine.prepare(bytes(response), tcp=False) is None


def test_errors_are_not_cacheable(engine: Engine) -> None:
    assert engine.cacheable_key(_header(1, 0x0100, 0)) is None
    assert engine.cacheable_key(b"\x00") is None


def test_versions_are_unique_across_engines() -> None:
    a = make_engine([])
    b = make_engine([])
    assert a.version != b.version
    before = a.version
    a.health_changed()
    assert a.version > before


def test_poll_health_bumps_only_on_change() -> None:
    class Plain:
        def __init__(self) -> None:
            self.up = True

        def is_healthy(self, check_id: str) -> bool:
            return self.up

    health = Plain()
    cfg = load_dns_config({"health_checks": [{"id": "a", "host": "192.0.2.1"}],
                           "zones": [{"name": "example.com", "records": [
                               {"name": "f", "type": "A", "values": ["192.0.2.1"],
                                "policy": "failover", "set_identifier": "p",
                                "failover": "PRIMARY", "health_check": "a"}]}]})
    e = Engine(build_zones(cfg, now=0), health)
    e.poll_health()
    v = e.version
    assert not e.poll_health() and e.version == v
    health.up = False
    assert e.poll_health() and e.version != v


def test_zone_for_and_axfr_records(engine: Engine) -> None:
    z = engine.zone_for("WWW.Example.COM.")
    assert z is not None and z.name == "example.com."
    assert engine.zone_for("example.org") is None
    records = engine.axfr_records("example.com")
    assert records[0].rtype == 6 and records[-1].rtype == 6
    assert sum(1 for rr in records if rr.rtype == 6) == 2
    names = {str(rr.rname) for rr in records}
    assert {"ns1.child.example.com.", "*.wild.example.com.", "many.example.com."} <= names
    with pytest.raises(KeyError):
        engine.axfr_records("example.org")


# -- fuzz --------------------------------------------------------------------------------


def _seed_queries() -> list[bytes]:
    out = []
    for name, rtype, kw in [("web.example.com", "A", {}), ("www.example.com", "AAAA",
                            {"use_edns": 0}), ("x.wild.example.com", "TXT", {}),
                            ("child.example.com", "NS", {"use_edns": 0, "payload": 4096}),
                            ("big.example.com", "TXT", {"use_edns": 0, "want_dnssec": True})]:
        out.append(dns.message.make_query(name, rtype, **kw).to_wire())
    return out


SEEDS = _seed_queries()
FUZZ_ENGINE = make_engine()


def _check(out: bytes | None, tcp: bool) -> None:
    if out is not None:
        assert len(out) >= 12 and out[2] & 0x80
        assert out[3] & 0x0F != 2  # SERVFAIL only comes from the engine's own bug guard
        assert tcp or len(out) <= 1232


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.booleans())
def test_fuzz_random_bytes_never_raise(data: bytes, tcp: bool) -> None:
    out = FUZZ_ENGINE.answer(data, tcp=tcp, max_udp=1232)
    _check(out, tcp)
    FUZZ_ENGINE.cacheable_key(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)),
                                        max_size=6),
       st.integers(0, 400), st.binary(max_size=20), st.booleans())
def test_fuzz_mutated_queries_never_raise(seed: bytes, flips: list[tuple[int, int]], cut: int,
                                          tail: bytes, tcp: bool) -> None:
    wire = bytearray(seed)
    for pos, value in flips:
        if pos < len(wire):
            wire[pos] = value
    data = bytes(wire[:cut] if cut < len(wire) else wire) + tail
    out = FUZZ_ENGINE.answer(data, tcp=tcp, max_udp=1232)
    _check(out, tcp)
    if out is not None and (out[2] >> 3) & 0xF == 0:
        dns.message.from_wire(out)  # a QUERY response must parse whole
    FUZZ_ENGINE.cacheable_key(data)


# -- client-dependent routing ---------------------------------------------------------------

def cidr_engine() -> Engine:
    cfg = load_dns_config({
        "cidr_collections": [{"name": "nets", "locations": [
            {"name": "eu", "cidrs": ["198.51.100.0/24"]}]}],
        "zones": [{"name": "example.com", "records": [
            {"name": "www", "type": "A", "policy": "cidr", "set_identifier": "eu",
             "values": ["192.0.2.1"], "cidr_routing": {"collection": "nets", "location": "eu"}},
            {"name": "only", "type": "A", "policy": "cidr", "set_identifier": "eu",
             "values": ["192.0.2.2"], "cidr_routing": {"collection": "nets", "location": "eu"}},
            {"name": "static", "type": "A", "values": ["192.0.2.3"]}]}]})
    return Engine(build_zones(cfg, now=1_700_000_000), Health(), random.Random(5),
                  cidr_collections=[CidrCollection("nets", {"eu": ("198.51.100.0/24",)})])


def ecs_query(name: str, ecs: tuple[str, int] | None) -> bytes:
    options = [dns.edns.ECSOption(*ecs)] if ecs else []
    return dns.message.make_query(name, "A", use_edns=0, options=options).to_wire()


def test_client_dependent_answers_are_not_prepared_and_carry_the_scope() -> None:
    engine = cidr_engine()
    wire = ecs_query("www.example.com.", ("198.51.100.7", 32))
    prepared = engine.prepare(wire, tcp=False, max_udp=1232, client="192.0.2.200")
    assert prepared is not None and not prepared.replay
    r = dns.message.from_wire(prepared.answers[0])
    assert rrs(r.answer) == ["www.example.com. 300 in a 192.0.2.1"]
    assert [(o.address, o.srclen, o.scopelen) for o in r.options] == [("198.51.100.7", 32, 24)]
    # without ECS the source address decides
    plain = ecs_query("only.example.com.", None)
    r = dns.message.from_wire(engine.answer(plain, tcp=False, client="198.51.100.9") or b"")
    assert rrs(r.answer) == ["only.example.com. 300 in a 192.0.2.2"]
    # no match and no default: NODATA with the SOA, as Route 53 answers
    r = dns.message.from_wire(engine.answer(plain, tcp=False, client="192.0.2.200") or b"")
    assert r.rcode() == dns.rcode.NOERROR and r.answer == [] and len(r.authority) == 1
    # a fixed answer stays prepared, its ECS echoed with scope 0; the ECS is in its key
    wire = ecs_query("static.example.com.", ("198.51.100.7", 32))
    prepared = engine.prepare(wire, tcp=False, max_udp=1232)
    assert prepared is not None and prepared.replay
    assert [o.scopelen for o in dns.message.from_wire(prepared.answers[0]).options] == [0]
    other = ecs_query("static.example.com.", ("203.0.113.0", 24))
    assert engine.cacheable_key(wire) != engine.cacheable_key(other)
    assert engine.cacheable_key(wire) != engine.cacheable_key(ecs_query("static.example.com.",
                                                                        None))


def test_change_batches_check_client_routing() -> None:
    engine = cidr_engine()
    record = {"name": "new", "type": "A", "policy": "cidr", "set_identifier": "x",
              "values": ["192.0.2.9"]}
    for routing, geo, problem in (
            ({"collection": "nope", "location": "*"}, None, "unknown CIDR collection 'nope'"),
            ({"collection": "nets", "location": "us"}, None, "has no location 'us'"),
            (None, {"country": "*"}, "needs dns.location_database")):
        rec = {**record, "cidr_routing": routing} if routing else {
            **record, "policy": "geolocation", "geolocation": geo}
        with pytest.raises(ChangeError) as info:
            engine.apply_changes("example.com", parse_changes(
                {"changes": [{"action": "CREATE", "record": rec}]}))
        assert any(problem in p for p in info.value.problems), info.value.problems
    engine.apply_changes("example.com", parse_changes({"changes": [{"action": "CREATE", "record": {
        **record, "cidr_routing": {"collection": "nets", "location": "*"}}}]}))
    r = dns.message.from_wire(engine.answer(ecs_query("new.example.com.", None), tcp=False)
                              or b"")
    assert rrs(r.answer) == ["new.example.com. 300 in a 192.0.2.9"]
