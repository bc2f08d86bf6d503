"""RFC 9111 for a shared cache: what may be stored, for how long, and whether a stored response
may answer a request now. Pure: header lists and `now` in, decisions out.

Rules, with the RFC sections they come from:
- Storable (3): a method the policy caches (GET; OPTIONS when listed; HEAD is answered from the
  GET entry, so HEAD responses are not stored); a final status other than 206 and 304; no
  `no-store` (unless `must-understand` and a status we understand, 5.2.2.3); no unqualified
  `private` (we are shared; `private="f"` removes field f, 5.2.2.7); a request with
  Authorization only with `public`, `must-revalidate` or `s-maxage` (3.5); Set-Cookie only when
  the policy says so or the response names it in `private=` / `no-cache=`; request `no-store`
  forbids it; `Vary: *` is never served, so it is not stored; and at least one of `public`,
  `s-maxage`, `max-age`, `Expires` or a status that is heuristically cacheable.
- Directives: a valid CDN-Cache-Control (RFC 9213) replaces Cache-Control AND Expires for every
  caching decision; otherwise Cache-Control plus Expires.
- Freshness lifetime (4.2.1), first found: s-maxage, max-age, Expires - Date (Date missing: the
  response time; Expires invalid: already expired). Origin-given values are clamped to
  [min_ttl, max_ttl] - CloudFront's rule: "max-age (or s-maxage, or Expires) below Minimum TTL
  -> Minimum TTL; above Maximum TTL -> Maximum TTL". Without any, Default TTL, as CloudFront
  - except for error statuses (>= 400) which get the error caching minimum TTL (CloudFront:
  10 s). A policy with `heuristic_freshness` first tries the 4.2.2 heuristic (10% of Date -
  Last-Modified) for heuristically cacheable statuses or `public`, capped by Default TTL (so
  the operator's default stays the ceiling). Where CloudFront departs from the RFC we follow the
  RFC: CloudFront caches `no-store` / `private` responses for Minimum TTL when it is > 0; we
  never store them.
- Age (4.2.3): apparent_age = max(0, response_time - date); corrected_age_value = age_value +
  (response_time - request_time); corrected_initial_age = max of both; current_age =
  corrected_initial_age + (now - response_time).
- Reuse (4, 4.2.4, 5.2): fresh when lifetime > current_age; request max-age, min-fresh,
  max-stale, no-cache (and `Pragma: no-cache` without Cache-Control), only-if-cached (-> 504);
  response no-cache (unqualified: validate every time), must-revalidate, proxy-revalidate and
  s-maxage (no stale use at all), stale-while-revalidate, stale-if-error (RFC 5861; the policy
  gives defaults, the response's own directive wins).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from lbcdn.cache.config import CachePolicyConfig
from lbcdn.cache.directives import (Directives, Headers, get_all, get_first, parse_age,
                                    parse_cache_control, parse_cdn_cache_control, parse_etag,
                                    parse_http_date, split_list)

# RFC 9110 15.1: cacheable by default, so heuristic freshness may apply.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
# Statuses whose semantics this cache implements (for `must-understand`, RFC 9111 5.2.2.3).
UNDERSTOOD_STATUSES = frozenset({200, 203, 204, 300, 301, 302, 303, 307, 308, 400, 403, 404,
                                 405, 410, 414, 500, 501, 502, 503, 504})
HEURISTIC_FRACTION = 0.1
DEFAULT_ERROR_TTL_S = 10.0


@dataclass(frozen=True, slots=True)
class ResponseMeta:
    """What the cache needs from one origin response head, parsed once."""
    status: int
    directives: Directives        # CDN-Cache-Control when valid, else Cache-Control
    targeted: bool                # True when CDN-Cache-Control was used
    date: float | None
    expires: float | None         # None: absent (or ignored because targeted)
    expires_invalid: bool         # present but not a date: already expired
    last_modified: float | None
    etag: bytes | None
    age: int
    vary: tuple[bytes, ...]       # lower-cased field names; (b"*",) for Vary: *
    set_cookie: bool

    @property
    def vary_star(self) -> bool:
        return b"*" in self.vary


def parse_response(status: int, headers: Headers) -> ResponseMeta:
    cdn = parse_cdn_cache_control(get_all(headers, b"cdn-cache-control"))
    if cdn is not None:
        directives, expires, expires_invalid = cdn, None, False
    else:
        directives = parse_cache_control(get_all(headers, b"cache-control"))
        raw = get_all(headers, b"expires")
        expires = parse_http_date(raw[0]) if raw else None
        expires_invalid = bool(raw) and expires is None
    return ResponseMeta(
        status=status, directives=directives, targeted=cdn is not None,
        date=parse_http_date(get_first(headers, b"date")),
        expires=expires, expires_invalid=expires_invalid,
        last_modified=parse_http_date(get_first(headers, b"last-modified")),
        etag=parse_etag(get_first(headers, b"etag")),
        age=parse_age(headers),
        vary=tuple(v.lower() for v in split_list(get_all(headers, b"vary"))),
        set_cookie=any(n.lower() == b"set-cookie" for n, _ in headers))


@dataclass(frozen=True, slots=True)
class RequestDirectives:
    """The request's cache directives (RFC 9111 5.2.1)."""
    max_age: int | None = None
    max_stale: int | None = None     # -1: any staleness ("max-stale" without a value)
    min_fresh: int | None = None
    no_cache: bool = False
    no_store: bool = False
    only_if_cached: bool = False
    stale_if_error: int | None = None
    authorization: bool = False


ANY_STALENESS = -1


def parse_request(headers: Headers) -> RequestDirectives:
    cc_values = get_all(headers, b"cache-control")
    cc = parse_cache_control(cc_values)
    no_cache = b"no-cache" in cc
    if not cc_values:
        # RFC 9111 5.4: Pragma only counts when Cache-Control is absent.
        no_cache = b"no-cache" in [p.lower() for p in split_list(get_all(headers, b"pragma"))]
    max_stale = cc.seconds(b"max-stale")
    if max_stale == -1 and cc.items.get(b"max-stale") is not None:
        max_stale = None  # an invalid value: ignore the directive rather than accept anything
    return RequestDirectives(
        max_age=_valid(cc.seconds(b"max-age"), invalid=0),
        max_stale=max_stale,
        min_fresh=_valid(cc.seconds(b"min-fresh"), invalid=None),
        no_cache=no_cache, no_store=b"no-store" in cc,
        only_if_cached=b"only-if-cached" in cc,
        stale_if_error=_valid(cc.seconds(b"stale-if-error"), invalid=None),
        authorization=any(n.lower() == b"authorization" for n, _ in headers))


def _valid(value: int | None, invalid: int | None) -> int | None:
    if value is None:
        return None
    return invalid if value < 0 else value


# -- storability ----------------------------------------------------------------------------

def removed_fields(meta: ResponseMeta) -> frozenset[bytes]:
    """Field names a shared cache must not store (`private="..."`) or serve without
    revalidation (`no-cache="..."`); we drop both at storage time."""
    d = meta.directives
    return (d.fields(b"private") or frozenset()) | (d.fields(b"no-cache") or frozenset())


def not_storable(method: bytes, req: RequestDirectives, meta: ResponseMeta,
                 policy: CachePolicyConfig) -> str | None:
    """None when the response may be stored, else why not (for logs and Cache-Status)."""
    d = meta.directives
    if method == b"HEAD":
        return "HEAD responses are not stored (HEAD is answered from the GET entry)"
    if method.decode("latin-1") not in policy.cached_methods:
        return "method not cached"
    if req.no_store:
        return "request no-store"
    status = meta.status
    if status < 200 or status in (206, 304):
        return f"status {status} is not stored"
    if b"no-store" in d and not (b"must-understand" in d and status in UNDERSTOOD_STATUSES):
        return "no-store"
    if b"must-understand" in d and status not in UNDERSTOOD_STATUSES:
        return "must-understand with a status not understood"
    if d.fields(b"private") == frozenset():
        return "private"
    if req.authorization and not (b"public" in d or b"must-revalidate" in d
                                  or b"s-maxage" in d):
        return "request has Authorization"
    if meta.set_cookie and not policy.cache_set_cookie \
            and b"set-cookie" not in removed_fields(meta):
        return "Set-Cookie"
    if meta.vary_star:
        return "Vary: *"
    explicit = (b"public" in d or b"s-maxage" in d or b"max-age" in d
                or meta.expires is not None or meta.expires_invalid)
    if not explicit and status not in HEURISTIC_STATUSES:
        return f"status {status} without explicit freshness"
    return None


# -- freshness -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Freshness:
    lifetime: float
    source: str   # s-maxage | max-age | expires | heuristic | default | error-default


def clamp(value: float, policy: CachePolicyConfig) -> float:
    return min(max(value, policy.min_ttl_s), policy.max_ttl_s)


def freshness_lifetime(meta: ResponseMeta, policy: CachePolicyConfig, response_time: float,
                       error_ttl_s: float = DEFAULT_ERROR_TTL_S) -> Freshness:
    d = meta.directives
    for name in (b"s-maxage", b"max-age"):
        secs = d.seconds(name)
        if secs is not None:
            # An invalid value makes the response stale (before clamping to min TTL).
            return Freshness(clamp(max(secs, 0), policy), name.decode())
    if meta.expires_invalid:
        return Freshness(clamp(0, policy), "expires")
    if meta.expires is not None:
        date = meta.date if meta.date is not None else response_time
        return Freshness(clamp(max(meta.expires - date, 0.0), policy), "expires")
    if meta.status >= 400:
        return Freshness(float(error_ttl_s), "error-default")
    heuristic_ok = meta.status in HEURISTIC_STATUSES or b"public" in d
    if policy.heuristic_freshness and heuristic_ok and meta.last_modified is not None:
        date = meta.date if meta.date is not None else response_time
        if date > meta.last_modified:
            h = HEURISTIC_FRACTION * (date - meta.last_modified)
            return Freshness(max(min(h, float(policy.default_ttl_s)), policy.min_ttl_s),
                             "heuristic")
    return Freshness(float(policy.default_ttl_s), "default")


# -- age -------------------------------------------------------------------------------------

def corrected_initial_age(age_value: int, date: float | None, request_time: float,
                          response_time: float) -> float:
    date_value = date if date is not None else response_time
    apparent_age = max(0.0, response_time - date_value)
    response_delay = response_time - request_time
    corrected_age_value = age_value + response_delay
    return max(apparent_age, corrected_age_value)


def current_age(initial_age: float, response_time: float, now: float) -> float:
    return initial_age + max(0.0, now - response_time)


# -- reuse -----------------------------------------------------------------------------------

class Stored(Protocol):
    """What `evaluate` reads from a stored response (store.CachedResponse has it)."""
    @property
    def initial_age(self) -> float: ...
    @property
    def response_time(self) -> float: ...
    @property
    def lifetime(self) -> float: ...
    @property
    def flags(self) -> int: ...
    @property
    def swr_s(self) -> float: ...
    @property
    def sie_s(self) -> float: ...
    @property
    def etag(self) -> bytes | None: ...
    @property
    def last_modified_raw(self) -> bytes | None: ...


# Bits of Stored.flags, decided at storage time so a hit tests ints, not headers.
F_NO_CACHE = 1          # unqualified no-cache: validate before every use
F_NO_STALE = 2          # must-revalidate, proxy-revalidate or s-maxage: never serve stale
F_AUTH_OK = 4           # public, must-revalidate or s-maxage: may answer Authorization
F_PURGED = 8            # soft-purged: stale from now on, whatever its lifetime


def storage_flags(meta: ResponseMeta) -> int:
    d = meta.directives
    flags = 0
    if d.fields(b"no-cache") == frozenset():
        flags |= F_NO_CACHE
    if b"must-revalidate" in d or b"proxy-revalidate" in d or b"s-maxage" in d:
        flags |= F_NO_STALE
    if b"public" in d or b"must-revalidate" in d or b"s-maxage" in d:
        flags |= F_AUTH_OK
    return flags


def stale_windows(meta: ResponseMeta, policy: CachePolicyConfig) -> tuple[float, float]:
    """(stale-while-revalidate, stale-if-error) seconds: the response's directive, else the
    policy's default."""
    d = meta.directives
    swr = d.seconds(b"stale-while-revalidate")
    sie = d.seconds(b"stale-if-error")
    return (float(swr) if swr is not None and swr >= 0 else policy.stale_while_revalidate_s,
            float(sie) if sie is not None and sie >= 0 else policy.stale_if_error_s)


class Use(enum.Enum):
    FRESH = "fresh"                    # serve it
    STALE = "stale"                    # serve it stale: the client allowed it (max-stale)
    STALE_REVALIDATE = "swr"           # serve it stale, refresh once in the background
    REVALIDATE = "revalidate"          # ask the origin (conditionally when it has validators)
    GATEWAY_TIMEOUT = "only-if-cached" # only-if-cached and unusable: 504


@dataclass(frozen=True, slots=True)
class Decision:
    use: Use
    age: float
    ttl: float        # lifetime - age: negative when stale (Cache-Status `ttl`)
    reason: str


def evaluate(entry: Stored, req: RequestDirectives, now: float) -> Decision:
    """May `entry` (already matched by key and Vary) answer this request at `now`?"""
    age = current_age(entry.initial_age, entry.response_time, now)
    lifetime = 0.0 if entry.flags & F_PURGED else entry.lifetime
    ttl = lifetime - age
    use, reason = _use(entry, req, age, lifetime)
    if req.only_if_cached and use is Use.REVALIDATE:
        use = Use.GATEWAY_TIMEOUT
    return Decision(use, age, ttl, reason)


def _use(entry: Stored, req: RequestDirectives, age: float, lifetime: float) -> tuple[Use, str]:
    flags = entry.flags
    if req.authorization and not flags & F_AUTH_OK:
        return Use.REVALIDATE, "request has Authorization"
    if req.no_cache:
        return Use.REVALIDATE, "request no-cache"
    if flags & F_NO_CACHE:
        return Use.REVALIDATE, "response no-cache"
    if req.max_age is not None and age > req.max_age:
        return Use.REVALIDATE, "older than request max-age"
    fresh = lifetime > age
    if fresh:
        if req.min_fresh is not None and lifetime - age < req.min_fresh:
            return Use.REVALIDATE, "request min-fresh"
        return Use.FRESH, "fresh"
    if flags & F_NO_STALE:
        return Use.REVALIDATE, "stale, must revalidate"
    staleness = age - lifetime
    if req.max_stale is not None and (req.max_stale == ANY_STALENESS
                                      or staleness <= req.max_stale):
        return Use.STALE, "stale within request max-stale"
    if staleness < entry.swr_s:
        return Use.STALE_REVALIDATE, "stale-while-revalidate"
    return Use.REVALIDATE, "stale"


def usable_on_error(entry: Stored, req: RequestDirectives, now: float) -> bool:
    """May `entry` be served stale because the origin failed (RFC 5861 stale-if-error)?"""
    if entry.flags & (F_NO_STALE | F_NO_CACHE):
        return False
    if req.authorization and not entry.flags & F_AUTH_OK:
        return False
    age = current_age(entry.initial_age, entry.response_time, now)
    lifetime = 0.0 if entry.flags & F_PURGED else entry.lifetime
    staleness = age - lifetime
    window = entry.sie_s if req.stale_if_error is None else float(req.stale_if_error)
    return staleness <= window


def is_origin_error(status: int | None) -> bool:
    """A failure stale-if-error covers: 500, 502, 503, 504, or None for no response at all
    (timeout, refused or reset connection)."""
    return status is None or status in (500, 502, 503, 504)


def validators(entry: Stored) -> list[tuple[bytes, bytes]]:
    """Header fields of the conditional request that revalidates `entry` (RFC 9111 4.3.1)."""
    out: list[tuple[bytes, bytes]] = []
    if entry.etag is not None:
        out.append((b"If-None-Match", entry.etag))
    if entry.last_modified_raw is not None:
        out.append((b"If-Modified-Since", entry.last_modified_raw))
    return out
