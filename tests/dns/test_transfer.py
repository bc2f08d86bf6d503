"""Zone transfer as a primary: AXFR/IXFR decisions (pure), AXFR over real TCP with dnspython,
NOTIFY out to a fake secondary on a real UDP socket (ack, retries, give up)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.xfr
import dns.zone
import pytest
from dnslib import QTYPE, RR, SOA, A, DNSRecord

from lbcdn.dns.server import DnsServer
from lbcdn.dns.transfer import (
    Notifier,
    client_allowed,
    current_soa,
    is_notify_ack,
    is_transfer_query,
    notify_message,
    notify_response,
    parse_networks,
    transfer_response,
)
from tests.dns.test_server import HOST, StandInEngine

ALLOW = parse_networks(["127.0.0.0/8", "2001:db8::/32"])


def axfr(name: str = "example.com", rdtype: str = "AXFR") -> bytes:
    return dns.message.make_query(name, rdtype).to_wire()


def parse(msgs: list[bytes]) -> list[dns.message.Message]:
    return [dns.message.from_wire(m, xfr=True, one_rr_per_rrset=True) for m in msgs]


def records(msgs: list[dns.message.Message]) -> list[tuple[str, str]]:
    return [(rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype))
            for m in msgs for rrset in m.answer]


def big_engine(n: int) -> StandInEngine:
    return StandInEngine([RR(f"h{i}.example.com.", QTYPE.A, ttl=60, rdata=A(f"10.0.{i // 256}.{i % 256}"))
                          for i in range(n)])


def test_networks_and_client_check() -> None:
    assert client_allowed("127.0.0.5", ALLOW)
    assert client_allowed("::ffff:127.0.0.1", ALLOW)
    assert client_allowed("2001:db8::1", ALLOW)
    assert not client_allowed("10.0.0.1", ALLOW)
    assert not client_allowed("not an ip", ALLOW)
    assert not client_allowed("127.0.0.1", ())
    with pytest.raises(ValueError, match="300.1.1.1"):
        parse_networks(["300.1.1.1/8"])


def test_is_transfer_query() -> None:
    assert is_transfer_query(axfr())
    assert is_transfer_query(axfr(rdtype="IXFR"))
    assert not is_transfer_query(axfr(rdtype="SOA"))
    assert not is_transfer_query(b"\x00" * 5)
    resp = bytearray(axfr())
    resp[2] |= 0x80
    assert not is_transfer_query(bytes(resp))


def test_axfr_soa_first_and_last_in_one_message() -> None:
    e = StandInEngine()
    q = dns.message.make_query("Example.COM", "AXFR")
    msgs = parse(transfer_response(q.to_wire(), "127.0.0.1", e, ALLOW))
    assert len(msgs) == 1
    m = msgs[0]
    assert m.id == q.id and m.rcode() == dns.rcode.NOERROR and m.flags & dns.flags.AA
    assert m.question[0].name.to_text() == "Example.COM."
    recs = records(msgs)
    assert recs[0] == ("example.com.", "SOA") and recs[-1] == ("example.com.", "SOA")
    assert len(recs) == len(e.records) + 1


def test_large_zone_is_split_into_messages_in_order() -> None:
    e = big_engine(3000)
    msgs = parse(transfer_response(axfr(), "127.0.0.1", e, ALLOW, max_message_bytes=16384))
    assert len(msgs) > 3
    assert all(len(m.to_wire()) <= 16384 for m in msgs)
    assert msgs[0].question and not any(m.question for m in msgs[1:])
    recs = records(msgs)
    assert recs[0][1] == "SOA" and recs[-1][1] == "SOA" and len(recs) == len(e.records) + 1
    assert [r[0] for r in recs[1:-1]] == [str(rr.rname) for rr in e.records[1:]]
    assert len({m.id for m in msgs}) == 1


@pytest.mark.parametrize("client,name,rcode", [
    ("10.9.9.9", "example.com", dns.rcode.REFUSED),
    ("127.0.0.1", "www.example.com", dns.rcode.NOTAUTH),
    ("127.0.0.1", "other.org", dns.rcode.NOTAUTH),
])
def test_refused_and_notauth(client: str, name: str, rcode: dns.rcode.Rcode) -> None:
    msgs = parse(transfer_response(axfr(name), client, StandInEngine(), ALLOW))
    assert len(msgs) == 1 and msgs[0].rcode() == rcode and not msgs[0].answer


def test_ixfr_current_serial_gets_one_soa_older_gets_the_zone() -> None:
    e = StandInEngine()

    def ixfr(serial: int) -> bytes:
        q = DNSRecord.question("example.com", "IXFR")
        q.add_auth(RR("example.com.", QTYPE.SOA, rdata=SOA("a.", "b.", (serial, 1, 1, 1, 1))))
        return bytes(q.pack())

    current = parse(transfer_response(ixfr(1), "127.0.0.1", e, ALLOW))
    assert records(current) == [("example.com.", "SOA")]
    e.bump_serial()
    full = parse(transfer_response(ixfr(1), "127.0.0.1", e, ALLOW))
    recs = records(full)
    assert recs[0][1] == "SOA" and recs[-1][1] == "SOA" and len(recs) > 2
    assert full[0].answer[0][0].serial == 2


def test_malformed_transfer_query_gets_formerr() -> None:
    bad = axfr()[:-3]
    msgs = transfer_response(bad, "127.0.0.1", StandInEngine(), ALLOW)
    assert len(msgs) == 1 and msgs[0][3] & 0x0F == dns.rcode.FORMERR
    assert transfer_response(b"\x00", "127.0.0.1", StandInEngine(), ALLOW) == []


def test_notify_in_and_messages() -> None:
    e = StandInEngine()
    wire = notify_message("example.com", None, 4242)
    m = dns.message.from_wire(wire)
    assert m.opcode() == dns.opcode.NOTIFY and m.flags & dns.flags.AA and m.id == 4242
    assert m.question[0].rdtype == dns.rdatatype.SOA
    reply = notify_response(wire, e)
    assert reply is not None and is_notify_ack(reply, 4242)
    assert dns.message.from_wire(reply).rcode() == dns.rcode.REFUSED
    assert notify_response(reply, e) is None  # a response is never answered
    assert not is_notify_ack(reply, 4243)
    soa = current_soa(e, "example.com")
    assert soa is not None and soa.rdata.times[0] == 1


# --------------------------------------------------------------------------- over TCP

@pytest.fixture
async def big_server() -> AsyncIterator[DnsServer]:
    srv = DnsServer(big_engine(2000), address=HOST, port=0, allow_transfer=["127.0.0.1/32"])
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def test_dnspython_transfers_the_zone_over_tcp(big_server: DnsServer) -> None:
    zone = await asyncio.to_thread(
        lambda: dns.zone.from_xfr(dns.query.xfr(HOST, "example.com", port=big_server.tcp_port,
                                                timeout=5, lifetime=10)))
    assert zone.get_rdataset("h1999", "A")[0].address == "10.0.7.207"
    assert zone.get_rdataset("@", "SOA")[0].serial == 1
    assert big_server.stats.transfers == 1
    # the connection served the transfer and normal queries alike
    r = await asyncio.to_thread(dns.query.tcp, dns.message.make_query("h5.example.com", "A"),
                                HOST, port=big_server.tcp_port, timeout=2)
    assert r.answer[0][0].address == "10.0.0.5"


async def test_axfr_refused_from_outside_the_allow_list() -> None:
    srv = DnsServer(StandInEngine(), address=HOST, port=0, allow_transfer=["192.0.2.0/24"])
    await srv.start()
    try:
        r = await asyncio.to_thread(dns.query.tcp, dns.message.make_query("example.com", "AXFR"),
                                    HOST, port=srv.tcp_port, timeout=2)
        assert r.rcode() == dns.rcode.REFUSED
        assert srv.stats.transfers_refused == 1
    finally:
        await srv.stop()


# --------------------------------------------------------------------------- NOTIFY out

class FakeSecondary(asyncio.DatagramProtocol):
    """Answers NOTIFY after ignoring the first `ignore` copies."""

    def __init__(self, ignore: int) -> None:
        self.ignore = ignore
        self.seen: list[dns.message.Message] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        m = dns.message.from_wire(data)
        self.seen.append(m)
        if len(self.seen) > self.ignore:
            reply = dns.message.make_response(m)
            assert self.transport is not None
            self.transport.sendto(reply.to_wire(), addr)


async def secondary(ignore: int = 0) -> tuple[asyncio.DatagramTransport, FakeSecondary, int]:
    loop = asyncio.get_running_loop()
    t, p = await loop.create_datagram_endpoint(lambda: FakeSecondary(ignore),
                                               local_addr=(HOST, 0))
    return t, p, t.get_extra_info("sockname")[1]


async def test_notify_sent_on_serial_change_and_retried_until_acked() -> None:
    e = StandInEngine()
    t, sec, port = await secondary(ignore=2)
    n = Notifier(e, ["example.com"], [(HOST, port)], timeout_s=0.05, retries=5,
                 poll_interval_s=0.02)
    await n.start()
    try:
        await asyncio.sleep(0.1)
        assert sec.seen == []  # no change, no NOTIFY
        e.add(RR("x.example.com.", QTYPE.A, rdata=A("192.0.2.7")))  # version moves, serial not
        await asyncio.sleep(0.1)
        assert sec.seen == []
        e.bump_serial()
        for _ in range(100):
            if n.acked:
                break
            await asyncio.sleep(0.02)
        assert n.acked == 1 and n.sent == 3 and len(sec.seen) == 3
        m = sec.seen[0]
        assert m.opcode() == dns.opcode.NOTIFY and m.question[0].name.to_text() == "example.com."
        assert m.answer[0][0].serial == 2
    finally:
        await n.stop()
        t.close()


async def test_notify_gives_up_after_its_retries() -> None:
    e = StandInEngine()
    t, sec, port = await secondary(ignore=1000)
    n = Notifier(e, ["example.com"], [(HOST, port)], timeout_s=0.02, retries=3)
    try:
        ok = await asyncio.wait_for(n.notify_one("example.com", None, HOST, port), 2)
        assert not ok and n.failed == 1 and len(sec.seen) == 3
    finally:
        t.close()


async def test_notify_to_a_closed_port_does_not_crash() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    n = Notifier(StandInEngine(), ["example.com"], [(HOST, port)], timeout_s=0.02, retries=2)
    assert not await asyncio.wait_for(n.notify_one("example.com", None, HOST, port), 2)


async def test_server_starts_and_stops_its_notifier() -> None:
    e = StandInEngine()
    t, sec, port = await secondary()
    n = Notifier(e, ["example.com"], [(HOST, port)], timeout_s=0.05, poll_interval_s=0.02)
    srv = DnsServer(e, address=HOST, port=0, notifier=n)
    await srv.start()
    try:
        e.bump_serial()
        for _ in range(100):
            if n.acked:
                break
            await asyncio.sleep(0.02)
        assert n.acked == 1
    finally:
        await srv.stop()
        t.close()
    assert n._watch is None


class SigningSecondary(FakeSecondary):
    """Checks the NOTIFY's TSIG with `keyring` and answers signed (or, `sign` False, not)."""

    def __init__(self, keyring: Any, sign: bool) -> None:
        super().__init__(0)
        self.keyring = keyring
        self.sign = sign

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        m = dns.message.from_wire(data, keyring=self.keyring)  # raises unless well signed
        self.seen.append(m)
        reply = dns.message.make_response(m)   # signed with the request's key over its MAC
        if not self.sign:
            reply.tsig = None
        assert self.transport is not None
        self.transport.sendto(reply.to_wire(), addr)


@pytest.mark.parametrize("signed_ack", [True, False])
async def test_signed_notify_counts_only_a_signed_answer(signed_ack: bool,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    import base64

    import dns.tsigkeyring

    from lbcdn.dns.tsig import Key
    secret = bytes(range(32))
    keyring = dns.tsigkeyring.from_text({"n-key.": base64.b64encode(secret).decode()})
    loop = asyncio.get_running_loop()
    t, sec = await loop.create_datagram_endpoint(lambda: SigningSecondary(keyring, signed_ack),
                                                 local_addr=(HOST, 0))
    port = t.get_extra_info("sockname")[1]
    key = Key((b"n-key",), "hmac-sha256", secret)
    n = Notifier(StandInEngine(), ["example.com"], [(HOST, port)], timeout_s=0.02, retries=3,
                 keys={(HOST, port): key})
    try:
        ok = await asyncio.wait_for(n.notify_one("example.com", None, HOST, port), 2)
        assert sec.seen and all(m.had_tsig for m in sec.seen)
        assert ok is signed_ack
        if not signed_ack:
            assert len(sec.seen) == 3 and n.failed == 1
            assert "3 answers without a valid TSIG by n-key" in caplog.text
    finally:
        t.close()
