"""The HTTP/2 adapter (lbcdn.edge.h2connection), through real sockets: curl and nghttp as
clients (h2c with prior knowledge, TLS with ALPN h2), and the `h2` library as a raw-frame
client for the malformed requests and the attacks; a backend counting what reaches it."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import trustme

from lbcdn.edge.h2connection import Flood, request_head
from lbcdn.http.errors import HttpError
from lbcdn.http.head import request_header_kinds
from tests.e2e.harness import HOST, listener_port, proxy_config, raw_backend, read_request, \
    running_daemon


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


def test_flood_allows_a_burst_then_the_rate() -> None:
    flood = Flood(10.0, 3.0, 0.0)
    assert [flood.hit(0.0) for _ in range(4)] == [True, True, True, False]
    assert flood.hit(0.1) and not flood.hit(0.1)


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
            assert (await _curl("--http2", *base, f"https://a.test:{port}/x"))[1] == "2 200"
            assert (await _curl("--http1.1", *base, f"https://a.test:{port}/x"))[1] == "1.1 200"
            assert seen.requests[0][0] == "GET /x HTTP/1.1"
            names = {n.lower() for n, _ in seen.requests[0][1]}
            assert "x-forwarded-proto" in names
