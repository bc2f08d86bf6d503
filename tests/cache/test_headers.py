"""Stored and served header fields, 304 merging, invalidation URIs, Cache-Status / X-Cache."""

from __future__ import annotations

import pytest

from lbcdn.cache.headers import (Outcome, age_value, cache_lines, cache_status,
                                 invalidated_uris, merge_not_modified, not_modified_headers,
                                 parse_fwd, serialize, storable_headers, validator_matches,
                                 with_status, x_cache)
from lbcdn.http.response import parse_head


def h(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in pairs]


def test_storable_headers_drop_hop_by_hop_and_named() -> None:
    got = storable_headers(h(("Content-Type", "text/plain"), ("Connection", "close, X-Secret"),
                             ("X-Secret", "1"), ("Keep-Alive", "timeout=5"),
                             ("Transfer-Encoding", "chunked"), ("Age", "5"),
                             ("Proxy-Authenticate", "Basic"), ("Set-Cookie", "a=1"),
                             ("X-User", "bob")),
                           frozenset({b"x-user"}))
    assert got == h(("Content-Type", "text/plain"), ("Set-Cookie", "a=1"))


def test_serialize_skips_targeted_and_x_cache() -> None:
    lines = serialize(h(("A", "1"), ("CDN-Cache-Control", "max-age=9"), ("X-Cache", "Hit"),
                        ("Cache-Status", "origin; fwd=miss")))
    assert lines == b"A: 1\r\nCache-Status: origin; fwd=miss\r\n"


def test_merge_not_modified() -> None:
    stored = h(("Content-Type", "text/html"), ("Content-Length", "10"), ("ETag", '"a"'),
               ("Cache-Control", "max-age=1"), ("X-Multi", "1"), ("X-Multi", "2"),
               ("Date", "old"), ("Content-Encoding", "gzip"))
    fresh = h(("Cache-Control", "max-age=60"), ("Content-Length", "0"), ("X-Multi", "3"),
              ("Date", "new"), ("Connection", "X-Hop"), ("X-Hop", "1"), ("X-New", "n"),
              ("Content-Encoding", "br"))
    merged = merge_not_modified(stored, fresh, keep=frozenset({b"content-encoding"}))
    assert merged == h(("Content-Type", "text/html"), ("Content-Length", "10"), ("ETag", '"a"'),
                       ("Content-Encoding", "gzip"), ("Cache-Control", "max-age=60"),
                       ("X-Multi", "3"), ("Date", "new"), ("X-New", "n"))


def test_a_304_updates_all_but_the_fields_the_stored_body_depends_on() -> None:
    """RFC 9111 3.2 / 4.3.4: Content-Length, Content-Range, Content-Encoding, Content-Type
    and Vary stay as stored (they describe the bytes and the variant we keep); the rest is
    updated or added, whatever its name."""
    stored = h(("Content-Type", "text/html"), ("Content-Encoding", "gzip"), ("Vary", "Accept"),
               ("Content-Length", "10"), ("ETag", '"a"'), ("Cache-Control", "max-age=1"),
               ("Expires", "old"), ("Last-Modified", "old"), ("Link", "</a>"))
    fresh = h(("Content-Type", "application/json"), ("Content-Encoding", "identity"),
              ("Vary", "Accept, Cookie"), ("Content-Length", "99"),
              ("Content-Range", "bytes 0-1/2"), ("ETag", '"a"'), ("Age", "5"),
              ("Cache-Control", "max-age=60"), ("Expires", "new"), ("Last-Modified", "new"),
              ("Link", "</b>"), ("Content-Language", "en"), ("Transfer-Encoding", "chunked"))
    assert merge_not_modified(stored, fresh) == h(
        ("Content-Type", "text/html"), ("Content-Encoding", "gzip"), ("Vary", "Accept"),
        ("Content-Length", "10"), ("ETag", '"a"'), ("Cache-Control", "max-age=60"),
        ("Expires", "new"), ("Last-Modified", "new"), ("Link", "</b>"),
        ("Content-Language", "en"))


def test_not_modified_headers() -> None:
    stored = h(("Content-Type", "text/html"), ("ETag", '"a"'), ("Vary", "Accept"),
               ("Cache-Control", "max-age=1"), ("Content-Length", "5"), ("Date", "x"))
    assert not_modified_headers(stored) == h(("ETag", '"a"'), ("Vary", "Accept"),
                                             ("Cache-Control", "max-age=1"), ("Date", "x"))


@pytest.mark.parametrize("etag, lm, fresh, ok", [
    (b'"a"', None, [("ETag", '"a"')], True),
    (b'"a"', None, [("ETag", '"b"')], False),
    (None, None, [("ETag", '"b"')], False),
    (b'W/"a"', None, [("ETag", 'W/"a"')], True),
    (b'W/"a"', None, [("ETag", '"a"')], True),     # our compressed variant's weakened tag
    (b'"a"', None, [("ETag", 'W/"a"')], True),      # weak comparison for weak tags
    (None, b"Mon", [("Last-Modified", "Mon")], True),
    (None, b"Mon", [("Last-Modified", "Tue")], False),
    (b'"a"', None, [], True),
])
def test_validator_matches(etag: bytes | None, lm: bytes | None,
                           fresh: list[tuple[str, str]], ok: bool) -> None:
    assert validator_matches(etag, lm, h(*fresh)) is ok


def test_invalidated_uris() -> None:
    got = invalidated_uris(b"POST", 201, b"Example.com", b"/a?x=1",
                           h(("Location", "/b"), ("Content-Location", "c?y=2")))
    assert got == [(b"example.com", b"/a?x=1"), (b"example.com", b"/b"),
                   (b"example.com", b"/c?y=2")]
    got = invalidated_uris(b"DELETE", 204, b"example.com", b"/a",
                           h(("Location", "http://other.example/b"),
                             ("Location", "https://example.com/d")))
    assert got == [(b"example.com", b"/a"), (b"example.com", b"/d")]
    assert invalidated_uris(b"GET", 200, b"e", b"/a", []) == []
    assert invalidated_uris(b"POST", 500, b"e", b"/a", []) == []
    assert invalidated_uris(b"PUT", 302, b"e", b"/a", []) == [(b"e", b"/a")]


def test_cache_status_values() -> None:
    assert cache_status(Outcome.HIT, ttl=42.7) == b"lbcdn; hit; ttl=42"
    assert cache_status(Outcome.STALE_HIT, ttl=-3.2) == b"lbcdn; hit; ttl=-4"
    assert cache_status(Outcome.MISS, stored=True) == b"lbcdn; fwd=miss; stored"
    # a stored response was selected but stale, and the origin sent a new one (RFC 9211 2.2)
    assert cache_status(Outcome.STALE_MISS, stored=True) == b"lbcdn; fwd=stale; stored"
    assert x_cache(Outcome.STALE_MISS) == b"Miss from lbcdn"
    assert cache_status(Outcome.URI_MISS, stored=True, collapsed=True) == \
        b"lbcdn; fwd=uri-miss; stored; collapsed"
    assert cache_status(Outcome.REFRESH_HIT, fwd_status=304, ttl=60) == \
        b"lbcdn; fwd=stale; fwd-status=304; ttl=60"
    assert cache_status(Outcome.BYPASS, detail=b'method "POST"') == \
        b'lbcdn; fwd=bypass; detail="method \\"POST\\""'
    assert cache_status(Outcome.STALE_ON_ERROR, fwd_status=503) == \
        b"lbcdn; hit; fwd=stale; fwd-status=503"


def test_x_cache_and_lines() -> None:
    assert x_cache(Outcome.HIT) == b"Hit from lbcdn"
    assert x_cache(Outcome.REFRESH_HIT) == b"RefreshHit from lbcdn"
    assert x_cache(Outcome.VARY_MISS) == b"Miss from lbcdn"
    assert x_cache(Outcome.ERROR) == b"Error from lbcdn"
    assert set(Outcome) == set(Outcome)  # every outcome has an X-Cache word
    for o in Outcome:
        x_cache(o)
    assert cache_lines(Outcome.HIT, 12.9, ttl=5) == (
        b"Age: 12\r\nCache-Status: lbcdn; hit; ttl=5\r\nX-Cache: Hit from lbcdn\r\n")
    assert cache_lines(Outcome.MISS, None).startswith(b"Cache-Status: lbcdn; fwd=miss\r\n")
    assert age_value(-1) == b"0" and age_value(1e12) == b"2147483648"


def test_parse_fwd_round_trips_a_response_head() -> None:
    resp = parse_head(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=5\r\nConnection: x-a\r\n"
                      b"X-A: dropped\r\nETag:  \"t\" \r\nContent-Length: 3\r\n\r\n")
    assert parse_fwd(resp.fwd) == [(b"Cache-Control", b"max-age=5"), (b"ETag", b'"t"'),
                                   (b"Content-Length", b"3")]
    assert parse_fwd([]) == []


def test_with_status_replaces_only_the_status_line() -> None:
    head = b"HTTP/1.1 200 OK\r\nA: b\r\nContent-Length: 1\r\n"
    assert with_status(head, 404) == b"HTTP/1.1 404 Not Found\r\nA: b\r\nContent-Length: 1\r\n"
