"""Reading a query off the wire, without dnslib: header, the one question, EDNS(0).

Job: turn query bytes into a `Query` that says either what was asked or which error to
answer with, and derive the cache key of a query. The engine and `cacheable_key` share this
one reader, so they can never disagree about what a packet means.

Rules:
- Silence (None) when the header is unreadable (under 12 bytes) or QR is set: never answer
  a response, which is how reflection loops start.
- Any opcode but QUERY -> NOTIMP. For QUERY: not exactly one question, a compressed or
  over-long question name, records in the answer or authority section, more than one OPT,
  an OPT not owned by the root or with broken options, a TSIG that is not the last record, or
  bytes after the last record -> FORMERR. Other additional records are skipped.
- The OPT is read whenever the records can be walked, also in a query answered FORMERR or
  NOTIMP (no question, an OPT owned by another name, a second OPT: the first one counts), so
  that every reply to a query with an OPT carries one (RFC 6891 6.1.1, 7).
- A TSIG record (RFC 8945) is located, not checked: `tsig` is its offset (tsig.py checks it).
- Of the EDNS options only NSID (RFC 5001) and Client Subnet (RFC 7871) change an answer:
  `Edns.nsid` says NSID was asked, `Edns.ecs` holds the ECS option's data. An ECS option that
  breaks RFC 7871 6/7.1.1 -> FORMERR: an unknown family, a source prefix longer than the
  family's, a scope prefix that is not 0, an address longer than the source prefix needs or
  with bits set past it, or a second ECS option.
- The question name is kept as sent (case included) and also lower-cased for lookups.
"""

from __future__ import annotations

from dataclasses import dataclass

from lbcdn.dns.names import Name

OPCODE_QUERY = 0
FORMERR, NOTIMP = 1, 4
T_OPT, T_TSIG = 41, 250
OPT_NSID, OPT_ECS, OPT_EDE = 3, 8, 15
EDNS_DO, EDNS_CO = 0x8000, 0x4000   # EDNS header flags: DNSSEC OK, Compact Answers OK
# Extended DNS Errors (RFC 8914) this server gives
EDE_OTHER, EDE_PROHIBITED, EDE_NOT_AUTHORITATIVE = 0, 18, 20


@dataclass(frozen=True, slots=True)
class Edns:
    payload: int       # the client's UDP payload size as sent
    version: int
    do: bool
    nsid: bool = False  # the NSID option was sent (RFC 5001)
    ecs: bytes = b""    # the Client Subnet option's data (RFC 7871), well-formed; b"": none
    co: bool = False    # Compact Answers OK (RFC 9824 5), with DO: NXDOMAIN for a compact denial


@dataclass(frozen=True, slots=True)
class Query:
    id: int
    flags: int                 # the 16 header flag bits as sent
    error: int                 # 0, or the rcode to answer with (FORMERR, NOTIMP)
    question: bytes | None     # the question section as sent, when readable
    qname_len: int = 0         # length of the name at the start of `question`
    qname: Name = ()           # lower-cased labels
    qtype: int = 0
    qclass: int = 0
    edns: Edns | None = None   # None: no OPT (or records that cannot be walked)
    tsig: int = 0              # offset of the TSIG record; 0: none

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF


def _question(data: bytes, pos: int) -> tuple[Name, int] | None:
    """The uncompressed name at `pos` -> (labels lower-cased, end offset)."""
    labels: list[bytes] = []
    n = len(data)
    start = pos
    while True:
        if pos >= n:
            return None
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length > 63:      # a compression pointer or a reserved label type
            return None
        end = pos + 1 + length
        if end > n:
            return None
        labels.append(data[pos + 1:end].lower())
        pos = end
    if pos - start > 255:
        return None
    return tuple(labels), pos


def _skip_name(data: bytes, pos: int) -> int:
    """End offset of a possibly compressed name, or -1."""
    n = len(data)
    while pos < n:
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2 if pos + 2 <= n else -1
        if length & 0xC0:
            return -1
        pos += 1 + length
    return -1


def _record(data: bytes, pos: int) -> tuple[int, int, int, int, int] | None:
    """(end of owner, type, class, ttl, end of record) of the record at `pos`."""
    name_end = _skip_name(data, pos)
    if name_end < 0 or name_end + 10 > len(data):
        return None
    rtype = int.from_bytes(data[name_end:name_end + 2], "big")
    rclass = int.from_bytes(data[name_end + 2:name_end + 4], "big")
    ttl = int.from_bytes(data[name_end + 4:name_end + 8], "big")
    rdlen = int.from_bytes(data[name_end + 8:name_end + 10], "big")
    end = name_end + 10 + rdlen
    if end > len(data):
        return None
    return name_end, rtype, rclass, ttl, end


def _options(data: bytes, start: int, end: int) -> list[tuple[int, int, int]] | None:
    """(code, data start, data end) of each option of the OPT rdata in data[start:end], or
    None when malformed."""
    out: list[tuple[int, int, int]] = []
    pos = start
    while pos < end:
        if pos + 4 > end:
            return None
        size = int.from_bytes(data[pos + 2:pos + 4], "big")
        out.append((int.from_bytes(data[pos:pos + 2], "big"), pos + 4, pos + 4 + size))
        pos += 4 + size
    return out if pos == end else None


def ecs_ok(option: bytes) -> bool:
    """Whether ECS option data is what RFC 7871 6 allows in a query."""
    if len(option) < 4:
        return False
    family, source, scope = int.from_bytes(option[0:2], "big"), option[2], option[3]
    bits = 32 if family == 1 else 128 if family == 2 else 0
    address = option[4:]
    if not bits or source > bits or scope != 0 or len(address) != (source + 7) // 8:
        return False
    return not source % 8 or not address[-1] & (0xFF >> (source % 8))


def ecs_reply(option: bytes, scope: int) -> bytes:
    """The ECS option data of an answer: the query's, with SCOPE PREFIX-LENGTH set."""
    return option[:3] + bytes((scope,)) + option[4:]


def parse_query(data: bytes) -> Query | None:
    """Query bytes -> Query (check `.error`), or None when nothing must be sent."""
    if len(data) < 12 or data[2] & 0x80:
        return None
    qid = int.from_bytes(data[0:2], "big")
    flags = int.from_bytes(data[2:4], "big")
    qd = int.from_bytes(data[4:6], "big")
    an = int.from_bytes(data[6:8], "big")
    ns = int.from_bytes(data[8:10], "big")
    ar = int.from_bytes(data[10:12], "big")
    opcode = (flags >> 11) & 0xF
    question: bytes | None = None
    qname: Name = ()
    qtype = qclass = 0
    pos = 12
    ok = qd == 1 and an == 0 and ns == 0
    walk = True   # the records after the question(s) can be read
    if qd >= 1:
        parsed = _question(data, 12)
        if parsed is not None and parsed[1] + 4 <= len(data):
            qname, qend = parsed
            qtype = int.from_bytes(data[qend:qend + 2], "big")
            qclass = int.from_bytes(data[qend + 2:qend + 4], "big")
            pos = qend + 4
            if qd == 1:
                question = data[12:pos]
            for _ in range(qd - 1):  # only to reach the OPT of a FORMERR query
                end = _skip_name(data, pos)
                pos = end + 4
                if end < 0 or pos > len(data):
                    walk = False
                    break
        else:
            ok = walk = False
    qname_len = (pos - 4 - 12) if question is not None else 0
    edns: Edns | None = None
    tsig = 0
    if walk:
        first_additional = an + ns
        for i in range(an + ns + ar):
            rec = _record(data, pos)
            if rec is None:
                ok = False
                break
            name_end, rtype, rclass, ttl, end = rec
            if i >= first_additional and rtype == T_OPT:
                options = _options(data, name_end + 10, end)
                if edns is not None or name_end != pos + 1 or data[pos] != 0 or options is None:
                    ok = False
                ecs = [data[a:b] for code, a, b in options or () if code == OPT_ECS]
                if len(ecs) > 1 or (ecs and not ecs_ok(ecs[0])):
                    ok = False
                    ecs = []
                if edns is None:
                    edns = Edns(rclass, (ttl >> 16) & 0xFF, bool(ttl & EDNS_DO),
                                any(code == OPT_NSID for code, _, _ in options or ()),
                                ecs[0] if ecs else b"",
                                ttl & (EDNS_DO | EDNS_CO) == EDNS_DO | EDNS_CO)
            elif i >= first_additional and rtype == T_TSIG:
                if i != an + ns + ar - 1:
                    ok = False
                tsig = pos
            pos = end
        if pos != len(data):
            ok = False
    error = NOTIMP if opcode != OPCODE_QUERY else 0 if ok else FORMERR
    return Query(qid, flags, error, question, qname_len, qname, qtype, qclass, edns, tsig)


# RFC 8914 3.1: code 0 SHOULD come with an EXTRA-TEXT
EDE_TEXT = {EDE_OTHER: "server failure, see its log"}


def tsig_offset(data: bytes) -> int:
    """Offset of the TSIG record closing a message (a response too), or 0 when there is none
    or the message cannot be walked."""
    if len(data) < 12:
        return 0
    qd, an, ns, ar = (int.from_bytes(data[i:i + 2], "big") for i in (4, 6, 8, 10))
    pos = 12
    for _ in range(qd):
        end = _skip_name(data, pos)
        if end < 0:
            return 0
        pos = end + 4
    last = rtype = 0
    for _ in range(an + ns + ar):
        rec = _record(data, pos)
        if rec is None:
            return 0
        last, rtype, pos = pos, rec[1], rec[4]
    return last if rtype == T_TSIG and pos == len(data) else 0


def ede_data(code: int) -> bytes:
    """The EDNS option data of an Extended DNS Error (RFC 8914 2)."""
    return code.to_bytes(2, "big") + EDE_TEXT.get(code, "").encode("utf-8")


def cache_key(q: Query) -> bytes:
    """What identifies the answer to an error-free query: the RD and CD bits (copied into
    the answer), the EDNS facts that change it (present, version, DO, CO, NSID asked, payload
    size clamped to 512-65535, the ECS option echoed), and the question with its name
    lower-cased."""
    assert q.question is not None
    flags = bytes(((q.flags >> 8) & 0x01, q.flags & 0x10))
    if q.edns is None:
        edns = b"-"
    else:
        size = min(max(q.edns.payload, 512), 65535)
        edns = (bytes((q.edns.version, q.edns.do, q.edns.nsid, q.edns.co))
                + size.to_bytes(2, "big")
                + bytes((len(q.edns.ecs),)) + q.edns.ecs)
    name = q.question[:q.qname_len]
    return flags + edns + name.lower() + q.question[q.qname_len:]
