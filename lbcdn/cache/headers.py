"""Header fields around the cache: what is stored, what is served, how a 304 updates a stored
response, which URIs an unsafe method invalidates, and the Age / Cache-Status / X-Cache lines.

Rules:
- Not stored (RFC 9111 3.1): hop-by-hop fields and those named in Connection, Proxy-Authenticate
  and Proxy-Authentication-Info, fields named by `private=` / `no-cache=`, and Age (it is kept as
  a number and recomputed on every use). Date is kept as the origin sent it.
- Never served: CDN-Cache-Control (it targets us, RFC 9213) and an upstream X-Cache (ours
  replaces it). An upstream Cache-Status is kept and ours is added after it: RFC 9211 lists
  caches from the origin outwards.
- 304 merging (3.2, 4.3.4): every field of the 304 replaces the stored lines of that name
  (Cache-Control, Expires, Date, ETag, Last-Modified and the origin's own fields alike; new ones
  are added), except: those not stored (3.1: hop-by-hop, Age...); Content-Length (3.2 names
  it) and Content-Range (processed, not metadata of the stored body); the fields the stored
  body's bytes depend on - Content-Encoding and Content-Type (3.2: a cache MAY keep those
  "necessary to assure integrity of the stored response", and a 304 cannot change the body)
  and Vary (the variant was selected and keyed with the stored one); and whatever else the
  caller says the body depends on (a compressed variant's ETag).
- Invalidation (4.4): a non-error response to an unsafe method invalidates the target URI and
  the Location and Content-Location URIs when they have the same origin (host).
"""

from __future__ import annotations

import enum
from urllib.parse import urljoin, urlsplit

from lbcdn.cache.directives import Headers, get_all
from lbcdn.http.errors import reason
from lbcdn.http.head import HOP_BY_HOP, connection_tokens, field_lines

NOT_STORED = HOP_BY_HOP | frozenset({b"proxy-authenticate", b"proxy-authentication-info",
                                     b"age"})
NOT_SERVED = frozenset({b"cdn-cache-control", b"x-cache"})
NOT_MERGED = NOT_STORED | frozenset({b"content-length", b"content-range", b"content-encoding",
                                     b"content-type", b"vary"})
SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
# Fields a 304 generated from cache carries (RFC 9110 15.4.5), plus Last-Modified.
NOT_MODIFIED_FIELDS = frozenset({b"cache-control", b"content-location", b"date", b"etag",
                                 b"expires", b"vary", b"last-modified"})


def storable_headers(headers: Headers, removed: frozenset[bytes] = frozenset()
                     ) -> list[tuple[bytes, bytes]]:
    """The header lines kept with a stored response."""
    drop = set(NOT_STORED | removed)
    for value in get_all(headers, b"connection"):
        drop |= connection_tokens(value)
    return [(n, v) for n, v in headers if n.lower() not in drop]


def serialize(headers: Headers, skip: frozenset[bytes] = NOT_SERVED) -> bytes:
    """Header lines as they go on the wire (each ending in CRLF), ready to join."""
    return b"".join(b"%s: %s\r\n" % (n, v) for n, v in headers if n.lower() not in skip)


def merge_not_modified(stored: Headers, fresh: Headers,
                       keep: frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
    """Stored header lines updated from a 304 (or a HEAD response) for the same
    representation. `keep`: more names the stored body depends on and must not change.
    Date is updated: the stored response is now as old as the validation."""
    drop = set(NOT_MERGED | keep)
    for value in get_all(fresh, b"connection"):
        drop |= connection_tokens(value)
    updates = [(n, v) for n, v in fresh if n.lower() not in drop]
    replaced = {n.lower() for n, _ in updates}
    return [(n, v) for n, v in stored if n.lower() not in replaced] + updates


def not_modified_headers(stored: Headers) -> list[tuple[bytes, bytes]]:
    """The stored fields a 304 answered from cache repeats."""
    return [(n, v) for n, v in stored if n.lower() in NOT_MODIFIED_FIELDS]


def validator_matches(stored_etag: bytes | None, stored_last_modified: bytes | None,
                      fresh: Headers) -> bool:
    """May this 304 update the stored response we revalidated? (RFC 9111 4.3.4: a strong
    validator in the 304 must equal the stored one; else Last-Modified must; with neither,
    the one response we asked about is updated.)"""
    etags = get_all(fresh, b"etag")
    if etags:
        tag = etags[0].strip()
        if tag[:2] != b"W/":
            # W/ + tag: a compressed variant weakened the origin's strong tag itself.
            return stored_etag in (tag, b"W/" + tag)
        return stored_etag is not None and stored_etag.removeprefix(b"W/") == tag[2:]
    lms = get_all(fresh, b"last-modified")
    if lms:
        return stored_last_modified == lms[0].strip()
    return True


def invalidated_uris(method: bytes, status: int, host: bytes, target: bytes,
                     headers: Headers) -> list[tuple[bytes, bytes]]:
    """(host, path-and-query) of every URI an unsafe request's response invalidates."""
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    base = b"http://" + host + target
    out = [(host.lower(), target)]
    for name in (b"location", b"content-location"):
        for value in get_all(headers, name):
            try:
                absolute = urljoin(base.decode("latin-1"), value.strip().decode("latin-1"))
                parts = urlsplit(absolute)
            except ValueError:
                continue
            if parts.scheme not in ("http", "https") or \
                    parts.netloc.lower() != host.decode("latin-1").lower():
                continue  # another origin: invalidating it would let one site purge another
            uri = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            pair = (host.lower(), uri.encode("latin-1"))
            if pair not in out:
                out.append(pair)
    return out


# -- Cache-Status (RFC 9211) and X-Cache ------------------------------------------------------

CACHE_NAME = b"lbcdn"


class Outcome(enum.Enum):
    """How a response was produced, as the cache reports it."""
    HIT = "hit"                        # fresh from cache
    STALE_HIT = "stale-hit"            # stale from cache (max-stale, stale-while-revalidate)
    STALE_ON_ERROR = "stale-error"     # stale from cache because the origin failed
    REFRESH_HIT = "refresh-hit"        # revalidated: the origin said 304
    MISS = "miss"                      # fetched: nothing usable stored
    STALE_MISS = "stale-miss"          # fetched: a stored response was selected but had to be
                                       # validated, and the origin sent a new one
    URI_MISS = "uri-miss"              # fetched: nothing stored for the URI at all
    VARY_MISS = "vary-miss"            # fetched: stored, but no variant matched
    REQUEST = "request"                # fetched because the request said so (no-cache)
    BYPASS = "bypass"                  # not cacheable (method, behavior): passed through
    ERROR = "error"                    # the origin failed and nothing could stand in


_X_CACHE = {
    Outcome.HIT: b"Hit from lbcdn", Outcome.STALE_HIT: b"Hit from lbcdn",
    Outcome.STALE_ON_ERROR: b"Hit from lbcdn", Outcome.REFRESH_HIT: b"RefreshHit from lbcdn",
    Outcome.MISS: b"Miss from lbcdn", Outcome.STALE_MISS: b"Miss from lbcdn",
    Outcome.URI_MISS: b"Miss from lbcdn",
    Outcome.VARY_MISS: b"Miss from lbcdn", Outcome.REQUEST: b"Miss from lbcdn",
    Outcome.BYPASS: b"Miss from lbcdn", Outcome.ERROR: b"Error from lbcdn",
}

_FWD = {
    Outcome.REFRESH_HIT: b"stale", Outcome.STALE_MISS: b"stale", Outcome.MISS: b"miss",
    Outcome.URI_MISS: b"uri-miss",
    Outcome.VARY_MISS: b"vary-miss", Outcome.REQUEST: b"request", Outcome.BYPASS: b"bypass",
    Outcome.ERROR: b"miss", Outcome.STALE_ON_ERROR: b"stale",
}


def x_cache(outcome: Outcome) -> bytes:
    return _X_CACHE[outcome]


def cache_status(outcome: Outcome, *, ttl: float | None = None, stored: bool = False,
                 fwd_status: int | None = None, collapsed: bool = False,
                 detail: bytes | None = None) -> bytes:
    """Our Cache-Status list member: `lbcdn; hit; ttl=60` or `lbcdn; fwd=miss; stored`."""
    parts = [CACHE_NAME]
    fwd = _FWD.get(outcome)
    if outcome in (Outcome.HIT, Outcome.STALE_HIT, Outcome.STALE_ON_ERROR):
        parts.append(b"hit")
    if fwd is not None:
        parts.append(b"fwd=" + fwd)
        if fwd_status is not None:
            parts.append(b"fwd-status=%d" % fwd_status)
    if ttl is not None:
        parts.append(b"ttl=%d" % int(ttl // 1))
    if stored:
        parts.append(b"stored")
    if collapsed:
        parts.append(b"collapsed")
    if detail:
        parts.append(b'detail="' + detail.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"')
    return b"; ".join(parts)


def age_value(age: float) -> bytes:
    """Age is whole seconds, rounded down, capped at 2^31 (RFC 9111 5.1)."""
    return b"%d" % min(int(max(age, 0.0)), 2147483648)


def cache_lines(outcome: Outcome, age: float | None, *, ttl: float | None = None,
                stored: bool = False, fwd_status: int | None = None, collapsed: bool = False,
                detail: bytes | None = None) -> bytes:
    """The Age (when served from storage), Cache-Status and X-Cache lines, CRLF-terminated."""
    out = b"" if age is None else b"Age: " + age_value(age) + b"\r\n"
    member = cache_status(outcome, ttl=ttl, stored=stored, fwd_status=fwd_status,
                          collapsed=collapsed, detail=detail)
    return out + b"Cache-Status: " + member + b"\r\nX-Cache: " + x_cache(outcome) + b"\r\n"


def parse_fwd(fwd: list[bytes]) -> list[tuple[bytes, bytes]]:
    """A ResponseHead's `fwd` lines back to (name, value) pairs."""
    return field_lines(b"".join(fwd))


def with_status(head: bytes, status: int) -> bytes:
    """A serialized head with another status line (custom error responses)."""
    return b"HTTP/1.1 %d %s" % (status, reason(status)) + head[head.index(b"\r\n"):]
