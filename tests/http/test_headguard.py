"""lbcdn.http.headguard: the edge's head limits and phases, for bytes another parser serves."""

from __future__ import annotations

import pytest

from lbcdn.configkit.limits import HttpLimitsConfig
from lbcdn.http.headguard import BODY, HEAD, IDLE, HeadGuard


def guard(**limits: int) -> HeadGuard:
    return HeadGuard(HttpLimitsConfig(**limits))


@pytest.mark.parametrize("data,status,detail", [
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n", 414, "request line too long"),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431,
     "a request header is too large"),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n", 431,
     "too many request headers"),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 4000) for i in range(9))
     + b"\r\n", 431, "request headers too large"),
    (b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 400, None),
])
# A header is judged once what follows it arrived (llhttp reports it then), as on the edge.
def test_limit_errors_have_the_edges_statuses(data: bytes, status: int,
                                              detail: str | None) -> None:
    err = guard().feed(data)
    assert err is not None and err.status == status
    if detail is not None:
        assert err.detail == detail


def test_a_head_line_that_never_ends_is_cut_at_the_head_limit() -> None:
    g = guard()
    assert g.feed(b"GET / HTTP/1.1\r\nX-Long: ") is None
    errors = [g.feed(b"v" * 4096) for _ in range(20)]
    first = next(i for i, e in enumerate(errors) if e is not None)
    assert errors[first] is not None and errors[first].status == 431
    assert first * 4096 <= 32768 + 8192


def test_phases_follow_heads_and_bodies_across_reads() -> None:
    g = guard()
    assert g.phase == IDLE
    assert g.feed(b"PUT /x HTTP/1.1\r\nHost: x\r\n") is None and g.phase == HEAD
    assert g.feed(b"Content-Length: 5\r\n\r\nab") is None and g.phase == BODY
    assert g.heads == 1
    assert g.feed(b"cde") is None and g.phase == IDLE
    # pipelined: two bodiless requests and the start of a third in one read
    assert g.feed(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\nGET /") is None
    assert g.phase == HEAD and g.heads == 3


def test_limits_come_from_the_config() -> None:
    g = guard(max_header_count=2)
    err = g.feed(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")
    assert err is not None and err.status == 431


def test_an_upgrade_request_is_followed_by_the_next_head() -> None:
    g = guard()
    assert g.feed(b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
                  b"GET /next HTTP/1.1\r\n") is None
    assert g.phase == HEAD and g.heads == 1
