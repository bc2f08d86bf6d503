"""The answer engine: one wire-format query in, one wire-format response out (no I/O).

Job: everything issue 6's "Protocol, exactly" asks of an authoritative server, over the
zones it is given, with routing policies read from a HealthView; plus what the network half
needs around it (cache keys, a version to invalidate prepared answers, AXFR records) and
atomic change batches (changes.py) with optional persistence.

Rules:
- Answers: AA on authoritative data; NXDOMAIN vs NODATA with the SOA in authority at the
  negative TTL (RFC 2308); CNAME chains followed inside the zone, the rcode that of the last
  name (RFC 6604); wildcards per RFC 4592 (not across empty non-terminals); referrals
  without AA, with in-zone glue that is never dropped (TC instead); DS at a delegation point
  answered by the parent side; REFUSED, RA clear, outside every zone and for classes other
  than IN and ANY (QCLASS ANY is answered as IN, as Knot does; RFC 1035 3.2.5); ANY answered
  with one RRset (RFC 8482); types the name lacks -> NODATA.
- Header: id, opcode, RD and CD copied; QR set; RA, Z and AD clear.
- EDNS(0): an OPT answers an OPT, FORMERR and NOTIMP replies included (DO copied, our payload
  size = max_udp); version > 0 -> BADVERS. Options: NSID (RFC 5001) answered with `nsid`
  when set; REFUSED and SERVFAIL carry an Extended DNS Error (RFC 8914: 20 Not
  Authoritative, 0 Other for a failure); others ignored. UDP limit: min(client payload,
  max_udp), 512 without EDNS, never below 512. Too big: first optional additional records are dropped, then everything but
  the question and OPT is dropped and TC set. TCP: no limit but 65535.
- The question is answered in the client's case: the response is built for the lower-cased
  name (so every spelling gets the same bytes) and the query's name bytes are copied over
  the question; owner names are compression pointers into it and follow.
- TSIG (RFC 8945): a signed query is checked with `tsig_keys` (tsig.py), never prepared for
  replay; a good one is answered as unsigned and the answer signed, a bad one gets the TSIG
  error reply. The size limit counts the TSIG record: a signed answer that does not fit
  with it is truncated as above and still signed (RFC 8945 5.3) (logged sparsely: UDP senders can be spoofed).
- Client-dependent routing (cidr, geolocation, geoproximity; policy.py): the client is the
  query's ECS option (RFC 7871) or else the `client` source address given to answer/prepare.
  An answer that read such a policy is never prepared for replay (it is computed per query,
  like a random pick), so no cache can give one client's answer to another. A query with
  ECS gets ECS back with SCOPE PREFIX-LENGTH set: the policy's scope, or 0 when the answer
  does not depend on the subnet. A client-dependent set with nothing for the client (no
  match, no default) answers NODATA, as Route 53 does.
- Rotation: `answer()` gives each simple set's rotations in turn (a counter per set).
- Prepared answers: `prepare()` gives every answer a query can get while `version` stays, for
  the fast path to replay under `cacheable_key(query)`: one when the answer is fixed; when it
  reads a simple set whose order rotates, all its rotations (index k = turn k), to be sent in
  turn; only one, marked not to be replayed, when it involves a random pick (weighted,
  multivalue: computed every time, so weights hold per query as in Route 53), an engine
  failure, or more than MAX_ROTATIONS rotations. How an answer varies is learnt while
  building it, from the record sets it reads (its CNAME chain and the final set; additional
  and authority data come from health-independent static values): a rotating set at a name
  does not make the other types there vary.
- Signed zones (lbcdn.dns.dnssec): the DNSKEY set is put at the apex; `Signer.secure` adds
  signatures and denial to each answer, so prepared answers hold them too. `version` also
  changes with the signing day (`refresh_signatures`) and with the keys (`set_keys`).
- `version` changes on every zone change, and on every health change the engine learns of:
  `health_changed()`, `poll_health()`, or a `generation` attribute on the HealthView that
  changes with every transition (read on each `version` access). Versions come from one
  process-wide counter, so a new Engine never reuses an old number.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import dnslib
from dnslib import DNSKEY, EDNS0, RR, DNSBuffer, DNSLabel, EDNSOption

from lbcdn.dns import policy, tsig
from lbcdn.dns.changes import (Change, ChangeError, ChangeStore, Overlay, apply_batch, replay,
                               update_overlay)
from lbcdn.dns.dnssec import T_DNSKEY, Signer, epoch_of
from lbcdn.dns.fastpath import Prepared
from lbcdn.dns.keys import ZoneKey, roll
from lbcdn.dns.keys import save as save_keys
from lbcdn.dns.locate import CidrCollection, GeoDatabase, client_of, client_of_ecs
from lbcdn.dns.names import Name, is_subdomain
from lbcdn.dns.policy import CLIENT_POLICIES, HealthView, Where
from lbcdn.dns.rdata import target_of
from lbcdn.dns.zone import (T_A, T_AAAA, T_CNAME, T_NS, T_SOA, AliasDirectory, RecordSet,
                            Value, Zone, ZoneError, generate_ptrs, zone_origin)
from lbcdn.dns.wire import (EDE_NOT_AUTHORITATIVE, EDE_OTHER, EDNS_CO, FORMERR, OPT_ECS,
                            OPT_EDE, OPT_NSID, Query, cache_key, ecs_reply, ede_data, parse_query)

__all__ = ["Engine", "HealthView", "Change", "ChangeError", "Prepared"]

log = logging.getLogger("lbcdn.dns.engine")

NOERROR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS = 0, 2, 3, 4, 5, 16
T_MX, T_SRV, T_DS, T_IXFR, T_AXFR, T_ANY = 15, 33, 43, 251, 252, 255
CLASS_IN, CLASS_ANY = 1, 255
EDNS_CAP = 1232          # RFC 9715 / DNS flag day 2020: no fragmentation
MAX_CHAIN = 12           # CNAMEs followed before giving up (loops end earlier)
TCP_MAX = 65535
# RFC 8482: one RRset for ANY. This order favours what ANY askers usually want.
ANY_ORDER = (T_CNAME, T_A, T_AAAA, T_MX, 16, T_SRV, 257, 12, T_NS, T_SOA)
META_TYPES = frozenset({T_IXFR, T_AXFR, 253, 254})  # transfers and MAILA/MAILB
# Rotations prepared per question: building them costs one answer each after every version
# change, and a set that large is truncated over UDP anyway.
MAX_ROTATIONS = 64

_VERSIONS = itertools.count(1)


@dataclass
class _Answer:
    rcode: int = NOERROR
    aa: bool = True
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    required: list[RR] = field(default_factory=list)   # glue: TC rather than drop
    optional: list[RR] = field(default_factory=list)   # may be dropped to fit
    period: int = 1        # turns after which the answer repeats (policy.Selection.period)
    replay: bool = True    # False: a random pick or a failure went into it
    ede: int = -1          # Extended DNS Error code for the OPT (RFC 8914); -1: none
    # NXDOMAIN/NODATA: the name it is about and the types there (None: no such name)
    denied: tuple[Name, tuple[int, ...] | None] | None = None
    scope: int = -1        # ECS scope of a client-dependent answer; -1: not dependent


class _AllHealthy:
    def is_healthy(self, check_id: str) -> bool:
        return True


def _rrs(owner: DNSLabel, rtype: int, ttl: int, values: Sequence[Value]) -> list[RR]:
    return [RR(owner, rtype, CLASS_IN, ttl, v.rd) for v in values]


class Engine:
    def __init__(self, zones: Sequence[Zone], health: HealthView, rng: random.Random | None = None,
                 *, store: ChangeStore | None = None, aliases: AliasDirectory | None = None,
                 clock: Callable[[], float] = time.time, tsig_keys: tsig.Keyring | None = None,
                 nsid: bytes = b"", signers: Mapping[Name, Signer] | None = None,
                 cidr_collections: Sequence[CidrCollection] = (),
                 geo: GeoDatabase | None = None) -> None:
        self._health = health
        self._collections = {c.name: c for c in cidr_collections}
        self._geo = geo
        self._tsig_keys: tsig.Keyring = tsig_keys or {}
        self._nsid = nsid
        self._tsig_refusals = tsig.SparseLog(log)
        self._signers = dict(signers or {})
        self._rng = rng or random.Random()
        self._store = store
        self._aliases = aliases
        self._clock = clock
        self._turns: dict[tuple[Name, int], int] = {}
        self._zones: dict[Name, Zone] = {}
        self._overlays: dict[Name, Overlay] = {}
        self.restore_problems: list[str] = []
        zone_list = list(zones)
        if store is not None:
            zone_list = [self._restore(z, store) for z in zone_list]
        generate_ptrs(zone_list)
        for z in zone_list:
            if z.origin in self._zones:
                raise ZoneError([f"zone {z.name} given twice"])
            self._zones[z.origin] = z
        for origin, signer in self._signers.items():
            self._publish_keys(origin, signer)
            self._continue_serial(origin, signer)
        self._save_serials()
        self._epoch = epoch_of(clock())
        self._version = next(_VERSIONS)
        self._seen_generation: object = getattr(health, "generation", None)
        self._health_snapshot: dict[str, bool] = {}
        self._derive()

    # -- state -----------------------------------------------------------------------------

    def _restore(self, zone: Zone, store: ChangeStore) -> Zone:
        try:
            overlay = store.load(zone.name)
        except ChangeError as e:
            self.restore_problems.extend(f"{zone.name}: {p}" for p in e.problems)
            return zone
        if overlay is None:
            return zone
        restored, kept, problems = replay(zone, overlay, aliases=self._aliases,
                                          now=self._clock())
        self.restore_problems.extend(f"{zone.name}: {p}" for p in problems)
        self._overlays[zone.origin] = kept
        return restored

    def _bump(self) -> None:
        self._version = next(_VERSIONS)
        self._save_serials()

    def _continue_serial(self, origin: Name, signer: Signer) -> None:
        """A signed zone's serial goes on from the last one served (saved with its keys)
        when that is not below the built one: its signatures, at least, are new, and a
        fixed `soa.serial` would otherwise undo every bump since it was set."""
        zone = self._zones[origin]
        if signer.serial is not None and signer.serial >= zone.serial:
            zone.set_serial((signer.serial + 1) % 2**32)

    def _save_serials(self) -> None:
        """Save a signed zone's serial with its keys whenever it changed (rarely: changes,
        rollovers, a new signing day), so a restart goes on from it."""
        for origin, signer in self._signers.items():
            serial = self._zones[origin].serial
            if serial == signer.serial or signer.key_file is None:
                continue
            try:
                save_keys(signer.key_file, signer.keys, serial)
            except OSError as e:
                log.warning("dns: cannot save the serial of %s: %s", self._zones[origin].name, e)
                continue
            signer.serial = serial

    @property
    def version(self) -> int:
        """Changes whenever zones or health may change what answers say."""
        gen = getattr(self._health, "generation", None)
        if gen != self._seen_generation:
            self._seen_generation = gen
            self._bump()
        return self._version

    def health_changed(self) -> None:
        """Tell the engine a health state changed (prepared answers must go)."""
        self._bump()

    def refresh_signatures(self) -> bool:
        """Call now and then (lbcdn.dns.runtime does, every minute): on a new signing day,
        drop the prepared answers so their signatures are made afresh. True if it did."""
        now = self._clock()
        epoch = epoch_of(now)
        if epoch == self._epoch:
            return False
        self._epoch = epoch
        for origin, signer in self._signers.items():
            self._publish_keys(origin, signer, now)
        self._bump()
        return True

    def signer(self, zone: str) -> Signer | None:
        """The zone's signer; None for an unsigned zone. KeyError when not served."""
        origin = zone_origin(zone)
        if origin not in self._zones:
            raise KeyError(f"not a served zone: {zone}")
        return self._signers.get(origin)

    def roll_keys(self, zone: str, step: str, now: float) -> list[ZoneKey]:
        """One key rollover step ("start" | "finish", lbcdn.dns.keys.roll) of a signed zone:
        saved, then published and used. KeyError for a zone not served or not signed;
        DnssecKeyError for a step out of order; OSError when the keys cannot be saved."""
        signer = self.signer(zone)
        if signer is None or signer.key_file is None:
            raise KeyError(f"zone {zone} is not signed")
        keys = roll(signer.key_file, signer.keys, step, signer.algorithm, now, signer.serial)
        self.set_keys(zone, keys)
        return keys

    def set_keys(self, zone: str, keys: Sequence[ZoneKey]) -> None:
        """New keys for a signed zone (a rollover step): published and used from the next
        answer."""
        signer = self.signer(zone)
        if signer is None:
            raise KeyError(f"zone {zone} is not signed")
        signer.set_keys(keys)
        self._publish_keys(signer.origin, signer, self._clock())
        self._bump()

    def _publish_keys(self, origin: Name, signer: Signer, resigned: float | None = None) -> None:
        """Put the signer's DNSKEY set at the apex. `resigned`: the signatures a secondary
        holds are outdated (new keys, new signing day): a new serial makes it transfer again
        (and the Notifier tell it)."""
        zone = self._zones[origin].copy()
        zone.put(RecordSet(origin, T_DNSKEY, signer.dnskey_ttl,
                           tuple(Value.of(DNSKEY(int.from_bytes(k[:2], "big"), k[2], k[3], k[4:]))
                                 for k in signer.dnskeys())))
        zone.finish()
        if resigned is not None:
            zone.bump_serial(resigned)
        self._zones[origin] = zone

    def poll_health(self) -> bool:
        """Compare every health check the zones use with the last poll; bump the version and
        return True when one changed. For HealthViews without `generation`."""
        snap = {c: self._health.is_healthy(c) for c in sorted(self._checks)}
        if snap != self._health_snapshot:
            self._health_snapshot = snap
            self._bump()
            return True
        return False

    @property
    def health(self) -> HealthView:
        """What the routing policies read (lbcdn.dns.view shows it per record set)."""
        return self._health

    @property
    def zones(self) -> list[Zone]:
        return list(self._zones.values())

    def _derive(self) -> None:
        """Recompute which health checks the zones use (poll_health compares them)."""
        checks: set[str] = set()
        by_client = False
        for zone in self._zones.values():
            for rs in zone.record_sets():
                checks |= policy.health_checks((rs,))
                by_client = by_client or rs.policy in CLIENT_POLICIES
        self._checks = checks
        self._by_client = by_client

    # -- lookups -------------------------------------------------------------------------

    def zone_for(self, name: str) -> Zone | None:
        """The served zone with the longest origin containing `name` (text form)."""
        try:
            key = zone_origin(name)
        except ValueError:
            return None
        return self._zone_for(key)

    def _zone_for(self, name: Name) -> Zone | None:
        zones = self._zones
        for k in range(len(name), -1, -1):
            z = zones.get(name[len(name) - k:] if k else ())
            if z is not None:
                return z
        return None

    def axfr_records(self, zone_name: str) -> list[RR]:
        """Every record of the zone, SOA first and last. Routing-policy sets appear in their
        health-independent form (policy.static_values). KeyError when not served."""
        zone = self._zones.get(zone_origin(zone_name))
        if zone is None:
            raise KeyError(f"not a served zone: {zone_name}")
        soa_set = zone.soa_set
        soa = _rrs(DNSLabel(zone.origin), T_SOA, soa_set.ttl, soa_set.values)
        out = list(soa)
        for name in sorted(zone.names(), key=lambda n: n[::-1]):
            node = zone.node(name) or {}
            owner = DNSLabel(name)
            for rtype in sorted(node):
                if rtype == T_SOA and name == zone.origin:
                    continue
                ttl, values = policy.static_values(node[rtype])
                out.extend(_rrs(owner, rtype, ttl, values))
        out.extend(soa)
        signer = self._signers.get(zone.origin)
        if signer is not None:
            return signer.sign_transfer(out, zone.cuts, zone.negative_ttl, self._clock())
        return out

    # -- changes -------------------------------------------------------------------------

    def apply_changes(self, zone: str, changes: list[Change]) -> None:
        """Apply a change batch to one zone: all or nothing, visible to the next query,
        persisted before it is visible when a store is set. Raises ChangeError."""
        try:
            origin = zone_origin(zone)
        except ValueError as e:
            raise ChangeError([str(e)]) from None
        current = self._zones.get(origin)
        if current is None:
            raise ChangeError([f"not a served zone: {zone}"])
        new = apply_batch(current, changes, aliases=self._aliases, now=self._clock())
        problems = policy.routing_problems(new.record_sets(), self._collections,
                                           self._geo is not None)
        if problems:
            raise ChangeError(problems)
        zones = [new if z.origin == origin else z for z in self._zones.values()]
        generate_ptrs(zones, now=self._clock())
        if self._store is not None:
            overlay = self._overlays.get(origin) or Overlay(new.serial, {})
            overlay = update_overlay(overlay, changes, new)
            try:
                self._store.save(new.name, overlay)
            except OSError as e:
                raise ChangeError([f"cannot save the change: {e.strerror or e}"]) from None
            self._overlays[origin] = overlay
        self._zones = {z.origin: z for z in zones}
        self._derive()
        self._bump()

    # -- CIDR collections ----------------------------------------------------------------

    @property
    def cidr_collections(self) -> list[CidrCollection]:
        return list(self._collections.values())

    def set_cidr_collection(self, name: str, collection: CidrCollection | None) -> None:
        """Create or replace (None: delete) a CIDR collection, visible to the next query.
        ChangeError when a record set would lose its collection or location."""
        collections = dict(self._collections)
        if collection is None:
            collections.pop(name, None)
        else:
            collections[name] = collection
        problems = [p for z in self._zones.values()
                    for p in policy.routing_problems(z.record_sets(), collections,
                                                     self._geo is not None)]
        if problems:
            raise ChangeError(problems)
        self._collections = collections
        self._bump()

    # -- answering -----------------------------------------------------------------------

    def cacheable_key(self, query: bytes) -> bytes | None:
        """Key under which `prepare(query)`'s answers, when replayable, may be stored and
        replayed (patching the id, and copying the query's question bytes over the stored
        question, equal but for ASCII case) while `version` is unchanged; None for a query
        answered with an error or silence. Transport and max_udp are not in the key: keep one
        table per transport and pass one max_udp per Engine."""
        q = parse_query(query)
        if q is None or q.error or q.question is None or q.tsig:
            return None
        return cache_key(q)

    def answer(self, query: bytes, *, tcp: bool, max_udp: int = 512,
               client: str = "") -> bytes | None:
        """Full processing of one wire-format query -> wire-format response, or None = send
        nothing (unreadable header, or the packet is a response); `client`: the source
        address. See the module rules."""
        q = self._parse(query)
        if q is not None and q.tsig:
            return self._signed(q, query, tcp, max_udp, client)
        return None if q is None else self._respond(q, tcp, max_udp, None, client)[0]

    def prepare(self, query: bytes, *, tcp: bool, max_udp: int = 512,
                client: str = "") -> Prepared | None:
        """Every answer to `query` under the current version, in turn order, or None = send
        nothing; see "Prepared answers" in the module rules."""
        q = self._parse(query)
        if q is None:
            return None
        if q.tsig:
            signed = self._signed(q, query, tcp, max_udp, client)
            return None if signed is None else Prepared((signed,), replay=False)
        out, ans = self._respond(q, tcp, max_udp, 0, client)
        if not ans.replay or ans.period > MAX_ROTATIONS:
            if ans.period > 1:  # rotations inside it still take turns, per set
                out, _ = self._respond(q, tcp, max_udp, None, client)
            return Prepared((out,), replay=False)
        rest = (self._respond(q, tcp, max_udp, k)[0] for k in range(1, ans.period))
        return Prepared((out, *rest), replay=True)

    def _signed(self, q: Query, query: bytes, tcp: bool, max_udp: int,
                client: str) -> bytes | None:
        now = self._clock()
        verdict = tsig.verify(query, q.tsig, self._tsig_keys, now)
        if verdict.error:
            self._tsig_refusals.warning("dns: TSIG %s for a query signed with key %s",
                                        tsig.ERROR_NAMES[verdict.error], verdict.key_text)
            return tsig.error_reply(verdict, now, max_udp=max_udp)
        plain = self._parse(verdict.message)
        if plain is None:
            return None
        assert verdict.key is not None   # verify found it: the error is NOERROR
        reply = self._respond(plain, tcp, max_udp, None, client,
                              reserve=tsig.record_size(verdict.key))[0]
        return tsig.sign_replies([reply], verdict, now)[0]

    @staticmethod
    def _parse(query: bytes) -> Query | None:
        try:
            return parse_query(query)
        except (IndexError, ValueError):  # the reader is total; this is a last guard
            return None

    def _respond(self, q: Query, tcp: bool, max_udp: int, turn: int | None,
                 client: str = "", reserve: int = 0) -> tuple[bytes, _Answer]:
        """The response to `q` with every rotating set at `turn` (None: each set's own
        counter), and the _Answer that says how it varies; `reserve`: bytes of the size limit
        kept for a record added later (a TSIG)."""
        try:
            ans = self._outcome(q, turn, self._where(q, client) if self._by_client else None)
            return self._pack(q, ans, tcp, max_udp, reserve), ans
        except Exception:  # a bug must cost one SERVFAIL, not the server
            log.exception("dns: answering failed")
            ans = _Answer(rcode=SERVFAIL, aa=False, replay=False, ede=EDE_OTHER)
            return self._pack(q, ans, tcp, max_udp, reserve), ans

    def _where(self, q: Query, client: str) -> Where:
        ecs = q.edns.ecs if q.edns is not None else b""
        who = client_of_ecs(ecs) if ecs else client_of(client)
        return Where(who, self._collections, self._geo)

    def _outcome(self, q: Query, turn: int | None, where: Where | None) -> _Answer:
        if q.error:
            return _Answer(rcode=q.error, aa=False)
        if q.edns is not None and q.edns.version != 0:
            return _Answer(rcode=BADVERS, aa=False)
        if q.qtype in META_TYPES:
            return _Answer(rcode=NOTIMP, aa=False)
        if q.qtype in (41, 128):  # OPT is not a question; nor NXNAME (RFC 9824 3.5)
            return _Answer(rcode=FORMERR, aa=False)
        zone = self._zone_for(q.qname) if q.qclass in (CLASS_IN, CLASS_ANY) else None
        if zone is None:
            return _Answer(rcode=REFUSED, aa=False, ede=EDE_NOT_AUTHORITATIVE)
        ans = self._resolve(zone, q.qname, q.qtype, turn, where)
        signer = self._signers.get(zone.origin)
        if signer is not None:
            ans.answer, ans.authority, ans.rcode = signer.secure(
                zone, ans.answer, ans.authority, ans.rcode, ans.denied, q.qname, q.qtype,
                q.edns is not None and q.edns.do, self._clock(),
                compact_ok=q.edns is not None and q.edns.co)
        return ans
        return self._resolve(zone, q.qname, q.qtype, turn, where)

    def _select(self, group: Sequence[RecordSet], ans: _Answer, turn: int | None,
                where: Where | None) -> tuple[int, list[Value]]:
        """policy.select at `turn`, or (None) at the set's own counter, advanced when the set
        rotates; notes in `ans` how the selection varies."""
        if turn is None:
            k = (group[0].name, group[0].rtype)
            own = self._turns.get(k, 0)
            sel = policy.select(group, self._health, self._rng, own, where)
            if sel.period is not None and sel.period > 1:
                self._turns[k] = own + 1
        else:
            sel = policy.select(group, self._health, self._rng, turn, where)
        if sel.scope >= 0:
            ans.replay = False
            ans.scope = max(ans.scope, sel.scope)
        if sel.period is None:
            ans.replay = False
        else:
            ans.period = math.lcm(ans.period, sel.period)
        return sel.ttl, sel.values

    def _resolve(self, zone: Zone, qname: Name, qtype: int, turn: int | None,
                 where: Where | None) -> _Answer:
        ans = _Answer()
        name = qname
        seen = {qname}
        for hop in range(MAX_CHAIN + 1):
            cut = zone.cut_for(name)
            if cut is not None and not (qtype == T_DS and cut == name):
                self._referral(zone, cut, ans)
                ans.aa = hop > 0  # after a CNAME the answer part is still ours
                return ans
            owner = DNSLabel(name)
            node = zone.node(name)
            if node is None:
                if not zone.exists(name):
                    node = self._wildcard(zone, name)
                    if node is None:
                        ans.rcode = NXDOMAIN
                        self._negative(zone, ans, name, None)
                        return ans
                else:
                    self._negative(zone, ans, name, ())   # empty non-terminal: NODATA
                    return ans
            if qtype == T_ANY:
                for rtype in (*ANY_ORDER, *sorted(node)):
                    if rtype in node:
                        ttl, values = self._select(node[rtype], ans, turn, where)
                        ans.answer.extend(_rrs(owner, rtype, ttl, values))
                        break
                return ans
            group = node.get(qtype)
            if group:
                ttl, values = self._select(group, ans, turn, where)
                if not values:   # a client-dependent set with nothing for this client
                    # NODATA: for this client the name has every type but this one
                    self._negative(zone, ans, name, tuple(t for t in node if t != qtype))
                    return ans
                ans.answer.extend(_rrs(owner, qtype, ttl, values))
                self._additional(zone, values, ans)
                return ans
            cname = node.get(T_CNAME)
            if cname and qtype != T_CNAME:
                ttl, values = self._select(cname, ans, turn, where)
                ans.answer.extend(_rrs(owner, T_CNAME, ttl, values[:1]))
                target = target_of(values[0].rd) if values else None
                if target is None or target in seen or not is_subdomain(target, zone.origin):
                    return ans
                seen.add(target)
                name = target
                continue
            self._negative(zone, ans, name, tuple(node))
            return ans
        return ans

    def _wildcard(self, zone: Zone, name: Name) -> dict[int, tuple[RecordSet, ...]] | None:
        """RFC 4592: the `*` child of the closest encloser, if it exists."""
        if not zone.has_wildcards:
            return None
        for k in range(1, len(name) - len(zone.origin) + 1):
            encloser = name[k:]
            if zone.exists(encloser):
                return zone.node((b"*", *encloser))
        return None

    def _negative(self, zone: Zone, ans: _Answer, name: Name,
                  types: tuple[int, ...] | None) -> None:
        ans.denied = (name, types)
        soa_set = zone.soa_set
        ans.authority.extend(_rrs(DNSLabel(zone.origin), T_SOA, zone.negative_ttl,
                                  soa_set.values))

    def _referral(self, zone: Zone, cut: Name, ans: _Answer) -> None:
        ttl, values = policy.static_values(zone.group(cut, T_NS))
        ans.authority.extend(_rrs(DNSLabel(cut), T_NS, ttl, values))
        for v in values:
            target = target_of(v.rd)
            if target is None or not is_subdomain(target, zone.origin):
                continue
            # Glue under the cut is required to reach the child; other in-zone addresses
            # are a courtesy that may be dropped.
            into = ans.required if is_subdomain(target, cut) else ans.optional
            self._addresses(zone, target, into, glue=True)

    def _additional(self, zone: Zone, values: Sequence[Value], ans: _Answer) -> None:
        for v in values:
            if isinstance(v.rd, (dnslib.MX, dnslib.SRV, dnslib.NS)):
                target = target_of(v.rd)
                if target is not None and is_subdomain(target, zone.origin):
                    self._addresses(zone, target, ans.optional, glue=False)

    def _addresses(self, zone: Zone, target: Name, into: list[RR], *, glue: bool) -> None:
        if not glue and zone.cut_for(target) is not None:
            return  # occluded: below a delegation, only a referral may use it
        node = zone.node(target)
        if not node:
            return
        owner = DNSLabel(target)
        for rtype in (T_A, T_AAAA):
            if rtype in node:
                ttl, values = policy.static_values(node[rtype])
                for rr in _rrs(owner, rtype, ttl, values):
                    if rr not in into:
                        into.append(rr)

    # -- building the response -----------------------------------------------------------

    def _pack(self, q: Query, ans: _Answer, tcp: bool, max_udp: int, reserve: int = 0) -> bytes:
        if tcp:
            limit = TCP_MAX
        elif q.edns is None:
            limit = 512
        else:
            limit = max(512, min(q.edns.payload, max_udp))
        limit -= reserve
        opt: list[RR] = []
        if q.edns is not None:
            options = []
            if ans.ede >= 0:
                options.append(EDNSOption(OPT_EDE, ede_data(ans.ede)))
            if q.edns.nsid and self._nsid:
                options.append(EDNSOption(OPT_NSID, self._nsid))
            if q.edns.ecs and ans.rcode != FORMERR:
                options.append(EDNSOption(OPT_ECS, ecs_reply(q.edns.ecs, max(ans.scope, 0))))
            opt = [EDNS0(udp_len=max(512, max_udp), ext_rcode=ans.rcode >> 4,
                         flags="do" if q.edns.do else "", opts=options)]
            if q.edns.co:
                opt[0].ttl |= EDNS_CO   # we give compact answers that say NXDOMAIN
        out = self._build(q, ans, ans.required + ans.optional + opt, False)
        if len(out) > limit and ans.optional:
            out = self._build(q, ans, ans.required + opt, False)
        if len(out) > limit:
            out = self._build(q, _Answer(rcode=ans.rcode, aa=ans.aa), opt, True)
        return out

    def _build(self, q: Query, ans: _Answer, additional: list[RR], tc: bool) -> bytes:
        flags = 0x8000 | (q.flags & 0x7800) | (q.flags & 0x0100) | (q.flags & 0x0010)
        if ans.aa:
            flags |= 0x0400
        if tc:
            flags |= 0x0200
        flags |= ans.rcode & 0xF
        has_q = q.question is not None
        header = (q.id.to_bytes(2, "big") + flags.to_bytes(2, "big")
                  + (1 if has_q else 0).to_bytes(2, "big")
                  + len(ans.answer).to_bytes(2, "big")
                  + len(ans.authority).to_bytes(2, "big")
                  + len(additional).to_bytes(2, "big"))
        buf = DNSBuffer(header)
        buf.offset = len(header)
        if has_q and q.question is not None:
            # Lower-cased, so every spelling of the name gets the same bytes and compression
            # pointers; the client's spelling is copied back in below.
            buf.encode_name(DNSLabel(q.qname))
            buf.append(q.question[q.qname_len:])
        for rr in ans.answer:
            rr.pack(buf)
        for rr in ans.authority:
            rr.pack(buf)
        for rr in additional:
            rr.pack(buf)
        out = bytes(buf.data)
        if has_q and q.question is not None:
            out = out[:12] + q.question[:q.qname_len] + out[12 + q.qname_len:]
        return out
