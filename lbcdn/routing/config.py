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
class HeaderCondition:
    name: str = doc(
        "Header name, case-insensitive; no wildcards. Not `Host` (that is `host`).", REQUIRED)
    values: tuple[str, ...] = doc(
        "Values, any of which the header must have (one value or a list); case-insensitive, "
        "`*` any run of characters, `?` exactly one, `\\*` and `\\?` the characters "
        "themselves. At most 128 characters each.", REQUIRED)


@dataclass(frozen=True)
class QueryCondition:
    value: str = doc(
        "Parameter value (percent-decoded, case-insensitive): `*` any run of characters, "
        "`?` exactly one, `\\*` and `\\?` the characters themselves.", REQUIRED)
    key: str | None = doc(
        "Query parameter name (percent-decoded, case-insensitive, wildcards as in `value`). "
        "Unset: any parameter whose value matches.", None)


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
    http_headers: tuple[HeaderCondition, ...] = doc(
        "Header conditions (`{name, values}`, one or a list); each must hold.",
        default_factory=tuple)
    query_string: tuple[QueryCondition, ...] = doc(
        "Query parameters (`{key, value}` pairs); any one present in the query is enough.",
        default_factory=tuple)
    methods: tuple[str, ...] = doc(
        "Request methods (one or a list), case-sensitive as ALB: `GET`, `POST`, ... "
        "(A-Z, `-`, `_`; no wildcards).", default_factory=tuple)
    source_ips: tuple[str, ...] = doc(
        "Client address ranges, IPv4 or IPv6 CIDR (one or a list). The client is the "
        "connection's peer, or with the listener's `trusted_proxy_hops` the address that "
        "many entries from the right of X-Forwarded-For.", default_factory=tuple)


@dataclass(frozen=True)
class PoolWeight:
    pool: str = doc("Name of a pool.", REQUIRED)
    weight: int = doc(
        "Relative share of new clients (0-999, as ALB); 0 sends none.", REQUIRED, lo=0, hi=999)


@dataclass(frozen=True)
class Stickiness:
    duration_s: int = doc(
        "How long the cookie pins a client to the pool it got first (1 s to 7 days, as "
        "ALB's target group stickiness).", REQUIRED, lo=1, hi=7 * 86400)


@dataclass(frozen=True)
class RewriteConfig:
    path_prefix: str | None = doc(
        "Prefix of the request path to replace with `prefix_replacement` (a path that does "
        "not start with it is left alone). Starts with `/`.", None)
    prefix_replacement: str = doc(
        "What replaces `path_prefix`; empty strips it (the path keeps a leading `/`).", "")
    path_regex: str | None = doc(
        "Regular expression (Python syntax) searched in the path; its first match is "
        "replaced by `path_replacement`. Applied after the prefix rewrite.", None)
    path_replacement: str = doc(
        "Replacement for `path_regex`: `$1`..`$9` are its groups (as ALB).", "")
    host_regex: str | None = doc(
        "Regular expression searched in the Host (without port); its first match is "
        "replaced by `host_replacement` (`.*` sets a fixed host). The pool's `host_header: "
        "preserve` then sends the new Host.", None)
    host_replacement: str = doc(
        "Replacement for `host_regex`; `$1`..`$9` are its groups.", "")


@dataclass(frozen=True)
class ForwardAction:
    pool: str | None = doc(
        "Name of the pool to forward to. `forward: app` is short for `forward: {pool: "
        "app}`. Give `pool` or `pools`.", None)
    pools: tuple[PoolWeight, ...] = doc(
        "Weighted forward to several pools (`{pool, weight}`, at most 5, as ALB): new "
        "clients are spread by weight; canaries and blue/green. Weights change by reload or "
        "`PUT /api/routes/{route}/weights`.", default_factory=tuple)
    stickiness: Stickiness | None = doc(
        "With `pools`: a cookie pins a client to the pool it got first. Unset: every "
        "request is spread by weight.", None)
    rewrite: RewriteConfig | None = doc(
        "Rewrite the path and Host sent to the pool. Unset: sent as received.", None)


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


@dataclass(frozen=True)
class BasicAuthConfig:
    users: dict[str, str] = doc(
        "User name -> bcrypt hash of the password (`$2b$...`, made with e.g. `htpasswd "
        "-nbB user password` or `python -c 'import bcrypt; print(bcrypt.hashpw(b\"pw\", "
        "bcrypt.gensalt()).decode())'`). At least one.", REQUIRED)
    realm: str = doc("The realm named in the 401's WWW-Authenticate.", "lbcdn")


@dataclass(frozen=True)
class RoutingConfig:
    max_condition_values: int = doc(
        "Most condition values one route may list (ALB's limit, 5 by default): each host, "
        "`path_prefix`, `path`, header value, query pair, method and source range counts one.",
        5, lo=1, hi=10_000)


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
    basic_auth: BasicAuthConfig | None = doc(
        "Ask for HTTP basic authentication (RFC 7617) before any action; wrong or missing "
        "credentials get 401. Unset: no authentication.", None)
    hsts_max_age_s: int | None = doc(
        "Add `Strict-Transport-Security: max-age=N` to this route's HTTPS responses "
        "(HSTS preloading asks for a year or two: 31536000, 63072000). Unset: no header.", None,
        lo=0, hi=2**31 - 1)  # HTTP's delta-seconds limit; HSTS preloading asks for years
    request_headers: HeaderActionsConfig | None = doc(
        "Header actions on the request forwarded to the origin.", None)
    response_headers: HeaderActionsConfig | None = doc(
        "Header actions on the responses to the client (proxied or answered here).", None)
    cors: CorsConfig | None = doc(
        "Answer CORS preflights at the edge and add Access-Control-* headers.", None)
    security_headers: SecurityHeadersConfig | None = doc(
        "Security headers added to every response.", None)
    rate_limit: RouteRateLimitConfig | None = doc(
        "Limit requests per client (IP, header or cookie): over it, 429.", None)
    mirror: MirrorConfig | None = doc(
        "Send a copy of a share of the requests this route forwards (head and body) to "
        "another pool, as Envoy's request mirroring does; the copies' answers and failures "
        "are ignored and never delay the real request (see "
        "[Request mirroring](../guides/edge.md#request-mirroring)). Unset: none.", None)


@dataclass(frozen=True)
class HeaderActionsConfig:
    """Header actions on one side of a route (its requests to the origin, or its responses
    to the client). Values may hold `#{client_ip}`, `#{request_id}`, `#{host}`, `#{scheme}`."""
    set: dict[str, str] = doc(
        "Header name -> value: replaces every field of that name (or adds it).",
        default_factory=dict)
    add: dict[str, str] = doc(
        "Header name -> value: one more field, after any the message has.",
        default_factory=dict)
    remove: tuple[str, ...] = doc(
        "Header names whose fields are dropped (case-insensitive).", default_factory=tuple)


@dataclass(frozen=True)
class CorsConfig:
    """CloudFront's CORS block of a response headers policy: preflights (OPTIONS with Origin and
    Access-Control-Request-Method) are answered here and never reach the origin; other
    responses to an allowed Origin get Access-Control-Allow-Origin (and -Expose-Headers)."""
    allow_origins: tuple[str, ...] = doc(
        "Origins allowed, each `scheme://host[:port]` compared exactly (case-insensitive), or "
        "`*` for any (not with `allow_credentials`).", REQUIRED)
    allow_methods: tuple[str, ...] = doc(
        "Methods a preflight may ask for.", default_factory=lambda: ("GET", "HEAD", "POST"))
    allow_headers: tuple[str, ...] = doc(
        "Request headers a preflight may ask for (case-insensitive); `*`: any.",
        default_factory=tuple)
    expose_headers: tuple[str, ...] = doc(
        "Response headers scripts may read (Access-Control-Expose-Headers).",
        default_factory=tuple)
    max_age_s: int | None = doc(
        "How long a browser may keep a preflight's answer (Access-Control-Max-Age). Unset: "
        "the browser's default (5 s).", 600, lo=0, hi=86400)
    allow_credentials: bool = doc(
        "Send Access-Control-Allow-Credentials: true (cookies, HTTP auth).", False)
    override: bool = doc(
        "Replace the origin's own Access-Control-* response headers; false: keep the "
        "origin's where it sent them.", True)


@dataclass(frozen=True)
class SecurityHeadersConfig:
    """CloudFront's security headers block: each header set on every response of the route."""
    override: bool = doc(
        "Replace the origin's own fields of these names; false: add each only where the "
        "origin sent none.", True)
    strict_transport_security: str | None = doc(
        "Strict-Transport-Security value (sent on HTTPS responses only), e.g. "
        "`max-age=63072000; includeSubDomains; preload`.", None)
    content_type_options: bool = doc(
        "Send `X-Content-Type-Options: nosniff`.", False)
    frame_options: Literal["DENY", "SAMEORIGIN"] | None = doc(
        "X-Frame-Options value.", None)
    referrer_policy: str | None = doc(
        "Referrer-Policy value, e.g. `strict-origin-when-cross-origin`.", None)
    content_security_policy: str | None = doc(
        "Content-Security-Policy value.", None)


@dataclass(frozen=True)
class RouteRateLimitConfig:
    """A token bucket per key: `burst` tokens, refilled at `rate_per_s`; a request takes one
    or gets 429. Counters are shared by every worker of the daemon."""
    rate_per_s: float = doc(
        "Sustained requests per second per key.", REQUIRED, lo=0.001, hi=1e9)
    burst: int = doc(
        "Bucket size: requests a key may send at once after being idle.", REQUIRED,
        lo=1, hi=10**9)
    key: Literal["client_ip", "header", "cookie"] = doc(
        "What a bucket is per: the client address, a request header's value or a cookie's "
        "value (requests without it share one bucket).", "client_ip")
    key_name: str | None = doc(
        "The header or cookie name, for `key: header` or `key: cookie`.", None)
    max_keys: int = doc(
        "Buckets kept (24 bytes each, in memory shared by the workers); the least recently "
        "used key's bucket is reused past it.", 1_000_000, lo=64, hi=100_000_000)
