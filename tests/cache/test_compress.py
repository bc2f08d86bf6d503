"""Compression eligibility, negotiation, headers of compressed variants, round trips."""

from __future__ import annotations

import gzip
import os

import brotli
import pytest

from lbcdn.cache.compress import (Compressor, add_vary, compress, compressed_headers,
                                  compressible_type, eligible, negotiate)


def h(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in pairs]


HTML = h(("Content-Type", "text/html; charset=utf-8"))


@pytest.mark.parametrize("ctype, ok", [
    ("text/html", True), ("TEXT/CSS; charset=x", True), ("application/json", True),
    ("application/vnd.api+json", True), ("image/svg+xml", True), ("application/javascript", True),
    ("image/png", False), ("application/octet-stream", False), ("video/mp4", False),
])
def test_types(ctype: str, ok: bool) -> None:
    assert compressible_type(ctype.encode()) is ok
    assert compressible_type(None) is False


def test_eligible() -> None:
    assert eligible(True, 200, HTML, 5000)
    assert eligible(True, 200, HTML, None)
    assert not eligible(False, 200, HTML, 5000)
    assert not eligible(True, 206, HTML, 5000)
    assert not eligible(True, 200, HTML, 999)
    assert eligible(True, 200, HTML, 1000)
    assert eligible(True, 200, HTML, 10_000_000)
    assert not eligible(True, 200, HTML, 10_000_001)
    assert not eligible(True, 200, HTML + h(("Content-Encoding", "gzip")), 5000)
    assert eligible(True, 200, HTML + h(("Content-Encoding", "identity")), 5000)
    assert not eligible(True, 200, HTML + h(("Cache-Control", "public, no-transform")), 5000)
    assert not eligible(True, 200, h(("Content-Type", "image/png")), 5000)


@pytest.mark.parametrize("value, coding", [
    (None, b"identity"), ("", b"identity"), ("gzip", b"gzip"), ("x-gzip", b"gzip"),
    ("br, gzip", b"br"), ("gzip;q=1, br;q=0.9", b"gzip"), ("br;q=0, gzip;q=0", b"identity"),
    ("*;q=0.5, br;q=0", b"gzip"), ("deflate", b"identity"), ("GZIP;Q=0.1", b"gzip"),
    ("gzip;q=abc", b"identity"),
])
def test_negotiate(value: str | None, coding: bytes) -> None:
    assert negotiate(value.encode() if value is not None else None) == coding


def test_add_vary() -> None:
    assert add_vary(HTML) == HTML + h(("Vary", "Accept-Encoding"))
    assert add_vary(h(("Vary", "Accept"))) == h(("Vary", "Accept, Accept-Encoding"))
    assert add_vary(h(("Vary", "accept-encoding"))) == h(("Vary", "accept-encoding"))
    assert add_vary(h(("Vary", "*"))) == h(("Vary", "*"))


def test_compressed_headers() -> None:
    got = compressed_headers(HTML + h(("ETag", '"abc"'), ("Content-Length", "5000"),
                                      ("Content-MD5", "x")), b"gzip", 123)
    assert got == HTML + h(("ETag", 'W/"abc"'), ("Vary", "Accept-Encoding"),
                           ("Content-Encoding", "gzip"), ("Content-Length", "123"))
    got = compressed_headers(h(("ETag", 'W/"abc"')), b"br", None)
    assert got == h(("ETag", 'W/"abc"'), ("Vary", "Accept-Encoding"), ("Content-Encoding", "br"))


def test_round_trips_streaming() -> None:
    data = b"<p>hello lbcdn</p>\n" * 2000 + os.urandom(100)
    for coding, decode in ((b"gzip", gzip.decompress), (b"br", brotli.decompress)):
        c = Compressor(coding)
        out = b"".join(c.feed(data[i:i + 1000]) for i in range(0, len(data), 1000)) + c.finish()
        assert decode(out) == data
        assert len(out) < len(data) // 5
        assert decode(compress(data, coding)) == data
    with pytest.raises(ValueError):
        Compressor(b"deflate")
