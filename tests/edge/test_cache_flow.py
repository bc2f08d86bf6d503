"""The pure helpers of the cache flow (the flow itself runs end to end in
tests/e2e/test_cache.py)."""

from __future__ import annotations

from lbcdn.edge.cache_flow import _forwarded, _with_status, parse_fwd
from lbcdn.http.head import RequestHead
from lbcdn.http.response import parse_head


def test_parse_fwd_round_trips_a_response_head() -> None:
    resp = parse_head(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=5\r\nConnection: x-a\r\n"
                      b"X-A: dropped\r\nETag:  \"t\" \r\nContent-Length: 3\r\n\r\n")
    assert parse_fwd(resp.fwd) == [(b"Cache-Control", b"max-age=5"), (b"ETag", b'"t"'),
                                   (b"Content-Length", b"3")]
    assert parse_fwd([]) == []


def test_with_status_replaces_only_the_status_line() -> None:
    head = b"HTTP/1.1 200 OK\r\nA: b\r\nContent-Length: 1\r\n"
    assert _with_status(head, 404) == b"HTTP/1.1 404 Not Found\r\nA: b\r\nContent-Length: 1\r\n"


def test_forwarded_keeps_everything_but_the_target_and_the_lines() -> None:
    head = RequestHead(b"PUT", b"/a?x=1&y=2", b"/a", b"x=1&y=2", b"1.1", [(b"Host", b"h")],
                       b"h", content_length=3, keep_alive=True,
                       fwd=[b"X-A", b": ", b"1", b"\r\n"], xff=[b"1.2.3.4"])
    moved = _forwarded(head, b"/prod/a?x=1", b"x=1", [])
    assert (moved.target, moved.path, moved.query) == (b"/prod/a?x=1", b"/prod/a", b"x=1")
    assert moved.content_length == 3 and moved.keep_alive and moved.host == b"h"
    assert moved.fwd == [] and moved.xff == [b"1.2.3.4"] and moved.method == b"PUT"
