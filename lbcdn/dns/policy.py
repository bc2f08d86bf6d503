"""Routing policies: which records of a name and type to answer with, now (pure).

A "group" is every record set of one owner name and type: one simple set, or several sets
told apart by set identifier that share one policy (the zone checks that).

Rules (Route 53's):
- simple: every value, the order rotated by one per answer (`turn`); values carrying their own
  health check (alias targets) are left out while unhealthy.
- weighted: one set, picked at random in proportion to weight among the healthy sets with a
  weight above 0; weight-0 sets only when no such set exists.
- failover: PRIMARY while healthy (or unchecked), else SECONDARY while healthy.
- multivalue: up to 8 values from healthy sets, in random order.
- Fail open: when health leaves nothing to answer, answer as if everything were healthy. An
  authoritative server that answers nothing only moves the outage to the client.
- `static_values` is the health-independent view used where answers must not vary
  (zone transfers and additional-section addresses).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from lbcdn.dns.zone import RecordSet, Value

MULTIVALUE_MAX = 8


class HealthView(Protocol):
    """What routing policies read; the lead wires it to the health checker."""

    def is_healthy(self, check_id: str) -> bool: ...


def _ok(check: str | None, health: HealthView) -> bool:
    return check is None or health.is_healthy(check)


def _healthy_values(rs: RecordSet, health: HealthView) -> list[Value]:
    values = [v for v in rs.values if _ok(v.health_check, health)]
    return values or list(rs.values)


def select(group: Sequence[RecordSet], health: HealthView, rng: random.Random,
           turn: int) -> tuple[int, list[Value]]:
    """(TTL, values) to answer for one name and type."""
    if not group:
        return 0, []
    policy = group[0].policy
    if policy == "simple":
        rs = group[0]
        values = _healthy_values(rs, health)
        if len(values) > 1:
            k = turn % len(values)
            values = values[k:] + values[:k]
        return rs.ttl, values
    if policy == "failover":
        primary = next((s for s in group if s.failover == "PRIMARY"), None)
        secondary = next((s for s in group if s.failover == "SECONDARY"), None)
        if primary is not None and _ok(primary.health_check, health):
            chosen = primary
        elif secondary is not None and _ok(secondary.health_check, health):
            chosen = secondary
        else:
            chosen = primary or secondary or group[0]
        return chosen.ttl, _healthy_values(chosen, health)
    if policy == "weighted":
        healthy = [s for s in group if _ok(s.health_check, health)] or list(group)
        weighted = [s for s in healthy if (s.weight or 0) > 0]
        if weighted:
            total = sum(s.weight or 0 for s in weighted)
            point = rng.random() * total
            for s in weighted:
                point -= s.weight or 0
                if point < 0:
                    break
            chosen = s
        else:
            chosen = healthy[rng.randrange(len(healthy))]
        return chosen.ttl, _healthy_values(chosen, health)
    # multivalue
    sets = [s for s in group if _ok(s.health_check, health)] or list(group)
    picked: list[Value] = []
    for s in sets:
        picked.extend(_healthy_values(s, health))
    rng.shuffle(picked)
    return min(s.ttl for s in sets), _dedup(picked)[:MULTIVALUE_MAX]


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
    multivalue -> all."""
    if not group:
        return 0, []
    policy = group[0].policy
    sets: list[RecordSet]
    if policy == "failover":
        primary = [s for s in group if s.failover == "PRIMARY"]
        sets = primary or list(group[:1])
    elif policy == "weighted":
        sets = [s for s in group if (s.weight or 0) > 0] or list(group)
    else:
        sets = list(group)
    values: list[Value] = []
    for s in sets:
        values.extend(s.values)
    return min(s.ttl for s in sets), _dedup(values)


def varies(group: Sequence[RecordSet]) -> bool:
    """Can two answers for this group differ while health stays the same?"""
    if not group:
        return False
    policy = group[0].policy
    if policy == "simple":
        return len(group[0].values) > 1
    if policy == "weighted":
        return len(group) > 1
    if policy == "multivalue":
        return sum(len(s.values) for s in group) > 1
    return False


def health_checks(group: Sequence[RecordSet]) -> set[str]:
    out: set[str] = set()
    for s in group:
        if s.health_check:
            out.add(s.health_check)
        out.update(v.health_check for v in s.values if v.health_check)
    return out
