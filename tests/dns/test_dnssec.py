"""Online signing (lbcdn.dns.dnssec through the engine): every signed answer is checked with
dnspython's DNSSEC validator against the zone's DNSKEY set; compact denial; DO off; signature
times; refresh by day; prepared answers stay signed; policies and change batches signed as
answered; truncation."""

from __future__ import annotations

import time
from typing import Any

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from lbcdn.dns.changes import parse_changes
from lbcdn.dns.config import load_dns_config
from lbcdn.dns.dnssec import BACKDATE_S, DAY, Signer
from lbcdn.dns.engine import Engine
from lbcdn.dns.fastpath import FastPath
from lbcdn.dns.keys import ALGORITHMS, generate
from lbcdn.dns.names import parse_name
from lbcdn.dns.zone import build_zones

ORIGIN = dns.name.from_text("example.com.")
RECORDS: list[dict[str, Any]] = [
    {"name": "www", "type": "A", "values": ["192.0.2.1", "192.0.2.2"]},
    {"name": "alias", "type": "CNAME", "values": ["www"]},
    {"name": "*.wild", "type": "TXT", "values": ['"wild"']},
    {"name": "deep.ent", "type": "A", "values": ["192.0.2.5"]},
    {"name": "sub", "type": "NS", "values": ["ns.sub"]},
    {"name": "ns.sub", "type": "A", "values": ["192.0.2.53"]},
    {"name": "w", "type": "A", "policy": "weighted", "set_identifier": "a", "weight": 1,
     "values": ["192.0.2.31"]},
    {"name": "w", "type": "A", "policy": "weighted", "set_identifier": "b", "weight": 1,
     "values": ["192.0.2.32"]},
    {"name": "big", "type": "TXT", "values": [f'"{i:02d}' + "x" * 200 + '"' for i in range(4)]},
]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class AllHealthy:
    def is_healthy(self, check_id: str) -> bool:
        return True


def make_engine(algorithm: str = "ECDSAP256SHA256", clock: Clock | None = None) -> Engine:
    clock = clock or Clock(time.time())
    cfg = load_dns_config({"zones": [{"name": "example.com", "records": RECORDS}]})
    origin = parse_name("example.com.")
    key = generate(ALGORITHMS[algorithm], clock())
    signer = Signer(origin, [key], dnskey_ttl=3600, algorithm=ALGORITHMS[algorithm])
    return Engine(build_zones(cfg, now=clock()), AllHealthy(), clock=clock,
                  signers={origin: signer})


def ask(engine: Engine, name: str, rdtype: str, *, do: bool = True, payload: int = 1232,
        tcp: bool = True) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, want_dnssec=do, use_edns=0, payload=payload)
    wire = engine.answer(q.to_wire(), tcp=tcp, max_udp=1232)
    assert wire is not None
    return dns.message.from_wire(wire)


def keyset(engine: Engine) -> dict[dns.name.Name, dns.rrset.RRset]:
    r = ask(engine, "example.com.", "DNSKEY")
    return {ORIGIN: r.find_rrset(r.answer, ORIGIN, dns.rdataclass.IN, dns.rdatatype.DNSKEY)}


def validate_all(engine: Engine, r: dns.message.Message, now: float | None = None) -> int:
    """Validate every signed RRset of the answer and authority sections; returns how many."""
    keys = keyset(engine)
    n = 0
    for section in (r.answer, r.authority):
        for rrset in section:
            if rrset.rdtype == dns.rdatatype.RRSIG:
                continue
            sigs = [s for s in section if s.rdtype == dns.rdatatype.RRSIG
                    and s.name == rrset.name and s.covers == rrset.rdtype]
            if rrset.rdtype == dns.rdatatype.NS and rrset.name != ORIGIN:
                assert not sigs   # referral NS sets are not signed
                continue
            assert sigs, f"{rrset} unsigned"
            dns.dnssec.validate(rrset, sigs[0], keys, now=now)
            n += 1
    return n


@pytest.mark.parametrize("algorithm", ["ECDSAP256SHA256", "ED25519"])
def test_positive_answers_validate(algorithm: str) -> None:
    engine = make_engine(algorithm)
    for name, rdtype, expect in [("www.example.com.", "A", 1), ("alias.example.com.", "A", 2),
                                 ("x.y.wild.example.com.", "TXT", 1),
                                 ("example.com.", "DNSKEY", 1), ("example.com.", "SOA", 1)]:
        r = ask(engine, name, rdtype)
        assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
        assert validate_all(engine, r) == expect, name


def test_wildcard_signed_for_the_query_name() -> None:
    r = ask(make_engine(), "x.y.wild.example.com.", "TXT")
    sig = [s for s in r.answer if s.rdtype == dns.rdatatype.RRSIG][0][0]
    assert sig.labels == 5


def test_compact_denial() -> None:
    engine = make_engine()
    r = ask(engine, "nothing.example.com.", "A")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer   # RFC 9824: NXDOMAIN -> NOERROR
    nsec = [rs for rs in r.authority if rs.rdtype == dns.rdatatype.NSEC][0]
    assert nsec.name == dns.name.from_text("nothing.example.com.")
    assert nsec[0].next == dns.name.from_text("\\000.nothing.example.com.")
    assert nsec[0].to_text().split()[1:] == ["RRSIG", "NSEC", "NXNAME"]
    assert validate_all(engine, r) == 2   # SOA and NSEC
    r = ask(engine, "www.example.com.", "AAAA")   # NODATA: the types there
    nsec = [rs for rs in r.authority if rs.rdtype == dns.rdatatype.NSEC][0]
    assert nsec[0].to_text().split()[1:] == ["A", "RRSIG", "NSEC"]
    assert validate_all(engine, r) == 2
    r = ask(engine, "ent.example.com.", "A")      # empty non-terminal: exists, no types
    nsec = [rs for rs in r.authority if rs.rdtype == dns.rdatatype.NSEC][0]
    assert nsec[0].to_text().split()[1:] == ["RRSIG", "NSEC"]


def test_insecure_delegation_proven() -> None:
    engine = make_engine()
    r = ask(engine, "host.sub.example.com.", "A")
    assert not r.flags & dns.flags.AA
    nsec = [rs for rs in r.authority if rs.rdtype == dns.rdatatype.NSEC][0]
    assert nsec.name == dns.name.from_text("sub.example.com.")
    assert nsec[0].to_text().split()[1:] == ["NS", "RRSIG", "NSEC"]
    assert validate_all(engine, r) == 1
    r = ask(engine, "sub.example.com.", "DS")     # DS at the cut: the parent side, no DS
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA and not r.answer
    assert validate_all(engine, r) == 2


def test_without_do_nothing_changes() -> None:
    engine = make_engine()
    r = ask(engine, "nothing.example.com.", "A", do=False)
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert all(rs.rdtype not in (dns.rdatatype.RRSIG, dns.rdatatype.NSEC)
               for rs in r.answer + r.authority)
    r = ask(engine, "www.example.com.", "A", do=False)
    assert [rs.rdtype for rs in r.answer] == [dns.rdatatype.A]


def test_signature_times_and_daily_refresh() -> None:
    clock = Clock(1_800_000_000.0)
    engine = make_engine(clock=clock)
    r = ask(engine, "www.example.com.", "A")
    sig = [s for s in r.answer if s.rdtype == dns.rdatatype.RRSIG][0][0]
    day_start = int(clock.now) // DAY * DAY
    assert sig.inception == day_start - BACKDATE_S and sig.inception < clock.now
    assert sig.expiration == day_start + 14 * DAY
    version = engine.version
    serial = engine.zones[0].serial
    assert not engine.refresh_signatures()
    clock.now += DAY
    assert engine.refresh_signatures() and engine.version != version
    # secondaries hold signatures from their last transfer: a new serial makes them refresh
    assert engine.zones[0].serial > serial
    r2 = ask(engine, "www.example.com.", "A")
    sig2 = [s for s in r2.answer if s.rdtype == dns.rdatatype.RRSIG][0][0]
    assert sig2.inception == sig.inception + DAY
    validate_all(engine, r2, now=clock.now)


def test_prepared_answers_replay_signed() -> None:
    engine = make_engine()
    fast = FastPath(engine)
    q = dns.message.make_query("www.example.com.", "A", want_dnssec=True)
    first = fast.answer_udp(q.to_wire())
    second = fast.answer_udp(q.to_wire())
    assert first is not None and second is not None and fast.misses == 1
    r = dns.message.from_wire(second)
    assert validate_all(engine, r) == 1
    plain = fast.answer_udp(dns.message.make_query("www.example.com.", "A").to_wire())
    assert plain is not None and b"example" in plain and len(plain) < len(second)


def test_policies_and_changes_signed_as_answered() -> None:
    engine = make_engine()
    seen = set()
    for _ in range(40):
        r = ask(engine, "w.example.com.", "A")
        validate_all(engine, r)
        seen.add(r.answer[0][0].address)
    assert seen == {"192.0.2.31", "192.0.2.32"}
    engine.apply_changes("example.com", parse_changes({"changes": [
        {"action": "UPSERT", "record": {"name": "www", "type": "A", "values": ["192.0.2.99"]}}]}))
    r = ask(engine, "www.example.com.", "A")
    assert r.answer[0][0].address == "192.0.2.99" and validate_all(engine, r) == 1
    r = ask(engine, "example.com.", "DNSKEY")   # the DNSKEY set survives the change
    assert validate_all(engine, r) == 1


def test_too_big_for_the_buffer_is_truncated() -> None:
    engine = make_engine()
    r = ask(engine, "big.example.com.", "TXT", payload=512, tcp=False)
    assert r.flags & dns.flags.TC and not r.answer
    r = ask(engine, "big.example.com.", "TXT", payload=1232, tcp=False)
    assert not r.flags & dns.flags.TC and validate_all(engine, r) == 1


def test_rollover_keys_double_sign() -> None:
    engine = make_engine()
    signer = engine.signer("example.com")
    assert signer is not None
    old = signer.keys[0]
    engine.set_keys("example.com", [old, generate(13, time.time())])
    r = ask(engine, "www.example.com.", "A")
    sigs = [s for s in r.answer if s.rdtype == dns.rdatatype.RRSIG][0]
    assert len(sigs) == 2
    r = ask(engine, "example.com.", "DNSKEY")
    assert len(r.answer[0]) == 2
    serial = engine.zones[0].serial
    engine.set_keys("example.com", signer.keys[1:])
    assert engine.zones[0].serial > serial   # secondaries transfer the new keys


def test_transfer_is_signed_with_a_chain() -> None:
    import dns.rrset
    engine = make_engine()
    keys = keyset(engine)
    records = engine.axfr_records("example.com")
    text = "\n".join(str(rr.toZone()) for rr in records)
    rrsets: dict[tuple[str, int, int], dns.rrset.RRset] = {}
    for line in text.splitlines():
        rs = dns.rrset.from_text(*line.split(None, 4)[:1], int(line.split()[1]),
                                 line.split()[2], line.split()[3], line.split(None, 4)[4])
        k = (rs.name.to_text(), rs.rdtype, rs.covers)
        if k in rrsets:
            rrsets[k].union_update(rs)
        else:
            rrsets[k] = rs
    sigs = {(n, c): rs for (n, t, c), rs in rrsets.items() if t == dns.rdatatype.RRSIG}
    checked = 0
    for (name, rdtype, _), rs in rrsets.items():
        if rdtype == dns.rdatatype.RRSIG or (name, rdtype) not in sigs:
            continue
        dns.dnssec.validate(rs, sigs[(name, rdtype)], keys)
        checked += 1
    # the wildcard's signature does not count its `*` (RFC 4034 3.1.3)
    assert sigs[("*.wild.example.com.", dns.rdatatype.TXT)][0].labels == 3
    nsec_owners = [n for (n, t, _) in rrsets if t == dns.rdatatype.NSEC]
    assert "example.com." in nsec_owners and "ns.sub.example.com." not in nsec_owners
    assert checked > 10


def test_admin_view_shows_the_dnskey_set() -> None:
    from lbcdn.dns.view import zone_records
    engine = make_engine()
    rows = [r for r in zone_records(engine.zones[0], engine.health) if r["type"] == "DNSKEY"]
    assert len(rows) == 1 and rows[0]["values"][0]["value"].startswith("257 3 13 ")
