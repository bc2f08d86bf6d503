"""Online DNSSEC signing of one zone's answers (pure: records and `now` in, records out).

Job: what a signed zone adds to an answer the engine has built (lbcdn.dns.engine calls
`Signer.secure`), and to its zone transfer (`Signer.sign_transfer`).

Rules:
- Every RRset in the answer section and the SOA in the authority section get an RRSIG from
  every key of the zone (two during a rollover, lbcdn.dns.keys); records chosen by routing
  policies, aliases and change batches are signed as they are answered, so a signature
  always covers exactly the records sent. Referral NS sets and glue are not signed (RFC 4035
  2.2); additional-section data is not signed.
- A wildcard answer is signed as if its records were at the query name (labels = the query
  name's): online signers may, and it needs no proof of the closest encloser.
- Denial of existence is compact (RFC 9824, "black lies"): NXDOMAIN and NODATA both become
  NOERROR with one NSEC at the query name whose next name is `\\000.<name>` (nothing else
  lies between) and whose type bitmap lists the types there, plus RRSIG and NSEC, and for a
  name that does not exist the NXNAME pseudo-type (128) only. One signature per denial,
  no hashing, no zone walking; without DO the answer stays NXDOMAIN/NODATA. A query with
  the Compact Answers OK flag (CO, RFC 9824 5) gets the same NSEC with rcode NXDOMAIN for a
  name that does not exist (and CO in the reply's OPT, lbcdn.dns.engine). A delegation
  gets an NSEC at the cut showing NS and no DS: the child is insecure.
- Queries for NSEC at an existing name get its NSEC in the answer; for RRSIG, the signatures
  of the name's record sets (health-independent values, as a transfer shows them).
- Signatures: inception an hour back (clock skew), expiration 14 days after the start of
  the current day (UTC); a new day signs afresh, so a signature that is served always has
  13 days left. They are cached per RRset and day (`epoch`), a table emptied whole when full;
  the engine drops its prepared answers when the day changes (Engine.refresh_signatures).
- A transfer gets a regular NSEC chain over the zone's names (apex first, canonical order,
  skipping empty non-terminals and occluded names) and every authoritative RRset signed, so
  a secondary serves a complete signed zone.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from dnslib import RD, RR, DNSBuffer, DNSLabel

from lbcdn.dns import policy
from lbcdn.dns.keys import ZoneKey
from lbcdn.dns.names import Name, is_subdomain, to_wire
from lbcdn.dns.zone import Zone
from lbcdn.memo import remember

T_NS, T_SOA, T_RRSIG, T_NSEC, T_DNSKEY, T_NXNAME = 2, 6, 46, 47, 48, 128
CLASS_IN = 1
DAY = 86400
BACKDATE_S = 3600
VALIDITY_S = 14 * DAY
MAX_CACHED = 100_000
MAX_WIRE = 255

# owner, type, TTL, labels, canonical rdata (sorted)
SigKey = tuple[Name, int, int, int, tuple[bytes, ...]]


class _Plain(DNSBuffer):  # type: ignore[misc]  # dnslib has no types
    """A buffer that never compresses names: the canonical form (RFC 4034 6.2) and the
    form RRSIG and NSEC data must have on the wire."""

    def encode_name(self, name: object) -> None:
        self.encode_name_nocompress(name)


def canonical_rdata(rd: RD) -> bytes:
    buf = _Plain()
    rd.pack(buf)
    return bytes(buf.data)


def _name_of(label: DNSLabel) -> Name:
    return tuple(x.lower() for x in label.label)


def type_bitmap(types: Sequence[int]) -> bytes:
    """RFC 4034 4.1.2 windows."""
    windows: dict[int, bytearray] = {}
    for t in sorted(set(types)):
        bits = windows.setdefault(t >> 8, bytearray(32))
        bits[(t & 0xFF) >> 3] |= 0x80 >> (t & 7)
    out = bytearray()
    for w in sorted(windows):
        bits = windows[w].rstrip(b"\x00")
        out += bytes((w, len(bits))) + bits
    return bytes(out)


def epoch_of(now: float) -> int:
    return int(now) // DAY


class Signer:
    """One signed zone's keys and signature cache."""

    def __init__(self, origin: Name, keys: list[ZoneKey], *, dnskey_ttl: int,
                 algorithm: int = 13, key_file: str | None = None,
                 serial: int | None = None) -> None:
        self.origin = origin
        self.keys = list(keys)
        self.dnskey_ttl = dnskey_ttl
        self.algorithm = algorithm     # of the keys a rollover makes
        self.key_file = key_file       # where a rollover saves the keys (lbcdn.dns.keys)
        self.serial = serial           # the last served SOA serial saved there
        self._signer_wire = to_wire(origin)
        self._cache: dict[SigKey, tuple[RR, ...]] = {}
        self._epoch = -1

    def set_keys(self, keys: Sequence[ZoneKey]) -> None:
        self.keys = list(keys)
        self._cache.clear()

    def dnskeys(self) -> list[bytes]:
        return [k.dnskey for k in self.keys]

    # -- signatures ----------------------------------------------------------------------

    def rrsigs(self, owner: Name, rtype: int, ttl: int, rdatas: Sequence[bytes],
               now: float) -> tuple[RR, ...]:
        """RRSIG records over one RRset (canonical rdata), one per key, cached per day."""
        epoch = epoch_of(now)
        if epoch != self._epoch:
            self._cache.clear()
            self._epoch = epoch
        rset = tuple(sorted(set(rdatas)))
        # RFC 4034 3.1.3: a wildcard owner's `*` is not counted (validators expand it)
        nlabels = len(owner) - (1 if owner[:1] == (b"*",) else 0)
        key = (owner, rtype, ttl, nlabels, rset)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        start = epoch * DAY
        inception, expiration = start - BACKDATE_S, start + VALIDITY_S
        owner_wire = to_wire(owner)
        body = b"".join(owner_wire + struct.pack("!HHIH", rtype, CLASS_IN, ttl, len(rd)) + rd
                        for rd in rset)
        label = DNSLabel(owner)
        out = []
        for k in self.keys:
            head = struct.pack("!HBBIIIH", rtype, k.algorithm, nlabels, ttl,
                               expiration % 2**32, inception % 2**32, k.tag) + self._signer_wire
            out.append(RR(label, T_RRSIG, CLASS_IN, ttl, RD(head + k.sign(head + body))))
        return remember(self._cache, key, tuple(out), MAX_CACHED)

    def _sign_rrs(self, rrs: Sequence[RR], now: float) -> list[RR]:
        """`rrs` with an RRSIG set after each RRset (consecutive records of one owner and
        type), each signed for the owner it has (a wildcard expansion for the query name)."""
        out: list[RR] = []
        i = 0
        while i < len(rrs):
            first = rrs[i]
            j = i + 1
            while j < len(rrs) and rrs[j].rtype == first.rtype and rrs[j].rname == first.rname:
                j += 1
            group = rrs[i:j]
            out.extend(group)
            if first.rtype != T_RRSIG:
                owner = _name_of(first.rname)
                out.extend(self.rrsigs(owner, first.rtype, first.ttl,
                                       [canonical_rdata(rr.rdata) for rr in group], now))
            i = j
        return out

    # -- denial --------------------------------------------------------------------------

    def nsec(self, name: Name, types: Sequence[int] | None, ttl: int) -> RR:
        """The compact-denial NSEC at `name`: types there (None: the name does not exist)."""
        bitmap = [T_RRSIG, T_NSEC, *(types if types is not None else (T_NXNAME,))]
        nxt = (b"\x00", *name)
        if len(to_wire(nxt)) > MAX_WIRE:
            # No room for a child label: nothing can exist below a name this long, so
            # "nothing up to the end of the zone" is as true for it.
            nxt = self.origin
        return RR(DNSLabel(name), T_NSEC, CLASS_IN, ttl, RD(to_wire(nxt) + type_bitmap(bitmap)))

    # -- answers -------------------------------------------------------------------------

    def secure(self, zone: Zone, answer: list[RR], authority: list[RR], rcode: int,
               denied: tuple[Name, tuple[int, ...] | None] | None, qname: Name, qtype: int,
               do: bool, now: float, compact_ok: bool = False) -> tuple[list[RR], list[RR], int]:
        """(answer, authority, rcode) for an answer from this signed zone. `denied`: the name
        an NXDOMAIN or NODATA is about and its types (None: it does not exist); `compact_ok`:
        the query's CO flag."""
        ttl = zone.negative_ttl
        if denied is not None and denied[0] == qname and denied[1] is not None:
            if qtype == T_NSEC:
                nsec = [self.nsec(qname, denied[1], ttl)]
                return self._sign_rrs(nsec, now) if do else nsec, [], rcode
            node = zone.node(qname)
            if qtype == T_RRSIG and node:
                sigs: list[RR] = []
                for rtype in sorted(node):
                    set_ttl, values = policy.static_values(node[rtype])
                    sigs.extend(self.rrsigs(qname, rtype, set_ttl,
                                            [canonical_rdata(v.rd) for v in values], now))
                return sigs, [], rcode
        if not do:
            return answer, authority, rcode
        signed_answer = self._sign_rrs(answer, now)
        auth: list[RR] = []
        for rr in authority:
            auth.append(rr)
            owner = _name_of(rr.rname)
            if rr.rtype == T_SOA:
                auth.extend(self.rrsigs(owner, T_SOA, rr.ttl, [canonical_rdata(rr.rdata)], now))
        cuts = {_name_of(rr.rname) for rr in authority if rr.rtype == T_NS}
        for cut in sorted(cuts - {self.origin}):
            # A referral: the cut has no DS, so the child is insecure.
            auth.extend(self._sign_rrs([self.nsec(cut, (T_NS,), ttl)], now))
        if denied is not None:
            auth.extend(self._sign_rrs([self.nsec(denied[0], denied[1], ttl)], now))
            if not compact_ok:
                rcode = 0   # RFC 9824: the NSEC says NXDOMAIN (NXNAME); the rcode is NOERROR
        return signed_answer, auth, rcode

    # -- transfers -----------------------------------------------------------------------

    def sign_transfer(self, records: list[RR], cuts: frozenset[Name], negative_ttl: int,
                      now: float) -> list[RR]:
        """The zone's records (SOA first and last, RRsets together) with an NSEC chain and
        RRSIGs added, for AXFR."""
        soa = records[0]
        body = records[1:-1]
        by_name: dict[Name, list[RR]] = {}
        for rr in [soa, *body]:
            by_name.setdefault(_name_of(rr.rname), []).append(rr)
        # Occluded names (below a cut) are glue: no NSEC, no signatures.
        names = sorted((n for n in by_name if not any(
            is_subdomain(n, c) and n != c for c in cuts)), key=lambda n: n[::-1])
        out: list[RR] = []
        for i, name in enumerate(names):
            rrs = by_name[name]
            nxt = names[(i + 1) % len(names)]
            types = {rr.rtype for rr in rrs}
            if name in cuts:
                types &= {T_NS}
            bitmap = type_bitmap([*types, T_RRSIG, T_NSEC])
            rrs = rrs + [RR(DNSLabel(name), T_NSEC, CLASS_IN, negative_ttl,
                            RD(to_wire(nxt) + bitmap))]
            if name in cuts:
                signed = [rr for rr in rrs if rr.rtype != T_NSEC] + self._sign_rrs(
                    [rrs[-1]], now)
            else:
                signed = self._sign_rrs(rrs, now)
            out.extend(signed)
        glue = [rr for n, rrs in by_name.items() if n not in names for rr in rrs]
        return [*out, *glue, soa]
