"""Compression at the edge, as CloudFront's "compress objects automatically".

Rules:
- A response is eligible when the policy compresses, its status is 200, it has no
  Content-Encoding (other than identity), no `Cache-Control: no-transform` (RFC 9110 7.7), a
  compressible media type (text/*, JSON, JavaScript, XML, SVG, fonts, wasm ...), and a length
  between 1,000 bytes and 10,000,000 bytes (CloudFront's bounds; a length not known in advance
  is checked when the body ends, and the object is then stored uncompressed if out of bounds).
- The coding is the client's best among br, gzip (server preference in that order) by
  Accept-Encoding q-values; `q=0` refuses; `*` stands for codings not listed; no
  Accept-Encoding: identity.
- An eligible response varies on Accept-Encoding whatever is chosen, so both the identity and
  the compressed variants carry `Vary: Accept-Encoding`.
- Compressed variants: new Content-Length, Content-Encoding set, a strong ETag made weak (the
  bytes differ from the origin's representation, RFC 9110 8.8.1), Content-MD5 dropped.
- Levels: gzip 6 (zlib default), brotli quality 5 (text compresses about as well as gzip 9 at
  gzip 6 speed; quality 11 is far too slow for a streaming fill).
"""

from __future__ import annotations

import zlib

import brotli

from lbcdn.cache.directives import Headers, get_all, get_first, parse_cache_control, split_list

MIN_BYTES = 1000
MAX_BYTES = 10_000_000
GZIP_LEVEL = 6
BROTLI_QUALITY = 5
OUR_CODINGS = (b"br", b"gzip")   # preference order when q-values tie
# Fields of a compressed variant a 304 must not overwrite (entry.freshened `keep`).
VARIANT_FIELDS = frozenset({b"content-encoding", b"etag", b"vary"})

_COMPRESSIBLE_TYPES = frozenset({
    b"application/javascript", b"application/x-javascript", b"application/ecmascript",
    b"application/json", b"application/manifest+json", b"application/ld+json",
    b"application/xml", b"application/xhtml+xml", b"application/rss+xml",
    b"application/atom+xml", b"application/wasm", b"application/vnd.ms-fontobject",
    b"application/x-font-ttf", b"application/x-font-opentype", b"application/x-web-app-manifest+json",
    b"application/graphql", b"application/x-httpd-php", b"image/svg+xml", b"image/x-icon",
    b"image/vnd.microsoft.icon", b"image/bmp", b"font/ttf", b"font/otf", b"font/eot",
    b"font/opentype", b"multipart/bag", b"multipart/mixed",
})


def compressible_type(content_type: bytes | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(b";")[0].strip().lower()
    return (media.startswith(b"text/") or media in _COMPRESSIBLE_TYPES
            or media.endswith(b"+json") or media.endswith(b"+xml"))


def eligible(enabled: bool, status: int, headers: Headers, length: int | None) -> bool:
    """May this response be compressed? `length`: the body size when known."""
    if not enabled or status != 200:
        return False
    encoding = get_first(headers, b"content-encoding")
    if encoding is not None and encoding.strip().lower() not in (b"", b"identity"):
        return False
    if b"no-transform" in parse_cache_control(get_all(headers, b"cache-control")):
        return False
    if not compressible_type(get_first(headers, b"content-type")):
        return False
    return length is None or MIN_BYTES <= length <= MAX_BYTES


def negotiate(accept_encoding: bytes | None) -> bytes:
    """b"br", b"gzip" or b"identity" for this Accept-Encoding value."""
    if accept_encoding is None:
        return b"identity"
    weights: dict[bytes, float] = {}
    for member in split_list([accept_encoding]):
        coding, *params = [p.strip() for p in member.split(b";")]
        q = 1.0
        for p in params:
            k, _, v = p.partition(b"=")
            if k.strip().lower() == b"q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        coding = coding.lower()
        if coding == b"x-gzip":
            coding = b"gzip"
        weights.setdefault(coding, q)
    star = weights.get(b"*")
    best, best_q = b"identity", 0.0
    for coding in OUR_CODINGS:
        q = weights.get(coding, star if star is not None else 0.0)
        if q > best_q:
            best, best_q = coding, q
    return best


def add_vary(headers: Headers) -> list[tuple[bytes, bytes]]:
    """`headers` varying on Accept-Encoding (added to an existing Vary, or a new line)."""
    names = [v.lower() for v in split_list(get_all(headers, b"vary"))]
    if b"accept-encoding" in names or b"*" in names:
        return list(headers)
    out: list[tuple[bytes, bytes]] = []
    done = False
    for n, v in headers:
        if n.lower() == b"vary" and not done:
            out.append((n, v + b", Accept-Encoding"))
            done = True
        else:
            out.append((n, v))
    if not done:
        out.append((b"Vary", b"Accept-Encoding"))
    return out


def compressed_headers(headers: Headers, coding: bytes, length: int | None
                       ) -> list[tuple[bytes, bytes]]:
    """Header lines of the compressed variant; `length` None drops Content-Length (the
    caller frames the body as chunked while it is still being compressed)."""
    out: list[tuple[bytes, bytes]] = []
    for n, v in add_vary(headers):
        name = n.lower()
        if name in (b"content-length", b"content-encoding", b"content-md5"):
            continue
        if name == b"etag" and v.strip()[:2] != b"W/":
            v = b"W/" + v.strip()
        out.append((n, v))
    out.append((b"Content-Encoding", coding))
    if length is not None:
        out.append((b"Content-Length", b"%d" % length))
    return out


class Compressor:
    """Streaming compression of one body: feed chunks, then finish."""

    def __init__(self, coding: bytes) -> None:
        self.coding = coding
        self._gzip: zlib._Compress | None = None
        self._br: brotli.Compressor | None = None
        if coding == b"gzip":
            self._gzip = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        elif coding == b"br":
            self._br = brotli.Compressor(quality=BROTLI_QUALITY)
        else:
            raise ValueError(f"unsupported coding {coding!r}")

    def feed(self, data: bytes) -> bytes:
        if self._gzip is not None:
            return self._gzip.compress(data)
        assert self._br is not None
        out: bytes = self._br.process(data)
        return out

    def finish(self) -> bytes:
        if self._gzip is not None:
            return self._gzip.flush()
        assert self._br is not None
        out: bytes = self._br.finish()
        return out


def compress(data: bytes, coding: bytes) -> bytes:
    c = Compressor(coding)
    return c.feed(data) + c.finish()
