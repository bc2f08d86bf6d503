"""Header parsing: Cache-Control, CDN-Cache-Control (RFC 8941 dictionary), dates, Age, ETags."""

from __future__ import annotations

import pytest

from lbcdn.cache.directives import (DELTA_MAX, etag_list, parse_age, parse_cache_control,
                                    parse_cdn_cache_control, parse_etag, parse_http_date,
                                    split_list, strong_match, weak_match)

# 1994-11-06 08:49:37 UTC, the RFC 9110 example date
T = 784111777.0


@pytest.mark.parametrize("values, expected", [
    ([b"max-age=60"], {b"max-age": b"60"}),
    ([b"Max-Age=60, PUBLIC"], {b"max-age": b"60", b"public": None}),
    ([b"max-age=60", b"max-age=10"], {b"max-age": b"60"}),          # first wins
    ([b'max-age="60"'], {b"max-age": b"60"}),                        # quoted accepted
    ([b'no-cache="Set-Cookie, X-A", private'],
     {b"no-cache": b"Set-Cookie, X-A", b"private": None}),          # comma inside quotes
    ([b" , ,max-age=1,,"], {b"max-age": b"1"}),
    ([b""], {}),
])
def test_cache_control(values: list[bytes], expected: dict[bytes, bytes | None]) -> None:
    assert dict(parse_cache_control(values).items) == expected


def test_seconds_and_fields() -> None:
    d = parse_cache_control([b'max-age=abc, s-maxage=99999999999, no-cache="A, b", private'])
    assert d.seconds(b"max-age") == -1
    assert d.seconds(b"s-maxage") == DELTA_MAX
    assert d.seconds(b"min-fresh") is None
    assert d.fields(b"no-cache") == frozenset({b"a", b"b"})
    assert d.fields(b"private") == frozenset()
    assert d.fields(b"must-revalidate") is None
    assert parse_cache_control([b"max-age=-1"]).seconds(b"max-age") == -1
    assert parse_cache_control([b"max-age"]).seconds(b"max-age") == -1


@pytest.mark.parametrize("value, expected", [
    (b"max-age=60", {b"max-age": b"60"}),
    (b"max-age=60, no-store", {b"max-age": b"60", b"no-store": None}),
    (b"no-store=?0, max-age=5", {b"max-age": b"5"}),
    (b"max-age=5;foo=bar, public", {b"max-age": b"5", b"public": None}),
    (b'private=("set-cookie" "x-a")', {b"private": b"set-cookie, x-a"}),
    (b'no-cache="set-cookie"', {b"no-cache": b"set-cookie"}),
    (b"max-age=1.5", {b"max-age": b"1.5"}),
    (b"max-age=-5", {b"max-age": b"invalid"}),
    (b"max-age=1, max-age=2", {b"max-age": b"2"}),     # SF dictionaries: last wins
])
def test_cdn_cache_control_valid(value: bytes, expected: dict[bytes, bytes | None]) -> None:
    d = parse_cdn_cache_control([value])
    assert d is not None and dict(d.items) == expected


@pytest.mark.parametrize("value", [
    b"Max-Age=60",          # keys are lower case in structured fields
    b"max-age=60,",         # trailing comma
    b"max-age=60 public",   # missing comma
    b'max-age="60',         # unterminated string
    b"",
    b"max-age=@",
])
def test_cdn_cache_control_invalid_is_ignored(value: bytes) -> None:
    assert parse_cdn_cache_control([value]) is None


def test_cdn_cache_control_absent() -> None:
    assert parse_cdn_cache_control([]) is None


def test_cdn_decimal_is_invalid_delta() -> None:
    d = parse_cdn_cache_control([b"max-age=1.5"])
    assert d is not None and d.seconds(b"max-age") == -1


@pytest.mark.parametrize("value", [
    b"Sun, 06 Nov 1994 08:49:37 GMT",     # IMF-fixdate
    b"Sunday, 06-Nov-94 08:49:37 GMT",    # obsolete RFC 850
    b"Sun Nov  6 08:49:37 1994",          # asctime
])
def test_http_date_formats(value: bytes) -> None:
    assert parse_http_date(value) == T


@pytest.mark.parametrize("value", [b"0", b"-1", b"", b"tomorrow", b"\xff\xfe", None])
def test_invalid_dates(value: bytes | None) -> None:
    assert parse_http_date(value) is None


@pytest.mark.parametrize("lines, expected", [
    ([], 0), ([b"10"], 10), ([b"10, 20"], 10), ([b"-1"], 0), ([b"1.5"], 0),
    ([b"abc"], 0), ([b"99999999999"], DELTA_MAX), ([b"7", b"9"], 7),
])
def test_age(lines: list[bytes], expected: int) -> None:
    assert parse_age([(b"Age", v) for v in lines]) == expected


def test_etags() -> None:
    assert parse_etag(b'"abc"') == b'"abc"'
    assert parse_etag(b' W/"abc" ') == b'W/"abc"'
    assert parse_etag(b"abc") is None
    assert parse_etag(b'"a"b"') is None
    assert etag_list([]) is None
    assert etag_list([b"*"]) == [b"*"]
    assert etag_list([b'"a", W/"b"', b'"c,d"']) == [b'"a"', b'W/"b"', b'"c,d"']
    assert strong_match(b'"a"', b'"a"') and not strong_match(b'W/"a"', b'W/"a"')
    assert weak_match(b'W/"a"', b'"a"') and not weak_match(b'"a"', b'"b"')


def test_split_list() -> None:
    assert split_list([b"a, b", b" c ,", b'"x,y", z']) == [b"a", b"b", b"c", b'"x,y"', b"z"]
