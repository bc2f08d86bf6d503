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
