"""The zone model and building zones from config: generated SOA/NS, master files, merging,
consistency checks, delegations, reverse zones and PTR generation."""

from __future__ import annotations

from typing import Any

import pytest

from lbcdn.dns.config import load_dns_config
from lbcdn.dns.names import parse_name
from lbcdn.dns.rdata import TYPES
from lbcdn.dns.zone import RecordSet, Value, ZoneError, build_zones, ptr_sets
from lbcdn.dns.rdata import parse_rdata_text

NOW = 1_700_000_000


def zones(*zone_cfgs: dict[str, Any], files: dict[str, str] | None = None,
          **dns: Any) -> list[Any]:
    cfg = load_dns_config({"zones": list(zone_cfgs), **dns})

    def read(path: str) -> str:
        if files is None or path not in files:
            raise FileNotFoundError(2, "No such file or directory")
        return files[path]

    return build_zones(cfg, now=NOW, base_dir="/zones", read_text=read)


def texts(zone: Any, name: str, rtype: str) -> list[str]:
    return sorted(str(v.rd.toZone()) for rs in zone.group(parse_name(name), TYPES[rtype])
                  for v in rs.values)


def test_generated_soa_and_ns() -> None:
    (z,) = zones({"name": "Example.COM"}, public_addresses=["192.0.2.53", "2001:db8::53"])
    assert z.name == "example.com."
    assert texts(z, "example.com.", "NS") == ["ns1.example.com."]
    assert texts(z, "example.com.", "SOA") == [
        f"ns1.example.com. hostmaster.example.com. {NOW} 7200 900 1209600 300"]
    assert z.serial == NOW and z.clock_serial
    assert texts(z, "ns1.example.com.", "A") == ["192.0.2.53"]
    assert texts(z, "ns1.example.com.", "AAAA") == ["2001:db8::53"]
    assert z.negative_ttl == 300


def test_configured_soa_and_ns() -> None:
    (z,) = zones({"name": "example.com", "ns": ["a.ns.net.", "b"],
                  "soa": {"serial": 5, "rname": "admin", "minimum_s": 60, "ttl_s": 30}})
    assert texts(z, "example.com.", "NS") == ["a.ns.net.", "b.example.com."]
    assert texts(z, "example.com.", "SOA") == [
        "a.ns.net. admin.example.com. 5 7200 900 1209600 60"]
    assert z.negative_ttl == 30 and not z.clock_serial


MASTER = """\
$ORIGIN example.com.
$TTL 1h
@   IN  SOA ns1 hostmaster (
            2024010101 ; serial
            2h 15m 2w 5m )
    IN  NS  ns1
    IN  NS  ns2.example.net.
ns1         A    192.0.2.53
www  300 IN A    192.0.2.1
            A    192.0.2.2
www  IN 300 AAAA 2001:db8::1
txt         TXT  "multi" "string" unquoted "with \\"quote\\" and \\059 semicolon"
caa         CAA  0 issue "letsencrypt.org"
srv         SRV  10 20 443 www
$ORIGIN sub
host        MX   10 mail.example.com.
@           A    192.0.2.9
"""


def test_master_file() -> None:
    (z,) = zones({"name": "example.com", "file": "example.zone"},
                 files={"/zones/example.zone": MASTER})
    assert z.serial == 2024010101 and not z.clock_serial
    assert texts(z, "example.com.", "SOA") == [
        "ns1.example.com. hostmaster.example.com. 2024010101 7200 900 1209600 300"]
    assert texts(z, "example.com.", "NS") == ["ns1.example.com.", "ns2.example.net."]
    (www,) = z.group(parse_name("www.example.com."), TYPES["A"])
    assert www.ttl == 300 and len(www.values) == 2
    (ns1,) = z.group(parse_name("ns1.example.com."), TYPES["A"])
    assert ns1.ttl == 3600
    (txt,) = z.group(parse_name("txt.example.com."), TYPES["TXT"])
    assert txt.values[0].rd.data == [b"multi", b"string", b"unquoted",
                                     b'with "quote" and ; semicolon']
    assert texts(z, "srv.example.com.", "SRV") == ["10 20 443 www.example.com."]
    assert texts(z, "host.sub.example.com.", "MX") == ["10 mail.example.com."]
    assert texts(z, "sub.example.com.", "A") == ["192.0.2.9"]
    assert texts(z, "caa.example.com.", "CAA") == ['0 issue "letsencrypt.org"']


def test_master_file_problems_have_line_numbers() -> None:
    bad = "www A 300.1.1.1\n$INCLUDE other\nx IN CH TXT a\ny A\n"
    with pytest.raises(ZoneError) as info:
        zones({"name": "example.com", "file": "bad.zone"}, files={"/zones/bad.zone": bad})
    text = str(info.value)
    for expect in ("line 1", "IPv4", "line 2", "$INCLUDE", "line 3", "class", "line 4"):
        assert expect in text
    with pytest.raises(ZoneError, match="cannot read"):
        zones({"name": "example.com", "file": "missing.zone"})


def test_file_and_records_must_not_overlap() -> None:
    with pytest.raises(ZoneError, match="both"):
        zones({"name": "example.com", "file": "z",
               "records": [{"name": "www", "type": "A", "values": ["192.0.2.3"]}]},
              files={"/zones/z": "www 60 A 192.0.2.1\n"})


@pytest.mark.parametrize("records, message", [
    ([{"name": "www", "type": "CNAME", "values": ["a"]},
      {"name": "www", "type": "A", "values": ["192.0.2.1"]}], "CNAME cannot share"),
])
def test_consistency(records: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ZoneError, match=message):
        zones({"name": "example.com", "records": records})


def test_delegations_and_empty_non_terminals() -> None:
    (z,) = zones({"name": "example.com", "records": [
        {"name": "a.b.c", "type": "A", "values": ["192.0.2.1"]},
        {"name": "kid", "type": "NS", "values": ["ns.kid"]},
        {"name": "ns.kid", "type": "A", "values": ["192.0.2.2"]}]})
    assert z.exists(parse_name("b.c.example.com.")) and z.exists(parse_name("c.example.com."))
    assert z.node(parse_name("b.c.example.com.")) is None
    assert not z.exists(parse_name("x.example.com."))
    assert z.cuts == {parse_name("kid.example.com.")}
    assert z.cut_for(parse_name("x.y.kid.example.com.")) == parse_name("kid.example.com.")
    assert z.cut_for(parse_name("example.com.")) is None


def test_ptr_generation_into_served_reverse_zones() -> None:
    fwd, rev4, rev6 = zones(
        {"name": "example.com", "ptr_from_addresses": True, "records": [
            {"name": "www", "type": "A", "values": ["192.0.2.1", "198.51.100.1"], "ttl_s": 60},
            {"name": "web", "type": "A", "values": ["192.0.2.1"]},
            {"name": "v6", "type": "AAAA", "values": ["2001:db8::1"]},
            {"name": "fixed", "type": "A", "values": ["192.0.2.7"]},
            {"name": "*.w", "type": "A", "values": ["192.0.2.8"]}]},
        {"name": "2.0.192.in-addr.arpa", "records": [
            {"name": "7", "type": "PTR", "values": ["explicit.example.com."]}]},
        {"name": "8.b.d.0.1.0.0.2.ip6.arpa"})
    assert texts(rev4, "1.2.0.192.in-addr.arpa.", "PTR") == ["web.example.com.",
                                                             "www.example.com."]
    (ptr,) = rev4.group(parse_name("1.2.0.192.in-addr.arpa."), TYPES["PTR"])
    assert ptr.generated and ptr.ttl == 60
    assert texts(rev4, "7.2.0.192.in-addr.arpa.", "PTR") == ["explicit.example.com."]
    assert not rev4.exists(parse_name("8.2.0.192.in-addr.arpa."))  # wildcards make none
    v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."
    assert texts(rev6, v6, "PTR") == ["v6.example.com."]
    assert parse_name("1.100.51.198.in-addr.arpa.") not in {
        rs.name for sets in ptr_sets([fwd, rev4, rev6]).values() for rs in sets}


def test_put_replaces_generated_and_same_as() -> None:
    (z,) = zones({"name": "example.com"})
    origin = z.origin
    z2 = z.copy()
    ns = RecordSet(origin, TYPES["NS"], 60,
                   (Value.of(parse_rdata_text(TYPES["NS"], "a.example.net.", origin)),))
    z2.put(ns)
    z2.finish()
    assert len(z2.group(origin, TYPES["NS"])) == 1 and z2.group(origin, TYPES["NS"])[0] is ns
    assert len(z.group(origin, TYPES["NS"])) == 1 and z.group(origin, TYPES["NS"])[0].generated
    same = RecordSet(origin, TYPES["NS"], 60,
                     (Value.of(parse_rdata_text(TYPES["NS"], "A.EXAMPLE.NET.", origin)),))
    assert ns.same_as(same)
    assert not ns.same_as(RecordSet(origin, TYPES["NS"], 61, same.values))


def test_bump_serial_wraps() -> None:
    (z,) = zones({"name": "example.com", "soa": {"serial": 2**32 - 1}})
    z.bump_serial(0)
    assert z.serial == 0
