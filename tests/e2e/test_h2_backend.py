"""Pools whose targets speak HTTP/2 (`protocol: h2c`), end to end: HTTP/1.1 clients through the
daemon to an HTTP/2 backend (translation, multiplexing, trailers), and gRPC errors of the edge
itself as gRPC statuses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from tests.e2e.h2_backend import h2_echo_backend
from tests.e2e.harness import (HOST, DaemonProcess, free_port, listener_port, proxy_config,
                               raw_backend, raw_client, raw_exchange, read_request,
                               running_daemon)


def h2c_config(*ports: int, **pool: Any) -> dict[str, Any]:
    cfg = proxy_config(*ports)
    cfg["pools"]["app"].update({"protocol": "h2c", **pool})
    return cfg


def fields(req: dict[str, Any]) -> dict[str, str]:
    return {n: v for n, v in req["headers"]}


async def test_http1_requests_are_translated_to_http2() -> None:
    async with h2_echo_backend(delay_s=0.0) as (backend, stats):
        cfg = h2c_config(backend)
        async with running_daemon(cfg), raw_client(listener_port(cfg)) as c:
            resp = await c.request("POST", "/echo?x=1", body=b"hello h2",
                                   host="app.example", headers=[("X-Custom", "v"),
                                            ("Connection", "keep-alive")])
            assert resp.status == 200, resp
            assert resp.header("x-echo") == "yes"
            req = json.loads(resp.body)
            seen = fields(req)
            assert seen[":method"] == "POST"
            assert seen[":path"] == "/echo?x=1"
            assert seen[":authority"] == "app.example"
            assert seen[":scheme"] == "http"
            assert seen["x-custom"] == "v"
            assert seen["te"] == "trailers"
            assert "host" not in seen and "connection" not in seen
            assert req["body"] == "hello h2"
            # a second request on the same client connection: a new stream, same connection
            resp = await c.request("GET", "/again")
            assert resp.status == 200 and fields(json.loads(resp.body))[":path"] == "/again"
    assert stats.connections == 1


async def test_chunked_upload_and_trailers_reach_an_http1_client() -> None:
    async with h2_echo_backend(delay_s=0.0) as (backend, _):
        cfg = h2c_config(backend)
        async with running_daemon(cfg):
            raw = await raw_exchange(
                listener_port(cfg),
                b"PUT /up HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: close\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw
    assert b"transfer-encoding: chunked" in head.lower(), raw
    assert b'"body": "abcdefg"' in body, raw
    # the backend's HTTP/2 trailer, after the last chunk
    assert body.lower().endswith(b"0\r\nx-echo-trailer: done\r\n\r\n"), raw


@pytest.mark.slow
async def test_concurrent_requests_are_multiplexed_on_one_connection() -> None:
    n = 40
    async with h2_echo_backend(delay_s=0.3) as (backend, stats):
        cfg = h2c_config(backend)
        async with running_daemon(cfg):
            port = listener_port(cfg)

            async def one(i: int) -> str:
                async with raw_client(port) as c:
                    resp = await c.request("GET", f"/r{i}")
                    assert resp.status == 200, resp
                    return str(fields(json.loads(resp.body))[":path"])

            loop = asyncio.get_running_loop()
            t0 = loop.time()
            paths = await asyncio.gather(*(one(i) for i in range(n)))
            elapsed = loop.time() - t0
    assert sorted(paths) == sorted(f"/r{i}" for i in range(n))
    assert stats.connections <= 2, stats.connections
    assert stats.most_streams >= n // 2, stats.most_streams
    # answered together, not one after another (n * 0.3 s)
    assert elapsed < n * 0.3 / 4, elapsed


async def test_streams_beyond_the_peers_limit_open_another_connection() -> None:
    async with h2_echo_backend(delay_s=0.3, max_concurrent_streams=4) as (backend, stats):
        cfg = h2c_config(backend)
        async with running_daemon(cfg):
            port = listener_port(cfg)
            # one request first, so the backend's SETTINGS (4 streams) are known
            async with raw_client(port) as c:
                assert (await c.request("GET", "/warm")).status == 200

            async def one(i: int) -> int:
                async with raw_client(port) as c:
                    return (await c.request("GET", f"/r{i}")).status

            statuses = await asyncio.gather(*(one(i) for i in range(8)))
    assert statuses == [200] * 8
    assert stats.most_streams <= 8
    assert 2 <= stats.connections <= 3, stats.connections


async def test_unreachable_h2c_target_is_a_503_or_502_for_http_clients() -> None:
    cfg = h2c_config(free_port())
    async with running_daemon(cfg), raw_client(listener_port(cfg)) as c:
        resp = await c.request("GET", "/")
        assert resp.status in (502, 503), resp
        assert resp.header("Content-Type") is not None


@pytest.mark.parametrize("pool, grpc_status, message", [
    ({}, "14", "upstream connection failed"),                       # nothing listens
    ({"targets": []}, "14", "no target available"),                 # filled in below
])
async def test_errors_of_lbcdn_on_grpc_requests_are_grpc_statuses(
        pool: dict[str, Any], grpc_status: str, message: str) -> None:
    cfg = h2c_config(free_port())
    if "targets" in pool:
        # a pool whose only target is deregistered by weight 0: no target may take traffic
        cfg["pools"]["app"]["targets"] = [{"host": "127.0.0.1", "port": free_port(),
                                           "weight": 0}]
    async with running_daemon(cfg), raw_client(listener_port(cfg)) as c:
        resp = await c.request("POST", "/pkg.Svc/Method", body=b"\0\0\0\0\0",
                               headers=[("Content-Type", "application/grpc"),
                                        ("TE", "trailers")])
    assert resp.status == 200, resp
    assert resp.header("content-type") == "application/grpc"
    assert resp.header("grpc-status") == grpc_status, resp
    assert resp.header("grpc-message") == message, resp
    assert resp.body == b""


async def test_errors_of_lbcdn_on_other_requests_stay_http_errors() -> None:
    cfg = h2c_config(free_port())
    async with running_daemon(cfg), raw_client(listener_port(cfg)) as c:
        resp = await c.request("POST", "/x", body=b"{}",
                               headers=[("Content-Type", "application/json")])
    assert resp.status == 502, resp
    assert resp.header("grpc-status") is None


async def test_response_timeout_on_a_grpc_request_is_deadline_exceeded() -> None:
    async with h2_echo_backend(delay_s=3.0) as (backend, _):
        cfg = h2c_config(backend, response_timeout_s=0.3)
        async with running_daemon(cfg), raw_client(listener_port(cfg)) as c:
            resp = await c.request("POST", "/pkg.Svc/Slow", body=b"\0\0\0\0\0",
                                   headers=[("Content-Type", "application/grpc+proto")])
    assert resp.status == 200, resp
    assert resp.header("grpc-status") == "4", resp
    assert resp.header("grpc-message") == "upstream timed out"


async def test_bodies_larger_than_the_http2_windows_flow_both_ways() -> None:
    # 1 MiB up and (echoed) down: far beyond the 64 KiB initial windows, so each side must
    # wait for and send WINDOW_UPDATEs
    body = bytes(range(97, 123)) * ((1 << 20) // 26)
    async with h2_echo_backend(delay_s=0.0) as (backend, _):
        cfg = h2c_config(backend)
        async with running_daemon(cfg), raw_client(listener_port(cfg)) as c:
            resp = await c.request("POST", "/big", body=body, timeout_s=20)
    assert resp.status == 200, resp
    assert json.loads(resp.body)["body"] == body.decode()



BIG_BYTES = 64 << 20          # the response read slowly
SLOW_S = 4.0                  # how long it is read slowly, before the rest is read at once
SLOW_READ = 16 * 1024         # bytes read per SLOW_TICK_S: about 0.5 MB/s
SLOW_TICK_S = 0.032
RSS_GROWTH_MAX_KIB = 16 * 1024   # far below the response: it is not buffered in lbcdn


async def read_slowly(port: int, path: str, daemon: DaemonProcess
                      ) -> tuple[int | None, bytes, int]:
    """GET `path` over HTTP/2 with the default windows (64 KiB), reading about 0.5 MB/s for
    SLOW_S, then the rest at once: (status, body, the daemon's RSS growth in KiB meanwhile)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                header_encoding=None))
    conn.initiate_connection()
    conn.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"),
                          (b":authority", b"slow.test"), (b":path", path.encode())],
                      end_stream=True)
    writer.write(conn.data_to_send())
    status: int | None = None
    body = bytearray()
    ended = False
    loop = asyncio.get_running_loop()
    started = loop.time()
    base = peak = daemon.rss_kib()
    try:
        while not ended:
            slow = loop.time() - started < SLOW_S
            data = await asyncio.wait_for(reader.read(SLOW_READ if slow else 1 << 20), 10)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    ended = True
            writer.write(conn.data_to_send())
            if slow:
                peak = max(peak, daemon.rss_kib())
                await asyncio.sleep(SLOW_TICK_S)
    finally:
        writer.close()
    return status, bytes(body), peak - base


@pytest.mark.slow
async def test_a_slow_http2_viewer_pauses_an_http1_backend(tmp_path: Path) -> None:
    pattern = bytes(range(256)) * (BIG_BYTES // 256)
    written: list[int] = []

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG_BYTES)
            written.append(0)
            for at in range(0, BIG_BYTES, 1 << 20):
                writer.write(pattern[at:at + (1 << 20)])
                await writer.drain()
                written[-1] = at + (1 << 20)

    async with raw_backend(large) as backend:
        daemon = DaemonProcess(proxy_config(backend), tmp_path)
        try:
            status, body, growth = await read_slowly(listener_port(daemon.config), "/big",
                                                     daemon)
        finally:
            daemon.stop()
    assert status == 200
    assert len(body) == BIG_BYTES and body == pattern   # exact, after the pause
    assert growth < RSS_GROWTH_MAX_KIB, f"RSS grew {growth} KiB while the viewer read slowly"


@pytest.mark.slow
async def test_a_slow_http2_viewer_holds_back_an_http2_backends_stream(
        tmp_path: Path) -> None:
    unsent: list[int] = []
    async with h2_echo_backend(delay_s=0.0) as (backend, stats):
        daemon = DaemonProcess(h2c_config(backend), tmp_path)

        async def watch() -> None:
            while True:
                await asyncio.sleep(0.5)
                unsent.append(stats.unsent)

        watcher = asyncio.create_task(watch())
        try:
            status, body, growth = await read_slowly(listener_port(daemon.config),
                                                     f"/bytes/{BIG_BYTES}", daemon)
        finally:
            watcher.cancel()
            daemon.stop()
    assert status == 200
    assert len(body) == BIG_BYTES and body.count(b"x") == BIG_BYTES
    assert growth < RSS_GROWTH_MAX_KIB, f"RSS grew {growth} KiB while the viewer read slowly"
    # while the viewer read slowly, most of the response still waited in the backend for
    # lbcdn's WINDOW_UPDATEs (about 0.5 MB/s of it went through)
    slow_phase = unsent[1:int(SLOW_S / 0.5) - 1]
    assert slow_phase and min(slow_phase) > BIG_BYTES - 8 * (1 << 20), unsent
