"""Configuration of routes: the `routes` list and `default_route` (match conditions and one
action each: forward to a pool, redirect, or a fixed response).

Frozen dataclasses built by the reflective loader (lbcdn.configkit.reflect); the YAML shapes
and cross-field checks are lbcdn.config.load's. Declared here, below the root schema
(lbcdn.config.schema), so the router and the edge read them without importing the schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lbcdn.configkit.fields import REQUIRED, doc


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
class MirrorConfig:
    pool: str = doc(
        "Pool the copies go to (a key of `pools`).", REQUIRED)
    percent: float = doc(
        "Share of the route's forwarded requests copied, chosen at random.", 100.0,
        lo=0.0, hi=100.0)
    max_in_flight: int = doc(
        "Most copies under way at once to this pool (per worker); more are dropped "
        "(counted in `lbcdn_mirror_requests_total{outcome=\"dropped\"}`).", 64,
        lo=1, hi=100000)


@dataclass(frozen=True)
class RouteConfig:
    """YAML: {name, match, max_body_bytes} plus exactly one of `forward` (a pool name or
    {pool}), `redirect` or `fixed_response` - or `cache` (a distribution) and none of them."""
    name: str = doc(
        "Route name, used in logs (`route`) and metrics (`route` label); unique, not "
        "empty. In `default_route` it defaults to `default`.", REQUIRED)
    action: Action | None = doc(
        "What to do with a matching request; none on a route with `cache` (its distribution "
        "names the origin).", REQUIRED)
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
        "A cache route takes no `forward`, `redirect` or `fixed_response`. Unset: no "
        "cache.", None)
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
    mirror: MirrorConfig | None = doc(
        "Send a copy of a share of the requests this route forwards (head and body) to "
        "another pool, as Envoy's request mirroring does; the copies' answers and failures "
        "are ignored and never delay the real request (see "
        "[Request mirroring](../guides/edge.md#request-mirroring)). Unset: none.", None)
