"""The HTTP/2 adapter (lbcdn.edge.h2connection), through real sockets: curl and nghttp as
clients (h2c with prior knowledge, TLS with ALPN h2), and the `h2` library as a raw-frame
client for the malformed requests and the attacks; a backend counting what reaches it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import hpack
import hpack.exceptions
import pytest
import trustme
import yaml
from hyperframe.exceptions import InvalidDataError

from lbcdn.demo.websocket import valid_client_key
from lbcdn.edge.h2connection import MAX_STREAMS, PREFACE, Flood, FrameTally, ResponseEncoder, \
    request_head, response_fields, rfc_error_code
from lbcdn.http.errors import HttpError
from lbcdn.http.head import request_header_kinds
from tests.e2e.harness import HOST, DaemonProcess, admin_port, backend_process, demo_backend, \
    free_port, listener_port, proxy_config, raw_backend, read_request, running_daemon, until, \
    wait_for_port, wait_until


async def _curl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "10", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


class Seen:
    """A backend answering each request with what it received (as JSON), counting them."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, list[tuple[str, str]], bytes]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line, headers, body = await read_request(reader)
            self.requests.append((line, headers, body))
            if line.startswith("GET /big "):   # written a piece at a time, as it is read
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
                for _ in range(BIG // 65536):
                    writer.write(b"x" * 65536)
                    await writer.drain()
                continue
            out = json.dumps({"line": line, "headers": headers,
                              "body": body.decode("latin-1")}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n"
                         b"Cache-Control: max-age=60\r\n\r\n%s" % (len(out), out))
            await writer.drain()


def test_request_head_is_what_http1_makes_of_it() -> None:
    kinds = request_header_kinds(b"x-request-id")
    head = request_head([(b":method", b"GET"), (b":scheme", b"https"),
                         (b":authority", b"a.test"), (b":path", b"/p?q=1"),
                         (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"user-agent", b"t")],
                        True, kinds)
    assert (head.method, head.host, head.path, head.query) == (b"GET", b"a.test", b"/p", b"q=1")
    assert (b"cookie", b"a=1; b=2") in head.headers
    assert head.user_agent == b"t" and not head.chunked and head.content_length is None
    body = request_head([(b":method", b"POST"), (b":scheme", b"http"),
                         (b":authority", b"a"), (b":path", b"/")], False, kinds)
    assert body.chunked   # a body of unknown length goes to the backend chunked
    for bad in ([(b":path", b"x")], [(b":path", b"/"), (b"content-length", b"1"),
                                     (b"content-length", b"2")]):
        with pytest.raises(HttpError) as err:
            request_head([(b":method", b"GET"), (b":authority", b"a"), *bad], True, kinds)
        assert err.value.status == 400


def test_response_encoder_blocks_decode_to_the_fields() -> None:
    """Literals without indexing (static names by index, never-indexed where sensitive), whole
    :status where the static table has it; the peer's table size acknowledged once."""
    encoder, decoder = ResponseEncoder(), hpack.Decoder()
    fields = [(b":status", b"200"), (b"content-type", b"text/html"), (b"x-own", b"v" * 300),
              (b"set-cookie", b"a=1"), (b"date", b"")]
    for _ in range(2):
        block = encoder.encode(fields)
        assert decoder.decode(block, raw=True) == fields
        assert len(decoder.header_table.dynamic_entries) == 0
    assert encoder.encode([(b":status", b"299")]) == b"\x08\x03299"
    never = hpack.Decoder().decode(encoder.encode([(b"set-cookie", b"a=1")]), raw=True)
    assert isinstance(never[0], hpack.NeverIndexedHeaderTuple)
    encoder.header_table_size = 0   # the peer's SETTINGS_HEADER_TABLE_SIZE
    decoder.max_allowed_table_size = 0
    assert encoder.encode([(b":status", b"204")]) == b"\x20\x89"   # size update 0, then 204
    assert encoder.encode([(b":status", b"204")]) == b"\x89"


def test_response_fields_are_what_http2_may_carry() -> None:
    fields = [(b"Content-Type", b"a"), (b"Connection", b"close"), (b"TE", b"gzip"),
              (b":path", b"/x"), (b"Keep-Alive", b"5"), (b"X-A", b"b")]
    assert response_fields([(b":status", b"200")], fields, frozenset((b"connection",
                                                                      b"keep-alive", b"te"))) \
        == [(b":status", b"200"), (b"content-type", b"a"), (b"x-a", b"b")]


def test_flood_allows_a_burst_then_the_rate() -> None:
    flood = Flood(10.0, 3.0, 0.0)
    assert [flood.hit(0.0) for _ in range(4)] == [True, True, True, False]
    assert flood.hit(0.1) and not flood.hit(0.1)


def test_rfc_error_code_corrects_the_codes_h2_gets_wrong() -> None:
    def raised(exc: h2.exceptions.ProtocolError, cause: Exception) -> h2.exceptions.ProtocolError:
        exc.__cause__ = cause
        return exc
    bad = h2.exceptions.ProtocolError("x")
    assert rfc_error_code(raised(bad, hpack.exceptions.InvalidTableIndex("i"))) == \
        h2.errors.ErrorCodes.COMPRESSION_ERROR
    assert rfc_error_code(raised(bad, InvalidDataError(
        "SETTINGS ack frame must not have payload: got 6 bytes"))) == \
        h2.errors.ErrorCodes.FRAME_SIZE_ERROR
    assert rfc_error_code(raised(bad, InvalidDataError("WINDOW_UPDATE increment"))) is None
    assert rfc_error_code(h2.exceptions.ProtocolError("y")) is None
    # an HPACK bomb is h2's ENHANCE_YOUR_CALM, kept
    assert rfc_error_code(raised(h2.exceptions.DenialOfServiceError("big"),
                                 hpack.exceptions.OversizedHeaderListError("big"))) is None


def test_frame_tally_counts_idle_frames_across_reads() -> None:
    tally = FrameTally()
    wire = PREFACE + frame(SETTINGS, 0, 0, b"") + frame(PRIORITY, 0, 1, b"x" * 5) + \
        frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x01") + frame(0x20, 0, 0, b"") + \
        frame(DATA, 0, 1, b"y" * 100) + frame(RST_STREAM, 0, 1, CANCEL) + _get(3)
    assert (tally.cost(wire), tally.carried) == (4, 2)
    for cut in (1, 5, 9, 20, 30, 50, 200):   # the same bytes, read in pieces
        tally = FrameTally()
        costs = carried = 0
        for i in range(0, len(wire), cut):
            costs += tally.cost(wire[i:i + cut])
            carried += tally.carried
        assert (costs, carried) == (4, 2), cut


async def test_h2c_prior_knowledge_proxies_and_serves_a_cache_hit() -> None:
    seen = Seen()
    async with raw_backend(seen.handle) as backend:
        config = proxy_config(backend, routes=[
            {"name": "cdn", "cache": "site", "match": {"path_prefix": "/c"}}], cache={
            "policies": {"default": {}},
            "origins": {"o": {"url": f"http://{HOST}:{backend}"}},
            "distributions": {"site": {"default_behavior": {"path_pattern": "*",
                                                            "origin": "o"}}}})
        async with running_daemon(config):
            url = f"http://{HOST}:{listener_port(config)}/c?x=1"
            for _ in range(2):
                rc, out, err = await _curl("--http2-prior-knowledge", "-i",
                                           "-b", "a=1; b=2", url)
                assert rc == 0, err
                assert out.startswith("HTTP/2 200"), out
            assert len(seen.requests) == 1   # the second was a cache hit
            line, headers, _ = seen.requests[0]
            assert line.startswith("GET /c") and "hit" in out.lower()
            rc, out, err = await _curl("--http2-prior-knowledge", "-b", "a=1; b=2",
                                       f"http://{HOST}:{listener_port(config)}/p?x=1")
            assert rc == 0, err
            line, headers, _ = seen.requests[1]
            assert line == "GET /p?x=1 HTTP/1.1"
            names = {n.lower(): v for n, v in headers}
            assert names["host"] == f"{HOST}:{listener_port(config)}"
            assert names["cookie"] == "a=1; b=2"
            assert names["x-forwarded-proto"] == "http" and "x-request-id" in names


async def test_tls_alpn_offers_h2_and_http11(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("a.test")
    crt, key, ca_file = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(crt))
    cert.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    seen = Seen()
    async with raw_backend(seen.handle) as backend:
        config = proxy_config(backend)
        config["listeners"][0]["tls"] = {"certificates": [
            {"cert_file": str(crt), "key_file": str(key)}]}
        async with running_daemon(config):
            port = listener_port(config)
            base = ["--cacert", str(ca_file), "--resolve", f"a.test:{port}:{HOST}",
                    "-o", "/dev/null", "-w", "%{http_version} %{http_code}"]
            got = await _curl("--http2", *base, f"https://a.test:{port}/x")
            assert got[1] == "2 200", got
            assert (await _curl("--http1.1", *base, f"https://a.test:{port}/x"))[1] == "1.1 200"
            assert seen.requests[0][0] == "GET /x HTTP/1.1"
            names = {n.lower() for n, _ in seen.requests[0][1]}
            assert "x-forwarded-proto" in names


class GoAway(NamedTuple):
    last_stream_id: int
    error_code: int
    debug: bytes


class RawH2:
    """A raw HTTP/2 client over a real socket: python-hyper's `h2` with its checks off where
    a test sends what a well-behaved client would not."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 validate: bool = True) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=validate,
            normalize_outbound_headers=validate, validate_inbound_headers=validate))
        self.events: list[Any] = []
        self.closed = False
        self.raw = b""
        self.goaways: list[GoAway] = []

    @classmethod
    async def open(cls, port: int, validate: bool = True) -> RawH2:
        reader, writer = await asyncio.open_connection(HOST, port)
        client = cls(reader, writer, validate)
        client.h2.initiate_connection()
        client.flush()
        return client

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def request(self, path: str = "/", method: str = "GET", body: bytes | None = None,
                extra: list[tuple[bytes, bytes]] | None = None, end: bool = True) -> int:
        sid = self.h2.get_next_available_stream_id()
        headers = [(b":method", method.encode()), (b":scheme", b"http"),
                   (b":authority", b"t.test"), (b":path", path.encode())] + (extra or [])
        self.h2.send_headers(sid, headers, end_stream=end and body is None)
        if body is not None:
            self.h2.send_data(sid, body, end_stream=end)
        self.flush()
        return sid

    async def read_until(self, done: Any, timeout_s: float = 10.0) -> None:
        """Read and handle frames (acknowledging DATA) until `done(events)` or EOF."""
        async def loop() -> None:
            while not done(self.events):
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    self.closed = True
                    return
                for event in self.h2.receive_data(self._keep_goaway(data)):
                    self.events.append(event)
                    if isinstance(event, h2.events.DataReceived):
                        self.h2.acknowledge_received_data(event.flow_controlled_length,
                                                          event.stream_id)
                self.flush()
        await asyncio.wait_for(loop(), timeout_s)

    def _keep_goaway(self, data: bytes) -> bytes:
        """`data` without its GOAWAY frames, which go to `goaways`: `h2` closes its state
        machine on one, and a graceful GOAWAY is followed by the in-flight streams' frames."""
        self.raw += data
        out = []
        while len(self.raw) >= 9:
            size = int.from_bytes(self.raw[:3], "big") + 9
            if len(self.raw) < size:
                break
            frame, self.raw = self.raw[:size], self.raw[size:]
            if frame[3] == 7:
                self.goaways.append(GoAway(int.from_bytes(frame[9:13], "big") & 0x7FFFFFFF,
                                           int.from_bytes(frame[13:17], "big"), frame[17:]))
            else:
                out.append(frame)
        return b"".join(out)

    def body(self, sid: int) -> bytes:
        return b"".join(e.data for e in self.events
                        if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)

    def status(self, sid: int) -> int | None:
        for e in self.events:
            if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid:
                return int(dict(e.headers)[b":status"])
        return None

    def ended(self, sid: int) -> bool:
        return any(isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset))
                   and e.stream_id == sid for e in self.events)

    def goaway(self) -> GoAway | None:
        return self.goaways[0] if self.goaways else None

    def close(self) -> None:
        self.writer.close()


async def test_request_bodies_both_framings_and_flow_control_both_ways() -> None:
    seen = Seen()
    big = bytes(range(256)) * 12_000   # 3 MB: many windows of the default 64 KiB each way
    async with raw_backend(seen.handle) as backend:
        config = proxy_config(backend)
        async with running_daemon(config):
            port = listener_port(config)
            client = await RawH2.open(port)
            sized = client.request("/sized", "POST", b"hello",
                                   extra=[(b"content-length", b"5")])
            await client.read_until(lambda ev: client.ended(sized))
            assert client.status(sized) == 200
            assert seen.requests[0][2] == b"hello"
            assert ("content-length", "5") in seen.requests[0][1]
            # no content-length, and more than the connection's and stream's windows: sent as
            # the server's WINDOW_UPDATEs allow, re-chunked to the backend, echoed back
            sid = client.request("/big", "POST", end=False)
            rest = big
            while rest:
                window = min(client.h2.local_flow_control_window(sid),
                             client.h2.max_outbound_frame_size)
                if window == 0:
                    await client.read_until(
                        lambda ev: client.h2.local_flow_control_window(sid) > 0)
                    continue
                client.h2.send_data(sid, rest[:window])
                rest = rest[window:]
                client.flush()
            client.h2.end_stream(sid)
            client.flush()
            await client.read_until(lambda ev: client.ended(sid), 30)
            assert client.status(sid) == 200
            line, headers, body = seen.requests[1]
            assert body == big and ("Transfer-Encoding", "chunked") in headers
            assert json.loads(client.body(sid))["body"].encode("latin-1") == big
            client.close()

            # curl sends a body with its length; the daemon answers over h2c
            rc, out, err = await _curl("--http2-prior-knowledge", "--data-binary", "abc",
                                       f"http://{HOST}:{port}/curl")
            assert rc == 0 and json.loads(out)["body"] == "abc", err


async def test_drain_sends_goaway_and_streams_in_flight_finish() -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        arrived.set()
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
        await writer.drain()

    async with raw_backend(slow) as backend:
        config = proxy_config(backend)
        async with running_daemon(config) as daemon:
            client = await RawH2.open(listener_port(config))
            sid = client.request("/slow")
            await asyncio.wait_for(arrived.wait(), 10)
            listener = daemon.listeners[0]
            drained = asyncio.ensure_future(listener.drain(listener.loop.time() + 10))
            await client.read_until(lambda ev: client.goaway() is not None)
            assert client.goaway() == GoAway(sid, 0, b"")
            late = client.request("/late")   # begun after the GOAWAY: refused, not served
            release.set()
            await client.read_until(lambda ev: client.ended(sid) and client.closed)
            assert client.status(sid) == 200 and client.body(sid) == b"slow", client.events
            assert client.status(late) is None and client.ended(late)
            await asyncio.wait_for(drained, 10)
            client.close()


BASE = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"t.test")]
MALFORMED = {
    "uppercase name": BASE + [(b":path", b"/"), (b"X-Up", b"1")],
    "connection": BASE + [(b":path", b"/"), (b"connection", b"close")],
    "keep-alive": BASE + [(b":path", b"/"), (b"keep-alive", b"5")],
    "proxy-connection": BASE + [(b":path", b"/"), (b"proxy-connection", b"x")],
    "transfer-encoding": BASE + [(b":path", b"/"), (b"transfer-encoding", b"chunked")],
    "upgrade": BASE + [(b":path", b"/"), (b"upgrade", b"websocket")],
    "te gzip": BASE + [(b":path", b"/"), (b"te", b"gzip")],
    "missing :path": BASE,
    "duplicate :method": BASE + [(b":path", b"/"), (b":method", b"POST")],
    "unknown pseudo": BASE + [(b":path", b"/"), (b":proto", b"x"), (b":foo", b"1")],
    "pseudo after regular": BASE[:2] + [(b"x-a", b"1"), (b":authority", b"t"),
                                        (b":path", b"/")],
    "empty :path": BASE + [(b":path", b"")],
    "CR LF in value": BASE + [(b":path", b"/"), (b"x-a", b"1\r\nx-b: 2")],
    "NUL in value": BASE + [(b":path", b"/"), (b"x-a", b"1\x002")],
    "leading space in value": BASE + [(b":path", b"/"), (b"x-a", b" 1")],
    "trailing tab in value": BASE + [(b":path", b"/"), (b"x-a", b"1\t")],
    "empty name": BASE + [(b":path", b"/"), (b"", b"1")],
    "space in name": BASE + [(b":path", b"/"), (b"x a", b"1")],
    "relative :path": BASE + [(b":path", b"x/y")],
    "bad content-length": BASE + [(b":path", b"/"), (b"content-length", b"1x")],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_malformed_request_is_refused_and_never_forwarded(case: str) -> None:
    seen = Seen()
    async with raw_backend(seen.handle) as backend:
        config = proxy_config(backend)
        async with running_daemon(config):
            client = await RawH2.open(listener_port(config), validate=False)
            sid = client.h2.get_next_available_stream_id()
            client.h2.send_headers(sid, MALFORMED[case], end_stream=True)
            client.flush()
            await client.read_until(lambda ev: client.ended(sid) or client.goaway())
            goaway = client.goaway()
            # a connection error PROTOCOL_ERROR, or the stream's own 400
            assert (goaway is not None and goaway.error_code == 1) or \
                client.status(sid) == 400, (case, client.events)
            client.close()
            # a good request on a new connection goes through: the backend saw only that
            good = await RawH2.open(listener_port(config))
            ok = good.request("/ok")
            await good.read_until(lambda ev: good.ended(ok))
            assert good.status(ok) == 200
            assert [r[0] for r in seen.requests] == ["GET /ok HTTP/1.1"]
            good.close()


@pytest.mark.parametrize("sent", [b"abc", b"abcdefghijklmnop"])
async def test_content_length_disagreeing_with_the_data_is_refused(sent: bytes) -> None:
    seen = Seen()
    async with raw_backend(seen.handle) as backend:
        config = proxy_config(backend)
        async with running_daemon(config):
            client = await RawH2.open(listener_port(config), validate=False)
            sid = client.h2.get_next_available_stream_id()
            client.h2.send_headers(sid, BASE + [(b":method", b"POST"), (b":path", b"/"),
                                                (b"content-length", b"10")][:3] +
                                   [(b":path", b"/"), (b"content-length", b"10")])
            client.h2.send_data(sid, sent, end_stream=True)
            client.flush()
            await client.read_until(lambda ev: client.goaway() or client.ended(sid))
            assert client.goaway() is not None and client.goaway().error_code == 1
            await asyncio.sleep(0.2)
            assert seen.requests == []   # no whole request reached the backend
            client.close()


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    """One HTTP/2 frame made by hand (RFC 9113 4.1), whatever its length or content."""
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + sid.to_bytes(4, "big") + \
        payload


def _headers_block(path: str = "/", method: bytes = b"GET") -> bytes:
    # HPACK without the dynamic table (RFC 7541 6.2.2: literal, never indexed): every block
    # stands alone, so the tests' hand-made frames need no encoder state
    def literal(name: bytes, value: bytes) -> bytes:
        return b"\x10" + bytes((len(name),)) + name + bytes((len(value),)) + value
    return b"".join(literal(n, v) for n, v in [
        (b":method", method), (b":scheme", b"http"), (b":authority", b"t.test"),
        (b":path", path.encode())])


DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY_T, WINDOW_UPDATE, CONTINUATION = \
    0, 1, 2, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS = 0x1, 0x4
H2_ERRORS = {"PROTOCOL_ERROR": 1, "FLOW_CONTROL_ERROR": 3, "STREAM_CLOSED": 5,
             "FRAME_SIZE_ERROR": 6, "COMPRESSION_ERROR": 9, "ENHANCE_YOUR_CALM": 11}
ENHANCE_YOUR_CALM = H2_ERRORS["ENHANCE_YOUR_CALM"]
CANCEL = (8).to_bytes(4, "big")   # RST_STREAM's payload


class RawFrames:
    """A client speaking hand-made frames over a real socket, keeping every frame it gets as
    (type, flags, stream id, payload): for what no HTTP/2 library lets a client send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames: list[tuple[int, int, int, bytes]] = []
        self.buf = b""
        self.closed = False

    @classmethod
    async def open(cls, port: int) -> RawFrames:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(PREFACE + frame(SETTINGS, 0, 0, b""))
        return cls(reader, writer)

    def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))

    async def read_until(self, done: Any, timeout_s: float = 10.0) -> None:
        async def loop() -> None:
            while not done():
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    self.closed = True
                    return
                self.buf += data
                while len(self.buf) >= 9:
                    size = int.from_bytes(self.buf[:3], "big")
                    if len(self.buf) < 9 + size:
                        break
                    head, self.buf = self.buf[:9 + size], self.buf[9 + size:]
                    sid = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                    self.frames.append((head[3], head[4], sid, head[9:]))
                    if head[3] == SETTINGS and not head[4] & 1:
                        self.send(frame(SETTINGS, 1, 0, b""))   # ACK theirs
        await asyncio.wait_for(loop(), timeout_s)

    def goaway_code(self) -> int | None:
        for kind, _, _, payload in self.frames:
            if kind == GOAWAY_T:
                return int.from_bytes(payload[4:8], "big")
        return None

    def reset_code(self, sid: int) -> int | None:
        for kind, _, stream, payload in self.frames:
            if kind == RST_STREAM and stream == sid:
                return int.from_bytes(payload, "big")
        return None

    def ended(self, sid: int) -> bool:
        return any(f[2] == sid and (f[0] == RST_STREAM or
                                    (f[0] in (DATA, HEADERS) and f[1] & END_STREAM))
                   for f in self.frames)

    def close(self) -> None:
        self.writer.close()


def _get(sid: int, path: str = "/") -> bytes:
    return frame(HEADERS, END_HEADERS | END_STREAM, sid, _headers_block(path))


def _open_post(sid: int) -> bytes:
    return frame(HEADERS, END_HEADERS, sid, _headers_block("/w", b"POST"))


BIG = 4 * 1024 * 1024   # what Seen answers to GET /big


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _p50_max(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return ordered[(len(ordered) - 1) // 2], ordered[-1]


async def _attacked(attack: bytes, expect: int | None, idle_timeout_s: float | None = None,
                    max_growth_mib: float = 64.0, until_stream: int = 0,
                    demo_backend_process: bool = False) -> RawFrames:
    """Send `attack` (frames made beforehand: the test's own work is not timed) on a
    connection to a daemon in this process and read until it closes (or, `until_stream`, until
    that stream ended); its GOAWAY must carry `expect` (None: cut without one, or none). The
    backend: `Seen`, or the demo backend in a process of its own (`demo_backend_process`: when
    the backend's work would be timed too). Another client's requests meanwhile keep their latency
    (p50 and max within generous bounds of before: the attacker, the daemon and that client
    share this process), and the process grows by `max_growth_mib` at most."""
    async with contextlib.AsyncExitStack() as backends:
        if demo_backend_process:
            backend = backends.enter_context(backend_process()).port
        else:
            backend = await backends.enter_async_context(raw_backend(Seen().handle))
        config = proxy_config(backend)
        if idle_timeout_s is not None:
            config["listeners"][0]["idle_timeout_s"] = idle_timeout_s
        async with running_daemon(config):
            loop = asyncio.get_running_loop()
            other = await RawH2.open(listener_port(config))

            async def one() -> float:
                start = loop.time()
                ok = other.request("/ok")
                await other.read_until(lambda ev: other.ended(ok))
                assert other.status(ok) == 200
                return loop.time() - start
            before = [await one() for _ in range(9)]
            rss = _rss_mib()
            client = await RawFrames.open(listener_port(config))
            client.send(attack)
            attacking = asyncio.ensure_future(client.read_until(
                lambda: client.closed or (until_stream and client.ended(until_stream)), 30))
            during = [await one()]
            while not attacking.done():
                during.append(await one())
            await attacking
            grown = _rss_mib() - rss
            assert client.goaway_code() == expect, client.frames[-3:]
            client.close()
            (p50_before, max_before), (p50_during, max_during) = \
                _p50_max(before), _p50_max(during)
            print(f"other client: before p50 {p50_before * 1000:.1f} ms max "
                  f"{max_before * 1000:.1f} ms; during ({len(during)} requests) p50 "
                  f"{p50_during * 1000:.1f} ms max {max_during * 1000:.1f} ms; "
                  f"grown {grown:.1f} MiB")
            assert p50_during < p50_before + 0.5, (before, during)
            assert max_during < max_before + 1.0, (before, during)
            assert await one() < max_before + 1.0   # and after
            assert grown < max_growth_mib
            other.close()
            return client


async def test_rapid_reset_ends_in_enhance_your_calm() -> None:
    await _attacked(b"".join(_get(2 * i + 1, "/r") + frame(RST_STREAM, 0, 2 * i + 1, CANCEL)
                             for i in range(1000)), ENHANCE_YOUR_CALM)


async def test_settings_and_ping_floods_end_in_enhance_your_calm() -> None:
    enable_push_0 = b"\x00\x02\x00\x00\x00\x00"
    await _attacked(frame(SETTINGS, 0, 0, enable_push_0) * 1000, ENHANCE_YOUR_CALM)
    await _attacked(b"".join(frame(PING, 0, 0, i.to_bytes(8, "big")) for i in range(1000)),
                    ENHANCE_YOUR_CALM)


async def test_continuation_flood_is_a_connection_error() -> None:
    # HEADERS without END_HEADERS, then CONTINUATION frames that never end the block
    await _attacked(frame(HEADERS, END_STREAM, 1, _headers_block()) +
                    frame(CONTINUATION, 0, 1, b"\x40\x01a\x01b") * 200,
                    H2_ERRORS["PROTOCOL_ERROR"])


async def test_hpack_bomb_is_bounded_by_the_header_list_size() -> None:
    # one big field put in the dynamic table, then named by its index 200 times: a small
    # block that decodes to megabytes
    block = hpack.Encoder().encode(BASE + [(b":path", b"/")] + [(b"x-big", b"a" * 3000)] * 200)
    await _attacked(frame(HEADERS, END_HEADERS | END_STREAM, 1, block), ENHANCE_YOUR_CALM)


async def test_a_stream_past_the_limit_is_refused() -> None:
    """One stream more than SETTINGS_MAX_CONCURRENT_STREAMS: that one is refused
    (RST_STREAM REFUSED_STREAM, RFC 9113 5.1.2), the connection and its streams go on, and
    once one of them ends a new stream is served."""
    seen = Seen()
    async with raw_backend(seen.handle) as backend:
        config = proxy_config(backend)
        async with running_daemon(config):
            client = await RawFrames.open(listener_port(config))
            # open streams (no END_STREAM), their bodies still to come
            client.send(*(_open_post(2 * i + 1) for i in range(MAX_STREAMS + 1)))
            past = 2 * MAX_STREAMS + 1
            await client.read_until(lambda: client.reset_code(past) is not None)
            assert client.reset_code(past) == 7   # REFUSED_STREAM
            client.send(frame(DATA, END_STREAM, 1, b"body"))
            await client.read_until(lambda: client.ended(1))
            assert client.reset_code(1) is None
            client.send(_get(past + 2, "/after"))
            await client.read_until(lambda: client.ended(past + 2))
            assert client.reset_code(past + 2) is None and client.goaway_code() is None
            assert "GET /after HTTP/1.1" in [r[0] for r in seen.requests]
            client.close()


async def test_access_log_says_the_protocol(tmp_path: Path) -> None:
    seen = Seen()
    log_path = tmp_path / "access.log"
    async with raw_backend(seen.handle) as backend:
        config = proxy_config(backend)
        config["logging"]["access_log"] = {"enabled": True, "path": str(log_path)}
        async with running_daemon(config):
            url = f"http://{HOST}:{listener_port(config)}/"
            assert (await _curl("--http2-prior-knowledge", url + "two"))[0] == 0
            assert (await _curl("--http1.1", url + "one"))[0] == 0
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert {(e["path"], e["protocol"]) for e in lines} == {("/two", "HTTP/2.0"),
                                                          ("/one", "HTTP/1.1")}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_nghttp_and_h2load_against_the_daemon(tmp_path: Path, workers: int) -> None:
    """Real clients against the real daemon, in one process and with --workers 2: nghttp
    (several streams on one connection) and h2load (many), every request answered."""
    with backend_process() as backend:
        config = proxy_config(backend.port)
        daemon = DaemonProcess(config, tmp_path, extra_args=["--workers", str(workers)])
        try:
            port = listener_port(config)
            wait_for_port(port)
            url = f"http://{HOST}:{port}/"
            out = subprocess.run(["nghttp", "-n", "-s", url, url + "a", url + "b"],
                         capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            load = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "10", url],
                          capture_output=True, text=True, timeout=60)
            assert "2000 succeeded, 0 failed" in load.stdout, load.stdout
        finally:
            daemon.stop()


async def test_response_fields_http2_may_not_carry_are_left_out() -> None:
    """A backend's connection-specific fields and `te` never reach an HTTP/2 viewer (RFC 9113
    8.2.2; `h2`'s own outbound checks are off): the response goes without them, names lower
    case."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTE: gzip\r\n"
                         b"Keep-Alive: timeout=5\r\nX-Mixed-Case: 1\r\n\r\nok")
            await writer.drain()

    async with raw_backend(handle) as backend:
        config = proxy_config(backend)
        async with running_daemon(config):
            client = await RawH2.open(listener_port(config))
            try:
                sid = client.request("/")
                await client.read_until(lambda _: client.ended(sid))
                assert client.status(sid) == 200 and client.body(sid) == b"ok"
                names = [n for e in client.events if isinstance(e, h2.events.ResponseReceived)
                         for n, _ in e.headers]
                assert b"x-mixed-case" in names
                assert not {b"te", b"keep-alive", b"connection"} & set(names)
            finally:
                client.close()


def test_a_client_without_a_header_table_gets_its_size_acknowledged(tmp_path: Path) -> None:
    """h2load with a 0-byte HPACK table: nghttp2 refuses a field block that does not begin
    with the table size update its SETTINGS asked for (RFC 7541 4.2), COMPRESSION_ERROR."""
    with backend_process() as backend:
        config = proxy_config(backend.port)
        daemon = DaemonProcess(config, tmp_path)
        try:
            port = listener_port(config)
            wait_for_port(port)
            url = f"http://{HOST}:{port}/"
            out = subprocess.run(["h2load", "-n", "20", "-c", "2", "-m", "5",
                                  "--header-table-size=0", url],
                                 capture_output=True, text=True, timeout=30)
            assert "20 succeeded, 0 failed" in out.stdout, out.stdout
        finally:
            daemon.stop()


async def test_an_answer_before_the_request_ends_arrives_whole_then_the_reset() -> None:
    """A response that comes while the request's body is still on its way (RFC 9113 8.1)
    goes out whole, its END_STREAM on its last DATA frame, and only then the RST_STREAM
    NO_ERROR that says the rest of the request is not wanted."""
    async with raw_backend(Seen().handle) as backend:
        config = proxy_config(backend, routes=[
            {"name": "fixed", "fixed_response": {"status": 200, "body": "early"}}])
        async with running_daemon(config):
            client = await RawH2.open(listener_port(config))
            try:
                sid = client.request("/", method="POST", body=b"part", end=False)
                await client.read_until(lambda events: any(
                    isinstance(e, h2.events.StreamReset) for e in events))
                assert client.status(sid) == 200 and client.body(sid) == b"early"
                frames = [e for e in client.events if getattr(e, "stream_id", 0) == sid]
                kinds = [type(e) for e in frames]
                assert kinds[-3:] == [h2.events.DataReceived, h2.events.StreamEnded,
                                      h2.events.StreamReset]   # END_STREAM on the DATA frame
                assert frames[-1].error_code == h2.errors.ErrorCodes.NO_ERROR
            finally:
                client.close()


async def test_a_listener_without_h2_speaks_only_http11() -> None:
    seen = Seen()
    async with raw_backend(seen.handle) as backend:
        config = proxy_config(backend)
        config["listeners"][0]["http_versions"] = ["http1.1"]
        async with running_daemon(config):
            url = f"http://{HOST}:{listener_port(config)}/x"
            rc, out, err = await _curl("--http2-prior-knowledge", url)
            assert rc != 0 and seen.requests == []   # the preface is no HTTP/1.1 request
            rc, out, err = await _curl("--http2", "-o", "/dev/null", "-w", "%{http_version}",
                                       url)
            assert (rc, out) == (0, "1.1")   # Upgrade: h2c ignored


async def test_a_client_that_opens_no_window_is_cut_after_the_idle_timeout() -> None:
    """Zero-window slow read of a large response: the stream's bytes wait, the backend is
    paused, and after the listener's idle timeout the connection is closed."""
    big = b"x" * (4 * 1024 * 1024)

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big))
        writer.write(big)
        await writer.drain()
        await reader.read()

    async with raw_backend(large) as backend:
        config = proxy_config(backend)
        config["listeners"][0]["idle_timeout_s"] = 1.0
        async with running_daemon(config):
            reader, writer = await asyncio.open_connection(HOST, listener_port(config))
            client = RawH2(reader, writer)
            client.h2.local_settings.initial_window_size = 0   # never grows: no WINDOW_UPDATE
            client.h2.initiate_connection()
            client.flush()
            sid = client.request("/big")
            loop = asyncio.get_running_loop()
            started = loop.time()

            async def until_closed() -> None:
                while await reader.read(65536):
                    pass   # read frames, open no window
            await asyncio.wait_for(until_closed(), 10)
            assert 0.9 <= loop.time() - started < 8
            assert client.status(sid) is None   # (frames not fed to `h2` here)
            writer.close()


# each: (frames sent after a first good request on stream 1 was answered, the stream a
# stream error is expected on (0: a connection error, GOAWAY), the error code expected)
FRAME_ERRORS: dict[str, tuple[list[bytes], int, str]] = {
    "DATA larger than SETTINGS_MAX_FRAME_SIZE": (
        [_open_post(3), frame(DATA, 0, 3, b"x" * 16385)], 0, "FRAME_SIZE_ERROR"),
    "HEADERS larger than SETTINGS_MAX_FRAME_SIZE": (
        [frame(HEADERS, END_HEADERS | END_STREAM, 3,
               _headers_block() + b"\x10\x01x\x7f\x81\x7f" + b"a" * 16400)],
        0, "FRAME_SIZE_ERROR"),
    "PING of 7 bytes": ([frame(PING, 0, 0, b"1234567")], 0, "FRAME_SIZE_ERROR"),
    "SETTINGS of 5 bytes": ([frame(SETTINGS, 0, 0, b"\x00\x04\x00\x00\x01")], 0,
                            "FRAME_SIZE_ERROR"),
    "WINDOW_UPDATE of 3 bytes": ([frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01")], 0,
                                 "FRAME_SIZE_ERROR"),
    "connection WINDOW_UPDATE past 2^31-1": (
        [frame(WINDOW_UPDATE, 0, 0, (2**31 - 1).to_bytes(4, "big"))], 0,
        "FLOW_CONTROL_ERROR"),
    "stream WINDOW_UPDATE past 2^31-1": (
        [_open_post(3), frame(WINDOW_UPDATE, 0, 3, (2**31 - 1).to_bytes(4, "big"))], 3,
        "FLOW_CONTROL_ERROR"),
    "DATA on a closed stream": ([frame(DATA, 0, 1, b"late")], 1, "STREAM_CLOSED"),
    "even client stream id": ([_get(4)], 0, "PROTOCOL_ERROR"),
    "decreasing stream id": ([_get(7), _get(5)], 0, "PROTOCOL_ERROR"),
    "DATA on a half-closed (remote) stream": ([_get(3, "/big"), frame(DATA, 0, 3, b"late")], 3,
                                              "STREAM_CLOSED"),
    "DATA on an idle stream": ([frame(DATA, 0, 3, b"x")], 0, "PROTOCOL_ERROR"),
    "DATA on stream 0": ([frame(DATA, 0, 0, b"x")], 0, "PROTOCOL_ERROR"),
    "HEADERS on stream 0": ([_get(0)], 0, "PROTOCOL_ERROR"),
    "connection WINDOW_UPDATE of 0": ([frame(WINDOW_UPDATE, 0, 0, bytes(4))], 0,
                                      "PROTOCOL_ERROR"),
    # a stream error made a connection error (allowed by 5.4.1): `h2` checks the increment
    # as it parses the frame, before it looks at the stream
    "stream WINDOW_UPDATE of 0": ([_open_post(3), frame(WINDOW_UPDATE, 0, 3, bytes(4))], 0,
                                  "PROTOCOL_ERROR"),
    "SETTINGS_INITIAL_WINDOW_SIZE past 2^31-1": (
        [frame(SETTINGS, 0, 0, b"\x00\x04\x80\x00\x00\x00")], 0, "FLOW_CONTROL_ERROR"),
    "SETTINGS_MAX_FRAME_SIZE under 16384": (
        [frame(SETTINGS, 0, 0, b"\x00\x05\x00\x00\x10\x00")], 0, "PROTOCOL_ERROR"),
    "SETTINGS_ENABLE_PUSH of 2": ([frame(SETTINGS, 0, 0, b"\x00\x02\x00\x00\x00\x02")], 0,
                                  "PROTOCOL_ERROR"),
    "SETTINGS ACK with a payload": ([frame(SETTINGS, 1, 0, b"\x00\x02\x00\x00\x00\x00")], 0,
                                    "FRAME_SIZE_ERROR"),
    "bad HPACK block": ([frame(HEADERS, END_HEADERS | END_STREAM, 3, b"\xff\xff\xff\xff\x0f")],
                        0, "COMPRESSION_ERROR"),
}


@pytest.mark.parametrize("case", sorted(FRAME_ERRORS))
async def test_a_frame_error_gets_its_error_code(case: str) -> None:
    """RFC 9113 sections 5 and 6: each fault a GOAWAY (connection error) or RST_STREAM
    (stream error) with its own code, sent before the connection closes."""
    sent, on_stream, code = FRAME_ERRORS[case]
    seen = Seen()
    async with raw_backend(seen.handle) as backend:
        config = proxy_config(backend)
        async with running_daemon(config):
            client = await RawFrames.open(listener_port(config))
            client.send(_get(1))
            await client.read_until(lambda: client.ended(1))
            client.send(*sent)
            if on_stream:
                await client.read_until(lambda: client.reset_code(on_stream) is not None)
                assert client.reset_code(on_stream) == H2_ERRORS[code], client.frames
                assert client.goaway_code() is None
                # a stream error: the connection goes on
                client.send(_get(9))
                await client.read_until(lambda: client.ended(9))
                assert client.reset_code(9) is None
            else:
                await client.read_until(lambda: client.closed)
                assert client.goaway_code() == H2_ERRORS[code], client.frames
            client.close()


async def test_empty_data_flood_ends_in_enhance_your_calm() -> None:
    """DATA frames carrying nothing cost the server a frame each and the client nothing."""
    await _attacked(_open_post(1) + frame(DATA, 0, 1, b"") * 100_000, ENHANCE_YOUR_CALM)


IDLE_FLOODS = {
    "PRIORITY": b"".join(frame(PRIORITY, 0, 2 * i + 1, bytes(4) + b"\x10")
                         for i in range(100_000)),
    "connection WINDOW_UPDATE": frame(WINDOW_UPDATE, 0, 0, (1).to_bytes(4, "big")) * 100_000,
    # on a stream that ends meanwhile: `h2` drops those silently
    "stream WINDOW_UPDATE": _get(1) + frame(WINDOW_UPDATE, 0, 1, (1).to_bytes(4, "big")) *
    100_000,
    "RST_STREAM on a closed stream": _get(1) + frame(RST_STREAM, 0, 1, CANCEL) * 100_000,
    "unknown frame type": frame(0x20, 0, 0, b"") * 100_000,
    # each answered with an RST_STREAM, which `h2` sends without a word
    "DATA on a reset stream": _open_post(1) + frame(RST_STREAM, 0, 1, CANCEL) +
    frame(DATA, 0, 1, b"x") * 100_000,
    "trailers on a reset stream": _open_post(1) + frame(RST_STREAM, 0, 1, CANCEL) +
    frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\x10\x01x\x01y") * 100_000,
}


@pytest.mark.parametrize("case", sorted(IDLE_FLOODS))
async def test_a_flood_of_frames_that_serve_nothing_ends_in_enhance_your_calm(case: str
                                                                              ) -> None:
    await _attacked(IDLE_FLOODS[case], ENHANCE_YOUR_CALM)


async def test_a_body_in_100000_tiny_data_frames_does_not_hold_the_worker() -> None:
    """Not abuse by itself (a slow stream of small chunks is legitimate), but each frame costs
    far more to handle than to send: parsed a slice per turn of the loop, others are served
    in between."""
    sink = frame(HEADERS, END_HEADERS, 1, _headers_block("/sink", b"POST"))
    client = await _attacked(sink + frame(DATA, 0, 1, b"x") * 99_999 +
                             frame(DATA, END_STREAM, 1, b"x"), None, until_stream=1,
                             demo_backend_process=True)
    assert client.goaway_code() is None and client.reset_code(1) is None


async def test_empty_headers_and_continuation_flood_is_a_connection_error() -> None:
    await _attacked(frame(HEADERS, 0, 1, b"") + frame(CONTINUATION, 0, 1, b"") * 100_000,
                    H2_ERRORS["PROTOCOL_ERROR"])


@pytest.mark.slow
async def test_100000_streams_requested_are_bounded() -> None:
    """100,000 requests on one connection at once, far past SETTINGS_MAX_CONCURRENT_STREAMS:
    those past the limit refused, until the budget for refusals runs out: GOAWAY
    ENHANCE_YOUR_CALM; memory bounded."""
    client = await _attacked(b"".join(_get(2 * i + 1, "/s") for i in range(100_000)),
                             ENHANCE_YOUR_CALM)
    refused = [f for f in client.frames if f[0] == RST_STREAM]
    assert refused and all(f[3] == b"\x00\x00\x00\x07" for f in refused)


@pytest.mark.slow
async def test_zero_window_slow_read_is_bounded_and_cut() -> None:
    """20 streams of a 4 MiB response each (80 MiB if it were buffered) to a client that
    opens no window (SETTINGS_INITIAL_WINDOW_SIZE 0, no WINDOW_UPDATE): the backends are
    paused, the connection is cut after the idle timeout."""
    await _attacked(frame(SETTINGS, 0, 0, b"\x00\x04\x00\x00\x00\x00") +
                    b"".join(_get(2 * i + 1, "/big") for i in range(20)),
                    None, idle_timeout_s=1.0, max_growth_mib=40.0)


def _informational(client: RawH2, sid: int) -> list[int]:
    return [int(dict(e.headers)[b":status"]) for e in client.events
            if isinstance(e, h2.events.InformationalResponseReceived) and e.stream_id == sid]


async def test_expect_100_continue_gets_the_100_before_the_body_is_sent() -> None:
    """As over HTTP/1.1: the backend's 100 Continue reaches the client, which sends its body
    only then; and a backend's 103 Early Hints reaches the client before the response."""
    async with demo_backend() as backend:
        config = proxy_config(backend)
        async with running_daemon(config):
            client = await RawH2.open(listener_port(config))
            body = bytes(range(256)) * 400
            sid = client.request("/sink", "POST", end=False, extra=[
                (b"content-length", b"%d" % len(body)), (b"expect", b"100-continue")])
            await client.read_until(lambda ev: _informational(client, sid) or
                                    client.ended(sid))
            assert _informational(client, sid) == [100] and client.status(sid) is None
            rest = body
            while rest:   # sent as the windows allow
                window = min(client.h2.local_flow_control_window(sid),
                             client.h2.max_outbound_frame_size)
                client.h2.send_data(sid, rest[:window], end_stream=window >= len(rest))
                rest = rest[window:]
                client.flush()
            await client.read_until(lambda ev: client.ended(sid))
            assert client.status(sid) == 200
            assert json.loads(client.body(sid)) == {
                "body_bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}

            hints = client.request("/early-hints")
            await client.read_until(lambda ev: client.ended(hints))
            assert _informational(client, hints) == [103] and client.status(hints) == 200
            kinds = [type(e) for e in client.events if getattr(e, "stream_id", 0) == hints]
            assert kinds.index(h2.events.InformationalResponseReceived) < \
                kinds.index(h2.events.ResponseReceived)
            client.close()


async def test_expect_100_continue_too_large_gets_413_without_100() -> None:
    """As over HTTP/1.1: a body the route refuses by its announced length is answered at
    once, with no 100 first; the stream is then closed (RST_STREAM NO_ERROR, RFC 9113 8.1)
    rather than the body awaited, and the connection goes on."""
    async with demo_backend() as backend:
        config = proxy_config(backend, routes=[
            {"name": "small", "match": {"path_prefix": "/sink"}, "forward": "app",
             "max_body_bytes": 1000}])
        async with running_daemon(config):
            client = await RawH2.open(listener_port(config))
            sid = client.request("/sink", "POST", end=False, extra=[
                (b"content-length", b"100000"), (b"expect", b"100-continue")])
            await client.read_until(lambda ev: client.ended(sid))
            assert client.status(sid) == 413 and _informational(client, sid) == []
            after = client.request("/after")
            await client.read_until(lambda ev: client.ended(after))
            assert client.status(after) == 200 and client.goaway() is None
            client.close()


async def test_priority_frames_and_the_priority_header_are_accepted_and_ignored() -> None:
    """RFC 9113 5.3.2: PRIORITY frames (on idle and open streams, and HEADERS' priority
    fields) are parsed and ignored; RFC 9218: the `priority` field and PRIORITY_UPDATE frames
    (type 0x10, unknown to RFC 9113, so ignored) change nothing."""
    seen = Seen()
    async with raw_backend(seen.handle) as backend:
        config = proxy_config(backend)
        async with running_daemon(config):
            client = await RawFrames.open(listener_port(config))
            client.send(
                frame(2, 0, 3, (1).to_bytes(4, "big") + b"\x10"),    # PRIORITY, idle stream 3
                frame(0x10, 0, 0, (1).to_bytes(4, "big") + b"u=0"),  # PRIORITY_UPDATE
                # HEADERS with the PRIORITY flag: exclusive on stream 0, weight 200
                frame(HEADERS, END_HEADERS | END_STREAM | 0x20, 1,
                      (0x80000000).to_bytes(4, "big") + b"\xc8" + _headers_block("/a")),
                frame(2, 0, 1, (0).to_bytes(4, "big") + b"\x01"))    # PRIORITY, stream 1
            block = _headers_block("/b") + b"\x10\x08priority\x05u=1,i"
            client.send(frame(HEADERS, END_HEADERS | END_STREAM, 5, block))
            await client.read_until(lambda: client.ended(1) and client.ended(5))
            assert client.goaway_code() is None
            assert client.reset_code(1) is None and client.reset_code(5) is None
            statuses = [f[3][:1] for f in client.frames if f[0] == HEADERS]
            assert statuses == [b"\x88", b"\x88"]   # :status 200 (static table index 8)
            assert sorted(r[0] for r in seen.requests) == ["GET /a HTTP/1.1",
                                                           "GET /b HTTP/1.1"]
            # passed on: the backend may use it (RFC 9218 is end to end)
            assert any(("priority", "u=1,i") in r[1] for r in seen.requests)
            client.close()


def _reload_config(base: dict[str, Any], hello: str, old_listener: bool) -> dict[str, Any]:
    config = dict(base)
    config["routes"] = [{"name": "hello", "match": {"path": "/hello"},
                         "fixed_response": {"body": hello}}]
    config["listeners"] = base["listeners"][:2 if old_listener else 1]
    return config


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
async def test_sighup_with_h2_streams_in_flight(tmp_path: Path, workers: int) -> None:
    """A reload (SIGHUP) while HTTP/2 streams wait on a backend: on a listener the reload
    removes, the connection gets GOAWAY naming its last stream, which still finishes, then
    the connection closes; on a listener that stays, the connection goes on and its new
    streams, as new connections, see the new configuration; no stream fails."""
    release = asyncio.Event()
    arrived: list[str] = []

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _, _ = await read_request(reader)
        arrived.append(line)
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
        await writer.drain()

    async with raw_backend(slow) as backend:
        base = proxy_config(backend)
        base["listeners"].append({"name": "old", "address": HOST, "port": free_port()})
        config = _reload_config(base, "one", True)
        daemon = DaemonProcess(config, tmp_path, extra_args=["--workers", str(workers)])
        try:
            wait_for_port(listener_port(config, 1))
            stays = await RawH2.open(listener_port(config))
            goes = await RawH2.open(listener_port(config, 1))
            kept_sid, gone_sid = stays.request("/slow"), goes.request("/slow")
            await until(lambda: len(arrived) == 2, what="both requests at the backend")
            daemon.path.write_text(yaml.safe_dump(_reload_config(base, "two", False)))
            os.kill(daemon.pid, signal.SIGHUP)

            async def hello(client: RawH2) -> bytes:
                sid = client.request("/hello")
                await client.read_until(lambda ev: client.ended(sid))
                return client.body(sid)

            async def reloaded() -> bool:
                fresh = await RawH2.open(listener_port(config))
                try:
                    return await hello(fresh) == b"two"
                finally:
                    fresh.close()
            await until(reloaded, 30, 0.2, "a new connection sees the new config")
            await goes.read_until(lambda ev: goes.goaway() is not None)
            assert goes.goaway() == GoAway(gone_sid, 0, b"")
            assert await hello(stays) == b"two"   # a new stream on the kept connection
            assert stays.goaway() is None
            release.set()
            await goes.read_until(lambda ev: goes.closed)
            assert goes.status(gone_sid) == 200 and goes.body(gone_sid) == b"slow"
            await stays.read_until(lambda ev: stays.ended(kept_sid))
            assert stays.status(kept_sid) == 200 and stays.body(kept_sid) == b"slow"
            stays.close()
            goes.close()
        finally:
            assert daemon.stop() == 0


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_count_http2_requests_apart(tmp_path: Path, workers: int) -> None:
    """/metrics: lbcdn_http_requests_total counts every request, lbcdn_http2_requests_total
    those that came over HTTP/2 (aggregated over the workers)."""
    with backend_process() as backend:
        config = proxy_config(backend.port)
        daemon = DaemonProcess(config, tmp_path, extra_args=["--workers", str(workers)])
        try:
            url = f"http://{HOST}:{listener_port(config)}/m"
            for args in (["--http2-prior-knowledge"], ["--http2-prior-knowledge"],
                         ["--http1.1"]):
                out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                      *args, url], capture_output=True, text=True, timeout=10)
                assert out.stdout == "200", out.stderr

            def counts() -> tuple[float, float]:
                with urllib.request.urlopen(
                        f"http://{HOST}:{admin_port(config)}/metrics") as r:
                    text = r.read().decode()
                found = {}
                for name in ("lbcdn_http_requests_total", "lbcdn_http2_requests_total"):
                    key = name + '{listener="web",route="default",status_class="2xx"} '
                    found[name] = sum(float(line.split()[-1]) for line in text.splitlines()
                                      if line.startswith(key))
                return found["lbcdn_http_requests_total"], found["lbcdn_http2_requests_total"]
            wait_until(lambda: counts() == (3.0, 2.0), what="3 requests, 2 of them h2")
        finally:
            assert daemon.stop() == 0


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_with_h2_streams_in_flight(tmp_path: Path, workers: int) -> None:
    """SIGTERM while an HTTP/2 stream waits on its backend: GOAWAY naming that stream, which
    still finishes; then the connection closes and the daemon exits cleanly."""
    release = asyncio.Event()
    arrived: list[str] = []

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _, _ = await read_request(reader)
        arrived.append(line)
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
        await writer.drain()

    async with raw_backend(slow) as backend:
        config = proxy_config(backend)
        daemon = DaemonProcess(config, tmp_path, extra_args=["--workers", str(workers)])
        try:
            client = await RawH2.open(listener_port(config))
            sid = client.request("/slow")
            await until(lambda: arrived, what="the request at the backend")
            daemon.proc.send_signal(signal.SIGTERM)
            await client.read_until(lambda ev: client.goaway() is not None)
            assert client.goaway() == GoAway(sid, 0, b"")
            release.set()
            await client.read_until(lambda ev: client.closed)
            assert client.status(sid) == 200 and client.body(sid) == b"slow"
            client.close()
            await until(lambda: daemon.proc.poll() is not None, 15, what="the daemon's exit")
        finally:
            assert daemon.stop() == 0, daemon.stderr()


def test_a_websocket_connect_is_the_http11_upgrade_with_a_key_of_ours() -> None:
    kinds = request_header_kinds(b"x-request-id")
    connect = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
               (b":authority", b"a.test"), (b":path", b"/chat?room=1"),
               (b"sec-websocket-version", b"13"), (b"sec-websocket-protocol", b"chat"),
               (b"sec-websocket-key", b"theirs")]
    head = request_head(connect, False, kinds)
    assert (head.method, head.host, head.target) == (b"GET", b"a.test", b"/chat?room=1")
    assert head.upgrade == b"websocket" and not head.chunked and head.content_length is None
    keys = [v for n, v in head.headers if n == b"sec-websocket-key"]
    assert len(keys) == 1 and keys[0] != b"theirs" and valid_client_key(keys[0].decode())
    assert (b"sec-websocket-protocol", b"chat") in head.headers
    assert keys != [v for n, v in request_head(connect, False, kinds).headers
                    if n == b"sec-websocket-key"]   # a fresh key each time
    for fields, status in (
            ([(b":protocol", b"connect-udp"), (b":path", b"/")], 501),
            ([(b":protocol", b"websocket"), (b":path", b"/"), (b"content-length", b"0")], 400),
            ([], 405)):   # a plain CONNECT, as over HTTP/1.1
        with pytest.raises(HttpError) as err:
            request_head([(b":method", b"CONNECT"), (b":authority", b"a:443"), *fields],
                         False, kinds)
        assert err.value.status == status
