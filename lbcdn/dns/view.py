"""What the admin API and the status page show of a zone: its record sets, and which health
state each follows (pure).

Rules:
- A record set follows at most one health check of its own (`health_check`: a Route 53 check
  from `dns.health_checks`, or `pool/NAME/HOST:PORT`, a pool target's health), and each value
  of an alias to a pool with `evaluate_target_health` follows its target's. Each is shown as
  `{"source": "pool", "id", "pool", "target", "healthy"}` or `{"source": "route53_check",
  "id", "healthy"}`; null where nothing is followed.
- `healthy` is what the answers read now (lbcdn.dns.policy): a check that is not known (a
  deleted one, a target the pool does not have) reads healthy, as answers fail open.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dnslib import QTYPE

from lbcdn.dns.alias import parse_pool_check
from lbcdn.dns.names import to_text
from lbcdn.dns.policy import HealthView, health_checks
from lbcdn.dns.rdata import TYPE_NAMES, rdata_text
from lbcdn.dns.zone import RecordSet, Zone


def check_view(check_id: str | None, health: HealthView) -> dict[str, Any] | None:
    if check_id is None:
        return None
    healthy = health.is_healthy(check_id)
    pool_target = parse_pool_check(check_id)
    if pool_target is not None:
        return {"source": "pool", "id": check_id, "pool": pool_target[0],
                "target": pool_target[1], "healthy": healthy}
    return {"source": "route53_check", "id": check_id, "healthy": healthy}


def record_set_view(rs: RecordSet, health: HealthView) -> dict[str, Any]:
    # QTYPE: the DNSKEY set a signed zone publishes is not a type users write
    return {"name": to_text(rs.name), "type": TYPE_NAMES.get(rs.rtype) or QTYPE.get(rs.rtype),
            "ttl_s": rs.ttl, "policy": rs.policy, "set_identifier": rs.set_identifier,
            "weight": rs.weight, "failover": rs.failover,
            "alias": None if rs.alias is None else dataclasses.asdict(rs.alias),
            **{key: dataclasses.asdict(value) for key, value in (
                ("cidr_routing", rs.cidr_routing), ("geolocation", rs.geolocation),
                ("geoproximity", rs.geoproximity)) if value is not None},
            "health": check_view(rs.health_check, health),
            "values": [{"value": rdata_text(v.rd), "health": check_view(v.health_check, health)}
                       for v in rs.values]}


def zone_records(zone: Zone, health: HealthView, *, following_health: bool = False
                 ) -> list[dict[str, Any]]:
    """Every record set of `zone` (or only those that follow a health state), by name, type
    and set identifier."""
    sets = sorted((rs for rs in zone.record_sets()
                   if not following_health or health_checks((rs,))),
                  key=lambda rs: (to_text(rs.name), rs.rtype, rs.set_identifier or ""))
    return [record_set_view(rs, health) for rs in sets]
