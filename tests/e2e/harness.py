"""Starting real daemons and backends for end-to-end tests, on 127.0.0.1 with ports picked at
run time, and stopping everything that was started.

Two ways to run the daemon:
- `running_daemon(config)`: in the test's own event loop (fast; most tests);
- `DaemonProcess`: `python -m lbcdn serve` in a subprocess, for what needs a process of its own
  (signals, RSS, the CLI, real exit codes).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from lbcdn.config.load import parse_config
from lbcdn.daemon import Daemon
from lbcdn.demo.backend import bound_address, start_demo_backend

HOST = "127.0.0.1"


_RECENT_PORTS: collections.deque[int] = collections.deque(maxlen=512)


def free_port() -> int:
    """A port free now. The kernel may hand the same free port to two binds in a row, and a
    test picks several before its daemon binds any: so none of the last ports given is given
    again (two of them named in one config made the daemon refuse it)."""
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in _RECENT_PORTS:
            _RECENT_PORTS.append(port)
            return port


def proxy_config(*targets: int, **overrides: Any) -> dict[str, Any]:
    """A one-listener config forwarding everything to `targets` (ports on 127.0.0.1)."""
    config: dict[str, Any] = {
        "listeners": [{"name": "web", "address": HOST, "port": free_port()}],
        # no active health checks: edge tests count the requests their backends see
        "pools": {"app": {"targets": [f"{HOST}:{p}" for p in targets],
                          "health": {"enabled": False}}},
        "default_route": {"forward": "app"},
        "admin": {"address": HOST, "port": free_port()},
        "logging": {"level": "warning", "access_log": {"enabled": False}},
        "shutdown": {"drain_timeout_s": 5},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def listener_port(config: dict[str, Any], index: int = 0) -> int:
    return int(config["listeners"][index]["port"])


def admin_port(config: dict[str, Any]) -> int:
    return int(config["admin"]["port"])


@contextlib.asynccontextmanager
async def running_daemon(config: dict[str, Any]) -> AsyncIterator[Daemon]:
    daemon = Daemon(parse_config(config))
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


@contextlib.asynccontextmanager
async def demo_backend(name: str = "b1") -> AsyncIterator[int]:
    """A built-in demo backend in this event loop; yields its port."""
    server = await start_demo_backend(HOST, 0, name)
    try:
        yield bound_address(server)[1]
    finally:
        server.close()


# Waiting for something to happen: poll for the event itself rather than sleeping a fixed
# time. The bound is generous (a loaded CI machine is slow) and costs nothing when the event
# comes early, since the wait ends as soon as it does.

def wait_until(predicate: Callable[[], object], timeout_s: float = 10.0,
               interval_s: float = 0.02, what: str = "") -> None:
    """Block until `predicate()` is true; AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what or predicate}")
        time.sleep(interval_s)


async def until(predicate: Callable[[], object | Awaitable[object]], timeout_s: float = 10.0,
                interval_s: float = 0.02, what: str = "") -> None:
    """`wait_until` for the event loop; `predicate` may be a coroutine function (an admin API
    call, say)."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = predicate()
        if inspect.isawaitable(done):
            done = await done
        if done:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what or predicate}")
        await asyncio.sleep(interval_s)


def wait_for_port(port: int, timeout_s: float = 30.0, proc: subprocess.Popen[bytes] | None = None
                  ) -> None:
    """Until `port` accepts. 30 s: a daemon with workers imports lbcdn in three interpreters,
    which took 10-18 s on a 2-core machine busy with other tests; a daemon that exits instead
    is reported at once (`proc`)."""
    def listening() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with socket.socket() as s:
            return s.connect_ex((HOST, port)) == 0
    wait_until(listening, timeout_s, 0.05, f"something listening on {HOST}:{port}")


class DaemonProcess:
    """`python -m lbcdn serve --config FILE` in a subprocess, with its own process group."""

    def __init__(self, config: dict[str, Any], tmp: Path, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None, prefix: list[str] | None = None,
                 own_workers: bool = False, nofile: int | None = None) -> None:
        """`prefix`: a command to run it under (`taskset -c 0`); `own_workers`: no
        `--workers`, the daemon picks its count itself; `nofile`: the daemon's file descriptor
        limit (soft and hard), when not ours."""
        self.config = config
        self.path = tmp / "lbcdn.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.stderr_path = tmp / "lbcdn.stderr"
        self.stdout_path = tmp / "lbcdn.stdout"
        self._stderr = open(self.stderr_path, "wb")
        self._stdout = open(self.stdout_path, "wb")
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "lbcdn", "serve", "--config", str(self.path),
             # one process unless a test asks for workers: RSS and signals are then exact
             *([] if own_workers or "--workers" in (extra_args or []) else ["--workers", "1"]),
             *(extra_args or [])],
            stdout=self._stdout, stderr=self._stderr, start_new_session=True,
            env={**os.environ, **(env or {})},
            preexec_fn=None if nofile is None else lambda: resource.setrlimit(
                resource.RLIMIT_NOFILE, (nofile, nofile)))
        try:
            wait_for_port(listener_port(config), proc=self.proc)
        except RuntimeError as exc:  # it exited: say why, from its own log
            self.kill()
            raise RuntimeError(f"{exc}; its log ends:\n{self.stderr()[-3000:]}") from None
        except BaseException:
            self.kill()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._stderr.close()
        self._stdout.close()
        return self.proc.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._stderr.close()
        self._stdout.close()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")


class BackendProcess:
    """`python -m lbcdn demo-backend` in a subprocess (its memory is not the daemon's)."""

    def __init__(self, name: str = "b1") -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lbcdn", "demo-backend", "--address", HOST,
             "--port", str(self.port), "--name", name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for_port(self.port, proc=self.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@contextlib.contextmanager
def backend_process(name: str = "b1") -> Iterator[BackendProcess]:
    backend = BackendProcess(name)
    try:
        yield backend
    finally:
        backend.stop()


async def raw_exchange(port: int, data: bytes, *, read_timeout_s: float = 5.0,
                       half_close: bool = False) -> bytes:
    """Send raw bytes, read until the server closes (or the timeout): the wire truth."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        chunks: list[bytes] = []
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(read_timeout_s):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


# -- reading responses off a raw socket, and raw backends ----------------------------------------

class RawResponse:
    """One HTTP/1.x response as read off the wire by `read_response`."""

    def __init__(self, version: str, status: int, reason: str, headers: list[tuple[str, str]],
                 body: bytes, framing: str, interim: list[int]) -> None:
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers        # as received, in order
        self.body = body              # de-chunked when framing == "chunked"
        self.framing = framing        # "length" | "chunked" | "close" | "none"
        self.interim = interim        # statuses of the 1xx responses before this one

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def names(self) -> set[str]:
        """Lower-cased header names."""
        return {n.lower() for n, _ in self.headers}

    def __repr__(self) -> str:
        return (f"RawResponse({self.status} {self.reason!r}, {self.headers!r}, "
                f"{len(self.body)} body bytes, {self.framing})")


async def read_response(reader: asyncio.StreamReader, method: str = "GET",
                        timeout_s: float = 5.0) -> RawResponse:
    """Read exactly one response (after any 1xx) with strict framing. Raises
    asyncio.IncompleteReadError when the peer closes before the framing says the response
    ended (a truncated body), ValueError on a malformed chunk, TimeoutError when slow."""
    async with asyncio.timeout(timeout_s):
        interim: list[int] = []
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head[:-4].decode("latin-1").split("\r\n")
            version, status_text, *rest = lines[0].split(" ", 2)
            status = int(status_text)
            headers: list[tuple[str, str]] = []
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers.append((name, value.strip()))
            if 100 <= status < 200 and status != 101:
                interim.append(status)
                continue
            break
        resp = RawResponse(version, status, rest[0] if rest else "", headers, b"", "none",
                           interim)
        if method == "HEAD" or status < 200 or status in (204, 304):
            return resp
        te = resp.header("Transfer-Encoding")
        cl = resp.header("Content-Length")
        if te is not None and te.strip().lower() == "chunked":
            resp.framing = "chunked"
            parts: list[bytes] = []
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size_text = size_line[:-2].split(b";", 1)[0]
                if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
                    raise ValueError(f"bad chunk size line {size_line!r}")
                size = int(size_text, 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailer fields
                    break
                parts.append(await reader.readexactly(size))
                if await reader.readexactly(2) != b"\r\n":
                    raise ValueError("chunk data not followed by CRLF")
            resp.body = b"".join(parts)
        elif cl is not None:
            resp.framing = "length"
            resp.body = await reader.readexactly(int(cl))
        else:
            resp.framing = "close"
            resp.body = await reader.read(-1)
        return resp


async def wait_closed_by_peer(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bytes:
    """Read until EOF (the peer closed); returns what arrived meanwhile. TimeoutError when the
    peer keeps the connection open."""
    async with asyncio.timeout(timeout_s):
        return await reader.read(-1)


@contextlib.asynccontextmanager
async def raw_backend(handler: Any) -> AsyncIterator[int]:
    """A misbehaving-backend helper: an asyncio server on 127.0.0.1 running
    `await handler(reader, writer)` per connection; yields its port. Connections still open at
    the end are closed, handler tasks cancelled."""
    tasks: set[asyncio.Task[Any]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        writers.add(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writers.discard(writer)
            tasks.discard(task)
            writer.close()

    # a backlog past asyncio's 100: a burst of connects beyond it loses SYNs, retried a second
    # later, which a test would take for the daemon's delay
    server = await asyncio.start_server(on_connect, HOST, 0, backlog=1024)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for writer in list(writers):
            writer.transport.abort()
        for task in list(tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


async def read_request(reader: asyncio.StreamReader, timeout_s: float = 5.0
                       ) -> tuple[str, list[tuple[str, str]], bytes]:
    """For raw backends: one request (line, headers, body de-chunked). IncompleteReadError
    when the peer closes first."""
    async with asyncio.timeout(timeout_s):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        headers = [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
        values = {n.lower(): v for n, v in headers}
        body = b""
        if values.get("transfer-encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while size := int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16):
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            body = b"".join(parts)
        elif "content-length" in values:
            body = await reader.readexactly(int(values["content-length"]))
        return lines[0], headers, body


class RawResult:
    """What `raw_request` saw: the bytes, and whether the server closed (EOF or reset) before
    the timeout."""

    def __init__(self, data: bytes, closed: bool, reset: bool, elapsed_s: float) -> None:
        self.data = data
        self.closed = closed
        self.reset = reset
        self.elapsed_s = elapsed_s

    def __repr__(self) -> str:
        return (f"RawResult(closed={self.closed}, reset={self.reset}, "
                f"elapsed_s={self.elapsed_s:.2f}, data={self.data[:400]!r})")


async def raw_request(port: int, data: bytes, *, read_timeout_s: float = 5.0) -> RawResult:
    """Like `raw_exchange`, but also tells whether the server closed the connection."""
    reader, writer = await asyncio.open_connection(HOST, port)
    started = time.monotonic()
    chunks: list[bytes] = []
    closed = reset = False
    try:
        writer.write(data)
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(read_timeout_s):
                try:
                    await writer.drain()
                    while chunk := await reader.read(65536):
                        chunks.append(chunk)
                    closed = True
                except (ConnectionResetError, BrokenPipeError):
                    closed = reset = True
        return RawResult(b"".join(chunks), closed, reset, time.monotonic() - started)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class ParsedResponse:
    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                 body: bytes, raw_head: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.raw_head = raw_head

    def header(self, name: str) -> bytes | None:
        """The last value of `name`, or None."""
        values = self.header_list(name)
        return values[-1] if values else None

    def header_list(self, name: str) -> list[bytes]:
        n = name.lower().encode()
        return [v for k, v in self.headers if k.lower() == n]

    def __repr__(self) -> str:
        return f"ParsedResponse({self.status}, {self.headers!r}, {self.body[:200]!r})"


class IncompleteResponse(Exception):
    """The bytes end before the response does (a truncated body or head)."""


def parse_responses(data: bytes, head_requests: set[int] = frozenset()  # type: ignore[assignment]
                    ) -> list[ParsedResponse]:
    """Split HTTP/1.1 response bytes into responses, framed the way a client must (interim
    1xx, 204/304, HEAD by index in `head_requests` of final responses, Content-Length, chunked,
    read-until-close). Raises IncompleteResponse when the data ends inside a framed message."""
    out: list[ParsedResponse] = []
    finals = 0
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            raise IncompleteResponse(data[pos:pos + 200])
        raw_head = data[pos:end + 4]
        lines = data[pos:end].split(b"\r\n")
        version, status_s, *rest = lines[0].split(b" ", 2)
        if not version.startswith(b"HTTP/1.") or not status_s.isdigit():
            raise ValueError(f"bad status line {lines[0]!r}")
        status = int(status_s)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name, value.strip(b" \t")))
        pos = end + 4
        names = {k.lower(): v for k, v in headers}
        if 100 <= status < 200 and status != 101:
            out.append(ParsedResponse(status, rest[0] if rest else b"", headers, b"", raw_head))
            continue
        if status in (101, 204, 304) or finals in head_requests:
            body = b""
        elif b"transfer-encoding" in names:
            parts = []
            while True:
                line_end = data.find(b"\r\n", pos)
                if line_end < 0:
                    raise IncompleteResponse(data[pos:pos + 200])
                size = int(data[pos:line_end].split(b";")[0], 16)
                pos = line_end + 2
                if size == 0:
                    trailer_end = data.find(b"\r\n", pos)
                    while trailer_end != pos:
                        if trailer_end < 0:
                            raise IncompleteResponse(data[pos:pos + 200])
                        pos = trailer_end + 2
                        trailer_end = data.find(b"\r\n", pos)
                    pos += 2
                    break
                if len(data) < pos + size + 2:
                    raise IncompleteResponse(data[pos:pos + 200])
                parts.append(data[pos:pos + size])
                if data[pos + size:pos + size + 2] != b"\r\n":
                    raise ValueError("chunk data not followed by CRLF")
                pos += size + 2
            body = b"".join(parts)
        elif b"content-length" in names:
            n = int(names[b"content-length"])
            if len(data) < pos + n:
                raise IncompleteResponse(data[pos:pos + 200])
            body = data[pos:pos + n]
            pos += n
        else:
            body = data[pos:]
            pos = len(data)
        out.append(ParsedResponse(status, rest[0] if rest else b"", headers, body, raw_head))
        finals += 1
    return out


class RawClient:
    """One client connection speaking raw HTTP/1.x, for exact requests and exact reading:
    `await RawClient.open(port)`, `await c.request(...)` -> RawResponse, `await c.close()`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, timeout_s: float = 5.0, source: str | None = None
                   ) -> RawClient:
        """source: the client's own address (another loopback address, say)."""
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                HOST, port, local_addr=(source, 0) if source is not None else None)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, method: str = "GET", target: str = "/",
                      headers: list[tuple[str, str]] | None = None, body: bytes = b"",
                      version: str = "1.1", host: str | None = "test.local",
                      timeout_s: float = 5.0) -> RawResponse:
        """Send one request (Host first unless `host` is None; Content-Length added for a
        body unless `headers` frame it) and read its response."""
        lines = [f"{method} {target} HTTP/{version}"]
        if host is not None:
            lines.append(f"Host: {host}")
        given = [(n, v) for n, v in (headers or [])]
        names = {n.lower() for n, _ in given}
        if body and "content-length" not in names and "transfer-encoding" not in names:
            given.append(("Content-Length", str(len(body))))
        lines += [f"{n}: {v}" for n, v in given]
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return await read_response(self.reader, method, timeout_s)

    async def response(self, method: str = "GET", timeout_s: float = 5.0) -> RawResponse:
        return await read_response(self.reader, method, timeout_s)

    async def closed_by_peer(self, timeout_s: float = 2.0) -> bool:
        """True when the peer closes (EOF or reset) within the time, with no stray bytes."""
        try:
            data = await wait_closed_by_peer(self.reader, timeout_s)
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        if data:
            raise AssertionError(f"bytes after the response: {data[:200]!r}")
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def raw_client(port: int, source: str | None = None) -> AsyncIterator[RawClient]:
    """`async with raw_client(port) as c:` a RawClient, closed at the end."""
    c = await RawClient.open(port, source=source)
    try:
        yield c
    finally:
        await c.close()
