"""Batched UDP I/O on real sockets on the loopback: both implementations, one contract."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from lbcdn.dns.udpbatch import DatagramBatch, MmsgBatch, PlainBatch, datagram_batch

try:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as _s:
        _s.bind(("::1", 0))
    HAVE_V6 = True
except OSError:
    HAVE_V6 = False

Factory = Callable[..., DatagramBatch]
IMPLEMENTATIONS: list[Factory] = [PlainBatch, MmsgBatch]


def _usable(impl: Factory) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            impl(s)
        except OSError:
            return False
    return True


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda impl: impl.__name__)
def impl(request: pytest.FixtureRequest) -> Factory:
    if not _usable(request.param):
        pytest.skip(f"{request.param.__name__} needs Linux recvmmsg/sendmmsg")
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def server_sock() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    yield s
    s.close()


def client(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    c = socket.socket(family, socket.SOCK_DGRAM)
    c.bind((host, 0))
    c.settimeout(2)
    return c


def wait_readable(sock: socket.socket) -> None:
    """Datagrams sent on the loopback are queued at once; this only guards slow machines."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            sock.recv(1, socket.MSG_PEEK)
            return
        except BlockingIOError:
            time.sleep(0.001)


def test_on_linux_the_batches_are_mmsg(server_sock: socket.socket) -> None:
    if not _usable(MmsgBatch):
        pytest.skip("no recvmmsg here")
    assert isinstance(datagram_batch(server_sock), MmsgBatch)


def test_a_batch_answers_each_sender(impl: Factory,
                                     server_sock: socket.socket) -> None:
    io = impl(server_sock, batch=8)
    port = server_sock.getsockname()[1]
    a, b = client(), client()
    for i in range(10):
        (a if i % 2 else b).sendto(f"q{i}".encode(), ("127.0.0.1", port))
    wait_readable(server_sock)
    seen: list[tuple[bytes, str]] = []

    def handle(data: bytes, i: int) -> bytes:
        seen.append((data, io.peer(i)))
        return b"r" + data[1:]

    assert io.exchange(handle) == 8
    assert io.exchange(handle) == 2
    assert io.exchange(handle) == 0
    assert [d for d, _ in seen] == [f"q{i}".encode() for i in range(10)]
    assert {p for _, p in seen} == {"127.0.0.1"}
    assert sorted(a.recv(100) for _ in range(5)) == [b"r1", b"r3", b"r5", b"r7", b"r9"]
    assert sorted(b.recv(100) for _ in range(5)) == [b"r0", b"r2", b"r4", b"r6", b"r8"]
    a.close()
    b.close()


def test_silence_oversized_replies_and_oversized_datagrams(impl: Factory,
                                                           server_sock: socket.socket) -> None:
    io = impl(server_sock, batch=8, max_datagram=100, max_reply=50)
    port = server_sock.getsockname()[1]
    c = client()
    for payload in (b"quiet", b"x" * 101, b"big", b"ok"):
        c.sendto(payload, ("127.0.0.1", port))
    wait_readable(server_sock)
    handled: list[bytes] = []

    def handle(data: bytes, i: int) -> bytes | None:
        handled.append(data)
        return {b"quiet": None, b"big": b"y" * 51}.get(data, b"answer " + data)

    assert io.exchange(handle) == 4
    assert handled == [b"quiet", b"big", b"ok"]  # the 101-byte datagram never reached it
    assert c.recv(100) == b"answer ok"
    assert io.send_failures == 1
    c.settimeout(0.1)
    with pytest.raises(TimeoutError):
        c.recv(100)
    c.close()


@pytest.mark.skipif(not HAVE_V6, reason="no IPv6 loopback")
def test_ipv6_senders(impl: Factory) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        s.setblocking(False)
        io = impl(s, batch=4)
        c = client(socket.AF_INET6, "::1")
        c.sendto(b"hello", ("::1", s.getsockname()[1]))
        wait_readable(s)
        peers: list[str] = []

        def handle(data: bytes, i: int) -> bytes:
            peers.append(io.peer(i))
            return data.upper()

        assert io.exchange(handle) == 1
        assert peers == ["::1"] and c.recv(100) == b"HELLO"
        c.close()


def test_a_full_batch_of_mixed_families_keeps_addresses_apart(impl: Factory) -> None:
    """The sockaddr of each datagram goes back with its own reply, whatever its length."""
    if not HAVE_V6:
        pytest.skip("no IPv6 loopback")
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 0))
        s.setblocking(False)
        port = s.getsockname()[1]
        io = impl(s, batch=16)
        v4, v6 = client(), client(socket.AF_INET6, "::1")
        for i in range(6):
            v4.sendto(b"4-%d" % i, ("127.0.0.1", port))
            v6.sendto(b"6-%d" % i, ("::1", port))
        wait_readable(s)
        assert io.exchange(lambda data, i: data + b"!") == 12
        assert sorted(v4.recv(100) for _ in range(6)) == [b"4-%d!" % i for i in range(6)]
        assert sorted(v6.recv(100) for _ in range(6)) == [b"6-%d!" % i for i in range(6)]
        v4.close()
        v6.close()
