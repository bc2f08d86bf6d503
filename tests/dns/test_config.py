"""The `dns:` config section through the reflective loader: defaults, shapes, and every
check naming its YAML path."""

from __future__ import annotations

from typing import Any

import pytest

from lbcdn.configkit.errors import ConfigError
from lbcdn.dns.config import (DnsConfig, alias_problems, load_dns_config)


def problems(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_dns_config(data)
    return info.value.lines()


def test_defaults() -> None:
    cfg = load_dns_config({})
    assert cfg == DnsConfig()
    assert cfg.max_udp_payload_bytes == 1232 and not cfg.rate_limit.enabled
    cfg = load_dns_config({"listeners": [{"port": 5300}], "zones": [{"name": "example.com"}]})
    assert cfg.listeners[0].address == "0.0.0.0" and cfg.listeners[0].tcp_idle_timeout_s == 10
    zone = cfg.zones[0]
    assert zone.ttl_s == 300 and zone.soa.serial is None and zone.ns == ()


def test_full_example_loads() -> None:
    cfg = load_dns_config({
        "listeners": [{"address": "127.0.0.1", "port": 5300}],
        "public_addresses": ["192.0.2.53"],
        "allow_transfer": ["127.0.0.1", "10.0.0.0/8", "::1"],
        "notify": ["127.0.0.1:5301", "[::1]:53"],
        "rate_limit": {"enabled": True, "responses_per_s": 50, "slip": 2},
        "state_dir": "/var/lib/lbcdn",
        "health_checks": [{"id": "web1", "protocol": "https", "host": "192.0.2.10",
                           "path": "/health", "search_string": "ok"},
                          {"id": "db", "protocol": "tcp", "host": "192.0.2.20", "port": 5432}],
        "zones": [{"name": "example.com", "ptr_from_addresses": True, "records": [
            {"name": "@", "type": "A", "alias": {"listener": "web"}},
            {"name": "www", "type": "A", "values": ["192.0.2.10"], "policy": "failover",
             "set_identifier": "p", "failover": "PRIMARY", "health_check": "web1"},
            {"name": "www", "type": "A", "values": ["192.0.2.11"], "policy": "failover",
             "set_identifier": "s", "failover": "SECONDARY"},
            {"name": "api", "type": "A", "values": ["192.0.2.12"], "policy": "weighted",
             "set_identifier": "a", "weight": 10,
             "health_check": "pool/web/192.0.2.12:80"},
            {"name": "txt", "type": "TXT", "values": ['"a b" c']},
        ]}]})
    assert cfg.zones[0].records[1].failover == "PRIMARY"
    assert cfg.health_checks[1].port == 5432


@pytest.mark.parametrize("record, expect", [
    ({"name": "a", "type": "A", "values": ["1.2.3"]}, "records[0].values[0]: not an IPv4"),
    ({"name": "a", "type": "AAAA", "values": ["192.0.2.1"]}, "values[0]: not an IPv6"),
    ({"name": "a", "type": "MX", "values": ["mail"]}, "values[0]: MX needs"),
    ({"name": "a", "type": "MX", "values": ["70000 mail"]}, "values[0]: MX preference"),
    ({"name": "a", "type": "TXT", "values": ['"' + "x" * 300 + '"']}, "at most 255"),
    ({"name": "a", "type": "CAA", "values": ["0 is-sue x"]}, "CAA tag"),
    ({"name": "a", "type": "SRV", "values": ["1 2 3"]}, "SRV needs"),
    ({"name": "a", "type": "CNAME", "values": ["b", "c"]}, "exactly one value"),
    ({"name": "a", "type": "A", "values": []}, "at least one value"),
    ({"name": "a", "type": "SOA", "values": ["x"]}, "`soa:`"),
    ({"name": "a", "type": "SPF", "values": ["x"]}, "records[0].type: must be one of"),
    ({"name": "a..b", "type": "A", "values": ["192.0.2.1"]}, "name: 'a..b': empty label"),
    ({"name": "a.*", "type": "A", "values": ["192.0.2.1"]}, "leftmost"),
    ({"name": "x" * 64, "type": "A", "values": ["192.0.2.1"]}, "longer than 63"),
    ({"name": "a", "type": "A", "values": ["192.0.2.1"], "weight": 3}, "weight: only for"),
    ({"name": "a", "type": "A", "values": ["192.0.2.1"], "policy": "weighted"},
     "set_identifier: required"),
    ({"name": "a", "type": "A", "values": ["192.0.2.1"], "policy": "weighted",
      "set_identifier": "x"}, "weight: required"),
    ({"name": "a", "type": "A", "values": ["192.0.2.1"], "policy": "weighted",
      "set_identifier": "x", "weight": 256}, "weight: must be <= 255"),
    ({"name": "a", "type": "A", "values": ["192.0.2.1"], "policy": "failover",
      "set_identifier": "x"}, "failover: required"),
    ({"name": "a", "type": "A", "values": ["192.0.2.1"], "policy": "failover",
      "set_identifier": "x", "failover": "TERTIARY"}, "failover: must be one of"),
    ({"name": "a", "type": "NS", "values": ["b"], "policy": "multivalue",
      "set_identifier": "x"}, "simple only"),
    ({"name": "a", "type": "A", "values": ["192.0.2.1"], "alias": {"pool": "p"}},
     "an alias takes no values"),
    ({"name": "a", "type": "MX", "alias": {"pool": "p"}}, "only A and AAAA"),
    ({"name": "a", "type": "A", "alias": {"pool": "p", "listener": "l"}}, "exactly one of"),
    ({"name": "a", "type": "A", "values": ["192.0.2.1"], "ttl": 5}, "did you mean 'ttl_s'"),
    ({"name": "a", "type": "A", "values": ["192.0.2.1"], "policy": "multivalue",
      "set_identifier": "x", "health_check": "nope"}, "unknown health check 'nope'"),
    ({"name": "@", "type": "CNAME", "values": ["b"]}, "apex"),
    ({"name": "a.example.org.", "type": "A", "values": ["192.0.2.1"]}, "outside the zone"),
])
def test_record_problems(record: dict[str, Any], expect: str) -> None:
    lines = problems({"zones": [{"name": "example.com", "records": [record]}]})
    assert any(expect in line and line.startswith("dns.zones[0].records[0]")
               for line in lines), lines


def test_duplicates_and_mixed_policies() -> None:
    lines = problems({"zones": [{"name": "example.com", "records": [
        {"name": "a", "type": "A", "values": ["192.0.2.1"]},
        {"name": "A.example.com.", "type": "A", "values": ["192.0.2.2"]},
        {"name": "b", "type": "A", "values": ["192.0.2.1"], "policy": "weighted",
         "set_identifier": "x", "weight": 1},
        {"name": "b", "type": "A", "values": ["192.0.2.1"], "policy": "multivalue",
         "set_identifier": "y"},
    ]}, {"name": "EXAMPLE.com."}]})
    text = "\n".join(lines)
    assert "dns.zones[0].records[1]: duplicate record set a.example.com. A" in text
    assert "dns.zones[0].records[3].policy: multivalue mixed with weighted" in text
    assert "dns.zones[1].name: duplicate zone example.com." in text


def test_section_level_problems() -> None:
    lines = problems({
        "allow_transfer": ["10.0.0.0/33"], "notify": ["192.0.2.1", "host.example:53"],
        "public_addresses": ["nope"], "max_udp_payload_bytes": 100,
        "listeners": [{"port": 53}, {"port": 53}],
        "health_checks": [{"id": "a", "host": "h", "protocol": "tcp"},
                          {"id": "a", "host": "h", "path": "x"},
                          {"id": "c", "host": "h", "interval_s": 1}],
        "zones": [{"name": "*.example.com"}]})
    text = "\n".join(lines)
    for expect in ("dns.allow_transfer[0]: not an address or CIDR",
                   'dns.notify[0]: expected "host:port"',
                   "dns.notify[1]: 'host.example' is not an IP address",
                   "dns.public_addresses[0]: not an IP address",
                   "dns.max_udp_payload_bytes: must be >= 512",
                   "dns.listeners[1].port: 0.0.0.0 port 53 is already used by dns.listeners[0]",
                   "dns.health_checks[0].port: required for tcp",
                   "dns.health_checks[1].id: duplicate health check id 'a'",
                   'dns.health_checks[1].path: must start with "/"',
                   # the 4 s default timeout: a probe cannot outlast the interval
                   "dns.health_checks[2].timeout_s: must be less than interval_s (1)",
                   "dns.zones[0].name: a zone name cannot be a wildcard"):
        assert expect in text, text


def test_alias_problems_cross_section() -> None:
    cfg = load_dns_config({"zones": [{"name": "example.com", "records": [
        {"name": "@", "type": "A", "alias": {"listener": "web"}},
        {"name": "x", "type": "A", "alias": {"pool": "nope"}}]}]})
    assert alias_problems(cfg, ["web"], ["app"]) == [
        ("dns.zones[0].records[1].alias.pool", "unknown pool 'nope'")]


def test_environment_interpolation_in_config() -> None:
    cfg = load_dns_config({"zones": [{"name": "${ZONE}"}], "state_dir": "${STATE:-/tmp/x}"},
                          env={"ZONE": "example.com"})
    assert cfg.zones[0].name == "example.com" and cfg.state_dir == "/tmp/x"


def test_tsig_keys_secondaries_and_nsid_problems() -> None:
    lines = problems({
        "tsig_keys": [{"name": "k1", "secret": "not base64!"},
                      {"name": "k1", "secret": "c2VjcmV0", "secret_file": "k.key"},
                      {"name": "k2", "algorithm": "hmac-md5", "secret": "c2VjcmV0"},
                      {"name": "k3"}],
        "secondaries": [{"address": "10.0.0.0/33", "tsig_key": "k1"},
                        {"address": "192.0.2.1", "tsig_key": "nope"}],
        "nsid": "0xzz"})
    text = "\n".join(lines)
    for expect in ("dns.tsig_keys[0].secret: not valid base64",
                   "dns.tsig_keys[1]: give exactly one of secret or secret_file",
                   "dns.tsig_keys[2].algorithm:",
                   "dns.tsig_keys[3]: give exactly one of secret or secret_file",
                   "dns.secondaries[0].address: not an address or CIDR",
                   "dns.nsid: not hex digits after 0x"):
        assert expect in text, text
    assert problems({"tsig_keys": [{"name": "k1", "secret": "c2VjcmV0"},
                                   {"name": "k1", "secret": "c2VjcmV0"}],
                     "secondaries": [{"address": "192.0.2.1", "tsig_key": "nope"}]}) == [
        "dns.tsig_keys[1].name: duplicate key 'k1' (also dns.tsig_keys[0])",
        "dns.secondaries[0].tsig_key: unknown key 'nope' (known: k1, k1)"]
    assert problems({"nsid": "x" * 129}) == ["dns.nsid: must be 1 to 128 bytes"]


def test_tsig_secret_from_the_environment_and_nsid_forms() -> None:
    from lbcdn.dns.config import decode_secret, nsid_bytes
    cfg = load_dns_config({"tsig_keys": [{"name": "xfr", "secret": "${XFR}"}],
                           "secondaries": [{"address": "192.0.2.0/24", "tsig_key": "xfr."}]},
                          env={"XFR": "c2VjcmV0"})
    assert decode_secret(cfg.tsig_keys[0].secret or "") == b"secret"
    assert (nsid_bytes("0x6c62"), nsid_bytes("ns1")) == (b"lb", b"ns1")


def test_client_routing_and_calculated_check_problems() -> None:
    cidr = {"name": "a", "type": "A", "values": ["192.0.2.1"], "policy": "cidr"}
    lines = problems({
        "cidr_collections": [
            {"name": "c", "locations": [{"name": "x", "cidrs": ["10.0.0.0/8", "10.0.0.1/8"]},
                                        {"name": "x", "cidrs": ["10.0.0.0/8"]},
                                        {"name": "*"}]},
            {"name": "c"}],
        "health_checks": [
            {"id": "h", "host": "192.0.2.9", "child_health_checks": ["h"]},
            {"id": "calc", "protocol": "calculated", "host": "192.0.2.9",
             "child_health_checks": ["h", "nope", "calc"], "health_threshold": 4},
            {"id": "empty", "protocol": "calculated"},
            {"id": "nohost"}],
        "zones": [{"name": "example.com", "records": [
            {**cidr, "set_identifier": "1"},
            {**cidr, "set_identifier": "2", "cidr_routing": {"collection": "d",
                                                             "location": "x"}},
            {**cidr, "set_identifier": "3", "cidr_routing": {"collection": "c",
                                                             "location": "y"}},
            {**cidr, "name": "b", "set_identifier": "4", "cidr_routing": {
                "collection": "c", "location": "*"}, "weight": 2},
            {"name": "g", "type": "A", "values": ["192.0.2.1"], "policy": "geolocation",
             "set_identifier": "1", "geolocation": {"continent": "XX", "country": "de"}},
            {"name": "g", "type": "A", "values": ["192.0.2.1"], "policy": "geolocation",
             "set_identifier": "2", "geolocation": {"continent": "EU", "subdivision": "BY"}},
            {"name": "p", "type": "A", "values": ["192.0.2.1"], "policy": "geoproximity",
             "set_identifier": "1", "geoproximity": {"latitude": 91, "longitude": 0}},
            {"name": "s", "type": "A", "values": ["192.0.2.1"],
             "cidr_routing": {"collection": "c", "location": "x"}},
        ]}]})
    text = "\n".join(lines)
    for expect in (
            "dns.cidr_collections[0].locations[0].cidrs[1]: not a CIDR block: 10.0.0.1/8 has "
            "host bits set",
            "dns.cidr_collections[0].locations[1].name: duplicate or reserved location 'x'",
            "dns.cidr_collections[0].locations[1].cidrs[0]: 10.0.0.0/8 is already in "
            "location 'x'",
            "dns.cidr_collections[0].locations[2].name: duplicate or reserved location '*'",
            "dns.cidr_collections[1].name: duplicate collection 'c'",
            "dns.health_checks[0].child_health_checks: only for calculated health checks",
            "dns.health_checks[1].host: a calculated check probes nothing",
            "dns.health_checks[1].child_health_checks[1]: unknown health check 'nope'",
            "dns.health_checks[1].child_health_checks[2]: 'calc' is calculated itself",
            "dns.health_checks[1].health_threshold: more than the 3 child checks",
            "dns.health_checks[2].child_health_checks: required for calculated",
            "dns.health_checks[3].host: required for http health checks",
            "dns.zones[0].records[0].cidr_routing: required for the cidr policy",
            "dns.zones[0].records[3].weight: only for the weighted policy",
            "dns.zones[0].records[4].geolocation: give exactly one of continent or country",
            "dns.zones[0].records[4].geolocation.continent: not a continent code",
            "dns.zones[0].records[4].geolocation.country: not an ISO 3166-1 alpha-2 code",
            "dns.zones[0].records[5].geolocation.subdivision: needs a country",
            "dns.zones[0].records[6].geoproximity.latitude: must be <= 90",
            "dns.zones[0].records[7].cidr_routing: only for the cidr policy"):
        assert expect in text, text


def test_client_routing_cross_checks() -> None:
    """Checked once every record set reads well: collections, locations, the database."""
    cidr = {"name": "a", "type": "A", "values": ["192.0.2.1"], "policy": "cidr"}
    lines = problems({
        "cidr_collections": [{"name": "c", "locations": [{"name": "x", "cidrs": ["10.0.0.0/8"]}]},
                             {"name": "e"}],
        "zones": [{"name": "example.com", "records": [
            {**cidr, "set_identifier": "1", "cidr_routing": {"collection": "d",
                                                             "location": "x"}},
            {**cidr, "set_identifier": "2", "cidr_routing": {"collection": "c",
                                                             "location": "y"}},
            {**cidr, "set_identifier": "3", "cidr_routing": {"collection": "c",
                                                             "location": "*"}},
            {**cidr, "set_identifier": "4", "cidr_routing": {"collection": "e",
                                                             "location": "*"}},
            {"name": "g", "type": "A", "values": ["192.0.2.1"], "policy": "geolocation",
             "set_identifier": "1", "geolocation": {"country": "*"}}]}]})
    text = "\n".join(lines)
    for expect in (
            "dns.zones[0].records[0].cidr_routing.collection: unknown CIDR collection 'd'",
            "dns.zones[0].records[1].cidr_routing.location: collection 'c' has no location 'y'",
            "dns.zones[0].records[3].cidr_routing.collection: the record sets of one name and "
            "type use one collection (also 'c')",
            "dns.zones[0].records[4].policy: the geolocation policy needs "
            "dns.location_database"):
        assert expect in text, text
    assert len(lines) == 4, lines
