"""The router: (Host, path) of a request -> the first matching RouteConfig, else the default.

Job: decide, without I/O, which configured route a request belongs to. It runs once per request,
so everything that can be decided from the config alone is precompiled at construction.

Matching rules (ALB hosts, CloudFront path patterns):
- Host: case-insensitive; a port is ignored (`example.com:8080`, `[::1]:80`); one trailing dot is
  ignored (`example.com.`). A route host is either exact, or `*.example.com`, which matches one or
  more labels before `.example.com` (`a.example.com`, `a.b.example.com`) but not `example.com`
  itself. Any other use of `*` or `?` in a host is refused with ValueError (the config loader
  should have refused it first). A route with no hosts matches every Host, including none.
- Path: the request path as sent on the wire (no query, no percent-decoding), case-sensitive.
  `path_prefix` must start it; `path` is a pattern that must match it whole: `*` is any run of
  bytes including `/`, `?` exactly one byte, everything else literal. Non-ASCII arrives
  percent-encoded, so in practice `?` is one character.
- Header, query, method and source-IP conditions: lbcdn.routing.conditions, asked only of the
  candidates that pass Host and path, with the request's RequestFacts (None when the router has
  no such conditions: `conditional` says whether the caller must make them).
- All conditions a route gives must hold; the first route in order wins.

Why it is fast: the list of candidate routes depends only on the Host, so it is computed once per
distinct raw Host value and kept in a bounded dict; a request then costs one dict lookup plus
a `startswith` or a regex per candidate, and candidates stop at the first route with no path
condition. A router with other conditions matches through a loop of its own, where such a route
adds one compiled check to its candidate, so a config of Host and path rules pays one flag test
per request for them. Why patterns are safe: a naive `.*` per star backtracks O(n^k) on a
hostile path; we compile the middle segments into atomic groups (a glob is matched correctly by
placing each segment at its leftmost fit), which keeps the cost near O(len(path) *
len(pattern)).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from lbcdn.routing.actions import RouteActions
from lbcdn.routing.conditions import Conditions, RequestFacts
from lbcdn.routing.config import RouteConfig
from lbcdn.routing.weighted import WeightedForward
from lbcdn.memo import remember

# One candidate: (path prefix or None, compiled pattern's fullmatch or None, route); in a router
# with other conditions, those (or None) come before the route.
_Candidate = tuple[bytes | None, Callable[[bytes], re.Match[bytes] | None] | None, RouteConfig]
_CondCandidate = tuple[bytes | None, Callable[[bytes], re.Match[bytes] | None] | None,
                       Conditions | None, RouteConfig]

# Distinct raw Host values remembered; hostile clients can send endless new ones, so the cache is
# bounded and simply emptied when full (refilling costs a few microseconds per host).
HOST_CACHE_MAX = 4096


def normalize_host(host: bytes) -> bytes:
    """Host header value -> lower-case name without port or trailing dot.

    `[v6]:port` keeps the brackets; a bare IPv6 address (more than one colon, no brackets) is left
    whole, since any colon in it is part of the address and not a port separator."""
    host = host.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        if end >= 0:
            host = host[: end + 1]
    elif host.count(b":") == 1:
        host = host[: host.find(b":")]
    if host.endswith(b"."):
        host = host[:-1]
    return host


def _glob_piece(text: str) -> bytes:
    """A star-free piece of a path pattern as regex source: `?` is one byte, the rest literal."""
    return b".".join(re.escape(part.encode()) for part in text.split("?"))


def compile_path_pattern(pattern: str) -> re.Pattern[bytes]:
    """CloudFront path pattern -> a bytes regex to be used with fullmatch.

    The first piece is anchored at the start (fullmatch), the last at the end; each middle piece
    sits in an atomic group `(?>.*?piece)` so it is taken at its leftmost fit and never
    re-tried, which is correct for globs and stops catastrophic backtracking."""
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return re.compile(_glob_piece(pattern), re.DOTALL)
    middle = b"".join(b"(?>.*?" + _glob_piece(p) + b")" for p in pieces[1:-1] if p)
    source = _glob_piece(pieces[0]) + middle + b".*" + _glob_piece(pieces[-1])
    return re.compile(source, re.DOTALL)


class Router:
    """Ordered routes plus a default; `match(host, path)` returns the route to apply."""

    __slots__ = ("routes", "default", "conditional", "actions", "_any_host", "_exact", "_suffix",
                 "_cands", "_conditions", "_catch_all", "_host_cache", "_cond_cache")

    def __init__(self, routes: Sequence[RouteConfig], default: RouteConfig) -> None:
        self.routes: tuple[RouteConfig, ...] = tuple(routes)
        self.default = default
        # Route indices by host condition; merged and sorted per Host when first seen.
        self._any_host: list[int] = []
        self._exact: dict[bytes, list[int]] = {}
        self._suffix: dict[bytes, list[int]] = {}  # b".example.com" -> routes with *.example.com
        self._cands: list[_Candidate] = []
        self._conditions: list[Conditions | None] = []
        self._catch_all: list[bool] = []   # matches every request: nothing after it can
        for index, route in enumerate(self.routes):
            m = route.match
            conditions = Conditions.compile(m)
            self._conditions.append(conditions)
            self._catch_all.append(not m.path_prefix and m.path is None and conditions is None)
            self._cands.append((
                m.path_prefix.encode() if m.path_prefix else None,
                compile_path_pattern(m.path).fullmatch if m.path is not None else None,
                route,
            ))
            if not m.hosts:
                self._any_host.append(index)
            for name in m.hosts:
                self._add_host(name, index, route.name)
        # routers with other conditions match through a loop of their own, so that one of host
        # and path rules runs exactly the loop it always did
        self.conditional = self._conditions.count(None) < len(self._conditions)
        self._host_cache: dict[bytes | str, tuple[_Candidate, ...]] = {}
        self._cond_cache: dict[bytes | str, tuple[_CondCandidate, ...]] = {}
        # weighted forwards, rewrites, basic auth: by route name, for the routes that have any
        self.actions: dict[str, RouteActions] = {}
        for route in (*self.routes, default):
            actions = RouteActions.build(route)
            if actions is not None:
                self.actions[route.name] = actions

    def weighted(self, route: str) -> WeightedForward | None:
        """The weighted forward of the route named `route`, if it has one."""
        actions = self.actions.get(route)
        return actions.weighted if actions is not None else None

    def _add_host(self, name: str, index: int, route_name: str) -> None:
        key = name.strip().lower().rstrip(".").encode()
        if key.startswith(b"*.") and b"*" not in key[2:] and b"?" not in key and len(key) > 2:
            self._suffix.setdefault(key[1:], []).append(index)
        elif b"*" in key or b"?" in key or not key:
            raise ValueError(f"route {route_name!r}: host {name!r}: only exact names and "
                             f"leading '*.' wildcards are supported")
        else:
            self._exact.setdefault(key, []).append(index)

    def _indices_for(self, raw_host: bytes | str) -> list[int]:
        """The routes a request with this Host value may match, in order."""
        host = normalize_host(raw_host if isinstance(raw_host, bytes)
                              else raw_host.encode("utf-8", "surrogateescape"))
        indices = set(self._any_host)
        indices.update(self._exact.get(host, ()))
        if self._suffix:
            # Every proper suffix starting at a dot that has at least one byte before it.
            dot = host.find(b".", 1)
            while dot > 0:
                indices.update(self._suffix.get(host[dot:], ()))
                dot = host.find(b".", dot + 1)
        out: list[int] = []
        for index in sorted(indices):
            out.append(index)
            if self._catch_all[index]:
                break
        return out

    def _candidates_for(self, raw_host: bytes | str) -> tuple[_Candidate, ...]:
        return tuple([self._cands[i] for i in self._indices_for(raw_host)])

    def _conditional_for(self, raw_host: bytes | str) -> tuple[_CondCandidate, ...]:
        out: list[_CondCandidate] = []
        for i in self._indices_for(raw_host):
            prefix, fullmatch, route = self._cands[i]
            out.append((prefix, fullmatch, self._conditions[i], route))
        return tuple(out)

    def match(self, host: bytes | str, path: bytes | str,
              facts: RequestFacts | None = None) -> RouteConfig:
        """The first route whose conditions hold for this Host value and path, else the default.

        `host` is the raw Host header value (port, case and trailing dot allowed; empty when the
        request had none); `path` is the request path without the query; `facts` the rest of
        the request, which a route with other conditions needs (without, it never matches)."""
        if self.conditional:
            return self._match_conditional(host, path, facts)
        cands = self._host_cache.get(host)
        if cands is None:
            cands = remember(self._host_cache, host, self._candidates_for(host), HOST_CACHE_MAX)
        if not isinstance(path, bytes):
            path = path.encode("utf-8", "surrogateescape")
        for prefix, fullmatch, route in cands:
            if prefix is not None and not path.startswith(prefix):
                continue
            if fullmatch is not None and fullmatch(path) is None:
                continue
            return route
        return self.default

    def _match_conditional(self, host: bytes | str, path: bytes | str,
                           facts: RequestFacts | None) -> RouteConfig:
        """`match` in a router with other conditions: host and path as there, then those."""
        cands = self._cond_cache.get(host)
        if cands is None:
            cands = remember(self._cond_cache, host, self._conditional_for(host), HOST_CACHE_MAX)
        if not isinstance(path, bytes):
            path = path.encode("utf-8", "surrogateescape")
        for prefix, fullmatch, conditions, route in cands:
            if prefix is not None and not path.startswith(prefix):
                continue
            if fullmatch is not None and fullmatch(path) is None:
                continue
            if conditions is not None and (facts is None or not conditions.holds(facts)):
                continue
            return route
        return self.default
