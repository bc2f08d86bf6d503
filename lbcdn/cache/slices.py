"""Large objects in fixed-size slices (nginx's slice module): pure arithmetic and checks.

With `slice_bytes: N` a behavior's objects are fetched and cached as aligned slices: slice k is
`Range: bytes=k*N-(k+1)*N-1` of the object, cached under its own key (the object's key plus the
slice number), so a seek into a large object fetches only the slices it covers and a later
request for an overlapping range reuses them. Every slice must carry the ETag the first one
had: a slice of another version is an error (nginx: "etag mismatch in slice response"), never
assembled into the answer.
"""

from __future__ import annotations

import re

from lbcdn.cache.directives import Headers, get_first

_FIRST_BYTE = re.compile(rb"\s*bytes\s*=\s*(\d+)\s*-")
_CONTENT_RANGE = re.compile(rb"\s*bytes\s+(\d+)-(\d+)/(\d+)\s*")


def slice_key(key: bytes, k: int) -> bytes:
    """The cache key of slice `k` of the object cached under `key` (a NUL never appears in a
    request's key parts, so no object's own key collides with it)."""
    return b"%s\0slice=%d" % (key, k)


def range_field(k: int, n: int) -> bytes:
    """The Range sent to the origin for slice `k` of size `n`."""
    return b"bytes=%d-%d" % (k * n, (k + 1) * n - 1)


def first_slice(range_value: bytes | None, n: int) -> int:
    """The slice to fetch first for a request with this Range (before the object's size is
    known): the one holding its first byte; slice 0 when it has none (no Range, a suffix
    range)."""
    if range_value is None:
        return 0
    m = _FIRST_BYTE.match(range_value)
    return int(m.group(1)) // n if m else 0


def covering(start: int, end: int, n: int) -> range:
    """The slices holding bytes `start`..`end` (inclusive)."""
    return range(start // n, end // n + 1)


def slice_problem(k: int, n: int, status: int, headers: Headers, etag: bytes | None
                  ) -> tuple[int, str | None]:
    """Check an origin's answer to slice `k`'s request: (the object's total size, None) when
    it is that slice (206, the right Content-Range, `etag` when one is given), else (0, why)."""
    if status != 206:
        return 0, f"origin answered {status} to a slice request"
    m = _CONTENT_RANGE.fullmatch(get_first(headers, b"content-range") or b"")
    if m is None:
        return 0, "slice answer without a valid Content-Range"
    a, b, total = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if a != k * n or b != min((k + 1) * n, total) - 1:
        return 0, f"slice {k} answered with bytes {a}-{b}"
    if etag is not None and get_first(headers, b"etag") != etag:
        return 0, "etag mismatch in slice response"
    return total, None


def part(chunks: tuple[bytes, ...], k: int, start: int, end: int, n: int) -> list[bytes]:
    """The bytes of slice `k` (its body as `chunks`) inside bytes `start`..`end` (inclusive)
    of the object, as pieces of those chunks: a slice wholly inside is sent as it is stored,
    without a copy."""
    out = []
    offset = k * n
    for chunk in chunks:
        size = len(chunk)
        if offset + size > start and offset <= end:
            out.append(chunk if start <= offset and offset + size <= end + 1
                       else chunk[max(start - offset, 0):end + 1 - offset])
        offset += size
    return out
