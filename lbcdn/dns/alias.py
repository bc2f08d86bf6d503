"""Alias targets: the addresses a Route 53-style alias record answers with.

Job: map `alias: {listener: NAME}` and `alias: {pool: NAME}` to (address, health check id)
pairs, from data the daemon already has. Pure; the daemon builds one per runtime.

Rules:
- A listener answers with its bind address, or with `dns.public_addresses` when it is bound
  to a wildcard address (0.0.0.0 / ::), which no client can reach.
- A pool answers with the addresses of its targets; a target given by host name is left out
  (resolving it would put I/O in zone building). Each address carries the health check id
  `pool/<pool>/<host>:<port>` (IPv6 hosts in brackets), which the daemon's HealthView maps
  to that target's state in the pool's health checker.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lbcdn.dns.config import AliasConfig

WILDCARDS = ("0.0.0.0", "::", "")


def pool_check_id(pool: str, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"pool/{pool}/{shown}:{port}"


def parse_pool_check(check_id: str) -> tuple[str, str] | None:
    """(pool, target) of a `pool/<pool>/<host>:<port>` health check id, else None. A pool
    name may hold a `/`, a target never does: the last `/` splits them."""
    if not check_id.startswith("pool/"):
        return None
    pool, _, target = check_id[5:].rpartition("/")
    return (pool, target) if pool and target else None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class StaticAliases:
    """An AliasDirectory over plain mappings."""

    def __init__(self, listeners: Mapping[str, Sequence[str]] | None = None,
                 pools: Mapping[str, Sequence[tuple[str, str | None]]] | None = None) -> None:
        self.listeners = {k: list(v) for k, v in (listeners or {}).items()}
        self.pools = {k: list(v) for k, v in (pools or {}).items()}

    def alias_addresses(self, alias: AliasConfig) -> list[tuple[str, str | None]]:
        if alias.listener is not None:
            if alias.listener not in self.listeners:
                raise KeyError(f"unknown listener {alias.listener!r}")
            return [(a, None) for a in self.listeners[alias.listener]]
        if alias.pool is None or alias.pool not in self.pools:
            raise KeyError(f"unknown pool {alias.pool!r}")
        return list(self.pools[alias.pool])


def aliases_from_config(listeners: Iterable[Any], pools: Mapping[str, Any],
                        public_addresses: Sequence[str]) -> StaticAliases:
    """From lbcdn.config.schema objects: `listeners` with .name/.address, `pools` by name
    with .targets of .host/.port."""
    lmap: dict[str, list[str]] = {}
    for lst in listeners:
        lmap[lst.name] = (list(public_addresses) if lst.address in WILDCARDS
                          else [lst.address])
    pmap: dict[str, list[tuple[str, str | None]]] = {}
    for name, pool in pools.items():
        pmap[name] = [(t.host, pool_check_id(name, t.host, t.port))
                      for t in pool.targets if _is_ip(t.host)]
    return StaticAliases(lmap, pmap)
