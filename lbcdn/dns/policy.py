"""Routing policies: which records of a name and type to answer with, now (pure).

A "group" is every record set of one owner name and type: one simple set, or several sets
told apart by set identifier that share one policy (the zone checks that).

Rules (Route 53's):
- simple: every value, the order rotated by one per answer (`turn`); values carrying their own
  health check (alias targets) are left out while unhealthy. NS sets are not rotated: Route 53
  answers its delegation set in one order, Knot DNS answers every set in one order, and an NS
  set is the same data in a referral, an apex answer and a zone transfer.
- weighted: one set, picked at random in proportion to weight among the healthy sets with a
  weight above 0; weight-0 sets only when no such set exists.
- failover: PRIMARY while healthy (or unchecked), else SECONDARY while healthy.
- multivalue: up to 8 distinct values from healthy sets, in random order.
- Every selection says how it varies (`Selection.period`): for the same health, turn
  t + period gives what turn t gives (1: always the same answer), or None when the answer is
  a random pick. Prepared answers (engine.prepare) are built from it.
- cidr (Route 53 IP-based routing): the set whose `cidr_routing.location` is the client's
  location in the group's CIDR collection (locate.py), else the default set (location `*`);
  an unhealthy set gives way to the default.
- geolocation: the set for the client's subdivision, else its country, else its continent,
  else the default (country `*`), each unhealthy one giving way to the next.
- geoproximity: the healthy set nearest the client's coordinates, distances scaled by
  (1 - bias/100) as Route 53 does; with no coordinates for the client, the first healthy set.
- The client-dependent policies (cidr, geolocation, geoproximity) give `Selection.scope`: the
  ECS scope the answer holds for (locate.py), -1 for the others. No client (no address, or an
  ECS option with SOURCE PREFIX-LENGTH 0: the client opted out) -> the default set, scope 0.
  Nothing matching and no default -> no values (Route 53 answers NODATA); every set
  unhealthy -> the most specific match anyway (fail open).
- Fail open: when health leaves nothing to answer, answer as if everything were healthy. An
  authoritative server that answers nothing only moves the outage to the client.
- `static_values` is the health-independent view used where answers must not vary
  (zone transfers and additional-section addresses).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol

from lbcdn.dns.locate import CidrCollection, Client, GeoDatabase
from lbcdn.dns.zone import T_NS, RecordSet, Value

MULTIVALUE_MAX = 8


class Selection(NamedTuple):
    ttl: int
    values: list[Value]
    period: int | None   # turns after which the selection repeats; None: a random pick
    scope: int = -1      # client-dependent: the ECS scope it holds for; -1: not dependent


CLIENT_POLICIES = frozenset({"cidr", "geolocation", "geoproximity"})


class Where(NamedTuple):
    """What the client-dependent policies read: the client and the data that locates it."""
    client: Client | None
    collections: Mapping[str, CidrCollection]
    geo: GeoDatabase | None


class HealthView(Protocol):
    """What routing policies read; the lead wires it to the health checker."""

    def is_healthy(self, check_id: str) -> bool: ...


def _ok(check: str | None, health: HealthView) -> bool:
    return check is None or health.is_healthy(check)


def _healthy_values(rs: RecordSet, health: HealthView) -> list[Value]:
    values = [v for v in rs.values if _ok(v.health_check, health)]
    return values or list(rs.values)


def select(group: Sequence[RecordSet], health: HealthView, rng: random.Random,
           turn: int, where: Where | None = None) -> Selection:
    """TTL, values and period to answer for one name and type."""
    if not group:
        return Selection(0, [], 1)
    policy = group[0].policy
    if policy in CLIENT_POLICIES:
        order, scope = _by_client(group, where)
        chosen = next((s for s in order if _ok(s.health_check, health)),
                      order[0] if order else None)
        if chosen is None:
            return Selection(group[0].ttl, [], 1, scope)
        return Selection(chosen.ttl, _healthy_values(chosen, health), 1, scope)
    if policy == "simple":
        rs = group[0]
        values = _healthy_values(rs, health)
        if len(values) < 2 or rs.rtype == T_NS:
            return Selection(rs.ttl, values, 1)
        k = turn % len(values)
        return Selection(rs.ttl, values[k:] + values[:k], len(values))
    if policy == "failover":
        primary = next((s for s in group if s.failover == "PRIMARY"), None)
        secondary = next((s for s in group if s.failover == "SECONDARY"), None)
        if primary is not None and _ok(primary.health_check, health):
            chosen = primary
        elif secondary is not None and _ok(secondary.health_check, health):
            chosen = secondary
        else:
            chosen = primary or secondary or group[0]
        return Selection(chosen.ttl, _healthy_values(chosen, health), 1)
    if policy == "weighted":
        healthy = [s for s in group if _ok(s.health_check, health)] or list(group)
        candidates = [s for s in healthy if (s.weight or 0) > 0]
        if candidates:
            total = sum(s.weight or 0 for s in candidates)
            point = rng.random() * total
            for s in candidates:
                point -= s.weight or 0
                if point < 0:
                    break
            chosen = s
        else:
            candidates = healthy
            chosen = healthy[rng.randrange(len(healthy))]
        return Selection(chosen.ttl, _healthy_values(chosen, health),
                         1 if len(candidates) == 1 else None)
    # multivalue
    sets = [s for s in group if _ok(s.health_check, health)] or list(group)
    picked: list[Value] = []
    for s in sets:
        picked.extend(_healthy_values(s, health))
    distinct = _dedup(picked)
    rng.shuffle(distinct)
    return Selection(min(s.ttl for s in sets), distinct[:MULTIVALUE_MAX],
                     1 if len(distinct) == 1 else None)


def _by_client(group: Sequence[RecordSet], where: Where | None) -> tuple[list[RecordSet], int]:
    """The group's sets in the order a client-dependent policy tries them, and the scope."""
    client = where.client if where is not None else None
    if client is not None and client.prefix == 0:
        client = None
    policy = group[0].policy
    if policy == "cidr":
        location, scope = None, 0
        cidr = group[0].cidr_routing
        coll = where.collections.get(cidr.collection) if where and cidr else None
        if client is not None and coll is not None:
            location, scope = coll.locate(client)
        order = [s for s in group if s.cidr_routing and s.cidr_routing.location == location]
        return order + [s for s in group if s.cidr_routing and s.cidr_routing.location == "*"], \
            scope
    place, scope = None, 0
    if client is not None and where is not None and where.geo is not None:
        place, scope = where.geo.locate(client)
    if policy == "geoproximity":
        if place is None or place.coordinates is None:
            return list(group), scope
        lat, lon = place.coordinates
        return sorted(group, key=lambda s: _biased_km(s, lat, lon)), scope
    ranked: list[tuple[int, RecordSet]] = []
    for s in group:
        g = s.geolocation
        if g is None:
            continue
        if g.country == "*":
            ranked.append((3, s))
        elif place is None:
            continue
        elif g.subdivision is not None:
            if g.country == place.country and g.subdivision == place.subdivision:
                ranked.append((0, s))
        elif g.country is not None:
            if g.country == place.country:
                ranked.append((1, s))
        elif g.continent == place.continent:
            ranked.append((2, s))
    ranked.sort(key=lambda r: r[0])
    return [s for _, s in ranked], scope


EARTH_RADIUS_KM = 6371.0


def _biased_km(rs: RecordSet, lat: float, lon: float) -> float:
    """Route 53's geoproximity: great-circle distance times (1 - bias/100); a positive bias
    draws clients from farther away."""
    p = rs.geoproximity
    if p is None:
        return math.inf
    return distance_km(lat, lon, p.latitude, p.longitude) * (1 - p.bias / 100)


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi, dlmb = phi2 - phi1, math.radians(lon2 - lon1)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def _dedup(values: list[Value]) -> list[Value]:
    seen: set[bytes] = set()
    out: list[Value] = []
    for v in values:
        if v.key not in seen:
            seen.add(v.key)
            out.append(v)
    return out


def static_values(group: Sequence[RecordSet]) -> tuple[int, list[Value]]:
    """(TTL, values) independent of health and chance: simple -> all; weighted -> the sets
    with weight > 0 (all when every weight is 0); failover -> PRIMARY (else SECONDARY);
    multivalue -> all; cidr and geolocation -> the default set (else all); geoproximity ->
    all."""
    if not group:
        return 0, []
    policy = group[0].policy
    sets: list[RecordSet]
    if policy == "failover":
        primary = [s for s in group if s.failover == "PRIMARY"]
        sets = primary or list(group[:1])
    elif policy == "weighted":
        sets = [s for s in group if (s.weight or 0) > 0] or list(group)
    elif policy in ("cidr", "geolocation"):
        sets = _by_client(group, None)[0] or list(group)
    else:
        sets = list(group)
    values: list[Value] = []
    for s in sets:
        values.extend(s.values)
    return min(s.ttl for s in sets), _dedup(values)


def routing_problems(sets: Iterable[RecordSet], collections: Mapping[str, CidrCollection],
                     geo: bool) -> list[str]:
    """What the client-dependent sets need from outside the zone: a known CIDR collection
    and location, a location database (`geo`)."""
    out: list[str] = []
    for s in sets:
        cidr = s.cidr_routing
        if cidr is not None:
            coll = collections.get(cidr.collection)
            if coll is None:
                out.append(f"{s.describe()}: unknown CIDR collection {cidr.collection!r}")
            elif cidr.location != "*" and cidr.location not in coll.locations:
                out.append(f"{s.describe()}: collection {cidr.collection!r} has no location "
                           f"{cidr.location!r}")
        if s.policy in ("geolocation", "geoproximity") and not geo:
            out.append(f"{s.describe()}: the {s.policy} policy needs dns.location_database")
    return out


def health_checks(group: Sequence[RecordSet]) -> set[str]:
    out: set[str] = set()
    for s in group:
        if s.health_check:
            out.add(s.health_check)
        out.update(v.health_check for v in s.values if v.health_check)
    return out
