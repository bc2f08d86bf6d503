"""HTTP/2 upstream connections (lbcdn.upstream.h2connection) against a real grpcio server on
127.0.0.1 (h2c): the pool hands out streams, the owner gets head, body, trailers and the end
through the same callbacks as from an HTTP/1.1 connection, many calls share one connection."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from lbcdn.config.load import parse_config
from lbcdn.http import grpc
from lbcdn.http.head import ResponseHead
from lbcdn.upstream.connection import UpstreamConnection, UpstreamOwner
from lbcdn.upstream.pool import ConnectError, Pool
from tests.e2e.h2_backend import grpc_server, h2_echo_backend
from tests.e2e.harness import free_port


class Owner(UpstreamOwner):
    def __init__(self) -> None:
        self.head: ResponseHead | None = None
        self.body = b""
        self.trailers: list[tuple[bytes, bytes]] = []
        self.failed: str | None = None
        self.done = asyncio.get_running_loop().create_future()

    def upstream_interim(self, head: ResponseHead) -> None:
        pass

    def upstream_head(self, head: ResponseHead) -> None:
        self.head = head

    def upstream_body(self, data: bytes) -> None:
        self.body += data

    def upstream_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.trailers += fields

    def upstream_done(self) -> None:
        self.done.set_result("done")

    def upstream_upgraded(self, head: ResponseHead, rest: bytes) -> None:
        raise AssertionError("no upgrade over HTTP/2")

    def upstream_failed(self, kind: str) -> None:
        self.failed = kind
        self.done.set_result(kind)

    def upstream_paused(self, paused: bool) -> None:
        pass

    def upstream_reusable(self) -> bool:
        return True


@pytest.fixture
def server() -> Iterator[int]:
    with grpc_server("SERVING") as (port, _):
        yield port


def h2c_pool(port: int, response_timeout_s: float = 5.0) -> Pool:
    cfg = parse_config({"listeners": [{"name": "w", "port": 8080}],
                        "pools": {"app": {"targets": [f"127.0.0.1:{port}"],
                                          "health": {"enabled": False}, "protocol": "h2c",
                                          "response_timeout_s": response_timeout_s}}})
    return Pool(cfg.pools["app"])


def check_call(service: str = "") -> bytes:
    """An HTTP/1.1 request as the exchange writes it: a gRPC Health/Check call."""
    body = grpc.check_request(service)
    return (b"POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: backend\r\n"
            b"Content-Type: application/grpc\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


async def call(pool: Pool, request: bytes) -> tuple[Owner, UpstreamConnection]:
    target = pool.targets[0]
    stream = pool.take_idle(target) or await pool.connect(target)
    owner = Owner()
    stream.begin(owner, False)
    stream.write(request)
    await asyncio.wait_for(owner.done, 5)
    return owner, stream


async def test_a_grpc_call_gives_head_body_and_trailers(server: int) -> None:
    pool = h2c_pool(server)
    owner, stream = await call(pool, check_call())
    assert owner.failed is None
    assert owner.head is not None and owner.head.status == 200
    assert b"content-type: application/grpc" in owner.head.lead.lower()
    assert grpc.check_response_status(owner.body) == grpc.SERVING
    assert dict(owner.trailers)[b"grpc-status"] == b"0"
    assert stream.multiplexed and stream.closed
    pool.close()


async def test_an_error_status_comes_in_the_trailers(server: int) -> None:
    pool = h2c_pool(server)
    owner, _ = await call(pool, check_call("no-such-service"))
    assert owner.head is not None and owner.head.status == 200
    assert dict(owner.trailers)[b"grpc-status"] == b"5"   # NOT_FOUND
    pool.close()


async def test_a_trailers_only_answer_gives_its_status_as_trailers() -> None:
    # grpcio answers errors with a head, an empty message and trailers; other servers (and
    # lbcdn itself) answer with one HEADERS frame: the echo backend does, on /trailers-only
    async with h2_echo_backend(delay_s=0.0) as (port, _):
        pool = h2c_pool(port)
        owner, _ = await call(pool, check_call().replace(b"/grpc.health.v1.Health/Check",
                                                         b"/trailers-only"))
        assert owner.head is not None and owner.head.status == 200
        assert b"content-type: application/grpc" in owner.head.lead
        assert b"grpc-status" not in owner.head.lead   # moved to the trailers
        assert owner.trailers == [(b"grpc-status", b"12"), (b"grpc-message", b"nope")]
        assert owner.body == b""
        pool.close()


async def test_concurrent_calls_share_one_connection(server: int) -> None:
    pool = h2c_pool(server)
    target = pool.targets[0]
    first, _ = await call(pool, check_call())   # the connection and the server's SETTINGS
    results = await asyncio.gather(*(call(pool, check_call()) for _ in range(20)))
    assert all(dict(o.trailers)[b"grpc-status"] == b"0" for o, _ in [(first, None)] + results)
    assert len(pool.h2_links[target.key]) == 1
    assert target.open == 1
    pool.close()
    await asyncio.sleep(0.1)
    assert target.open == 0


async def test_a_stream_that_is_not_answered_in_time_fails_as_a_response_timeout() -> None:
    # a listener that accepts and never speaks HTTP/2 back
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        pool = h2c_pool(port, response_timeout_s=0.2)
        owner, stream = await call(pool, check_call())
        assert owner.failed == "response_timeout"
        assert stream.closed
        pool.close()
    finally:
        server.close()


async def test_a_refused_connect_is_a_connect_error() -> None:
    pool = h2c_pool(free_port())
    with pytest.raises(ConnectError) as err:
        await pool.connect(pool.targets[0])
    assert err.value.kind == "connect_refused"


async def test_a_backend_gone_mid_call_fails_its_streams_as_reset(server: int) -> None:
    pool = h2c_pool(server)
    await call(pool, check_call())
    target = pool.targets[0]
    stream = pool.take_idle(target)
    assert stream is not None
    owner = Owner()
    stream.begin(owner, False)
    # the head only: the call waits for its body, and the connection goes away
    stream.write(b"POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: b\r\n"
                 b"Content-Type: application/grpc\r\nContent-Length: 5\r\n\r\n")
    link = pool.h2_links[target.key][0]
    assert link.transport is not None
    link.transport.abort()
    assert await asyncio.wait_for(owner.done, 5) == "reset"
    assert pool.h2_links.get(target.key) == []


@pytest.mark.parametrize("pool, message", [
    ({"protocol": "h2"}, "pools.app.protocol: h2 needs `tls` (use h2c for plain HTTP/2)"),
    ({"protocol": "h2c", "tls": {}}, "pools.app.protocol: h2c is plain HTTP/2: use h2 with "
                                     "`tls`"),
    ({"protocol": "h3"}, "pools.app.protocol: must be one of"),
    ({"protocol": "h2c", "proxy_protocol": "v2"},
     "pools.app.proxy_protocol: not with protocol h2c"),
])
def test_protocol_config_errors_name_the_yaml_path(pool: dict[str, object], message: str
                                                   ) -> None:
    from lbcdn.configkit.errors import ConfigError
    with pytest.raises(ConfigError) as err:
        parse_config({"listeners": [{"name": "w", "port": 8080}],
                      "pools": {"app": {"targets": ["10.0.0.1:80"], **pool}}})
    assert message in str(err.value)


async def test_protocol_h2_speaks_http2_over_tls_with_alpn(tmp_path: Path) -> None:
    import trustme
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    with grpc_server("SERVING", tls=(cert.private_key_pem.bytes(), chain)) as (port, _):
        cfg = parse_config({"listeners": [{"name": "w", "port": 8080}],
                            "pools": {"app": {"targets": [f"127.0.0.1:{port}"],
                                              "health": {"enabled": False}, "protocol": "h2",
                                              "tls": {"ca_file": str(tmp_path / "ca.pem")}}}})
        pool = Pool(cfg.pools["app"])
        owner, _ = await call(pool, check_call())
        assert grpc.check_response_status(owner.body) == grpc.SERVING
        assert dict(owner.trailers)[b"grpc-status"] == b"0"
        pool.close()


async def test_protocol_h2_refuses_a_target_that_does_not_choose_h2(tmp_path: Path) -> None:
    import ssl

    import trustme
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = parse_config({"listeners": [{"name": "w", "port": 8080}],
                            "pools": {"app": {"targets": [f"127.0.0.1:{port}"],
                                              "health": {"enabled": False}, "protocol": "h2",
                                              "tls": {"ca_file": str(tmp_path / "ca.pem")}}}})
        pool = Pool(cfg.pools["app"])
        with pytest.raises(ConnectError) as err:
            await pool.connect(pool.targets[0])
        assert err.value.kind == "tls_handshake"
    finally:
        server.close()
