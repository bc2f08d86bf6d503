"""What the demo backend does with a request, decided from its head alone (no I/O).

`route()` maps method, path, query and the upgrade headers to a `Route`; the protocol in
backend.py carries it out. Bad parameters become a `Route` of kind BAD with the status and a
reason, so the protocol has one way to answer them.

Rules:
- The common case (`GET /`, unknown paths) returns a shared constant: no allocation per request.
- Endpoint parameters are parsed strictly (plain decimal digits), because the backend is a test
  peer: a typo should give a clear 400, not a surprising default.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import parse_qsl

from lbcdn.demo.websocket import valid_client_key
from lbcdn.http.errors import reason

PATTERN = b"0123456789abcdef"
CHUNK_BYTES = 64 * 1024
# One 64 KiB chunk of the pattern. 64 KiB is a multiple of 16, so every chunk of a /bytes body
# starts in phase and the same object can be written again and again.
PATTERN_CHUNK = PATTERN * (CHUNK_BYTES // len(PATTERN))

MAX_DELAY_MS = 600_000
_MAX_DIGITS = 18  # keeps int() cheap and values far below 2**63


class Kind(enum.Enum):
    ECHO = "echo"                  # JSON echo of the request (also the default)
    ECHO_STREAM = "echo_stream"    # POST|PUT /echo: body streamed back
    SINK = "sink"                  # POST|PUT /sink: body hashed and dropped
    BYTES = "bytes"                # /bytes/N
    STATUS = "status"              # /status/N
    DELAY = "delay"                # /delay/MS
    EARLY_HINTS = "early_hints"    # /early-hints: 103 then 200
    WEBSOCKET = "websocket"        # /ws with a valid upgrade
    NEED_UPGRADE = "need_upgrade"  # /ws without one: 426
    HEADERS_SET = "headers_set"    # /headers/set?name=value
    CLOSE = "close"                # /close
    COUNT = "count"                # /count
    EXPECT_FAIL = "expect_fail"    # /expect-fail: 417 before the body
    BAD = "bad"                    # a bad parameter: `status` and `reason`


@dataclass(frozen=True, slots=True)
class Route:
    kind: Kind
    # Status for STATUS and BAD; byte count for BYTES; milliseconds for DELAY.
    number: int = 0
    chunked: bool = False
    close: bool = False
    abort_after: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    reason: str = ""


ECHO = Route(Kind.ECHO)
_SIMPLE = {
    "/early-hints": Route(Kind.EARLY_HINTS),
    "/close": Route(Kind.CLOSE),
    "/count": Route(Kind.COUNT),
    "/expect-fail": Route(Kind.EXPECT_FAIL),
}
_ECHO_STREAM = Route(Kind.ECHO_STREAM)
_SINK = Route(Kind.SINK)
_NEED_UPGRADE = Route(Kind.NEED_UPGRADE)
_WEBSOCKET = Route(Kind.WEBSOCKET)
# Framing is the backend's job; letting a query set these would produce broken responses.
_FORBIDDEN_SET = frozenset({"content-length", "transfer-encoding"})
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789"
                         "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def bad(reason: str, status: int = 400) -> Route:
    return Route(Kind.BAD, number=status, reason=reason)


def _number(text: str, what: str) -> int | Route:
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_DIGITS:
        return bad(f"{what} must be plain decimal digits")
    return int(text)


def _flag(params: dict[str, str], name: str) -> bool:
    return params.get(name, "0") not in ("", "0", "false", "no")


def route(method: bytes, path: str, query: str, *, upgrade: str | None = None,
          ws_key: str | None = None, ws_version: str | None = None,
          can_upgrade: bool = False) -> Route:
    """Decide the endpoint. `upgrade` is the Upgrade header, `can_upgrade` whether the parser
    saw a complete upgrade request (Upgrade plus `Connection: upgrade`)."""
    if path == "/":
        return ECHO
    simple = _SIMPLE.get(path)
    if simple is not None:
        return simple
    if path == "/echo" and method in (b"POST", b"PUT"):
        return _ECHO_STREAM
    if path == "/sink" and method in (b"POST", b"PUT"):
        return _SINK
    if path.startswith("/bytes/"):
        return _bytes_route(path[7:], query)
    if path.startswith("/status/"):
        n = _number(path[8:], "status")
        if isinstance(n, Route):
            return n
        if not 200 <= n <= 999:
            return bad("status must be 200..999 (1xx are interim, not final)")
        return Route(Kind.STATUS, number=n)
    if path.startswith("/delay/"):
        ms = _number(path[7:], "delay")
        if isinstance(ms, Route):
            return ms
        if ms > MAX_DELAY_MS:
            return bad(f"delay must be <= {MAX_DELAY_MS} ms")
        return Route(Kind.DELAY, number=ms)
    if path == "/headers/set":
        return _headers_route(query)
    if path == "/ws":
        return _ws_route(method, upgrade, ws_key, ws_version, can_upgrade)
    return ECHO


def _bytes_route(count: str, query: str) -> Route:
    n = _number(count, "byte count")
    if isinstance(n, Route):
        return n
    params = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    abort_after: int | None = None
    if "abort_after" in params:
        m = _number(params["abort_after"], "abort_after")
        if isinstance(m, Route):
            return m
        abort_after = min(m, n)
    return Route(Kind.BYTES, number=n, chunked=_flag(params, "chunked"),
                 close=_flag(params, "close"), abort_after=abort_after)


def _headers_route(query: str) -> Route:
    pairs = parse_qsl(query, keep_blank_values=True)
    for name, value in pairs:
        if not name or not set(name) <= _TOKEN_CHARS:
            return bad(f"header name {name!r} is not a token")
        if name.lower() in _FORBIDDEN_SET:
            return bad(f"{name} is set by the backend itself")
        # parse_qsl decodes %0d%0a: refuse rather than let a query split the response head.
        if any((c < " " and c != "\t") or c == "\x7f" for c in value):
            return bad(f"header {name} has a control character")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            return bad(f"header {name} is not latin-1")
    return Route(Kind.HEADERS_SET, headers=tuple(pairs))


def _ws_route(method: bytes, upgrade: str | None, key: str | None, version: str | None,
              can_upgrade: bool) -> Route:
    if upgrade is None or "websocket" not in [t.strip().lower() for t in upgrade.split(",")]:
        return _NEED_UPGRADE
    if method != b"GET" or not can_upgrade:
        return bad("a WebSocket handshake is a GET with Connection: upgrade")
    if key is None or not valid_client_key(key.strip()):
        return bad("missing or malformed Sec-WebSocket-Key")
    if version is None or version.strip() != "13":
        return Route(Kind.BAD, number=426, reason="only Sec-WebSocket-Version 13 is spoken",
                     headers=(("Sec-WebSocket-Version", "13"),))
    return _WEBSOCKET


_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    """`HTTP/1.1 <status> <reason>\\r\\n`, cached because a benchmark asks for 200 each time."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason(status))
        _STATUS_LINES[status] = line
    return line


def has_no_body(status: int) -> bool:
    """RFC 9110: 1xx, 204 and 304 responses never carry content."""
    return status < 200 or status in (204, 304)
