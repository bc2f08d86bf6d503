"""What the head of an origin's answer to a cache fetch means: pure decisions (the answer, the
request's directives, the policy and `now` in; a decision out). lbcdn.edge.miss_job acts on
them.

- A revalidation (the fetch carried the stored entry's validators): a 304 freshens the entry,
  and replaces the stored one only when its validators match ours (else it is about another
  representation: used once, ours kept); an origin error serves the stale entry when
  stale-if-error allows (RFC 5861 4); anything else is a new response, filled as a miss.
- A new response: what is stored and served of its fields, whether it is storable (and why
  not), its variant, and the coding it is compressed with in the fill (so every reader and the
  stored variant share it). HEAD misses were fetched with GET: storability is judged as GET.
"""

from __future__ import annotations

import enum

from lbcdn.cache.compress import VARIANT_FIELDS, add_vary, compressed_headers, eligible, \
    negotiate
from lbcdn.cache.config import CachePolicyConfig
from lbcdn.cache.directives import Headers, get_first
from lbcdn.cache.entry import CachedResponse, freshened
from lbcdn.cache.headers import storable_headers, validator_matches
from lbcdn.cache.key import variant_key
from lbcdn.cache.policy import RequestDirectives, ResponseMeta, is_origin_error, not_storable, \
    parse_response, removed_fields, usable_on_error


class Revalidated(enum.Enum):
    NOT_MODIFIED = "not_modified"
    STALE_ON_ERROR = "error"
    MODIFIED = "modified"


def revalidated(entry: CachedResponse, status: int, req: RequestDirectives,
                now: float) -> Revalidated:
    """What the answer to a revalidation of `entry` means (its value: the metric's label)."""
    if status == 304:
        return Revalidated.NOT_MODIFIED
    if is_origin_error(status) and usable_on_error(entry, req, now):
        return Revalidated.STALE_ON_ERROR
    return Revalidated.MODIFIED


def refreshed(entry: CachedResponse, not_modified: Headers, request_time: float, now: float,
              policy: CachePolicyConfig) -> tuple[CachedResponse, bool]:
    """The entry a 304 makes of `entry`, and whether it replaces the stored one."""
    keep = VARIANT_FIELDS if get_first(entry.headers, b"content-encoding") else frozenset()
    fresh = freshened(entry, not_modified, request_time, now, policy, now, keep)
    return fresh, validator_matches(entry.etag, entry.last_modified_raw, not_modified)


class FillHead:
    """A new response as the cache fills it: `meta` of the origin's fields, the `headers`
    stored and served, `coding` to compress the body with (None: as it comes), the body
    `length` when known, the variant's `vary` and `variant` key, and `why` it is not storable
    (None: storable)."""
    __slots__ = ("meta", "headers", "coding", "length", "vary", "variant", "why")

    def __init__(self, meta: ResponseMeta, headers: list[tuple[bytes, bytes]],
                 coding: bytes | None, length: int | None, vary: tuple[bytes, ...],
                 variant: bytes | None, why: str | None) -> None:
        self.meta = meta
        self.headers = headers
        self.coding = coding
        self.length = length
        self.vary = vary
        self.variant = variant
        self.why = why


def fill_head(method: bytes, status: int, headers: Headers, length: int | None,
              req: RequestDirectives, policy: CachePolicyConfig, request_headers: Headers,
              negotiated: bool) -> FillHead:
    """The FillHead of an origin's answer to a request (`method`, `request_headers`);
    `negotiated`: a client waits, whose Accept-Encoding picks the coding (a background refresh
    stores the identity)."""
    if method == b"HEAD":
        method = b"GET"
    meta = parse_response(status, headers)
    why = not_storable(method, req, meta, policy)
    served = storable_headers(headers, removed_fields(meta))
    coding = None
    if eligible(policy.compress, status, served, length):
        chosen = negotiate(get_first(request_headers, b"accept-encoding")) \
            if negotiated else b"identity"
        if chosen != b"identity":
            coding = chosen
            served = compressed_headers(served, chosen, None)
            length = None
        else:
            served = add_vary(served)
    vary = parse_response(status, served).vary
    variant = variant_key(vary, request_headers)
    if variant is None:
        why = why or "Vary: *"
    return FillHead(meta, served, coding, length, vary, variant, why)
