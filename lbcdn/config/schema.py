"""The configuration tree: its root `Config` and the sections no component owns (admin,
logging, shutdown, demo backends); frozen dataclasses, one per YAML section.

The sections a component reads are declared in that component, below this module (listeners:
lbcdn.edge.config, pools: lbcdn.upstream.config and lbcdn.health.config, routes:
lbcdn.routing.config, TLS: lbcdn.tls, cache, buckets, DNS: their packages' config.py), so
components never import the schema; tests/test_layers.py keeps it that way.

Rules of this module:
- Field names are the YAML keys; units are in the names (`_s`, `_bytes`).
- Every field documents itself in `metadata["doc"]`; numeric bounds live in
  `metadata["min"]` / `metadata["max"]` and are enforced by the loader, which names the
  YAML path of any value that breaks them.
- Defaults follow what an ALB / nginx user expects.
- Config is data only. Runtime state (connections, target health) is built from it elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lbcdn.bucket.config import BucketsConfig
from lbcdn.cache.config import CacheConfig
from lbcdn.configkit.fields import REQUIRED, doc
from lbcdn.configkit.limits import HttpLimitsConfig
from lbcdn.dns.config import DnsConfig
from lbcdn.edge.config import ListenerConfig
from lbcdn.routing.config import FixedResponseAction, RouteConfig, RoutingConfig
from lbcdn.tlstickets import TicketsConfig
from lbcdn.upstream.config import PoolConfig


@dataclass(frozen=True)
class PeersConfig:
    """The other replicas, for fanning out state-changing admin calls (see lbcdn.admin.peers)."""
    dns_name: str | None = doc(
        "Name whose addresses are the replicas (a Kubernetes headless Service); re-resolved on "
        "every call.", None)
    addresses: tuple[str, ...] = doc("Fixed replica addresses, besides `dns_name`'s.",
                                     default_factory=tuple)
    port: int = doc("Their admin port; 0: the same as ours.", 0, lo=0, hi=65535)
    timeout_s: float = doc("How long one peer may take to answer.", 5.0, lo=0.1)


@dataclass(frozen=True)
class AdminConfig:
    address: str = doc(
        "Admin listener address; keep it on loopback or a private network.",
        "127.0.0.1")
    port: int = doc("Admin listener port; 0 disables the admin listener.", 9901, lo=0, hi=65535)
    token: str | None = doc(
        "Bearer token required by `/api/*`; write `${LBCDN_ADMIN_TOKEN}` to read it from "
        "the environment. Must not be empty. Without a token, `/api/*` is open but "
        "read-only: state-changing calls answer 403.",
        None)
    peers: PeersConfig | None = doc(
        "Other replicas that state-changing admin calls are also sent to.", None)
    state_dir: str | None = doc(
        "Directory where changes made through the admin API (targets registered, "
        "deregistered, weights, maintenance) are kept, so they survive a restart; the config "
        "file stays the base. Unset: such changes last until the daemon stops.", None)
    limits: HttpLimitsConfig = doc("Limits on the admin listener's clients.",
                                   default_factory=HttpLimitsConfig)


@dataclass(frozen=True)
class AccessLogConfig:
    enabled: bool = doc("Write one JSON line per request.", True)
    path: str | None = doc(
        "File to append to (created if missing); not empty, not a directory, and its "
        "directory must exist (checked when `enabled`). Unset: stdout.", None)


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = doc(
        "Level of the daemon log (stderr); `--log-level` overrides it.",
        "info")
    access_log: AccessLogConfig = doc(
        "The access log.", default_factory=AccessLogConfig)


@dataclass(frozen=True)
class ShutdownConfig:
    drain_timeout_s: float = doc(
        "On SIGTERM/SIGINT, how long in-flight requests may run before the daemon exits.",
        30.0, lo=0)


@dataclass(frozen=True)
class DemoBackendConfig:
    """A built-in HTTP app (echo, /bytes/N, /status/N, /delay/MS ...) started with the daemon,
    so the default config works with nothing else installed. Also a load-test target."""
    name: str = doc(
        "Name shown in its responses (`X-Backend`, `\"backend\"`); unique.", REQUIRED)
    port: int = doc("Port to listen on.", REQUIRED, lo=1, hi=65535)
    address: str = doc("Address to bind.", "127.0.0.1")


@dataclass(frozen=True)
class Config:
    listeners: tuple[ListenerConfig, ...] = doc(
        "HTTP listeners. At least one.", REQUIRED)
    pools: dict[str, PoolConfig] = doc(
        "Backend pools by name; routes refer to them.", default_factory=dict)
    routes: tuple[RouteConfig, ...] = doc("Ordered routing rules; the first match wins.",
                                          default_factory=tuple)
    routing: RoutingConfig = doc("Limits of routing rules.", default_factory=RoutingConfig)
    default_route: RouteConfig = doc(
        "What a request matching no route gets; its `name` defaults to `default`. "
        "Written without `match`. Default: a 404 fixed response `no route matches this "
        "request`.",
        default_factory=lambda: RouteConfig(
            name="default",
            action=FixedResponseAction(status=404, body="no route matches this request\n")))
    admin: AdminConfig = doc("Admin API listener.", default_factory=AdminConfig)
    logging: LoggingConfig = doc("Daemon and access logs.", default_factory=LoggingConfig)
    shutdown: ShutdownConfig = doc("Graceful shutdown.", default_factory=ShutdownConfig)
    tls_session_tickets: TicketsConfig = doc(
        "TLS session-ticket keys of the HTTPS listeners: shared by all workers, rotated, in "
        "memory only.", default_factory=TicketsConfig)
    demo_backends: tuple[DemoBackendConfig, ...] = doc(
        "Built-in demo HTTP backends started with the daemon.", default_factory=tuple)
    cache: CacheConfig = doc(
        "Edge cache (CloudFront): storage, policies, origins, distributions. Default: no "
        "distributions.", default_factory=CacheConfig)
    buckets: BucketsConfig | None = doc(
        "Bucket origin (S3 API and static websites). Unset: no bucket origin.", None)
    dns: DnsConfig | None = doc(
        "Authoritative DNS (Route 53). Unset: no DNS server.", None)

