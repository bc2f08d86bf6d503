"""Checks of a route's header actions, CORS, security headers and rate limit blocks (registered
with the loader when lbcdn.config.load imports this module): each problem named by its YAML
path, with the same rules the edge compiles them by (lbcdn.http.headeractions, lbcdn.http.cors).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lbcdn.configkit.reflect import VALIDATORS, Loader, join
from lbcdn.http.headeractions import REQUEST_RESERVED, check_name, compile_template
from lbcdn.routing.config import (CorsConfig, HeaderActionsConfig, RouteConfig,
                                  RouteRateLimitConfig, SecurityHeadersConfig)


def _problem(ld: Loader, path: str, check: Any, value: str) -> None:
    try:
        check(value)
    except ValueError as e:
        ld.error(path, str(e))


def _check_header_actions(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    seen: dict[str, str] = {}
    for kind in ("set", "add"):
        for name, value in v.get(kind, {}).items():
            where = join(join(path, kind), name)
            _problem(ld, where, check_name, name)
            _problem(ld, where, compile_template, value)
            if name.lower() in seen:
                ld.error(where, f"{name!r} is also in {seen[name.lower()]}")
            seen[name.lower()] = join(path, kind)
    for i, name in enumerate(v.get("remove", ())):
        where = join(join(path, "remove"), i)
        _problem(ld, where, check_name, name)
        if name.lower() in seen:
            ld.error(where, f"{name!r} is also in {seen[name.lower()]}")


def _check_cors(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    origins = v.get("allow_origins", ())
    if "allow_origins" in v and not origins:
        ld.error(join(path, "allow_origins"), "needs at least one origin (or \"*\")")
    for i, origin in enumerate(origins):
        scheme, sep, rest = origin.partition("://")
        if origin != "*" and (not sep or scheme.lower() not in ("http", "https") or not rest
                              or "/" in rest):
            ld.error(join(join(path, "allow_origins"), i),
                     f'{origin!r}: an origin is "*" or scheme://host[:port] (no path)')
    if v.get("allow_credentials") and "*" in origins:
        ld.error(join(path, "allow_credentials"),
                 'not with allow_origins "*" (the Fetch standard refuses it): list the origins')
    for key in ("allow_methods", "allow_headers", "expose_headers"):
        for i, name in enumerate(v.get(key, ())):
            if not (key == "allow_headers" and name == "*"):
                _problem(ld, join(join(path, key), i), _token, name)


def _token(name: str) -> None:
    # a method or header name is a token; check_name adds only the reserved names, which CORS
    # lists may well mention (Content-Length can be exposed)
    try:
        check_name(name)
    except ValueError as e:
        if "lbcdn itself" not in str(e):
            raise


def _check_security(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    for key in ("strict_transport_security", "referrer_policy", "content_security_policy"):
        value = v.get(key)
        if value is not None:
            if "#{" in value:
                ld.error(join(path, key), "variables are for header actions, not here")
            else:
                _problem(ld, join(path, key), compile_template, value)


def _check_rate_limit(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    key = v.get("key", "client_ip")
    name = v.get("key_name")
    if key == "client_ip" and name is not None:
        ld.error(join(path, "key_name"), "only with key: header or key: cookie")
    elif key in ("header", "cookie") and not name:
        ld.error(join(path, "key_name"), f"needed with key: {key} (the {key}'s name)")
    elif key == "header" and name is not None:
        _problem(ld, join(path, "key_name"), _token, name)


def _check_route_request_headers(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    """Names lbcdn writes on forwarded requests only (X-Forwarded-For, Via...); the rest of
    each name's checks are _check_header_actions'."""
    actions = v.get("request_headers")
    if actions is None:
        return
    where = join(path, "request_headers")
    named = [(join(join(where, kind), name), name)
             for kind in ("set", "add") for name in getattr(actions, kind)]
    named += [(join(join(where, "remove"), i), name) for i, name in enumerate(actions.remove)]
    for at, name in named:
        if name.lower() in REQUEST_RESERVED:
            _problem(ld, at, _request_name, name)


def _request_name(name: str) -> None:
    check_name(name, request=True)


VALIDATORS.setdefault(HeaderActionsConfig, []).append(_check_header_actions)
VALIDATORS.setdefault(RouteConfig, []).append(_check_route_request_headers)
VALIDATORS.setdefault(CorsConfig, []).append(_check_cors)
VALIDATORS.setdefault(SecurityHeadersConfig, []).append(_check_security)
VALIDATORS.setdefault(RouteRateLimitConfig, []).append(_check_rate_limit)
