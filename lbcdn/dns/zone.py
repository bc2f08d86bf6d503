"""The zone model: record sets by owner name and type, and how zones are built from config.

Job: hold one hosted zone in the shape the answer engine reads (owner -> type -> record
sets), know its delegation points and empty non-terminals, check its consistency, and build
it from a `ZoneConfig` (YAML records, an optional master file, generated SOA and NS).

Rules:
- Names are `Name` tuples, already lower-case: lookups are case-insensitive by construction.
- A zone is changed only through `copy()` + `put`/`remove` + `finish()`; the engine swaps
  whole zones, so a reader never sees half a change.
- One (owner, type) holds either one simple record set or several sets of one routing policy,
  told apart by set identifier. A CNAME owner holds nothing else; the apex holds exactly one
  SOA and at least one NS; NS below the apex is a delegation (data below it is glue only).
- The SOA serial is bumped on every change (`bump_serial`): by 1, or to the current Unix time
  when the zone's serial was generated from the clock and that is larger.
- Generated records (SOA, apex NS and `ns1` addresses made when none are configured, PTRs
  made from addresses) are marked `generated` so explicit records always win over them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from dnslib import RD, SOA, DNSLabel

from lbcdn.dns.config import (AliasConfig, CidrRoutingConfig, DnsConfig, GeolocationConfig,
                              GeoproximityConfig, RecordSetConfig, ZoneConfig)
from lbcdn.dns.masterfile import MasterFileError, parse_master
from lbcdn.dns.names import (BadName, Name, is_subdomain, is_wildcard, parse_name,
                             reverse_name, to_text)
from lbcdn.dns.rdata import (TYPE_NAMES, TYPES, BadRdata, address_of, parse_rdata_text,
                             rdata_wire, target_of)

T_A, T_NS, T_CNAME, T_SOA, T_PTR, T_AAAA = 1, 2, 5, 6, 12, 28


class ZoneError(ValueError):
    """A zone that cannot be built or a change that would break it; `problems` lists why."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class Value:
    rd: RD = field(compare=False, hash=False)
    key: bytes                      # rdata in wire form: what makes two records the same
    health_check: str | None = None  # per value: alias targets that follow a pool's health

    @classmethod
    def of(cls, rd: RD, health_check: str | None = None) -> Value:
        return cls(rd, rdata_wire(rd), health_check)


@dataclass(frozen=True)
class RecordSet:
    name: Name
    rtype: int
    ttl: int
    values: tuple[Value, ...]
    policy: str = "simple"
    set_identifier: str | None = None
    weight: int | None = None
    failover: str | None = None
    health_check: str | None = None
    alias: AliasConfig | None = None
    generated: bool = False
    cidr_routing: CidrRoutingConfig | None = None
    geolocation: GeolocationConfig | None = None
    geoproximity: GeoproximityConfig | None = None

    @property
    def ident(self) -> tuple[Name, int, str | None]:
        return self.name, self.rtype, self.set_identifier

    def same_as(self, other: RecordSet) -> bool:
        """Route 53's "DELETE must match exactly": everything but the order of values."""
        mine = self.alias if self.alias is not None else sorted(v.key for v in self.values)
        theirs = other.alias if other.alias is not None else sorted(v.key for v in other.values)
        return (self.ident == other.ident and self.ttl == other.ttl and mine == theirs
                and (self.policy, self.weight, self.failover, self.health_check)
                == (other.policy, other.weight, other.failover, other.health_check)
                and (self.cidr_routing, self.geolocation, self.geoproximity)
                == (other.cidr_routing, other.geolocation, other.geoproximity))

    def describe(self) -> str:
        sid = f" ({self.set_identifier})" if self.set_identifier else ""
        return f"{to_text(self.name)} {TYPE_NAMES.get(self.rtype, self.rtype)}{sid}"


class AliasDirectory(Protocol):
    """Where alias records get their addresses: (address, health check id or None) pairs."""

    def alias_addresses(self, alias: AliasConfig) -> list[tuple[str, str | None]]: ...


Node = dict[int, tuple[RecordSet, ...]]


class Zone:
    def __init__(self, origin: Name, *, ptr_from_addresses: bool = False,
                 clock_serial: bool = False, default_ttl: int = 300) -> None:
        self.origin = origin
        self.default_ttl = default_ttl  # for record sets added later without a TTL
        self.name = to_text(origin)
        self.ptr_from_addresses = ptr_from_addresses
        self.clock_serial = clock_serial  # serial generated from the clock: keep it >= now
        self._nodes: dict[Name, Node] = {}
        self._exists: set[Name] = set()
        self.cuts: frozenset[Name] = frozenset()
        self.has_wildcards = False

    # -- reading -------------------------------------------------------------------------

    def node(self, name: Name) -> Node | None:
        return self._nodes.get(name)

    def group(self, name: Name, rtype: int) -> tuple[RecordSet, ...]:
        node = self._nodes.get(name)
        return node.get(rtype, ()) if node is not None else ()

    def exists(self, name: Name) -> bool:
        """The name owns records or has names below it (an empty non-terminal)."""
        return name in self._exists

    def record_sets(self) -> Iterator[RecordSet]:
        for node in self._nodes.values():
            for group in node.values():
                yield from group

    def names(self) -> Iterable[Name]:
        return self._nodes.keys()

    def cut_for(self, name: Name) -> Name | None:
        """The highest delegation point at or above `name` (below the apex), if any."""
        if not self.cuts:
            return None
        base = len(self.origin)
        for k in range(base + 1, len(name) + 1):
            candidate = name[-k:]
            if candidate in self.cuts:
                return candidate
        return None

    @property
    def soa_set(self) -> RecordSet:
        group = self.group(self.origin, T_SOA)
        if not group:
            raise ZoneError([f"{self.name} has no SOA"])
        return group[0]

    @property
    def soa(self) -> SOA:
        rd = self.soa_set.values[0].rd
        assert isinstance(rd, SOA)
        return rd

    @property
    def serial(self) -> int:
        return int(self.soa.times[0])

    @property
    def negative_ttl(self) -> int:
        """RFC 2308: the SOA's TTL or its MINIMUM field, whichever is lower."""
        return min(self.soa_set.ttl, int(self.soa.times[4]))

    # -- changing ------------------------------------------------------------------------

    def copy(self) -> Zone:
        z = Zone(self.origin, ptr_from_addresses=self.ptr_from_addresses,
                 clock_serial=self.clock_serial, default_ttl=self.default_ttl)
        z._nodes = {name: dict(node) for name, node in self._nodes.items()}
        z._exists = set(self._exists)
        z.cuts = self.cuts
        z.has_wildcards = self.has_wildcards
        return z

    def find(self, name: Name, rtype: int, set_identifier: str | None) -> RecordSet | None:
        for rs in self.group(name, rtype):
            if rs.set_identifier == set_identifier:
                return rs
        return None

    def put(self, rs: RecordSet) -> None:
        """Add, or replace the set with the same owner, type and set identifier. A generated
        set of that name and type gives way to an explicit one."""
        node = self._nodes.setdefault(rs.name, {})
        kept = [s for s in node.get(rs.rtype, ())
                if s.set_identifier != rs.set_identifier and not (s.generated and not rs.generated)]
        node[rs.rtype] = (*kept, rs)

    def remove(self, name: Name, rtype: int, set_identifier: str | None) -> bool:
        node = self._nodes.get(name)
        if node is None or rtype not in node:
            return False
        kept = tuple(s for s in node[rtype] if s.set_identifier != set_identifier)
        if len(kept) == len(node[rtype]):
            return False
        if kept:
            node[rtype] = kept
        else:
            del node[rtype]
            if not node:
                del self._nodes[name]
        return True

    def remove_generated(self, rtype: int) -> None:
        for name in list(self._nodes):
            node = self._nodes[name]
            if rtype in node and any(s.generated for s in node[rtype]):
                kept = tuple(s for s in node[rtype] if not s.generated)
                if kept:
                    node[rtype] = kept
                else:
                    del node[rtype]
                    if not node:
                        del self._nodes[name]

    def finish(self) -> None:
        """Recompute what the engine derives from the records (after put/remove)."""
        exists: set[Name] = set()
        cuts: set[Name] = set()
        base = len(self.origin)
        for name, node in self._nodes.items():
            for k in range(base, len(name) + 1):
                exists.add(name[-k:] if k else ())
            if T_NS in node and name != self.origin:
                cuts.add(name)
        self._exists = exists
        self.cuts = frozenset(cuts)
        self.has_wildcards = any(is_wildcard(n) for n in self._nodes)

    def bump_serial(self, now: float) -> None:
        """New serial after a change (RFC 1982 arithmetic: wraps at 2^32)."""
        old = self.serial
        new = (old + 1) % 2**32
        if self.clock_serial and int(now) > old:
            new = int(now) % 2**32
        self.set_serial(new)

    def set_serial(self, serial: int) -> None:
        soa_set = self.soa_set
        old = self.soa
        rd = SOA(old.mname, old.rname, (serial, *old.times[1:]))
        self.put(replace(soa_set, values=(Value.of(rd),)))

    # -- checking ------------------------------------------------------------------------

    def problems(self) -> list[str]:
        out: list[str] = []
        apex = self._nodes.get(self.origin, {})
        if len(apex.get(T_SOA, ())) != 1 or len(apex[T_SOA][0].values) != 1:
            out.append(f"{self.name}: the apex needs exactly one SOA record")
        if not apex.get(T_NS):
            out.append(f"{self.name}: the apex needs NS records")
        if T_CNAME in apex:
            out.append(f"{self.name}: a CNAME cannot be at the zone apex")
        for name, node in self._nodes.items():
            shown = to_text(name)
            if not is_subdomain(name, self.origin):
                out.append(f"{shown} is outside the zone {self.name}")
                continue
            if T_SOA in node and name != self.origin:
                out.append(f"{shown}: SOA only at the zone apex")
            if T_CNAME in node and len(node) > 1:
                others = ", ".join(TYPE_NAMES.get(t, str(t)) for t in node if t != T_CNAME)
                out.append(f"{shown}: a CNAME cannot share its name with other records "
                           f"({others})")
            if b"*" in name[1:]:
                out.append(f"{shown}: `*` is only allowed as the leftmost label")
            for rtype, group in node.items():
                out.extend(_group_problems(group))
        return out


def _group_problems(group: Sequence[RecordSet]) -> list[str]:
    out: list[str] = []
    first = group[0]
    if any(s.policy != first.policy for s in group):
        out.append(f"{first.describe()}: record sets of one name and type need one policy")
        return out
    if first.policy == "simple" and len(group) > 1:
        out.append(f"{first.describe()}: more than one simple record set")
    if first.policy == "failover":
        for role in ("PRIMARY", "SECONDARY"):
            if sum(1 for s in group if s.failover == role) > 1:
                out.append(f"{first.describe()}: more than one {role} record set")
    if first.rtype == T_CNAME and sum(len(s.values) for s in group[:1]) != 1:
        out.append(f"{first.describe()}: a CNAME record set has exactly one value")
    if first.policy == "cidr" and len({s.cidr_routing.collection for s in group
                                       if s.cidr_routing}) > 1:
        out.append(f"{first.describe()}: record sets of one name and type use one CIDR "
                   "collection")
    places = [s.cidr_routing.location if s.cidr_routing else s.geolocation
              for s in group if s.policy in ("cidr", "geolocation")]
    if len(set(places)) < len(places):
        out.append(f"{first.describe()}: two record sets for one location")
    for s in group:
        if not s.values and s.alias is None:
            out.append(f"{s.describe()}: no values")
    return out


# -- building from config ----------------------------------------------------------------


def zone_origin(name: str) -> Name:
    return parse_name(name if name.endswith(".") else name + ".")


def record_set_from_spec(spec: RecordSetConfig, origin: Name, default_ttl: int,
                         aliases: AliasDirectory | None) -> RecordSet:
    """One record set from its config form; raises ZoneError naming the problem."""
    try:
        name = parse_name(spec.name, origin)
    except BadName as e:
        raise ZoneError([f"name: {e}"]) from None
    rtype = TYPES[spec.type]
    values: list[Value] = []
    if spec.alias is not None:
        if aliases is None:
            raise ZoneError([f"{to_text(name)}: alias records are not available here"])
        try:
            pairs = aliases.alias_addresses(spec.alias)
        except (KeyError, ValueError) as e:
            raise ZoneError([f"{to_text(name)}: alias: {e}"]) from None
        for address, check in pairs:
            is_v6 = ":" in address
            if (rtype == T_AAAA) == is_v6:
                rd = parse_rdata_text(rtype, address, origin)
                values.append(Value.of(rd, check if spec.alias.evaluate_target_health else None))
    else:
        for text in spec.values:
            try:
                values.append(Value.of(parse_rdata_text(rtype, text, origin)))
            except (BadRdata, BadName) as e:
                raise ZoneError([f"{to_text(name)} {spec.type} {text!r}: {e}"]) from None
    return RecordSet(name=name, rtype=rtype, ttl=default_ttl if spec.ttl_s is None else spec.ttl_s,
                     values=tuple(_unique(values)), policy=spec.policy,
                     set_identifier=spec.set_identifier, weight=spec.weight,
                     failover=spec.failover, health_check=spec.health_check, alias=spec.alias,
                     cidr_routing=spec.cidr_routing, geolocation=spec.geolocation,
                     geoproximity=spec.geoproximity)


def _unique(values: Iterable[Value]) -> list[Value]:
    seen: set[bytes] = set()
    out = []
    for v in values:
        if v.key not in seen:
            seen.add(v.key)
            out.append(v)
    return out


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def build_zone(cfg: ZoneConfig, *, now: float, public_addresses: Sequence[str] = (),
               aliases: AliasDirectory | None = None, base_dir: str = ".",
               read_text: Callable[[str], str] = _read_text) -> Zone:
    """A zone from its config (and master file); raises ZoneError listing every problem."""
    origin = zone_origin(cfg.name)
    problems: list[str] = []
    file_sets: dict[tuple[Name, int], RecordSet] = {}
    if cfg.file is not None:
        path = cfg.file if os.path.isabs(cfg.file) else os.path.join(base_dir, cfg.file)
        try:
            records = parse_master(read_text(path), origin, cfg.ttl_s)
        except OSError as e:
            raise ZoneError([f"{cfg.file}: cannot read: {e.strerror or e}"]) from None
        except MasterFileError as e:
            raise ZoneError([f"{cfg.file}: {p}" for p in e.problems]) from None
        for rec in records:
            key = (rec.name, rec.rtype)
            have = file_sets.get(key)
            if have is None:
                file_sets[key] = RecordSet(rec.name, rec.rtype, rec.ttl, (Value.of(rec.rd),))
            elif all(v.key != rdata_wire(rec.rd) for v in have.values):
                # RFC 2181 5.2: one TTL per RRset; the first one given wins.
                file_sets[key] = replace(have, values=(*have.values, Value.of(rec.rd)))
    zone = Zone(origin, ptr_from_addresses=cfg.ptr_from_addresses, default_ttl=cfg.ttl_s)
    for rs in file_sets.values():
        if rs.rtype == T_SOA and rs.name == origin and cfg.soa.serial is not None:
            old = rs.values[0].rd
            rs = replace(rs, values=(Value.of(SOA(old.mname, old.rname,
                                                  (cfg.soa.serial, *old.times[1:]))),))
        zone.put(rs)
    for spec in cfg.records:
        try:
            rs = record_set_from_spec(spec, origin, cfg.ttl_s, aliases)
        except ZoneError as e:
            problems.extend(e.problems)
            continue
        if (rs.name, rs.rtype) in file_sets:
            problems.append(f"{rs.describe()} is in both `records` and {cfg.file}")
            continue
        zone.put(rs)
    # Generated apex NS, then SOA, then addresses for a generated ns1.
    ns_names: list[Name] = []
    if not zone.group(origin, T_NS):
        try:
            ns_names = [parse_name(n, origin) for n in cfg.ns] or [(b"ns1", *origin)]
        except BadName as e:
            problems.append(f"ns: {e}")
            ns_names = [(b"ns1", *origin)]
        ns_values = tuple(Value.of(parse_rdata_text(T_NS, to_text(n), origin)) for n in ns_names)
        zone.put(RecordSet(origin, T_NS, cfg.ns_ttl_s, ns_values, generated=not cfg.ns))
    else:
        ns_names = [t for v in zone.group(origin, T_NS)[0].values
                    if (t := target_of(v.rd)) is not None]
    if not zone.group(origin, T_SOA):
        try:
            mname = parse_name(cfg.soa.mname, origin) if cfg.soa.mname else ns_names[0]
            rname = (parse_name(cfg.soa.rname, origin) if cfg.soa.rname
                     else (b"hostmaster", *origin))
        except BadName as e:
            raise ZoneError([*problems, f"soa: {e}"]) from None
        serial = cfg.soa.serial if cfg.soa.serial is not None else int(now) % 2**32
        zone.clock_serial = cfg.soa.serial is None
        soa = SOA(DNSLabel(mname), DNSLabel(rname),
                  (serial, cfg.soa.refresh_s, cfg.soa.retry_s, cfg.soa.expire_s,
                   cfg.soa.minimum_s))
        zone.put(RecordSet(origin, T_SOA, cfg.soa.ttl_s, (Value.of(soa),), generated=True))
    if not cfg.ns and public_addresses:
        ns1 = (b"ns1", *origin)
        if not zone.group(ns1, T_A) and not zone.group(ns1, T_AAAA) and ns1 in ns_names:
            for rtype, fam in ((T_A, False), (T_AAAA, True)):
                vals = tuple(Value.of(parse_rdata_text(rtype, a, origin))
                             for a in public_addresses if (":" in a) == fam)
                if vals:
                    zone.put(RecordSet(ns1, rtype, cfg.ns_ttl_s, vals, generated=True))
    zone.finish()
    problems.extend(zone.problems())
    if problems:
        raise ZoneError(problems)
    return zone


def build_zones(cfg: DnsConfig, *, now: float, aliases: AliasDirectory | None = None,
                base_dir: str = ".", read_text: Callable[[str], str] = _read_text,
                path: str = "dns") -> list[Zone]:
    """Every configured zone, PTRs generated; raises ZoneError whose problems start with the
    YAML path of the zone (`dns.zones[1]: ...`)."""
    zones: list[Zone] = []
    problems: list[str] = []
    for i, zc in enumerate(cfg.zones):
        try:
            zones.append(build_zone(zc, now=now, public_addresses=cfg.public_addresses,
                                    aliases=aliases, base_dir=base_dir, read_text=read_text))
        except ZoneError as e:
            problems.extend(f"{path}.zones[{i}] ({zc.name}): {p}" for p in e.problems)
    if problems:
        raise ZoneError(problems)
    generate_ptrs(zones)
    return zones


# -- PTRs from addresses -----------------------------------------------------------------


def deepest_zone(zones: Iterable[Zone], name: Name) -> Zone | None:
    best: Zone | None = None
    for z in zones:
        if is_subdomain(name, z.origin) and (best is None or len(z.origin) > len(best.origin)):
            best = z
    return best


def ptr_sets(zones: Sequence[Zone]) -> dict[Name, list[RecordSet]]:
    """The PTR record sets `ptr_from_addresses` asks for, by reverse-zone origin. A reverse
    name that already has an explicit PTR is left alone."""
    wanted: dict[Name, tuple[Zone, int, list[Value]]] = {}
    for zone in zones:
        if not zone.ptr_from_addresses:
            continue
        for rs in zone.record_sets():
            if rs.rtype not in (T_A, T_AAAA) or is_wildcard(rs.name) or rs.alias is not None:
                continue
            for v in rs.values:
                address = address_of(v.rd)
                if address is None:
                    continue
                rev = reverse_name(address)
                target = deepest_zone(zones, rev)
                if target is None or target is zone:
                    continue
                if any(not s.generated for s in target.group(rev, T_PTR)):
                    continue
                ptr = Value.of(parse_rdata_text(T_PTR, to_text(rs.name), ()))
                _, ttl, values = wanted.setdefault(rev, (target, rs.ttl, []))
                wanted[rev] = (target, min(ttl, rs.ttl), values)
                if all(x.key != ptr.key for x in values):
                    values.append(ptr)
    out: dict[Name, list[RecordSet]] = {}
    for rev, (target, ttl, values) in sorted(wanted.items()):
        values.sort(key=lambda v: v.key)
        out.setdefault(target.origin, []).append(
            RecordSet(rev, T_PTR, ttl, tuple(values), generated=True))
    return out


def generate_ptrs(zones: list[Zone], *, now: float | None = None) -> set[Name]:
    """Replace the generated PTRs in place (zones are swapped for changed copies); returns
    the origins of the reverse zones that changed. With `now`, their serials are bumped."""
    wanted = ptr_sets(zones)
    changed: set[Name] = set()
    for i, zone in enumerate(zones):
        have = sorted(((rs.name, [v.key for v in rs.values], rs.ttl)
                       for rs in zone.record_sets() if rs.rtype == T_PTR and rs.generated))
        want = sorted(((rs.name, [v.key for v in rs.values], rs.ttl)
                       for rs in wanted.get(zone.origin, [])))
        if have == want:
            continue
        z = zone.copy()
        z.remove_generated(T_PTR)
        for rs in wanted.get(zone.origin, []):
            z.put(rs)
        z.finish()
        if now is not None:
            z.bump_serial(now)
        zones[i] = z
        changed.add(zone.origin)
    return changed
