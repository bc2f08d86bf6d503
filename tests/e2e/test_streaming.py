"""Bodies stream through the proxy with back-pressure, and `Expect: 100-continue` works.

The big transfers run the daemon and the backend in processes of their own, so the daemon's
VmRSS is its own memory: a 1 GiB download and a 1 GiB upload (Content-Length and chunked) may
grow it by less than 100 MiB (issue 2), and so may a client that stops reading for a second in
the middle of a 256 MiB download (the upstream must be paused, not buffered). Clients here are
plain blocking sockets, so the test process itself never buffers a body either.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (HOST, DaemonProcess, backend_process, demo_backend, listener_port,
                               proxy_config, running_daemon, until)

PATTERN = b"0123456789abcdef"
MIB = 1 << 20
GIB = 1 << 30
RSS_GROWTH_MAX_KIB = 100 * 1024
# 1 MiB of the pattern, in phase at offset 0; reads are compared against slices of it.
PATTERN_MIB = PATTERN * (MIB // len(PATTERN))
PATTERN_LONG = PATTERN * ((2 * MIB) // len(PATTERN))
TRANSFER_DEADLINE_S = 60.0


# -- helpers -----------------------------------------------------------------------------

class RssSampler:
    """Samples a process's VmRSS every few milliseconds in a thread; keeps the maximum."""

    def __init__(self, daemon: DaemonProcess, interval_s: float = 0.02) -> None:
        self.daemon = daemon
        self.interval_s = interval_s
        self.baseline_kib = daemon.rss_kib()
        self.max_kib = self.baseline_kib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.max_kib = max(self.max_kib, self.daemon.rss_kib())
            self._stop.wait(self.interval_s)

    def growth_kib(self) -> int:
        return self.max_kib - self.baseline_kib

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(Exception):
            self.max_kib = max(self.max_kib, self.daemon.rss_kib())


def connect(port: int, timeout_s: float = 10.0) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one response head; returns (status, headers lower-cased, bytes read past it)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed inside the response head: {buf!r}")
        buf += chunk
        assert len(buf) < 65536 or b"\r\n\r\n" in buf, buf[:200]
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def read_exact(sock: socket.socket, n: int, rest: bytes = b"") -> bytes:
    buf = bytearray(rest)
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise AssertionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    assert len(buf) == n, f"read {len(buf)} bytes, expected {n}"
    return bytes(buf)


def read_json_response(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    status, headers, rest = read_head(sock)
    body = read_exact(sock, int(headers["content-length"]), rest)
    return status, headers, json.loads(body)


class PatternChecker:
    """Counts body bytes and checks they continue the /bytes pattern. Every read's first and
    last 16 bytes are checked (a lost or repeated run of bytes shifts the phase), and every
    32nd read completely."""

    def __init__(self) -> None:
        self.total = 0
        self.reads = 0

    def feed(self, data: memoryview) -> None:
        n = len(data)
        if n == 0:
            return
        phase = self.total % 16
        self.reads += 1
        if self.reads % 32 == 0 and n <= MIB:
            ok = data == memoryview(PATTERN_LONG)[phase:phase + n]
        else:
            head = min(16, n)
            tail_phase = (self.total + n - head) % 16
            ok = (data[:head] == PATTERN_LONG[phase:phase + head]
                  and data[n - head:] == PATTERN_LONG[tail_phase:tail_phase + head])
        assert ok, f"body differs from the pattern within bytes {self.total}..{self.total + n}"
        self.total += n


def read_pattern_body(sock: socket.socket, n: int, rest: bytes,
                      checker: PatternChecker | None = None) -> PatternChecker:
    checker = checker or PatternChecker()
    checker.feed(memoryview(rest))
    buf = bytearray(MIB)
    view = memoryview(buf)
    deadline = time.monotonic() + TRANSFER_DEADLINE_S
    while checker.total < n:
        got = sock.recv_into(view, min(MIB, n - checker.total))
        if got == 0:
            raise AssertionError(f"connection closed after {checker.total} of {n} body bytes")
        checker.feed(view[:got])
        assert time.monotonic() < deadline, "transfer too slow"
    assert checker.total == n
    return checker


def read_chunked_pattern_body(sock: socket.socket, rest: bytes) -> int:
    """Read a chunked body to its last chunk, checking the framing strictly and the data
    against the pattern; returns the data byte count. Nothing may follow the last chunk."""
    checker = PatternChecker()
    buf = bytearray(rest)
    deadline = time.monotonic() + TRANSFER_DEADLINE_S
    while True:
        while b"\r\n" not in buf:
            chunk = sock.recv(MIB)
            assert chunk, "connection closed inside a chunk size line"
            buf += chunk
        line, _, after = bytes(buf).partition(b"\r\n")
        assert line and all(c in b"0123456789abcdef" for c in line), line[:40]
        size = int(line, 16)
        body = read_exact(sock, size + 2, after[:size + 2])
        assert body[size:] == b"\r\n"
        buf = bytearray(after[size + 2:])
        if size == 0:
            assert buf == b""
            return checker.total
        checker.feed(memoryview(body)[:size])
        assert time.monotonic() < deadline, "transfer too slow"


def report(what: str, nbytes: int, elapsed: float, sampler: RssSampler) -> None:
    print(f"\n{what}: {nbytes / MIB:.0f} MiB in {elapsed:.2f} s = "
          f"{nbytes / MIB / elapsed:.0f} MiB/s; daemon RSS {sampler.baseline_kib // 1024} MiB "
          f"-> max {sampler.max_kib // 1024} MiB (+{sampler.growth_kib() / 1024:.1f} MiB)")


def assert_keep_alive_works(sock: socket.socket) -> None:
    """After a big body, the same client connection answers another request."""
    sock.sendall(b"GET /count HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, body = read_json_response(sock)
    assert status == 200
    assert headers["x-backend"] == "b1"
    assert body["requests"] >= 2


# -- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def proxy_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon process in front of a demo backend process, shared by the big transfers."""
    with backend_process("b1") as backend:
        config = proxy_config(backend.port, logging={"level": "warning",
                                                     "access_log": {"enabled": False}})
        daemon = DaemonProcess(config, tmp_path_factory.mktemp("streaming"))
        try:
            # Warm up: first requests import lazily and allocate buffers once.
            with connect(listener_port(config)) as sock:
                sock.sendall(b"GET /bytes/4194304 HTTP/1.1\r\nHost: t\r\n\r\n")
                status, headers, rest = read_head(sock)
                assert status == 200
                read_pattern_body(sock, 4 * MIB, rest)
            yield daemon
        finally:
            code = daemon.stop()
            assert code == 0, daemon.stderr()


# -- 1 GiB through the proxy -------------------------------------------------------------

@pytest.mark.slow
def test_download_1gib_streams_with_bounded_rss(proxy_process: DaemonProcess) -> None:
    port = listener_port(proxy_process.config)
    with connect(port) as sock, RssSampler(proxy_process) as sampler:
        start = time.monotonic()
        sock.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: t\r\n\r\n" % GIB)
        status, headers, rest = read_head(sock)
        assert status == 200
        assert headers["content-length"] == str(GIB)
        assert "transfer-encoding" not in headers
        checker = read_pattern_body(sock, GIB, rest)
        elapsed = time.monotonic() - start
        assert checker.total == GIB
        assert_keep_alive_works(sock)
    report("download", GIB, elapsed, sampler)
    assert sampler.growth_kib() < RSS_GROWTH_MAX_KIB, sampler.growth_kib()


@pytest.mark.slow
def test_chunked_download_256mib_is_rechunked_with_bounded_rss(
        proxy_process: DaemonProcess) -> None:
    """A chunked backend body reaches an HTTP/1.1 client chunked: sizes in hex, CRLFs, the
    last chunk; the data bytes are exactly the backend's."""
    port = listener_port(proxy_process.config)
    n = 256 * MIB
    with connect(port) as sock, RssSampler(proxy_process) as sampler:
        sock.sendall(b"GET /bytes/%d?chunked=1 HTTP/1.1\r\nHost: t\r\n\r\n" % n)
        status, headers, rest = read_head(sock)
        assert status == 200
        assert headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in headers
        assert read_chunked_pattern_body(sock, rest) == n
        assert_keep_alive_works(sock)
    assert sampler.growth_kib() < RSS_GROWTH_MAX_KIB, sampler.growth_kib()


def _send_pattern(sock: socket.socket, n: int, *, chunked: bool) -> None:
    view = memoryview(PATTERN_MIB)
    sent = 0
    while sent < n:
        size = min(MIB, n - sent)
        if chunked:
            sock.sendall(b"%x\r\n" % size)
            sock.sendall(view[:size])
            sock.sendall(b"\r\n")
        else:
            sock.sendall(view[:size])
        sent += size
    if chunked:
        sock.sendall(b"0\r\n\r\n")


@pytest.mark.slow
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_upload_1gib_streams_with_bounded_rss(proxy_process: DaemonProcess,
                                              chunked: bool) -> None:
    port = listener_port(proxy_process.config)
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % GIB
    with connect(port, timeout_s=20) as sock, RssSampler(proxy_process) as sampler:
        start = time.monotonic()
        sock.sendall(b"POST /sink HTTP/1.1\r\nHost: t\r\n" + framing + b"\r\n\r\n")
        _send_pattern(sock, GIB, chunked=chunked)
        status, headers, body = read_json_response(sock)
        elapsed = time.monotonic() - start
        assert status == 200, body
        assert headers["x-backend"] == "b1"
        assert body["body_bytes"] == GIB
        assert_keep_alive_works(sock)
    report(f"upload ({'chunked' if chunked else 'content-length'})", GIB, elapsed, sampler)
    assert sampler.growth_kib() < RSS_GROWTH_MAX_KIB, sampler.growth_kib()


@pytest.mark.slow
def test_slow_reader_pauses_upstream_and_rss_stays_bounded(
        proxy_process: DaemonProcess) -> None:
    """The client reads nothing for a second in the middle of 256 MiB: the daemon must stop
    reading from the backend rather than buffer what the backend can send meanwhile."""
    port = listener_port(proxy_process.config)
    n = 256 * MIB
    with connect(port) as sock, RssSampler(proxy_process) as sampler:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        sock.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: t\r\n\r\n" % n)
        status, headers, rest = read_head(sock)
        assert status == 200
        assert headers["content-length"] == str(n)
        checker = PatternChecker()
        checker.feed(memoryview(rest))
        # a first part at full speed, then a stall
        first = read_exact(sock, 8 * MIB - len(rest))
        checker.feed(memoryview(first))
        time.sleep(1.0)
        paused_growth = sampler.max_kib - sampler.baseline_kib
        read_pattern_body(sock, n, b"", checker)
        assert checker.total == n
        assert_keep_alive_works(sock)
    print(f"\nslow reader: RSS growth during the 1 s stall {paused_growth / 1024:.1f} MiB, "
          f"overall {sampler.growth_kib() / 1024:.1f} MiB")
    assert paused_growth < RSS_GROWTH_MAX_KIB, paused_growth
    assert sampler.growth_kib() < RSS_GROWTH_MAX_KIB, sampler.growth_kib()


@pytest.mark.slow
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_full_duplex_echo_256mib(proxy_process: DaemonProcess, chunked: bool) -> None:
    """/echo answers while the body is still arriving: the client sends and reads at the same
    time, and the daemon must keep both directions moving without buffering either."""
    port = listener_port(proxy_process.config)
    n = 256 * MIB
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % n
    errors: list[BaseException] = []
    with connect(port, timeout_s=20) as sock, RssSampler(proxy_process) as sampler:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\n" + framing + b"\r\n\r\n")

        def send_body() -> None:
            try:
                _send_pattern(sock, n, chunked=chunked)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        status, headers, rest = read_head(sock)
        assert status == 200
        if chunked:
            assert headers.get("transfer-encoding") == "chunked"
            assert read_chunked_pattern_body(sock, rest) == n
        else:
            assert headers["content-length"] == str(n)
            read_pattern_body(sock, n, rest)
        sender.join(20)
        assert not sender.is_alive()
        assert not errors, errors
        assert_keep_alive_works(sock)
    assert sampler.growth_kib() < RSS_GROWTH_MAX_KIB, sampler.growth_kib()


async def test_client_leaving_mid_download_closes_the_upstream_connection() -> None:
    """A client that disconnects during a big response: the backend connection is closed
    (not returned to the pool half-read, not left streaming into nowhere)."""
    async with demo_backend() as backend_port:
        config = proxy_config(backend_port)
        async with running_daemon(config) as daemon:
            reader, writer = await asyncio.open_connection(HOST, listener_port(config))
            writer.write(b"GET /bytes/%d HTTP/1.1\r\nHost: t\r\n\r\n" % GIB)
            async with asyncio.timeout(5):
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(MIB)
            writer.transport.abort()
            pool = daemon.pools["app"]
            await until(lambda: (pool.details()["targets"][0]["open_connections"],
                                 pool.details()["targets"][0]["in_flight"]) == (0, 0),
                        timeout_s=3)
            assert pool.details()["targets"][0]["idle_connections"] == 0
            # and the daemon still serves
            reader, writer = await asyncio.open_connection(HOST, listener_port(config))
            writer.write(b"GET /status/200 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            async with asyncio.timeout(3):
                data = await reader.read(-1)
            writer.close()
            assert data.startswith(b"HTTP/1.1 200 "), data


# -- curl, a real client -----------------------------------------------------------------

def test_curl_download_and_upload(proxy_process: DaemonProcess, tmp_path: Path) -> None:
    port = listener_port(proxy_process.config)
    n = 8 * MIB + 5
    out = tmp_path / "download.bin"
    result = subprocess.run(
        ["curl", "-s", "-o", str(out), "-w", "%{http_code} %{size_download}",
         f"http://{HOST}:{port}/bytes/{n}?chunked=1"],
        capture_output=True, text=True, timeout=30)
    assert result.stdout == f"200 {n}", result.stderr
    data = out.read_bytes()
    assert len(data) == n
    assert data == (PATTERN * (n // 16 + 1))[:n]

    result = subprocess.run(
        ["curl", "-s", "--data-binary", f"@{out}", "-H", "Content-Type: application/octet-stream",
         "-w", "\n%{http_code}", f"http://{HOST}:{port}/sink"],
        capture_output=True, text=True, timeout=30)
    body, _, code = result.stdout.rpartition("\n")
    assert code == "200", result.stdout[-500:]
    assert json.loads(body) == {"body_bytes": n, "sha256": hashlib.sha256(data).hexdigest()}

    # curl sends `Expect: 100-continue` for big uploads by itself; -H forces it on a small one
    result = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
         "-H", "Expect: 100-continue", "--data-binary", "x" * 5000,
         f"http://{HOST}:{port}/sink"],
        capture_output=True, text=True, timeout=30)
    code, _, total = result.stdout.partition(" ")
    assert code == "200"
    # curl waits 1 s for a 100 before sending anyway: the 100 must have come through
    assert float(total) < 0.9, result.stdout


# -- Expect: 100-continue (in-process) ---------------------------------------------------

async def _read_until(reader: asyncio.StreamReader, marker: bytes, timeout_s: float = 3.0
                      ) -> bytes:
    async with asyncio.timeout(timeout_s):
        return await reader.readuntil(marker)


async def test_expect_100_continue_passes_the_backend_100_then_the_body() -> None:
    async with demo_backend() as backend_port:
        config = proxy_config(backend_port)
        async with running_daemon(config):
            reader, writer = await asyncio.open_connection(HOST, listener_port(config))
            try:
                body = bytes(range(256)) * 400
                writer.write(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n"
                             b"Expect: 100-continue\r\n\r\n" % len(body))
                await writer.drain()
                interim = await _read_until(reader, b"\r\n\r\n")
                assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
                writer.write(body)
                await writer.drain()
                head = await _read_until(reader, b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 "), head
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                async with asyncio.timeout(3):
                    answer = json.loads(await reader.readexactly(length))
                assert answer == {"body_bytes": len(body),
                                  "sha256": hashlib.sha256(body).hexdigest()}
            finally:
                writer.close()


async def test_expect_100_continue_too_large_gets_413_without_100() -> None:
    async with demo_backend() as backend_port:
        config = proxy_config(backend_port, routes=[
            {"name": "small", "match": {"path_prefix": "/sink"}, "forward": "app",
             "max_body_bytes": 1000}])
        port = listener_port(config)
        async with running_daemon(config):
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                writer.write(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n"
                             b"Expect: 100-continue\r\n\r\n")
                await writer.drain()
                # the body is never sent: the answer must come without it
                head = await _read_until(reader, b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 413 "), head
                assert b"100 Continue" not in head
                lower = head.lower()
                length = int(lower.split(b"content-length: ")[1].split(b"\r\n")[0])
                async with asyncio.timeout(3):
                    await reader.readexactly(length)
                # the client will not send the announced body: the connection cannot go on
                assert b"connection: close" in lower
                async with asyncio.timeout(3):
                    assert await reader.read() == b""
            finally:
                writer.close()
            # the backend never saw the request: /count counts only itself
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                writer.write(b"GET /count HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                async with asyncio.timeout(3):
                    data = await reader.read()
                assert data.startswith(b"HTTP/1.1 200 "), data
                assert json.loads(data.partition(b"\r\n\r\n")[2]) == {"requests": 1}
            finally:
                writer.close()


async def test_expect_100_continue_from_http10_client_gets_no_100() -> None:
    """RFC 9110 15.2: no 1xx to an HTTP/1.0 client; it sends its body without waiting."""
    async with demo_backend() as backend_port:
        config = proxy_config(backend_port)
        async with running_daemon(config):
            reader, writer = await asyncio.open_connection(HOST, listener_port(config))
            try:
                writer.write(b"POST /sink HTTP/1.0\r\nHost: t\r\nContent-Length: 5\r\n"
                             b"Expect: 100-continue\r\n\r\nhello")
                await writer.drain()
                async with asyncio.timeout(3):
                    data = await reader.read()
                assert data.startswith(b"HTTP/1.1 200 "), data
                assert b" 100 " not in data.split(b"\r\n")[0]
                assert data.count(b"HTTP/1.") == 1
                assert json.loads(data.partition(b"\r\n\r\n")[2])["body_bytes"] == 5
            finally:
                writer.close()

