"""Stored responses: the immutable CachedResponse, built once from an origin response and
served many times.

Rules:
- Everything a hit needs is decided when the entry is built: the status line and header lines
  serialized to bytes (`head`, with the real Content-Length and without the fields never
  served), the freshness lifetime, the corrected initial age, the flags `policy.evaluate`
  tests, the validators. A hit then writes `head` + Age/Cache-Status/X-Cache + CRLF + chunks.
- The body is kept as the chunks it arrived in (a tuple of bytes): writing them with
  `transport.writelines` costs no join and no copy.
- Entries never change; freshening after a 304 or a soft purge makes a new entry
  (`freshened`, `purged`).
- `charge` is what an entry costs a store's byte budget: body, head and a fixed overhead for
  the object and its index entries, so a store of tiny objects is bounded too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from lbcdn.cache.config import CachePolicyConfig
from lbcdn.cache.directives import Headers, get_all, get_first, parse_age, split_list
from lbcdn.cache.headers import merge_not_modified, serialize, storable_headers
from lbcdn.cache.policy import (DEFAULT_ERROR_TTL_S, F_PURGED, ResponseMeta, corrected_initial_age,
                                freshness_lifetime, parse_response, removed_fields,
                                stale_windows, storage_flags)
from lbcdn.http.date import http_date_at
from lbcdn.http.errors import reason as reason_phrase

ENTRY_OVERHEAD = 512
TAG_HEADERS = (b"surrogate-key", b"cache-tag")


@dataclass(frozen=True, slots=True)
class CachedResponse:
    key: bytes                  # primary key (key.KeyBuilder.primary)
    variant: bytes              # secondary key (key.variant_key), b"" without Vary
    vary: tuple[bytes, ...]
    host: bytes                 # normalized host, for invalidation
    path: bytes                 # request path, for invalidation
    query: bytes                # normalized query kept in the key (b"" when none)
    status: int
    headers: tuple[tuple[bytes, bytes], ...]   # stored fields (no Age, no hop-by-hop)
    head: bytes                 # b"HTTP/1.1 200 OK\r\n" + served lines incl. Content-Length
    chunks: tuple[bytes, ...]
    size: int                   # body bytes
    request_time: float
    response_time: float
    date: float | None
    initial_age: float          # corrected_initial_age at response_time
    lifetime: float
    lifetime_source: str
    flags: int
    swr_s: float
    sie_s: float
    etag: bytes | None
    last_modified: float | None
    last_modified_raw: bytes | None
    tags: frozenset[bytes]
    stored_at: float

    @property
    def body(self) -> bytes:
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)

    @property
    def charge(self) -> int:
        return self.size + len(self.head) + ENTRY_OVERHEAD

    def purged(self) -> CachedResponse:
        """Soft purge: the same entry, stale from now on (validation or stale-if-error only)."""
        return replace(self, flags=self.flags | F_PURGED)


def parse_tags(headers: Headers) -> frozenset[bytes]:
    """Surrogate-Key is space-separated (Fastly), Cache-Tag comma-separated (Cloudflare)."""
    tags: set[bytes] = set()
    for v in get_all(headers, b"surrogate-key"):
        tags.update(t for t in v.split() if t)
    tags.update(split_list(get_all(headers, b"cache-tag")))
    return frozenset(tags)


def with_date(headers: Headers, received: float) -> Headers:
    """`headers`, with a Date of `received` when they have none: RFC 9110 6.6.1, a cache
    appends the Date a response lacks. Only what is served gets it; the stored fields do not,
    so the entry's age still counts from its response time, not from a whole second."""
    if get_first(headers, b"date") is not None:
        return headers
    return [*headers, (b"Date", http_date_at(received))]


def serialize_head(status: int, headers: Headers, size: int, reason: bytes = b"") -> bytes:
    lines = serialize([(n, v) for n, v in headers if n.lower() != b"content-length"])
    return (b"HTTP/1.1 %d %s\r\n" % (status, reason or reason_phrase(status))
            + lines + b"Content-Length: %d\r\n" % size)


def build(*, key: bytes, variant: bytes, host: bytes, path: bytes, query: bytes,
          status: int, headers: Headers, chunks: tuple[bytes, ...], request_time: float,
          response_time: float, policy: CachePolicyConfig, now: float,
          meta: ResponseMeta | None = None, reason: bytes = b"",
          error_ttl_s: float = DEFAULT_ERROR_TTL_S, age: int | None = None) -> CachedResponse:
    """A CachedResponse for a response `policy.not_storable` accepted. `headers` are the
    origin's (or the compressed variant's) fields; unstorable ones are dropped here. `age`:
    the Age the response arrived with, when `headers` no longer hold it (the fields a fill
    serves and stores never do): RFC 9111 4.2.3 counts it in the initial age."""
    if meta is None:
        meta = parse_response(status, headers)
    if age is None:
        age = meta.age
    stored = tuple(storable_headers(headers, removed_fields(meta)))
    size = sum(len(c) for c in chunks)
    fresh = freshness_lifetime(meta, policy, response_time, error_ttl_s)
    swr, sie = stale_windows(meta, policy)
    lm_raw = get_first(stored, b"last-modified")
    return CachedResponse(
        key=key, variant=variant, vary=meta.vary, host=host, path=path, query=query,
        status=status, headers=stored,
        head=serialize_head(status, with_date(stored, response_time), size, reason),
        chunks=chunks, size=size, request_time=request_time, response_time=response_time,
        date=meta.date,
        initial_age=corrected_initial_age(age, meta.date, request_time, response_time),
        lifetime=fresh.lifetime, lifetime_source=fresh.source, flags=storage_flags(meta),
        swr_s=swr, sie_s=sie, etag=meta.etag, last_modified=meta.last_modified,
        last_modified_raw=lm_raw.strip() if lm_raw is not None else None,
        tags=parse_tags(stored), stored_at=now)


def freshened(entry: CachedResponse, not_modified: Headers, request_time: float,
              response_time: float, policy: CachePolicyConfig, now: float,
              keep: frozenset[bytes] = frozenset()) -> CachedResponse:
    """The entry after a 304 (RFC 9111 4.3.4): headers merged, times and freshness from the
    validation, and its age from the 304's own Age (the stored response is exactly as old as
    the answer that validated it). `keep`: fields the stored body depends on (a compressed
    variant's Content-Encoding, ETag, Vary)."""
    merged = merge_not_modified(entry.headers, not_modified, keep)
    rebuilt = build(key=entry.key, variant=entry.variant, host=entry.host, path=entry.path,
                    query=entry.query, status=entry.status, headers=merged,
                    chunks=entry.chunks, request_time=request_time,
                    response_time=response_time, policy=policy, now=now,
                    age=parse_age(not_modified))
    # The variant keeps the Vary it was selected with; a soft purge is lifted by validation.
    return replace(rebuilt, vary=entry.vary)
