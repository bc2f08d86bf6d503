"""The client connection (lbcdn.edge.connection).

As a protocol object, in uvicorn's style: bytes fed to `data_received` over a fake transport,
time moved by a fake clock, so timeouts (header, body, idle, a client that stops reading) and
flow control (pause/resume reading for several reasons at once) are checked exactly, without
sockets or sleeps. Through real sockets: the known heads, where a head repeated byte for byte on
a keep-alive connection is taken from the listener's table instead of being parsed again, and
only heads that parsed cleanly, alone and without a body are remembered."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from lbcdn.config.load import load_config_text
from lbcdn.configkit.limits import HttpLimitsConfig
from lbcdn.daemon import Daemon
from lbcdn.edge.connection import MAX_BUFFERED_BODY, ClientConnection
from lbcdn.edge.exchange import Exchange
from lbcdn.edge.listener import Listener
from lbcdn.edge.stream import PAUSE_BODY, PAUSE_UPSTREAM
from lbcdn.http.head import Head, check_request
from lbcdn.http.headguard import HeadGuard
from lbcdn.logs import AccessLog
from lbcdn.routing import Router
from tests.e2e.harness import (listener_port, proxy_config, raw_backend, raw_client,
                               read_request, running_daemon)

HEAD = b"GET /k?x=1 HTTP/1.1\r\nHost: test.local\r\nUser-Agent: t\r\n\r\n"


async def _echo_ids(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A backend answering every request with the request id and target it received."""
    while True:
        line, headers, _ = await read_request(reader)
        rid = next(v for n, v in headers if n.lower() == "x-request-id")
        body = f"{line.split()[1]} {rid}".encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()


def known(daemon: Daemon) -> dict[bytes, Any]:
    return daemon.listeners[0].known_heads


@contextlib.asynccontextmanager
async def echo_proxy() -> AsyncIterator[tuple[Daemon, int]]:
    """A daemon proxying to `_echo_ids`; yields it and its listener's port."""
    async with raw_backend(_echo_ids) as backend:
        config = proxy_config(backend)
        async with running_daemon(config) as daemon:
            yield daemon, listener_port(config)


async def test_a_repeated_head_is_remembered_and_answered_like_the_first() -> None:
    async with echo_proxy() as (daemon, port):
        async with raw_client(port) as c:
            answers = []
            for _ in range(3):
                await c.send(HEAD)
                answers.append(await c.response())
        assert list(known(daemon)) == [HEAD]
        assert known(daemon)[HEAD].head.target == b"/k?x=1"
        bodies = [r.body.split() for r in answers]
        assert all(r.status == 200 for r in answers)
        assert [b[0] for b in bodies] == [b"/k?x=1"] * 3
        ids = {b[1] for b in bodies}
        assert len(ids) == 3, "every request gets its own request id"


async def test_heads_with_bodies_pipelined_or_rejected_are_not_remembered() -> None:
    async with echo_proxy() as (daemon, port):
        async with raw_client(port) as c:
            post = b"POST /p HTTP/1.1\r\nHost: test.local\r\nContent-Length: 2\r\n\r\n"
            await c.send(post)  # the head alone in one read, its body in the next
            await asyncio.sleep(0.05)
            await c.send(b"ab")
            assert (await c.response()).status == 200
            await c.send(HEAD + HEAD)  # two requests in one read
            assert (await c.response()).status == 200
            assert (await c.response()).status == 200
        bad = b"GET /b HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
        for _ in range(2):  # rejected every time: a refused head is never remembered
            async with raw_client(port) as c:
                await c.send(bad)
                assert (await c.response()).status == 400
        assert known(daemon) == {}


async def test_a_reload_forgets_the_known_heads() -> None:
    async with echo_proxy() as (daemon, port):
        async with raw_client(port) as c:
            await c.send(HEAD)
            assert (await c.response()).status == 200
            assert HEAD in known(daemon)
            listener = daemon.listeners[0]
            listener.update(listener.config, listener.router, listener.pools,
                            listener.access_log, listener.max_connections)
            assert known(daemon) == {}
            await c.send(HEAD)
            assert (await c.response()).status == 200


# -- the protocol object over a fake transport and clock ------------------------------------
HEADER_S, BODY_S, IDLE_S = 5.0, 7.0, 30.0
CONFIG = f"""
listeners:
  - name: web
    address: 127.0.0.1
    port: 18080
    header_timeout_s: {HEADER_S}
    body_timeout_s: {BODY_S}
    idle_timeout_s: {IDLE_S}
default_route:
  fixed_response: {{status: 200, content_type: text/plain, body: "ok"}}
logging: {{access_log: {{enabled: false}}}}
"""
GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


class Timer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Clock:
    """The loop as a Deadline sees it: time() and call_at(), on a clock moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[Timer] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while True:
            due = [t for t in self.timers if not t.cancelled and t.when <= self.now]
            if not due:
                return
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            timer.callback()


class Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.reading = True
        self.pauses = 0
        self.closed = False
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.out.append(b"".join(parts))

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def can_write_eof(self) -> bool:
        return True

    def take(self) -> bytes:
        data, self.out = b"".join(self.out), []
        return data


class Client:
    def __init__(self, listener: Listener, clock: Clock) -> None:
        self.clock = clock
        self.transport = Transport()
        self.conn = ClientConnection(listener)
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]

    def send(self, data: bytes) -> None:
        self.conn.data_received(data)


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    config = load_config_text(CONFIG)
    yield Listener(config.listeners[0], Router(config.routes, config.default_route), {},
                   AccessLog(config.logging.access_log.enabled, config.logging.access_log.path),
                   max_connections=100)


@pytest.fixture
def client(listener: Listener) -> Client:
    clock = Clock()
    listener.loop = clock  # type: ignore[assignment]
    return Client(listener, clock)


def status_lines(data: bytes) -> list[bytes]:
    """The status lines of the responses in `data` (a body may end right before one)."""
    return [b"HTTP/1.1 " + part.split(b"\r\n", 1)[0] for part in data.split(b"HTTP/1.1 ")[1:]]


async def test_requests_are_answered_and_the_idle_timeout_closes(client: Client) -> None:
    client.send(GET + GET)
    assert status_lines(client.transport.take()) == [b"HTTP/1.1 200 OK"] * 2
    client.clock.advance(IDLE_S - 0.1)
    assert not client.transport.aborted
    client.send(GET)   # a request moves the idle deadline
    assert status_lines(client.transport.take()) == [b"HTTP/1.1 200 OK"]
    client.clock.advance(IDLE_S - 0.1)
    assert not client.transport.aborted
    client.clock.advance(0.2)
    assert client.transport.aborted and client.transport.take() == b""


async def test_a_trickled_head_gets_408_at_the_header_timeout(client: Client) -> None:
    client.send(b"GET / HTTP/1.1\r\n")
    for _ in range(4):   # bytes that trickle in do not move the header deadline
        client.clock.advance(HEADER_S / 5)
        client.send(b"X-A: 1\r\n")
    assert client.transport.take() == b""
    client.clock.advance(HEADER_S / 5 + 0.01)
    out = client.transport.take()
    assert status_lines(out) == [b"HTTP/1.1 408 Request Timeout"]
    assert b"timed out reading the request head" in out
    assert client.transport.closed


async def test_a_stalled_body_closes_at_the_body_timeout(client: Client) -> None:
    client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    # answered at once (a fixed response); the rest of the body is read and dropped
    assert status_lines(client.transport.take()) == [b"HTTP/1.1 200 OK"]
    client.clock.advance(BODY_S - 0.1)
    client.send(b"de")   # each read of the body moves its deadline
    client.clock.advance(BODY_S - 0.1)
    assert not client.transport.aborted
    client.clock.advance(0.2)
    assert client.transport.aborted


async def test_a_client_that_stops_reading_is_cut_at_the_idle_timeout(client: Client) -> None:
    client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
    client.conn.pause_writing()   # the client's window is full
    client.clock.advance(IDLE_S - 0.1)
    assert not client.transport.aborted
    client.clock.advance(0.2)
    assert client.transport.aborted


async def test_reading_resumes_only_when_every_reason_to_pause_is_gone(client: Client) -> None:
    conn, transport = client.conn, client.transport
    conn.pause(PAUSE_UPSTREAM)
    conn.pause(PAUSE_BODY)
    assert not transport.reading and transport.pauses == 1
    conn.resume(PAUSE_UPSTREAM)
    assert not transport.reading
    conn.resume(PAUSE_UPSTREAM)   # not a reason any more: nothing changes
    assert not transport.reading
    conn.resume(PAUSE_BODY)
    assert transport.reading


async def test_buffered_request_bodies_pause_reading_past_their_bound(client: Client) -> None:
    conn, transport = client.conn, client.transport
    conn.body_buffered(MAX_BUFFERED_BODY)
    assert transport.reading
    conn.body_buffered(1)
    assert not transport.reading
    conn.body_unbuffered(MAX_BUFFERED_BODY)
    assert not transport.reading   # one byte still waits for an upstream
    conn.body_unbuffered(1)
    assert transport.reading


async def test_no_deadline_runs_while_reading_is_paused(client: Client) -> None:
    client.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    client.transport.take()
    client.conn.pause(PAUSE_UPSTREAM)   # we stopped reading: the client is not slow
    client.clock.advance(BODY_S * 3)
    assert not client.transport.aborted
    client.conn.resume(PAUSE_UPSTREAM)  # reading again: the body deadline starts over
    client.clock.advance(BODY_S - 0.1)
    assert not client.transport.aborted
    client.clock.advance(0.2)
    assert client.transport.aborted


async def test_shutdown_closes_an_idle_connection_and_finishes_a_busy_one(
        listener: Listener) -> None:
    clock = Clock()
    listener.loop = clock  # type: ignore[assignment]
    idle, busy = Client(listener, clock), Client(listener, clock)
    busy.send(b"GET / HTTP/1.1\r\nHost: a\r\n")   # a head on its way
    idle.conn.drain()
    busy.conn.drain()
    assert idle.transport.closed and not busy.transport.closed
    busy.send(b"\r\n")
    out = busy.transport.take()
    assert status_lines(out) == [b"HTTP/1.1 200 OK"] and b"Connection: close" in out
    assert busy.transport.closed


# -- the response API: what the adapter makes of heads and body bytes ------------------------
def answering(client: Client, version: bytes = b"1.1",
              headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Make a request (not started) the one the connection answers."""
    conn = client.conn
    head = check_request(b"GET", b"/", version, [(b"Host", b"a")] + (headers or []),
                         True, False, conn.listener.header_kinds)
    conn.exchanges.append(Exchange(conn, head, 0.0))


def fields_head(length: int | None, status: int = 200) -> Head:
    return Head(status, b"", length, [(b"Server", b"t"), (b"X-A", b"1")])


async def test_a_head_with_a_length_goes_as_its_wire_form_and_the_body_as_it_is(
        client: Client) -> None:
    answering(client)
    wire = b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 5\r\n"
    head = Head(200, b"", 5, wire=wire)
    assert client.conn.start_response(head, True, True)
    client.conn.send_body(b"hello")
    client.conn.end_response()
    assert client.transport.take() == wire + b"\r\nhello"
    assert client.conn.response_bytes() == len(wire) + 2 + 5


async def test_a_body_of_unknown_length_is_chunked_with_its_trailers_when_taken(
        client: Client) -> None:
    answering(client, headers=[(b"TE", b"deflate, trailers;q=1")])
    assert client.conn.start_response(fields_head(None), True, True)
    client.conn.send_body(b"hello")
    client.conn.send_body_parts([b" ", b"world"])
    client.conn.send_trailers([(b"X-Checksum", b"abc")])
    client.conn.end_response()
    out = client.transport.take()
    assert out == (b"HTTP/1.1 200 OK\r\nServer: t\r\nX-A: 1\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n"
                   b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Checksum: abc\r\n\r\n")
    assert client.conn.response_bytes() == len(out)


@pytest.mark.parametrize("te, length", [(None, None), (b"gzip", None), (b"trailers", 5)])
async def test_trailers_are_dropped_without_te_trailers_or_chunks(
        client: Client, te: bytes | None, length: int | None) -> None:
    answering(client, headers=[(b"TE", te)] if te else [])
    client.conn.start_response(fields_head(length), True, True)
    client.conn.send_body(b"hello")
    client.conn.send_trailers([(b"X-Checksum", b"abc")])
    client.conn.end_response()
    out = client.transport.take()
    assert b"X-Checksum" not in out
    assert out.endswith(b"5\r\nhello\r\n0\r\n\r\n" if length is None else b"\r\nhello")


async def test_an_http10_body_of_unknown_length_ends_with_the_connection(
        client: Client) -> None:
    answering(client, version=b"1.0")
    assert not client.conn.start_response(fields_head(None), True, True)
    client.conn.send_body(b"hello")
    client.conn.end_response()
    out = client.transport.take()
    assert b"Connection: close\r\n\r\nhello" in out and out.endswith(b"\r\n\r\nhello")
    assert b"Transfer-Encoding" not in out


async def test_an_http10_client_that_keeps_the_connection_is_told_so(client: Client) -> None:
    answering(client, version=b"1.0")
    assert client.conn.respond(fields_head(2), (b"ok",), True)
    assert client.transport.take().endswith(
        b"Content-Length: 2\r\nConnection: keep-alive\r\n\r\nok")


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_no_framing(client: Client, status: int) -> None:
    answering(client)
    assert client.conn.respond(fields_head(None, status), (), True)
    assert client.transport.take() == b"HTTP/1.1 %d %s\r\nServer: t\r\nX-A: 1\r\n\r\n" % (
        status, b"No Content" if status == 204 else b"Not Modified")


async def test_a_draining_connection_says_it_closes(client: Client) -> None:
    answering(client)
    client.conn.draining = True
    assert not client.conn.respond(fields_head(2), (b"ok",), True)
    assert b"Connection: close\r\n" in client.transport.take()


async def test_an_interim_response_goes_to_http11_clients_only(client: Client) -> None:
    answering(client, version=b"1.0")
    client.conn.interim(Head(100, b"", None, []))
    assert client.transport.take() == b""
    client.conn.exchanges.clear()
    answering(client)
    client.conn.interim(Head(100, b"", None, []))
    assert client.transport.take() == b"HTTP/1.1 100 Continue\r\n\r\n"


@pytest.mark.parametrize("data", [
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n",
    b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 4000) for i in range(9))
    + b"\r\n",
    b"GET / HTTP/1.1\r\nX-Long: " + b"v" * 41000,
])
async def test_head_limits_are_the_control_listeners_own(client: Client, data: bytes) -> None:
    """The same limits, checked by the same code (lbcdn.http.head.HeadLimits), as HeadGuard
    for the control process's listeners: the same bytes get the same status and detail."""
    expected = HeadGuard(HttpLimitsConfig()).feed(data)
    assert expected is not None
    client.send(data)
    out = client.transport.take()
    assert status_lines(out)[0].startswith(b"HTTP/1.1 %d " % expected.status)
    assert expected.detail.encode() in out
