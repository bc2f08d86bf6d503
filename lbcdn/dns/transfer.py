"""Zone transfer as a primary: AXFR/IXFR out over TCP, NOTIFY out over UDP, NOTIFY in.

Job: let real secondaries (Knot DNS, NSD, BIND) copy lbcdn's zones and hear about changes.

Rules:
- AXFR (RFC 5936) only over TCP and only to clients allowed by `transfer_refusal`: a client
  inside a `secondaries` entry's address must sign with that entry's TSIG key (RFC 8945), any
  other must be inside `allow_transfer` (CIDRs; empty means nobody). Anyone else gets REFUSED
  with Extended DNS Error 18 (Prohibited), and the refusal is logged; a name that is not a
  served zone apex gets NOTAUTH. The answer is a sequence of messages, each under
  `max_message_bytes`, SOA first and SOA last, the question in the first message only, AA set.
- TSIG: a signed request is checked first (tsig.py); a bad signature, key or time gets the TSIG
  error reply (logged), a good one gets every reply message signed. An OPT in a request is
  answered by an OPT in every reply message.
- IXFR (RFC 1995) is answered the way RFC 1995 section 4 allows when no history is kept: a
  client whose serial is current gets the single SOA ("up to date"), any other gets the full
  zone in AXFR form. Over UDP, AXFR and IXFR are left to the engine.
- NOTIFY out (RFC 1996): `Notifier` watches the engine's version; when a zone's SOA serial
  changes it sends NOTIFY over UDP to every configured secondary (signed with its TSIG key
  when it has one), retrying with a doubling
  timeout until the matching response (same id, QR, opcode NOTIFY; signed by the same key
  over our MAC when ours was signed) arrives or the retries run out. A newer change for the same zone and secondary replaces a pending one.
- NOTIFY in: lbcdn is a primary only, so a NOTIFY for a served zone is REFUSED (what Knot does
  without a `notify` ACL; EDE 18), one for any other name NOTAUTH; signed like any reply.
- Decisions are pure functions over bytes; only `Notifier` does I/O.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from dnslib import (
    OPCODE,
    QTYPE,
    RCODE,
    RR,
    SOA,
    DNSBuffer,
    DNSError,
    DNSHeader,
    DNSQuestion,
    DNSRecord,
    EDNS0,
    EDNSOption,
)

from lbcdn.dns import tsig
from lbcdn.dns.names import Name
from lbcdn.dns.wire import EDE_PROHIBITED, OPT_EDE, ede_data, parse_query, tsig_offset
from lbcdn.tasks import spawn

log = logging.getLogger("lbcdn.dns.transfer")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Secondary = tuple[IpNetwork, Name]   # who must sign, and with which key


class ZoneSource(Protocol):
    """What transfers need from lbcdn.dns.engine.Engine."""

    def answer(self, query: bytes, *, tcp: bool, max_udp: int = 512) -> bytes | None: ...

    def zone_for(self, name: str) -> Any: ...

    def axfr_records(self, zone_name: str) -> list[RR]: ...

    @property
    def version(self) -> int: ...


def parse_networks(cidrs: Iterable[str]) -> tuple[IpNetwork, ...]:
    """CIDRs (or bare addresses) -> networks; raises ValueError naming the bad one."""
    out: list[IpNetwork] = []
    for c in cidrs:
        try:
            out.append(ipaddress.ip_network(c, strict=False))
        except ValueError as e:
            raise ValueError(f"not an address or CIDR: {c!r} ({e})") from None
    return tuple(out)


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_allowed(address: str, networks: Sequence[IpNetwork]) -> bool:
    ip = _ip(address)
    return ip is not None and any(ip.version == net.version and ip in net for net in networks)


def transfer_refusal(client: str, key: tsig.Key | None, allow: Sequence[IpNetwork],
                     secondaries: Sequence[Secondary]) -> str | None:
    """Why a transfer request from `client`, signed with `key` (verified; None: unsigned),
    is refused; None when it is allowed."""
    ip = _ip(client)
    required = [name for net, name in secondaries
                if ip is not None and ip.version == net.version and ip in net]
    if required:
        if key is not None and key.name in required:
            return None
        names = ", ".join(sorted({b".".join(n).decode("ascii", "replace") for n in required}))
        return f"not signed with its key ({names})"
    if client_allowed(client, allow):
        return None
    return "not in allow_transfer"


def opcode_of(message: bytes) -> int:
    return (message[2] >> 3) & 0x0F if len(message) >= 3 else -1


def is_transfer_query(message: bytes) -> bool:
    """Cheap pre-check for the TCP path: a QUERY whose (single) question type is AXFR or IXFR.
    Reads the qtype after the first name without dnslib."""
    if len(message) < 17 or message[2] & 0x80 or opcode_of(message) != 0:
        return False
    i = 12
    n = len(message)
    while i < n:
        length = message[i]
        if length == 0:
            if i + 3 > n:
                return False
            return int.from_bytes(message[i + 1:i + 3], "big") in (QTYPE.AXFR, QTYPE.IXFR)
        if length & 0xC0:
            return False
        i += length + 1
    return False


def _opt(query: DNSRecord, ede: int = -1) -> list[RR]:
    """The OPT answering the query's OPT (none without one), with an Extended DNS Error."""
    if not any(rr.rtype == QTYPE.OPT for rr in query.ar):
        return []
    return [EDNS0(udp_len=1232, opts=[EDNSOption(OPT_EDE, ede_data(ede))] if ede >= 0 else [])]


def _error(query: DNSRecord, rcode: int, *, aa: bool = False, ede: int = -1) -> bytes:
    reply = DNSRecord(DNSHeader(id=query.header.id, qr=1, aa=int(aa), opcode=query.header.opcode,
                                rd=query.header.rd, rcode=rcode), q=query.q,
                      ar=_opt(query, ede))
    return bytes(reply.pack())


# NOTIFY comes over UDP too, where senders can be spoofed: its refusals are logged sparsely
_notify_refusals = tsig.SparseLog(log)


def _signed(query_wire: bytes, keys: tsig.Keyring, now: float, what: str, client: str
            ) -> tuple[bytes, tsig.Verdict | None, list[bytes] | None]:
    """Check a request's TSIG: (the request to answer, the verdict to sign replies with or
    None when unsigned, the error replies when the check failed)."""
    q = parse_query(query_wire)
    if q is None or not q.tsig:
        return query_wire, None, None
    verdict = tsig.verify(query_wire, q.tsig, keys, now)
    if verdict.error:
        warn = _notify_refusals.warning if what == "NOTIFY" else log.warning
        warn("dns: %s from %s refused: TSIG %s (key %s)", what, client or "?",
             tsig.ERROR_NAMES[verdict.error], verdict.key_text)
        reply = tsig.error_reply(verdict, now)
        return query_wire, None, [] if reply is None else [reply]
    return verdict.message, verdict, None


def _zone_records(source: ZoneSource, name: str) -> list[RR] | None:
    """The zone's AXFR records when `name` is a served zone's apex, else None."""
    try:
        if source.zone_for(name) is None:
            return None
        records = source.axfr_records(name)
    except (KeyError, ValueError, LookupError):
        return None
    if len(records) < 2 or records[0].rtype != QTYPE.SOA:
        return None
    if str(records[0].rname).lower().rstrip(".") != name.lower().rstrip("."):
        return None
    return records


def _serial(rr: RR) -> int:
    rdata = rr.rdata
    assert isinstance(rdata, SOA)
    return int(rdata.times[0])


def transfer_response(query_wire: bytes, client: str, source: ZoneSource,
                      allow: Sequence[IpNetwork], *, max_message_bytes: int = 16384,
                      keys: tsig.Keyring | None = None, secondaries: Sequence[Secondary] = (),
                      now: float | None = None) -> list[bytes]:
    """The TCP messages answering one AXFR or IXFR query (a malformed one gets FORMERR)."""
    now = time.time() if now is None else now
    query_wire, verdict, failed = _signed(query_wire, keys or {}, now, "transfer", client)
    if failed is not None:
        return failed
    replies = _transfer(query_wire, client, source, allow, max_message_bytes, secondaries,
                        None if verdict is None else verdict.key)
    return replies if verdict is None else tsig.sign_replies(replies, verdict, now)


def _transfer(query_wire: bytes, client: str, source: ZoneSource, allow: Sequence[IpNetwork],
              max_message_bytes: int, secondaries: Sequence[Secondary],
              key: tsig.Key | None) -> list[bytes]:
    try:
        query = DNSRecord.parse(query_wire)
    except (DNSError, ValueError, IndexError, UnicodeDecodeError):
        if len(query_wire) < 12:
            return []
        hdr = DNSHeader(id=int.from_bytes(query_wire[:2], "big"), qr=1, rcode=RCODE.FORMERR)
        return [bytes(DNSRecord(hdr).pack())]
    if len(query.questions) != 1 or query.q.qtype not in (QTYPE.AXFR, QTYPE.IXFR):
        return [_error(query, RCODE.FORMERR)]
    name = str(query.q.qname)
    refusal = transfer_refusal(client, key, allow, secondaries)
    if refusal is not None:
        log.warning("dns: %s of %s from %s refused: %s", QTYPE.get(query.q.qtype), name,
                    client or "?", refusal)
        return [_error(query, RCODE.REFUSED, ede=EDE_PROHIBITED)]
    records = _zone_records(source, name)
    if records is None:
        return [_error(query, RCODE.NOTAUTH)]
    soa = records[0]
    if query.q.qtype == QTYPE.IXFR:
        theirs = [rr for rr in query.auth if rr.rtype == QTYPE.SOA]
        if theirs and _serial(theirs[0]) == _serial(soa):
            return [_pack(query, [soa], first=True)]
    return _split(query, records, max_message_bytes)


def _rr_size(rr: RR) -> int:
    buf = DNSBuffer()
    rr.pack(buf)  # uncompressed: an upper bound on its size inside a message
    return len(buf.data)


def _pack(query: DNSRecord, records: list[RR], *, first: bool) -> bytes:
    header = DNSHeader(id=query.header.id, qr=1, aa=1, rd=query.header.rd)
    msg = DNSRecord(header, q=query.q if first else None, rr=records, ar=_opt(query))
    if not first:
        msg.questions = []
    return bytes(msg.pack())


def _split(query: DNSRecord, records: list[RR], limit: int) -> list[bytes]:
    # 12 header bytes plus the question bound the first message's fixed part.
    budget = limit - 12 - (len(str(query.q.qname)) + 6)
    out: list[bytes] = []
    batch: list[RR] = []
    used = 0
    for rr in records:
        size = _rr_size(rr)
        if batch and used + size > budget:
            out.append(_pack(query, batch, first=not out))
            batch, used = [], 0
        batch.append(rr)
        used += size
    if batch:
        out.append(_pack(query, batch, first=not out))
    return out


def notify_response(query_wire: bytes, source: ZoneSource, *,
                    keys: tsig.Keyring | None = None, client: str = "",
                    now: float | None = None) -> bytes | None:
    """Answer to a NOTIFY received by this primary; None = silence (a response, or garbage)."""
    if len(query_wire) < 12 or query_wire[2] & 0x80:
        return None
    now = time.time() if now is None else now
    query_wire, verdict, failed = _signed(query_wire, keys or {}, now, "NOTIFY", client)
    if failed is not None:
        return failed[0] if failed else None
    reply = _notify_reply(query_wire, source)
    if reply is None or verdict is None:
        return reply
    return tsig.sign_replies([reply], verdict, now)[0]


def _notify_reply(query_wire: bytes, source: ZoneSource) -> bytes | None:
    try:
        query = DNSRecord.parse(query_wire)
    except (DNSError, ValueError, IndexError, UnicodeDecodeError):
        hdr = DNSHeader(id=int.from_bytes(query_wire[:2], "big"), qr=1, opcode=OPCODE.NOTIFY,
                        rcode=RCODE.FORMERR)
        return bytes(DNSRecord(hdr).pack())
    if len(query.questions) != 1:
        return _error(query, RCODE.FORMERR)
    served = _zone_records(source, str(query.q.qname)) is not None
    if served:
        return _error(query, RCODE.REFUSED, ede=EDE_PROHIBITED)
    return _error(query, RCODE.NOTAUTH)


def notify_message(zone: str, soa: RR | None, msg_id: int) -> bytes:
    """A NOTIFY for `zone` (RFC 1996: AA set, SOA question, the new SOA as a hint)."""
    header = DNSHeader(id=msg_id, qr=0, aa=1, opcode=OPCODE.NOTIFY, rd=0)
    msg = DNSRecord(header)
    msg.add_question(DNSQuestion(zone, QTYPE.SOA))
    if soa is not None:
        msg.add_answer(soa)
    return bytes(msg.pack())


def is_notify_ack(wire: bytes, msg_id: int) -> bool:
    return (len(wire) >= 12 and int.from_bytes(wire[:2], "big") == msg_id
            and bool(wire[2] & 0x80) and opcode_of(wire) == OPCODE.NOTIFY)


def current_soa(source: ZoneSource, zone: str) -> RR | None:
    """The zone's SOA as the engine answers it (cheap: one SOA query, not the whole zone)."""
    q = DNSRecord.question(zone, "SOA")
    wire = source.answer(bytes(q.pack()), tcp=True)
    if wire is None:
        return None
    try:
        reply = DNSRecord.parse(wire)
    except (DNSError, ValueError, IndexError, UnicodeDecodeError):
        return None
    for rr in reply.rr:
        if rr.rtype == QTYPE.SOA:
            return rr
    return None


def ack_signed(wire: bytes, key: tsig.Key, request_mac: bytes, now: float) -> bool:
    """Whether the answer to a NOTIFY signed with `key` (MAC `request_mac`) is signed by the
    same key over it (RFC 8945 5.3: an answer failing that is dropped)."""
    at = tsig_offset(wire)
    return at > 0 and tsig.verify(wire, at, {key.name: key}, now,
                                  request_mac=request_mac).error == tsig.NOERROR


class _AckProtocol(asyncio.DatagramProtocol):
    def __init__(self, msg_id: int, key: tsig.Key | None, mac: bytes) -> None:
        self.msg_id = msg_id
        self.key = key
        self.mac = mac
        self.unsigned = 0   # answers dropped for a missing or bad TSIG
        self.acked: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if not is_notify_ack(data, self.msg_id) or self.acked.done():
            return
        if self.key is not None and not ack_signed(data, self.key, self.mac, time.time()):
            self.unsigned += 1
            return
        self.acked.set_result(True)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: keep waiting; the retry timer decides.
        pass


class Notifier:
    """Sends NOTIFY to secondaries when a served zone's serial changes."""

    def __init__(self, source: ZoneSource, zones: Sequence[str],
                 secondaries: Sequence[tuple[str, int]], *, timeout_s: float = 1.0,
                 retries: int = 5, poll_interval_s: float = 0.25,
                 rng: random.Random | None = None,
                 keys: Mapping[tuple[str, int], tsig.Key] | None = None) -> None:
        self.source = source
        self.keys = dict(keys or {})   # secondary -> the TSIG key its NOTIFYs are signed with
        self.zones = tuple(zones)
        self.secondaries = tuple(secondaries)
        self.timeout_s = timeout_s
        self.retries = retries
        self.poll_interval_s = poll_interval_s
        self.rng = rng or random.Random()
        self._serials: dict[str, int | None] = {}
        self._version: int | None = None
        self._watch: asyncio.Task[None] | None = None
        self._pending: dict[tuple[str, str, int], asyncio.Task[bool]] = {}
        self.sent = 0
        self.acked = 0
        self.failed = 0

    async def start(self) -> None:
        self._version = self.source.version
        for zone in self.zones:
            soa = current_soa(self.source, zone)
            self._serials[zone] = _serial(soa) if soa is not None else None
        if self.secondaries:
            self._watch = spawn(self._watch_loop(), "dns-notify-watch")

    async def stop(self) -> None:
        tasks = [t for t in [self._watch, *self._pending.values()] if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._watch = None
        self._pending.clear()

    def check(self) -> list[str]:
        """Compare serials now (the watch loop does this on every version change); send NOTIFY
        for each zone whose serial moved. Returns those zones."""
        self._version = self.source.version
        changed: list[str] = []
        for zone in self.zones:
            soa = current_soa(self.source, zone)
            serial = _serial(soa) if soa is not None else None
            if serial != self._serials.get(zone):
                self._serials[zone] = serial
                if soa is not None:
                    changed.append(zone)
                    for host, port in self.secondaries:
                        self._send_later(zone, soa, host, port)
        return changed

    def _send_later(self, zone: str, soa: RR, host: str, port: int) -> None:
        key = (zone, host, port)
        old = self._pending.pop(key, None)
        if old is not None:
            old.cancel()
        task = spawn(self.notify_one(zone, soa, host, port), f"dns-notify {zone} {host}:{port}")
        self._pending[key] = task
        task.add_done_callback(lambda t: self._pending.pop(key, None)
                               if self._pending.get(key) is t else None)

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            if self.source.version != self._version:
                try:
                    self.check()
                except Exception:  # an engine bug must not end NOTIFY for good
                    log.exception("NOTIFY check failed")

    async def notify_one(self, zone: str, soa: RR | None, host: str, port: int) -> bool:
        """Send one NOTIFY and wait for its answer, retrying; True when acknowledged."""
        msg_id = self.rng.randrange(0, 65536)
        wire = notify_message(zone, soa, msg_id)
        key = self.keys.get((host, port))
        mac = b""
        if key is not None:
            # Signed once: the retries (seconds apart) stay well inside the fudge.
            wire, mac = tsig.sign(wire, key, time.time())
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: _AckProtocol(msg_id, key, mac), remote_addr=(host, port))
        try:
            timeout = self.timeout_s
            for _ in range(self.retries):
                transport.sendto(wire)
                self.sent += 1
                try:
                    await asyncio.wait_for(asyncio.shield(proto.acked), timeout)
                    self.acked += 1
                    return True
                except asyncio.TimeoutError:
                    timeout *= 2
            self.failed += 1
            log.warning("NOTIFY %s to %s:%d: no answer after %d tries%s", zone, host, port,
                        self.retries, f" ({proto.unsigned} answers without a valid TSIG by "
                        f"{key.text})" if key is not None and proto.unsigned else "")
            return False
        finally:
            transport.close()
