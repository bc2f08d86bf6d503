"""Strict framing of backend responses, through the daemon, with a scripted raw backend.

The backend answers each request with bytes the test chose. A malformed response must never
reach the client as-is: 502 when nothing was sent yet, otherwise the client connection is cut so
the client cannot mistake it for a complete response. And the backend connection that carried it
must never be used again: the next request must arrive on a new backend connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.harness import (HOST, IncompleteResponse, ParsedResponse, RawResult, free_port,
                               parse_responses, raw_backend, raw_request, read_request,
                               running_daemon)

GOOD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\ngood"
HANG = b"<hang>"


@dataclass
class Step:
    """What the backend does for one request: write `data`, then close if `close`."""
    data: bytes
    close: bool = False


@dataclass
class Script:
    steps: list[Step]
    connections: int = 0
    # (connection index, request line) of every request the backend read
    requests: list[tuple[int, str]] = field(default_factory=list)

    def connection_of_each_request(self) -> list[int]:
        return [c for c, _ in self.requests]


@contextlib.asynccontextmanager
async def scripted_backend(*steps: Step | bytes) -> AsyncIterator[tuple[int, Script]]:
    """Request n (counted over all connections) gets steps[n]; the last step repeats."""
    script = Script([s if isinstance(s, Step) else Step(s) for s in steps])

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = script.connections
        script.connections += 1
        while True:
            line, _, _ = await read_request(reader, timeout_s=30)
            n = len(script.requests)
            script.requests.append((index, line))
            step = script.steps[min(n, len(script.steps) - 1)]
            if step.data == HANG:
                await asyncio.sleep(30)
                return
            writer.write(step.data)
            await writer.drain()
            if step.close:
                return

    async with raw_backend(handler) as port:
        yield port, script


def upstream_config(backend_port: int, **pool: Any) -> dict[str, Any]:
    return {
        "listeners": [{"name": "web", "address": HOST, "port": free_port()}],
        # no active health checks: these tests count the requests the backend sees
        "pools": {"app": {"targets": [f"{HOST}:{backend_port}"],
                          "health": {"enabled": False}, **pool}},
        "default_route": {"forward": "app"},
        "admin": {"port": 0},
        "logging": {"level": "error", "access_log": {"enabled": False}},
        "shutdown": {"drain_timeout_s": 1},
    }


@contextlib.asynccontextmanager
async def proxy_to(*steps: Step | bytes, **pool: Any) -> AsyncIterator[tuple[int, Script]]:
    async with scripted_backend(*steps) as (bport, script):
        config = upstream_config(bport, **pool)
        async with running_daemon(config):
            yield int(config["listeners"][0]["port"]), script


def request(path: bytes = b"/", method: bytes = b"GET", version: bytes = b"HTTP/1.1",
            close: bool = True) -> bytes:
    return (method + b" " + path + b" " + version + b"\r\nHost: example.com\r\n" +
            (b"Connection: close\r\n" if close else b"") + b"\r\n")


def assert_502(res: RawResult, leaked: bytes = b"") -> ParsedResponse:
    responses = parse_responses(res.data)
    assert [r.status for r in responses] == [502], res
    if leaked:
        assert leaked not in res.data, res
    assert b"lbcdn" in responses[0].body
    return responses[0]


def assert_cut_off(res: RawResult) -> None:
    """The response must not look complete: either a clean 502, or a connection closed in
    the middle of a framed response (never a read-until-close body the client would take as
    whole)."""
    assert res.closed, res
    assert res.data, "closed without a byte of response: nothing had been sent, so a 502 was due"
    try:
        responses = parse_responses(res.data)
    except IncompleteResponse:
        return  # cut off inside a Content-Length or chunked body: the client can tell
    assert [r.status for r in responses] == [502], f"looks like a complete response: {res!r}"


async def assert_next_request_uses_new_connection(port: int, script: Script) -> None:
    res = await raw_request(port, request(b"/next"))
    responses = parse_responses(res.data)
    assert [r.status for r in responses] == [200], res
    assert responses[0].body == b"good"
    assert script.connections == 2, script
    assert script.connection_of_each_request() == [0, 1], script


# -- malformed heads: 502, nothing of the response leaks, the connection is not reused -----------

BAD_HEADS = {
    "status-four-digits": b"HTTP/1.1 2000 OK\r\nContent-Length: 4\r\n\r\nLEAK",
    "status-missing": b"HTTP/1.1 OK\r\nContent-Length: 4\r\n\r\nLEAK",
    "status-below-100": b"HTTP/1.1 099 Low\r\nContent-Length: 4\r\n\r\nLEAK",
    "status-letters": b"HTTP/1.1 2x0 OK\r\nContent-Length: 4\r\n\r\nLEAK",
    "not-http": b"ICY 200 OK\r\nContent-Length: 4\r\n\r\nLEAK",
    "garbage": b"LEAK LEAK LEAK\r\n\r\n",
    "version-garbage": b"HTTP/1.x 200 OK\r\nContent-Length: 4\r\n\r\nLEAK",
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"4\r\nLEAK\r\n0\r\n\r\n",
    "cl-duplicate-different": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n"
                              b"\r\nLEAK!",
    "cl-duplicate-same": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 4\r\n"
                         b"\r\nLEAK",
    "cl-plus": b"HTTP/1.1 200 OK\r\nContent-Length: +4\r\n\r\nLEAK",
    "cl-hex": b"HTTP/1.1 200 OK\r\nContent-Length: 0x4\r\n\r\nLEAK",
    "cl-list": b"HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\nLEAK",
    "te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nLEAK",
    "te-gzip-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                       b"4\r\nLEAK\r\n0\r\n\r\n",
    "te-chunked-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"
                          b"4\r\nLEAK\r\n0\r\n\r\n",
    "te-two-headers": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n4\r\nLEAK\r\n0\r\n\r\n",
    "nul-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 4\r\n\r\nLEAK",
    "cr-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 4\r\n\r\nLEAK",
    "bare-lf-lines": b"HTTP/1.1 200 OK\nX-A: a\nContent-Length: 4\n\nLEAK",
    "bare-lf-in-header": b"HTTP/1.1 200 OK\r\nX-A: a\nX-B: b\r\nContent-Length: 4\r\n\r\nLEAK",
    "no-colon": b"HTTP/1.1 200 OK\r\nX-A a\r\nContent-Length: 4\r\n\r\nLEAK",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 4\r\n\r\nLEAK",
}


@pytest.mark.parametrize("bad", BAD_HEADS.values(), ids=BAD_HEADS.keys())
async def test_malformed_response_head_is_502_and_not_reused(bad: bytes) -> None:
    async with proxy_to(bad, GOOD) as (port, script):
        res = await raw_request(port, request(b"/first"))
        assert_502(res, leaked=b"LEAK")
        await assert_next_request_uses_new_connection(port, script)


async def test_obs_fold_in_response_is_502_or_unfolded() -> None:
    # RFC 9112 5.2: a proxy MUST either answer 502 or replace each obs-fold with SP.
    bad = b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 4\r\n\r\ngood"
    async with proxy_to(bad, GOOD) as (port, script):
        res = await raw_request(port, request(b"/first"))
        responses = parse_responses(res.data)
        assert len(responses) == 1, res
        head = responses[0].raw_head
        assert b"\r\n " not in head and b"\r\n\t" not in head, res
        if responses[0].status == 200:
            assert responses[0].header("X-Folded") in (b"a b", b"a  b"), res
            assert responses[0].body == b"good"
        else:
            assert responses[0].status == 502, res
            await assert_next_request_uses_new_connection(port, script)


# -- malformed or truncated bodies: cut off, never passed as complete ----------------------------

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
BAD_BODIES = {
    "chunk-size-not-hex": Step(CHUNKED_HEAD + b"zz\r\nLEAK\r\n0\r\n\r\n"),
    "chunk-size-hex-prefix": Step(CHUNKED_HEAD + b"0x4\r\nLEAK\r\n0\r\n\r\n"),
    "chunk-size-minus": Step(CHUNKED_HEAD + b"-4\r\nLEAK\r\n0\r\n\r\n"),
    "chunk-size-overflow": Step(CHUNKED_HEAD + b"ffffffffffffffffff\r\nLEAK\r\n0\r\n\r\n"),
    "chunk-size-overflow-after-zeros": Step(CHUNKED_HEAD + b"0000ffffffffffffffffff\r\nLEAK\r\n"
                                            b"0\r\n\r\n"),
    "chunk-data-too-long": Step(CHUNKED_HEAD + b"2\r\nLEAK\r\n0\r\n\r\n"),
    "chunk-size-bare-lf": Step(CHUNKED_HEAD + b"4\nLEAK\r\n0\r\n\r\n"),
    "chunked-truncated": Step(CHUNKED_HEAD + b"4\r\nLEAK\r\n", close=True),
    "chunked-truncated-in-data": Step(CHUNKED_HEAD + b"10\r\nLEAK", close=True),
    "length-truncated": Step(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
                             close=True),
}


@pytest.mark.parametrize("step", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_bad_or_truncated_body_is_cut_off_and_not_reused(step: Step) -> None:
    async with proxy_to(step, GOOD) as (port, script):
        res = await raw_request(port, request(b"/first"))
        assert_cut_off(res)
        await assert_next_request_uses_new_connection(port, script)


async def test_truncated_length_body_on_keep_alive_client_is_cut_off() -> None:
    # the client asked for keep-alive: the only honest signal left is closing its connection
    step = Step(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", close=True)
    async with proxy_to(step, GOOD) as (port, script):
        res = await raw_request(port, request(b"/first", close=False), read_timeout_s=3)
        assert res.closed, res
        with pytest.raises(IncompleteResponse):
            parse_responses(res.data)
        assert res.data.startswith(b"HTTP/1.1 200 "), res
        await assert_next_request_uses_new_connection(port, script)


async def test_bytes_after_a_complete_response_are_not_read_as_the_next_one() -> None:
    # A backend that sends more than it framed must not get to answer the next request with
    # the leftovers (response splitting through the pool).
    extra = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngoodHTTP/1.1 200 OK\r\n" \
            b"Content-Length: 4\r\n\r\nEVIL"
    async with proxy_to(extra, GOOD) as (port, script):
        res = await raw_request(port, request(b"/first"))
        responses = parse_responses(res.data)
        assert [(r.status, r.body) for r in responses] == [(200, b"good")], res
        await assert_next_request_uses_new_connection(port, script)


async def test_backend_closing_without_answer_on_fresh_connection_is_502() -> None:
    async with proxy_to(Step(b"", close=True), GOOD) as (port, script):
        res = await raw_request(port, request(b"/first"))
        assert_502(res)
        await assert_next_request_uses_new_connection(port, script)


async def test_chunk_lines_rfc9112_allows_pass() -> None:
    # RFC 9112 7.1.1: BWS before chunk-ext's ";" and around its "="; chunk sizes are 1*HEXDIG
    chunked = (CHUNKED_HEAD + b"2 ;foo = bar\r\nok\r\n" + b"0" * 20 + b"2\r\n!!\r\n"
               b"0\r\n\r\n")
    async with proxy_to(chunked, GOOD) as (port, script):
        res = await raw_request(port, request(b"/a", close=False) + request(b"/b"))
        responses = parse_responses(res.data)
        assert [(r.status, r.body) for r in responses] == [(200, b"ok!!"), (200, b"good")], res
        assert script.connection_of_each_request() == [0, 0], script


# -- timeouts and refused connections ------------------------------------------------------------

async def test_backend_that_never_answers_is_504_after_response_timeout() -> None:
    async with proxy_to(HANG, GOOD, response_timeout_s=0.5) as (port, script):
        res = await raw_request(port, request(b"/first"), read_timeout_s=4)
        responses = parse_responses(res.data)
        assert [r.status for r in responses] == [504], res
        assert 0.4 <= res.elapsed_s < 2.5, res
        await assert_next_request_uses_new_connection(port, script)


async def test_backend_that_stalls_mid_body_is_cut_off_after_response_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()
        await asyncio.sleep(30)

    async with raw_backend(handler) as bport:
        config = upstream_config(bport, response_timeout_s=0.5)
        async with running_daemon(config):
            res = await raw_request(int(config["listeners"][0]["port"]),
                                    request(b"/first", close=False), read_timeout_s=4)
    assert res.closed, res
    assert res.data.startswith(b"HTTP/1.1 200 "), res
    with pytest.raises(IncompleteResponse):
        parse_responses(res.data)
    assert 0.4 <= res.elapsed_s < 2.5, res


async def test_refused_port_is_502() -> None:
    config = upstream_config(free_port())
    async with running_daemon(config):
        res = await raw_request(int(config["listeners"][0]["port"]), request())
    assert_502(res)
    assert res.closed


async def test_refused_port_keeps_the_client_connection() -> None:
    # the request was read in full, so the client connection can carry the next one (as ELB)
    config = upstream_config(free_port())
    async with running_daemon(config):
        res = await raw_request(int(config["listeners"][0]["port"]),
                                request(b"/a", close=False) + request(b"/b"))
    assert [r.status for r in parse_responses(res.data)] == [502, 502], res
    assert res.closed


# -- bodiless responses and interim responses ------------------------------------------------------

async def test_head_response_with_length_and_no_body_reuses_the_connection() -> None:
    head_resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
    async with proxy_to(head_resp, GOOD) as (port, script):
        res = await raw_request(port, request(b"/h", b"HEAD", close=False) + request(b"/g"))
        responses = parse_responses(res.data, head_requests={0})
        assert [r.status for r in responses] == [200, 200], res
        assert responses[0].header("Content-Length") == b"5"
        assert responses[0].header("Transfer-Encoding") is None
        assert responses[0].body == b""
        assert responses[1].body == b"good"
        assert script.requests == [(0, "HEAD /h HTTP/1.1"), (0, "GET /g HTTP/1.1")], script
        assert script.connections == 1


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_status_passes_without_body_and_reuses_the_connection(
        status: int) -> None:
    # RFC 9110 8.6: a 304's Content-Length is the selected representation's (kept); a 204 has
    # none (dropped)
    first = b"HTTP/1.1 %d X\r\nETag: \"v1\"\r\nContent-Length: 100\r\n\r\n" % status
    async with proxy_to(first, GOOD) as (port, script):
        res = await raw_request(port, request(b"/a", close=False) + request(b"/b"))
        responses = parse_responses(res.data)
        assert [r.status for r in responses] == [status, 200], res
        assert responses[0].body == b""
        assert responses[0].header("Transfer-Encoding") is None, res
        assert responses[0].header("Content-Length") == (None if status == 204 else b"100"), res
        assert responses[1].body == b"good"
        assert script.connection_of_each_request() == [0, 0], script


@pytest.mark.parametrize("line, ours", [
    (b"HTTP/1.1 200", b"HTTP/1.1 200 OK"),
    (b"HTTP/1.1 200 ", b"HTTP/1.1 200 OK"),
    (b"HTTP/1.1 413", b"HTTP/1.1 413 Content Too Large"),  # RFC 9110's name, not RFC 7231's
    (b"HTTP/1.1 599", b"HTTP/1.1 599 "),                   # unregistered: no made-up reason
], ids=["no-sp", "sp", "413", "unregistered"])
async def test_status_line_without_reason_gets_the_standard_one(line: bytes, ours: bytes
                                                                ) -> None:
    # RFC 9112 4: the reason phrase may be empty (and real servers leave out the SP before it)
    async with proxy_to(line + b"\r\nContent-Length: 2\r\n\r\nok", GOOD) as (port, script):
        res = await raw_request(port, request(b"/a", close=False) + request(b"/b"))
        assert res.data.startswith(ours + b"\r\n"), res
        responses = parse_responses(res.data)
        assert [(r.status, r.body) for r in responses] == [(int(line[9:]), b"ok"),
                                                           (200, b"good")], res
        assert script.connection_of_each_request() == [0, 0], script


CONNECTION_NAMES = {
    "content-length": b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 2\r\n"
                      b"\r\nok",
    "transfer-encoding": b"HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "date": b"HTTP/1.1 200 OK\r\nConnection: Date\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
            b"Content-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("first", CONNECTION_NAMES.values(), ids=CONNECTION_NAMES.keys())
async def test_headers_named_in_connection_leave_the_response_framed_and_dated(
        first: bytes) -> None:
    # RFC 9110 7.6.1 drops what Connection names, but not the framing (RFC 9112 6.3) and not
    # the Date a response must carry (RFC 9110 6.6.1)
    async with proxy_to(first, GOOD) as (port, script):
        res = await raw_request(port, request(b"/a", close=False) + request(b"/b"))
        responses = parse_responses(res.data)
        assert [(r.status, r.body) for r in responses] == [(200, b"ok"), (200, b"good")], res
        assert len(responses[0].header_list("Date")) == 1, res
        assert responses[0].header("Date") != b"Sun, 06 Nov 1994 08:49:37 GMT", res
        assert script.connection_of_each_request() == [0, 0], script


async def test_body_sent_after_a_204_head_is_not_forwarded_and_not_reused() -> None:
    async with proxy_to(b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\nLEAK", GOOD) \
            as (port, script):
        res = await raw_request(port, request(b"/first"))
        responses = parse_responses(res.data)
        assert [(r.status, r.body) for r in responses] == [(204, b"")], res
        assert responses[0].header("Content-Length") is None and b"LEAK" not in res.data, res
        await assert_next_request_uses_new_connection(port, script)


INTERIM = (b"HTTP/1.1 100 Continue\r\n\r\n"
           b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + GOOD)


async def test_interim_responses_pass_through_to_http11_client() -> None:
    async with proxy_to(INTERIM) as (port, script):
        res = await raw_request(port, request())
        responses = parse_responses(res.data)
        assert [r.status for r in responses] == [100, 103, 200], res
        assert responses[1].header("Link") == b"</style.css>; rel=preload"
        assert responses[2].body == b"good"


async def test_interim_responses_are_not_sent_to_http10_client() -> None:
    # RFC 9110 15.2: a server MUST NOT send a 1xx response to an HTTP/1.0 client.
    async with proxy_to(INTERIM) as (port, script):
        res = await raw_request(port, request(version=b"HTTP/1.0", close=False))
        responses = parse_responses(res.data)
        assert [r.status for r in responses] == [200], res
        assert responses[0].body == b"good"
        assert res.closed
