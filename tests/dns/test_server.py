"""DnsServer over real UDP and TCP sockets on 127.0.0.1, with dnspython as the client.

These tests are about the network half: framing, silence, truncation then TCP, pipelining,
idle timeout, surviving bad input and engine failures, NOTIFY in, RRL on the wire. The engine
is a small dnslib stand-in (`StandInEngine`) so that every answer here is known exactly and
faults can be injected; the real engine over the wire is tested against Knot DNS in
test_knot_differential.py.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import (
    NS,
    QTYPE,
    RCODE,
    RR,
    SOA,
    TXT,
    A,
    DNSError,
    DNSHeader,
    DNSRecord,
)

from lbcdn.dns.fastpath import Prepared
from lbcdn.dns.rrl import RateLimiter
from lbcdn.dns.server import DnsServer
from lbcdn.dns.udpbatch import PlainBatch, datagram_batch

# Tests of UDP behaviour run on both kinds of UDP I/O (recvmmsg batches on Linux, and the
# recvfrom fallback) through this indirect parametrization of the `server` fixture.
BOTH_UDP_IO = pytest.mark.parametrize("server", [datagram_batch, PlainBatch], indirect=True,
                                      ids=["platform-io", "plain-io"])

HOST = "127.0.0.1"
ZONE = "example.com."


class StandInEngine:
    """A tiny authoritative engine on dnslib with the Engine interface: one zone, A/TXT/NS/SOA,
    NXDOMAIN/NODATA with SOA, REFUSED outside, NOTIMP for other opcodes, TC over the UDP cap.
    `fail_on` names a qname whose queries raise (to test that failures stay contained)."""

    def __init__(self, records: list[RR] | None = None) -> None:
        soa = RR(ZONE, QTYPE.SOA, ttl=3600,
                 rdata=SOA("ns1.example.com.", "hostmaster.example.com.",
                           (1, 3600, 600, 86400, 300)))
        base = [
            soa,
            RR(ZONE, QTYPE.NS, ttl=3600, rdata=NS("ns1.example.com.")),
            RR("ns1.example.com.", QTYPE.A, ttl=3600, rdata=A("192.0.2.53")),
            RR("www.example.com.", QTYPE.A, ttl=300, rdata=A("192.0.2.1")),
            RR("www.example.com.", QTYPE.A, ttl=300, rdata=A("192.0.2.2")),
        ]
        base += [RR("big.example.com.", QTYPE.TXT, ttl=60, rdata=TXT("x" * 200 + str(i)))
                 for i in range(12)]
        self.records = base + (records or [])
        self._version = 1
        self.fail_on: str | None = None
        self.answered = 0

    @property
    def version(self) -> int:
        return self._version

    def bump_serial(self) -> None:
        soa = self.records[0]
        assert isinstance(soa.rdata, SOA)
        t = list(soa.rdata.times)
        t[0] += 1
        self.records[0] = RR(ZONE, QTYPE.SOA, ttl=3600,
                             rdata=SOA(soa.rdata.mname, soa.rdata.rname, tuple(t)))
        self._version += 1

    def add(self, rr: RR) -> None:
        self.records.append(rr)
        self._version += 1

    def zone_for(self, name: str) -> object | None:
        n = name.lower().rstrip(".") + "."
        return self if n == ZONE or n.endswith("." + ZONE) else None

    def axfr_records(self, zone_name: str) -> list[RR]:
        if zone_name.lower().rstrip(".") + "." != ZONE:
            raise KeyError(zone_name)
        return [*self.records, self.records[0]]

    def cacheable_key(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        try:
            q = DNSRecord.parse(query)
        except (DNSError, Exception):
            return None
        if q.header.qr or not q.questions or self.fail_on:
            return None
        edns = b"E" if q.ar else b"-"
        return (str(q.q.qname).lower().encode() + struct.pack("!HH", q.q.qtype, q.q.qclass)
                + bytes([query[2] & 0x79]) + edns)

    def prepare(self, query: bytes, *, tcp: bool, max_udp: int = 512,
                client: str = "") -> Prepared | None:
        out = self.answer(query, tcp=tcp, max_udp=max_udp)
        return None if out is None else Prepared((out,), replay=True)

    def answer(self, query: bytes, *, tcp: bool, max_udp: int = 512,
               client: str = "") -> bytes | None:
        self.answered += 1
        if len(query) < 12 or query[2] & 0x80:
            return None
        try:
            q = DNSRecord.parse(query)
        except Exception:
            hdr = DNSHeader(id=int.from_bytes(query[:2], "big"), qr=1, rcode=RCODE.FORMERR)
            return bytes(DNSRecord(hdr).pack())
        if self.fail_on and str(q.q.qname).lower().startswith(self.fail_on):
            raise RuntimeError("engine failure on purpose")
        reply = q.reply()
        reply.header.ra = 0
        if q.header.opcode != 0:
            reply.header.rcode = RCODE.NOTIMP
            return bytes(reply.pack())
        name = str(q.q.qname).lower()
        if self.zone_for(name) is None:
            reply.header.rcode = RCODE.REFUSED
            return bytes(reply.pack())
        reply.header.aa = 1
        at_name = [rr for rr in self.records if str(rr.rname).lower() == name]
        match = [rr for rr in at_name if rr.rtype == q.q.qtype]
        for rr in match:
            reply.add_answer(RR(q.q.qname, rr.rtype, ttl=rr.ttl, rdata=rr.rdata))
        if not match:
            if not at_name:
                reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(self.records[0])
        wire = bytes(reply.pack())
        limit = max_udp if q.ar else 512
        if not tcp and len(wire) > min(limit, max_udp):
            short = q.reply()
            short.header.aa, short.header.tc, short.header.ra = 1, 1, 0
            wire = bytes(short.pack())
        return wire


# --------------------------------------------------------------------------- fixtures

@pytest.fixture
def engine() -> StandInEngine:
    return StandInEngine()


@pytest.fixture
async def server(engine: StandInEngine, request: pytest.FixtureRequest) -> AsyncIterator[DnsServer]:
    """A server on the platform's UDP I/O, or (indirect parametrization) on the one given."""
    srv = DnsServer(engine, address=HOST, port=0, tcp_idle_timeout_s=0.5,
                    allow_transfer=["127.0.0.0/8"],
                    udp_io=getattr(request, "param", datagram_batch))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def udp(server: DnsServer, msg: dns.message.Message, timeout: float = 2.0) -> Any:
    return await asyncio.to_thread(dns.query.udp, msg, HOST, port=server.udp_port,
                                   timeout=timeout)


async def tcp(server: DnsServer, msg: dns.message.Message, timeout: float = 2.0) -> Any:
    return await asyncio.to_thread(dns.query.tcp, msg, HOST, port=server.tcp_port,
                                   timeout=timeout)


def raw_udp_exchange(port: int, payload: bytes, timeout: float = 0.3) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, (HOST, port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


async def raw_udp(port: int, payload: bytes, timeout: float = 0.3) -> bytes | None:
    return await asyncio.to_thread(raw_udp_exchange, port, payload, timeout)


async def read_tcp_message(reader: asyncio.StreamReader) -> bytes:
    n = int.from_bytes(await reader.readexactly(2), "big")
    return await reader.readexactly(n)


def framed(wire: bytes) -> bytes:
    return len(wire).to_bytes(2, "big") + wire


def query(name: str, rdtype: str = "A", **kw: Any) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kw)


# --------------------------------------------------------------------------- UDP

@BOTH_UDP_IO
async def test_udp_answer_with_records_and_same_port_for_tcp(server: DnsServer) -> None:
    assert server.udp_port == server.tcp_port and server.udp_port > 0
    r = await udp(server, query("www.example.com", "A"))
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA and r.flags & dns.flags.QR
    assert sorted(rr.address for rr in r.answer[0]) == ["192.0.2.1", "192.0.2.2"]


@BOTH_UDP_IO
async def test_udp_repeated_queries_come_from_the_fast_path_with_their_own_ids(
        server: DnsServer, engine: StandInEngine) -> None:
    for _ in range(5):
        q = query("www.example.com", "A")
        r = await udp(server, q)  # dnspython checks the id and the question match
        assert r.id == q.id
    assert engine.answered == 1
    assert server.fastpath.lookups == 5 and server.fastpath.misses == 1


async def test_fast_path_keeps_the_clients_spelling_of_the_name(
        server: DnsServer, engine: StandInEngine) -> None:
    await udp(server, query("www.example.com", "A"))
    r = await udp(server, query("WwW.ExAmPlE.cOm", "A"))
    assert r.question[0].name.to_text() == "WwW.ExAmPlE.cOm."
    assert r.answer[0].name.to_text() == "WwW.ExAmPlE.cOm."
    assert engine.answered == 1 and server.fastpath.keyed_hits == 1


async def test_a_change_is_visible_on_the_next_query(server: DnsServer,
                                                     engine: StandInEngine) -> None:
    r = await udp(server, query("new.example.com", "A"))
    assert r.rcode() == dns.rcode.NXDOMAIN
    engine.add(RR("new.example.com.", QTYPE.A, ttl=60, rdata=A("192.0.2.9")))
    r = await udp(server, query("new.example.com", "A"))
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == "192.0.2.9"


async def test_response_packets_are_never_answered(server: DnsServer,
                                                   engine: StandInEngine) -> None:
    q = query("www.example.com", "A")
    q.flags |= dns.flags.QR
    assert await raw_udp(server.udp_port, q.to_wire()) is None
    # also not after the plain query put the answer in the fast path
    await udp(server, query("www.example.com", "A"))
    assert await raw_udp(server.udp_port, q.to_wire()) is None


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"\x12\x34\x00", b"\xff" * 11,
                                     b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0",
                                     b"\x00" * 512, bytes(range(256))])
async def test_garbage_does_not_stop_the_server(server: DnsServer, garbage: bytes) -> None:
    reply = await raw_udp(server.udp_port, garbage, timeout=0.2)
    if reply is not None:  # silence or an error, never an answer with records
        assert reply[3] & 0x0F != dns.rcode.NOERROR
        assert reply[6:8] == b"\x00\x00"
    r = await udp(server, query("www.example.com", "A"))
    assert r.rcode() == dns.rcode.NOERROR


@BOTH_UDP_IO
async def test_a_burst_of_queries_gets_every_answer(server: DnsServer) -> None:
    """More datagrams than one batch (and than UDP_ROUNDS batches) waiting at once."""
    def burst() -> set[int]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.settimeout(2)
            for i in range(400):
                q = query("www.example.com" if i % 2 else "WWW.example.com", "A")
                q.id = i
                s.sendto(q.to_wire(), (HOST, server.udp_port))
            return {struct.unpack("!H", s.recv(4096)[:2])[0] for _ in range(400)}

    assert await asyncio.to_thread(burst) == set(range(400))
    assert server.stats.udp_send_failures == 0


@BOTH_UDP_IO
async def test_an_engine_exception_is_counted_and_the_server_keeps_answering(
        server: DnsServer, engine: StandInEngine) -> None:
    engine.fail_on = "boom"
    assert await raw_udp(server.udp_port, query("boom.example.com").to_wire()) is None
    assert server.stats.udp_errors == 1
    engine.fail_on = None
    r = await udp(server, query("www.example.com", "A"))
    assert r.rcode() == dns.rcode.NOERROR


async def test_truncated_over_udp_then_the_full_answer_over_tcp(server: DnsServer) -> None:
    r = await udp(server, query("big.example.com", "TXT"))
    assert r.flags & dns.flags.TC and not r.answer
    full = await tcp(server, query("big.example.com", "TXT"))
    assert not full.flags & dns.flags.TC
    assert len(full.answer[0]) == 12
    # dnspython's own fallback does the same dance
    both, used_tcp = await asyncio.to_thread(
        dns.query.udp_with_fallback, query("big.example.com", "TXT"), HOST,
        port=server.udp_port, timeout=2)
    assert used_tcp and len(both.answer[0]) == 12


async def test_udp_size_cap_follows_edns_and_the_server_cap(engine: StandInEngine) -> None:
    srv = DnsServer(engine, address=HOST, port=0, max_udp=4096)
    await srv.start()
    try:
        r = await udp(srv, query("big.example.com", "TXT", use_edns=0, payload=4096))
        assert not r.flags & dns.flags.TC and len(r.answer[0]) == 12
    finally:
        await srv.stop()


async def test_other_opcodes_reach_the_engine_and_notify_is_refused(server: DnsServer) -> None:
    q = query("example.com", "SOA")
    q.set_opcode(dns.opcode.STATUS)
    r = await udp(server, q)
    assert r.rcode() == dns.rcode.NOTIMP
    n = dns.message.make_query("example.com", "SOA")
    n.set_opcode(dns.opcode.NOTIFY)
    n.flags |= dns.flags.AA
    r = await udp(server, n)
    assert r.opcode() == dns.opcode.NOTIFY and r.rcode() == dns.rcode.REFUSED
    n2 = dns.message.make_query("other.org", "SOA")
    n2.set_opcode(dns.opcode.NOTIFY)
    r2 = await udp(server, n2)
    assert r2.rcode() == dns.rcode.NOTAUTH
    assert server.stats.notify_received == 2


# --------------------------------------------------------------------------- TCP

async def test_several_queries_on_one_tcp_connection_in_one_write(server: DnsServer) -> None:
    reader, writer = await asyncio.open_connection(HOST, server.tcp_port)
    try:
        qs = [query(n, "A") for n in ("www.example.com", "nope.example.com", "x.other.org")]
        writer.write(b"".join(framed(q.to_wire()) for q in qs))
        await writer.drain()
        answers = [dns.message.from_wire(await asyncio.wait_for(read_tcp_message(reader), 2))
                   for _ in qs]
        assert [a.id for a in answers] == [q.id for q in qs]
        assert [a.rcode() for a in answers] == [dns.rcode.NOERROR, dns.rcode.NXDOMAIN,
                                               dns.rcode.REFUSED]
        # and a query split across writes, byte by byte
        wire = framed(query("www.example.com").to_wire())
        for i in range(len(wire)):
            writer.write(wire[i:i + 1])
            await writer.drain()
        a = dns.message.from_wire(await asyncio.wait_for(read_tcp_message(reader), 2))
        assert a.rcode() == dns.rcode.NOERROR
    finally:
        writer.close()


async def test_tcp_idle_connection_is_closed(server: DnsServer) -> None:
    reader, writer = await asyncio.open_connection(HOST, server.tcp_port)
    try:
        writer.write(framed(query("www.example.com").to_wire()))
        await read_tcp_message(reader)
        t0 = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(1), 3) == b""
        waited = asyncio.get_running_loop().time() - t0
        assert 0.3 <= waited <= 1.5
        assert server.stats.tcp_idle_closed == 1
    finally:
        writer.close()


async def test_tcp_partial_message_does_not_keep_a_connection_alive(server: DnsServer) -> None:
    reader, writer = await asyncio.open_connection(HOST, server.tcp_port)
    try:
        writer.write(b"\x00\x40abc")  # promises 64 bytes, sends 3, then trickles
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(ConnectionError):
            for _ in range(10):
                await asyncio.sleep(0.2)
                writer.write(b"x")
                await writer.drain()
        assert asyncio.get_running_loop().time() - t0 < 1.5
    finally:
        writer.close()


async def test_tcp_zero_length_message_closes_and_garbage_gets_formerr(
        server: DnsServer) -> None:
    reader, writer = await asyncio.open_connection(HOST, server.tcp_port)
    try:
        writer.write(framed(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0"))
        reply = await asyncio.wait_for(read_tcp_message(reader), 2)
        assert reply[:2] == b"\x12\x34" and reply[3] & 0x0F == dns.rcode.FORMERR
        writer.write(b"\x00\x00")
        assert await asyncio.wait_for(reader.read(1), 2) == b""
    finally:
        writer.close()
    r = await tcp(server, query("www.example.com"))
    assert r.rcode() == dns.rcode.NOERROR


async def test_tcp_connection_limit(engine: StandInEngine) -> None:
    srv = DnsServer(engine, address=HOST, port=0, tcp_max_connections=2)
    await srv.start()
    conns = []
    try:
        for _ in range(2):
            conns.append(await asyncio.open_connection(HOST, srv.tcp_port))
        await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection(HOST, srv.tcp_port)
        conns.append((reader, writer))
        assert await asyncio.wait_for(reader.read(1), 2) == b""
        assert srv.stats.tcp_refused_busy == 1
        r, w = conns[0]
        w.write(framed(query("www.example.com").to_wire()))
        assert dns.message.from_wire(await asyncio.wait_for(read_tcp_message(r), 2)).answer
    finally:
        for _, w in conns:
            w.close()
        await srv.stop()


async def test_stop_closes_open_tcp_connections_and_frees_the_port(engine: StandInEngine) -> None:
    srv = DnsServer(engine, address=HOST, port=0)
    await srv.start()
    port = srv.udp_port
    reader, writer = await asyncio.open_connection(HOST, port)
    await srv.stop()
    assert await asyncio.wait_for(reader.read(1), 2) == b""
    writer.close()
    srv2 = DnsServer(engine, address=HOST, port=port)  # same port binds again at once
    await srv2.start()
    await srv2.stop()


async def test_start_fails_cleanly_when_the_port_is_taken(engine: StandInEngine) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        srv = DnsServer(engine, address=HOST, port=s.getsockname()[1])
        with pytest.raises(OSError):
            await srv.start()


# --------------------------------------------------------------------------- RRL on the wire

@pytest.mark.parametrize("udp_io", [datagram_batch, PlainBatch])
async def test_rate_limiting_drops_and_slips_over_udp_but_not_tcp(engine: StandInEngine,
                                                                  udp_io: Any) -> None:
    now = [0.0]
    rrl = RateLimiter(responses_per_s=1, burst=2, slip=2, clock=lambda: now[0])
    srv = DnsServer(engine, address=HOST, port=0, rate_limiter=rrl, udp_io=udp_io)
    await srv.start()
    try:
        wire = query("www.example.com").to_wire()
        replies = [await raw_udp(srv.udp_port, wire, timeout=0.2) for _ in range(6)]
        kinds = ["none" if r is None else ("tc" if r[2] & 0x02 else "full") for r in replies]
        # 2 banked tokens, then drop, slip, drop, slip
        assert kinds == ["full", "full", "none", "tc", "none", "tc"]
        slip = dns.message.from_wire(replies[3])  # type: ignore[arg-type]
        assert slip.question[0].name.to_text() == "www.example.com." and not slip.answer
        assert srv.stats.udp_rrl_dropped == 2 and srv.stats.udp_rrl_slipped == 2
        r = await tcp(srv, query("www.example.com"))
        assert r.answer
        now[0] += 1.0  # one token back
        assert await raw_udp(srv.udp_port, wire) is not None
    finally:
        await srv.stop()



# --------------------------------------------------------------------------- fuzz

class ThreadedServer:
    """A DnsServer on its own event loop in a thread, for synchronous (hypothesis) tests."""

    def __init__(self, engine: Any) -> None:
        import threading
        self.loop = asyncio.new_event_loop()
        self.server = DnsServer(engine, address=HOST, port=0)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def mutations() -> Any:
    from hypothesis import strategies as st
    valid = [query(n, t).to_wire() for n, t in [("www.example.com", "A"),
                                                ("big.example.com", "TXT"),
                                                ("x.other.org", "AAAA")]]
    valid.append(query("www.example.com", "A", use_edns=0, payload=4096).to_wire())
    flips = st.tuples(st.sampled_from(valid),
                      st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=6),
                      st.integers(0, 90))

    def mutate(arg: tuple[bytes, list[tuple[int, int]], int]) -> bytes:
        wire, edits, cut = arg
        b = bytearray(wire)
        for pos, val in edits:
            if pos < len(b):
                b[pos] = val
        return bytes(b[:max(cut, 0)] if cut < len(b) else b)

    return st.one_of(st.binary(max_size=600), flips.map(mutate))


def fuzz_then_ask(port: int) -> dns.message.Message:
    """Send 300 fuzzed datagrams to the server on `port`, then a good query; its answer."""
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=300, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(mutations())
    def check(packet: bytes) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(packet, (HOST, port))

    check()
    return dns.query.udp(query("www.example.com", "A"), HOST, port=port, timeout=2)


def test_fuzzed_packets_never_break_the_udp_server() -> None:
    srv = ThreadedServer(StandInEngine())
    port = srv.server.udp_port
    try:
        reply = fuzz_then_ask(port)
        assert reply.rcode() == dns.rcode.NOERROR
        assert srv.server.stats.udp_errors == 0
    finally:
        srv.close()


def test_fuzzed_packets_never_break_the_server_with_the_real_engine(tmp_path: Any) -> None:
    from tests.dns.test_knot_differential import ZONE_FILE, engine_for

    zone = tmp_path / "example.com.zone"
    zone.write_text(ZONE_FILE)
    srv = ThreadedServer(engine_for(zone))
    port = srv.server.udp_port
    try:
        reply = fuzz_then_ask(port)
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer
        assert srv.server.stats.udp_errors == 0
    finally:
        srv.close()


# --------------------------------------------------------------------------- real engine

LB = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
ROTATING: list[dict[str, Any]] = [
    {"name": "lb", "type": "A", "values": LB},
    {"name": "lb", "type": "MX", "values": ["10 mail"]},
    {"name": "mail", "type": "A", "values": ["192.0.2.25", "192.0.2.26"]},
    {"name": "to-lb", "type": "CNAME", "values": ["lb"]},
    {"name": "f", "type": "A", "values": ["192.0.2.1"], "policy": "failover",
     "set_identifier": "p", "failover": "PRIMARY", "health_check": "a"},
    {"name": "f", "type": "A", "values": ["192.0.2.2"], "policy": "failover",
     "set_identifier": "s", "failover": "SECONDARY"},
]


@pytest.fixture
async def real() -> AsyncIterator[tuple[DnsServer, Any, Any]]:
    """A DnsServer in front of the real engine (ROTATING records) and its health view."""
    from tests.dns.test_engine import Health, make_engine
    health = Health()
    engine = make_engine(ROTATING, health)
    srv = DnsServer(engine, address=HOST, port=0)
    await srv.start()
    try:
        yield srv, engine, health
    finally:
        await srv.stop()


def addresses(r: Any) -> list[str]:
    return [rd.address for rrset in r.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset]


@pytest.mark.parametrize("transport", [udp, tcp])
async def test_each_rotation_in_turn_from_prepared_answers(real: Any, transport: Any) -> None:
    srv, _, _ = real
    seen = [addresses(await transport(srv, query("lb.example.com"))) for _ in range(7)]
    assert seen == [LB, LB[1:] + LB[:1], LB[2:] + LB[:2]] * 2 + [LB]
    assert srv.fastpath.misses == 1  # the engine built the three rotations once
    chain = [addresses(await transport(srv, query("To-LB.example.com"))) for _ in range(4)]
    assert chain == [LB, LB[1:] + LB[:1], LB[2:] + LB[:2], LB]
    # the MX at the rotating name is one prepared answer: its additional addresses do not move
    mx = [await transport(srv, query("lb.example.com", "MX")) for _ in range(3)]
    assert all(r.answer == mx[0].answer and r.additional == mx[0].additional for r in mx)
    assert srv.fastpath.misses == 3 and srv.fastpath.uncacheable == 0
    # a resolver sending a fresh DNS COOKIE with every query still gets each rotation in turn
    fresh = [await transport(srv, query("lb.example.com", use_edns=0, options=[
        dns.edns.GenericOption(10, os.urandom(8))])) for _ in range(4)]
    assert [addresses(r) for r in fresh] == [LB, LB[1:] + LB[:1], LB[2:] + LB[:2], LB]


async def test_a_zone_or_health_change_shows_on_the_next_query(real: Any) -> None:
    from lbcdn.dns.changes import parse_changes
    srv, engine, health = real
    assert addresses(await udp(srv, query("lb.example.com"))) == LB
    engine.apply_changes("example.com", parse_changes({"changes": [{
        "action": "UPSERT", "record": {"name": "lb", "type": "A",
                                       "values": ["192.0.2.21", "192.0.2.22"]}}]}))
    seen = [addresses(await udp(srv, query("lb.example.com"))) for _ in range(3)]
    assert seen == [["192.0.2.21", "192.0.2.22"], ["192.0.2.22", "192.0.2.21"],
                    ["192.0.2.21", "192.0.2.22"]]
    assert [addresses(await tcp(srv, query("f.example.com"))) for _ in range(2)] == [
        ["192.0.2.1"]] * 2
    health.set("a", False)
    assert addresses(await tcp(srv, query("f.example.com"))) == ["192.0.2.2"]
    assert addresses(await udp(srv, query("f.example.com"))) == ["192.0.2.2"]


async def test_servfail_from_an_engine_failure_carries_an_extended_dns_error(real: Any) -> None:
    """RFC 8914: the SERVFAIL a failing health view costs says why (0, Other, with text)."""
    srv, engine, health = real

    def broken(check_id: str) -> bool:
        raise RuntimeError("health view broke")

    health.is_healthy = broken
    health.generation += 1
    for transport in (udp, tcp):
        r = await transport(srv, query("f.example.com", use_edns=0))
        assert r.rcode() == dns.rcode.SERVFAIL and r.edns == 0
        assert [(o.otype, o.code, o.text) for o in r.options] == [
            (dns.edns.EDE, 0, "server failure, see its log")]
    r = await udp(srv, query("f.example.com"))
    assert r.rcode() == dns.rcode.SERVFAIL and r.edns < 0  # no OPT asked, none sent


# --------------------------------------------------------------------------- from config

def test_parse_host_port() -> None:
    from lbcdn.dns.server import parse_host_port
    assert parse_host_port("192.0.2.1:5300") == ("192.0.2.1", 5300)
    assert parse_host_port("ns2.example.net") == ("ns2.example.net", 53)
    assert parse_host_port("[2001:db8::1]:5353") == ("2001:db8::1", 5353)
    assert parse_host_port("2001:db8::1") == ("2001:db8::1", 53)
    for bad in (":53", "host:0", "host:x"):
        with pytest.raises(ValueError):
            parse_host_port(bad)


async def test_servers_from_config(engine: StandInEngine) -> None:
    from lbcdn.dns.config import DnsConfig, DnsListenerConfig, RateLimitConfig, ZoneConfig
    from lbcdn.dns.server import servers_from_config
    cfg = DnsConfig(listeners=(DnsListenerConfig(port=1053, address=HOST,
                                                 tcp_idle_timeout_s=3.0),
                               DnsListenerConfig(port=1054, address=HOST)),
                    zones=(ZoneConfig(name="example.com"),),
                    allow_transfer=("10.0.0.0/8",), notify=("127.0.0.1:5399",),
                    max_udp_payload_bytes=1400,
                    rate_limit=RateLimitConfig(enabled=True, responses_per_s=7))
    a, b = servers_from_config(cfg, engine)
    assert (a.port, b.port, a.tcp_idle_timeout_s) == (1053, 1054, 3.0)
    assert a.fastpath.max_udp == 1400 and [str(n) for n in a.allow_transfer] == ["10.0.0.0/8"]
    assert a.rate_limiter is b.rate_limiter and a.rate_limiter is not None
    assert a.rate_limiter.rate == 7
    assert a.notifier is not None and b.notifier is None
    assert a.notifier.secondaries == (("127.0.0.1", 5399),)
    assert a.notifier.zones == ("example.com",)
