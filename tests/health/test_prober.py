"""One probe against real local servers that pass, fail, hang, answer 500, close, talk
garbage, keep or drop connections; https with a self-signed certificate; uvloop."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from lbcdn.health.matcher import parse_matcher
from lbcdn.health.prober import ConnectionSlot, ProbeSpec, probe
from lbcdn.health.state import Outcome
from tests.health.backend import Backend, check, free_port, spec


@pytest.mark.parametrize("mode, kw, outcome, status", [
    ("ok", {}, Outcome.PASS, 200),
    ("status:500", {}, Outcome.CODE_MISMATCH, 500),
    ("status:202", {"matcher": parse_matcher("200,202")}, Outcome.PASS, 202),
    ("status:302", {"matcher": parse_matcher("200-299")}, Outcome.CODE_MISMATCH, 302),
    ("close", {}, Outcome.CONNECT_FAILED, None),
    ("garbage", {}, Outcome.BAD_RESPONSE, None),
    ("body:service ok", {"search_string": b"ok"}, Outcome.PASS, 200),
    ("body:service down", {"search_string": b"ok"}, Outcome.STRING_MISMATCH, 200),
    ("big", {"search_string": b"needle"}, Outcome.STRING_MISMATCH, 200),
    ("big", {"search_string": b"xxx"}, Outcome.PASS, 200),
    ("chunked", {"search_string": b"needle"}, Outcome.PASS, 200),
    ("eof", {"search_string": b"needle"}, Outcome.PASS, 200),
    ("interim", {}, Outcome.PASS, 200),
    ("status:500", {"search_string": b"ok"}, Outcome.CODE_MISMATCH, 500),
])
async def test_probe_outcomes(backend: Backend, mode: str, kw: dict[str, object],
                              outcome: Outcome, status: int | None) -> None:
    backend.mode = mode
    result = await probe(spec(backend.port, **kw))
    assert (result.outcome, result.status) == (outcome, status), result.detail
    assert backend.hits == 1


async def test_probe_request_head(backend: Backend) -> None:
    await probe(spec(backend.port, path="/healthz?x=1", method="HEAD"))
    await probe(spec(backend.port, host_header="app.example"))
    head = backend.heads[0].decode()
    assert head.startswith("HEAD /healthz?x=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{backend.port}\r\n" in head
    assert "User-Agent: lbcdn-health-checker/1.0\r\n" in head
    assert "Connection: close\r\n" in head
    assert "Host: app.example\r\n" in backend.heads[1].decode()


async def test_code_mismatch_detail_as_alb(backend: Backend) -> None:
    backend.mode = "status:503"
    r = await probe(spec(backend.port))
    assert r.detail == "Health checks failed with these codes: [503]"


@pytest.mark.parametrize("mode, what", [("hang", "complete answer"),
                                        ("slowhead", "complete answer")])
async def test_probe_timeout(backend: Backend, mode: str, what: str) -> None:
    backend.mode = mode
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r = await probe(spec(backend.port, timeout_s=0.2))
    assert r.outcome is Outcome.TIMEOUT and r.detail == f"no {what} within 0.2 s"
    assert 0.15 <= loop.time() - t0 < 1.0


async def test_probe_refused_and_tcp() -> None:
    port = await free_port()
    assert (await probe(spec(port))).outcome is Outcome.CONNECT_FAILED
    assert (await probe(spec(port, protocol="tcp"))).outcome is Outcome.CONNECT_FAILED
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
    try:
        r = await probe(spec(port, protocol="tcp"))
        assert r.ok and r.status is None and r.latency_s < 1.0
    finally:
        server.close()
        await server.wait_closed()


async def test_probe_https_self_signed(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    b = Backend(tls=ctx)
    await b.start()
    try:
        r = await probe(spec(b.port, protocol="https", host_header="app.example"))
        assert r.outcome is Outcome.PASS, r.detail
        b.mode = "status:500"
        assert (await probe(spec(b.port, protocol="https"))).outcome is Outcome.CODE_MISMATCH
        # plain http against a TLS port is not a passing check
        assert not (await probe(spec(b.port, timeout_s=0.5))).ok
    finally:
        await b.stop()
    assert ProbeSpec("https", "10.0.0.1", 443, host_header="app.example:8443").server_hostname \
        == "app.example"
    assert ProbeSpec("https", "10.0.0.1", 443).server_hostname == ""


async def test_keep_alive_reuses_one_connection(backend: Backend) -> None:
    backend.mode = "keep"
    slot = ConnectionSlot()
    s = spec(backend.port, keep_alive=True)
    assert b"Connection: close" not in s.request
    for _ in range(5):
        assert (await check(s, slot)).ok
    assert backend.hits == 5 and backend.connections == 1
    slot.close()


async def test_keep_alive_after_the_backend_closed_the_idle_connection(backend: Backend) -> None:
    slot = ConnectionSlot()
    s = spec(backend.port, keep_alive=True)
    for _ in range(3):  # "ok" answers keep-alive, then the backend aborts the connection
        assert (await check(s, slot)).ok
        await asyncio.sleep(0.05)
        assert slot.sock is None  # the idle watcher saw the close and dropped it
    assert backend.connections == 3


async def test_keep_alive_race_is_retried_on_a_new_connection(backend: Backend) -> None:
    backend.mode = "keep"
    slot = ConnectionSlot()
    s = spec(backend.port, keep_alive=True)
    assert (await check(s, slot)).ok
    assert slot.sock is not None
    for w in list(backend.writers):
        w.transport.abort()  # the backend drops the idle connection ...
    time.sleep(0.05)          # ... and (blocking the loop) the idle watcher cannot notice
    assert (await check(s, slot)).ok  # sent on the dead one, retried on a new one
    assert backend.connections == 2 and backend.hits == 2
    slot.close()


def test_raw_probe_under_uvloop() -> None:
    """The daemon runs uvloop, whose transports and fd watchers differ from asyncio's."""
    import uvloop

    async def main() -> None:
        b = Backend()
        await b.start()
        try:
            assert (await probe(spec(b.port))).ok
            b.mode = "status:500"
            assert (await probe(spec(b.port))).outcome is Outcome.CODE_MISMATCH
            b.mode = "hang"
            assert (await probe(spec(b.port, timeout_s=0.1))).outcome is Outcome.TIMEOUT
            b.mode = "keep"
            slot = ConnectionSlot()
            for _ in range(3):
                assert (await check(spec(b.port, keep_alive=True), slot)).ok
            assert b.connections == 4
            slot.close()
        finally:
            await b.stop()
        port = await free_port()
        assert (await probe(spec(port, protocol="tcp"))).outcome is Outcome.CONNECT_FAILED

    uvloop.run(asyncio.wait_for(main(), 10))


def test_ipv6_literal_spec() -> None:
    # (no IPv6 socket: tests stay on 127.0.0.1, and some CI containers have no ::1)
    s = ProbeSpec("http", "::1", 80)
    assert s.family == socket.AF_INET6 and s.request.split(b"\r\n")[1] == b"Host: [::1]:80"
    assert ProbeSpec("http", "backend.internal", 80).family is None  # resolved by asyncio


async def test_keep_alive_big_answer_is_not_kept(backend: Backend) -> None:
    backend.mode = "body:" + "x" * 100000
    slot = ConnectionSlot()
    r = await check(spec(backend.port, keep_alive=True, search_string=b"xxx"), slot)
    assert r.ok and slot.sock is None


async def test_keep_alive_verdict_stands_when_the_rest_is_late(backend: Backend) -> None:
    backend.mode = "slowbody"  # head, then the body never completes
    r = await check(spec(backend.port, keep_alive=True, timeout_s=0.2), ConnectionSlot())
    assert r.outcome is Outcome.PASS and r.status == 200


# -- gRPC health checks (grpc.health.v1.Health/Check) against a real grpcio server ----------

def grpc_spec(port: int, **kw: object) -> ProbeSpec:
    base: dict[str, object] = {"protocol": "grpc", "address": "127.0.0.1", "port": port,
                               "timeout_s": 3.0, "matcher": parse_matcher("0", grpc=True)}
    base.update(kw)
    return ProbeSpec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("status, kw, outcome, code", [
    ("SERVING", {}, Outcome.PASS, 0),
    ("SERVING", {"grpc_service": "app"}, Outcome.PASS, 0),
    ("NOT_SERVING", {}, Outcome.CODE_MISMATCH, 0),
    ("NOT_SERVING", {"grpc_service": "app"}, Outcome.CODE_MISMATCH, 0),
    # an unknown service is grpc-status 5 (NOT_FOUND), outside matcher 0...
    ("SERVING", {"grpc_service": "nope"}, Outcome.CODE_MISMATCH, 5),
    # ...and inside an ALB-style range that takes it
    ("SERVING", {"grpc_service": "nope", "matcher": parse_matcher("0-99", grpc=True)},
     Outcome.PASS, 5),
])
async def test_grpc_probe_outcomes(status: str, kw: dict[str, object], outcome: Outcome,
                                   code: int) -> None:
    from tests.e2e.h2_backend import grpc_server
    with grpc_server(status) as (port, _):
        result = await probe(grpc_spec(port, **kw))
    assert result.outcome is outcome, result
    assert result.status == code, result


async def test_grpc_probe_of_a_plain_http_server_is_a_bad_response(backend: Backend) -> None:
    backend.mode = "ok"
    result = await probe(grpc_spec(backend.port, timeout_s=2.0))
    assert result.outcome in (Outcome.BAD_RESPONSE, Outcome.CONNECT_FAILED), result


async def test_grpc_probe_of_a_closed_port_fails_to_connect() -> None:
    result = await probe(grpc_spec(await free_port()))
    assert result.outcome is Outcome.CONNECT_FAILED, result


async def test_grpc_probe_over_tls_when_the_pool_speaks_h2() -> None:
    import trustme

    from tests.e2e.h2_backend import grpc_server
    cert = trustme.CA().issue_cert("127.0.0.1")
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    with grpc_server("SERVING", tls=(cert.private_key_pem.bytes(), chain)) as (port, _):
        # certificates are not verified, as ALB's checks do not
        result = await probe(grpc_spec(port, grpc_tls=True))
        plain = await probe(grpc_spec(port, timeout_s=1.0))
    assert result.outcome is Outcome.PASS, result
    assert plain.outcome is not Outcome.PASS, plain
