"""The response API (lbcdn.edge.stream.ClientStream) knows no wire protocol.

A stand-in for an adapter of another protocol (an HTTP/2 stream, say) implements ClientStream
by recording what it is handed: heads as objects (status, fields, length), bodies as bytes.
Real exchanges of a running daemon write through it (a proxied chunked response, a cache miss
filled from a chunked origin, a cache hit, lbcdn's own answers), and what reaches it carries no
HTTP/1.1: no status line, no framing or connection fields, no chunk encoding."""

from __future__ import annotations

import asyncio
from typing import Any

from lbcdn.edge.exchange import Exchange
from lbcdn.edge.listener import Listener
from lbcdn.edge.stream import ClientStream
from lbcdn.http.head import Head, check_request
from tests.e2e.harness import HOST, proxy_config, raw_backend, read_request, running_daemon

# what only HTTP/1.1 (or the adapter) has: none of it may reach another protocol's adapter
HTTP1_FIELDS = {b"content-length", b"transfer-encoding", b"connection", b"keep-alive"}


class RecordingStream(ClientStream):
    """A ClientStream that parses nothing: it records what the exchange hands it."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.client_ip = HOST
        self.client_ip_bytes = HOST.encode()
        self.client_port = 40000
        self.draining = False
        self.protocol = ""  # the access log then says the request head's version
        self.events: list[tuple[Any, ...]] = []
        self.sent = 0
        self.done = asyncio.Event()

    def _head(self, kind: str, head: Head, body: bool) -> None:
        self.events.append((kind, head.status, head.fields(), head.length, body))

    def start_response(self, head: Head, body: bool, keep_alive: bool) -> bool:
        self._head("head", head, body)
        return keep_alive

    def interim(self, head: Head) -> None:
        self._head("interim", head, False)

    def send_body(self, data: bytes) -> None:
        self.sent += len(data)
        self.events.append(("body", data))

    def send_body_parts(self, parts: list[bytes]) -> None:
        for data in parts:
            self.send_body(data)

    def send_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.events.append(("trailers", fields))

    def end_response(self) -> None:
        self.events.append(("end_response",))

    def respond(self, head: Head, body: tuple[bytes, ...], keep_alive: bool) -> bool:
        self.start_response(head, bool(body), keep_alive)
        self.send_body_parts(list(body))
        self.end_response()
        return keep_alive

    def response_bytes(self) -> int:
        return self.sent

    def checkpoint(self) -> tuple[list[bytes], int] | None:
        return None

    def take_back(self, mark: tuple[list[bytes], int] | None) -> bool:
        return False

    def end(self, keep_alive: bool) -> None:
        self.events.append(("end", keep_alive))
        self.done.set()

    def close(self) -> None:
        self.events.append(("close",))

    def abort(self) -> None:
        self.events.append(("abort",))
        self.done.set()

    def is_closed(self) -> bool:
        return False

    def pause(self, reason: int) -> None:
        pass

    def resume(self, reason: int) -> None:
        pass

    def body_buffered(self, size: int) -> None:
        pass

    def body_unbuffered(self, size: int) -> None:
        pass

    def request_stopped(self, ex: object) -> bool:
        return True

    def become_tunnel(self, ex: object) -> None:
        raise AssertionError("no upgrade here")

    def tunnel_active(self) -> None:
        raise AssertionError("no upgrade here")

    # -- what the test reads --------------------------------------------------------------
    def head(self) -> tuple[int, dict[bytes, bytes], int | None, bool]:
        heads = [e for e in self.events if e[0] == "head"]
        assert len(heads) == 1, self.events
        _, status, fields, length, body = heads[0]
        return status, {n.lower(): v for n, v in fields}, length, body

    def body(self) -> bytes:
        return b"".join(e[1] for e in self.events if e[0] == "body")


async def through(listener: Listener, method: bytes, target: bytes) -> RecordingStream:
    """One request through a real Exchange of `listener`, answered into a RecordingStream."""
    stream = RecordingStream(listener)
    head = check_request(method, target, b"1.1", [(b"Host", b"a")], True, False,
                         listener.header_kinds)
    Exchange(stream, head, asyncio.get_running_loop().time()).start()
    await asyncio.wait_for(stream.done.wait(), 5)
    assert_no_http1(stream)
    return stream


def assert_no_http1(stream: RecordingStream) -> None:
    for event in stream.events:
        if event[0] in ("head", "interim"):
            for name, value in event[2]:
                assert name.lower() not in HTTP1_FIELDS, event
                assert b"\r" not in name + value and b"\n" not in name + value, event
                assert not name.startswith(b"HTTP/"), event
        elif event[0] == "body":
            assert not event[1].startswith(b"HTTP/"), event


async def chunked_origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Every answer chunked, cacheable for a minute."""
    while True:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nX-Origin: o\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        await writer.drain()


async def test_exchanges_hand_a_stream_head_objects_and_unframed_body_bytes() -> None:
    async with raw_backend(chunked_origin) as port:
        config = proxy_config(port, routes=[
            {"name": "cdn", "cache": "site", "match": {"path_prefix": "/c/"}},
            {"name": "fixed", "match": {"path_prefix": "/fixed"},
             "fixed_response": {"status": 200, "content_type": "text/plain", "body": "ok"}},
        ], cache={
            "policies": {"default": {}},
            "origins": {"o": {"url": f"http://{HOST}:{port}"}},
            "distributions": {"site": {"default_behavior": {"path_pattern": "*",
                                                            "origin": "o"}}},
        })
        async with running_daemon(config) as daemon:
            listener = daemon.listeners[0]

            # proxied: the backend's chunks arrive as their bytes; the length is unknown
            proxied = await through(listener, b"GET", b"/p")
            status, fields, length, body = proxied.head()
            assert (status, length, body) == (200, None, True)
            assert fields[b"x-origin"] == b"o" and b"date" in fields
            assert proxied.body() == b"hello world"
            assert proxied.events[-2:] == [("end_response",), ("end", True)]

            # a miss, written as the fill grows: unknown length, unframed bytes
            miss = await through(listener, b"GET", b"/c/x")
            status, fields, length, body = miss.head()
            assert (status, length, body) == (200, None, True)
            assert fields[b"x-cache"].startswith(b"Miss")
            assert miss.body() == b"hello world"

            # the hit: the stored entry's fields and its length, the body as it is
            hit = await through(listener, b"GET", b"/c/x")
            status, fields, length, body = hit.head()
            assert (status, length, body) == (200, 11, True)
            assert fields[b"x-cache"] == b"Hit from lbcdn" and b"age" in fields
            assert fields[b"x-origin"] == b"o"
            assert hit.body() == b"hello world"

            # HEAD of the hit: the length, no body
            head = await through(listener, b"HEAD", b"/c/x")
            assert head.head()[2:] == (11, False) and head.body() == b""

            # lbcdn's own answers: a fixed response and an error
            fixed = await through(listener, b"GET", b"/fixed")
            assert fixed.head()[0] == 200 and fixed.body() == b"ok"
            error = await through(listener, b"DELETE", b"/c/x")
            assert error.head()[0] == 405 and b"allow" in error.head()[1]
