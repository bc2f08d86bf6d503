"""Proxy semantics end to end, through real sockets: keep-alive on both sides, hop-by-hop
headers, X-Forwarded-*, Via, request ids, Host rewriting, round robin, and message framing
(Content-Length, chunked both ways, read-until-close, HEAD/204/304). Raw bytes where exactness
matters, curl where a real client is the point."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    HOST, RawResponse, demo_backend, listener_port, proxy_config, raw_backend,
    read_request, running_daemon,
)
from tests.e2e.harness import raw_client as client

PATTERN = b"0123456789abcdef"


def pattern(n: int) -> bytes:
    return (PATTERN * (n // 16 + 1))[:n]


def echo(resp: RawResponse) -> dict[str, Any]:
    assert resp.status == 200, resp
    assert resp.header("Content-Type") == "application/json", resp
    return json.loads(resp.body)


def seen(data: dict[str, Any], name: str) -> list[str]:
    """Values of request header `name` as the backend received them."""
    return [v for n, v in data["headers"] if n.lower() == name.lower()]


def seen_names(data: dict[str, Any]) -> set[str]:
    return {n.lower() for n, _ in data["headers"]}


@contextlib.asynccontextmanager
async def proxy(**overrides: Any) -> AsyncIterator[tuple[int, int, dict[str, Any]]]:
    """One demo backend behind a daemon: yields (listener port, backend port, config)."""
    listener = overrides.pop("listener", {})
    pool = overrides.pop("pool", {})
    async with demo_backend("b1") as backend:
        cfg = proxy_config(backend, **overrides)
        cfg["listeners"][0].update(listener)
        cfg["pools"]["app"].update(pool)
        async with running_daemon(cfg):
            yield listener_port(cfg), backend, cfg


# -- keep-alive ---------------------------------------------------------------------------------

async def test_keep_alive_client_requests_share_one_upstream_connection() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        upstream_clients = []
        for i in range(5):
            resp = await c.request("GET", f"/?n={i}")
            data = echo(resp)
            assert data["query"] == f"n={i}"
            assert resp.header_all("Connection") in ([], ["keep-alive"])
            upstream_clients.append(data["client"])
        # the backend saw the same source ip:port each time: one reused upstream connection
        assert len(set(upstream_clients)) == 1, upstream_clients
        assert upstream_clients[0].startswith("127.0.0.1:")


async def test_upstream_connection_is_reused_across_client_connections() -> None:
    async with proxy() as (port, _, _):
        clients = []
        for _ in range(3):
            async with client(port) as c:
                clients.append(echo(await c.request())["client"])
        assert len(set(clients)) == 1, clients


async def test_http10_without_keep_alive_gets_the_response_then_close() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        resp = await c.request("GET", "/bytes/100", version="1.0", host=None)
        assert resp.status == 200
        assert resp.body == pattern(100)
        assert resp.header("Content-Length") == "100"
        assert await c.closed_by_peer(2.0)


async def test_http10_keep_alive_is_answered_with_keep_alive_and_stays_open() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        for _ in range(2):
            resp = await c.request("GET", "/bytes/10", version="1.0",
                                   headers=[("Connection", "keep-alive")])
            assert resp.status == 200
            assert resp.header("Connection") == "keep-alive"
            assert resp.header("Content-Length") == "10"
            assert resp.body == pattern(10)
        assert not await c.closed_by_peer(0.3)
        resp = await c.request("GET", "/", version="1.0", headers=[("Connection", "keep-alive")])
        assert echo(resp)["http_version"] == "1.1"  # always HTTP/1.1 upstream


async def test_connection_close_is_honoured() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        resp = await c.request("GET", "/bytes/5", headers=[("Connection", "close")])
        assert resp.status == 200 and resp.body == pattern(5)
        assert resp.header("Connection") == "close"
        assert await c.closed_by_peer(2.0)


async def test_backend_connection_close_does_not_close_the_client_connection() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        first = echo(await c.request("GET", "/close"))
        second = echo(await c.request("GET", "/"))
        # the client connection survived; the backend's closed one was not reused
        assert first["client"] != second["client"]


# -- hop-by-hop headers -------------------------------------------------------------------------

HOP_REQUEST_HEADERS = [
    ("Connection", "keep-alive, X-Foo, x-bar"),
    ("X-Foo", "1"),
    ("X-Bar", "2"),
    ("Keep-Alive", "timeout=5, max=100"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Proxy-Connection", "keep-alive"),
    ("Upgrade", "h2c"),
    ("X-End-To-End", "kept"),
]


async def test_request_hop_by_hop_headers_are_not_forwarded() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        data = echo(await c.request("GET", "/", headers=HOP_REQUEST_HEADERS))
        names = seen_names(data)
        for gone in ("connection", "x-foo", "x-bar", "keep-alive", "te", "trailer",
                     "proxy-connection", "upgrade"):
            assert gone not in names, (gone, data["headers"])
        assert seen(data, "X-End-To-End") == ["kept"]
        # and the connection is still usable (Upgrade without Connection: upgrade is no upgrade)
        assert echo(await c.request("GET", "/"))["path"] == "/"


async def test_connection_close_with_named_header_not_forwarded() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        resp = await c.request("GET", "/", headers=[("Connection", "close, X-Foo"),
                                                    ("X-Foo", "1"), ("X-Other", "2")])
        data = echo(resp)
        assert "x-foo" not in seen_names(data)
        assert "connection" not in seen_names(data) or \
            all("x-foo" not in v.lower() for v in seen(data, "Connection"))
        assert seen(data, "X-Other") == ["2"]
        assert resp.header("Connection") == "close"
        assert await c.closed_by_peer(2.0)


async def _hop_response_backend(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
    while True:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n"
                     b"Content-Length: 2\r\n"
                     b"Connection: X-Hop, keep-alive\r\n"
                     b"X-Hop: secret\r\n"
                     b"Keep-Alive: timeout=5\r\n"
                     b"Proxy-Connection: keep-alive\r\n"
                     b"Trailer: X-Sum\r\n"
                     b"Upgrade: h2c\r\n"
                     b"X-End: kept\r\n"
                     b"\r\n"
                     b"ok")
        await writer.drain()


async def test_response_hop_by_hop_headers_are_not_forwarded() -> None:
    async with raw_backend(_hop_response_backend) as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            for _ in range(2):
                resp = await c.request("GET", "/")
                assert resp.status == 200
                assert resp.body == b"ok"
                assert resp.header("X-End") == "kept"
                assert resp.header("Content-Length") == "2"
                for gone in ("x-hop", "keep-alive", "proxy-connection", "trailer", "upgrade"):
                    assert gone not in resp.names(), (gone, resp.headers)
                assert all("x-hop" not in v.lower() for v in resp.header_all("Connection"))


async def _dateless_backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()


async def test_a_response_without_date_gets_one_and_one_with_date_keeps_its_own() -> None:
    """RFC 9110 6.6.1: a recipient with a clock appends the Date a forwarded response lacks."""
    async with raw_backend(_dateless_backend) as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            for _ in range(2):  # the second answer comes from the remembered head
                resp = await c.request("GET", "/")
                dates = resp.header_all("Date")
                assert len(dates) == 1 and dates[0].endswith(" GMT"), resp.headers
                assert resp.body == b"ok"
    async with proxy() as (port, _, _), client(port) as c:
        resp = await c.request("GET", "/")  # the demo backend sends its own Date
        assert len(resp.header_all("Date")) == 1


async def test_demo_backend_keep_alive_response_header_is_dropped() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        resp = await c.request("GET", "/headers/set?Keep-Alive=timeout%3D9&X-Set=yes")
        assert resp.status == 200
        assert resp.header("X-Set") == "yes"
        assert "keep-alive" not in resp.names()


# -- X-Forwarded-*, Via ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode, sent, expected", [
    ("append", [], ["127.0.0.1"]),
    ("append", [("X-Forwarded-For", "1.2.3.4")], ["1.2.3.4, 127.0.0.1"]),
    ("append", [("x-forwarded-for", "1.1.1.1"), ("X-Forwarded-For", "2.2.2.2, 3.3.3.3")],
     ["1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1"]),
    ("preserve", [("X-Forwarded-For", "1.2.3.4")], ["1.2.3.4"]),
    ("preserve", [], []),
    ("remove", [("X-Forwarded-For", "1.2.3.4")], []),
    ("remove", [], []),
])
async def test_x_forwarded_for_modes(mode: str, sent: list[tuple[str, str]],
                                     expected: list[str]) -> None:
    async with proxy(listener={"x_forwarded_for": mode}) as (port, _, _), client(port) as c:
        data = echo(await c.request("GET", "/", headers=sent))
        assert seen(data, "X-Forwarded-For") == expected


async def test_the_same_head_from_two_clients_is_made_for_each() -> None:
    """Repeated heads reuse what was made of them for the backend: only for the same client
    address (and target, below)."""
    head = [("X-Forwarded-For", "1.2.3.4")]
    async with proxy() as (port, _, _), client(port) as one, \
            client(port, source="127.0.0.2") as two:
        for _ in range(3):
            for c, addr in ((one, "127.0.0.1"), (two, "127.0.0.2"), (two, "127.0.0.2")):
                data = echo(await c.request("GET", "/same", headers=head))
                assert seen(data, "X-Forwarded-For") == [f"1.2.3.4, {addr}"]


async def test_the_same_head_to_two_targets_is_made_for_each() -> None:
    async with demo_backend("b1") as b1, demo_backend("b2") as b2:
        cfg = proxy_config(b1, b2)
        cfg["pools"]["app"]["host_header"] = "target"
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            hosts = [seen(echo(await c.request("GET", "/same")), "Host") for _ in range(4)]
    assert sorted(hosts) == sorted([[f"{HOST}:{b1}"], [f"{HOST}:{b2}"]] * 2)


async def test_x_forwarded_proto_and_port_are_set_not_trusted() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        data = echo(await c.request("GET", "/", headers=[("X-Forwarded-Proto", "https"),
                                                         ("X-Forwarded-Port", "443")]))
        assert seen(data, "X-Forwarded-Proto") == ["http"]
        assert seen(data, "X-Forwarded-Port") == [str(port)]


@pytest.mark.parametrize("sent, expected", [
    ([], "1.1 lbcdn"),
    ([("Via", "1.0 fred, 1.1 p.example.net")], "1.0 fred, 1.1 p.example.net, 1.1 lbcdn"),
    ([("Via", "1.0 a"), ("via", "1.1 b")], "1.0 a, 1.1 b, 1.1 lbcdn"),
])
async def test_via_is_appended(sent: list[tuple[str, str]], expected: str) -> None:
    async with proxy() as (port, _, _), client(port) as c:
        data = echo(await c.request("GET", "/", headers=sent))
        assert seen(data, "Via") == [expected]


# -- request id ---------------------------------------------------------------------------------

def access_log_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_request_id_generated_and_the_same_in_the_access_log(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    async with demo_backend() as backend:
        cfg = proxy_config(backend, logging={"level": "warning", "access_log": {
            "enabled": True, "path": str(log_path)}})
        async with running_daemon(cfg):
            async with client(listener_port(cfg)) as c:
                first = seen(echo(await c.request("GET", "/rid/one")), "X-Request-Id")
                second = seen(echo(await c.request("GET", "/rid/two")), "X-Request-Id")
    assert len(first) == 1 and len(second) == 1
    assert re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{8,128}", first[0]), first
    assert first != second
    lines = {line["path"]: line for line in access_log_lines(log_path)}
    assert lines["/rid/one"]["request_id"] == first[0]
    assert lines["/rid/two"]["request_id"] == second[0]
    assert lines["/rid/one"]["status"] == 200
    assert lines["/rid/one"]["method"] == "GET"
    assert lines["/rid/one"]["target"] == f"{HOST}:{backend}"


async def test_valid_client_request_id_is_kept(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    async with demo_backend() as backend:
        cfg = proxy_config(backend, logging={"level": "warning", "access_log": {
            "enabled": True, "path": str(log_path)}})
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            data = echo(await c.request("GET", "/kept",
                                        headers=[("X-Request-Id", "client-id-42.a_b")]))
    assert seen(data, "X-Request-Id") == ["client-id-42.a_b"]
    assert [line["request_id"] for line in access_log_lines(log_path)] == ["client-id-42.a_b"]


@pytest.mark.parametrize("bad", ["has space", "x" * 200, "semi;colon", "a,b"])
async def test_invalid_client_request_id_is_replaced(bad: str) -> None:
    async with proxy() as (port, _, _), client(port) as c:
        data = echo(await c.request("GET", "/", headers=[("X-Request-Id", bad)]))
        ids = seen(data, "X-Request-Id")
        assert len(ids) == 1 and ids[0] != bad and ids[0]


async def test_two_client_request_ids_forward_exactly_one() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        data = echo(await c.request("GET", "/", headers=[("X-Request-Id", "first-id"),
                                                         ("X-Request-Id", "second-id")]))
        ids = seen(data, "X-Request-Id")
        assert len(ids) == 1 and ids[0] in ("first-id", "second-id")


async def test_custom_request_id_header() -> None:
    async with proxy(listener={"request_id_header": "X-Trace-Id"}) as (port, _, _), \
            client(port) as c:
        generated = echo(await c.request("GET", "/"))
        assert len(seen(generated, "X-Trace-Id")) == 1
        assert seen(generated, "X-Request-Id") == []
        kept = echo(await c.request("GET", "/", headers=[("x-trace-id", "abc123")]))
        assert seen(kept, "X-Trace-Id") == ["abc123"]


# -- Host -----------------------------------------------------------------------------------------

async def test_host_preserved_by_default() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        data = echo(await c.request("GET", "/", host="Example.TEST:8080"))
        assert seen(data, "Host") == ["Example.TEST:8080"]


async def test_host_target_mode_sends_the_target_address() -> None:
    async with proxy(pool={"host_header": "target"}) as (port, backend, _), client(port) as c:
        data = echo(await c.request("GET", "/", host="client.example"))
        assert seen(data, "Host") == [f"{HOST}:{backend}"]


async def test_host_literal_mode() -> None:
    async with proxy(pool={"host_header": "internal.example"}) as (port, _, _), \
            client(port) as c:
        data = echo(await c.request("GET", "/", host="client.example"))
        assert seen(data, "Host") == ["internal.example"]


async def test_http10_without_host_still_sends_one_host_upstream() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        data = echo(await c.request("GET", "/", version="1.0", host=None))
        hosts = seen(data, "Host")
        assert len(hosts) == 1 and hosts[0]


async def test_absolute_form_target_replaces_host() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        data = echo(await c.request("GET", "http://abs.example/p/q?x=1", host="other.example"))
        assert seen(data, "Host") == ["abs.example"]
        assert data["path"] == "/p/q" and data["query"] == "x=1"


# -- round robin --------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def backends(n: int) -> AsyncIterator[list[int]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(demo_backend(f"b{i + 1}")) for i in range(n)]


async def names_of(port: int, n: int) -> list[str]:
    out = []
    async with client(port) as c:
        for _ in range(n):
            resp = await c.request("GET", "/")
            data = echo(resp)
            assert resp.header("X-Backend") == data["backend"]
            out.append(data["backend"])
    return out


async def test_round_robin_over_two_backends_alternates() -> None:
    async with backends(2) as ports:
        cfg = proxy_config(*ports)
        async with running_daemon(cfg):
            seq = await names_of(listener_port(cfg), 10)
    assert Counter(seq) == {"b1": 5, "b2": 5}
    assert all(a != b for a, b in zip(seq, seq[1:])), seq


async def test_round_robin_over_three_backends() -> None:
    async with backends(3) as ports:
        cfg = proxy_config(*ports)
        async with running_daemon(cfg):
            seq = await names_of(listener_port(cfg), 12)
    assert Counter(seq) == {"b1": 4, "b2": 4, "b3": 4}
    for i in range(0, 12, 3):
        assert sorted(seq[i:i + 3]) == ["b1", "b2", "b3"], seq


async def test_weights_two_to_one() -> None:
    async with backends(2) as ports:
        cfg = proxy_config()
        cfg["pools"]["app"]["targets"] = [{"host": HOST, "port": ports[0], "weight": 2},
                                          {"host": HOST, "port": ports[1], "weight": 1}]
        async with running_daemon(cfg):
            seq = await names_of(listener_port(cfg), 30)
    assert Counter(seq) == {"b1": 20, "b2": 10}


async def test_weight_zero_is_never_picked() -> None:
    async with backends(3) as ports:
        cfg = proxy_config()
        cfg["pools"]["app"]["targets"] = [f"{HOST}:{ports[0]}",
                                          {"host": HOST, "port": ports[1], "weight": 0},
                                          f"{HOST}:{ports[2]}"]
        async with running_daemon(cfg):
            seq = await names_of(listener_port(cfg), 10)
    assert Counter(seq) == {"b1": 5, "b3": 5}


# -- request bodies -----------------------------------------------------------------------------

def chunked(pieces: list[bytes], ext: bool = False) -> bytes:
    out = b""
    for i, piece in enumerate(pieces):
        extension = b";note=%d" % i if ext and i % 2 else b""
        out += b"%x%s\r\n%s\r\n" % (len(piece), extension, piece)
    return out + b"0\r\n\r\n"


ODD_SIZES = [1, 1023, 7, 65537, 3, 10000, 2]


def odd_pieces() -> list[bytes]:
    data = bytes(range(256)) * (sum(ODD_SIZES) // 256 + 1)
    pieces, at = [], 0
    for size in ODD_SIZES:
        pieces.append(data[at:at + size])
        at += size
    return pieces


async def test_chunked_request_body_is_reframed_to_sink() -> None:
    pieces = odd_pieces()
    body = b"".join(pieces)
    async with proxy() as (port, _, _), client(port) as c:
        await c.send(b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        wire = chunked(pieces, ext=True)
        for i in range(0, len(wire), 5000):  # arrive in several reads
            await c.send(wire[i:i + 5000])
            await asyncio.sleep(0)
        resp = await c.response()
        assert resp.status == 200
        result = json.loads(resp.body)
        assert result["body_bytes"] == len(body)
        assert result["sha256"] == hashlib.sha256(body).hexdigest()
        # the connection is in sync for the next request
        assert echo(await c.request("GET", "/after"))["path"] == "/after"


async def test_chunked_request_with_trailers_then_next_request() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        await c.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\n\r\n")
        data = echo(await c.response())
        assert data["body_bytes"] == 3
        assert seen(data, "Transfer-Encoding") == ["chunked"]
        assert seen(data, "Content-Length") == []
        assert echo(await c.request("GET", "/next"))["path"] == "/next"


async def test_chunked_request_body_echoed_back_exactly() -> None:
    pieces = odd_pieces()
    body = b"".join(pieces)
    async with proxy() as (port, _, _), client(port) as c:
        await c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + chunked(pieces))
        resp = await c.response()
        assert resp.status == 200
        assert resp.body == body


async def test_content_length_request_body_passes_through() -> None:
    body = pattern(100_000)
    async with proxy() as (port, _, _), client(port) as c:
        data = echo(await c.request("POST", "/", body=body))
        assert data["body_bytes"] == len(body)
        assert seen(data, "Content-Length") == [str(len(body))]
        assert seen(data, "Transfer-Encoding") == []
        resp = await c.request("PUT", "/sink", body=body)
        assert json.loads(resp.body)["sha256"] == hashlib.sha256(body).hexdigest()


# -- response framing ---------------------------------------------------------------------------

async def test_content_length_response_passes_through() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        resp = await c.request("GET", "/bytes/100000")
        assert resp.framing == "length"
        assert resp.header("Content-Length") == "100000"
        assert "transfer-encoding" not in resp.names()
        assert resp.body == pattern(100_000)


async def test_chunked_response_to_http11_stays_chunked() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        for n in (1, 65536, 200_001):
            resp = await c.request("GET", f"/bytes/{n}?chunked=1")
            assert resp.framing == "chunked", resp
            assert resp.header_all("Transfer-Encoding") == ["chunked"]
            assert "content-length" not in resp.names()
            assert resp.body == pattern(n)


async def test_chunked_response_to_http10_is_close_delimited() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        resp = await c.request("GET", "/bytes/150000?chunked=1", version="1.0", host=None)
        assert resp.status == 200
        assert resp.framing == "close"
        assert "transfer-encoding" not in resp.names()
        assert "content-length" not in resp.names()
        assert resp.body == pattern(150_000)


async def test_chunked_response_to_http10_keep_alive_client_is_close_delimited() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        resp = await c.request("GET", "/bytes/5000?chunked=1", version="1.0",
                               headers=[("Connection", "keep-alive")])
        assert resp.framing == "close"
        assert resp.header("Connection") != "keep-alive"
        assert resp.body == pattern(5000)


async def test_read_until_close_response_becomes_chunked_for_http11() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        for _ in range(2):  # and the client connection stays usable
            resp = await c.request("GET", "/bytes/70000?close=1")
            assert resp.status == 200
            assert resp.framing == "chunked", resp
            assert resp.body == pattern(70_000)


async def test_read_until_close_response_to_http10_is_close_delimited() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        resp = await c.request("GET", "/bytes/3000?close=1", version="1.0", host=None)
        assert resp.framing == "close" and resp.body == pattern(3000)


async def test_head_has_no_body_and_keeps_the_content_length() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        upstream = echo(await c.request("GET", "/before"))["client"]
        resp = await c.request("HEAD", "/bytes/1000")
        assert resp.status == 200
        assert resp.header("Content-Length") == "1000"
        # no stray body bytes: the next response on this connection parses cleanly, and the
        # upstream connection that carried the HEAD was kept (its parser knew: no body)
        after = echo(await c.request("GET", "/after-head"))
        assert after["path"] == "/after-head" and after["client"] == upstream
        resp = await c.request("HEAD", "/bytes/1000?chunked=1")
        assert resp.status == 200
        assert "content-length" not in resp.names()
        after = echo(await c.request("GET", "/after-head2"))
        assert after["path"] == "/after-head2" and after["client"] == upstream


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses(status: int) -> None:
    async with proxy() as (port, _, _), client(port) as c:
        resp = await c.request("GET", f"/status/{status}")
        assert resp.status == status
        assert "transfer-encoding" not in resp.names()
        if status == 204:
            assert "content-length" not in resp.names()
        assert echo(await c.request("GET", "/after"))["path"] == "/after"


async def test_interim_103_is_passed_on_before_the_response() -> None:
    async with proxy() as (port, _, _), client(port) as c:
        resp = await c.request("GET", "/early-hints")
        assert resp.interim == [103]
        assert echo(resp)["path"] == "/early-hints"


async def test_no_interim_response_to_an_http10_client() -> None:
    # RFC 9110 15.2: a server MUST NOT send a 1xx response to an HTTP/1.0 client; the backend
    # sends its 103 anyway, because the proxy speaks HTTP/1.1 upstream.
    async with proxy() as (port, _, _), client(port) as c:
        await c.send(b"GET /early-hints HTTP/1.0\r\n\r\n")
        async with asyncio.timeout(5):
            data = await c.reader.read(-1)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:100]
        assert b" 103 " not in data


async def _chunk_extensions_backend(reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter) -> None:
    while True:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
                     b"5;name=value\r\nhello\r\n1;x\r\n \r\n5\r\nworld\r\n"
                     b"0\r\nX-Sum: 42\r\n\r\n")
        await writer.drain()


async def test_backend_chunk_extensions_and_trailers_are_reframed() -> None:
    async with raw_backend(_chunk_extensions_backend) as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            for _ in range(2):
                resp = await c.request("GET", "/")
                assert resp.status == 200
                assert resp.framing == "chunked"
                assert resp.body == b"hello world"


def _scripted_backend(responses: list[bytes], linger_s: float = 1.0) -> Any:
    """A backend answering the n-th request of each connection with responses[n] (the last
    one repeats), and recording which connection each request came on. It never closes first
    (until linger_s of silence), so reuse is the proxy's decision alone."""
    seen: list[tuple[int, str]] = []
    count = [0]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = count[0]
        count[0] += 1
        n = 0
        while True:
            try:
                line, _, _ = await read_request(reader, timeout_s=linger_s)
            except TimeoutError:
                return
            seen.append((index, line.split(" ")[1]))
            writer.write(responses[min(n, len(responses) - 1)])
            await writer.drain()
            n += 1

    handler.seen = seen  # type: ignore[attr-defined]
    return handler


@pytest.mark.parametrize("first", [
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\nETag: \"v1\"\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 99\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
])
async def test_no_body_status_with_framing_headers_does_not_wait_for_a_body(
        first: bytes) -> None:
    handler = _scripted_backend([first, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    async with raw_backend(handler) as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            resp = await c.request("GET", "/cond", timeout_s=2)
            assert resp.status == int(first[9:12])
            second = await c.request("GET", "/next", timeout_s=2)
            assert second.status == 200 and second.body == b"ok"
    # the 204/304 ended at its head, so the same upstream connection carried the next request
    assert handler.seen == [(0, "/cond"), (0, "/next")]


@pytest.mark.parametrize("response", [
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
])
async def test_backend_response_that_ends_the_connection_is_not_reused(response: bytes) -> None:
    # RFC 9112 9.3: HTTP/1.0 without keep-alive, or Connection: close, ends the connection
    # after this response, even if the backend is slow to actually close it.
    handler = _scripted_backend([response])
    async with raw_backend(handler) as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            for path in ("/1", "/2"):
                resp = await c.request("GET", path, timeout_s=3)
                assert resp.status == 200 and resp.body == b"ok"
    assert handler.seen == [(0, "/1"), (1, "/2")]


async def test_http10_keep_alive_backend_response_is_reused() -> None:
    handler = _scripted_backend(
        [b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"])
    async with raw_backend(handler) as backend:
        cfg = proxy_config(backend)
        async with running_daemon(cfg), client(listener_port(cfg)) as c:
            for path in ("/1", "/2"):
                resp = await c.request("GET", path, timeout_s=3)
                assert resp.status == 200 and resp.body == b"ok"
                assert "connection" not in resp.names() or \
                    resp.header("Connection") == "keep-alive"
    assert handler.seen == [(0, "/1"), (0, "/2")]


async def test_client_connection_close_keeps_the_upstream_connection() -> None:
    async with proxy() as (port, _, _):
        async with client(port) as c:
            resp = await c.request("GET", "/", headers=[("Connection", "close")])
            first = echo(resp)["client"]
            assert await c.closed_by_peer(2.0)
        async with client(port) as c:
            assert echo(await c.request("GET", "/"))["client"] == first


# -- curl, a real client ------------------------------------------------------------------------

async def curl(*args: str, timeout_s: float = 10.0) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "8", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_curl_chunked_download_and_http10(tmp_path: Path) -> None:
    async with proxy() as (port, _, _):
        out_file = tmp_path / "body"
        rc, headers, err = await curl("-D", "-", "-o", str(out_file),
                                      f"http://{HOST}:{port}/bytes/300000?chunked=1")
        assert rc == 0, err
        assert b"HTTP/1.1 200 OK" in headers
        assert re.search(rb"(?im)^transfer-encoding: chunked\r$", headers)
        assert out_file.read_bytes() == pattern(300_000)
        rc, body, err = await curl("--http1.0", f"http://{HOST}:{port}/bytes/5000?chunked=1")
        assert rc == 0, err
        assert body == pattern(5000)


async def test_curl_chunked_upload(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000 + b"tail"
    src = tmp_path / "upload"
    src.write_bytes(data)
    async with proxy() as (port, _, _):
        rc, out, err = await curl("-H", "Transfer-Encoding: chunked", "--data-binary",
                                  f"@{src}", f"http://{HOST}:{port}/sink")
        assert rc == 0, err
        result = json.loads(out)
        assert result == {"body_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


async def test_curl_reuses_its_connection() -> None:
    async with proxy() as (port, _, _):
        rc, out, err = await curl("-w", "\nconnects=%{num_connects}\n",
                                  f"http://{HOST}:{port}/a", f"http://{HOST}:{port}/b")
        assert rc == 0, err
        parts = out.decode().split("\n")
        connects = [p for p in parts if p.startswith("connects=")]
        assert connects == ["connects=1", "connects=0"], out
        bodies = [json.loads(p) for p in parts if p.startswith("{")]
        assert [b["path"] for b in bodies] == ["/a", "/b"]
        assert bodies[0]["client"] == bodies[1]["client"]
