"""The configuration tree: frozen dataclasses, one per YAML section.

Rules of this module:
- Field names are the YAML keys; units are in the names (`_s`, `_bytes`).
- Every field documents itself in `metadata["doc"]`; numeric bounds live in
  `metadata["min"]` / `metadata["max"]` and are enforced by the loader, which names the
  YAML path of any value that breaks them.
- Defaults follow what an ALB / nginx user expects.
- Config is data only. Runtime state (connections, target health) is built from it elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


from lbcdn.bucket.config import BucketsConfig
from lbcdn.cache.config import CacheConfig
from lbcdn.configkit.fields import REQUIRED, doc
from lbcdn.configkit.limits import HttpLimitsConfig, limit_field
from lbcdn.dns.config import DnsConfig
from lbcdn.configkit.reflect import VALIDATORS
from lbcdn.health.config import PoolPolicyConfig, check_pool_targets


XffMode = Literal["append", "preserve", "remove"]


@dataclass(frozen=True)
class CertificateConfig:
    cert_file: str = doc("PEM certificate chain (leaf first).", REQUIRED)
    key_file: str = doc("PEM private key of the certificate.", REQUIRED)
    server_names: tuple[str, ...] = doc(
        "Names (SNI) this certificate answers for; `*.example.com` allowed. Default: the "
        "DNS names in the certificate's subjectAltName.", default_factory=tuple)


@dataclass(frozen=True)
class ListenerTlsConfig:
    """An HTTPS listener: TLS 1.2 and 1.3 only, ECDHE with AES-GCM or ChaCha20 for TLS 1.2,
    session tickets for resumption. Re-read on every reload."""
    certificates: tuple[CertificateConfig, ...] = doc(
        "Certificates chosen by SNI; the first one is the default (no SNI or no match).",
        REQUIRED)
    min_version: Literal["1.2", "1.3"] = doc("Oldest TLS version accepted.", "1.2")


@dataclass(frozen=True)
class ListenerConfig:
    name: str = doc("Listener name, used in logs and metrics.", REQUIRED)
    port: int = doc("TCP port to listen on.", REQUIRED, lo=1, hi=65535)
    address: str = doc("Address to bind.", "0.0.0.0")
    header_timeout_s: float = limit_field("header_timeout_s")
    idle_timeout_s: float = limit_field("idle_timeout_s")
    body_timeout_s: float = limit_field("body_timeout_s")
    max_request_line_bytes: int = limit_field("max_request_line_bytes")
    max_header_bytes: int = limit_field("max_header_bytes")
    max_headers_total_bytes: int = limit_field("max_headers_total_bytes")
    max_header_count: int = limit_field("max_header_count")
    x_forwarded_for: XffMode = doc(
        "X-Forwarded-For handling: append the client address, preserve as received, "
        "or remove.", "append")
    request_id_header: str = doc(
        "Header carrying the request id; generated when the client sent none.", "X-Request-Id")
    backlog: int = doc("listen() backlog.", 1024, lo=1, hi=65535)
    tls: ListenerTlsConfig | None = doc("Serve HTTPS on this listener.", None)


@dataclass(frozen=True)
class TargetConfig:
    host: str = doc("Backend host name or address.", REQUIRED)
    port: int = doc("Backend port.", REQUIRED, lo=1, hi=65535)
    weight: int = doc("Relative share of requests; 0 takes none.", 1, lo=0, hi=1000)


@dataclass(frozen=True)
class UpstreamTlsConfig:
    """HTTPS to the pool's targets, with SNI and certificate verification."""
    verify: bool = doc("Verify the target's certificate and host name.", True)
    ca_file: str | None = doc("PEM CA bundle to verify against; the system's when unset.", None)
    server_name: str | None = doc(
        "SNI and verified name; default: the target's host (or the pool's literal "
        "host_header).", None)


@dataclass(frozen=True)
class PoolConfig(PoolPolicyConfig):
    """A pool: its targets and how they are reached, plus (from PoolPolicyConfig) health
    checks, outlier detection, balancing, retries, slow start, draining and limits."""
    name: str = doc("Pool name (the key under `pools`).", REQUIRED)
    targets: tuple[TargetConfig, ...] = doc(
        "Backends: `host:port` strings or {host, port, weight} mappings (may be left out "
        "when `discovery` finds them).", default_factory=tuple)
    host_header: str = doc(
        "Host header sent upstream: `preserve` (the client's), `target` (the target's "
        "host:port), or a literal host name.", "preserve")
    connect_timeout_s: float = doc("Upstream TCP connect timeout; then 504.", 5.0, lo=0.001)
    response_timeout_s: float = doc(
        "Longest wait for the response head, and longest pause between response body reads; "
        "then 504.", 60.0, lo=0.001)
    tls: UpstreamTlsConfig | None = doc("Connect to the targets with TLS.", None)
    max_idle_per_target: int = doc("Idle keep-alive connections kept per target.", 64,
                                   lo=0, hi=100000)
    idle_timeout_s: float = doc(
        "An idle upstream connection is closed after this long (keep it below the backend's "
        "own keep-alive timeout).", 50.0, lo=0.001)


@dataclass(frozen=True)
class MatchConfig:
    hosts: tuple[str, ...] = doc(
        "Host names (YAML key `host`, a string or list): exact, or `*.example.com` wildcards. "
        "Empty matches any host.", default_factory=tuple)
    path_prefix: str | None = doc("Path prefix that must start the request path.", None)
    path: str | None = doc(
        "CloudFront-style path pattern: `*` matches any run of characters (including `/`), "
        "`?` exactly one.", None)


@dataclass(frozen=True)
class ForwardAction:
    pool: str = doc("Name of the pool to forward to.", REQUIRED)


@dataclass(frozen=True)
class RedirectAction:
    """ALB-style redirect: each part may use #{protocol}, #{host}, #{port}, #{path}, #{query}."""
    status: int = doc("301, 302, 303, 307 or 308.", 301)
    protocol: str = doc("`http`, `https` or `#{protocol}`.", "#{protocol}")
    host: str = doc("Host of the new URL.", "#{host}")
    port: str = doc("Port of the new URL (omitted when it is the scheme's default).", "#{port}")
    path: str = doc("Path of the new URL; must start with `/`.", "/#{path}")
    query: str = doc("Query of the new URL, without `?`.", "#{query}")


@dataclass(frozen=True)
class FixedResponseAction:
    status: int = doc("Status code, 200-599.", 200, lo=200, hi=599)
    content_type: str = doc("Content-Type of the body.", "text/plain")
    body: str = doc("Response body (UTF-8), at most 1 MiB.", "")


Action = ForwardAction | RedirectAction | FixedResponseAction


@dataclass(frozen=True)
class RouteConfig:
    """YAML: {name, match, max_body_bytes} plus exactly one of `forward` (a pool name or
    {pool}), `redirect` or `fixed_response`."""
    name: str = doc("Route name, used in logs and metrics.", REQUIRED)
    action: Action = doc("What to do with a matching request.", REQUIRED)
    match: MatchConfig = doc("Conditions; all given ones must hold.", default_factory=MatchConfig)
    max_body_bytes: int | None = doc("Largest request body accepted; larger gets 413.", None,
                                     lo=0)
    cache: str | None = doc(
        "Serve through this edge-cache distribution (a key of `cache.distributions`): its "
        "behaviors choose the origin and cache policy.", None)
    viewer_protocol: Literal["allow-all", "redirect-to-https", "https-only"] = doc(
        "CloudFront's viewer protocol policy: serve plain HTTP too, redirect it to HTTPS "
        "(`https_redirect_status`), or refuse it with 403.", "allow-all")
    https_redirect_status: int = doc("301 or 308 for redirect-to-https.", 301, lo=301, hi=308)
    hsts_max_age_s: int | None = doc(
        "Send Strict-Transport-Security with this max-age on HTTPS responses.", None, lo=0,
        hi=2**31 - 1)  # HTTP's delta-seconds limit; HSTS preloading asks for years


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
    address: str = doc("Admin listener address (keep it on loopback or a private network).",
                       "127.0.0.1")
    port: int = doc("Admin listener port; 0 disables the admin listener.", 9901, lo=0, hi=65535)
    token: str | None = doc(
        "Bearer token required by /api/*; use `${ENV_VAR}` to read it from the environment.",
        None)
    peers: PeersConfig | None = doc(
        "Replicas that state-changing admin calls are also sent to.", None)
    state_dir: str | None = doc(
        "Directory where changes made through the admin API (targets registered, "
        "deregistered, weights, maintenance) are kept, so they survive a restart; the config "
        "file stays the base. Unset: such changes last until the daemon stops.", None)
    limits: HttpLimitsConfig = doc("Limits on the admin listener's clients.",
                                   default_factory=HttpLimitsConfig)


@dataclass(frozen=True)
class AccessLogConfig:
    enabled: bool = doc("Write one JSON line per request.", True)
    path: str | None = doc("File to append to; stdout when unset.", None)


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = doc("Log level of the daemon log.",
                                                             "info")
    access_log: AccessLogConfig = doc("Access log.", default_factory=AccessLogConfig)


@dataclass(frozen=True)
class ShutdownConfig:
    drain_timeout_s: float = doc(
        "On SIGTERM/SIGINT, how long in-flight requests may run before the daemon exits.",
        30.0, lo=0)


@dataclass(frozen=True)
class DemoBackendConfig:
    """A built-in HTTP app (echo, /bytes/N, /status/N, /delay/MS ...) started with the daemon,
    so the default config works with nothing else installed. Also a load-test target."""
    name: str = doc("Name shown in its responses.", REQUIRED)
    port: int = doc("Port to listen on.", REQUIRED, lo=1, hi=65535)
    address: str = doc("Address to bind.", "127.0.0.1")


@dataclass(frozen=True)
class Config:
    listeners: tuple[ListenerConfig, ...] = doc("HTTP listeners.", REQUIRED)
    pools: dict[str, PoolConfig] = doc("Backend pools by name.", default_factory=dict)
    routes: tuple[RouteConfig, ...] = doc("Ordered routing rules; the first match wins.",
                                          default_factory=tuple)
    default_route: RouteConfig = doc(
        "What a request matching no route gets (a route without `match`). Default: 404.",
        default_factory=lambda: RouteConfig(
            name="default",
            action=FixedResponseAction(status=404, body="no route matches this request\n")))
    admin: AdminConfig = doc("Admin API listener.", default_factory=AdminConfig)
    logging: LoggingConfig = doc("Daemon and access logs.", default_factory=LoggingConfig)
    shutdown: ShutdownConfig = doc("Graceful shutdown.", default_factory=ShutdownConfig)
    demo_backends: tuple[DemoBackendConfig, ...] = doc(
        "Built-in demo backends to start.", default_factory=tuple)
    cache: CacheConfig = doc("Edge cache (CloudFront): storage, policies, origins, "
                             "distributions.", default_factory=CacheConfig)
    buckets: BucketsConfig | None = doc(
        "Bucket origin (S3 API and static websites); absent: off.", None)
    dns: DnsConfig | None = doc("Authoritative DNS (Route 53); absent: no DNS server.", None)


VALIDATORS.setdefault(PoolConfig, []).append(check_pool_targets)
