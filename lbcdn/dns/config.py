"""The `dns:` config section: frozen dataclasses read by the reflective loader
(lbcdn.configkit.reflect), plus the checks it cannot know, registered as validators.

Rules:
- Same habits as lbcdn/config/schema.py: field names are YAML keys, units in names, every
  field documented with `doc(...)`, unknown keys are errors, every error names its YAML path.
- Route 53 vocabulary: hosted zones, record sets with a routing policy (simple, weighted,
  failover, multivalue, cidr, geolocation, geoproximity) and a set identifier, alias records,
  health checks by id (calculated and inverted ones too), CIDR collections.
- Syntax is checked at load (names, record values, policy fields, CIDRs); what needs the
  files on disk or other sections (master files, alias targets) is checked when the zones
  are built (lbcdn.dns.zone.build_zones) and by `alias_problems`.
- Names in records may be relative to the zone (`www`), `@` for the apex, or absolute with a
  trailing dot.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lbcdn.configkit.errors import ConfigError
from lbcdn.configkit.reflect import INVALID, VALIDATORS, Loader, index, join
from lbcdn.configkit.fields import REQUIRED, doc
from lbcdn.dns.names import BadName, Name, is_subdomain, is_wildcard, parse_name, to_text
from lbcdn.dns.rdata import TYPES, BadRdata, parse_rdata_text

RecordType = Literal["A", "AAAA", "CNAME", "NS", "SOA", "PTR", "MX", "TXT", "SRV", "CAA"]
Policy = Literal["simple", "weighted", "failover", "multivalue", "cidr", "geolocation",
                 "geoproximity"]
FailoverRole = Literal["PRIMARY", "SECONDARY"]
TsigAlgorithm = Literal["hmac-sha256", "hmac-sha1", "hmac-sha512"]

MAX_TTL = 2**31 - 1


@dataclass(frozen=True)
class DnsListenerConfig:
    port: int = doc("Port for both UDP and TCP.", REQUIRED, lo=1, hi=65535)
    address: str = doc("Address to bind (UDP and TCP).", "0.0.0.0")
    tcp_idle_timeout_s: float = doc(
        "A TCP connection with no complete query for this long is closed.", 10.0, lo=0.001)


@dataclass(frozen=True)
class AliasConfig:
    """Route 53 alias: the record answers with the addresses of a listener or a pool."""
    listener: str | None = doc("Name of an HTTP listener whose address to answer with.", None)
    pool: str | None = doc("Name of a pool whose target addresses to answer with.", None)
    evaluate_target_health: bool = doc(
        "Pool only: leave out targets the pool's health checks mark unhealthy (all of them "
        "are answered when none is healthy).", True)


@dataclass(frozen=True)
class CidrRoutingConfig:
    """Route 53 IP-based routing: which location of which CIDR collection this set serves."""
    collection: str = doc("Name of a `dns.cidr_collections` collection; the same for every "
                          "set of the name and type.", REQUIRED)
    location: str = doc("A location of that collection, or `*`: the default set, for clients "
                        "in no location (or whose set is unhealthy).", REQUIRED)


CONTINENTS = ("AF", "AN", "AS", "EU", "NA", "OC", "SA")


@dataclass(frozen=True)
class GeolocationConfig:
    """Route 53 geolocation: a continent, a country, or a country's subdivision."""
    continent: str | None = doc("Continent code: AF, AN, AS, EU, NA, OC or SA.", None)
    country: str | None = doc("ISO 3166-1 alpha-2 country code, or `*` for the default set "
                              "(clients matching no other set).", None)
    subdivision: str | None = doc("ISO 3166-2 subdivision code without the country (`CA` "
                                  "for California); needs `country`.", None)


@dataclass(frozen=True)
class GeoproximityConfig:
    """Route 53 geoproximity: the set nearest the client is answered."""
    latitude: float = doc("Latitude of the set's location, degrees.", REQUIRED, lo=-90, hi=90)
    longitude: float = doc("Longitude of the set's location, degrees.", REQUIRED, lo=-180,
                           hi=180)
    bias: int = doc("-99 to 99: distances to this set count (1 - bias/100) times, so a "
                    "positive bias draws clients from farther away.", 0, lo=-99, hi=99)


@dataclass(frozen=True)
class RecordSetConfig:
    name: str = doc("Owner: relative to the zone (`www`), `@` for the apex, `*.x` wildcards, "
                    "or absolute with a trailing dot.", REQUIRED)
    type: RecordType = doc("Record type.", REQUIRED)
    values: tuple[str, ...] = doc(
        "Record data in zone-file form, one record each: `192.0.2.1`, `10 mail`, "
        "`\"v=spf1 -all\"`, `0 issue \"letsencrypt.org\"`. Empty for an alias.",
        default_factory=tuple)
    ttl_s: int | None = doc("TTL; default: the zone's `ttl_s`.", None, lo=0, hi=MAX_TTL)
    policy: Policy = doc(
        "Routing policy: simple (all values, order rotated per answer; NS sets keep their "
        "order), weighted (one record set picked "
        "by weight), failover (PRIMARY while healthy, else SECONDARY), multivalue (up to 8 "
        "healthy record sets, shuffled), cidr (by the client's subnet: `cidr_routing`), "
        "geolocation (by the client's location: `geolocation`), geoproximity (the nearest "
        "set: `geoproximity`); the last two need `dns.location_database`.", "simple")
    set_identifier: str | None = doc(
        "Tells apart the record sets of one name and type; required for every policy but "
        "simple.", None)
    weight: int | None = doc("Weighted: relative share, 0-255 (0: only when nothing else can "
                             "be answered).", None, lo=0, hi=255)
    failover: FailoverRole | None = doc("Failover: PRIMARY or SECONDARY.", None)
    health_check: str | None = doc(
        "Id of a health check (from `dns.health_checks`, or `pool/NAME/HOST:PORT` for a pool "
        "target's health) that must pass for this record set to be answered.", None)
    alias: AliasConfig | None = doc("Answer with a listener's or pool's addresses (A/AAAA).",
                                    None)
    cidr_routing: CidrRoutingConfig | None = doc("The cidr policy's collection and location.",
                                                 None)
    geolocation: GeolocationConfig | None = doc("The geolocation policy's location.", None)
    geoproximity: GeoproximityConfig | None = doc("The geoproximity policy's coordinates.",
                                                  None)


@dataclass(frozen=True)
class SoaConfig:
    """Every field is optional; the SOA is generated from what is left out."""
    mname: str | None = doc("Primary name server; default: the first NS.", None)
    rname: str | None = doc("Contact mailbox as a name; default: `hostmaster.<zone>`.", None)
    serial: int | None = doc(
        "Starting serial; default: the Unix time when the zone is built (so it grows across "
        "restarts). Every change adds at least 1.", None, lo=0, hi=2**32 - 1)
    refresh_s: int = doc("Secondaries check the serial this often.", 7200, lo=1, hi=MAX_TTL)
    retry_s: int = doc("Secondaries retry a failed refresh after this long.", 900, lo=1,
                       hi=MAX_TTL)
    expire_s: int = doc("Secondaries stop answering after failing this long.", 1209600, lo=1,
                        hi=MAX_TTL)
    minimum_s: int = doc("Negative-caching TTL (RFC 2308) for NXDOMAIN and NODATA answers.",
                         300, lo=0, hi=MAX_TTL)
    ttl_s: int = doc("TTL of the SOA record itself.", 900, lo=0, hi=MAX_TTL)


@dataclass(frozen=True)
class RolloverConfig:
    """A combined signing key rolled on a schedule by double signatures (lbcdn.dns.keys):
    the new key is added and signs next to the old one; the old key is dropped
    `propagation_delay_s` + the zone's largest TTL (DNSKEY set included) + `ds_wait_s`
    later. The new DS must be at the parent by then (it is logged, and shown by the admin
    API and `lbcdn dns ds`, when the rollover starts)."""
    csk_lifetime_s: int = doc("Start a rollover once the current key is this old.", REQUIRED,
                              lo=1, hi=MAX_TTL)
    propagation_delay_s: int = doc(
        "Time a change takes to reach every name server of the zone (secondaries included).",
        300, lo=0, hi=MAX_TTL)
    ds_wait_s: int = doc(
        "Time given to the parent's DS change: putting the new DS at the parent (the "
        "registrar's delay) plus the parent's DS TTL.", 2 * 86400, lo=0, hi=MAX_TTL)


@dataclass(frozen=True)
class DnssecConfig:
    """Online DNSSEC signing of a zone (lbcdn.dns.dnssec); keys in `admin.state_dir`."""
    enabled: bool = doc("Sign the zone's answers and transfers.", False)
    algorithm: Literal["ECDSAP256SHA256", "ED25519"] = doc(
        "Algorithm of the combined signing key (13 or 15). Changing it makes a new key: the "
        "DS at the parent must then be replaced.", "ECDSAP256SHA256")
    dnskey_ttl_s: int = doc("TTL of the DNSKEY set; a key rollover waits this long (plus the "
                            "DS TTL at the parent) between its steps.", 3600, lo=0, hi=MAX_TTL)
    rollover: RolloverConfig | None = doc(
        "Roll the key on a schedule; default: only through the admin API.", None)


@dataclass(frozen=True)
class ZoneConfig:
    name: str = doc("Zone apex, e.g. `example.com` or `2.0.192.in-addr.arpa`.", REQUIRED)
    ttl_s: int = doc("Default TTL of the zone's records.", 300, lo=0, hi=MAX_TTL)
    soa: SoaConfig = doc("SOA fields; generated when left out.", default_factory=SoaConfig)
    ns: tuple[str, ...] = doc(
        "Name servers of the zone (apex NS); default: `ns1.<zone>`, with A/AAAA records from "
        "`dns.public_addresses` when the zone has none for it.", default_factory=tuple)
    ns_ttl_s: int = doc("TTL of the apex NS records.", 172800, lo=0, hi=MAX_TTL)
    records: tuple[RecordSetConfig, ...] = doc("Record sets.", default_factory=tuple)
    file: str | None = doc(
        "An RFC 1035 master file with more records (relative to the config file's directory). "
        "Its SOA, if any, replaces the generated one.", None)
    ptr_from_addresses: bool = doc(
        "Create PTR records for this zone's A/AAAA values in the served reverse zones "
        "(in-addr.arpa / ip6.arpa) that cover them; explicit PTRs win.", False)
    dnssec: DnssecConfig = doc("DNSSEC signing.", default_factory=DnssecConfig)


@dataclass(frozen=True)
class HealthCheckConfig:
    """Route 53 health check; the prober is shared with the pools (lbcdn.health)."""
    id: str = doc("Name that record sets refer to in `health_check`.", REQUIRED)
    host: str | None = doc("Address or host name to probe; required but for calculated "
                           "checks.", None)
    protocol: Literal["http", "https", "tcp", "calculated"] = doc(
        "HTTP(S) GET, a TCP connect, or calculated: healthy while at least "
        "`health_threshold` of `child_health_checks` are.", "http")
    child_health_checks: tuple[str, ...] = doc(
        "Calculated: ids of the checks it combines (`dns.health_checks` that are not "
        "calculated, or `pool/NAME/HOST:PORT`).", default_factory=tuple)
    health_threshold: int | None = doc(
        "Calculated: how many children must be healthy (all: AND, 1: OR, 0: always "
        "healthy); default: all of them.", None, lo=0)
    invert: bool = doc("Report the opposite of what the check finds (Route 53's inverted "
                       "checks).", False)
    port: int | None = doc("Port; default 80 (http), 443 (https); required for tcp.", None,
                           lo=1, hi=65535)
    path: str = doc("HTTP(S) path to GET; a 2xx or 3xx status passes.", "/")
    search_string: str | None = doc(
        "HTTP(S): also pass only when this appears in the first 5120 bytes of the body.", None)
    interval_s: float = doc("Time between probes.", 30.0, lo=1)
    timeout_s: float = doc("A probe not done in this long fails; must be less than interval_s.",
                           4.0, lo=0.1)
    failure_threshold: int = doc(
        "Consecutive results needed to switch between healthy and unhealthy.", 3, lo=1, hi=10)


@dataclass(frozen=True)
class RateLimitConfig:
    """Response rate limiting per client prefix, UDP only (like Knot's rate-limit)."""
    enabled: bool = doc("Limit UDP responses per client prefix.", False)
    responses_per_s: float = doc("Responses per second allowed per prefix.", 20.0, lo=0.001)
    burst: float | None = doc("Responses banked at most; default: responses_per_s.", None,
                              lo=1)
    slip: int = doc("Every Nth limited response is sent truncated (TC) instead of dropped; "
                    "0 never.", 2, lo=0, hi=100)
    ipv4_prefix: int = doc("IPv4 clients are grouped by this prefix length.", 24, lo=0, hi=32)
    ipv6_prefix: int = doc("IPv6 clients are grouped by this prefix length.", 56, lo=0, hi=128)
    max_tracked: int = doc("Most prefixes tracked at once.", 100000, lo=1)


@dataclass(frozen=True)
class TsigKeyConfig:
    """A TSIG key (RFC 8945) shared with secondaries, as `tsig-keygen` or `keymgr -t` make."""
    name: str = doc("Key name, a domain name (`xfr-key`, `knot.example.com`); the same on "
                    "both sides.", REQUIRED)
    algorithm: TsigAlgorithm = doc("HMAC algorithm.", "hmac-sha256")
    secret: str | None = doc(
        "The shared secret in base64; write `${ENV_VAR}` to read it from the environment.",
        None)
    secret_file: str | None = doc(
        "A file holding the base64 secret (relative to the config file's directory), instead "
        "of `secret`.", None)


@dataclass(frozen=True)
class SecondaryKeyConfig:
    """A secondary whose requests must be signed: its AXFR/IXFR requests are refused unless
    signed with `tsig_key`, and NOTIFYs sent to it are signed with it."""
    address: str = doc("Address or CIDR the secondary sends from (and, for `notify` "
                       "targets, the address NOTIFYs go to).", REQUIRED)
    tsig_key: str = doc("Name of a `dns.tsig_keys` key.", REQUIRED)


@dataclass(frozen=True)
class CidrLocationConfig:
    name: str = doc("Location name that record sets refer to (`cidr_routing.location`).",
                    REQUIRED)
    cidrs: tuple[str, ...] = doc("CIDR blocks (`192.0.2.0/24`, `2001:db8::/48`).",
                                 default_factory=tuple)


@dataclass(frozen=True)
class CidrCollectionConfig:
    """Route 53 CIDR collection: named locations, each a list of CIDR blocks; a client in a
    block is in its location (the longest block wins)."""
    name: str = doc("Collection name that record sets refer to.", REQUIRED)
    locations: tuple[CidrLocationConfig, ...] = doc("Its locations.", default_factory=tuple)


@dataclass(frozen=True)
class DnsConfig:
    listeners: tuple[DnsListenerConfig, ...] = doc("UDP+TCP listeners.", default_factory=tuple)
    zones: tuple[ZoneConfig, ...] = doc("Hosted zones.", default_factory=tuple)
    health_checks: tuple[HealthCheckConfig, ...] = doc("Health checks by id.",
                                                       default_factory=tuple)
    public_addresses: tuple[str, ...] = doc(
        "Addresses clients reach this host at (the Elastic IPs): answered for aliases to a "
        "listener bound to a wildcard address, and for generated `ns1.<zone>` records.",
        default_factory=tuple)
    allow_transfer: tuple[str, ...] = doc(
        "Addresses or CIDRs allowed to AXFR the zones over TCP; empty: nobody.",
        default_factory=tuple)
    notify: tuple[str, ...] = doc(
        "Secondaries (`host:port`, IPv6 as `[::1]:53`) sent NOTIFY when a zone changes.",
        default_factory=tuple)
    tsig_keys: tuple[TsigKeyConfig, ...] = doc("TSIG keys (RFC 8945).", default_factory=tuple)
    secondaries: tuple[SecondaryKeyConfig, ...] = doc(
        "Secondaries that must sign with a TSIG key: a transfer request from an address "
        "listed here is answered only when signed with its key (whether or not "
        "`allow_transfer` lists it too); NOTIFYs to it are signed.", default_factory=tuple)
    nsid: str | None = doc(
        "Name server identifier (RFC 5001) sent to clients that ask for it, as Knot's `nsid`: "
        "text, or hex digits after `0x`; unset: none.", None)
    max_udp_payload_bytes: int = doc(
        "Largest UDP answer to an EDNS client (which may ask for less); 512 without EDNS.",
        1232, lo=512, hi=4096)
    rate_limit: RateLimitConfig = doc("Response rate limiting.", default_factory=RateLimitConfig)
    cidr_collections: tuple[CidrCollectionConfig, ...] = doc(
        "Route 53 CIDR collections, for record sets with the cidr policy.",
        default_factory=tuple)
    location_database: str | None = doc(
        "A MaxMind-format location database (`.mmdb`: GeoLite2/GeoIP2 City or Country) for "
        "the geolocation and geoproximity policies, relative to the config file's directory; "
        "read at start and reload.", None)
    state_dir: str | None = doc(
        "Directory where changes made through the admin API are kept across restarts; unset: "
        "they last until the process exits.", None)


# -- checks ------------------------------------------------------------------------------

_CHECK_ORIGIN: Name = (b"zone", b"invalid")   # stands in for the zone while checking syntax


def _name_problem(text: str, origin: Name) -> str | None:
    try:
        name = parse_name(text, origin)
    except BadName as e:
        return str(e)
    if b"*" in name[1:]:
        return "`*` is only allowed as the leftmost label"
    return None


def _check_record(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    if "name" in v:
        problem = _name_problem(v["name"], _CHECK_ORIGIN)
        if problem:
            ld.error(join(path, "name"), problem)
    rtype = v.get("type")
    values: tuple[str, ...] = v.get("values", ())
    alias: AliasConfig | None = v.get("alias")
    policy = v.get("policy", "simple")
    if alias is not None:
        if values:
            ld.error(join(path, "values"), "an alias takes no values")
        if rtype is not None and rtype not in ("A", "AAAA"):
            ld.error(join(path, "alias"), "only A and AAAA record sets can be aliases")
    elif "values" in v and not values:
        ld.error(join(path, "values"), "must list at least one value (or give an alias)")
    if rtype == "SOA":
        ld.error(join(path, "type"), "the SOA is set with the zone's `soa:` section")
    elif rtype is not None and alias is None:
        for i, text in enumerate(values):
            try:
                parse_rdata_text(TYPES[rtype], text, _CHECK_ORIGIN)
            except (BadRdata, BadName) as e:
                ld.error(index(join(path, "values"), i), str(e))
        if rtype == "CNAME" and len(values) > 1:
            ld.error(join(path, "values"), "a CNAME record set has exactly one value")
    sid = v.get("set_identifier")
    if policy == "simple":
        for key in ("set_identifier", "weight", "failover", "health_check"):
            if v.get(key) is not None:
                ld.error(join(path, key), "only for record sets with a routing policy (set "
                                          "`policy`)")
    else:
        if sid is None or sid == "":
            ld.error(join(path, "set_identifier"), f"required for the {policy} policy")
        if rtype in ("NS", "SOA"):
            ld.error(join(path, "policy"), f"{rtype} record sets are simple only")
        if policy == "weighted" and v.get("weight") is None:
            ld.error(join(path, "weight"), "required for the weighted policy (0-255)")
        if policy != "weighted" and v.get("weight") is not None:
            ld.error(join(path, "weight"), "only for the weighted policy")
        if policy == "failover" and v.get("failover") is None:
            ld.error(join(path, "failover"), "required for the failover policy "
                                             "(PRIMARY or SECONDARY)")
        if policy != "failover" and v.get("failover") is not None:
            ld.error(join(path, "failover"), "only for the failover policy")
        if policy == "multivalue" and rtype == "CNAME":
            ld.error(join(path, "policy"), "multivalue does not apply to CNAME")
    for key, wanted in _POLICY_FIELDS.items():
        if policy == wanted and v.get(key) is None:
            ld.error(join(path, key), f"required for the {policy} policy")
        if policy != wanted and v.get(key) is not None:
            ld.error(join(path, key), f"only for the {wanted} policy")


_POLICY_FIELDS = {"cidr_routing": "cidr", "geolocation": "geolocation",
                  "geoproximity": "geoproximity"}


def _check_geolocation(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    continent, country = v.get("continent"), v.get("country")
    if (continent is None) == (country is None):
        ld.error(path, "give exactly one of continent or country")
    if continent is not None and continent not in CONTINENTS:
        ld.error(join(path, "continent"), f"not a continent code ({', '.join(CONTINENTS)}): "
                                          f"{continent!r}")
    if country is not None and country != "*" and not (len(country) == 2
                                                       and country.isalpha()
                                                       and country.isupper()):
        ld.error(join(path, "country"), f"not an ISO 3166-1 alpha-2 code (or `*`): "
                                        f"{country!r}")
    sub = v.get("subdivision")
    if sub is not None and (country is None or country == "*"):
        ld.error(join(path, "subdivision"), "needs a country")
    elif sub is not None and not (sub.isalnum() and sub.isupper() and 1 <= len(sub) <= 3):
        ld.error(join(path, "subdivision"), f"not an ISO 3166-2 subdivision code: {sub!r}")


def _check_alias(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    given = [k for k in ("listener", "pool") if v.get(k) is not None]
    if len(given) != 1:
        ld.error(path, "give exactly one of listener or pool")


def _check_soa(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    for key in ("mname", "rname"):
        if v.get(key) is not None:
            problem = _name_problem(v[key], _CHECK_ORIGIN)
            if problem:
                ld.error(join(path, key), problem)


def record_key(rec: RecordSetConfig, origin: Name) -> tuple[Name, str, str | None]:
    """(owner, type, set identifier): what names one record set inside a zone."""
    return parse_name(rec.name, origin), rec.type, rec.set_identifier


def _check_zone(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    if "name" not in v:
        return
    try:
        origin = parse_name(v["name"] if v["name"].endswith(".") else v["name"] + ".")
    except BadName as e:
        ld.error(join(path, "name"), str(e))
        return
    if is_wildcard(origin):
        ld.error(join(path, "name"), "a zone name cannot be a wildcard")
    for i, ns in enumerate(v.get("ns", ())):
        problem = _name_problem(ns, origin)
        if problem:
            ld.error(index(join(path, "ns"), i), problem)
    seen: dict[tuple[Name, str, str | None], str] = {}
    policies: dict[tuple[Name, str], tuple[str, str]] = {}
    records: list[tuple[str, RecordSetConfig]] = (
        [(index(join(path, "records"), i), r) for i, r in enumerate(v["records"])]
        if "records" in v else list(ld.partial.get(join(path, "records"), [])))
    for where, rec in records:
        try:
            key = record_key(rec, origin)
        except BadName:
            continue  # reported by _check_record
        if not is_subdomain(key[0], origin):
            ld.error(join(where, "name"), f"{to_text(key[0])} is outside the zone "
                                          f"{to_text(origin)}")
            continue
        if key in seen:
            ld.error(where, f"duplicate record set {to_text(key[0])} {key[1]}"
                            + (f" ({key[2]})" if key[2] else "") + f" (also {seen[key]})")
        seen.setdefault(key, where)
        first = policies.setdefault((key[0], key[1]), (rec.policy, where))
        if first[0] != rec.policy or (rec.policy == "simple" and first[1] != where):
            if first[0] != rec.policy:
                ld.error(join(where, "policy"), f"{rec.policy} mixed with {first[0]} for the "
                                                f"same name and type (also {first[1]})")
        if key[0] == origin and rec.type == "CNAME":
            ld.error(join(where, "type"), "a CNAME cannot be at the zone apex")


def _host_port_problem(text: str) -> str | None:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f'expected "host:port" (IPv6 as "[::1]:53"), got {text!r}'
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"{host!r} is not an IP address (NOTIFY targets are addresses)"
    return None


def _check_dns(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    for i, cidr in enumerate(v.get("allow_transfer", ())):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            ld.error(index(join(path, "allow_transfer"), i), f"not an address or CIDR: {cidr!r}")
    for i, target in enumerate(v.get("notify", ())):
        problem = _host_port_problem(target)
        if problem:
            ld.error(index(join(path, "notify"), i), problem)
    for i, addr in enumerate(v.get("public_addresses", ())):
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            ld.error(index(join(path, "public_addresses"), i), f"not an IP address: {addr!r}")
    checks: set[str] = set()
    calculated = {hc.id for hc in v.get("health_checks", ()) if hc.protocol == "calculated"}
    for i, hc in enumerate(v.get("health_checks", ())):
        where = index(join(path, "health_checks"), i)
        if hc.id in checks:
            ld.error(join(where, "id"), f"duplicate health check id {hc.id!r}")
        checks.add(hc.id)
        if hc.protocol == "calculated":
            _check_calculated(ld, hc, where, v, calculated)
            continue
        if hc.host is None:
            ld.error(join(where, "host"), f"required for {hc.protocol} health checks")
        for key in ("child_health_checks", "health_threshold"):
            if getattr(hc, key):
                ld.error(join(where, key), "only for calculated health checks")
        if hc.protocol == "tcp" and hc.port is None:
            ld.error(join(where, "port"), "required for tcp health checks")
        if hc.protocol != "tcp" and not hc.path.startswith("/"):
            ld.error(join(where, "path"), 'must start with "/"')
        if hc.timeout_s >= hc.interval_s:  # else the checker refuses it at start
            ld.error(join(where, "timeout_s"),
                     f"must be less than interval_s ({hc.interval_s:g})")
    collections = _check_collections(ld, v, path)
    zones_seen: dict[Name, str] = {}
    for i, zone in enumerate(v.get("zones", ())):
        where = index(join(path, "zones"), i)
        try:
            origin = parse_name(zone.name if zone.name.endswith(".") else zone.name + ".")
        except BadName:
            continue
        if origin in zones_seen:
            ld.error(join(where, "name"), f"duplicate zone {to_text(origin)} "
                                          f"(also {zones_seen[origin]})")
        zones_seen.setdefault(origin, where)
        first_collection: dict[tuple[str, str], str] = {}
        for j, rec in enumerate(zone.records):
            rwhere = index(join(where, "records"), j)
            hc = rec.health_check
            if hc is not None and hc not in checks and not hc.startswith("pool/"):
                ld.error(join(rwhere, "health_check"),
                         f"unknown health check {hc!r} (known: "
                         f"{', '.join(sorted(checks)) or 'none'})")
            if rec.policy in ("geolocation", "geoproximity") and not v.get("location_database"):
                ld.error(join(rwhere, "policy"), f"the {rec.policy} policy needs "
                                                 "dns.location_database")
            cr = rec.cidr_routing
            if cr is None:
                continue
            if cr.collection not in collections:
                ld.error(join(join(rwhere, "cidr_routing"), "collection"),
                         f"unknown CIDR collection {cr.collection!r} (known: "
                         f"{', '.join(sorted(collections)) or 'none'})")
                continue
            if cr.location != "*" and cr.location not in collections[cr.collection]:
                ld.error(join(join(rwhere, "cidr_routing"), "location"),
                         f"collection {cr.collection!r} has no location {cr.location!r}")
            other = first_collection.setdefault((rec.name, rec.type), cr.collection)
            if other != cr.collection:
                ld.error(join(join(rwhere, "cidr_routing"), "collection"),
                         f"the record sets of one name and type use one collection "
                         f"(also {other!r})")
    binds: dict[tuple[str, int], str] = {}
    for i, lst in enumerate(v.get("listeners", ())):
        where = index(join(path, "listeners"), i)
        if (lst.address, lst.port) in binds:
            ld.error(join(where, "port"), f"{lst.address} port {lst.port} is already used by "
                                          f"{binds[(lst.address, lst.port)]}")
        binds.setdefault((lst.address, lst.port), where)


def _check_calculated(ld: Loader, hc: HealthCheckConfig, where: str, v: Mapping[str, Any],
                      calculated: set[str]) -> None:
    known = {c.id for c in v.get("health_checks", ())}
    if hc.host is not None:
        ld.error(join(where, "host"), "a calculated check probes nothing")
    if not hc.child_health_checks:
        ld.error(join(where, "child_health_checks"), "required for calculated health checks")
    for k, child in enumerate(hc.child_health_checks):
        if child in calculated:
            # as in Route 53: one level, so no cycles and a state is one step from its probes
            ld.error(index(join(where, "child_health_checks"), k),
                     f"{child!r} is calculated itself")
        elif child not in known and not child.startswith("pool/"):
            ld.error(index(join(where, "child_health_checks"), k),
                     f"unknown health check {child!r}")
    if hc.health_threshold is not None and hc.health_threshold > len(hc.child_health_checks):
        ld.error(join(where, "health_threshold"),
                 f"more than the {len(hc.child_health_checks)} child checks")


def _check_collection(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    names: set[str] = set()
    blocks: dict[object, str] = {}
    for j, loc in enumerate(v.get("locations", ())):
        lwhere = index(join(path, "locations"), j)
        if loc.name in names or loc.name == "*" or not loc.name:
            ld.error(join(lwhere, "name"), f"duplicate or reserved location {loc.name!r}")
        names.add(loc.name)
        for k, text in enumerate(loc.cidrs):
            try:
                net = ipaddress.ip_network(text, strict=True)
            except ValueError as e:
                ld.error(index(join(lwhere, "cidrs"), k), f"not a CIDR block: {e}")
                continue
            if net in blocks:
                ld.error(index(join(lwhere, "cidrs"), k),
                         f"{text} is already in location {blocks[net]!r}")
            blocks.setdefault(net, loc.name)


def _check_collections(ld: Loader, v: Mapping[str, Any], path: str) -> dict[str, set[str]]:
    """Collection names are unique; -> {collection: its location names}."""
    out: dict[str, set[str]] = {}
    for where, coll in _items(ld, v, path, "cidr_collections"):
        if coll.name in out:
            ld.error(join(where, "name"), f"duplicate collection {coll.name!r}")
        out.setdefault(coll.name, set()).update(loc.name for loc in coll.locations)
    return out


def key_name(text: str) -> Name:
    """A TSIG key's name as written in the config; BadName when it is not one."""
    name = parse_name(text if text.endswith(".") else text + ".")
    if not name:
        raise BadName("a key name cannot be the root")
    return name


def decode_secret(text: str) -> bytes:
    """A TSIG secret in base64 (as `tsig-keygen` and `keymgr -t` print it) -> bytes;
    ValueError when it is not."""
    try:
        secret = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
    if not secret:
        raise ValueError("empty secret")
    return secret


def nsid_bytes(text: str) -> bytes:
    """`dns.nsid` -> the option's bytes: `0x` + hex digits, or the text itself (UTF-8)."""
    if text[:2].lower() == "0x":
        return bytes.fromhex(text[2:])
    return text.encode("utf-8")


def _check_tsig_key(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    if "name" in v:
        try:
            key_name(v["name"])
        except BadName as e:
            ld.error(join(path, "name"), str(e))
    if (v.get("secret") is None) == (v.get("secret_file") is None):
        ld.error(path, "give exactly one of secret or secret_file")
    elif v.get("secret") is not None:
        try:
            decode_secret(v["secret"])
        except ValueError as e:
            ld.error(join(path, "secret"), str(e))


def _items(ld: Loader, v: Mapping[str, Any], path: str, key: str) -> list[tuple[str, Any]]:
    """The entries of list `key` with their paths; only the valid ones when some are not."""
    if key in v:
        return [(index(join(path, key), i), x) for i, x in enumerate(v[key])]
    return list(ld.partial.get(join(path, key), []))


def _check_tsig(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    keys: dict[Name, str] = {}
    key_items = _items(ld, v, path, "tsig_keys")
    for where, kc in key_items:
        try:
            name = key_name(kc.name)
        except BadName:
            continue  # reported by _check_tsig_key
        if name in keys:
            ld.error(join(where, "name"), f"duplicate key {kc.name!r} (also {keys[name]})")
        keys.setdefault(name, where)
    for i, sc in enumerate(v.get("secondaries", ())):
        where = index(join(path, "secondaries"), i)
        try:
            ipaddress.ip_network(sc.address, strict=False)
        except ValueError:
            ld.error(join(where, "address"), f"not an address or CIDR: {sc.address!r}")
        try:
            known = key_name(sc.tsig_key) in keys
        except BadName as e:
            ld.error(join(where, "tsig_key"), str(e))
            continue
        if not known and "tsig_keys" in v:  # else a broken key may be the one meant
            ld.error(join(where, "tsig_key"), f"unknown key {sc.tsig_key!r} (known: "
                     f"{', '.join(kc.name for _, kc in key_items) or 'none'})")
    nsid = v.get("nsid")
    if nsid is not None:
        try:
            data = nsid_bytes(nsid)
        except ValueError:
            ld.error(join(path, "nsid"), "not hex digits after 0x")
            return
        if not data or len(data) > 128:
            ld.error(join(path, "nsid"), "must be 1 to 128 bytes")


def alias_problems(dns: DnsConfig, listeners: list[str], pools: list[str],
                   path: str = "dns") -> list[tuple[str, str]]:
    """Cross-section check for the lead's Config validator: every alias names a real
    listener or pool. Returns (YAML path, message) pairs."""
    out: list[tuple[str, str]] = []
    for i, zone in enumerate(dns.zones):
        for j, rec in enumerate(zone.records):
            a = rec.alias
            where = f"{path}.zones[{i}].records[{j}].alias"
            if a is not None and a.listener is not None and a.listener not in listeners:
                out.append((f"{where}.listener", f"unknown listener {a.listener!r}"))
            if a is not None and a.pool is not None and a.pool not in pools:
                out.append((f"{where}.pool", f"unknown pool {a.pool!r}"))
    return out


VALIDATORS.setdefault(RecordSetConfig, []).append(_check_record)
VALIDATORS.setdefault(AliasConfig, []).append(_check_alias)
VALIDATORS.setdefault(GeolocationConfig, []).append(_check_geolocation)
VALIDATORS.setdefault(CidrCollectionConfig, []).append(_check_collection)
VALIDATORS.setdefault(SoaConfig, []).append(_check_soa)
VALIDATORS.setdefault(ZoneConfig, []).append(_check_zone)
VALIDATORS.setdefault(DnsConfig, []).append(_check_dns)
VALIDATORS.setdefault(DnsConfig, []).append(_check_tsig)
VALIDATORS.setdefault(TsigKeyConfig, []).append(_check_tsig_key)


def load_dns_config(data: object, path: str = "dns",
                    env: Mapping[str, str] | None = None) -> DnsConfig:
    """Load a parsed `dns:` section alone (tests, the admin API); raises
    lbcdn.configkit.errors.ConfigError. The daemon gets it as part of `Config`."""
    ld = Loader({} if env is None else env)
    value = ld.value(DnsConfig, data, path)
    if ld.problems or value is INVALID:
        raise ConfigError(ld.problems or [(path, "invalid")])
    assert isinstance(value, DnsConfig)
    return value


def load_record_set(data: object, path: str = "record") -> RecordSetConfig:
    """One record set from JSON/YAML data (change batches use it); raises ConfigError."""
    ld = Loader({})
    # API data is literal: escape `$` so environment interpolation gives it back unchanged.
    value = ld.value(RecordSetConfig, _literal(data), path)
    if ld.problems or value is INVALID:
        raise ConfigError(ld.problems or [(path, "invalid")])
    assert isinstance(value, RecordSetConfig)
    return value


def load_cidr_collection(data: object, path: str = "collection") -> CidrCollectionConfig:
    """One CIDR collection from JSON data (the admin API); raises ConfigError."""
    ld = Loader({})
    value = ld.value(CidrCollectionConfig, _literal(data), path)
    if ld.problems or value is INVALID:
        raise ConfigError(ld.problems or [(path, "invalid")])
    assert isinstance(value, CidrCollectionConfig)
    return value


def _literal(data: object) -> object:
    if isinstance(data, str):
        return data.replace("$", "$$")
    if isinstance(data, list):
        return [_literal(x) for x in data]
    if isinstance(data, Mapping):
        return {k: _literal(x) for k, x in data.items()}
    return data
