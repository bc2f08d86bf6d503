"""Configuration of an HTTP listener (one entry of `listeners`): address, limits, client
address handling and TLS.

Declared here, below the root schema (lbcdn.config.schema), so the edge reads it without
importing the schema. Data only: imports nothing of the edge.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lbcdn.configkit.fields import REQUIRED, doc
from lbcdn.configkit.limits import limit_field
from lbcdn.configkit.reflect import VALIDATORS, Loader, index, join
from lbcdn.tls import ListenerTlsConfig


XffMode = Literal["append", "preserve", "remove"]
HttpVersion = Literal["h2", "http1.1"]


@dataclass(frozen=True)
class ProxyProtocolConfig:
    trusted: tuple[str, ...] = doc(
        "Addresses or CIDRs of the load balancers in front. A connection from elsewhere is "
        "served as a direct client, and closed (and logged) if it starts with a PROXY "
        "header.", REQUIRED)
    accept: bool = doc(
        "Read a PROXY protocol header (v1 or v2, told apart by its first bytes) at the start "
        "of connections from `trusted` addresses, before TLS on an HTTPS listener; its "
        "client address is then the connection's everywhere (X-Forwarded-For, access log, "
        "balancing). `false`: no header is read.", True)
    required: bool = doc(
        "A trusted connection without a header is closed (and logged). `false`: it is "
        "served with its own address.", True)


def _check_proxy_protocol(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    for i, cidr in enumerate(v.get("trusted", ())):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            ld.error(index(join(path, "trusted"), i), f"not an address or CIDR: {cidr!r}")


VALIDATORS.setdefault(ProxyProtocolConfig, []).append(_check_proxy_protocol)


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
    trusted_proxy_hops: int = doc(
        "How many proxies (load balancers, CDNs) sit in front of this listener and are "
        "trusted to append the client's address to X-Forwarded-For. Route `source_ip` "
        "conditions then use the entry this many places from the right (a request with "
        "fewer entries meets none). 0: the connection's own peer address.", 0, lo=0, hi=32)
    request_id_header: str = doc(
        "Header carrying the request id (see [Proxying](../guides/edge.md#proxying)). "
        "Not one that frames the request or belongs to one hop (`Content-Length`, "
        "`Transfer-Encoding`, `Host`, `Connection`, `Keep-Alive`, `TE`, `Trailer`, "
        "`Upgrade`, `Proxy-Connection`, `Expect`) nor one the proxy sets "
        "(`X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Port`, `Via`); "
        "case-insensitive.", "X-Request-Id")
    backlog: int = doc(
        "`listen()` backlog.", 1024, lo=1, hi=65535)
    max_connections: int | None = doc(
        "Most client connections open at once on this listener, per worker with "
        "`--workers` (HAProxy's `maxconn`, nginx's `worker_connections`). At the cap a "
        "connection idle for a second or more is closed to make room; with none, the new "
        "one gets 503 with `Retry-After: 1` and is closed. Unset, it is sized from the "
        "file descriptor limit (said in the log at start); set, it is lowered at start "
        "(with a warning) when the limit cannot hold it, counting an upstream connection "
        "for each (see "
        "[Operations](../operations.md#a-connection-flood-on-an-edge-listener)).", None,
        lo=1, hi=1_000_000)
    http_versions: tuple[HttpVersion, ...] = doc(
        "HTTP versions served, in order of preference: a TLS listener offers them by ALPN "
        "(`h2`, `http/1.1`); a plain one with `h2` takes HTTP/2 with prior knowledge (a "
        "connection that begins with the HTTP/2 preface; `Upgrade: h2c` stays ignored). "
        "See [HTTP/2](../guides/edge.md#http2).", ("h2", "http1.1"))
    tls: ListenerTlsConfig | None = doc(
        "Serve HTTPS on this listener. Unset: plain HTTP.", None)
    proxy_protocol: ProxyProtocolConfig | None = doc(
        "Accept the PROXY protocol from the load balancers in front (see "
        "[PROXY protocol](../guides/edge.md#proxy-protocol)). Unset: none is read.", None)
