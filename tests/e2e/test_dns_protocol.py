"""The daemon's DNS over real sockets, for the protocol corners of issue 18: an OPT in every
reply to a query that carried one (RFC 6891), QCLASS ANY (RFC 1035 3.2.5), Extended DNS
Errors (RFC 8914), NSID (RFC 5001) and TSIG (RFC 8945) for transfers, NOTIFY and queries,
in one process and with `--workers 2` (where DNS runs in the control process).

The TSIG keys come from the environment (`${...}`) and from a file, as secrets do elsewhere in
the config; dnspython is the client and checks every signature it is sent."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.xfr
import pytest

from lbcdn.dns.names import parse_name
from lbcdn.dns.tsig import Key, sign
from tests.dns.test_knot_differential import free_port as dns_port
from tests.e2e.harness import HOST, DaemonProcess, proxy_config

WORKERS = [pytest.param([], id="one-process"), pytest.param(["--workers", "2"], id="workers-2")]
XFR_SECRET = base64.b64encode(bytes(range(32))).decode()
NOTIFY_SECRET = base64.b64encode(bytes(range(64, 128))).decode()
ZONE = "example.test."
BIG_RECORDS = 150   # 150 TXT records of 200 bytes: an AXFR of several messages


@dataclass
class Served:
    daemon: DaemonProcess
    port: int


def config(tmp: Path) -> dict[str, Any]:
    (tmp / "notify.key").write_text(NOTIFY_SECRET + "\n")
    cfg = proxy_config(9)  # the pool is never used: DNS is what is tested
    cfg["dns"] = {
        "listeners": [{"address": HOST, "port": dns_port()}],
        "nsid": "lbcdn-test",
        "allow_transfer": ["127.0.0.0/8"],
        "tsig_keys": [
            {"name": "xfr-key", "secret": "${H18A_XFR_SECRET}"},
            {"name": "notify-key", "algorithm": "hmac-sha512", "secret_file": "notify.key"}],
        # 127.0.0.1 must sign; the rest of 127/8 may transfer unsigned (allow_transfer)
        "secondaries": [{"address": "127.0.0.1", "tsig_key": "xfr-key"}],
        "zones": [{"name": "example.test", "records": [
            {"name": "www", "type": "A", "values": ["192.0.2.1"]},
            # 460 bytes unsigned without EDNS: fits 512, but not with a TSIG of ~80 bytes
            {"name": "pair", "type": "TXT", "values": [f'"{c * 199}"' for c in "ab"]},
            *({"name": f"t{i}", "type": "TXT", "values": [f'"{"x" * 200}"']}
              for i in range(BIG_RECORDS))]}]}
    return cfg


def ask(port: int, q: dns.message.Message, tcp: bool = False, **kw: Any) -> dns.message.Message:
    fn = dns.query.tcp if tcp else dns.query.udp
    return fn(q, HOST, port=port, timeout=3, **kw)


def raw(port: int, wire: bytes) -> bytes:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(wire, (HOST, port))
        return s.recv(65535)


@pytest.fixture(scope="module", params=WORKERS)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("dnsproto")
    cfg = config(tmp)
    daemon = DaemonProcess(cfg, tmp, request.param, env={"H18A_XFR_SECRET": XFR_SECRET})
    port = cfg["dns"]["listeners"][0]["port"]
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                ask(port, dns.message.make_query("www." + ZONE, "A"))
                break
            except (dns.exception.Timeout, OSError):
                assert time.monotonic() < deadline, daemon.stderr()[-2000:]
                time.sleep(0.1)
        yield Served(daemon, port)
    finally:
        daemon.stop()


def xfr_keyring() -> dict[dns.name.Name, dns.tsig.Key]:
    return dns.tsigkeyring.from_text({"xfr-key.": ("hmac-sha256", XFR_SECRET)})


def options(r: dns.message.Message, code: int) -> list[dns.edns.Option]:
    return [o for o in r.options if o.otype == code]


def ede(r: dns.message.Message) -> list[int]:
    return [o.code for o in options(r, dns.edns.EDE)]  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- OPT in every reply

@pytest.mark.slow
async def test_notify_reply_carries_opt_and_ede(served: Served) -> None:
    q = dns.message.make_query(ZONE, "SOA", use_edns=0)
    q.set_opcode(dns.opcode.NOTIFY)
    q.flags |= dns.flags.AA
    for tcp in (False, True):
        r = await asyncio.to_thread(ask, served.port, q, tcp)
        assert r.opcode() == dns.opcode.NOTIFY
        assert r.rcode() == dns.rcode.REFUSED
        assert r.edns == 0, "no OPT in the NOTIFY reply"
        assert ede(r) == [18]  # Prohibited


@pytest.mark.slow
async def test_formerr_replies_carry_opt(served: Served) -> None:
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    no_question = b"\x12\x34\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01" + opt
    r = dns.message.from_wire(await asyncio.to_thread(raw, served.port, no_question))
    assert (r.id, r.rcode(), r.edns) == (0x1234, dns.rcode.FORMERR, 0)

    q = dns.message.make_query("www." + ZONE, "A", use_edns=0)
    q.id = 0x4321
    wire = q.to_wire()
    assert wire[-11:-8] == b"\x00\x00\x29"  # the OPT is last, owned by the root
    # the same OPT owned by "www.example.test" (a pointer to the question name)
    bad_owner = wire[:-11] + b"\xc0\x0c" + wire[-10:]
    r = dns.message.from_wire(await asyncio.to_thread(raw, served.port, bad_owner))
    assert (r.id, r.rcode(), r.edns) == (0x4321, dns.rcode.FORMERR, 0)


# ---------------------------------------------------------------------- QCLASS ANY

@pytest.mark.slow
async def test_qclass_any_is_answered_as_in(served: Served) -> None:
    q = dns.message.make_query("www." + ZONE, "A", rdclass=dns.rdataclass.ANY)
    r = await asyncio.to_thread(ask, served.port, q)
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA
    assert r.question[0].rdclass == dns.rdataclass.ANY
    assert [(s.rdclass, [rd.address for rd in s]) for s in r.answer] == \
        [(dns.rdataclass.IN, ["192.0.2.1"])]
    q = dns.message.make_query("www.example.org.", "A", rdclass=dns.rdataclass.ANY)
    assert (await asyncio.to_thread(ask, served.port, q)).rcode() == dns.rcode.REFUSED


# ---------------------------------------------------------------------- EDE and NSID

@pytest.mark.slow
async def test_refused_carries_ede_not_authoritative(served: Served) -> None:
    for name, rdclass in (("www.example.org.", "IN"), ("version.bind.", "CH")):
        q = dns.message.make_query(name, "TXT", rdclass=rdclass, use_edns=0)
        r = await asyncio.to_thread(ask, served.port, q)
        assert (r.rcode(), ede(r)) == (dns.rcode.REFUSED, [20])


@pytest.mark.slow
async def test_nsid_when_asked(served: Served) -> None:
    asked = dns.message.make_query("www." + ZONE, "A", use_edns=0,
                                   options=[dns.edns.GenericOption(dns.edns.NSID, b"")])
    for _ in range(2):  # the second comes from the prepared answers
        r = await asyncio.to_thread(ask, served.port, asked)
        assert [o.to_wire() for o in options(r, dns.edns.NSID)] == [b"lbcdn-test"]
        assert r.answer
    plain = dns.message.make_query("www." + ZONE, "A", use_edns=0)
    assert options(await asyncio.to_thread(ask, served.port, plain), dns.edns.NSID) == []


# ---------------------------------------------------------------------- TSIG

def axfr(port: int, keyring: Any = None, keyname: str | None = None,
         algorithm: str = "hmac-sha256") -> list[dns.message.Message]:
    # dnspython's inbound reader checks every message's TSIG (the chain of RFC 8945 5.3.1)
    return list(dns.query.xfr(HOST, ZONE, port=port, timeout=5, lifetime=10, keyring=keyring,
                              keyname=keyname, keyalgorithm=algorithm))


@pytest.mark.slow
async def test_signed_axfr_from_its_secondary(served: Served) -> None:
    messages = await asyncio.to_thread(axfr, served.port, xfr_keyring(), "xfr-key.")
    assert len(messages) > 1
    assert all(m.had_tsig for m in messages)
    names = {rrset.name.to_text() for m in messages for rrset in m.answer}  # relative
    assert {"www", f"t{BIG_RECORDS - 1}"} <= names


@pytest.mark.slow
async def test_unsigned_axfr_from_a_secondary_that_must_sign_is_refused_and_logged(
        served: Served) -> None:
    q = dns.message.make_query(ZONE, "AXFR", use_edns=0)
    r = await asyncio.to_thread(ask, served.port, q, True)
    assert (r.rcode(), ede(r)) == (dns.rcode.REFUSED, [18])
    assert "AXFR of example.test. from 127.0.0.1 refused: not signed with its key (xfr-key)" \
        in served.daemon.stderr()
    # another address in allow_transfer needs no key
    r = await asyncio.to_thread(
        lambda: dns.query.tcp(dns.message.make_query(ZONE, "AXFR"), HOST, port=served.port,
                              timeout=3, source="127.0.0.2"))
    assert r.rcode() == dns.rcode.NOERROR and r.answer


@pytest.mark.slow
async def test_wrong_key_or_signature_is_answered_with_the_tsig_error_and_logged(
        served: Served) -> None:
    unknown = dns.tsigkeyring.from_text({"other-key.": XFR_SECRET})
    with pytest.raises(dns.tsig.PeerBadKey):
        await asyncio.to_thread(axfr, served.port, unknown, "other-key.")
    wrong = dns.tsigkeyring.from_text({"xfr-key.": base64.b64encode(b"w" * 32).decode()})
    with pytest.raises(dns.tsig.PeerBadSignature):
        await asyncio.to_thread(axfr, served.port, wrong, "xfr-key.")
    log = served.daemon.stderr()
    assert "transfer from 127.0.0.1 refused: TSIG BADKEY (key other-key)" in log
    assert "transfer from 127.0.0.1 refused: TSIG BADSIG (key xfr-key)" in log


@pytest.mark.slow
async def test_stale_signature_gets_a_signed_badtime(served: Served) -> None:
    key = Key(parse_name("xfr-key."), "hmac-sha256", base64.b64decode(XFR_SECRET))
    q = dns.message.make_query("www." + ZONE, "A")
    wire, mac = sign(q.to_wire(), key, time.time() - 3600)
    reply = await asyncio.to_thread(raw, served.port, wire)
    with pytest.raises(dns.tsig.PeerBadTime):  # raised once the reply's MAC checked out
        dns.message.from_wire(reply, keyring=xfr_keyring(), request_mac=mac)


@pytest.mark.slow
async def test_signed_answer_that_does_not_fit_with_its_tsig_is_truncated_and_signed(
        served: Served) -> None:
    q = dns.message.make_query("pair." + ZONE, "TXT")      # no EDNS: 512 bytes
    unsigned = await asyncio.to_thread(raw, served.port, q.to_wire())
    assert len(unsigned) <= 512 and not dns.message.from_wire(unsigned).flags & dns.flags.TC
    q.use_tsig(xfr_keyring(), "xfr-key.", algorithm="hmac-sha256")
    wire = await asyncio.to_thread(raw, served.port, q.to_wire())
    assert len(wire) <= 512
    # signed over the request's MAC (dnspython checks it), TC with the answer left out
    r = dns.message.from_wire(wire, keyring=xfr_keyring(), request_mac=q.mac)
    assert r.had_tsig and r.flags & dns.flags.TC and not r.answer
    r = await asyncio.to_thread(ask, served.port, q, True)    # and complete over TCP
    assert r.had_tsig and len(r.answer[0]) == 2


@pytest.mark.slow
async def test_signed_query_and_notify_get_signed_replies(served: Served) -> None:
    q = dns.message.make_query(ZONE, "SOA")
    q.use_tsig(xfr_keyring(), "xfr-key.", algorithm="hmac-sha256")
    r = await asyncio.to_thread(ask, served.port, q)   # dnspython checks the reply's MAC
    assert r.had_tsig and r.rcode() == dns.rcode.NOERROR and r.answer

    n = dns.message.make_query(ZONE, "SOA", use_edns=0)
    n.set_opcode(dns.opcode.NOTIFY)
    n.use_tsig(dns.tsigkeyring.from_text({"notify-key.": ("hmac-sha512", NOTIFY_SECRET)}),
               "notify-key.", algorithm="hmac-sha512")
    r = await asyncio.to_thread(ask, served.port, n)
    assert r.had_tsig and r.rcode() == dns.rcode.REFUSED and r.edns == 0
