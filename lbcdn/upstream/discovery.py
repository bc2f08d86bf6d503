"""Targets from DNS: a pool that names a host (A/AAAA) or an SRV record instead of fixed targets.

Job: `DiscoveryConfig` (a pool's `discovery:` section), `resolve(...)` (one lookup, through an
injectable resolver so tests need no DNS server), and `Discovery`, which re-resolves on an
interval and hands the current set of (host, port, weight) to a callback. Adding and draining
targets is the control plane's job (lbcdn.upstream.targets); this module only says what DNS says.

Rules:
- A/AAAA through the loop's getaddrinfo (what /etc/hosts and the system resolver answer, as a
  Kubernetes headless Service or a Compose service name needs); SRV, and everything when
  `nameservers` are given, through aiodns (c-ares) asking DNS directly (priority: only the
  lowest priority's records; weight: the SRV weight, at least 1; targets' addresses from the
  additional section when present).
- A failed lookup changes nothing: the last good answer stays (a DNS outage must not empty a
  pool). An empty but successful answer does empty it, after `empty_after` such answers in a row.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from lbcdn.configkit.fields import REQUIRED, doc
from lbcdn.tasks import spawn

log = logging.getLogger("lbcdn.discovery")

Found = frozenset[tuple[str, int, int]]          # (host, port, weight)
Resolver = Callable[[str, int, bool], Awaitable[list[tuple[str, int, int]]]]


@dataclass(frozen=True)
class DiscoveryConfig:
    """Follow a DNS name instead of (or besides) fixed targets."""
    dns_name: str = doc("Host name (A/AAAA) or SRV name (`_http._tcp.app.example`) to resolve.",
                        REQUIRED)
    port: int | None = doc("Port of the discovered addresses (A/AAAA; SRV records carry their "
                           "own).", None, lo=1, hi=65535)
    interval_s: float = doc("Re-resolve this often.", 30.0, lo=0.05, hi=86400)
    srv: bool = doc("Resolve an SRV record instead of A/AAAA.", False)
    nameservers: tuple[str, ...] = doc(
        "DNS servers to ask (`ip` or `ip:port`, e.g. Consul's `127.0.0.1:8600`) instead of the "
        "system's resolver.", default_factory=tuple)
    weight: int = doc("Weight of every A/AAAA-discovered target.", 1, lo=0, hi=1000)
    empty_after: int = doc("Successful empty answers in a row before the pool is emptied.", 2,
                           lo=1, hi=100)


async def dns_lookup(name: str, port: int, srv: bool,
                     nameservers: tuple[str, ...] = ()) -> list[tuple[str, int, int]]:
    """Ask DNS servers directly (aiodns/c-ares): SRV records (only the lowest priority; their
    targets' addresses taken from the additional section when the server sent them, as
    Consul and lbcdn's own DNS do), or A and AAAA records. A name that does not exist, or has
    no such records, is an empty answer; other failures raise (the caller keeps its last
    answer)."""
    import aiodns
    from aiodns.error import DNSError
    resolver = aiodns.DNSResolver(nameservers=list(nameservers) or None)

    async def ask(qtype: str) -> Any:
        try:
            return await resolver.query_dns(name, qtype)
        except DNSError as exc:
            if exc.args and exc.args[0] in (aiodns.error.ARES_ENOTFOUND,
                                            aiodns.error.ARES_ENODATA):
                return None
            raise OSError(f"DNS lookup of {name} {qtype} failed: {exc}") from None

    if srv:
        result = await ask("SRV")
        if result is None:
            return []
        records = [rr.data for rr in result.answer if rr.type == 33]
        if not records:
            return []
        addresses: dict[str, list[str]] = {}
        for rr in result.additional:
            if rr.type in (1, 28):
                addresses.setdefault(rr.name.rstrip(".").lower(), []).append(rr.data.addr)
        best = min(r.priority for r in records)
        found = []
        for r in records:
            if r.priority != best:
                continue
            host = r.target.rstrip(".")
            for address in addresses.get(host.lower(), [host]):
                found.append((address, int(r.port), max(1, int(r.weight))))
        return found
    found = []
    for qtype in ("A", "AAAA"):
        result = await ask(qtype)
        if result is not None:
            found += [(rr.data.addr, port, 1) for rr in result.answer if rr.type in (1, 28)]
    return found


async def system_resolver(name: str, port: int, srv: bool) -> list[tuple[str, int, int]]:
    """A/AAAA via getaddrinfo (the system's resolver, /etc/hosts included), SRV via the
    system's DNS servers."""
    if srv:
        return await dns_lookup(name, port, True)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            return []  # the name exists no more (or has no address): an empty answer
        raise
    return [(str(info[4][0]), port, 1) for info in infos]


async def resolve(config: DiscoveryConfig, resolver: Resolver = system_resolver) -> Found:
    if config.nameservers and resolver is system_resolver:
        found = await dns_lookup(config.dns_name, config.port or 0, config.srv,
                                 config.nameservers)
    else:
        found = await resolver(config.dns_name, config.port or 0, config.srv)
    if not config.srv:
        # the resolver was asked for config.port; a fake may answer others (tests)
        found = [(h, p or config.port or 0, config.weight) for h, p, _ in found]
    return frozenset(found)


class Discovery:
    """Re-resolves `config` every interval_s and calls `on_found(set)` when the set changed."""

    def __init__(self, config: DiscoveryConfig, on_found: Callable[[Found], None], *,
                 resolver: Resolver = system_resolver, name: str = "") -> None:
        self.config = config
        self.on_found = on_found
        self.resolver = resolver
        self.name = name
        self.current: Found | None = None
        self.last_error: str | None = None
        self.lookups = 0
        self._empties = 0
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        """One lookup now; applies its answer."""
        self.lookups += 1
        try:
            found = await asyncio.wait_for(resolve(self.config, self.resolver),
                                           max(1.0, self.config.interval_s))
        except Exception as exc:  # any resolver trouble: keep the last good answer
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("pool %s: resolving %s failed: %s", self.name, self.config.dns_name,
                        self.last_error)
            return
        self.last_error = None
        if not found and self.current:
            self._empties += 1
            if self._empties < self.config.empty_after:
                return
        self._empties = 0
        if found != self.current:
            self.current = found
            self.on_found(found)

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.config.interval_s)

    def start(self) -> None:
        if self._task is None:
            self._task = spawn(self._run(), f"discovery-{self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
