"""PROXY protocol through real sockets: accepted on listeners (plain and TLS) from trusted load
balancers only, raw headers good and bad, HAProxy in front (`send-proxy`, `send-proxy-v2`), and
sent to targets of pools that ask for it (HAProxy behind, `accept-proxy`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from lbcdn.http.proxyproto import V2_SIGNATURE, build_v1, build_v2
from tests.e2e.harness import HOST, DaemonProcess, RawClient, admin_port, free_port, \
    listener_port, proxy_config, raw_backend, raw_request, read_request, until, wait_for_port, \
    wait_until
from tests.e2e.test_tls import write_cert

UNTRUSTED = "127.0.0.2"   # another loopback address: a client the listener does not trust
CLIENT = "127.0.0.3"      # a client behind HAProxy

WORKERS = pytest.mark.parametrize("workers", [1, 2])


@contextlib.asynccontextmanager
async def xff_backend() -> AsyncIterator[int]:
    """A backend answering every request with the X-Forwarded-For it got."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            _, headers, _ = await read_request(reader, 30)
            body = dict((n.lower(), v) for n, v in headers).get("x-forwarded-for", "").encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    async with raw_backend(handler) as port:
        yield port


def daemon(config: dict[str, Any], tmp: Path, workers: int) -> DaemonProcess:
    return DaemonProcess(config, tmp, ["--workers", str(workers)])


REQUEST = b"GET /pp HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


def body_of(data: bytes) -> bytes:
    assert data.startswith(b"HTTP/1.1 200"), data[:300]
    return data.split(b"\r\n\r\n", 1)[1]


def tls_request(port: int, ca: trustme.CA, prefix: bytes) -> bytes:
    """`prefix` (a PROXY header) in clear, then TLS and one request; the whole answer."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with socket.create_connection((HOST, port), timeout=10) as raw:
        raw.sendall(prefix)
        with ctx.wrap_socket(raw, server_hostname="default.test") as tls:
            tls.sendall(REQUEST)
            chunks = []
            while chunk := tls.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.slow
@WORKERS
async def test_headers_from_trusted_balancers_give_the_client_address(
        tmp_path: Path, workers: int) -> None:
    ca = trustme.CA()
    log_path = tmp_path / "access.log"
    trusted = {"trusted": ["127.0.0.1/32"]}
    async with xff_backend() as backend:
        cfg = proxy_config(backend, logging={"level": "warning", "access_log": {
            "enabled": True, "path": str(log_path)}})
        cfg["listeners"] = [
            {"name": "web", "address": HOST, "port": free_port(), "proxy_protocol": trusted},
            {"name": "tls", "address": HOST, "port": free_port(), "proxy_protocol": trusted,
             "tls": {"certificates": [write_cert(ca, tmp_path, "default.test")]}},
            {"name": "loose", "address": HOST, "port": free_port(),
             "proxy_protocol": {**trusted, "required": False}},
        ]
        d = daemon(cfg, tmp_path, workers)
        try:
            web, tls, loose = (listener_port(cfg, i) for i in range(3))
            v1 = build_v1(("203.0.113.7", 40001), ("10.0.0.1", 80))
            v2 = build_v2(("2001:db8::9", 40002), ("2001:db8::1", 80))
            for header, client in ((v1, b"203.0.113.7"), (v2, b"2001:db8::9")):
                assert body_of((await raw_request(web, header + REQUEST)).data) == client
                got = await asyncio.to_thread(tls_request, tls, ca, header)
                assert body_of(got) == client
            # the header and the request in separate reads, the header itself trickled
            c = await RawClient.open(web)
            for piece in (v2[:5], v2[5:20], v2[20:]):
                await c.send(piece)
                await asyncio.sleep(0.05)
            response = await c.request("GET", "/pp")
            assert response.body == b"2001:db8::9"
            await c.close()
            # v1 UNKNOWN, v2 LOCAL: the connection's own address
            for header in (b"PROXY UNKNOWN\r\n", V2_SIGNATURE + b"\x20\x00\x00\x00"):
                assert body_of((await raw_request(web, header + REQUEST)).data) == b"127.0.0.1"
            # an untrusted client without a header is a direct client
            c = await RawClient.open(web, source=UNTRUSTED)
            assert (await c.request("GET", "/pp")).body == UNTRUSTED.encode()
            await c.close()
            # `required: false`: a trusted connection may come without a header
            assert body_of((await raw_request(loose, REQUEST)).data) == b"127.0.0.1"
            assert body_of((await raw_request(loose, v1 + REQUEST)).data) == b"203.0.113.7"

            def logged() -> set[str]:
                return {json.loads(line)["client"] for line in log_path.read_text().splitlines()}
            wait_until(lambda: {"203.0.113.7", "2001:db8::9"} <= logged(), 10,
                       what="the access log names the clients")
        finally:
            d.stop()


@pytest.mark.slow
@WORKERS
async def test_bad_missing_slow_and_untrusted_headers_are_refused(
        tmp_path: Path, workers: int) -> None:
    async with xff_backend() as backend:
        cfg = proxy_config(backend)
        cfg["listeners"] = [{"name": "web", "address": HOST, "port": free_port(),
                             "header_timeout_s": 1,
                             "proxy_protocol": {"trusted": ["127.0.0.1/32", "::1"]}}]
        d = daemon(cfg, tmp_path, workers)
        try:
            web = listener_port(cfg)
            v2 = build_v2(("198.51.100.9", 1), ("10.0.0.1", 80))
            cases = {
                "v1 too long": b"PROXY TCP4 " + b"1" * 120 + b"\r\n" + REQUEST,
                "bad signature": V2_SIGNATURE[:8] + b"QUIX" + v2[12:] + REQUEST,
                "bad v2 version": V2_SIGNATURE + b"\x11" + v2[13:] + REQUEST,
                "no header": REQUEST,
                "truncated v2": v2[:20],
            }
            for what, data in cases.items():
                result = await raw_request(web, data, read_timeout_s=5)
                assert result.closed and result.data == b"", (what, result)
                if what == "truncated v2":   # held until the header timeout, no longer
                    assert 0.8 < result.elapsed_s < 4, result
            c = await RawClient.open(web, source=UNTRUSTED)
            await c.send(build_v1(("203.0.113.7", 1), ("10.0.0.1", 80)) + REQUEST)
            assert await c.closed_by_peer(5)
            await c.close()
            # still serving
            assert body_of((await raw_request(web, v2 + REQUEST)).data) == b"198.51.100.9"
        finally:
            d.stop()
        log = d.stderr()   # a line per kind of refusal (bad, missing, slow, untrusted) at most
        for why in ("PROXY v1 line longer than 107 bytes", "no PROXY protocol header",
                    "no whole PROXY header within header_timeout_s",
                    f"from {UNTRUSTED} closed: PROXY header from an untrusted address"):
            assert why in log, (why, log[-3000:])


# -- HAProxy --------------------------------------------------------------------------------

HAPROXY_DEFAULTS = """
global
    maxconn 200
defaults
    timeout connect 5s
    timeout client 30s
    timeout server 30s
"""


@contextlib.contextmanager
def haproxy(tmp: Path, sections: str, port: int) -> Iterator[None]:
    path = tmp / "haproxy.cfg"
    path.write_text(HAPROXY_DEFAULTS + sections)
    check = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, proc=proc)
        yield
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
@WORKERS
async def test_haproxy_in_front_with_send_proxy_v1_and_v2(tmp_path: Path, workers: int) -> None:
    async with xff_backend() as backend:
        cfg = proxy_config(backend)
        cfg["listeners"][0]["proxy_protocol"] = {"trusted": ["127.0.0.1/32"]}
        lb = listener_port(cfg)
        front_v1, front_v2 = free_port(), free_port()
        d = daemon(cfg, tmp_path, workers)
        try:
            with haproxy(tmp_path, f"""
frontend v1
    mode tcp
    bind {HOST}:{front_v1}
    default_backend lbcdn_v1
backend lbcdn_v1
    mode tcp
    server lb {HOST}:{lb} send-proxy
frontend v2
    mode tcp
    bind {HOST}:{front_v2}
    default_backend lbcdn_v2
backend lbcdn_v2
    mode tcp
    server lb {HOST}:{lb} send-proxy-v2
""", front_v2):
                for port in (front_v1, front_v2):
                    c = await RawClient.open(port, source=CLIENT)
                    for _ in range(3):   # keep-alive: one header, several requests
                        assert (await c.request("GET", "/pp")).body == CLIENT.encode()
                    await c.close()
        finally:
            d.stop()


@pytest.mark.slow
@WORKERS
@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_pool_sends_the_client_address_to_haproxy_behind(
        tmp_path: Path, workers: int, version: str) -> None:
    """lbcdn -> HAProxy (`accept-proxy`) -> a backend told what address HAProxy saw."""
    async with xff_backend() as backend:
        behind = free_port()
        with haproxy(tmp_path, f"""
frontend in
    mode http
    bind {HOST}:{behind} accept-proxy
    http-request set-header X-Forwarded-For %[src]
    default_backend app
backend app
    mode http
    server app {HOST}:{backend}
""", behind):
            cfg = proxy_config(behind)
            cfg["pools"]["app"].update(proxy_protocol=version, health={
                "path": "/health", "interval_s": 0.3, "timeout_s": 0.25, "jitter": 0,
                "healthy_threshold": 2})
            d = daemon(cfg, tmp_path, workers)
            try:
                # health checks get through HAProxy's accept-proxy too (a LOCAL header)
                async def healthy() -> bool:
                    async with aiohttp.ClientSession() as s:
                        async with s.get(f"http://{HOST}:{admin_port(cfg)}"
                                         "/api/pools/app/targets") as r:
                            rows = (await r.json())["targets"]
                    return [t["state"] for t in rows] == ["healthy"]
                await until(healthy, 15, what="the target passes its checks")
                for source in (CLIENT, UNTRUSTED):
                    c = await RawClient.open(listener_port(cfg), source=source)
                    for _ in range(2):
                        assert (await c.request("GET", "/pp")).body == source.encode()
                    await c.close()
            finally:
                d.stop()
