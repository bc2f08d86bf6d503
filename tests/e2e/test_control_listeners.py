"""The control process's listeners (admin API, S3 API, bucket website) hold their clients to the
edge's rules: slowloris heads are closed at the header timeout, oversized heads get 414/431 and
one short log line (never a traceback), unfinished heads cannot grow the process, a connection
flood is refused clearly while the rest keeps working and descriptors stay free, and a client
leaving in the middle of an S3 GET or upload is not logged (a stalled upload is cut, and so is
a response left unread). Real daemons, in one process and with
`--workers 2` (where these listeners live in the control process)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials

from tests.e2e.harness import HOST, DaemonProcess, free_port, proxy_config, until, wait_for_port

WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "workers-2"])

HEADER_TIMEOUT_S = 1.0
NAMES = ("admin", "s3", "website")
PATHS = {"admin": "/healthz", "s3": "/", "website": "/"}


def control_config(tmp: Path, limits: dict[str, Any] | None = None) -> dict[str, Any]:
    s3, web = free_port(), free_port()
    limits = {"header_timeout_s": HEADER_TIMEOUT_S, **(limits or {})}
    config = proxy_config(web, admin={"limits": limits},
                          logging={"level": "info", "access_log": {"enabled": False}})
    # the edge listener is unused here: in one process its descriptors would be fitted with
    # these listeners' (lbcdn.control.connection_caps) and lower their caps
    config["listeners"][0]["max_connections"] = 1
    config["pools"]["site"] = {"targets": [f"{HOST}:{web}"],
                               "health": {"interval_s": 0.5, "timeout_s": 0.4, "path": "/",
                                          "host": "site.localhost"}}
    config["buckets"] = {
        "root": str(tmp / "buckets"), "port": s3, "website_port": web, "limits": limits,
        "users": {"u": {"access_key_id": "AKIDEXAMPLE1", "secret_access_key": "s3cr3t",
                        "admin": True}},
        "buckets": {"site": {"owner": "u", "public_read": True, "website": {
            "index_document": "index.html", "hosts": ["site.localhost"]}}}}
    return config


def ports_of(config: dict[str, Any]) -> dict[str, int]:
    return {"admin": config["admin"]["port"], "s3": config["buckets"]["port"],
            "website": config["buckets"]["website_port"]}


@contextlib.contextmanager
def control_daemon(tmp: Path, workers: int, limits: dict[str, Any] | None = None,
                   nofile: int | None = None) -> Iterator[tuple[DaemonProcess, dict[str, int]]]:
    config = control_config(tmp, limits)
    daemon = DaemonProcess(config, tmp, ["--workers", str(workers)], nofile=nofile)
    try:
        ports = ports_of(config)
        for port in ports.values():
            wait_for_port(port, proc=daemon.proc)
        s3 = boto3.client("s3", endpoint_url=f"http://{HOST}:{ports['s3']}",
                          aws_access_key_id="AKIDEXAMPLE1", aws_secret_access_key="s3cr3t",
                          region_name="us-east-1",
                          config=BotoConfig(s3={"addressing_style": "path"}))
        s3.put_object(Bucket="site", Key="index.html", Body=b"<h1>hi</h1>")
        s3.put_object(Bucket="site", Key="big.bin", Body=os.urandom(8 << 20))
        yield daemon, ports
    finally:
        daemon.stop()


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def status_of(port: int, name: str, timeout_s: float = 5.0) -> int:
    """A normal client's request on a fresh connection: the status it gets."""
    host = b"site.localhost" if name == "website" else b"x"
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (
            PATHS[name].encode(), host))
        async with asyncio.timeout(timeout_s):
            line = await reader.readline()
        return int(line.split()[1])
    finally:
        writer.close()


async def exchange(port: int, data: bytes, timeout_s: float = 5.0) -> bytes:
    """Send `data`, read until the server closes; what arrived (reset: what arrived before)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    chunks: list[bytes] = []
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            async with asyncio.timeout(timeout_s):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


async def slowloris(port: int, stop: asyncio.Event, trickling: asyncio.Event
                    ) -> tuple[bytes, float]:
    """A head trickled a line every 0.1 s (`trickling` is set once the first lines are out);
    what the server answered and when it closed."""
    reader, writer = await asyncio.open_connection(HOST, port)
    started = time.monotonic()

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            while not stop.is_set():
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
                trickling.set()
                await asyncio.sleep(0.1)

    task = asyncio.create_task(trickle())
    try:
        async with asyncio.timeout(HEADER_TIMEOUT_S + 4):
            data = await reader.read(-1)
        return data, time.monotonic() - started
    finally:
        task.cancel()
        writer.close()


@pytest.mark.slow
@WORKERS
async def test_slowloris_head_is_closed_at_the_header_timeout(tmp_path: Path,
                                                              workers: int) -> None:
    with control_daemon(tmp_path, workers) as (_, ports):
        stop = asyncio.Event()
        trickling = {name: asyncio.Event() for name in NAMES}
        slow = [asyncio.create_task(slowloris(ports[name], stop, trickling[name]))
                for name in NAMES]
        async with asyncio.timeout(10):
            for event in trickling.values():
                await event.wait()
        # meanwhile normal clients get answers on every listener
        assert [await status_of(ports[name], name) for name in NAMES] == [200, 403, 200]
        results = await asyncio.gather(*slow)
        stop.set()
        for name, (data, elapsed) in zip(NAMES, results):
            assert data.startswith(b"HTTP/1.1 408 "), (name, data[:200])
            assert HEADER_TIMEOUT_S * 0.8 < elapsed < HEADER_TIMEOUT_S + 2.5, (name, elapsed)


BAD_HEADS = [
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150))
     + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 4000)
                                                 for i in range(12)) + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 400),
]


@pytest.mark.slow
@WORKERS
async def test_bad_heads_get_the_edges_statuses_and_at_most_a_short_log_line(
        tmp_path: Path, workers: int) -> None:
    with control_daemon(tmp_path, workers) as (daemon, ports):
        logged = len(daemon.stderr())
        sent = 0
        for name in NAMES:
            for _ in range(10):
                for head, status in BAD_HEADS:
                    data = await exchange(ports[name], head)
                    sent += 1
                    assert data.startswith(b"HTTP/1.1 %d " % status), (name, head[:40], data)
                    if name == "admin":   # the admin API's error shape
                        assert b"application/json" in data and b'{"error": ' in data
            assert await status_of(ports[name], name) in (200, 403)
        new = daemon.stderr()[logged:]
        assert "Traceback" not in new and "Error handling request" not in new, new[:3000]
        lines = [line for line in new.splitlines() if "listener:" in line]
        # one line per listener, and one more per listener if the run crossed 10 s
        assert len(lines) <= 2 * len(NAMES), new
        assert len(new) <= 300 * 2 * len(NAMES) + 500, (sent, len(new), new)
        assert all(len(line) < 300 for line in lines), lines


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def _unfinished_head(port: int, header_bytes: int, hold: asyncio.Event) -> bytes:
    """A head of `header_bytes` in 6,000-byte headers, never ended; held until `hold`."""
    reader, writer = await asyncio.open_connection(HOST, port)
    data = b""
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            for i in range(header_bytes // 6000):
                writer.write(b"X-%d: %s\r\n" % (i, b"v" * 5990))
                await writer.drain()
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(0.5):
                    data = await reader.read(65536)
            await hold.wait()
        return data
    finally:
        writer.close()


@pytest.mark.slow
@WORKERS
async def test_unfinished_heads_do_not_grow_the_control_process(tmp_path: Path,
                                                                workers: int) -> None:
    count = 200
    with control_daemon(tmp_path, workers, {"header_timeout_s": 30}) as (daemon, ports):
        assert await status_of(ports["website"], "website") == 200
        before = _rss_kib(daemon.pid)
        for head_bytes in (24_000, 800_000):   # within the limit and held; far over it
            hold = asyncio.Event()
            clients = [asyncio.create_task(_unfinished_head(ports["website"], head_bytes, hold))
                       for _ in range(count)]
            await asyncio.sleep(3)
            during = _rss_kib(daemon.pid)
            hold.set()
            answers = await asyncio.gather(*clients)
            print(f"{count} unfinished heads of {head_bytes} bytes: RSS {before} KiB -> "
                  f"{during} KiB")
            if head_bytes > 40_000:   # 431, unless the reset after it came first
                assert all(a.startswith(b"HTTP/1.1 431 ") or a == b"" for a in answers)
            assert during - before < 64 * 1024, (head_bytes, before, during)
        assert await status_of(ports["website"], "website") == 200
        await asyncio.sleep(1)
        print(f"after they closed: RSS {_rss_kib(daemon.pid)} KiB")


NOFILE = 600


async def _healthy(daemon: DaemonProcess) -> None:
    """Wait for the `site` pool's target (the website port) to pass its health checks."""
    await until(lambda: "-> healthy" in daemon.stderr(), interval_s=0.1, what="`site` healthy")


@pytest.mark.slow
@WORKERS
async def test_a_connection_flood_is_refused_clearly_and_leaves_descriptors(
        tmp_path: Path, workers: int) -> None:
    with control_daemon(tmp_path, workers, {"header_timeout_s": 3},
                        nofile=NOFILE) as (daemon, ports):
        web = ports["website"]
        await _healthy(daemon)
        logged = len(daemon.stderr())
        # idle connections (nothing sent) make room for a client that sends a request
        idle = [await asyncio.open_connection(HOST, web) for _ in range(300)]
        await asyncio.sleep(1.2)   # idle for a second, a connection may make room
        assert await status_of(web, "website") == 200
        assert fds(daemon.pid) < NOFILE - 200
        for _, writer in idle:
            writer.close()
        await asyncio.sleep(1)   # two health checks of the `site` pool (the website port)
        assert "-> unhealthy" not in daemon.stderr()[logged:]
        # heads in progress keep their places: past the cap, 503 with Retry-After
        hold = asyncio.Event()
        flood = [asyncio.create_task(_unfinished_head(web, 100, hold)) for _ in range(34)]
        await asyncio.sleep(0.7)
        refusal = await exchange(web, b"GET / HTTP/1.1\r\nHost: site.localhost\r\n\r\n")
        assert refusal.startswith(b"HTTP/1.1 503 "), refusal
        assert b"\r\nRetry-After: 1\r\n" in refusal
        # the other listeners, health checks and descriptors are untouched
        assert await status_of(ports["admin"], "admin") == 200
        assert await status_of(ports["s3"], "s3") == 403
        assert fds(daemon.pid) < NOFILE - 200
        hold.set()
        answers = await asyncio.gather(*flood)
        assert sum(a.startswith(b"HTTP/1.1 503 ") for a in answers) >= 9   # 34 - 24 (- 1)
        await asyncio.sleep(3)
        assert await status_of(web, "website") == 200
        new = daemon.stderr()
        assert "Traceback" not in new
        assert len([line for line in new.splitlines() if "refusing more" in line]) <= 2
        # the caps were fitted under the descriptor limit (24 of 1024 each, with NOFILE 600)
        assert "website listener: max_connections lowered from 1024 to 24" in new


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _signed_put_head(port: int, key: str, length: int) -> bytes:
    host = f"{HOST}:{port}"
    req = AWSRequest(method="PUT", url=f"http://{host}/site/{key}", headers={
        "Host": host, "Content-Length": str(length), "x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    SigV4Auth(Credentials("AKIDEXAMPLE1", "s3cr3t"), "s3", "us-east-1").add_auth(req)
    return (f"PUT /site/{key} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in req.headers.items()) + "\r\n").encode()


@pytest.mark.slow
@WORKERS
async def test_a_client_leaving_mid_s3_get_or_put_is_not_logged(tmp_path: Path,
                                                                workers: int) -> None:
    with control_daemon(tmp_path, workers, {"body_timeout_s": 1}) as (daemon, ports):
        logged = len(daemon.stderr())
        for _ in range(20):
            reader, writer = await asyncio.open_connection(HOST, ports["s3"])
            writer.write(b"GET /site/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readexactly(256 * 1024)
            _reset(writer)
        # an upload that goes away, and one that stalls (cut at the body timeout)
        for stall in (False, True):
            reader, writer = await asyncio.open_connection(HOST, ports["s3"])
            writer.write(_signed_put_head(ports["s3"], "up.bin", 1 << 20) + b"x" * 100_000)
            await writer.drain()
            await asyncio.sleep(0.3)
            if stall:
                started = time.monotonic()
                assert await asyncio.wait_for(reader.read(-1), 5) == b""
                assert time.monotonic() - started < 3
            else:
                _reset(writer)
        await until(lambda: "timed out reading the request body" in daemon.stderr()[logged:],
                    what="the stalled upload's log line")
        assert await status_of(ports["s3"], "s3") == 403
        new = daemon.stderr()[logged:]
        assert "Traceback" not in new and "ERROR" not in new, new[:3000]
        assert "408 to 127.0.0.1 (timed out reading the request body)" in new


@pytest.mark.slow
@WORKERS
async def test_an_object_left_unread_is_cut_at_the_idle_timeout(tmp_path: Path,
                                                                workers: int) -> None:
    with control_daemon(tmp_path, workers, {"idle_timeout_s": 1}) as (_, ports):
        for name, host in (("s3", b"x"), ("website", b"site.localhost")):
            reader, writer = await asyncio.open_connection(HOST, ports[name])
            path = b"/site/big.bin" if name == "s3" else b"/big.bin"
            writer.write(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host))
            await asyncio.sleep(3)      # reading nothing: the sendfile stalls
            async with asyncio.timeout(5):
                got = len(await reader.read(-1))
            writer.close()
            assert 0 < got < 8 << 20, (name, got)   # cut off, not sent in full
            assert await status_of(ports[name], name) in (200, 403)
