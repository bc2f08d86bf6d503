"""Request and response heads: the framing rules a proxy must enforce, and serialization.

httptools (llhttp) already rejects most smuggling vectors: Content-Length with Transfer-Encoding,
duplicate or non-digit Content-Length, bad chunk sizes, bare LF, CR/LF/NUL in values, obs-fold,
whitespace before the colon. What it lets through and this module refuses:
- Transfer-Encoding other than exactly `chunked` (`,chunked`, `gzip, chunked`): we speak no
  other transfer coding, and a proxy that guesses is how requests get smuggled;
- a missing or repeated Host on HTTP/1.1, or a Host that is not a host[:port];
- request-targets that are not origin-form, absolute-form, or `*` for OPTIONS;
- on responses, the same Transfer-Encoding rule (-> 502 by the caller).
Header names are compared lower-cased; values are forwarded byte for byte.
"""

from __future__ import annotations

import re

from lbcdn.http.errors import HttpError

# RFC 9110 7.6.1 plus the legacy ones proxies still strip.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade",
})

# reg-name / IPv4 / [IPv6] with an optional port; nothing that could turn into a path or userinfo.
_HOST_RE = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=%]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?\Z")
_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


def connection_tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


class RequestHead:
    """A validated request head. `headers` is the list as received."""

    __slots__ = ("method", "target", "path", "query", "version", "headers", "host",
                 "content_length", "chunked", "keep_alive", "upgrade", "expect_continue",
                 "drop", "request_id")

    def __init__(self, method: bytes, target: bytes, path: bytes, query: bytes | None,
                 version: bytes, headers: list[tuple[bytes, bytes]], host: bytes,
                 content_length: int | None, chunked: bool, keep_alive: bool,
                 upgrade: bytes | None, expect_continue: bool, drop: set[bytes],
                 request_id: bytes | None) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.host = host
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.expect_continue = expect_continue
        # lower-cased names not to forward: hop-by-hop plus those named in Connection
        self.drop = drop
        # the client's own request id, when it sent a usable one
        self.request_id = request_id

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


def check_request(method: bytes, target: bytes, version: bytes,
                  headers: list[tuple[bytes, bytes]], keep_alive: bool,
                  upgrade: bool, id_header: bytes = b"x-request-id") -> RequestHead:
    """Validate a parsed request head; raise HttpError(4xx) naming what was wrong."""
    host: bytes | None = None
    hosts = 0
    content_length: int | None = None
    chunked = False
    expect_continue = False
    upgrade_value: bytes | None = None
    request_id: bytes | None = None
    drop: set[bytes] = set(HOP_BY_HOP)
    for name, value in headers:
        n = name.lower()
        if n == b"host":
            hosts += 1
            host = value.strip()
        elif n == b"content-length":
            content_length = int(value)  # llhttp has checked digits and duplicates
        elif n == b"transfer-encoding":
            if chunked or value.strip().lower() != b"chunked":
                raise HttpError(400, "unsupported Transfer-Encoding (only a single chunked)")
            chunked = True
        elif n == b"connection":
            drop |= connection_tokens(value)
        elif n == b"expect":
            if value.strip().lower() != b"100-continue":
                raise HttpError(417, "unsupported Expect value")
            expect_continue = True
        elif n == b"upgrade":
            upgrade_value = value
        elif n == id_header:
            request_id = value if len(value) <= 128 and _TOKEN_RE.match(value) else None
    if chunked and content_length is not None:
        raise HttpError(400, "both Content-Length and Transfer-Encoding")
    if hosts > 1:
        raise HttpError(400, "more than one Host header")
    if host is not None and not _HOST_RE.match(host):
        raise HttpError(400, "invalid Host header")

    # request-target forms, RFC 9112 3.2
    if target[:1] == b"/":
        path, sep, query = target.partition(b"?")
    elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        rest = target.split(b"://", 1)[1]
        slash = rest.find(b"/")
        qmark = rest.find(b"?")
        end = min(i for i in (slash, qmark, len(rest)) if i >= 0)
        authority = rest[:end]
        if not authority or b"@" in authority or not _HOST_RE.match(authority):
            raise HttpError(400, "invalid request-target")
        # absolute-form wins over the Host header (RFC 9112 3.2.2)
        host = authority
        hosts = 1
        path, sep, query = (rest[end:] or b"/").partition(b"?")
        if path[:1] != b"/":
            path = b"/" + path
        target = path + sep + query
    elif target == b"*" and method == b"OPTIONS":
        path, sep, query = b"*", b"", b""
    elif method == b"CONNECT":
        raise HttpError(405, "CONNECT is not supported")
    else:
        raise HttpError(400, "invalid request-target")
    if hosts == 0:
        if version == b"1.1":
            raise HttpError(400, "missing Host header")
        host = b""
    assert host is not None
    return RequestHead(method, target, path, query if sep else None, version, headers, host,
                       content_length, chunked, keep_alive,
                       upgrade_value if upgrade else None, expect_continue, drop, request_id)


class ResponseHead:
    __slots__ = ("status", "reason", "headers", "content_length", "chunked", "keep_alive",
                 "drop")

    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                 content_length: int | None, chunked: bool, keep_alive: bool,
                 drop: set[bytes]) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.drop = drop


def check_response(status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                   keep_alive: bool) -> ResponseHead:
    """Validate an upstream response head; raise HttpError(502) when it is malformed."""
    content_length: int | None = None
    chunked = False
    drop: set[bytes] = set(HOP_BY_HOP)
    for name, value in headers:
        n = name.lower()
        if n == b"content-length":
            if content_length is not None:
                raise HttpError(502, "upstream sent a malformed response")
            content_length = int(value)
        elif n == b"transfer-encoding":
            if chunked or value.strip().lower() != b"chunked":
                raise HttpError(502, "upstream sent a malformed response")
            chunked = True
        elif n == b"connection":
            drop |= connection_tokens(value)
    if chunked and content_length is not None:
        raise HttpError(502, "upstream sent a malformed response")
    if not 100 <= status <= 599:
        raise HttpError(502, "upstream sent a malformed response")
    return ResponseHead(status, reason, headers, content_length, chunked, keep_alive, drop)


def is_token(value: bytes) -> bool:
    return _TOKEN_RE.match(value) is not None


def response_has_body(method: bytes, status: int) -> bool:
    return not (method == b"HEAD" or status < 200 or status in (204, 304))
