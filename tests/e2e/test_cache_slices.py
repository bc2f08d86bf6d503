"""Large objects in slices (`slice_bytes`) against a real `lbcdn serve` and a real origin that
serves a generated 64 MiB object with Range support, counting the requests and bytes it
sends: a seek fetches only the slices it covers, an overlapping request is answered from them,
a full GET is streamed slice by slice as the client takes it (bounded memory), slices on the
disk tier are found there, and slices of two versions are never mixed."""

from __future__ import annotations

import asyncio
import random
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.e2e.harness import HOST, DaemonProcess, RawClient, read_response, until
from tests.e2e.test_cache import cdn_config

MIB = 1 << 20
SLICE = MIB


def pattern(size: int) -> bytes:
    """Random bytes (seeded): a misplaced byte shows."""
    return random.Random(size).randbytes(size)


class RangeOrigin:
    def __init__(self) -> None:
        self.objects = {"/big": pattern(64 * MIB), "/small": pattern(5 * MIB + MIB // 2)}
        self.requests: list[tuple[str, str | None]] = []
        self.sent = 0
        self.changing = 0
        self.delay_s = 0.0
        self.switch_after: dict[str, int] = {}  # path: requests answered before a new version

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        rng = request.headers.get("Range")
        self.requests.append((path, rng))
        await asyncio.sleep(self.delay_s)
        body = self.objects[path] if path != "/changing" else self.objects["/small"]
        etag = '"v1"'
        if len([p for p, _ in self.requests if p == path]) > self.switch_after.get(path, 1 << 30):
            etag = '"v2"'
        if path == "/changing":  # a new version after each request
            self.changing += 1
            etag = f'"v{self.changing}"'
        headers = {"Cache-Control": "max-age=600", "ETag": etag, "Accept-Ranges": "bytes"}
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", rng or "")
        if m is None:
            self.sent += len(body)
            return web.Response(body=body, headers=headers)
        a, b = int(m.group(1)), min(int(m.group(2)), len(body) - 1)
        headers["Content-Range"] = f"bytes {a}-{b}/{len(body)}"
        self.sent += b - a + 1
        return web.Response(status=206, body=body[a:b + 1], headers=headers)


@pytest.fixture
async def origin() -> AsyncIterator[tuple[RangeOrigin, int]]:
    o = RangeOrigin()
    app = web.Application()
    app.router.add_get("/{tail:.*}", o.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield o, port
    finally:
        await runner.cleanup()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
async def test_slices(origin: tuple[RangeOrigin, int], tmp_path: Path, workers: int) -> None:
    o, port = origin
    config = cdn_config(port, policy={"slice_bytes": SLICE},
                        storage={"memory_max_bytes": 256 * MIB})
    daemon = await asyncio.to_thread(DaemonProcess, config, tmp_path,
                                     ["--workers", str(workers)])
    big = o.objects["/big"]
    try:
        c = await RawClient.open(config["listeners"][0]["port"])  # one worker for all
        try:
            # a seek into the middle: the two slices it covers, 2 MiB from the origin
            r = await c.request("GET", "/big", headers=[("Range", "bytes=30000000-30999999")],
                                timeout_s=30)
            assert r.status == 206, r
            assert r.header("Content-Range") == f"bytes 30000000-30999999/{64 * MIB}"
            assert r.body == big[30000000:31000000]
            assert r.header("ETag") == '"v1"'
            assert o.requests == [("/big", "bytes=29360128-30408703"),
                                  ("/big", "bytes=30408704-31457279")]
            assert o.sent == 2 * SLICE
            # an overlapping range inside the same slices: a hit
            r = await c.request("GET", "/big", headers=[("Range", "bytes=29500000-30500000")])
            assert r.status == 206 and r.body == big[29500000:30500001]
            assert "hit" in (r.header("Cache-Status") or ""), r
            assert len(o.requests) == 2
            # one that reaches a slice further: only that slice is fetched
            r = await c.request("GET", "/big", headers=[("Range", "bytes=31000000-31500000")])
            assert r.status == 206 and r.body == big[31000000:31500001]
            assert o.requests[2:] == [("/big", "bytes=31457280-32505855")]
            assert o.sent == 3 * SLICE
            # a full GET: every slice, in order, a 200 of the whole object
            small = o.objects["/small"]
            r = await c.request("GET", "/small", timeout_s=30)
            assert r.status == 200 and r.body == small and r.header("Content-Range") is None
            assert [rng for p, rng in o.requests if p == "/small"] == [
                f"bytes={k * SLICE}-{(k + 1) * SLICE - 1}" for k in range(6)]
            # a suffix range and an unsatisfiable one, from the cached slices
            r = await c.request("GET", "/small", headers=[("Range", "bytes=-10")])
            assert r.status == 206 and r.body == small[-10:]
            r = await c.request("GET", "/small",
                                headers=[("Range", f"bytes={len(small)}-")])
            assert r.status == 416
            assert r.header("Content-Range") == f"bytes */{len(small)}"
            # HEAD of the big object: the size from the one slice fetched already
            before = len(o.requests)
            r = await c.request("HEAD", "/big")
            assert r.status == 200 and r.header("Content-Length") == str(64 * MIB)
            r = await c.request("HEAD", "/big", headers=[("Range", "bytes=31000000-31000009")])
            assert r.status == 206 and r.header("Content-Length") == "10"
            assert o.requests[before:] == [("/big", "bytes=0-1048575")]
            # conditionals against the object's ETag
            r = await c.request("GET", "/small", headers=[("If-None-Match", '"v1"')])
            assert r.status == 304 and r.body == b"" and r.header("ETag") == '"v1"'
            r = await c.request("GET", "/small", headers=[("If-Match", '"v0"')])
            assert r.status == 412
            assert len([p for p, _ in o.requests if p == "/small"]) == 6
            # slices of two versions, found before the head goes out (a suffix range: slice
            # 0 for the size, then the last): an error, not a mixed body
            r = await c.request("GET", "/changing", headers=[("Range", "bytes=-10")])
            assert r.status == 502 and b"etag mismatch" in r.body, r
        finally:
            await c.close()
    finally:
        daemon.stop()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
async def test_concurrent_requests_share_slice_fetches(origin: tuple[RangeOrigin, int],
                                                       tmp_path: Path, workers: int) -> None:
    o, port = origin
    o.delay_s = 0.3
    config = cdn_config(port, policy={"slice_bytes": SLICE})
    daemon = await asyncio.to_thread(DaemonProcess, config, tmp_path,
                                     ["--workers", str(workers)])
    big = o.objects["/big"]
    try:
        clients = await asyncio.gather(*(RawClient.open(config["listeners"][0]["port"])
                                         for _ in range(50)))
        try:
            answers = await asyncio.gather(*(
                c.request("GET", "/big", headers=[("Range", "bytes=5000000-6000000")],
                          timeout_s=30) for c in clients))
        finally:
            await asyncio.gather(*(c.close() for c in clients))
    finally:
        daemon.stop()
    assert all(r.status == 206 and r.body == big[5000000:6000001] for r in answers)
    # slices 4 and 5, once per worker at most
    assert sorted(set(o.requests)) == [("/big", "bytes=4194304-5242879"),
                                       ("/big", "bytes=5242880-6291455")]
    assert 2 <= len(o.requests) <= 2 * workers, o.requests


async def slow_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection with a small receive buffer: what it has not read holds the daemon back
    (the kernel's buffers do not hide a slow reader)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    return await asyncio.open_connection(sock=sock, limit=64 * 1024)


@pytest.mark.slow
async def test_full_get_is_streamed_as_the_client_reads(origin: tuple[RangeOrigin, int],
                                                        tmp_path: Path) -> None:
    """A full GET of a 64 MiB sliced object by a client reading slowly: the daemon fetches a
    slice only when the client has taken the one before, so its memory grows by a few slices,
    not by the object (assembled whole, it grew by three copies of it)."""
    o, port = origin
    # slices too large for the memory tier and no disk: only the answer's buffering shows
    config = cdn_config(port, policy={"slice_bytes": SLICE},
                        storage={"max_object_bytes": SLICE // 2})
    daemon = await asyncio.to_thread(DaemonProcess, config, tmp_path, ["--workers", "1"])
    big = o.objects["/big"]
    lport = config["listeners"][0]["port"]
    try:
        c = await RawClient.open(lport)  # warm up: the code paths, the pools, a slice
        try:
            r = await c.request("GET", "/big", headers=[("Range", "bytes=0-99")], timeout_s=30)
            assert r.status == 206 and r.body == big[:100]
        finally:
            await c.close()
        base_kib = daemon.rss_kib()
        before = len(o.requests)
        reader, writer = await slow_client(lport)
        try:
            writer.write(b"GET /big HTTP/1.1\r\nHost: test.local\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert b"\r\nContent-Length: %d\r\n" % len(big) in head, head
            got = bytearray()
            peak_kib = base_kib
            ahead = 0  # the most slices fetched beyond those the client has read
            async with asyncio.timeout(120):
                while len(got) < len(big):
                    got += await reader.read(64 * 1024)
                    await asyncio.sleep(0.002)
                    if len(got) % (2 * MIB) < 64 * 1024:
                        peak_kib = max(peak_kib, daemon.rss_kib())
                        ahead = max(ahead, len(o.requests) - before - len(got) // SLICE)
        finally:
            writer.close()
    finally:
        daemon.stop()
    assert bytes(got) == big
    assert [rng for _, rng in o.requests[before:]] == [
        f"bytes={k * SLICE}-{(k + 1) * SLICE - 1}" for k in range(64)]
    assert peak_kib - base_kib < 32 * 1024, (base_kib, peak_kib, ahead)
    # kernel buffers on both sides hold a few slices besides the daemon's own
    assert ahead <= 12, ahead


@pytest.mark.slow
async def test_a_later_slice_of_another_version_cuts_the_connection(
        origin: tuple[RangeOrigin, int], tmp_path: Path) -> None:
    """The object changes after the head of a full GET went out (slice 3 has another ETag):
    the connection is cut short of Content-Length, after exactly the first three slices."""
    o, port = origin
    o.switch_after["/small"] = 3
    config = cdn_config(port, policy={"slice_bytes": SLICE})
    daemon = await asyncio.to_thread(DaemonProcess, config, tmp_path, ["--workers", "1"])
    small = o.objects["/small"]
    try:
        c = await RawClient.open(config["listeners"][0]["port"])
        try:
            await c.send(b"GET /small HTTP/1.1\r\nHost: test.local\r\n\r\n")
            with pytest.raises(asyncio.IncompleteReadError) as err:
                await read_response(c.reader, timeout_s=30)
            assert await c.closed_by_peer()
        finally:
            await c.close()
    finally:
        daemon.stop()
    assert err.value.expected == len(small)
    assert err.value.partial == small[:3 * SLICE]
    assert len(o.requests) == 4


@pytest.mark.slow
async def test_slices_on_the_disk_tier_are_hits(origin: tuple[RangeOrigin, int],
                                                tmp_path: Path) -> None:
    """Slices larger than the memory tier's `max_object_bytes` are stored on disk; the next
    read finds them there: no origin request. (One worker: each worker has its own index of
    the disk tier today, so another worker would not know these files.)"""
    o, port = origin
    disk = tmp_path / "disk"
    config = cdn_config(port, policy={"slice_bytes": SLICE},
                        storage={"max_object_bytes": SLICE // 2, "disk_path": str(disk)})
    daemon = await asyncio.to_thread(DaemonProcess, config, tmp_path, ["--workers", "1"])
    small = o.objects["/small"]
    try:
        c = await RawClient.open(config["listeners"][0]["port"])
        try:
            r = await c.request("GET", "/small", timeout_s=30)
            assert r.status == 200 and r.body == small
            assert len(o.requests) == 6
            # written in a thread after the answer: wait for the six files
            await until(lambda: len(list(disk.rglob("*.lbc"))) == 6, what="slices on disk")
            r = await c.request("GET", "/small", timeout_s=30)
            assert r.status == 200 and r.body == small
            assert "hit" in (r.header("Cache-Status") or ""), r
            r = await c.request("GET", "/small", headers=[("Range", "bytes=2000000-4000000")])
            assert r.status == 206 and r.body == small[2000000:4000001]
            assert "hit" in (r.header("Cache-Status") or ""), r
            assert len(o.requests) == 6, o.requests
        finally:
            await c.close()
    finally:
        daemon.stop()


@pytest.mark.slow
async def test_a_client_leaving_mid_answer_stops_the_slice_fetches(
        origin: tuple[RangeOrigin, int], tmp_path: Path) -> None:
    """A client that reads the head and a little of a full GET of 64 MiB, then stops reading
    and leaves: no more slices are fetched for it, and the daemon serves on."""
    o, port = origin
    config = cdn_config(port, policy={"slice_bytes": SLICE})
    daemon = await asyncio.to_thread(DaemonProcess, config, tmp_path, ["--workers", "1"])
    big = o.objects["/big"]
    lport = config["listeners"][0]["port"]
    try:
        reader, writer = await slow_client(lport)
        writer.write(b"GET /big HTTP/1.1\r\nHost: test.local\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert len(await reader.read(64 * 1024)) > 0
        await asyncio.sleep(1)  # the daemon fills the buffers, then waits for the client
        waiting = len(o.requests)
        assert waiting <= 12, o.requests
        writer.close()
        await asyncio.sleep(1)
        assert len(o.requests) <= waiting + 1  # the fetch under way when it left, at most
        r = await RawClient.open(lport)
        try:
            got = await r.request("GET", "/big", headers=[("Range", "bytes=100-199")])
            assert got.status == 206 and got.body == big[100:200]
        finally:
            await r.close()
    finally:
        daemon.stop()


@pytest.mark.slow
async def test_streamed_over_http2(origin: tuple[RangeOrigin, int], tmp_path: Path) -> None:
    """The same streaming on an HTTP/2 stream (its flow control is the back-pressure): curl,
    h2c with prior knowledge, reading at a limited rate."""
    o, port = origin
    config = cdn_config(port, policy={"slice_bytes": SLICE})
    daemon = await asyncio.to_thread(DaemonProcess, config, tmp_path, ["--workers", "1"])
    out = tmp_path / "body"
    try:
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--max-time", "60", "--http2-prior-knowledge", "--limit-rate", "8M",
            "-o", str(out), "-w", "%{http_version} %{http_code}",
            f"http://{HOST}:{config['listeners'][0]['port']}/small",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await proc.communicate()
    finally:
        daemon.stop()
    assert proc.returncode == 0, stderr
    assert stdout == b"2 200"
    assert out.read_bytes() == o.objects["/small"]
    assert len(o.requests) == 6
