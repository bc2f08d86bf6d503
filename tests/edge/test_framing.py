"""Strict request framing at the edge, one raw-socket test per case.

Every malformed or ambiguous request must get its exact 4xx status and the connection closed,
and (for the ones a smuggler would send) the backend must see nothing of it. The backend here is
a recording server of our own: it parses what the proxy sends with llhttp, answers each complete
request with a JSON echo, and keeps every byte, so "the backend saw nothing" is checked on the
wire. Pipelining tests use the demo backend, whose echo names the path it answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest

from tests.e2e.harness import (HOST, RawResult, demo_backend, free_port, parse_responses,
                               raw_request, running_daemon)

TIMEOUT = 5.0


# -- a recording backend ------------------------------------------------------------------------

@dataclass
class Seen:
    method: str
    target: str
    version: str
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass
class Recorder:
    connections: int = 0
    raw: list[bytearray] = field(default_factory=list)
    requests: list[Seen] = field(default_factory=list)
    parse_errors: int = 0

    @property
    def bytes_received(self) -> int:
        return sum(len(r) for r in self.raw)

    def paths(self) -> list[str]:
        return [r.target for r in self.requests]


class _RecordingProtocol(asyncio.Protocol):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.raw = bytearray()
        rec.raw.append(self.raw)
        rec.connections += 1
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.raw += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.rec.parse_errors += 1
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = bytearray()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        seen = Seen(self.parser.get_method().decode(), self._url.decode("latin-1"),
                    self.parser.get_http_version(), self._headers, bytes(self._body))
        self.rec.requests.append(seen)
        body = json.dumps({"method": seen.method, "path": seen.target,
                           "body": seen.body.decode("latin-1")}).encode()
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


@contextlib.asynccontextmanager
async def recording_backend() -> AsyncIterator[tuple[int, Recorder]]:
    rec = Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _RecordingProtocol(rec), HOST, 0)
    try:
        yield int(server.sockets[0].getsockname()[1]), rec
    finally:
        server.close()


# -- the daemon in front of it ------------------------------------------------------------------

def edge_config(backend_port: int, listener: dict[str, Any] | None = None,
                routes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listeners": [{"name": "web", "address": HOST, "port": free_port(), **(listener or {})}],
        # no active health checks: these tests read exactly what the backend receives
        "pools": {"app": {"targets": [f"{HOST}:{backend_port}"], "health": {"enabled": False}}},
        "default_route": {"forward": "app"},
        "admin": {"port": 0},
        "logging": {"level": "error", "access_log": {"enabled": False}},
        "shutdown": {"drain_timeout_s": 1},
    }
    if routes is not None:
        config["routes"] = routes
    return config


@dataclass
class Edge:
    port: int
    rec: Recorder

    async def send(self, data: bytes, timeout_s: float = TIMEOUT) -> RawResult:
        return await raw_request(self.port, data, read_timeout_s=timeout_s)


@contextlib.asynccontextmanager
async def edge(listener: dict[str, Any] | None = None,
               routes: list[dict[str, Any]] | None = None) -> AsyncIterator[Edge]:
    async with recording_backend() as (bport, rec):
        config = edge_config(bport, listener, routes)
        async with running_daemon(config):
            yield Edge(int(config["listeners"][0]["port"]), rec)


@pytest.fixture
async def proxy() -> AsyncIterator[Edge]:
    async with edge() as e:
        yield e


def status_line(res: RawResult) -> bytes:
    return res.data.split(b"\r\n", 1)[0]


def assert_rejected(res: RawResult, status: int, rec: Recorder | None = None) -> None:
    """Exactly one error response with `status`, the connection closed by the server, and
    (when given) a backend that received not one byte."""
    assert res.closed, f"server did not close: {res!r}"
    responses = parse_responses(res.data)
    assert [r.status for r in responses] == [status], res
    resp = responses[0]
    assert resp.header("Connection") == b"close", resp
    assert b"lbcdn" in resp.body, resp
    if rec is not None:
        assert rec.bytes_received == 0, f"backend saw {bytes(rec.raw[0])[:300]!r}"
        assert rec.requests == []


def assert_ok(res: RawResult, rec: Recorder, body: bytes = b"", path: str = "/") -> None:
    responses = parse_responses(res.data)
    assert [r.status for r in responses] == [200], res
    echoed = json.loads(responses[0].body)
    assert echoed["path"] == path
    assert echoed["body"].encode("latin-1") == body
    assert len(rec.requests) == 1
    assert rec.requests[0].body == body


def post(headers: bytes, body: bytes = b"", target: bytes = b"/") -> bytes:
    """A request with the given header block (CRLF-terminated lines) and raw body; closes."""
    return (b"POST " + target + b" HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n" +
            headers + b"\r\n" + body)


def get(extra: bytes = b"", target: bytes = b"/", version: bytes = b"HTTP/1.1",
        host: bytes | None = b"example.com") -> bytes:
    host_line = b"Host: " + host + b"\r\n" if host is not None else b""
    return (b"GET " + target + b" " + version + b"\r\n" + host_line + extra +
            b"Connection: close\r\n\r\n")


# -- Content-Length and Transfer-Encoding ------------------------------------------------------

SMUGGLING_HEADS = {
    "cl-and-te": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    "te-and-cl": b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    "cl-duplicate-same": b"Content-Length: 5\r\nContent-Length: 5\r\n",
    "cl-duplicate-different": b"Content-Length: 5\r\nContent-Length: 6\r\n",
    "cl-plus": b"Content-Length: +5\r\n",
    "cl-minus": b"Content-Length: -5\r\n",
    "cl-hex": b"Content-Length: 0x5\r\n",
    "cl-empty": b"Content-Length: \r\n",
    "cl-list-same": b"Content-Length: 5, 5\r\n",
    "cl-list-comma-only": b"Content-Length: 5,\r\n",
    "cl-inner-space": b"Content-Length: 5 5\r\n",
    "cl-decimal-point": b"Content-Length: 5.0\r\n",
    "cl-letters": b"Content-Length: five\r\n",
    "cl-overflow": b"Content-Length: 99999999999999999999999999\r\n",
    "te-chunked-twice-list": b"Transfer-Encoding: chunked, chunked\r\n",
    "te-leading-comma": b"Transfer-Encoding: ,chunked\r\n",
    "te-gzip": b"Transfer-Encoding: gzip\r\n",
    "te-identity": b"Transfer-Encoding: identity\r\n",
    "te-chunked-then-gzip": b"Transfer-Encoding: chunked, gzip\r\n",
    "te-two-headers": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    "te-two-headers-chunked-first": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n",
    "te-xchunked": b"Transfer-Encoding: xchunked\r\n",
    "te-chunked-x": b"Transfer-Encoding: chunkedx\r\n",
    "te-empty": b"Transfer-Encoding: \r\n",
    "te-xchunked-with-cl": b"Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n",
}


@pytest.mark.parametrize("headers", SMUGGLING_HEADS.values(), ids=SMUGGLING_HEADS.keys())
async def test_ambiguous_body_length_is_rejected(proxy: Edge, headers: bytes) -> None:
    res = await proxy.send(post(headers, b"5\r\nhello\r\n0\r\n\r\n"))
    assert_rejected(res, 400, proxy.rec)


async def test_te_gzip_then_chunked_is_not_implemented(proxy: Edge) -> None:
    # RFC 9112 6.1: a transfer coding the server does not understand -> SHOULD 501 (nginx
    # answers 501 too); chunked is final, so this is not the framing error 400 is for.
    res = await proxy.send(post(b"Transfer-Encoding: gzip, chunked\r\n",
                                b"5\r\nhello\r\n0\r\n\r\n"))
    assert_rejected(res, 501, proxy.rec)


async def test_te_on_http10_request_is_rejected(proxy: Edge) -> None:
    # RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing.
    res = await proxy.send(b"POST / HTTP/1.0\r\nHost: example.com\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert_rejected(res, 400, proxy.rec)


# What the RFC allows: OWS around a field value is not part of it, and codings are
# case-insensitive; chunk extensions are legal and ignored.
VALID_BODIES = {
    "cl-leading-space": (b"Content-Length:   5\r\n", b"hello"),
    "cl-trailing-space": (b"Content-Length: 5  \r\n", b"hello"),
    "cl-leading-tab": (b"Content-Length:\t5\r\n", b"hello"),
    "cl-zero": (b"Content-Length: 0\r\n", b""),
    "cl-leading-zeros": (b"Content-Length: 005\r\n", b"hello"),
    "te-trailing-space": (b"Transfer-Encoding: chunked \r\n", b"5\r\nhello\r\n0\r\n\r\n"),
    "te-uppercase": (b"Transfer-Encoding: CHUNKED\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
    "chunk-extension": (b"Transfer-Encoding: chunked\r\n",
                        b"5;name=value\r\nhello\r\n0\r\n\r\n"),
    "chunk-uppercase-hex": (b"Transfer-Encoding: chunked\r\n",
                            b"A\r\nhellohello\r\n0\r\n\r\n"),
    "chunk-trailer": (b"Transfer-Encoding: chunked\r\n",
                      b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"),
}


@pytest.mark.parametrize("headers,body", VALID_BODIES.values(), ids=VALID_BODIES.keys())
async def test_valid_body_framing_is_forwarded(proxy: Edge, headers: bytes, body: bytes) -> None:
    res = await proxy.send(post(headers, body))
    expected = b"hellohello" if b"A\r\n" in body else b"hello" if b"hello" in body else b""
    assert_ok(res, proxy.rec, expected)


# -- chunk lines ----------------------------------------------------------------------------------

BAD_CHUNKS = {
    "size-hex-prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "size-plus": b"+5\r\nhello\r\n0\r\n\r\n",
    "size-minus": b"-5\r\nhello\r\n0\r\n\r\n",
    "size-leading-space": b" 5\r\nhello\r\n0\r\n\r\n",
    "size-trailing-space": b"5 \r\nhello\r\n0\r\n\r\n",
    "size-leading-tab": b"\t5\r\nhello\r\n0\r\n\r\n",
    "size-not-hex": b"g\r\nhello\r\n0\r\n\r\n",
    "size-empty": b"\r\nhello\r\n0\r\n\r\n",
    "size-bare-lf": b"5\nhello\r\n0\r\n\r\n",
    "data-then-bare-lf": b"5\r\nhello\n0\r\n\r\n",
    "data-too-long": b"5\r\nhelloXX\r\n0\r\n\r\n",
    "last-chunk-bare-lf": b"5\r\nhello\r\n0\n\n",
    "size-overflow": b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "size-2-pow-64": b"10000000000000000\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("body", BAD_CHUNKS.values(), ids=BAD_CHUNKS.keys())
async def test_bad_chunk_is_rejected(proxy: Edge, body: bytes) -> None:
    res = await proxy.send(post(b"Transfer-Encoding: chunked\r\n", body))
    assert res.closed, res
    assert [r.status for r in parse_responses(res.data)] == [400], res
    # The head may have been forwarded already (bodies stream), but the backend must never
    # see a complete request made of a broken one.
    assert proxy.rec.requests == [], proxy.rec


# -- header fields ------------------------------------------------------------------------------

BAD_HEADERS = {
    "cr-in-value": b"X-A: a\rb\r\n",
    "lf-in-value": b"X-A: a\nb\r\n",
    "nul-in-value": b"X-A: a\x00b\r\n",
    "del-in-name": b"X-\x7fA: a\r\n",
    "no-colon": b"X-A a\r\n",
    "obs-fold-space": b"X-A: a\r\n b\r\n",
    "obs-fold-tab": b"X-A: a\r\n\tb\r\n",
    "space-before-colon": b"X-A : a\r\n",
    "tab-before-colon": b"X-A\t: a\r\n",
    "empty-name": b": a\r\n",
    "space-in-name": b"X A: a\r\n",
    "bare-lf-line-end": b"X-A: a\nX-B: b\r\n",
    "host-space-before-colon": b"Host : evil.example\r\n",
}


@pytest.mark.parametrize("line", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
async def test_bad_header_line_is_rejected(proxy: Edge, line: bytes) -> None:
    res = await proxy.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n" + line + b"\r\n")
    assert_rejected(res, 400, proxy.rec)


async def test_leading_whitespace_before_first_header_is_rejected(proxy: Edge) -> None:
    # RFC 9112 2.2: whitespace between the start-line and the first field line: reject.
    res = await proxy.send(b"GET / HTTP/1.1\r\n Host: example.com\r\n\r\n")
    assert_rejected(res, 400, proxy.rec)


async def test_missing_host_on_http11_is_rejected(proxy: Edge) -> None:
    res = await proxy.send(get(host=None))
    assert_rejected(res, 400, proxy.rec)


async def test_missing_host_on_http10_is_served(proxy: Edge) -> None:
    res = await proxy.send(b"GET /ten HTTP/1.0\r\n\r\n")
    assert res.closed
    assert_ok(res, proxy.rec, path="/ten")
    assert proxy.rec.requests[0].version == "1.1"


async def test_duplicate_host_is_rejected(proxy: Edge) -> None:
    res = await proxy.send(get(b"Host: other.example\r\n"))
    assert_rejected(res, 400, proxy.rec)


async def test_duplicate_identical_host_is_rejected(proxy: Edge) -> None:
    res = await proxy.send(get(b"Host: example.com\r\n"))
    assert_rejected(res, 400, proxy.rec)


@pytest.mark.parametrize("host", [b"a b", b"a/b", b"user@a", b"a:80:80", b"a:port", b"[::1", b"",
                                  b":80"],
                         ids=["space", "slash", "userinfo", "two-ports", "named-port",
                              "open-bracket", "empty", "port-only"])
async def test_invalid_host_value_is_rejected(proxy: Edge, host: bytes) -> None:
    res = await proxy.send(get(host=host))
    assert_rejected(res, 400, proxy.rec)


@pytest.mark.parametrize("host", [b"example.com:8080", b"[::1]:80", b"127.0.0.1", b"EXAMPLE.com"])
async def test_valid_host_values_are_served(proxy: Edge, host: bytes) -> None:
    res = await proxy.send(get(host=host))
    assert_ok(res, proxy.rec)
    assert proxy.rec.requests[0].headers[0] == (b"Host", host)


# -- request-target and version ------------------------------------------------------------------

BAD_TARGETS = {
    "relative": b"GET foo HTTP/1.1",
    "empty-authority": b"GET http:// HTTP/1.1",
    "empty-authority-path": b"GET http:///p HTTP/1.1",
    "asterisk-with-get": b"GET * HTTP/1.1",
    "userinfo-absolute": b"GET http://user:pw@example.com/ HTTP/1.1",
    "unknown-scheme": b"GET ftp://example.com/ HTTP/1.1",
    "question-only": b"GET ?a=1 HTTP/1.1",
    "fragment-only": b"GET #frag HTTP/1.1",
}


@pytest.mark.parametrize("line", BAD_TARGETS.values(), ids=BAD_TARGETS.keys())
async def test_invalid_request_target_is_rejected(proxy: Edge, line: bytes) -> None:
    res = await proxy.send(line + b"\r\nHost: example.com\r\n\r\n")
    assert_rejected(res, 400, proxy.rec)


async def test_double_slash_origin_form_is_valid(proxy: Edge) -> None:
    # absolute-path = 1*( "/" segment ) and a segment may be empty: `//x` is a path, not an
    # authority; it must reach the backend unchanged.
    res = await proxy.send(get(target=b"//x"))
    assert_ok(res, proxy.rec, path="//x")


async def test_absolute_form_wins_over_host(proxy: Edge) -> None:
    res = await proxy.send(get(target=b"http://origin.example/p?q=1"))
    assert_ok(res, proxy.rec, path="/p?q=1")
    assert (b"Host", b"origin.example") in proxy.rec.requests[0].headers


async def test_absolute_form_without_host_on_http11_is_rejected(proxy: Edge) -> None:
    # RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request that lacks Host, even when
    # the target is in absolute-form.
    res = await proxy.send(get(target=b"http://origin.example/p", host=None))
    assert_rejected(res, 400, proxy.rec)


async def test_options_asterisk_is_forwarded(proxy: Edge) -> None:
    res = await proxy.send(b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
    assert_ok(res, proxy.rec, path="*")
    assert proxy.rec.requests[0].method == "OPTIONS"


@pytest.mark.parametrize("method", [b"BREW", b"X-CUSTOM", b"DESCRIBE", b"GETS", b"get",
                                    b"A" * 100],
                         ids=["brew", "x-custom", "rtsp-describe", "gets", "lowercase", "long"])
async def test_extension_method_is_not_implemented(proxy: Edge, method: bytes) -> None:
    # RFC 9110 9.1: methods are extensible tokens; one the server does not implement gets 501
    # (15.6.2), not the 400 of a malformed request.
    res = await proxy.send(method + b" /x HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert_rejected(res, 501, proxy.rec)
    assert b"method not implemented" in parse_responses(res.data)[0].body


@pytest.mark.parametrize("line", [b"GE(T /x HTTP/1.1", b"GET\t/x HTTP/1.1",
                                  b"G\x80 /x HTTP/1.1"],
                         ids=["paren", "tab-separator", "non-ascii"])
async def test_method_that_is_not_a_token_is_rejected(proxy: Edge, line: bytes) -> None:
    res = await proxy.send(line + b"\r\nHost: example.com\r\n\r\n")
    assert_rejected(res, 400, proxy.rec)


async def test_connect_is_refused_with_405(proxy: Edge) -> None:
    res = await proxy.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert_rejected(res, 405, proxy.rec)
    # RFC 9110 15.5.6: a 405 MUST carry Allow.
    assert parse_responses(res.data)[0].header("Allow") is not None, res


BAD_VERSIONS = {
    "lowercase": b"GET / http/1.1",
    "no-minor": b"GET / HTTP/1",
    "garbage-minor": b"GET / HTTP/1.x",
    "extra-digit": b"GET / HTTP/1.11",
    "https-name": b"GET / HTTPS/1.1",
    "missing-http09": b"GET /",  # HTTP/0.9 is gone (RFC 9112 3: HTTP-version is required)
    "trailing-space": b"GET / HTTP/1.1 ",
}


@pytest.mark.parametrize("line", BAD_VERSIONS.values(), ids=BAD_VERSIONS.keys())
async def test_invalid_request_line_is_rejected(proxy: Edge, line: bytes) -> None:
    res = await proxy.send(line + b"\r\nHost: example.com\r\n\r\n")
    assert_rejected(res, 400, proxy.rec)


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/3.0", b"HTTP/9.9"])
async def test_http2_version_on_http1_listener_is_505(proxy: Edge, version: bytes) -> None:
    # RFC 9110 15.6.6: a major version the server does not support -> 505 (nginx too).
    res = await proxy.send(b"GET / " + version + b"\r\nHost: example.com\r\n\r\n")
    assert_rejected(res, 505, proxy.rec)


async def test_later_http1_minor_version_is_served_as_http11(proxy: Edge) -> None:
    # RFC 9110 2.5: a request with a higher minor version is processed as the highest minor
    # version the server implements (nginx answers 200 too).
    res = await proxy.send(get(target=b"/v", version=b"HTTP/1.2"))
    assert_ok(res, proxy.rec, path="/v")
    assert res.data.startswith(b"HTTP/1.1 200 ")
    assert proxy.rec.requests[0].version == "1.1"


@pytest.mark.parametrize("data", [b"GET /x\r\n", b"GET /x\r\nHost: a\r\n",
                                  b"\r\nGET  http://a/x\r\n"],
                         ids=["line-only", "with-header", "absolute-form"])
async def test_request_line_without_version_is_400_without_waiting(
        proxy: Edge, data: bytes) -> None:
    # HTTP/0.9 (`GET /x`, no headers to follow): refused at once, not after the header timeout
    res = await proxy.send(data, timeout_s=3.0)
    assert_rejected(res, 400, proxy.rec)
    assert res.elapsed_s < 2.0


# -- limits ---------------------------------------------------------------------------------------

async def test_request_line_over_8k_is_414(proxy: Edge) -> None:
    res = await proxy.send(get(target=b"/" + b"a" * 8300))
    assert_rejected(res, 414, proxy.rec)


async def test_request_line_just_under_limit_is_served(proxy: Edge) -> None:
    target = b"/" + b"a" * 8000
    res = await proxy.send(get(target=target))
    assert_ok(res, proxy.rec, path=target.decode())


async def test_endless_request_line_is_414_without_waiting(proxy: Edge) -> None:
    res = await proxy.send(b"GET /" + b"a" * 100 * 1024, timeout_s=3.0)
    assert_rejected(res, 414, proxy.rec)
    assert res.elapsed_s < 2.0


async def test_one_header_over_8k_is_431(proxy: Edge) -> None:
    res = await proxy.send(get(b"X-Big: " + b"v" * 8300 + b"\r\n"))
    assert_rejected(res, 431, proxy.rec)


async def test_one_header_just_under_8k_is_served(proxy: Edge) -> None:
    res = await proxy.send(get(b"X-Big: " + b"v" * 8000 + b"\r\n"))
    assert_ok(res, proxy.rec)


async def test_headers_over_32k_in_all_are_431(proxy: Edge) -> None:
    lines = b"".join(b"X-H%02d: %s\r\n" % (i, b"v" * 1024) for i in range(40))
    res = await proxy.send(get(lines))
    assert_rejected(res, 431, proxy.rec)


async def test_headers_under_32k_in_all_are_served(proxy: Edge) -> None:
    lines = b"".join(b"X-H%02d: %s\r\n" % (i, b"v" * 1024) for i in range(28))
    res = await proxy.send(get(lines))
    assert_ok(res, proxy.rec)


async def test_more_than_100_headers_is_431(proxy: Edge) -> None:
    lines = b"".join(b"X-H%03d: v\r\n" % i for i in range(101))
    res = await proxy.send(get(lines))
    assert_rejected(res, 431, proxy.rec)


async def test_100_headers_are_served(proxy: Edge) -> None:
    # Host + Connection + 98 more = 100
    lines = b"".join(b"X-H%03d: v\r\n" % i for i in range(98))
    res = await proxy.send(get(lines))
    assert_ok(res, proxy.rec)


async def test_endless_header_line_is_431_without_waiting(proxy: Edge) -> None:
    res = await proxy.send(b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Endless: " +
                           b"v" * 100 * 1024, timeout_s=3.0)
    assert_rejected(res, 431, proxy.rec)
    assert res.elapsed_s < 2.0


async def test_endless_header_name_is_431_without_waiting(proxy: Edge) -> None:
    res = await proxy.send(b"GET / HTTP/1.1\r\nHost: example.com\r\nX" + b"n" * 100 * 1024,
                           timeout_s=3.0)
    assert_rejected(res, 431, proxy.rec)
    assert res.elapsed_s < 2.0


LIMITED = [{"name": "small", "max_body_bytes": 10, "forward": "app"}]


async def test_content_length_over_route_limit_is_413() -> None:
    async with edge(routes=LIMITED) as e:
        res = await e.send(post(b"Content-Length: 11\r\n", b"x" * 11))
        assert_rejected(res, 413, e.rec)


async def test_content_length_at_route_limit_is_served() -> None:
    async with edge(routes=LIMITED) as e:
        res = await e.send(post(b"Content-Length: 10\r\n", b"x" * 10))
        assert_ok(res, e.rec, b"x" * 10)


async def test_chunked_body_growing_past_route_limit_is_413_and_closed() -> None:
    async with edge(routes=LIMITED) as e:
        body = b"6\r\nxxxxxx\r\n6\r\nyyyyyy\r\n0\r\n\r\n"
        res = await e.send(post(b"Transfer-Encoding: chunked\r\n", body))
        assert res.closed, res
        assert [r.status for r in parse_responses(res.data)] == [413], res
        assert e.rec.requests == []


async def test_chunked_body_at_route_limit_is_served() -> None:
    async with edge(routes=LIMITED) as e:
        body = b"5\r\nxxxxx\r\n5\r\nyyyyy\r\n0\r\n\r\n"
        res = await e.send(post(b"Transfer-Encoding: chunked\r\n", body))
        assert_ok(res, e.rec, b"xxxxxyyyyy")


# -- smuggling: a second request hidden in the first one's body ---------------------------------

HIDDEN = b"GET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n"


async def test_cl_te_smuggling_attempt_reaches_nobody(proxy: Edge) -> None:
    # a front end that believed Content-Length would forward `0\r\n\r\n` + HIDDEN as a body
    body = b"0\r\n\r\n" + HIDDEN
    res = await proxy.send(b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: %d\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n%s" % (len(body), body))
    assert_rejected(res, 400, proxy.rec)


async def test_te_cl_smuggling_attempt_reaches_nobody(proxy: Edge) -> None:
    chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(HIDDEN), HIDDEN)
    res = await proxy.send(b"POST / HTTP/1.1\r\nHost: example.com\r\n"
                           b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" + chunk)
    assert_rejected(res, 400, proxy.rec)


async def test_te_obfuscated_smuggling_attempt_reaches_nobody(proxy: Edge) -> None:
    res = await proxy.send(b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 4\r\n"
                           b"Transfer-Encoding: chunked\r\nTransfer-encoding: cow\r\n\r\n"
                           b"5c\r\n" + HIDDEN + b"\r\n0\r\n\r\n")
    assert_rejected(res, 400, proxy.rec)


@pytest.mark.parametrize("connection", [
    b"",
    # a proxy that drops the header lines named in Connection must not drop Content-Length:
    # the body would reach the backend unframed and be read as the next request
    b"Connection: Content-Length\r\n",
    b"Connection: content-length, host, transfer-encoding\r\n",
], ids=["plain", "named-in-connection", "framing-named-in-connection"])
async def test_request_in_content_length_body_stays_a_body(proxy: Edge, connection: bytes
                                                           ) -> None:
    data = (b"POST /first HTTP/1.1\r\nHost: example.com\r\n%sContent-Length: %d\r\n\r\n%s"
            b"GET /second HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
            % (connection, len(HIDDEN), HIDDEN))
    res = await proxy.send(data)
    responses = parse_responses(res.data)
    assert [r.status for r in responses] == [200, 200], res
    assert [json.loads(r.body)["path"] for r in responses] == ["/first", "/second"]
    assert proxy.rec.paths() == ["/first", "/second"]
    assert proxy.rec.requests[0].body == HIDDEN
    assert (b"Content-Length", b"%d" % len(HIDDEN)) in proxy.rec.requests[0].headers
    # on the upstream wire: the body went with its length, nothing the backend could re-split
    upstream = b"".join(proxy.rec.raw)
    assert upstream.count(b"GET /smuggled") == 1


async def test_request_in_chunked_body_stays_a_body(proxy: Edge) -> None:
    data = (b"POST /first HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%s\r\n0\r\n\r\n"
            b"GET /second HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
            % (len(HIDDEN), HIDDEN))
    res = await proxy.send(data)
    responses = parse_responses(res.data)
    assert [r.status for r in responses] == [200, 200], res
    assert proxy.rec.paths() == ["/first", "/second"]
    assert proxy.rec.requests[0].body == HIDDEN


async def test_zero_length_chunked_body_does_not_swallow_next_request(proxy: Edge) -> None:
    data = (b"POST /first HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\n"
            b"GET /second HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
    res = await proxy.send(data)
    assert [r.status for r in parse_responses(res.data)] == [200, 200], res
    assert proxy.rec.paths() == ["/first", "/second"]
    assert proxy.rec.requests[0].body == b""


async def test_get_with_body_is_forwarded_with_its_body(proxy: Edge) -> None:
    # A GET may carry Content-Length; a proxy that ignored it would read "HIDDEN" as a request.
    data = (b"GET /first HTTP/1.1\r\nHost: example.com\r\nContent-Length: %d\r\n\r\n%s"
            b"GET /second HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
            % (len(HIDDEN), HIDDEN))
    res = await proxy.send(data)
    assert [r.status for r in parse_responses(res.data)] == [200, 200], res
    assert proxy.rec.paths() == ["/first", "/second"]
    assert proxy.rec.requests[0].body == HIDDEN


async def test_expect_100_continue_from_http10_is_not_forwarded(proxy: Edge) -> None:
    # RFC 9110 10.1.1: ignored in an HTTP/1.0 request, so the backend (spoken to in 1.1) must
    # not be asked to send a 100 Continue either.
    res = await proxy.send(b"POST /ten HTTP/1.0\r\nHost: example.com\r\n"
                           b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello")
    assert_ok(res, proxy.rec, b"hello", path="/ten")
    assert all(name.lower() != b"expect" for name, _ in proxy.rec.requests[0].headers)


# -- Upgrade: h2c ------------------------------------------------------------------------------

H2C = (b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
       b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n")
SECOND = b"GET /second HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"


def assert_plain_h2c_request(rec: Recorder, body: bytes) -> None:
    """The backend got the h2c request as a plain one, its body included, then the second."""
    assert rec.paths() == ["/first", "/second"], rec
    assert rec.requests[0].body == body
    names = {name.lower() for name, _ in rec.requests[0].headers}
    assert not names & {b"upgrade", b"http2-settings", b"connection"}, rec.requests[0].headers


BODIES = {
    "content-length": (b"Content-Length: 7\r\n", b"hello=1"),
    "chunked": (b"Transfer-Encoding: chunked\r\n",
                b"3\r\nhel\r\n4\r\nlo=1\r\n0\r\n\r\n"),
}


@pytest.mark.parametrize("framing,body", BODIES.values(), ids=BODIES.keys())
async def test_h2c_upgrade_with_body_is_served_as_a_plain_request(
        proxy: Edge, framing: bytes, body: bytes) -> None:
    # curl --http2 -d ... on http://: llhttp takes what follows an Upgrade head for the new
    # protocol; the body must still reach the backend, and the next request stay a request.
    res = await proxy.send(b"POST /first HTTP/1.1\r\nHost: example.com\r\n" + H2C + framing +
                           b"\r\n" + body + SECOND)
    responses = parse_responses(res.data)
    assert [r.status for r in responses] == [200, 200], res
    assert json.loads(responses[0].body)["body"] == "hello=1"
    assert_plain_h2c_request(proxy.rec, b"hello=1")


async def test_h2c_upgrade_without_body_is_served_as_a_plain_request(proxy: Edge) -> None:
    res = await proxy.send(b"GET /first HTTP/1.1\r\nHost: example.com\r\n" + H2C + b"\r\n" +
                           SECOND)
    assert [r.status for r in parse_responses(res.data)] == [200, 200], res
    assert_plain_h2c_request(proxy.rec, b"")


async def test_h2c_upgrade_with_body_and_connection_close(proxy: Edge) -> None:
    res = await proxy.send(b"POST /first HTTP/1.1\r\nHost: example.com\r\n"
                           b"Connection: close, Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                           b"Content-Length: 7\r\n\r\nhello=1")
    assert res.closed, res
    assert_ok(res, proxy.rec, b"hello=1", path="/first")


@pytest.mark.parametrize("framing,body", BODIES.values(), ids=BODIES.keys())
async def test_any_upgrade_with_body_is_served_as_a_plain_request(
        proxy: Edge, framing: bytes, body: bytes) -> None:
    # a WebSocket handshake has no body; one that does would lose it to the tunnel
    res = await proxy.send(b"POST /first HTTP/1.1\r\nHost: example.com\r\n"
                           b"Connection: Upgrade\r\nUpgrade: foo\r\n" + framing + b"\r\n" +
                           body + SECOND)
    responses = parse_responses(res.data)
    assert [r.status for r in responses] == [200, 200], res
    assert json.loads(responses[0].body)["body"] == "hello=1"
    assert_plain_h2c_request(proxy.rec, b"hello=1")


# -- TRACE and Max-Forwards --------------------------------------------------------------------

async def test_trace_is_refused_with_405(proxy: Edge) -> None:
    res = await proxy.send(b"TRACE / HTTP/1.1\r\nHost: example.com\r\nCookie: s=1\r\n\r\n")
    assert_rejected(res, 405, proxy.rec)
    assert parse_responses(res.data)[0].header("Allow") == \
        b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


async def test_options_with_max_forwards_zero_is_answered_by_lbcdn(proxy: Edge) -> None:
    res = await proxy.send(b"OPTIONS /x HTTP/1.1\r\nHost: example.com\r\nMax-Forwards: 0\r\n"
                           b"Connection: close\r\n\r\n")
    [resp] = parse_responses(res.data)
    assert resp.status == 200, res
    assert resp.header("Allow") == b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    assert proxy.rec.bytes_received == 0


async def test_options_max_forwards_is_decremented(proxy: Edge) -> None:
    res = await proxy.send(b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\nMax-Forwards: 3\r\n"
                           b"Connection: close\r\n\r\n")
    assert [r.status for r in parse_responses(res.data)] == [200], res
    [seen] = proxy.rec.requests
    assert (b"Max-Forwards", b"2") in seen.headers, seen.headers


# -- pipelining --------------------------------------------------------------------------------

async def test_three_pipelined_requests_are_answered_in_order() -> None:
    async with demo_backend() as bport:
        config = edge_config(bport)
        async with running_daemon(config):
            port = int(config["listeners"][0]["port"])
            data = (b"GET /delay/150 HTTP/1.1\r\nHost: a\r\n\r\n"
                    b"GET /b?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"
                    b"GET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            res = await raw_request(port, data)
    assert res.closed
    responses = parse_responses(res.data)
    assert [r.status for r in responses] == [200, 200, 200], res
    assert [json.loads(r.body)["path"] for r in responses] == ["/delay/150", "/b", "/c"]


async def test_valid_then_malformed_pipelined(proxy: Edge) -> None:
    data = (b"GET /ok HTTP/1.1\r\nHost: example.com\r\n\r\n"
            b"GET /bad HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1\r\n"
            b"Content-Length: 2\r\n\r\n"
            b"GET /never HTTP/1.1\r\nHost: example.com\r\n\r\n")
    res = await proxy.send(data)
    assert res.closed, res
    responses = parse_responses(res.data)
    assert [r.status for r in responses] == [200, 400], res
    assert json.loads(responses[0].body)["path"] == "/ok"
    assert responses[1].header("Connection") == b"close"
    assert proxy.rec.paths() == ["/ok"]


# -- timeouts ------------------------------------------------------------------------------------

async def test_half_a_head_gets_408_after_header_timeout() -> None:
    async with edge(listener={"header_timeout_s": 0.5}) as e:
        res = await e.send(b"GET / HTTP/1.1\r\nHost: exa", timeout_s=4.0)
        assert_rejected(res, 408, e.rec)
        assert 0.4 <= res.elapsed_s < 2.5, res


async def test_trickled_head_is_not_given_more_time() -> None:
    async with edge(listener={"header_timeout_s": 0.5}) as e:
        reader, writer = await asyncio.open_connection(HOST, e.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        data = b""
        try:
            async with asyncio.timeout(4.0):
                for i in range(30):
                    writer.write(b"X-%d: v\r\n" % i if i else b"GET / HTTP/1.1\r\n")
                    await asyncio.sleep(0.1)
                    if reader.at_eof() or reader._buffer:  # type: ignore[attr-defined]
                        break
                while chunk := await reader.read(65536):
                    data += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            writer.close()
        elapsed = loop.time() - started
        assert data.startswith(b"HTTP/1.1 408 "), data
        assert elapsed < 2.0
        assert e.rec.bytes_received == 0


async def test_idle_keep_alive_connection_closes_silently() -> None:
    async with edge(listener={"idle_timeout_s": 0.5}) as e:
        reader, writer = await asyncio.open_connection(HOST, e.port)
        try:
            writer.write(b"GET /one HTTP/1.1\r\nHost: example.com\r\n\r\n")
            async with asyncio.timeout(4.0):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                started = asyncio.get_running_loop().time()
                rest = await reader.read()  # EOF when the server closes
            elapsed = asyncio.get_running_loop().time() - started
        finally:
            writer.close()
        assert head.startswith(b"HTTP/1.1 200 ")
        assert rest == b""
        assert 0.3 <= elapsed < 2.5


async def test_connection_without_any_request_closes_silently_after_idle_timeout() -> None:
    async with edge(listener={"idle_timeout_s": 0.5}) as e:
        res = await e.send(b"", timeout_s=4.0)
        assert res.closed and res.data == b"", res
        assert 0.3 <= res.elapsed_s < 2.5
