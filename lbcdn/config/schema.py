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
from lbcdn.config.fields import REQUIRED, doc  # re-exported for the component configs
from lbcdn.config.limits import HttpLimitsConfig, limit_field
from lbcdn.dns.config import DnsConfig
from lbcdn.config.reflect import VALIDATORS
from lbcdn.health.config import PoolPolicyConfig, check_pool_targets


XffMode = Literal["append", "preserve", "remove"]


@dataclass(frozen=True)
class CertificateConfig:
    cert_file: str = doc(
        "PEM certificate chain, leaf first (relative paths: from the working directory).",
        REQUIRED)
    key_file: str = doc("PEM private key of the certificate.", REQUIRED)
    server_names: tuple[str, ...] = doc(
        "SNI names this certificate answers for; `*.example.com` matches one label. "
        "Empty: the DNS names of the certificate's subjectAltName.", default_factory=tuple)


@dataclass(frozen=True)
class ListenerTlsConfig:
    """An HTTPS listener: TLS 1.2 and 1.3 only, ECDHE with AES-GCM or ChaCha20 for TLS 1.2,
    session tickets for resumption. Re-read on every reload."""
    certificates: tuple[CertificateConfig, ...] = doc(
        "Chosen by SNI; the first one is the default (no SNI, or no name matches). At "
        "least one.",
        REQUIRED)
    min_version: Literal["1.2", "1.3"] = doc("Oldest TLS version accepted.", "1.2")


@dataclass(frozen=True)
class ListenerConfig:
    name: str = doc(
        "Listener name, used in logs (`listener`) and metrics (`listener` label); "
        "unique, not empty.", REQUIRED)
    port: int = doc("TCP port to listen on.", REQUIRED, lo=1, hi=65535)
    address: str = doc(
        "Address to bind: an IPv4/IPv6 literal or a host name such as `localhost`. "
        "`0.0.0.0` is every IPv4 address, `::` every IPv6 address (bound IPv6-only: list "
        "both for both).", "0.0.0.0")
    header_timeout_s: float = limit_field("header_timeout_s",
        "Time allowed to receive a whole request head, counted from its first byte "
        "(trickling bytes does not extend it); then 408 and close.")
    idle_timeout_s: float = limit_field("idle_timeout_s",
        "Idle keep-alive time between requests (ELB's default) before the connection is "
        "closed silently; also how long a client may leave our response unread.")
    body_timeout_s: float = limit_field("body_timeout_s",
        "Longest pause while reading a request body; then 408 (or a close, if the "
        "response has started).")
    max_request_line_bytes: int = limit_field("max_request_line_bytes",
        "Longest request-target; longer gets 414.")
    max_header_bytes: int = limit_field("max_header_bytes")
    max_headers_total_bytes: int = limit_field("max_headers_total_bytes")
    max_header_count: int = limit_field("max_header_count")
    x_forwarded_for: XffMode = doc(
        "`append`: the client's address is appended to the X-Forwarded-For received (or "
        "starts it); `preserve`: forwarded as received (none if none); `remove`: never "
        "sent upstream.", "append")
    request_id_header: str = doc(
        "Header carrying the request id (see [Proxying](../guides/edge.md#proxying)). "
        "Not one that frames the request or belongs to one hop (`Content-Length`, "
        "`Transfer-Encoding`, `Host`, `Connection`, `Keep-Alive`, `TE`, `Trailer`, "
        "`Upgrade`, `Proxy-Connection`, `Expect`) nor one the proxy sets "
        "(`X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Port`, `Via`); "
        "case-insensitive.", "X-Request-Id")
    backlog: int = doc(
        "`listen()` backlog.", 1024, lo=1, hi=65535)
    tls: ListenerTlsConfig | None = doc(
        "Serve HTTPS on this listener. Unset: plain HTTP.", None)


@dataclass(frozen=True)
class TargetConfig:
    host: str = doc(
        "Backend host name, IPv4 or IPv6 address (brackets optional).", REQUIRED)
    port: int = doc("Backend port.", REQUIRED, lo=1, hi=65535)
    weight: int = doc(
        "Relative share of requests, under every balancing algorithm; 0 takes none.", 1,
        lo=0, hi=1000)


@dataclass(frozen=True)
class UpstreamTlsConfig:
    """HTTPS to the pool's targets, with SNI and certificate verification."""
    verify: bool = doc(
        "Verify the target's certificate chain and name; `false` accepts any certificate.", True)
    ca_file: str | None = doc(
        "PEM CA bundle to verify against. Unset: the system's CA bundle.", None)
    server_name: str | None = doc(
        "Sent as SNI and verified against the certificate. Unset: `host_header` when it "
        "is a literal, else the target's host.", None)


@dataclass(frozen=True)
class PoolConfig(PoolPolicyConfig):
    """A pool: its targets and how they are reached, plus (from PoolPolicyConfig) health
    checks, outlier detection, balancing, retries, slow start, draining and limits."""
    name: str = doc(
        "Not written inside the pool: `pools: {app: {...}}` names the pool `app` (a "
        "`name:` key is an error).", REQUIRED)
    targets: tuple[TargetConfig, ...] = doc(
        "The backends; may be left out when `discovery` finds them (a pool needs one or "
        "the other).", default_factory=tuple)
    host_header: str = doc(
        "Host header sent upstream: `preserve` (the client's), `target` (the target's "
        "`host:port`), or a literal host name with an optional port.", "preserve")
    connect_timeout_s: float = doc("Upstream TCP connect timeout; then 504.", 5.0, lo=0.001)
    response_timeout_s: float = doc(
        "Longest wait for the response head after the whole request was sent, and "
        "longest pause between response body reads; then 504 (or a close, if the "
        "response has started). While the client is still sending its body, the "
        "listener's `body_timeout_s` applies instead (a stalled upload is the client's "
        "408), unless the backend stops reading it or the client waits for a `100 "
        "Continue`.", 60.0, lo=0.001)
    tls: UpstreamTlsConfig | None = doc(
        "Connect to the targets with TLS. Unset: plain HTTP.", None)
    max_idle_per_target: int = doc(
        "Idle keep-alive connections kept per target (0: none are kept).", 64,
                                   lo=0, hi=100000)
    idle_timeout_s: float = doc(
        "An idle upstream connection is closed after this long; keep it below the "
        "backend's own keep-alive timeout.", 50.0, lo=0.001)


@dataclass(frozen=True)
class MatchConfig:
    hosts: tuple[str, ...] = doc(
        "Host names: exact (`www.example.com`), a wildcard first label "
        "(`*.example.com`), an IPv4 address or a bracketed IPv6 address; "
        "case-insensitive, without a port. One name or a list; unset: any host.",
        default_factory=tuple)
    path_prefix: str | None = doc(
        "The request path must start with it. No `?` or `#`: the query is not part of "
        "the path. Starts with `/`.", None)
    path: str | None = doc(
        "CloudFront-style pattern the whole path must match: `*` any run of characters "
        "(including `/`), `?` exactly one. No `#`: the fragment is never sent. Starts "
        "with `/`.", None)


@dataclass(frozen=True)
class ForwardAction:
    pool: str = doc(
        "Name of the pool to forward to. `forward: app` is short for `forward: {pool: "
        "app}`.", REQUIRED)


@dataclass(frozen=True)
class RedirectAction:
    """ALB-style redirect: each part may use #{protocol}, #{host}, #{port}, #{path}, #{query}."""
    status: int = doc(
        "Status of the redirect: 301, 302, 303, 307 or 308.", 301)
    protocol: str = doc(
        "Scheme of the new URL: `http`, `https` or `#{protocol}`.", "#{protocol}")
    host: str = doc(
        "Host of the new URL: a host name or IP address (placeholders allowed, e.g. "
        "`www.#{host}`), without port (that is `port`), path, spaces or control "
        "characters.", "#{host}")
    port: str = doc(
        "Port of the new URL; left out when it is the scheme's default (80, 443). A port "
        "number 1–65535 or a placeholder; quote numbers (`\"443\"`).", "#{port}")
    path: str = doc(
        "Path of the new URL, starting with `/`; no `?` or `#` (the query is `query`), "
        "spaces or control characters.", "/#{path}")
    query: str = doc(
        "Query of the new URL, without the leading `?` (added only when the query is "
        "non-empty); no `#`, spaces or control characters.", "#{query}")


@dataclass(frozen=True)
class FixedResponseAction:
    status: int = doc(
        "Status code: 2xx, 4xx or 5xx, as ALB (a 3xx is a `redirect`).", 200, lo=200, hi=599)
    content_type: str = doc(
        "Content-Type of the body: a media type, `type/subtype` with optional `; "
        "name=value` parameters.", "text/plain")
    body: str = doc(
        "Response body (sent as UTF-8), at most 1 MiB.", "")


Action = ForwardAction | RedirectAction | FixedResponseAction


@dataclass(frozen=True)
class RouteConfig:
    """YAML: {name, match, max_body_bytes} plus exactly one of `forward` (a pool name or
    {pool}), `redirect` or `fixed_response`."""
    name: str = doc(
        "Route name, used in logs (`route`) and metrics (`route` label); unique, not "
        "empty. In `default_route` it defaults to `default`.", REQUIRED)
    action: Action = doc("What to do with a matching request.", REQUIRED)
    match: MatchConfig = doc(
        "Conditions; all given ones must hold. Not allowed in `default_route`. Unset: "
        "every request matches.", default_factory=MatchConfig)
    max_body_bytes: int | None = doc(
        "Largest request body accepted; larger gets 413 (checked against Content-Length "
        "up front, and while a chunked body arrives). Unset: no limit.", None,
                                     lo=0)
    cache: str | None = doc(
        "Serve through this [edge-cache distribution](#cachedistributionsname) (a key of "
        "`cache.distributions`): its behaviors choose the origin and cache policy. "
        "Requests on the route are then answered through the cache instead of by the "
        "route's action. Unset: no cache.", None)
    viewer_protocol: Literal["allow-all", "redirect-to-https", "https-only"] = doc(
        "CloudFront's viewer protocol policy for plain-HTTP requests: serve them, "
        "redirect them to `https://` (same host and target, default port), or refuse "
        "them with 403.", "allow-all")
    https_redirect_status: int = doc(
        "Status of the redirect-to-https answer. 301 or 308.", 301, lo=301, hi=308)
    hsts_max_age_s: int | None = doc(
        "Add `Strict-Transport-Security: max-age=N` to this route's HTTPS responses "
        "(HSTS preloading asks for a year or two: 31536000, 63072000). Unset: no header.", None,
        lo=0, hi=2**31 - 1)  # HTTP's delta-seconds limit; HSTS preloading asks for years


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
    demo_backends: tuple[DemoBackendConfig, ...] = doc(
        "Built-in demo HTTP backends started with the daemon.", default_factory=tuple)
    cache: CacheConfig = doc(
        "Edge cache (CloudFront): storage, policies, origins, distributions. Default: no "
        "distributions.", default_factory=CacheConfig)
    buckets: BucketsConfig | None = doc(
        "Bucket origin (S3 API and static websites). Unset: no bucket origin.", None)
    dns: DnsConfig | None = doc(
        "Authoritative DNS (Route 53). Unset: no DNS server.", None)


VALIDATORS.setdefault(PoolConfig, []).append(check_pool_targets)
