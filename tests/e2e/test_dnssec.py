"""DNSSEC with real validators: lbcdn signs a zone online; Debian's unbound, trusting the DS
lbcdn reports (admin API, `lbcdn dns ds`), validates its answers (AD), and SERVFAILs when the
trust anchor is for another key; `delv` validates them too; an AXFR of the zone passes
`kzonecheck --dnssec on`; the keys survive a restart; a CSK rollover through the admin API,
or on a schedule across a restart, never makes a validating resolver with short TTLs SERVFAIL;
the SOA serial of a signed zone never goes back across a restart. In one process and with
`--workers 2` (DNS and the keys live in the control process)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.zone
import pytest

from tests.e2e.harness import HOST, DaemonProcess, admin_port, free_port, proxy_config

TOKEN = "s3cret"
ZONE = "example.com"
UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"
UNBOUND_CONTROL = shutil.which("unbound-control") or "/usr/sbin/unbound-control"
WORKERS = [pytest.param([], id="one-process"), pytest.param(["--workers", "2"], id="workers-2")]

pytestmark = pytest.mark.slow


def signed_config(tmp: Path, *, ttl_s: int = 300, dnskey_ttl_s: int = 3600,
                  algorithm: str = "ECDSAP256SHA256", soa: dict[str, Any] | None = None,
                  rollover: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = proxy_config(free_port(), admin={"token": TOKEN, "state_dir": str(tmp / "state")})
    cfg["dns"] = {
        "listeners": [{"address": HOST, "port": free_port()}],
        "allow_transfer": ["127.0.0.1"],
        "public_addresses": ["192.0.2.100"],   # ns1.<zone>: kzonecheck wants its glue
        "zones": [{"name": ZONE, "ttl_s": ttl_s,
                   "soa": {"minimum_s": ttl_s, "ttl_s": ttl_s, **(soa or {})},
                   "ns_ttl_s": ttl_s,
                   "dnssec": {"enabled": True, "dnskey_ttl_s": dnskey_ttl_s,
                              "algorithm": algorithm, "rollover": rollover},
                   "records": [
                       {"name": "www", "type": "A", "values": ["192.0.2.1", "192.0.2.2"]},
                       {"name": "alias", "type": "CNAME", "values": ["www"]},
                       {"name": "*.wild", "type": "TXT", "values": ["wild"]},
                       {"name": "mail", "type": "MX", "values": ["10 www"]},
                       {"name": "sub", "type": "NS", "values": ["ns.sub"]},
                       {"name": "ns.sub", "type": "A", "values": ["192.0.2.53"]}]}]}
    return cfg


def dns_port(cfg: dict[str, Any]) -> int:
    return int(cfg["dns"]["listeners"][0]["port"])


async def api(cfg: dict[str, Any], method: str, path: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
        async with s.request(method, f"http://{HOST}:{admin_port(cfg)}{path}", json=body) as r:
            assert r.status == 200, await r.text()
            return await r.json()


async def ds_lines(cfg: dict[str, Any]) -> list[str]:
    body = await api(cfg, "GET", f"/api/dns/zones/{ZONE}/dnssec")
    return [k["ds"] for k in body["keys"]]


class Unbound:
    """A validating unbound on loopback that trusts `anchors` for the zone and sends its
    queries for the zone to lbcdn."""

    def __init__(self, tmp: Path, lbcdn_port: int, anchors: list[str]) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.port = free_port()
        self.control_port = free_port()
        self.anchor_file = tmp / "anchors"
        self.anchor_file.write_text("".join(a + "\n" for a in anchors))
        conf = tmp / "unbound.conf"
        conf.write_text(f"""
server:
  interface: 127.0.0.1
  port: {self.port}
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{tmp}"
  pidfile: ""
  use-syslog: no
  logfile: "{tmp}/unbound.log"
  verbosity: 1
  val-log-level: 2
  do-ip6: no
  do-not-query-localhost: no
  access-control: 127.0.0.0/8 allow
  module-config: "validator iterator"
  trust-anchor-file: "{self.anchor_file}"
  cache-max-ttl: 2
  cache-max-negative-ttl: 2
  prefetch: no
remote-control:
  control-enable: yes
  control-interface: 127.0.0.1
  control-port: {self.control_port}
  control-use-cert: no
stub-zone:
  name: "{ZONE}"
  stub-addr: 127.0.0.1@{lbcdn_port}
""")
        self.conf = conf
        self.proc = subprocess.Popen([UNBOUND, "-d", "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 15
        while subprocess.run([UNBOUND_CONTROL, "-c", str(conf), "status"],
                             capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"unbound did not start: {self.log()[-2000:]}")
            time.sleep(0.1)

    def log(self) -> str:
        path = self.tmp / "unbound.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def set_anchors(self, anchors: list[str]) -> None:
        """A DS change at the parent, as this resolver learns it (its cache kept)."""
        self.anchor_file.write_text("".join(a + "\n" for a in anchors))
        out = subprocess.run([UNBOUND_CONTROL, "-c", str(self.conf), "reload_keep_cache"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def ask(self, name: str, rdtype: str) -> dns.message.Message:
        q = dns.message.make_query(f"{name}.", rdtype, want_dnssec=True)
        return await dns.asyncquery.udp(q, HOST, port=self.port, timeout=5)


@contextlib.contextmanager
def unbound(tmp: Path, lbcdn_port: int, anchors: list[str]) -> Iterator[Unbound]:
    u = Unbound(tmp, lbcdn_port, anchors)
    try:
        yield u
    finally:
        u.stop()


@contextlib.contextmanager
def daemon(cfg: dict[str, Any], tmp: Path, workers: list[str]) -> Iterator[DaemonProcess]:
    d = DaemonProcess(cfg, tmp, extra_args=workers)
    try:
        yield d
    finally:
        d.stop()


def validated(r: dns.message.Message) -> bool:
    return r.rcode() == dns.rcode.NOERROR and bool(r.flags & dns.flags.AD)


@pytest.mark.parametrize("workers", WORKERS)
async def test_validators_accept_signed_answers(tmp_path: Path, workers: list[str]) -> None:
    cfg = signed_config(tmp_path)
    port = dns_port(cfg)
    with daemon(cfg, tmp_path, workers):
        ds = await ds_lines(cfg)
        assert len(ds) == 1 and ds[0].startswith(f"{ZONE}. IN DS ")
        key_file = tmp_path / "state" / "dnssec" / f"{ZONE}.json"
        assert key_file.stat().st_mode & 0o777 == 0o600

        # The CLI reads the same key from admin.state_dir.
        cli = subprocess.run([sys.executable, "-m", "lbcdn", "dns", "ds", ZONE, "-c",
                              str(tmp_path / "lbcdn.yaml")], capture_output=True, text=True,
                             env={**os.environ})
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.splitlines()[0] == ds[0]

        with unbound(tmp_path / "unbound", port, ds) as u:
            for name, rdtype in [(f"www.{ZONE}", "A"), (f"alias.{ZONE}", "A"),
                                 (f"a.b.wild.{ZONE}", "TXT"), (f"mail.{ZONE}", "MX"),
                                 (f"nothing.{ZONE}", "A"),    # NXDOMAIN, compact denial
                                 (f"www.{ZONE}", "AAAA"),      # NODATA
                                 (ZONE, "DNSKEY")]:
                r = await u.ask(name, rdtype)
                assert validated(r), f"{name} {rdtype}: {r}\n{u.log()[-2000:]}"
            r = await u.ask(f"www.{ZONE}", "A")
            assert sorted(rd.address for rs in r.answer for rd in rs
                          if rs.rdtype == dns.rdatatype.A) == ["192.0.2.1", "192.0.2.2"]

        # A resolver trusting another key (the DS of a key lbcdn does not have) must fail.
        wrong = ds[0].rsplit(" ", 1)[0] + " " + "00" * 32
        with unbound(tmp_path / "unbound-wrong", port, [wrong]) as u:
            r = await u.ask(f"www.{ZONE}", "A")
            assert r.rcode() == dns.rcode.SERVFAIL, r

        # delv (BIND's validator) with the DNSKEY as its trust anchor, asking lbcdn directly.
        body = await api(cfg, "GET", f"/api/dns/zones/{ZONE}/dnssec")
        _, _, _, flags, proto, alg, key = body["keys"][0]["dnskey"].split(" ", 6)
        anchors = tmp_path / "delv.conf"
        anchors.write_text(f'trust-anchors {{ {ZONE}. static-key {flags} {proto} {alg} '
                           f'"{key}"; }};\n')
        for name in (f"www.{ZONE}", f"nothing.{ZONE}"):
            out = subprocess.run(["delv", "-a", str(anchors), f"+root={ZONE}", "-p", str(port),
                                  f"@{HOST}", name, "A"], capture_output=True, text=True,
                                 timeout=30)
            assert "fully validated" in out.stdout, out.stdout + out.stderr

        # AXFR gives a complete signed zone that kzonecheck validates.
        xfr = dns.query.xfr(HOST, f"{ZONE}.", port=port, lifetime=10, relativize=False)
        zone = dns.zone.from_xfr(xfr, relativize=False, check_origin=False)
        zone_file = tmp_path / "axfr.zone"
        zone.to_file(str(zone_file), relativize=False)
        check = subprocess.run(["kzonecheck", "--dnssec", "on", "-o", ZONE, str(zone_file)],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr

    # A restart signs with the same key.
    with daemon(cfg, tmp_path, workers):
        assert await ds_lines(cfg) == ds


async def test_ed25519_validates(tmp_path: Path) -> None:
    cfg = signed_config(tmp_path, algorithm="ED25519")
    with daemon(cfg, tmp_path, []):
        ds = await ds_lines(cfg)
        assert " 15 2 " in ds[0]
        with unbound(tmp_path / "unbound", dns_port(cfg), ds) as u:
            for name in (f"www.{ZONE}", f"nothing.{ZONE}"):
                r = await u.ask(name, "A")
                assert validated(r), f"{name}: {r}\n{u.log()[-2000:]}"


async def test_bad_input(tmp_path: Path) -> None:
    """DO with a tiny buffer: TC, not a broken answer; RRSIG and NSEC queries; DS at the
    apex (NODATA with its proof, from the child side)."""
    cfg = signed_config(tmp_path)
    port = dns_port(cfg)
    with daemon(cfg, tmp_path, []):
        q = dns.message.make_query(f"www.{ZONE}.", "A", want_dnssec=True, payload=512)
        big = dns.message.make_query(f"{ZONE}.", "DNSKEY", want_dnssec=True, payload=512)
        r = await dns.asyncquery.udp(q, HOST, port=port, timeout=3)
        assert r.flags & dns.flags.AA and any(rs.rdtype == dns.rdatatype.RRSIG
                                              for rs in r.answer)
        # Two A records, one ECDSA signature: fits 512. A DNSKEY set with its RRSIG at 512
        # fits too; a DO query with a buffer below 512 is treated as 512 (RFC 6891).
        r = await dns.asyncquery.udp(big, HOST, port=port, timeout=3)
        assert not r.flags & dns.flags.TC
        r = await dns.asyncquery.udp(
            dns.message.make_query(f"{ZONE}.", "DNSKEY", want_dnssec=True, payload=100),
            HOST, port=port, timeout=3)
        assert r.rcode() == dns.rcode.NOERROR
        r = await dns.asyncquery.udp(
            dns.message.make_query(f"www.{ZONE}.", "RRSIG", want_dnssec=True),
            HOST, port=port, timeout=3)
        assert [rs.rdtype for rs in r.answer] == [dns.rdatatype.RRSIG]
        r = await dns.asyncquery.udp(
            dns.message.make_query(f"www.{ZONE}.", "NSEC", want_dnssec=True),
            HOST, port=port, timeout=3)
        assert {rs.rdtype for rs in r.answer} == {dns.rdatatype.NSEC, dns.rdatatype.RRSIG}
        r = await dns.asyncquery.udp(
            dns.message.make_query(f"{ZONE}.", "DS", want_dnssec=True), HOST, port=port,
            timeout=3)
        assert r.rcode() == dns.rcode.NOERROR and not r.answer
        nsec = [rs for rs in r.authority if rs.rdtype == dns.rdatatype.NSEC]
        types = nsec[0][0].to_text().split()[1:]
        assert "DNSKEY" in types and "SOA" in types and "DS" not in types

        # Compact Answers OK (RFC 9824 5): the same compact denial, with rcode NXDOMAIN for a
        # name that does not exist and CO in the reply; NODATA stays NOERROR.
        for name, rdtype, co, rcode in [
                ("nothing", "A", True, dns.rcode.NXDOMAIN), ("nothing", "A", False, 0),
                ("www", "AAAA", True, 0)]:
            q = dns.message.make_query(f"{name}.{ZONE}.", rdtype, want_dnssec=True,
                                       ednsflags=dns.flags.DO | (0x4000 if co else 0))
            r = await dns.asyncquery.udp(q, HOST, port=port, timeout=3)
            assert (r.rcode(), bool(r.ednsflags & 0x4000)) == (rcode, co), r
            assert {rs.rdtype for rs in r.authority} >= {dns.rdatatype.NSEC,
                                                         dns.rdatatype.RRSIG}
            assert (" NXNAME" in r.to_text() or "TYPE128" in r.to_text()) == (name == "nothing")

        # NXNAME is only a type bitmap's: asking for it is a format error (RFC 9824 3.5)
        r = await dns.asyncquery.udp(dns.message.make_query(f"www.{ZONE}.", 128), HOST,
                                     port=port, timeout=3)
        assert r.rcode() == dns.rcode.FORMERR

        # The admin API: steps out of order, bad bodies, zones not served.
        base = f"http://{HOST}:{admin_port(cfg)}/api/dns/zones"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
            for body, status, says in [({"step": "finish"}, 409, "no rollover in progress"),
                                       ({"step": "sideways"}, 400, '"step"'),
                                       ([1], 400, '"step"')]:
                async with s.post(f"{base}/{ZONE}/dnssec/rollover", json=body) as r:
                    assert r.status == status and says in (await r.json())["error"]
            async with s.post(f"{base}/{ZONE}/dnssec/rollover", data=b"{") as r:
                assert r.status == 400
            async with s.get(f"{base}/nope.example/dnssec") as r:
                assert r.status == 404 and "not served" in (await r.json())["error"]


@pytest.mark.parametrize("workers", WORKERS)
async def test_rollover_without_servfail(tmp_path: Path, workers: list[str]) -> None:
    """CSK rollover by double signatures, with TTLs of 2 s: a resolver asking all along never
    gets SERVFAIL. The DS change at the parent is played by changing the resolver's anchors
    (cache kept) between the steps, as a registrar update would be seen."""
    ttl = 2
    cfg = signed_config(tmp_path, ttl_s=ttl, dnskey_ttl_s=ttl)
    port = dns_port(cfg)
    with daemon(cfg, tmp_path, workers):
        old = await ds_lines(cfg)
        with unbound(tmp_path / "unbound", port, old) as u:
            async def ask_for(seconds: float) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    for name in (f"www.{ZONE}", f"nothing.{ZONE}"):
                        r = await u.ask(name, "A")
                        assert validated(r), f"{name}: {r}\n{u.log()[-3000:]}"
                    await asyncio.sleep(0.2)

            await ask_for(2 * ttl)         # the old DNSKEY set is cached now
            both = await api(cfg, "POST", f"/api/dns/zones/{ZONE}/dnssec/rollover",
                             {"step": "start"})
            new = [k["ds"] for k in both["keys"] if k["ds"] not in old]
            assert len(both["keys"]) == 2 and len(new) == 1
            await ask_for(3 * ttl)         # double signatures; the DNSKEY set turns over
            u.set_anchors(old + new)       # the parent publishes both DS...
            await ask_for(2 * ttl)
            u.set_anchors(new)             # ...then only the new one
            await ask_for(2 * ttl)
            done = await api(cfg, "POST", f"/api/dns/zones/{ZONE}/dnssec/rollover",
                             {"step": "finish"})
            assert [k["ds"] for k in done["keys"]] == new
            await ask_for(3 * ttl)


@pytest.mark.parametrize("workers", WORKERS)
async def test_scheduled_rollover_across_a_restart_without_servfail(
        tmp_path: Path, workers: list[str]) -> None:
    """`dnssec.rollover` with a key lifetime of 14 s and TTLs of 2 s: the control process
    starts the rollover by itself, the daemon restarts in the middle of it and goes on with
    both keys, and drops the old one only after the largest TTL + the DS wait (2 + 28 s:
    room for a slow restart on a busy machine; the next rollover then starts at once).
    A validating resolver asking all along never gets SERVFAIL; the parent's DS change is
    played with its anchors, as in the admin API test."""
    ttl, lifetime, wait = 2, 14, 2 + 28
    cfg = signed_config(tmp_path, ttl_s=ttl, dnskey_ttl_s=ttl, rollover={
        "csk_lifetime_s": lifetime, "propagation_delay_s": 0, "ds_wait_s": 28})
    port = dns_port(cfg)
    d = DaemonProcess(cfg, tmp_path, extra_args=workers)
    try:
        first = await api(cfg, "GET", f"/api/dns/zones/{ZONE}/dnssec")
        old = [k["ds"] for k in first["keys"]]
        with unbound(tmp_path / "unbound", port, old) as u:
            async def ask_until(done: Callable[[list[dict[str, Any]]], bool],
                                timeout_s: float) -> list[dict[str, Any]]:
                end = time.monotonic() + timeout_s
                while True:
                    for name in (f"www.{ZONE}", f"nothing.{ZONE}"):
                        r = await u.ask(name, "A")
                        assert validated(r), f"{name}: {r}\n{u.log()[-3000:]}"
                    shown = (await api(cfg, "GET", f"/api/dns/zones/{ZONE}/dnssec"))["keys"]
                    if done(shown):
                        return list(shown)
                    assert time.monotonic() < end, shown
                    await asyncio.sleep(0.2)

            both = await ask_until(lambda keys: len(keys) == 2, lifetime + 20)
            assert both[1]["created"] >= first["keys"][0]["created"] + lifetime
            new = [both[1]["ds"]]
            assert f"put this DS at the parent within {wait} s" in d.stderr()
            u.set_anchors(old + new)       # the parent publishes both DS
            d.stop()
            d = DaemonProcess(cfg, tmp_path, extra_args=workers)
            assert await api(cfg, "GET", f"/api/dns/zones/{ZONE}/dnssec") == {
                "zone": f"{ZONE}.", "keys": both}    # the rollover goes on
            # the old key goes (and, its lifetime over, the next rollover may start)
            await ask_until(lambda keys: keys[0] == both[1], wait + 20)
            assert time.time() >= both[1]["created"] + wait
            u.set_anchors(new)             # the old DS may go now
            end = time.monotonic() + 2 * ttl
            while time.monotonic() < end:
                r = await u.ask(f"www.{ZONE}", "A")
                assert validated(r), f"{r}\n{u.log()[-3000:]}"
                await asyncio.sleep(0.2)
    finally:
        d.stop()


async def soa_serial(port: int) -> int:
    r = await dns.asyncquery.udp(dns.message.make_query(f"{ZONE}.", "SOA"), HOST, port=port,
                                 timeout=3)
    return int(r.answer[0][0].serial)


@pytest.mark.parametrize("workers", WORKERS)
async def test_signed_zone_serial_never_goes_back_across_restarts(
        tmp_path: Path, workers: list[str]) -> None:
    """A fixed `soa.serial`: the bumps of a signed zone (here a rollover step; a new signing
    day does the same) are kept with its keys, so a restart does not serve an older serial
    a secondary would ignore."""
    cfg = signed_config(tmp_path, soa={"serial": 2024010101})
    port = dns_port(cfg)
    with daemon(cfg, tmp_path, workers):
        assert await soa_serial(port) == 2024010101
        await api(cfg, "POST", f"/api/dns/zones/{ZONE}/dnssec/rollover", {"step": "start"})
        bumped = await soa_serial(port)
        assert bumped > 2024010101
    with daemon(cfg, tmp_path, workers):
        again = await soa_serial(port)
        assert again > bumped    # new signatures: secondaries transfer again
    with daemon(cfg, tmp_path, workers):
        assert await soa_serial(port) > again


async def test_knot_secondary_serves_the_signed_zone(tmp_path: Path) -> None:
    """Knot transfers the signed zone from lbcdn and serves it; unbound, trusting lbcdn's DS,
    validates Knot's answers (its NXDOMAIN proofs come from the NSEC chain of the transfer)."""
    from tests.dns.test_knot_differential import knotd, wait_for
    cfg = signed_config(tmp_path)
    with daemon(cfg, tmp_path, []):
        ds = await ds_lines(cfg)
        zones = f"  - domain: {ZONE}\n    master: lbcdn\n"
        extra = f"remote:\n  - id: lbcdn\n    address: {HOST}@{dns_port(cfg)}\n"
        with knotd(tmp_path / "knot", zones, extra) as knot_port:
            await wait_for(knot_port, f"www.{ZONE}", "A", lambda r: bool(r.answer),
                           tmp_path / "knot")
            with unbound(tmp_path / "unbound", knot_port, ds) as u:
                for name, rdtype in [(f"www.{ZONE}", "A"), (f"nothing.{ZONE}", "A"),
                                     (f"a.b.wild.{ZONE}", "TXT"), (ZONE, "DNSKEY")]:
                    r = await u.ask(name, rdtype)
                    ok = bool(r.flags & dns.flags.AD) and r.rcode() in (
                        dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
                    assert ok, f"{name} {rdtype}: {r}\n{u.log()[-2000:]}"
                r = await u.ask(f"nothing.{ZONE}", "A")
                assert r.rcode() == dns.rcode.NXDOMAIN   # Knot proves it with the chain


SIGNED_FILE = f"""$ORIGIN {ZONE}.
$TTL 300
@        3600 IN SOA ns1.{ZONE}. hostmaster.{ZONE}. 2026120701 7200 900 1209600 300
@        3600 IN NS   ns1
ns1           IN A    192.0.2.53
www           IN A    192.0.2.1
alias         IN CNAME www
*.wild        IN TXT  "wild"
deep.ent      IN A    192.0.2.5
sub           IN NS   ns.sub
ns.sub        IN A    192.0.2.54
"""

# (name, type, kind): what the answer is; `kind` says what may differ (see below)
DIFF_QUERIES = [
    (f"www.{ZONE}", "A", "positive"), (f"alias.{ZONE}", "A", "positive"),
    (ZONE, "DNSKEY", "positive"), (ZONE, "SOA", "positive"),
    (f"a.b.wild.{ZONE}", "TXT", "wildcard"),
    (f"www.{ZONE}", "AAAA", "nodata"), (ZONE, "DS", "nodata"), (f"ent.{ZONE}", "A", "nodata"),
    (f"nothing.{ZONE}", "A", "nxdomain"), (f"alias.{ZONE}", "MX", "nodata"),
    (f"host.sub.{ZONE}", "A", "referral"), (f"sub.{ZONE}", "DS", "nodata"),
]


def structure(r: dns.message.Message, section: list[Any]) -> set[tuple[str, str]]:
    """(owner, type) of each RRset, RRSIGs as RRSIG/<covered>: structure, not signatures."""
    return {(rs.name.to_text().lower(), dns.rdatatype.to_text(rs.rdtype) + (
        "/" + dns.rdatatype.to_text(rs.covers) if rs.rdtype == dns.rdatatype.RRSIG else ""))
            for rs in section}


async def test_same_structure_as_knot_automatic_signing(tmp_path: Path) -> None:
    """Knot signs the same zone file itself (a CSK, ECDSAP256SHA256); the same DO queries go
    to both. Answer sections (RRsets and which RRsets are signed) and AA must match. By design
    (docs/guides/dns.md#dnssec): lbcdn's denial is compact (RFC 9824: NOERROR and one NSEC at
    the query name) where Knot proves with its NSEC chain (NXDOMAIN, covering NSECs), so
    negative answers are compared by what they prove; a wildcard answer is signed for the
    query name by lbcdn, for the wildcard by Knot (which then adds an NSEC proof)."""
    from tests.dns.test_knot_differential import ask, knotd, wait_for
    (tmp_path / "zones").mkdir()
    zone_file = tmp_path / "zones" / f"{ZONE}.zone"
    zone_file.write_text(SIGNED_FILE)
    cfg = signed_config(tmp_path)
    cfg["dns"]["zones"] = [{"name": ZONE, "file": str(zone_file),
                            "ns": ["ns1"], "dnssec": {"enabled": True}}]
    policy = "policy:\n  - id: csk\n    algorithm: ecdsap256sha256\n    single-type-signing: on\n"
    zones = (f"  - domain: {ZONE}\n    file: \"{zone_file}\"\n    dnssec-signing: on\n"
             f"    dnssec-policy: csk\n    zonefile-sync: -1\n    journal-content: none\n")
    with daemon(cfg, tmp_path, []), knotd(tmp_path / "knot", zones, policy) as knot_port:
        await wait_for(knot_port, ZONE, "DNSKEY", lambda r: bool(r.answer), tmp_path / "knot",
                       timeout_s=15)
        for name, rdtype, kind in DIFF_QUERIES:
            k = await ask(knot_port, f"{name}.", rdtype, timeout=2, want_dnssec=True)
            ours = await ask(dns_port(cfg), f"{name}.", rdtype, timeout=2, want_dnssec=True)
            what = f"{name} {rdtype}:\nknot:\n{k}\nlbcdn:\n{ours}"
            assert bool(k.flags & dns.flags.AA) == bool(ours.flags & dns.flags.AA), what
            if kind == "wildcard":
                assert {t for _, t in structure(k, k.answer)} == \
                    {t for _, t in structure(ours, ours.answer)}, what
                continue
            assert structure(k, k.answer) == structure(ours, ours.answer), what
            if kind == "positive":
                assert ours.rcode() == k.rcode() == dns.rcode.NOERROR, what
            elif kind == "referral":
                # NS at the cut, unsigned, and an NSEC there showing no DS: the same in both
                assert structure(k, k.authority) == structure(ours, ours.authority), what
            elif kind == "nodata":
                assert ours.rcode() == k.rcode() == dns.rcode.NOERROR, what
                assert {(f"{ZONE}.", "SOA"), (f"{ZONE}.", "RRSIG/SOA")} <= \
                    structure(ours, ours.authority), what
                # the NSEC at the name lists the same types (Knot's comes from its chain;
                # an empty non-terminal has none in Knot's chain: a covering one proves it)
                ours_nsec = [rs for rs in ours.authority if rs.rdtype == dns.rdatatype.NSEC]
                k_nsec = [rs for rs in k.authority if rs.rdtype == dns.rdatatype.NSEC
                          and rs.name == ours_nsec[0].name]
                if k_nsec:   # Knot also publishes CDS/CDNSKEY (RFC 7344); lbcdn does not
                    knot_types = set(k_nsec[0][0].to_text().split()[1:]) - {"CDS", "CDNSKEY"}
                    assert set(ours_nsec[0][0].to_text().split()[1:]) == knot_types, what
            else:
                assert k.rcode() == dns.rcode.NXDOMAIN and ours.rcode() == dns.rcode.NOERROR
                types = [rs[0].to_text().split()[1:] for rs in ours.authority
                         if rs.rdtype == dns.rdatatype.NSEC]
                assert types == [["RRSIG", "NSEC", "NXNAME"]], what
                assert any(rs.rdtype == dns.rdatatype.NSEC for rs in k.authority), what


class _Tamper(asyncio.DatagramProtocol):
    """A UDP relay in front of lbcdn that changes the address in every A answer (keeping
    its signature): what an attacker on the path would send."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.ensure_future(self._relay(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _relay(self, data: bytes, addr: tuple[str, int]) -> None:
        r = await dns.asyncquery.udp(dns.message.from_wire(data), HOST, port=self.upstream,
                                     timeout=3, ignore_unexpected=True)
        for rrset in r.answer:
            if rrset.rdtype == dns.rdatatype.A:
                rrset.update(dns.rrset.from_text(rrset.name, rrset.ttl, "IN", "A",
                                                 "203.0.113.66"))
        assert self.transport is not None
        self.transport.sendto(r.to_wire(), addr)


async def test_tampered_or_expired_answers_servfail(tmp_path: Path) -> None:
    """The same resolver set-up as above, with lbcdn in process: answers changed on the way
    (signature kept) and answers whose signatures have expired (lbcdn's clock 30 days back)
    are bogus: SERVFAIL. The untampered, current answer validates (the control)."""
    from lbcdn.dns.config import load_dns_config
    from lbcdn.dns.dnssec import DAY
    from lbcdn.dns.engine import Engine
    from lbcdn.dns.keys import key_rows
    from lbcdn.dns.runtime import signers_from_config
    from lbcdn.dns.server import DnsServer
    from lbcdn.dns.zone import build_zones, zone_origin

    class AllHealthy:
        def is_healthy(self, check_id: str) -> bool:
            return True

    zone = signed_config(tmp_path)["dns"]["zones"][0]
    config = load_dns_config({"zones": [zone]})
    key_dir = str(tmp_path / "keys")

    async def server(clock_offset_s: float) -> DnsServer:
        engine = Engine(build_zones(config, now=time.time()), AllHealthy(),
                        clock=lambda: time.time() + clock_offset_s,
                        signers=signers_from_config(config, key_dir))
        srv = DnsServer(engine, address=HOST, port=free_port())
        await srv.start()
        return srv

    current, expired = await server(0), await server(-30 * DAY)
    signer = current.engine.signer(ZONE)  # type: ignore[attr-defined]
    ds = [str(k["ds"]) for k in key_rows(zone_origin(ZONE), signer.keys)]
    loop = asyncio.get_running_loop()
    relay_port = free_port()
    transport, relay = await loop.create_datagram_endpoint(
        lambda: _Tamper(current.udp_port), local_addr=(HOST, relay_port))
    try:
        for name, port, good in [("current", current.udp_port, True),
                                 ("expired", expired.udp_port, False),
                                 ("tampered", relay_port, False)]:
            with unbound(tmp_path / f"unbound-{name}", port, ds) as u:
                r = await u.ask(f"www.{ZONE}", "A")
                if good:
                    assert validated(r), f"{name}: {r}\n{u.log()[-2000:]}"
                else:
                    assert r.rcode() == dns.rcode.SERVFAIL, f"{name}: {r}"
                    assert "validation failure" in u.log() or "bogus" in u.log().lower(), \
                        u.log()[-2000:]
    finally:
        transport.close()
        await current.stop()
        await expired.stop()
