"""Client-dependent DNS routing through the real daemon, in one process and with
`--workers 2` (where DNS runs in the control process): IP-based routing over a CIDR
collection by EDNS Client Subnet (RFC 7871) or by the source address, geolocation from a
MaxMind-format database the test builds, ECS scopes and FORMERR for malformed ECS, answers
that no prepared-answer cache hands to another client, and calculated and inverted health
checks deciding a failover pair."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from pathlib import Path
from typing import Any

import aiohttp
import dns.edns
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.dns.geodb import city, write_geo_db
from tests.e2e.harness import HOST, DaemonProcess, admin_port, free_port, proxy_config

TOKEN = "s3cret"
WORKERS = [pytest.param([], id="one-process"), pytest.param(["--workers", "2"], id="workers-2")]


def routing_config(tmp: Path) -> dict[str, Any]:
    geo = write_geo_db(tmp / "geo.mmdb", {
        "198.51.100.0/24": city("EU", "DE", "BY", (48.14, 11.58)),
        "203.0.113.0/24": city("NA", "US", "CA", (37.77, -122.42)),
    })
    port = free_port()
    cfg = proxy_config(free_port(), admin={"token": TOKEN})   # a pool target never asked
    cidr = {"type": "A", "policy": "cidr", "ttl_s": 30}
    geoloc = {"name": "geo", "type": "A", "policy": "geolocation", "ttl_s": 30}
    svc = {"name": "svc", "type": "A", "policy": "failover", "ttl_s": 1}
    check = {"host": HOST, "protocol": "tcp", "interval_s": 1, "timeout_s": 0.5,
             "failure_threshold": 1}
    cfg["dns"] = {
        "listeners": [{"address": HOST, "port": port}],
        "location_database": str(geo),
        "cidr_collections": [{"name": "nets", "locations": [
            {"name": "office", "cidrs": ["198.51.100.0/24"]},
            {"name": "lab", "cidrs": ["198.51.100.128/25"]},
            {"name": "lo2", "cidrs": ["127.0.0.2/32"]},
            {"name": "v6", "cidrs": ["2001:db8::/32"]}]}],
        "health_checks": [
            {"id": "up", "port": port, **check},          # our own DNS TCP port: open
            {"id": "down", "port": free_port(), **check},  # nothing listens there
            {"id": "both", "protocol": "calculated", "child_health_checks": ["up", "down"]},
            {"id": "either", "protocol": "calculated", "child_health_checks": ["up", "down"],
             "health_threshold": 1},
            {"id": "not-down", "port": free_port(), "invert": True, **check},
            # a pool target with health checks off reads healthy (unchecked)
            {"id": "pool-or-down", "protocol": "calculated", "health_threshold": 1,
             "child_health_checks": [f"pool/app/{cfg['pools']['app']['targets'][0]}", "down"]},
            {"id": "not-pool", "protocol": "calculated", "invert": True,
             "child_health_checks": [f"pool/app/{cfg['pools']['app']['targets'][0]}"]}],
        "zones": [{"name": "example.test", "records": [
            {"name": "www", **cidr, "set_identifier": "office", "values": ["192.0.2.1"],
             "cidr_routing": {"collection": "nets", "location": "office"}},
            {"name": "www", **cidr, "set_identifier": "lab", "values": ["192.0.2.2"],
             "cidr_routing": {"collection": "nets", "location": "lab"}},
            {"name": "www", **cidr, "set_identifier": "lo2", "values": ["192.0.2.3"],
             "cidr_routing": {"collection": "nets", "location": "lo2"}},
            {"name": "www", **cidr, "set_identifier": "v6", "values": ["192.0.2.6"],
             "cidr_routing": {"collection": "nets", "location": "v6"}},
            {"name": "www", **cidr, "set_identifier": "rest", "values": ["192.0.2.9"],
             "cidr_routing": {"collection": "nets", "location": "*"}},
            {"name": "alias", "type": "CNAME", "values": ["www"]},
            {"name": "static", "type": "A", "values": ["192.0.2.100"]},
            {**geoloc, "set_identifier": "bavaria", "values": ["192.0.2.11"],
             "geolocation": {"country": "DE", "subdivision": "BY"}},
            {**geoloc, "set_identifier": "america", "values": ["192.0.2.12"],
             "geolocation": {"continent": "NA"}},
            {**geoloc, "set_identifier": "default", "values": ["192.0.2.13"],
             "geolocation": {"country": "*"}},
            *({**svc, "name": f"{hc}", "set_identifier": "p", "failover": "PRIMARY",
               "health_check": hc, "values": ["192.0.2.21"]} for hc in
              ("both", "either", "not-down", "up", "down", "pool-or-down", "not-pool")),
            *({**svc, "name": f"{hc}", "set_identifier": "s", "failover": "SECONDARY",
               "values": ["192.0.2.22"]} for hc in ("both", "either", "not-down", "up", "down",
                                                    "pool-or-down", "not-pool"))]}]}
    return cfg


def ask(cfg: dict[str, Any], name: str, *, ecs: tuple[str, int] | None = None,
        source: str = HOST, tcp: bool = False) -> dns.message.Message:
    options = [dns.edns.ECSOption(ecs[0], ecs[1])] if ecs else []
    q = dns.message.make_query(f"{name}.example.test.", dns.rdatatype.A, use_edns=0,
                               options=options)
    port = cfg["dns"]["listeners"][0]["port"]
    if tcp:
        return dns.query.tcp(q, HOST, port=port, timeout=3, source=source)
    return dns.query.udp(q, HOST, port=port, timeout=3, source=source)


def addresses(r: dns.message.Message) -> list[str]:
    return sorted(rd.address for rrset in r.answer for rd in rrset
                  if rrset.rdtype == dns.rdatatype.A)


def scope_of(r: dns.message.Message) -> tuple[str, int, int] | None:
    for opt in r.options:
        if isinstance(opt, dns.edns.ECSOption):
            return opt.address, opt.srclen, opt.scopelen
    return None


def raw(cfg: dict[str, Any], ecs_data: bytes) -> dns.message.Message:
    """A query whose ECS option data is given byte for byte."""
    q = dns.message.make_query("www.example.test.", dns.rdatatype.A)
    wire = q.to_wire()[:10] + b"\x00\x01" + q.to_wire()[12:]
    opt = (b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 4 + len(ecs_data))
           + struct.pack("!HH", 8, len(ecs_data)) + ecs_data)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(wire + opt, (HOST, cfg["dns"]["listeners"][0]["port"]))
        return dns.message.from_wire(s.recv(4096))


def wait_answers(cfg: dict[str, Any], want: dict[str, list[str]], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            seen = {name: addresses(ask(cfg, name)) for name in want}
        except dns.exception.Timeout:
            seen = {}
        if seen == want:
            return
        assert time.monotonic() < deadline, f"DNS answers {seen}, not {want}"
        time.sleep(0.1)


@pytest.fixture(scope="module", params=WORKERS)
def daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One daemon per mode for the module's tests: none of them changes its state."""
    tmp_path = tmp_path_factory.mktemp("routing")
    cfg = routing_config(tmp_path)
    proc = DaemonProcess(cfg, tmp_path, request.param)
    try:
        wait_answers(cfg, {"static": ["192.0.2.100"]}, 15)
        yield cfg
    finally:
        proc.stop()


@pytest.mark.slow
def test_routing_by_client(daemon: dict[str, Any]) -> None:
    cfg = daemon
    # ECS: the longest block wins; the scope is the matched block's length, or longer when
    # a more specific block lies inside it (lab's /25 in office's /24)
    r = ask(cfg, "www", ecs=("198.51.100.7", 32))
    assert addresses(r) == ["192.0.2.1"] and scope_of(r) == ("198.51.100.7", 32, 25)
    r = ask(cfg, "www", ecs=("198.51.100.200", 32))
    assert addresses(r) == ["192.0.2.2"] and scope_of(r) == ("198.51.100.200", 32, 25)
    r = ask(cfg, "www", ecs=("198.51.100.0", 24))
    assert addresses(r) == ["192.0.2.1"] and scope_of(r)[2] == 25   # scope > source
    r = ask(cfg, "www", ecs=("2001:db8:1::", 48))
    assert addresses(r) == ["192.0.2.6"] and scope_of(r) == ("2001:db8:1::", 48, 32)
    r = ask(cfg, "www", ecs=("10.0.0.0", 8))
    assert addresses(r) == ["192.0.2.9"] and scope_of(r)[2] > 0        # default, but depends
    r = ask(cfg, "www", ecs=("198.51.100.0", 0), source="127.0.0.2")
    assert addresses(r) == ["192.0.2.9"] and scope_of(r)[2] == 0       # opted out
    # through a CNAME, and over TCP
    r = ask(cfg, "alias", ecs=("198.51.100.7", 32), tcp=True)
    assert addresses(r) == ["192.0.2.1"] and scope_of(r)[2] == 25
    # an answer that does not depend on the client: ECS back with scope 0, the address echoed
    for ecs in (("198.51.100.7", 32), ("203.0.113.0", 24), ("198.51.100.7", 32)):
        r = ask(cfg, "static", ecs=ecs)
        assert addresses(r) == ["192.0.2.100"] and scope_of(r) == (*ecs, 0)

    # no ECS: the source address decides; alternating sources get their own answer every
    # time (no prepared answer is replayed to the other one)
    for _ in range(3):
        for source, want in (("127.0.0.2", "192.0.2.3"), ("127.0.0.3", "192.0.2.9")):
            assert addresses(ask(cfg, "www", source=source)) == [want], source
            assert addresses(ask(cfg, "www", source=source, tcp=True)) == [want], source
        for ecs, want in ((("198.51.100.7", 32), "192.0.2.1"), (("203.0.113.0", 24),
                                                                "192.0.2.9")):
            assert addresses(ask(cfg, "www", ecs=ecs)) == [want], ecs

    # geolocation from the .mmdb: subdivision, continent, default; scope = its network
    for ecs, want in ((("198.51.100.0", 24), "192.0.2.11"), (("203.0.113.9", 32), "192.0.2.12"),
                      (("192.0.2.0", 24), "192.0.2.13")):
        r = ask(cfg, "geo", ecs=ecs)
        assert addresses(r) == [want], ecs
    assert scope_of(ask(cfg, "geo", ecs=("198.51.100.0", 24)))[2] == 24
    assert addresses(ask(cfg, "geo")) == ["192.0.2.13"]   # 127.0.0.1: not in the database


MALFORMED_ECS = [
    (bytes([0, 1, 24, 8, 198, 51, 100]), "scope prefix set in a query"),
    (bytes([0, 1, 24, 0, 198, 51, 100, 0]), "more address bytes than the prefix needs"),
    (bytes([0, 1, 23, 0, 198, 51, 101]), "address bits set past the prefix"),
    (bytes([0, 3, 8, 0, 10]), "unknown family"),
    (bytes([0, 1, 33, 0, 1, 2, 3, 4, 5]), "prefix longer than the family's"),
    (bytes([0, 1]), "shorter than the fixed fields"),
]


@pytest.mark.slow
def test_malformed_ecs_is_formerr(daemon: dict[str, Any]) -> None:
    """RFC 7871 7.1.1; the OPT is still answered (RFC 6891 7), without an ECS option."""
    for data, why in MALFORMED_ECS:
        r = raw(daemon, data)
        assert r.rcode() == dns.rcode.FORMERR and not r.answer, why
        assert r.edns == 0 and scope_of(r) is None, why
    r = raw(daemon, bytes([0, 1, 24, 0, 198, 51, 100]))   # the same bytes, well-formed
    assert addresses(r) == ["192.0.2.1"] and scope_of(r) == ("198.51.100.0", 24, 25)


@pytest.mark.slow
def test_calculated_and_inverted_checks(daemon: dict[str, Any]) -> None:
    primary, secondary = ["192.0.2.21"], ["192.0.2.22"]
    # AND of up and down: unhealthy; OR: healthy; an inverted check of a closed port: healthy;
    # a pool target's state (kept by the pools, in the control process with workers) as a child
    wait_answers(daemon, {"up": primary, "down": secondary, "both": secondary,
                          "either": primary, "not-down": primary, "pool-or-down": primary,
                          "not-pool": secondary}, 15)


async def admin(cfg: dict[str, Any], method: str, path: str,
                body: object = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
        async with s.request(method, f"http://{HOST}:{admin_port(cfg)}{path}",
                             json=body) as r:
            return r.status, await r.json()


@pytest.mark.slow
async def test_cidr_collections_through_the_admin_api(daemon: dict[str, Any]) -> None:
    cfg = daemon
    path = "/api/dns/cidr-collections"
    status, body = await admin(cfg, "GET", path)
    assert status == 200
    (nets,) = body["collections"]
    assert nets["name"] == "nets" and nets["locations"][0] == {"name": "office",
                                                               "cidrs": ["198.51.100.0/24"]}
    ecs = ("203.0.113.5", 32)
    assert addresses(await asyncio.to_thread(ask, cfg, "www", ecs=ecs)) == ["192.0.2.9"]
    moved = {"locations": [{**loc, "cidrs": ["203.0.113.0/24"]} if loc["name"] == "office"
                           else loc for loc in nets["locations"]]}
    try:
        status, body = await admin(cfg, "PUT", f"{path}/nets", moved)
        assert status == 200, body
        # visible on the next query, in the process that answers DNS
        r = await asyncio.to_thread(ask, cfg, "www", ecs=ecs)
        assert addresses(r) == ["192.0.2.1"] and scope_of(r) == (*ecs, 24)
        # bad input and taking away what record sets use: refused, nothing changed
        status, body = await admin(cfg, "PUT", f"{path}/nets",
                                   {"locations": [{"name": "office", "cidrs": ["10.0.0.1/8"]}]})
        assert status == 400 and "host bits set" in "\n".join(body["problems"]), body
        status, body = await admin(cfg, "PUT", f"{path}/nets", {"locations": []})
        assert status == 400 and any("has no location 'lab'" in p for p in body["problems"])
        status, body = await admin(cfg, "DELETE", f"{path}/nets")
        assert status == 400 and any("unknown CIDR collection 'nets'" in p
                                     for p in body["problems"])
        assert (await admin(cfg, "DELETE", f"{path}/other"))[0] == 404
        status, body = await admin(cfg, "PUT", f"{path}/spare",
                                   {"locations": [{"name": "x", "cidrs": ["2001:db8::/32"]}]})
        assert status == 200
        assert (await admin(cfg, "DELETE", f"{path}/spare"))[0] == 200
        r = await asyncio.to_thread(ask, cfg, "www", ecs=ecs)
        assert addresses(r) == ["192.0.2.1"]
    finally:
        status, body = await admin(cfg, "PUT", f"{path}/nets",
                                   {"locations": nets["locations"]})
        assert status == 200, body
    assert addresses(await asyncio.to_thread(ask, cfg, "www", ecs=ecs)) == ["192.0.2.9"]
