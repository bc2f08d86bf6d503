"""Slice arithmetic and the checks on a slice's answer."""

from __future__ import annotations

from lbcdn.cache.slices import covering, first_slice, part, range_field, slice_key, \
    slice_problem

N = 1000


def test_ranges_and_keys() -> None:
    assert range_field(0, N) == b"bytes=0-999"
    assert range_field(3, N) == b"bytes=3000-3999"
    assert slice_key(b"GET\0h\0/a", 2) == b"GET\0h\0/a\0slice=2"
    assert list(covering(1500, 3999, N)) == [1, 2, 3]
    assert list(covering(0, 0, N)) == [0]


def test_first_slice_of_a_range() -> None:
    assert first_slice(None, N) == 0
    assert first_slice(b"bytes=2500-2600", N) == 2
    assert first_slice(b"bytes=2500-", N) == 2
    assert first_slice(b"bytes=-100", N) == 0


def test_slice_answers_are_checked() -> None:
    ok = [(b"Content-Range", b"bytes 1000-1999/5500"), (b"ETag", b'"v1"')]
    assert slice_problem(1, N, 206, ok, b'"v1"') == (5500, None)
    assert slice_problem(1, N, 206, ok, None) == (5500, None)
    last = [(b"Content-Range", b"bytes 5000-5499/5500"), (b"ETag", b'"v1"')]
    assert slice_problem(5, N, 206, last, b'"v1"') == (5500, None)
    assert slice_problem(1, N, 206, ok, b'"v2"') == (0, "etag mismatch in slice response")
    assert slice_problem(1, N, 200, ok, None)[1] == "origin answered 200 to a slice request"
    assert slice_problem(2, N, 206, ok, None)[1] == "slice 2 answered with bytes 1000-1999"
    assert slice_problem(1, N, 206, [], None)[1] == "slice answer without a valid Content-Range"


def test_part_of_a_slice() -> None:
    chunks = (b"a" * 400, b"b" * 600)   # slice 1: bytes 1000-1999
    assert part(chunks, 1, 1500, 3001, N) == [b"b" * 500]
    assert part(chunks, 1, 0, 1399, N) == [b"a" * 400]
    assert part(chunks, 1, 1399, 1400, N) == [b"a", b"b"]
    assert part(chunks, 1, 1000, 1999, N)[0] is chunks[0]   # whole chunks are not copied
    assert b"".join(part(chunks, 1, 1100, 1899, N)) == b"a" * 300 + b"b" * 500
    assert part(chunks, 1, 2000, 2999, N) == []
