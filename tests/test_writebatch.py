"""writebatch: outside a batch writes go straight to the transport; inside one they are queued
per writer and each touched writer sends once (one write when the pieces come to at most
JOIN_MAX bytes, joined: over TLS one record; writelines for more) when the outermost batch ends. Closed writers and writers without a transport send nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from lbcdn import writebatch
from lbcdn.config.load import parse_config
from lbcdn.upstream.connection import UpstreamConnection
from lbcdn.upstream.pool import Pool
from lbcdn.writebatch import Writer


class FakeTransport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def writelines(self, data: list[bytes]) -> None:
        self.calls.append(("writelines", list(data)))

    def sent(self) -> bytes:
        out = b""
        for kind, data in self.calls:
            out += data if kind == "write" else b"".join(data)  # type: ignore[operator,arg-type]
        return out


def conn() -> Writer:
    """A real Writer (an upstream connection: Writer is a compiled trait, which neither makes
    instances nor takes interpreted subclasses) on a fake transport. Needs a running loop."""
    cfg = parse_config({"listeners": [{"name": "w", "port": 8080}],
                        "pools": {"app": {"targets": ["10.0.0.1:80"],
                                          "health": {"enabled": False}}}})
    pool = Pool(cfg.pools["app"])
    w = UpstreamConnection(pool, pool.targets[0])
    w.transport = FakeTransport()  # type: ignore[assignment]
    return w


def calls(w: Writer) -> list[tuple[str, object]]:
    assert isinstance(w.transport, FakeTransport)
    return w.transport.calls


@pytest.fixture(autouse=True)
def no_batch_left_open() -> Iterator[None]:
    yield
    assert writebatch._state.open is False
    assert writebatch._state.touched == []


async def test_without_a_batch_writes_go_straight_through() -> None:
    c = conn()
    c.write(b"a")
    c.writelines([b"b", b"c"])
    assert calls(c) == [("write", b"a"), ("writelines", [b"b", b"c"])]


async def test_one_write_in_a_batch_is_one_write_at_the_end() -> None:
    c = conn()
    with writebatch.batch():
        c.write(b"head")
        assert calls(c) == []
    assert calls(c) == [("write", b"head")]


async def test_several_small_writes_in_a_batch_become_one_write_in_order() -> None:
    c = conn()
    with writebatch.batch():
        c.write(b"1")
        c.writelines([b"2", b"3"])
        c.write(b"4")
        c.writelines([b"5"])
    assert calls(c) == [("write", b"12345")]


async def test_a_batch_over_join_max_becomes_one_writelines_in_order() -> None:
    c = conn()
    big = b"x" * writebatch.JOIN_MAX
    with writebatch.batch():
        c.write(b"head")
        c.writelines([big, b"tail"])
    assert calls(c) == [("writelines", [b"head", big, b"tail"])]


async def test_writelines_first_in_a_batch_copies_the_list() -> None:
    c = conn()
    parts = [b"a", b"b"]
    with writebatch.batch():
        c.writelines(parts)
        c.write(b"c")
    assert parts == [b"a", b"b"]  # the caller's list is not extended
    assert calls(c) == [("write", b"abc")]


async def test_each_touched_writer_flushes_once() -> None:
    a, b, untouched = conn(), conn(), conn()
    with writebatch.batch():
        a.write(b"a1")
        b.write(b"b1")
        a.write(b"a2")
    assert calls(a) == [("write", b"a1a2")]
    assert calls(b) == [("write", b"b1")]
    assert calls(untouched) == []


async def test_nested_batch_does_not_end_the_outer_one() -> None:
    c = conn()
    with writebatch.batch():
        c.write(b"x")
        with writebatch.batch():
            c.write(b"y")
        assert calls(c) == []  # inner exit must not flush
        c.write(b"z")
    assert calls(c) == [("write", b"xyz")]


def test_begin_returns_false_when_already_open() -> None:
    assert writebatch.begin() is True
    try:
        assert writebatch.begin() is False
    finally:
        writebatch.end()


async def test_batch_flushes_even_when_the_body_raises() -> None:
    c = conn()
    with pytest.raises(RuntimeError):
        with writebatch.batch():
            c.write(b"partial")
            raise RuntimeError("boom")
    assert calls(c) == [("write", b"partial")]


async def test_writer_closed_during_the_batch_sends_nothing() -> None:
    c = conn()
    with writebatch.batch():
        c.write(b"x")
        c.closed = True
    assert calls(c) == []
    assert c._pending is None


async def test_closed_writer_outside_a_batch_sends_nothing() -> None:
    c = conn()
    c.closed = True
    c.write(b"x")
    c.writelines([b"y"])
    assert calls(c) == []


async def test_writer_without_transport_drops_silently() -> None:
    c = conn()
    c.transport = None
    c.write(b"x")
    with writebatch.batch():
        c.write(b"y")
    assert c._pending is None


async def test_explicit_flush_inside_a_batch_sends_now_and_later_writes_queue_again() -> None:
    # what close() does: flush what is pending before closing the transport
    c = conn()
    with writebatch.batch():
        c.write(b"a")
        c.flush()
        assert calls(c) == [("write", b"a")]
        c.write(b"b")
    assert calls(c) == [("write", b"a"), ("write", b"b")]


async def test_a_new_batch_after_the_end_starts_empty() -> None:
    c = conn()
    with writebatch.batch():
        c.write(b"1")
    with writebatch.batch():
        c.write(b"2")
    assert calls(c) == [("write", b"1"), ("write", b"2")]
    assert c.transport.sent() == b"12"  # type: ignore[union-attr]


def test_now_is_read_once_per_batch() -> None:
    with writebatch.batch():
        first = writebatch.now()
        time.sleep(0.002)
        assert writebatch.now() == first
    assert writebatch.now() > first  # outside a batch: the clock itself
    with writebatch.batch():
        assert writebatch.now() > first
