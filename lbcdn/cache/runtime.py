"""The edge cache at run time, per data-plane process: stores, compiled distributions, origins,
the collapser, and what a reload keeps.

Rules:
- Built from `CacheConfig` (plus the bucket section, to reach bucket origins); no sockets are
  opened here. URL and bucket origins get a one-target upstream Pool of their own (built here,
  connected lazily by the data plane); `pool:` origins name a daemon pool, looked up at request
  time so a reload's new pool is used.
- An S3 origin is its endpoint as a URL origin, asked path-style (`/bucket` before the origin
  path) with every request signed (S3Signer), so the bucket can stay private.
- A bucket origin is the bucket's website endpoint reached as a plain HTTP origin:
  `buckets.website_address:website_port` (the S3 port when no website port is set), with the
  bucket's first website host (else `<bucket>.<first website_host_suffix>`, else the bucket name)
  as Host.
- A reload (`reconfigured`) keeps the stores when `storage` did not change, so a reload never
  empties the cache; everything else is rebuilt. Pools built here are closed by `close()`.
- A distribution with a parent tier: a miss whose key another replica owns (lbcdn.cache.tier)
  is asked of that replica first, with the tier's marker header, then of the behavior's origin
  plan (the parent failing: connect error, timeout, 5xx). A request carrying the marker came
  from a replica and follows the origin plan only, so a request crosses the tier at most once.
- With `--workers N` the workers share one store (lbcdn.cache.shared): `shared` is set, the
  memory store is this worker's hot copy in front of it, and there is no disk tier of its own
  (the control process manages the shared directory, `storage.disk_path` included).
- Wall-clock time (`clock`, injectable) drives freshness: Date, Expires and Last-Modified are
  wall-clock values.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from lbcdn.bucket.config import BucketsConfig
from lbcdn.bucket.sigv4 import sign_request
from lbcdn.cache.behavior import Behavior, Distribution
from lbcdn.cache.collapse import Collapser
from lbcdn.cache.config import CacheConfig, OriginConfig, ParentTierConfig, StorageConfig
from lbcdn.cache.directives import Headers, get_first
from lbcdn.cache.disk import DiskStore
from lbcdn.cache.entry import CachedResponse
from lbcdn.cache.invalidation import Invalidation, apply
from lbcdn.cache.shared import ALONE, STORED, Shared
from lbcdn.cache.tier import owner
from lbcdn.metrics import CacheMetrics
from lbcdn.cache.store import MemoryStore
from lbcdn.tasks import spawn
from lbcdn.tls import UpstreamTlsConfig
from lbcdn.upstream.config import PoolConfig, TargetConfig
from lbcdn.upstream.pool import Pool

log = logging.getLogger("lbcdn.cache")

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class S3Signer:
    """Signs an S3 origin's requests (SigV4 header auth, lbcdn.bucket.sigv4.sign_request)."""
    host: str
    region: str
    access_key_id: str
    secret: str

    def fields(self, method: bytes, target: bytes, now: float) -> list[tuple[bytes, bytes]]:
        path, _, query = target.partition(b"?")
        signed = sign_request(method.decode("latin-1"), path.decode("utf-8", "surrogateescape"),
                              query.decode("utf-8", "surrogateescape"), self.host,
                              self.access_key_id, self.secret, self.region,
                              datetime.fromtimestamp(now, UTC))
        return [(n.encode(), v.encode()) for n, v in signed]


@dataclass(frozen=True, slots=True)
class OriginEndpoint:
    """Where one origin id sends requests."""
    id: str
    pool_name: str | None       # a daemon pool (resolved per request)
    pool: Pool | None           # our own pool (URL, S3 and bucket origins)
    host_header: bytes | None   # None: the client's Host
    origin_path: bytes
    connect_attempts: int
    s3: S3Signer | None = None  # an S3 origin: its requests are signed
    marker: bytes | None = None  # a parent replica: the tier's marker header, sent to it


@dataclass(frozen=True, slots=True)
class Attempt:
    """One step of an origin plan: the endpoint, and the statuses that fail over from it."""
    endpoint: OriginEndpoint
    failover_statuses: frozenset[int]


def _split_url(url: str) -> tuple[str, str, int]:
    scheme, _, rest = url.partition("://")
    if rest.startswith("["):
        end = rest.index("]")
        host, port_s = rest[1:end], rest[end + 2:]
    else:
        host, _, port_s = rest.partition(":")
    port = int(port_s) if port_s else (443 if scheme == "https" else 80)
    return scheme, host, port


def _origin_pool(oid: str, host: str, port: int, host_header: str, tls: bool,
                 origin: OriginConfig) -> Pool:
    return Pool(PoolConfig(
        name=f"origin:{oid}", targets=(TargetConfig(host=host, port=port),),
        host_header=host_header, connect_timeout_s=origin.connect_timeout_s,
        response_timeout_s=origin.response_timeout_s,
        tls=UpstreamTlsConfig(server_name=host_header.rpartition(":")[0] or None)
        if tls else None))


def _endpoint(oid: str, o: OriginConfig, buckets: BucketsConfig | None) -> OriginEndpoint:
    path = o.origin_path.encode()
    if o.pool is not None:
        return OriginEndpoint(oid, o.pool, None, None, path, o.connect_attempts)
    url = o.url if o.url is not None else o.s3.endpoint if o.s3 is not None else None
    if url is not None:
        scheme, host, port = _split_url(url)
        default = 443 if scheme == "https" else 80
        shown = f"[{host}]" if ":" in host else host
        host_header = shown if port == default else f"{shown}:{port}"
        pool = _origin_pool(oid, host, port, host_header, scheme == "https", o)
        if o.s3 is None:
            return OriginEndpoint(oid, None, pool, host_header.encode(), path,
                                  o.connect_attempts)
        keys = o.s3.credentials
        return OriginEndpoint(oid, None, pool, host_header.encode(),
                              b"/" + o.s3.bucket.encode() + path, o.connect_attempts,
                              S3Signer(host_header, o.s3.region, keys.access_key_id,
                                       keys.secret()))
    assert o.bucket is not None
    if buckets is None:
        raise ValueError(f"cache origin {oid!r} names bucket {o.bucket!r} but there is no "
                         f"buckets section")
    bucket = buckets.buckets.get(o.bucket)
    host = o.bucket
    website = bucket.website if bucket is not None else None
    if website is not None and website.hosts:
        host = website.hosts[0]
    elif buckets.website_host_suffixes:
        host = f"{o.bucket}.{buckets.website_host_suffixes[0]}"
    port = buckets.website_port or buckets.port
    address = buckets.website_address if buckets.website_port else buckets.address
    pool = _origin_pool(oid, address, port, host, False, o)
    return OriginEndpoint(oid, None, pool, host.encode(), path, o.connect_attempts)


# A parent answering these failed (its own origin's error included): ask the origin instead.
PARENT_FAILOVER = frozenset({500, 502, 503, 504})


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve_all(name: str, port: int) -> list[str]:
    """Every address `name` resolves to (the system resolver, as for pool targets)."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, port,
                                                         type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def is_local(address: str) -> bool:
    """Whether `address` is one of this host's: the kernel routes to it from itself (a UDP
    connect sends nothing; binding would not tell, with ip_nonlocal_bind set)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((address, 9))
            return bool(s.getsockname()[0] == address)
    except OSError:
        return False


class ParentTier:
    """A distribution's parent tier: the peers, this replica among them, an attempt per peer.
    With `dns_name` the peers are what the name resolves to, followed while the runtime
    lives; until the first answer there is no parent (misses go to the origin)."""
    __slots__ = ("config", "peers", "me", "marker", "attempts", "task")

    def __init__(self, config: ParentTierConfig, resolver: Resolver = resolve_all) -> None:
        self.config = config
        self.marker = config.marker_header.lower().encode()
        self.peers: tuple[bytes, ...] = ()
        self.me: bytes | None = None
        self.attempts: dict[bytes, Attempt] = {}
        self.task: asyncio.Task[None] | None = None
        if config.dns_name is None:
            self.set_peers(config.peers, config.self_peer)
        else:
            try:
                self.task = spawn(self._follow(config.dns_name, config.port or 0, resolver),
                                  "cache-parent-dns")
            except RuntimeError:
                pass  # no loop (a unit test): peers come from set_peers

    def set_peers(self, peers: Iterable[str], me: str | None) -> None:
        """The tier is now `peers` (this replica: `me`); pools of peers that stay are kept."""
        config = self.config
        attempts: dict[bytes, Attempt] = {}
        for peer in peers:
            kept = self.attempts.pop(peer.encode(), None)
            if kept is not None:
                attempts[peer.encode()] = kept
                continue
            host, _, port = peer.rpartition(":")
            pool = Pool(PoolConfig(
                name=f"parent:{peer}", targets=(TargetConfig(host=host.strip("[]"),
                                                             port=int(port)),),
                connect_timeout_s=config.connect_timeout_s,
                response_timeout_s=config.response_timeout_s))
            # Host stays the viewer's and the path is not prefixed: the parent keys the
            # request exactly as this replica did
            endpoint = OriginEndpoint(f"parent:{peer}", None, pool, None, b"", 1,
                                      marker=config.marker_header.encode())
            attempts[peer.encode()] = Attempt(endpoint, PARENT_FAILOVER)
        self.close()  # the peers that left
        self.attempts = attempts
        self.peers = tuple(attempts)
        self.me = me.encode() if me is not None else None

    async def _follow(self, name: str, port: int, resolver: Resolver) -> None:
        auto = self.config.self_peer == "auto"
        while True:
            try:
                addresses = await resolver(name, port)
            except OSError as exc:  # keep the last peers: a resolver hiccup is no change
                log.warning("parent tier %s: %s", name, exc)
            else:
                peers = [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addresses]
                me = next((p for a, p in zip(addresses, peers) if auto and is_local(a)), None)
                if tuple(p.encode() for p in peers) != self.peers or \
                        (me.encode() if me else None) != self.me:
                    log.info("parent tier %s: %s", name, ", ".join(peers) or "no peers")
                    self.set_peers(peers, me)
            await asyncio.sleep(self.config.dns_refresh_s)

    def attempt(self, key: bytes, request_headers: Headers) -> Attempt | None:
        """The parent to ask first for `key`; None: this replica owns it, or the request came
        from a replica."""
        if get_first(request_headers, self.marker) is not None:
            return None
        peer = owner(self.peers, key)
        if peer is None or peer == self.me:
            return None
        return self.attempts[peer]

    def close(self) -> None:
        for a in self.attempts.values():
            if a.endpoint.pool is not None:
                a.endpoint.pool.close()

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.close()


class CacheRuntime:
    def __init__(self, config: CacheConfig, buckets: BucketsConfig | None = None, *,
                 clock: Clock = time.time, metrics: CacheMetrics | None = None,
                 memory: MemoryStore | None = None, disk: DiskStore | None = None,
                 shared: Shared | None = None) -> None:
        self.config = config
        self.buckets = buckets
        self.clock = clock
        self.metrics = metrics or CacheMetrics()
        storage = config.storage
        self.memory = memory or MemoryStore(storage.memory_max_bytes, storage.max_object_bytes)
        self.shared = shared
        if disk is None and storage.disk_path is not None and shared is None:
            disk = DiskStore(storage.disk_path, storage.disk_max_bytes,
                             storage.disk_max_object_bytes)
        self.disk = disk
        self.memory.on_evict = self._evicted
        self.collapser = Collapser()
        self.refreshing: set[bytes] = set()   # keys with a background revalidation running
        # slice fetches in flight by slice key (lbcdn.edge.slice_flow): one per slice at a time
        self.slicing: dict[bytes, asyncio.Future[tuple[CachedResponse, int]]] = {}
        self.distributions = {name: Distribution(d, config)
                              for name, d in config.distributions.items()}
        self.tiers = {id(self.distributions[name]): ParentTier(d.parent_tier)
                      for name, d in config.distributions.items() if d.parent_tier is not None}
        self.endpoints = {oid: _endpoint(oid, o, buckets) for oid, o in config.origins.items()}
        self.plans: dict[str, tuple[Attempt, ...]] = {
            oid: (Attempt(e, frozenset()),) for oid, e in self.endpoints.items()}
        for gid, g in config.origin_groups.items():
            statuses = frozenset(g.failover_statuses)
            self.plans[gid] = (Attempt(self.endpoints[g.primary], statuses),
                               Attempt(self.endpoints[g.secondary], frozenset()))
        self._update_gauges()

    # -- lifecycle ---------------------------------------------------------------------------
    def reconfigured(self, config: CacheConfig, buckets: BucketsConfig | None
                     ) -> CacheRuntime:
        """The runtime for a new config: same stores when storage is unchanged."""
        same = config.storage == self.config.storage
        rt = CacheRuntime(config, buckets, clock=self.clock, metrics=self.metrics,
                          memory=self.memory if same else None,
                          disk=self.disk if same else None, shared=self.shared)
        if same:
            rt.collapser = self.collapser
            rt.refreshing = self.refreshing
        return rt

    def close(self) -> None:
        """Close the pools this runtime built (idle connections now, busy ones when done)."""
        for e in self.endpoints.values():
            if e.pool is not None:
                e.pool.close()
        for tier in self.tiers.values():
            tier.stop()

    def plan(self, dist: Distribution, behavior: Behavior, key: bytes,
             request_headers: Headers) -> tuple[Attempt, ...]:
        """Where a fetch for `key` goes: the owning parent first when the distribution has a
        tier, then the behavior's origin (or origin group)."""
        plan = self.plans[behavior.origin]
        tier = self.tiers.get(id(dist))
        parent = tier.attempt(key, request_headers) if tier is not None else None
        return plan if parent is None else (parent,) + plan

    @staticmethod
    def storage_changed(a: StorageConfig, b: StorageConfig) -> bool:
        return a != b

    # -- stores ------------------------------------------------------------------------------
    def _evicted(self, entry: CachedResponse) -> None:
        self.metrics.evictions["memory"].inc()
        disk = self.disk
        if disk is not None and entry.charge <= disk.max_object_bytes:
            try:
                asyncio.get_running_loop().run_in_executor(None, disk.put, entry)
            except RuntimeError:
                pass  # no loop (a unit test): the entry is simply dropped

    def store(self, entry: CachedResponse) -> str | None:
        """Keep an entry in memory, else on disk (in a thread); the tier, or None. With a
        shared store: there too (in a thread), memory being this worker's copy; the control
        process hears of it once the file is in place (which ends this worker's lead)."""
        shared = self.shared
        if shared is not None:
            kept = self.memory.put(entry)
            if kept:
                self._update_gauges()
            if entry.size > shared.store.max_object_bytes:
                shared.leads.done(entry.key, ALONE)
                return "memory" if kept else None
            spawn(self._shared_put(shared, entry), "cache-shared-put")
            return "memory" if kept else "shared"
        if self.memory.put(entry):
            self._update_gauges()
            return "memory"
        disk = self.disk
        if disk is not None and entry.size <= disk.max_object_bytes:
            asyncio.get_running_loop().run_in_executor(None, self._disk_put, entry)
            return "disk"
        return None

    @staticmethod
    async def _shared_put(shared: Shared, entry: CachedResponse) -> None:
        try:
            name = await asyncio.to_thread(shared.store.put, entry)
        except OSError as exc:
            log.warning("shared cache write failed: %s", exc)
            name = None
        shared.leads.done(entry.key, STORED if name is not None else ALONE, name)

    @property
    def has_store(self) -> bool:
        """Is there a store behind memory (the disk tier, or the workers' shared store)?"""
        return self.disk is not None or self.shared is not None

    async def store_lookup(self, key: bytes, headers: Headers) -> CachedResponse | None:
        """The variant of `key` in the store behind memory: the shared store with `--workers`,
        else the disk tier (None without either, or without a match). Read in a thread (both
        block) and promoted to memory when it fits, so the next hit needs no thread hop."""
        shared = self.shared
        if shared is not None:
            entry = await asyncio.to_thread(shared.store.lookup, key, headers)
        elif self.disk is not None:
            entry = await asyncio.to_thread(self.disk.lookup, key, headers)
        else:
            return None
        if entry is not None:
            self.memory.put(entry)
        return entry

    def _disk_put(self, entry: CachedResponse) -> None:
        disk = self.disk
        assert disk is not None
        before = disk.evictions
        try:
            disk.put(entry)
        except OSError as exc:
            log.warning("disk cache write failed: %s", exc)
            return
        if disk.evictions > before:
            self.metrics.evictions["disk"].inc(disk.evictions - before)
        self.metrics.tier("disk", disk.bytes, len(disk))

    def max_object_bytes(self) -> int:
        """The largest body any tier may keep (a fill beyond it becomes a pass-through)."""
        storage = self.config.storage
        limit = min(storage.max_object_bytes, storage.memory_max_bytes)
        if self.shared is not None:
            limit = max(limit, self.shared.store.max_object_bytes)
        if self.disk is not None:
            limit = max(limit, min(storage.disk_max_object_bytes, storage.disk_max_bytes))
        return limit

    def _update_gauges(self) -> None:
        self.metrics.tier("memory", self.memory.bytes, len(self.memory))
        if self.disk is not None:
            self.metrics.tier("disk", self.disk.bytes, len(self.disk))

    def purge_uri(self, host: bytes, path: bytes) -> int:
        n = self.memory.purge_uri(host, path)
        if self.disk is not None:
            n += self.disk.purge_uri(host, path)
        self._update_gauges()
        return n

    def invalidate(self, inv: Invalidation) -> int:
        """Apply an invalidation to every tier of this process; the objects affected."""
        stores: list[MemoryStore | DiskStore] = [self.memory]
        if self.disk is not None:
            stores.append(self.disk)
        n = apply(inv, stores)
        self.metrics.purged["soft" if inv.soft else "hard"].inc(n)
        self._update_gauges()
        return n

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {
            "memory": {"objects": len(self.memory), "bytes": self.memory.bytes,
                       "max_bytes": self.memory.max_bytes,
                       "evictions": self.memory.evictions},
            "distributions": sorted(self.distributions),
            "origins": sorted(self.plans),
        }
        if self.disk is not None:
            out["disk"] = {"objects": len(self.disk), "bytes": self.disk.bytes,
                           "max_bytes": self.disk.max_bytes, "evictions": self.disk.evictions}
        return out
