"""Configuration of a pool (one entry of `pools`): its targets, how they are reached, and (from
lbcdn.health.config.PoolPolicyConfig) its health checks, balancing, retries and limits.

Declared here, below the root schema (lbcdn.config.schema), so the pool and the cache's own
pools read it without importing the schema. Importing this module registers its validator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lbcdn.configkit.fields import REQUIRED, doc
from lbcdn.configkit.reflect import VALIDATORS, Loader, join
from lbcdn.health.config import PoolPolicyConfig
from lbcdn.tls import UpstreamTlsConfig
from lbcdn.upstream.discovery import DiscoveryConfig


@dataclass(frozen=True)
class TargetConfig:
    host: str = doc(
        "Backend host name, IPv4 or IPv6 address (brackets optional).", REQUIRED)
    port: int = doc("Backend port.", REQUIRED, lo=1, hi=65535)
    weight: int = doc(
        "Relative share of requests, under every balancing algorithm; 0 takes none.", 1,
        lo=0, hi=1000)


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
    protocol: Literal["http1.1", "h2", "h2c"] = doc(
        "What the targets speak: `http1.1`; `h2` (HTTP/2 over TLS, offered by ALPN; needs "
        "`tls`); or `h2c` (HTTP/2 over plain TCP with prior knowledge; no `tls`). HTTP/2 "
        "multiplexes many requests on one connection per target (as many at once as the "
        "target's SETTINGS allow) and passes trailers through: what gRPC backends need.",
        "http1.1")
    max_idle_per_target: int = doc(
        "Idle keep-alive connections kept per target (0: none are kept).", 64,
        lo=0, hi=100000)
    idle_timeout_s: float = doc(
        "An idle upstream connection is closed after this long; keep it below the "
        "backend's own keep-alive timeout.", 50.0, lo=0.001)
    proxy_protocol: Literal["v1", "v2"] | None = doc(
        "Send a PROXY protocol header of this version at the start of every connection to "
        "the targets (before TLS), carrying the client's address (a health check's and a "
        "cache fill's say `LOCAL`/`UNKNOWN`: lbcdn's own). Such a connection belongs to one "
        "client, so none is kept idle for reuse. Unset: none is sent.", None)
    discovery: DiscoveryConfig | None = doc(
        "Find targets in DNS (A/AAAA or SRV), re-resolved on an interval; targets that appear "
        "are added, those that disappear drain. Unset: only the fixed `targets`.", None)


def _check_discovery(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    """Cross-field checks of a pool's discovery (lbcdn.config.load checks that targets or
    discovery is given)."""
    d = v.get("discovery")
    if isinstance(d, DiscoveryConfig) and not d.srv and d.port is None:
        ld.error(join(join(path, "discovery"), "port"),
                 "required for A/AAAA discovery (srv: false)")


def _check_protocol(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    protocol = v.get("protocol")
    if protocol == "h2" and v.get("tls") is None:
        ld.error(join(path, "protocol"), "h2 needs `tls` (use h2c for plain HTTP/2)")
    elif protocol == "h2c" and v.get("tls") is not None:
        ld.error(join(path, "protocol"), "h2c is plain HTTP/2: use h2 with `tls`")
    if protocol in ("h2", "h2c") and v.get("proxy_protocol") is not None:
        # an HTTP/2 connection carries many clients' requests: no one client's address
        ld.error(join(path, "proxy_protocol"), f"not with protocol {protocol} (an HTTP/2 "
                 "connection is shared by many clients' requests)")


VALIDATORS.setdefault(PoolConfig, []).extend((_check_discovery, _check_protocol))
