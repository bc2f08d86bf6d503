"""UpstreamConnection without sockets: a fake transport, a recording owner, the real pool."""

from __future__ import annotations

import asyncio
from typing import Any

from lbcdn.config.load import parse_config
from lbcdn.http.head import ResponseHead
from lbcdn.upstream.connection import UpstreamConnection, UpstreamOwner
from lbcdn.upstream.pool import Pool

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.written += parts

    def get_extra_info(self, name: str) -> Any:
        return None

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


class Owner(UpstreamOwner):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def upstream_interim(self, head: ResponseHead) -> None:
        self.events.append(("interim", head.status))

    def upstream_head(self, head: ResponseHead) -> None:
        self.events.append(("head", head.status))

    def upstream_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def upstream_done(self) -> None:
        self.events.append(("done", None))

    def upstream_upgraded(self, head: ResponseHead, rest: bytes) -> None:
        self.events.append(("upgraded", rest))

    def upstream_failed(self, kind: str) -> None:
        self.events.append(("failed", kind))

    def upstream_paused(self, paused: bool) -> None:
        pass

    def upstream_reusable(self) -> bool:
        return True


def connection(response_timeout_s: float = 5.0) -> tuple[Pool, UpstreamConnection, Transport]:
    cfg = parse_config({"listeners": [{"name": "w", "port": 8080}],
                        "pools": {"app": {"targets": ["10.0.0.1:80"],
                                          "health": {"enabled": False},
                                          "response_timeout_s": response_timeout_s}}})
    pool = Pool(cfg.pools["app"])
    conn = UpstreamConnection(pool, pool.targets[0])
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return pool, conn, transport


async def test_a_whole_response_in_one_read_goes_back_to_the_idle_list() -> None:
    pool, conn, transport = connection(response_timeout_s=0.05)
    owner = Owner()
    conn.begin(owner, False)
    conn.data_received(RESPONSE)
    assert owner.events == [("head", 200), ("body", b"0123456789"), ("done", None)]
    assert pool.take_idle(pool.targets[0]) is conn
    pool.release(conn)
    await asyncio.sleep(0.15)  # well past the response timeout: it no longer applies
    assert not transport.aborted and pool.targets[0].idle == [conn]


async def test_each_read_pushes_the_response_timeout_back() -> None:
    pool, conn, transport = connection(response_timeout_s=0.2)
    owner = Owner()
    conn.begin(owner, False)
    for part in (RESPONSE[:20], RESPONSE[20:45], RESPONSE[45:]):
        await asyncio.sleep(0.12)  # 0.36 s in all, never 0.2 s without a read
        conn.data_received(part)
    assert owner.events[-1] == ("done", None) and not transport.aborted


async def test_a_stall_mid_body_times_out() -> None:
    pool, conn, transport = connection(response_timeout_s=0.1)
    owner = Owner()
    conn.begin(owner, False)
    conn.data_received(RESPONSE[:45])
    await asyncio.sleep(0.3)
    assert owner.events[-1] == ("failed", "response_timeout") and transport.aborted


async def test_bytes_on_an_idle_connection_drop_it() -> None:
    pool, conn, transport = connection()
    owner = Owner()
    conn.begin(owner, False)
    conn.data_received(RESPONSE)
    conn.data_received(b"HTTP/1.1 200 OK\r\n")
    assert transport.aborted
