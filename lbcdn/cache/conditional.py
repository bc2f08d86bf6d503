"""A client's conditional and range requests answered from a stored full response.

Rules (RFC 9110 13 and 14, RFC 9111 4.3.2):
- Preconditions in RFC 9110 13.2.2 order: If-Match (strong comparison; `*` matches a stored
  representation) -> 412; else If-Unmodified-Since -> 412 when Last-Modified is later;
  If-None-Match (weak comparison) -> 304 for GET/HEAD, 412 otherwise; else, for GET/HEAD,
  If-Modified-Since -> 304 when the representation is not newer (its Last-Modified, else its
  Date, else the time we received it: RFC 9111 4.3.2). Invalid dates make a date condition
  absent; If-Modified-Since is ignored when If-None-Match is present.
- Range applies to GET of a 200 only. `bytes=` ranges: `a-b`, `a-`, `-n`; a syntax error
  ignores the whole Range (200). No satisfiable range -> 416 with `Content-Range: bytes */size`.
  Satisfiable ranges are merged when they overlap or touch; one left -> 206 with Content-Range;
  several disjoint ranges -> the full 200 (RFC 9110 14.2 lets a server ignore Range; it saves
  the multipart/byteranges copy and the abuse of many small ranges). More than MAX_RANGES parts
  is also answered with 200.
- If-Range: a strong entity-tag equal to ours, or an HTTP-date equal to our Last-Modified when
  that is a strong validator (at least 1 s before Date); otherwise the Range is ignored.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from lbcdn.cache.directives import (Headers, etag_list, get_all, get_first, parse_http_date,
                                    strong_match, weak_match)

MAX_RANGES = 100


def precondition(method: bytes, headers: Headers, etag: bytes | None,
                 last_modified: float | None, date: float | None,
                 response_time: float) -> int | None:
    """304 or 412 when a precondition decides the answer, None to serve normally."""
    if_match = etag_list(get_all(headers, b"if-match"))
    if if_match is not None:
        if if_match != [b"*"] and not (etag is not None
                                       and any(strong_match(t, etag) for t in if_match)):
            return 412
    else:
        ius = parse_http_date(get_first(headers, b"if-unmodified-since"))
        if ius is not None and last_modified is not None and last_modified > ius:
            return 412
    get_like = method in (b"GET", b"HEAD")
    if_none = etag_list(get_all(headers, b"if-none-match"))
    if if_none is not None:
        if if_none == [b"*"] or (etag is not None and any(weak_match(t, etag) for t in if_none)):
            return 304 if get_like else 412
        return None
    if get_like:
        ims = parse_http_date(get_first(headers, b"if-modified-since"))
        if ims is not None:
            modified = last_modified if last_modified is not None else (
                date if date is not None else response_time)
            if modified <= ims:
                return 304
    return None


class RangeKind(enum.Enum):
    FULL = "full"               # serve the whole representation (200)
    PARTIAL = "partial"         # 206, one range
    UNSATISFIABLE = "416"       # 416, Content-Range: bytes */size


@dataclass(frozen=True, slots=True)
class RangePlan:
    kind: RangeKind
    start: int = 0
    end: int = 0                # inclusive

    def content_range(self, size: int) -> bytes:
        if self.kind is RangeKind.UNSATISFIABLE:
            return b"bytes */%d" % size
        return b"bytes %d-%d/%d" % (self.start, self.end, size)

    @property
    def length(self) -> int:
        return self.end - self.start + 1


FULL = RangePlan(RangeKind.FULL)


def parse_ranges(value: bytes, size: int) -> list[tuple[int, int]] | None:
    """Satisfiable (start, end) pairs of a `bytes=` Range; None when the field is invalid
    (ignored) or uses another unit. An empty list: nothing is satisfiable."""
    unit, eq, spec = value.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes":
        return None
    members = [m.strip() for m in spec.split(b",")]
    if not any(members) or len(members) > MAX_RANGES:
        return None
    out: list[tuple[int, int]] = []
    for m in members:
        if not m:
            continue
        first, dash, last = m.partition(b"-")
        first, last = first.strip(), last.strip()
        if not dash or (first and not first.isdigit()) or (last and not last.isdigit()):
            return None
        if not first:
            if not last:
                return None
            n = int(last)
            if n > 0 and size > 0:
                out.append((max(size - n, 0), size - 1))
            continue
        a = int(first)
        b = int(last) if last else size - 1
        if last and b < a:
            return None  # RFC 9110 14.1.1: last-pos less than first-pos is invalid
        if a < size:
            out.append((a, min(b, size - 1)))
    return out


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def plan_range(method: bytes, status: int, headers: Headers, size: int, etag: bytes | None,
               last_modified: float | None, date: float | None) -> RangePlan:
    if method != b"GET" or status != 200:
        return FULL
    value = get_first(headers, b"range")
    if value is None:
        return FULL
    if_range = get_first(headers, b"if-range")
    if if_range is not None and not _if_range_holds(if_range.strip(), etag, last_modified, date):
        return FULL
    ranges = parse_ranges(value, size)
    if ranges is None:
        return FULL
    if not ranges:
        return RangePlan(RangeKind.UNSATISFIABLE)
    merged = _merge(ranges)
    if len(merged) != 1:
        return FULL
    a, b = merged[0]
    return RangePlan(RangeKind.PARTIAL, a, b)


def _if_range_holds(value: bytes, etag: bytes | None, last_modified: float | None,
                    date: float | None) -> bool:
    if value[:1] == b'"' or value[:2] == b"W/":
        return etag is not None and strong_match(value, etag)
    when = parse_http_date(value)
    if when is None or last_modified is None or date is None:
        return False
    return when == last_modified and date - last_modified >= 1
