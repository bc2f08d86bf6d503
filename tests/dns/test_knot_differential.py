"""lbcdn against a real Knot DNS (Debian packages knot, knot-dnsutils).

1. Knot as a secondary of lbcdn: knotd bootstraps the zone from lbcdn by AXFR and answers
   lbcdn's records; after a change lbcdn's NOTIFY makes it transfer again (new serial seen).
2. Differential: Knot as a primary loads the same zone file as lbcdn; the same questions go to
   both and rcode, flags (AA, TC, RA) and every section (order-insensitive) must match, apart
   from the differences documented in ACCEPTED below.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from lbcdn.dns.server import DnsServer
from lbcdn.dns.transfer import Notifier

HOST = "127.0.0.1"
KNOTD = shutil.which("knotd") or "/usr/sbin/knotd"


def free_port() -> int:
    # A port free for UDP and TCP alike (knotd binds both).
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((HOST, 0))
            port = int(u.getsockname()[1])
            with socket.socket() as t:
                try:
                    t.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


@contextlib.contextmanager
def knotd(tmp: Path, zones_conf: str, extra: str = "", port: int | None = None
          ) -> Iterator[int]:
    """Run knotd with its own rundir/storage under tmp, listening on `port` (default: a free
    one); yields the port."""
    for sub in ("run", "db", "zones"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = tmp / "knot.conf"
    conf.write_text(f"""
server:
    rundir: "{tmp}/run"
    listen: {HOST}@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
    # lbcdn serves class IN only (REFUSED otherwise); no version.bind/id.server in Knot
    version: ""
    identity: ""
log:
  - target: stderr
    any: info
database:
    storage: "{tmp}/db"
{extra}
template:
  - id: default
    storage: "{tmp}/zones"
zone:
{zones_conf}
""")
    log = open(tmp / "knot.log", "wb")
    proc = subprocess.Popen([KNOTD, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def knot_log(tmp: Path) -> str:
    try:
        return (tmp / "knot.log").read_text(errors="replace")[-3000:]
    except FileNotFoundError:
        return ""


async def ask(port: int, name: str, rdtype: str, timeout: float = 0.5,
              **kw: object) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    return await asyncio.to_thread(dns.query.udp, q, HOST, port=port, timeout=timeout)


async def wait_for(port: int, name: str, rdtype: str, check: object, tmp: Path,
                   timeout_s: float = 10.0) -> dns.message.Message:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            r = await ask(port, name, rdtype, timeout=0.3)
            if check(r):  # type: ignore[operator]
                return r
            last = r
        except (dns.exception.Timeout, OSError) as e:
            last = e
        await asyncio.sleep(0.05)
    raise AssertionError(f"knot never answered as expected: {last}\n{knot_log(tmp)}")


# --------------------------------------------------------------------------- Knot as secondary

@pytest.mark.slow
async def test_knot_secondary_transfers_from_lbcdn_and_follows_notify(tmp_path: Path) -> None:
    from lbcdn.dns.changes import Change
    from lbcdn.dns.config import RecordSetConfig

    zone_file = tmp_path / "example.com.zone"
    zone_file.write_text(ZONE_FILE)
    engine = engine_for(zone_file)
    knot_port = free_port()
    notifier = Notifier(engine, ["example.com"], [(HOST, knot_port)], timeout_s=0.2,
                        poll_interval_s=0.05)
    srv = DnsServer(engine, address=HOST, port=0, allow_transfer=["127.0.0.1/32"],
                    notifier=notifier)
    await srv.start()
    zones = """  - domain: example.com
    master: lbcdn
    acl: notify_from_lbcdn
"""
    extra = f"""remote:
  - id: lbcdn
    address: {HOST}@{srv.tcp_port}
acl:
  - id: notify_from_lbcdn
    address: {HOST}
    action: notify
"""
    try:
        with knotd(tmp_path / "knot", zones, extra, port=knot_port) as port:
            r = await wait_for(port, "www.example.com", "A", lambda r: bool(r.answer),
                               tmp_path / "knot")
            assert [rr.address for rr in r.answer[0]] == ["192.0.2.1"]
            assert r.flags & dns.flags.AA
            soa = await ask(port, "example.com", "SOA")
            assert soa.answer[0][0].serial == 2026112501
            assert srv.stats.transfers >= 1
            mx = await ask(port, "example.com", "MX")  # knot answers from the copy it made
            assert mx.answer[0][0].exchange.to_text() == "mail.example.com."

            engine.apply_changes("example.com", [Change("CREATE", RecordSetConfig(
                name="new", type="A", values=("192.0.2.99",)))])
            r = await wait_for(port, "new.example.com", "A", lambda r: bool(r.answer),
                               tmp_path / "knot", timeout_s=8)
            assert r.answer[0][0].address == "192.0.2.99"
            soa = await ask(port, "example.com", "SOA")
            assert soa.answer[0][0].serial > 2026112501
            assert notifier.acked >= 1
            assert "notify, incoming" in knot_log(tmp_path / "knot")
    finally:
        await srv.stop()


# --------------------------------------------------------------------------- differential

ZONE_FILE = """$ORIGIN example.com.
$TTL 300
@        3600 IN SOA ns1.example.com. hostmaster.example.com. 2026112501 7200 900 1209600 600
@        3600 IN NS   ns1
@        3600 IN NS   ns2.example.net.
ns1           IN A    192.0.2.53
@             IN A    192.0.2.10
@             IN MX   10 mail
@             IN CAA  0 issue "letsencrypt.org"
mail          IN A    192.0.2.25
mail          IN AAAA 2001:db8::25
www           IN A    192.0.2.1
www           IN AAAA 2001:db8::1
rr            IN A    192.0.2.11
rr            IN A    192.0.2.12
alias         IN CNAME www
chain1        IN CNAME chain2
chain2        IN CNAME www
ext           IN CNAME www.example.org.
dangling      IN CNAME nothere
*.wild        IN A    192.0.2.77
txt           IN TXT  "hello" "world"
_sip._tcp     IN SRV  10 60 5060 sip
sip           IN A    192.0.2.80
ptr           IN PTR  www
sub           IN NS   ns.sub
ns.sub        IN A    192.0.2.100
deep.a.b      IN A    192.0.2.5
""" + "".join(f'big IN TXT "{"x" * 60}{i}"\n' for i in range(30))

# (name, type, make_query options). Sections are compared as sets: a simple record set with
# several values rotates its order per answer in lbcdn (Route 53) but not in Knot.
QUESTIONS: list[tuple[str, str, dict[str, object]]] = [
    ("www.example.com", "A", {}),
    ("www.example.com", "AAAA", {}),
    ("WwW.ExAmPlE.cOm", "A", {}),                  # case kept in the question
    ("example.com", "SOA", {}),
    ("example.com", "NS", {}),                     # in-zone NS target address in additional
    ("example.com", "MX", {}),                     # MX target addresses in additional
    ("example.com", "CAA", {}),
    ("rr.example.com", "A", {}),                   # rotated per answer in lbcdn
    ("example.com", "A", {}),
    ("nothere.example.com", "A", {}),              # NXDOMAIN, SOA with the negative TTL
    ("www.example.com", "MX", {}),                 # NODATA
    ("www.example.com", "TYPE65534", {}),          # unknown type at an existing name: NODATA
    ("a.b.example.com", "A", {}),                  # empty non-terminal: NODATA
    ("alias.example.com", "A", {}),                # CNAME followed in the zone
    ("chain1.example.com", "AAAA", {}),            # two CNAMEs
    ("alias.example.com", "CNAME", {}),            # the CNAME itself
    ("ext.example.com", "A", {}),                  # CNAME out of the zone: stop there
    ("dangling.example.com", "A", {}),             # CNAME to a name that does not exist
    ("x.wild.example.com", "A", {}),               # wildcard
    ("y.x.wild.example.com", "A", {}),             # wildcard, deeper
    ("x.wild.example.com", "MX", {}),              # wildcard NODATA
    ("txt.example.com", "TXT", {}),
    ("_sip._tcp.example.com", "SRV", {}),
    ("ptr.example.com", "PTR", {}),
    ("sub.example.com", "NS", {}),                 # referral (no AA), glue
    ("host.sub.example.com", "A", {}),             # referral below the cut
    ("www.example.org", "A", {}),                  # outside every zone: REFUSED
    ("big.example.com", "TXT", {}),                # TC without EDNS (512)
    ("big.example.com", "TXT", {"use_edns": 0, "payload": 4096}),  # TC above 1232
    ("www.example.com", "A", {"use_edns": 0, "payload": 1232}),    # OPT echoed
    ("nothere.example.com", "A", {"use_edns": 0, "payload": 512}),
    ("example.com", "SOA", {"use_edns": 1}),       # BADVERS
    ("www.example.com", "A", {"flags": 0}),        # RD clear stays clear
    ("www.example.com", "A", {"flags": dns.flags.RD | dns.flags.CD}),
    ("www.example.com", "ANY", {}),                # RFC 8482: one RRset
    ("version.bind", "TXT", {"rdclass": "CH"}),    # not IN: REFUSED
    ("www.example.com", "A", {"rdclass": "ANY"}),  # QCLASS ANY: answered as IN
    ("nothere.example.com", "A", {"rdclass": "ANY", "use_edns": 0}),
    ("www.example.org", "A", {"rdclass": "ANY"}),  # outside every zone: REFUSED
    ("example.com", "SOA", {"opcode": "STATUS"}),  # NOTIMP
]

# Differences accepted: answer field -> why. Anything else that differs fails the test.
ACCEPTED: dict[str, str] = {
    # RFC 4035 3.1.6: a server MUST copy CD from the query into the response (BIND does);
    # Knot clears it when the zone is unsigned. The CD bit means nothing to an unsigned
    # authoritative answer either way, and resolvers do not check it.
    "CD": "lbcdn copies CD (RFC 4035 3.1.6), Knot clears it for unsigned zones",
}


def engine_for(zone_file: Path) -> Any:
    from lbcdn.dns.config import DnsConfig, ZoneConfig
    from lbcdn.dns.engine import Engine
    from lbcdn.dns.zone import build_zones

    class AllHealthy:
        def is_healthy(self, check_id: str) -> bool:
            return True

    cfg = DnsConfig(zones=(ZoneConfig(name="example.com", file=str(zone_file)),))
    return Engine(build_zones(cfg, now=time.time()), AllHealthy())


def section(rrsets: list[Any]) -> set[str]:
    """A section as a set of one-record lines with TTLs (order-insensitive)."""
    out: set[str] = set()
    for rrset in rrsets:
        for rd in rrset:
            out.add(f"{rrset.name.to_text().lower()} {rrset.ttl} "
                    f"{dns.rdataclass.to_text(rrset.rdclass)} "
                    f"{dns.rdatatype.to_text(rrset.rdtype)} {rd.to_text().lower()}")
    return out


def summary(r: dns.message.Message) -> dict[str, object]:
    flags = r.flags
    return {
        "rcode": dns.rcode.to_text(r.rcode()),
        "AA": bool(flags & dns.flags.AA), "TC": bool(flags & dns.flags.TC),
        "RA": bool(flags & dns.flags.RA), "RD": bool(flags & dns.flags.RD),
        "CD": bool(flags & dns.flags.CD),
        "question": [q.to_text() for q in r.question],  # case-sensitive: case must be kept
        "answer": section(r.answer), "authority": section(r.authority),
        "additional": section(r.additional),
        "edns": r.edns, "payload": r.payload if r.edns >= 0 else None,
    }


@pytest.mark.slow
async def test_same_answers_as_knot(tmp_path: Path) -> None:
    zone_file = tmp_path / "example.com.zone"
    zone_file.write_text(ZONE_FILE)
    srv = DnsServer(engine_for(zone_file), address=HOST, port=0)
    await srv.start()
    zones = f"""  - domain: example.com
    file: "{zone_file}"
"""
    try:
        with knotd(tmp_path, zones) as port:
            await wait_for(port, "example.com", "SOA", lambda r: bool(r.answer), tmp_path)
            mismatches: list[str] = []
            for name, rdtype, kw in QUESTIONS:
                for transport in ("udp", "tcp"):
                    got = {}
                    for who, p in (("knot", port), ("lbcdn", srv.udp_port)):
                        opts = {k: v for k, v in kw.items() if k != "opcode"}
                        q = dns.message.make_query(name, rdtype, **opts)  # type: ignore[arg-type]
                        q.id = 4242
                        if "opcode" in kw:
                            q.set_opcode(dns.opcode.from_text(str(kw["opcode"])))
                        fn = dns.query.udp if transport == "udp" else dns.query.tcp
                        r = await asyncio.to_thread(fn, q, HOST, port=p, timeout=2)
                        got[who] = summary(r)
                    diff = {k: (got["knot"][k], got["lbcdn"][k]) for k in got["knot"]
                            if got["knot"][k] != got["lbcdn"][k] and k not in ACCEPTED}
                    if diff:
                        mismatches.append(f"{name} {rdtype} {kw} {transport}: "
                                          f"(knot, lbcdn) {diff}")
            assert not mismatches, "\n".join(mismatches)
    finally:
        await srv.stop()
