"""Pools whose targets speak HTTP/2 (`protocol: h2c`), end to end: HTTP/1.1 clients through the
daemon to an HTTP/2 backend (translation, multiplexing, trailers), and gRPC errors of the edge
itself as gRPC statuses."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.e2e.h2_backend import h2_echo_backend
from tests.e2e.harness import (free_port, listener_port, proxy_config, raw_client,
                               raw_exchange, running_daemon)


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

