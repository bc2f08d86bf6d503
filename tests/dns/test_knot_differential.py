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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from dnslib import QTYPE, RR, A

from lbcdn.dns.server import DnsServer
from lbcdn.dns.transfer import Notifier
from tests.dns.test_server import StandInEngine

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
        (tmp / sub).mkdir(exist_ok=True)
    port = port or free_port()
    conf = tmp / "knot.conf"
    conf.write_text(f"""
server:
    rundir: "{tmp}/run"
    listen: {HOST}@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
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

@pytest.fixture
async def primary() -> AsyncIterator[tuple[StandInEngine, DnsServer, Notifier, int]]:
    engine = StandInEngine()
    knot_port = free_port()
    notifier = Notifier(engine, ["example.com"], [(HOST, knot_port)], timeout_s=0.2,
                        poll_interval_s=0.05)
    srv = DnsServer(engine, address=HOST, port=0, allow_transfer=["127.0.0.1/32"],
                    notifier=notifier)
    await srv.start()
    try:
        yield engine, srv, notifier, knot_port
    finally:
        await srv.stop()


@pytest.mark.slow
async def test_knot_secondary_transfers_from_lbcdn_and_follows_notify(
        primary: tuple[StandInEngine, DnsServer, Notifier, int], tmp_path: Path) -> None:
    engine, srv, notifier, knot_port = primary
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
    with knotd(tmp_path, zones, extra, port=knot_port) as port:
        r = await wait_for(port, "www.example.com", "A", lambda r: bool(r.answer), tmp_path)
        assert sorted(rr.address for rr in r.answer[0]) == ["192.0.2.1", "192.0.2.2"]
        assert r.flags & dns.flags.AA
        soa = await ask(port, "example.com", "SOA")
        assert soa.answer[0][0].serial == 1
        assert srv.stats.transfers >= 1

        engine.add(RR("new.example.com.", QTYPE.A, ttl=60, rdata=A("192.0.2.99")))
        engine.bump_serial()
        r = await wait_for(port, "new.example.com", "A", lambda r: bool(r.answer), tmp_path,
                           timeout_s=8)
        assert r.answer[0][0].address == "192.0.2.99"
        soa = await ask(port, "example.com", "SOA")
        assert soa.answer[0][0].serial == 2
        assert notifier.acked >= 1
        assert "notify, incoming" in knot_log(tmp_path)
