"""Errors lbcdn answers itself (ELB meanings: 502 reset/refused/malformed, 503 no target, 504
timeout), what a client sees when a backend fails after the response started, the one
transparent retry of a reused keep-alive connection, and the observability around them (metrics,
admin API, access log)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.harness import (
    HOST, RawClient, RawResponse, admin_port, demo_backend, free_port, listener_port,
    proxy_config, raw_backend, read_request, read_response, running_daemon, until,
)
from tests.e2e.harness import raw_client as client

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def assert_lbcdn_error(resp: RawResponse, status: int, *, secrets: tuple[str, ...] = ()) -> str:
    """An lbcdn-generated error: exact status, short text body naming lbcdn and the request id
    (also in the X-Request-Id header), no internals. Returns the request id."""
    assert resp.status == status, resp
    rid = resp.header("X-Request-Id")
    assert rid, resp
    text = resp.body.decode()
    assert resp.header("Content-Length") == str(len(resp.body))
    assert resp.header("Content-Type", ).startswith("text/plain")  # type: ignore[union-attr]
    assert "lbcdn" in text
    assert rid in text
    assert len(resp.body) < 512
    for leak in ("Traceback", "Errno", "Error:", "refused", "Exception", *secrets):
        assert leak not in text, (leak, text)
    for value in (v for n, v in resp.headers if n.lower() not in ("x-request-id", "date")):
        for secret in secrets:
            assert secret not in value, (secret, resp.headers)
    return rid


def ok_response(body: bytes, keep_alive: bool = True) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (len(body), b"" if keep_alive else b"Connection: close\r\n")) + body


# -- 503 / 502 / 504 ----------------------------------------------------------------------------

async def test_503_when_the_pool_has_only_weight_zero_targets() -> None:
    async with demo_backend() as backend:
        cfg = proxy_config()
        cfg["pools"]["app"]["targets"] = [{"host": HOST, "port": backend, "weight": 0}]
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            resp = await c.request("GET", "/x")
            rid = assert_lbcdn_error(resp, 503, secrets=(str(backend),))
            # an lbcdn error on a complete request keeps the connection
            again = await c.request("GET", "/y", headers=[("X-Request-Id", "mine-1")])
            assert assert_lbcdn_error(again, 503) == "mine-1"
            assert rid != "mine-1"


async def test_error_to_http10_keep_alive_client_is_consistent() -> None:
    # RFC 9112 9.3: an HTTP/1.0 connection persists only when the response says keep-alive;
    # an error that keeps the connection open must say so, or close it.
    cfg = proxy_config()
    cfg["pools"]["app"]["targets"] = [{"host": HOST, "port": free_port(), "weight": 0}]
    async with running_daemon(cfg), client(listener_port(cfg)) as c:
        resp = await c.request("GET", "/", version="1.0", host=None,
                               headers=[("Connection", "keep-alive")])
        assert resp.status == 503
        if resp.header("Connection") == "keep-alive":
            again = await c.request("GET", "/", version="1.0", host=None,
                                    headers=[("Connection", "keep-alive")])
            assert again.status == 503
        else:
            assert await c.closed_by_peer(2.0), \
                f"no keep-alive in {resp.headers} yet the connection stays open"


async def test_error_uses_the_custom_request_id_header() -> None:
    cfg = proxy_config(free_port())
    cfg["listeners"][0]["request_id_header"] = "X-Trace-Id"
    async with running_daemon(cfg), client(listener_port(cfg)) as c:
        resp = await c.request("GET", "/", headers=[("X-Trace-Id", "trace-7")])
        assert resp.status == 502
        assert resp.header("X-Trace-Id") == "trace-7"
        assert "x-request-id" not in resp.names()
        assert "trace-7" in resp.body.decode()


async def test_502_when_the_target_refuses(tmp_path: Path) -> None:
    dead = free_port()
    log_path = tmp_path / "access.log"
    cfg = proxy_config(dead, logging={"level": "warning",
                                      "access_log": {"enabled": True, "path": str(log_path)}})
    async with running_daemon(cfg), client(listener_port(cfg)) as c:
        resp = await c.request("GET", "/refused")
        rid = assert_lbcdn_error(resp, 502, secrets=(str(dead), "127.0.0.1"))
        head = await c.request("HEAD", "/refused-head")
        assert head.status == 502 and head.body == b""
        assert int(head.header("Content-Length") or "0") > 0
        resp = await c.request("GET", "/again")  # the connection is still in sync
        assert resp.status == 502
    lines = {rec["path"]: rec for rec in
             (json.loads(line) for line in log_path.read_text().splitlines())}
    assert lines["/refused"]["status"] == 502
    assert lines["/refused"]["request_id"] == rid


async def _close_before_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.close()


async def _reset_before_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"this is not http\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(5)


async def _bad_content_length(reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n1x")
    await writer.drain()
    await asyncio.sleep(5)


async def _half_head_then_close(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
    await writer.drain()
    writer.close()


@pytest.mark.parametrize("handler", [_close_before_head, _reset_before_head, _garbage,
                                     _bad_content_length, _half_head_then_close])
async def test_502_when_the_backend_fails_before_a_complete_head(handler: Handler) -> None:
    async with raw_backend(handler) as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            start = time.monotonic()
            resp = await c.request("GET", "/fail")
            assert time.monotonic() - start < 3
            assert_lbcdn_error(resp, 502, secrets=(str(backend),))
            assert b"not http" not in resp.body


async def test_stray_bytes_after_a_response_drop_the_connection() -> None:
    conns: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(conns)
        conns.append(index)
        while True:
            await read_request(reader)
            body = json.dumps({"connection": index}).encode()
            # connection 0 sends one unannounced byte after its response
            writer.write(ok_response(body) + (b"X" if index == 0 else b""))
            await writer.drain()

    async with raw_backend(handler) as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg) as d, client(listener_port(cfg)) as c:
            first = await c.request("GET", "/1")
            assert first.status == 200 and json.loads(first.body) == {"connection": 0}
            await until(lambda: d.pools["app"].targets[0].open == 0,
                        what="the pool dropping the connection")
            second = await c.request("GET", "/2")
            # the connection that carried stray bytes was dropped, not reused
            assert second.status == 200 and json.loads(second.body) == {"connection": 1}
            assert len(conns) == 2


async def test_malformed_response_connection_is_not_reused() -> None:
    conns: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(conns)
        conns.append(index)
        while True:
            await read_request(reader)
            if index == 0:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad Header: x\r\n\r\n{}")
            else:
                writer.write(ok_response(json.dumps({"connection": index}).encode()))
            await writer.drain()

    async with raw_backend(handler) as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            first = await c.request("GET", "/1")
            assert_lbcdn_error(first, 502)
            second = await c.request("GET", "/2")
            assert second.status == 200 and json.loads(second.body) == {"connection": 1}


async def test_504_when_the_backend_is_too_slow() -> None:
    async with demo_backend() as backend:
        cfg = proxy_config(backend)
        cfg["pools"]["app"]["response_timeout_s"] = 0.5
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            start = time.monotonic()
            resp = await c.request("GET", "/delay/2000")
            elapsed = time.monotonic() - start
            assert_lbcdn_error(resp, 504, secrets=(str(backend),))
            assert 0.45 <= elapsed < 1.8, elapsed
            # the client connection carries on; the timed-out upstream one is not reused
            ok = await c.request("GET", "/delay/10")
            assert ok.status == 200 and json.loads(ok.body)["path"] == "/delay/10"


async def test_a_stalled_upload_is_the_clients_408_not_the_backends_504() -> None:
    # the response timeout waits for the whole request: while the client holds back the rest
    # of its body, the listener's body timeout is the one that runs
    async with demo_backend() as backend:
        cfg = proxy_config(backend)
        cfg["pools"]["app"]["response_timeout_s"] = 0.3
        cfg["listeners"][0]["body_timeout_s"] = 1.0
        async with running_daemon(cfg) as daemon, client(listener_port(cfg)) as c:
            start = time.monotonic()
            await c.send(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
            resp = await c.response(timeout_s=5)
            elapsed = time.monotonic() - start
            assert_lbcdn_error(resp, 408)
            assert 0.9 <= elapsed < 3, elapsed
            [target] = daemon.pools["app"].targets
            assert target.errors == 0  # not held against the backend


async def test_a_slow_upload_within_the_body_timeout_goes_through() -> None:
    async with demo_backend() as backend:
        cfg = proxy_config(backend)
        cfg["pools"]["app"]["response_timeout_s"] = 0.3
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            await c.send(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n")
            for part in (b"ab", b"cd", b"ef"):
                await asyncio.sleep(0.25)   # 0.75 s in all, well past the response timeout
                await c.send(part)
            resp = await c.response(timeout_s=5)
            assert resp.status == 200, resp
            assert json.loads(resp.body)["body_bytes"] == 6


async def test_a_backend_that_never_sends_100_continue_times_out_as_504() -> None:
    # the client waits for the 100 before sending its body: the backend is the one waited for
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(5)

    async with raw_backend(handler) as backend:
        cfg = proxy_config(backend)
        cfg["pools"]["app"]["response_timeout_s"] = 0.3
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            await c.send(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            resp = await c.response(timeout_s=5)
            assert_lbcdn_error(resp, 504)


async def test_a_101_to_a_request_without_upgrade_is_a_502() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                     b"Upgrade: foo\r\n\r\nsurprise")
        await writer.drain()
        await asyncio.sleep(5)

    async with raw_backend(handler) as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            resp = await c.request("GET", "/plain")
            assert_lbcdn_error(resp, 502)
            assert b"surprise" not in resp.body


# -- failures after the response started --------------------------------------------------------

@pytest.mark.parametrize("abort_after", [0, 1000, 70000])
async def test_backend_cut_mid_body_with_content_length_is_not_a_complete_response(
        abort_after: int) -> None:
    async with demo_backend() as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            await c.send(b"GET /bytes/100000?abort_after=%d HTTP/1.1\r\nHost: x\r\n\r\n"
                         % abort_after)
            async with asyncio.timeout(5):
                head = await c.reader.readuntil(b"\r\n\r\n")
                rest = await c.reader.read(-1)  # then the proxy closes: EOF, not a hang
            assert head.startswith(b"HTTP/1.1 200 ")
            assert b"\r\ncontent-length: 100000\r\n" in head.lower()
            assert rest == (b"0123456789abcdef" * 6250)[:abort_after]


async def test_backend_cut_mid_chunked_body_never_gets_a_last_chunk() -> None:
    async with demo_backend() as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            await c.send(b"GET /bytes/100000?chunked=1&abort_after=3000 HTTP/1.1\r\n"
                         b"Host: x\r\n\r\n")
            with pytest.raises(asyncio.IncompleteReadError):
                await read_response(c.reader, timeout_s=5)


async def test_backend_cut_mid_body_to_http10_client_is_cut_too() -> None:
    async with demo_backend() as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            await c.send(b"GET /bytes/5000?abort_after=100 HTTP/1.0\r\n\r\n")
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await read_response(c.reader, timeout_s=5)
            assert len(info.value.partial) == 100


# -- the one transparent retry ------------------------------------------------------------------

class FlakyBackend:
    """Answers every request, except that connection #0 closes without answering its second
    request (after reading it whole): the race of a backend closing a kept-alive connection
    just as the proxy reuses it. Records (connection index, path, body) per request."""

    def __init__(self, reset: bool = False) -> None:
        self.seen: list[tuple[int, str, bytes]] = []
        self.connections = 0
        self.reset = reset  # close with a TCP RST instead of a FIN

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        served = 0
        while True:
            line, _, body = await read_request(reader)
            path = line.split(" ")[1]
            self.seen.append((index, path, body))
            if index == 0 and served == 1:
                if self.reset:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                else:
                    writer.close()
                return
            served += 1
            writer.write(ok_response(json.dumps({
                "connection": index, "path": path, "body_bytes": len(body),
                "sha256": hashlib.sha256(body).hexdigest()}).encode()))
            await writer.drain()


@pytest.mark.parametrize("reset", [False, True])
async def test_reused_connection_closed_by_backend_is_retried_once(reset: bool) -> None:
    flaky = FlakyBackend(reset)
    async with raw_backend(flaky.handle) as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            first = await c.request("GET", "/first")
            assert json.loads(first.body)["connection"] == 0
            second = await c.request("GET", "/second")
            assert second.status == 200, second
            assert json.loads(second.body) | {"sha256": ""} == {
                "connection": 1, "path": "/second", "body_bytes": 0, "sha256": ""}
    assert [(i, p) for i, p, _ in flaky.seen] == [(0, "/first"), (0, "/second"), (1, "/second")]


async def test_small_put_is_replayed_with_its_body_intact() -> None:
    flaky = FlakyBackend()
    body = bytes(range(256)) * 20
    async with raw_backend(flaky.handle) as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            assert (await c.request("GET", "/first")).status == 200
            resp = await c.request("PUT", "/put", body=body)
            assert resp.status == 200, resp
            data = json.loads(resp.body)
            assert data["connection"] == 1
            assert data["body_bytes"] == len(body)
            assert data["sha256"] == hashlib.sha256(body).hexdigest()


async def test_small_chunked_put_is_replayed_with_its_body_intact() -> None:
    flaky = FlakyBackend()
    async with raw_backend(flaky.handle) as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            assert (await c.request("GET", "/first")).status == 200
            await c.send(b"PUT /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                         b"\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
            resp = await c.response()
            assert resp.status == 200, resp
            data = json.loads(resp.body)
            assert data["connection"] == 1
            assert data["sha256"] == hashlib.sha256(b"abcdefg").hexdigest()


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_non_idempotent_request_is_not_replayed(method: str) -> None:
    # RFC 9110 9.2.2: the backend may have applied it before closing; a 502 is the answer
    flaky = FlakyBackend()
    async with raw_backend(flaky.handle) as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            assert (await c.request("GET", "/first")).status == 200
            resp = await c.request(method, "/order", body=b"buy 1")
            assert_lbcdn_error(resp, 502, secrets=(str(backend),))
    assert [(i, p, b) for i, p, b in flaky.seen] == [(0, "/first", b""), (0, "/order", b"buy 1")]


async def test_request_with_a_body_over_64k_is_not_replayed() -> None:
    flaky = FlakyBackend()
    body = b"z" * (100 * 1024)
    async with raw_backend(flaky.handle) as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            assert (await c.request("GET", "/first")).status == 200
            resp = await c.request("PUT", "/big", body=body)
            assert_lbcdn_error(resp, 502, secrets=(str(backend),))
    assert [(i, p) for i, p, _ in flaky.seen] == [(0, "/first"), (0, "/big")]


async def test_a_larger_replay_buffer_replays_a_larger_body() -> None:
    flaky = FlakyBackend()
    body = b"z" * (100 * 1024)
    async with raw_backend(flaky.handle) as backend:
        cfg = proxy_config(backend)
        cfg["pools"]["app"]["retries"] = {"buffer_body_max_bytes": 200 * 1024}
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            assert (await c.request("GET", "/first")).status == 200
            resp = await c.request("PUT", "/big", body=body)
            assert resp.status == 200, resp
            assert json.loads(resp.body)["sha256"] == hashlib.sha256(body).hexdigest()
    assert [(i, p) for i, p, _ in flaky.seen] == [(0, "/first"), (0, "/big"), (1, "/big")]


async def test_retry_happens_only_once() -> None:
    seen: list[tuple[int, str]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = max((i for i, _ in seen), default=-1) + 1
        while True:
            line, _, _ = await read_request(reader)
            seen.append((index, line.split(" ")[1]))
            if len(seen) == 1:
                writer.write(ok_response(b"{}"))
                await writer.drain()
            else:
                writer.close()  # every later request: closed unanswered
                return

    async with raw_backend(handler) as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            assert (await c.request("GET", "/first")).status == 200
            resp = await c.request("GET", "/second")
            assert_lbcdn_error(resp, 502)
    assert seen == [(0, "/first"), (0, "/second"), (1, "/second")]


async def test_no_retry_on_a_fresh_connection_that_fails() -> None:
    attempts = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempts.append(1)
        await read_request(reader)
        writer.close()

    async with raw_backend(handler) as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            resp = await c.request("POST", "/once", body=b"payload")
            assert resp.status == 502
    assert len(attempts) == 1


async def test_idle_connection_closed_by_backend_is_not_reused() -> None:
    connections: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append("c")
        line, _, _ = await read_request(reader)
        writer.write(ok_response(json.dumps({"connection": len(connections)}).encode()))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()  # an idle keep-alive timeout far shorter than the pool's

    async with raw_backend(handler) as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg) as d, client(listener_port(cfg)) as c:
            assert json.loads((await c.request("GET", "/a")).body)["connection"] == 1
            await until(lambda: d.pools["app"].targets[0].open == 0,
                        what="the pool seeing the backend's close")
            resp = await c.request("GET", "/b")
            assert resp.status == 200
            assert json.loads(resp.body)["connection"] == 2


# -- metrics and admin --------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) == name:
            out.append((dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    found = [v for lab, v in samples(text, name) if lab == labels]
    assert len(found) <= 1
    return found[0] if found else None


async def scrape(cfg: dict[str, Any]) -> str:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        async with s.get(f"http://{HOST}:{admin_port(cfg)}/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            return await r.text()


async def test_metrics_count_requests_by_route_and_status_class() -> None:
    route = f"metrics-{uuid.uuid4().hex[:8]}"
    async with demo_backend() as backend:
        cfg = proxy_config(backend, default_route={"name": route, "forward": "app"})
        async with running_daemon(cfg):
            async with client(listener_port(cfg)) as c:
                for _ in range(3):
                    assert (await c.request("GET", "/")).status == 200
                assert (await c.request("GET", "/status/404")).status == 404
                assert (await c.request("GET", "/status/503")).status == 503
            text = await scrape(cfg)
    assert value(text, "lbcdn_http_requests_total", listener="web", route=route,
                 status_class="2xx") == 3.0
    assert value(text, "lbcdn_http_requests_total", listener="web", route=route,
                 status_class="4xx") == 1.0
    assert value(text, "lbcdn_http_requests_total", listener="web", route=route,
                 status_class="5xx") == 1.0
    assert value(text, "lbcdn_http_request_duration_seconds_count", route=route) == 5.0


async def test_metrics_count_upstream_errors_by_kind() -> None:
    pool = f"dead{uuid.uuid4().hex[:8]}"
    route = f"r-{pool}"
    cfg = proxy_config(default_route={"name": route, "forward": pool})
    cfg["pools"] = {pool: {"targets": [f"{HOST}:{free_port()}"]}}
    async with running_daemon(cfg):
        async with client(listener_port(cfg)) as c:
            for _ in range(2):
                assert (await c.request("GET", "/")).status == 502
        text = await scrape(cfg)
    assert value(text, "lbcdn_upstream_errors_total", pool=pool, kind="connect_refused") == 2.0
    assert value(text, "lbcdn_http_requests_total", listener="web", route=route,
                 status_class="5xx") == 2.0


async def test_metrics_client_connections_gauge() -> None:
    name = f"gauge-{uuid.uuid4().hex[:8]}"
    async with demo_backend() as backend:
        cfg = proxy_config(backend)
        cfg["listeners"][0]["name"] = name
        async with running_daemon(cfg):
            clients = [await RawClient.open(listener_port(cfg)) for _ in range(3)]
            try:
                for c in clients:  # a full exchange proves each one was accepted
                    assert (await c.request("GET", "/")).status == 200
                assert value(await scrape(cfg), "lbcdn_client_connections", listener=name) == 3
            finally:
                for c in clients:
                    await c.close()

            async def none_open() -> bool:
                return value(await scrape(cfg), "lbcdn_client_connections", listener=name) == 0
            await until(none_open, timeout_s=3, interval_s=0.05)


async def test_admin_healthz_and_runtime() -> None:
    async with demo_backend() as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg):
            base = f"http://{HOST}:{admin_port(cfg)}"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
                async with s.get(f"{base}/healthz") as r:
                    assert r.status == 200
                    assert await r.json() == {"status": "ok"}
                async with s.get(f"{base}/api/runtime") as r:
                    assert r.status == 200
                    runtime = await r.json()
    listeners = runtime["listeners"]
    assert [(x["name"], x["port"]) for x in listeners] == [("web", listener_port(cfg))]
    pools = {p["name"]: p for p in runtime["pools"]}
    assert list(pools) == ["app"]
    assert [t["target"] for t in pools["app"]["targets"]] == [f"{HOST}:{backend}"]


async def test_admin_token_protects_the_api_only() -> None:
    async with demo_backend() as backend:
        cfg = proxy_config(backend, admin={"token": "s3cret-token"})
        async with running_daemon(cfg):
            base = f"http://{HOST}:{admin_port(cfg)}"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
                async with s.get(f"{base}/api/runtime") as r:
                    assert r.status == 401
                    assert "Bearer" in r.headers.get("WWW-Authenticate", "")
                async with s.get(f"{base}/api/runtime",
                                 headers={"Authorization": "Bearer wrong"}) as r:
                    assert r.status == 401  # RFC 6750 3.1
                    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
                async with s.get(f"{base}/api/runtime",
                                 headers={"Authorization": "Bearer s3cret-token"}) as r:
                    assert r.status == 200
                    assert (await r.json())["listeners"][0]["name"] == "web"
                async with s.get(f"{base}/healthz") as r:
                    assert r.status == 200
                async with s.get(f"{base}/metrics") as r:
                    assert r.status == 200
