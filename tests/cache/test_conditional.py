"""Client conditionals and Range requests answered from a stored response."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from lbcdn.cache.conditional import RangeKind, RangePlan, parse_ranges, plan_range, precondition

LM = 1_000_000.0
DATE = LM + 100
ETAG = b'"v1"'


def d(t: float) -> str:
    return formatdate(t, usegmt=True)


def h(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in pairs]


# (id, method, request headers, stored etag, stored last-modified, expected)
PRE = [
    ("none", b"GET", [], ETAG, LM, None),
    ("INM match", b"GET", [("If-None-Match", '"v1"')], ETAG, LM, 304),
    ("INM weak match", b"GET", [("If-None-Match", 'W/"v1"')], ETAG, LM, 304),
    ("INM list", b"GET", [("If-None-Match", '"a", "v1"')], ETAG, LM, 304),
    ("INM star", b"GET", [("If-None-Match", "*")], ETAG, LM, 304),
    ("INM no match", b"GET", [("If-None-Match", '"v2"')], ETAG, LM, None),
    ("INM HEAD", b"HEAD", [("If-None-Match", '"v1"')], ETAG, LM, 304),
    ("INM on POST", b"POST", [("If-None-Match", '"v1"')], ETAG, LM, 412),
    ("INM wins over IMS", b"GET", [("If-None-Match", '"v2"'), ("If-Modified-Since", d(DATE))],
     ETAG, LM, None),
    ("IMS not modified", b"GET", [("If-Modified-Since", d(LM))], ETAG, LM, 304),
    ("IMS modified", b"GET", [("If-Modified-Since", d(LM - 1))], ETAG, LM, None),
    ("IMS invalid date", b"GET", [("If-Modified-Since", "yesterday")], ETAG, LM, None),
    ("IMS without LM uses Date", b"GET", [("If-Modified-Since", d(DATE))], ETAG, None, 304),
    ("IMS without LM, older", b"GET", [("If-Modified-Since", d(DATE - 5))], ETAG, None, None),
    ("If-Match ok", b"GET", [("If-Match", '"v1"')], ETAG, LM, None),
    ("If-Match weak fails", b"GET", [("If-Match", 'W/"v1"')], ETAG, LM, 412),
    ("If-Match other", b"GET", [("If-Match", '"v2"')], ETAG, LM, 412),
    ("If-Match star", b"GET", [("If-Match", "*")], None, LM, None),
    ("If-Match without etag", b"GET", [("If-Match", '"v1"')], None, LM, 412),
    ("IUS ok", b"GET", [("If-Unmodified-Since", d(LM))], ETAG, LM, None),
    ("IUS fails", b"GET", [("If-Unmodified-Since", d(LM - 10))], ETAG, LM, 412),
    ("If-Match beats IUS", b"GET", [("If-Match", '"v1"'), ("If-Unmodified-Since", d(0))],
     ETAG, LM, None),
]


@pytest.mark.parametrize("row", PRE, ids=[r[0] for r in PRE])
def test_preconditions(row: tuple) -> None:  # type: ignore[type-arg]
    _, method, req, etag, lm, expected = row
    assert precondition(method, h(*req), etag, lm, DATE, DATE) == expected


@pytest.mark.parametrize("value, size, expected", [
    (b"bytes=0-9", 100, [(0, 9)]),
    (b"bytes=90-", 100, [(90, 99)]),
    (b"bytes=-10", 100, [(90, 99)]),
    (b"bytes=-1000", 100, [(0, 99)]),
    (b"bytes=50-1000", 100, [(50, 99)]),
    (b"bytes=100-", 100, []),
    (b"bytes=-0", 100, []),
    (b"bytes=0-0,-1", 100, [(0, 0), (99, 99)]),
    (b"Bytes = 1-2", 100, [(1, 2)]),
    (b"bytes=5-1", 100, None),
    (b"bytes=a-b", 100, None),
    (b"items=0-1", 100, None),
    (b"bytes=", 100, None),
    (b"bytes=0-", 0, []),
])
def test_parse_ranges(value: bytes, size: int, expected: list[tuple[int, int]] | None) -> None:
    assert parse_ranges(value, size) == expected


def plan(*req: tuple[str, str], size: int = 100, method: bytes = b"GET",
         status: int = 200) -> RangePlan:
    return plan_range(method, status, h(*req), size, ETAG, LM, DATE)


def test_plan_range() -> None:
    p = plan(("Range", "bytes=10-19"))
    assert (p.kind, p.start, p.end, p.length) == (RangeKind.PARTIAL, 10, 19, 10)
    assert p.content_range(100) == b"bytes 10-19/100"
    p = plan(("Range", "bytes=200-"))
    assert p.kind is RangeKind.UNSATISFIABLE and p.content_range(100) == b"bytes */100"
    assert plan().kind is RangeKind.FULL
    assert plan(("Range", "bytes=0-1"), method=b"HEAD").kind is RangeKind.FULL
    assert plan(("Range", "bytes=0-1"), status=404).kind is RangeKind.FULL
    # overlapping or touching ranges merge into one 206
    p = plan(("Range", "bytes=0-9,5-20,21-30"))
    assert (p.kind, p.start, p.end) == (RangeKind.PARTIAL, 0, 30)
    # disjoint ones are answered with the full 200 (documented choice)
    assert plan(("Range", "bytes=0-1,50-60")).kind is RangeKind.FULL
    assert plan(("Range", "bytes=x")).kind is RangeKind.FULL


@pytest.mark.parametrize("if_range, partial", [
    ('"v1"', True), ('"v2"', False), ('W/"v1"', False),
    (d(LM), True), (d(LM + 1), False), ("garbage", False),
])
def test_if_range(if_range: str, partial: bool) -> None:
    p = plan(("Range", "bytes=0-1"), ("If-Range", if_range))
    assert (p.kind is RangeKind.PARTIAL) == partial


def test_if_range_date_needs_strong_last_modified() -> None:
    # Last-Modified equal to Date is a weak validator: the Range is ignored.
    p = plan_range(b"GET", 200, h(("Range", "bytes=0-1"), ("If-Range", d(LM))), 100, None,
                   LM, LM)
    assert p.kind is RangeKind.FULL
