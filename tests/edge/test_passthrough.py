"""The pass-through's pure helper (the pass-through itself runs end to end in
tests/e2e/test_cache.py)."""

from __future__ import annotations

from lbcdn.edge.passthrough import forwarded_head
from lbcdn.http.head import RequestHead


def test_forwarded_keeps_everything_but_the_target_and_the_lines() -> None:
    head = RequestHead(b"PUT", b"/a?x=1&y=2", b"/a", b"x=1&y=2", b"1.1", [(b"Host", b"h")],
                       b"h", content_length=3, keep_alive=True,
                       fwd=[b"X-A", b": ", b"1", b"\r\n"], xff=[b"1.2.3.4"])
    moved = forwarded_head(head, b"/prod/a?x=1", b"x=1", [])
    assert (moved.target, moved.path, moved.query) == (b"/prod/a?x=1", b"/prod/a", b"x=1")
    assert moved.content_length == 3 and moved.keep_alive and moved.host == b"h"
    assert moved.fwd == [] and moved.xff == [b"1.2.3.4"] and moved.method == b"PUT"
