"""Request and response heads: the framing rules a proxy must enforce, and serialization.

httptools (llhttp) already rejects most smuggling vectors: Content-Length with Transfer-Encoding,
duplicate or non-digit Content-Length, bad chunk sizes, bare LF, CR/LF/NUL in values, obs-fold,
whitespace before the colon. What it lets through and this module refuses:
- Transfer-Encoding other than exactly `chunked` (`,chunked`, `gzip, chunked`): we speak no
  other transfer coding, and a proxy that guesses is how requests get smuggled;
- a missing or repeated Host on HTTP/1.1, or a Host that is not a host[:port] (an empty one
  included);
- request-targets that are not origin-form, absolute-form, or `*` for OPTIONS;
An Upgrade that offers only h2c is ignored: the request is served as a plain one.
Responses are read by lbcdn.http.response, with the same rules.
Header names are compared lower-cased; values are forwarded byte for byte.
"""

from __future__ import annotations

from typing import Final

import re

from lbcdn.http.errors import HttpError, reason as reason_phrase

# RFC 9110 7.6.1 plus the legacy ones proxies still strip.
HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade",
})

# reg-name / IPv4 / [IPv6] with an optional port; nothing that could turn into a path or userinfo.
# Never empty: an http URI with an empty host is invalid (RFC 9110 4.2.1).
_HOST_RE: Final = re.compile(
    rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=%]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?\Z")
_TOKEN_RE: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


def connection_tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


# What a request header is to the proxy. Ordinary end-to-end headers (the great majority) are not
# in the table and are copied to `RequestHead.fwd` as they come.
H_DROP: Final = 0
H_HOST: Final = 1
H_CL: Final = 2
H_TE: Final = 3
H_CONNECTION: Final = 4
H_EXPECT: Final = 5
H_UPGRADE: Final = 6
H_XFF: Final = 7
H_VIA: Final = 8
H_ID: Final = 9
H_UA: Final = 10


def request_header_kinds(id_header: bytes) -> dict[bytes, int]:
    """The lookup table for check_request; `id_header` is the lower-cased request id header."""
    kinds = {name: H_DROP for name in HOP_BY_HOP}
    kinds.update({
        b"host": H_HOST, b"content-length": H_CL, b"transfer-encoding": H_TE,
        b"connection": H_CONNECTION, b"expect": H_EXPECT, b"upgrade": H_UPGRADE,
        b"x-forwarded-for": H_XFF, b"x-forwarded-proto": H_DROP, b"x-forwarded-port": H_DROP,
        b"via": H_VIA, b"user-agent": H_UA,
    })
    kinds[id_header] = H_ID
    return kinds


_DEFAULT_KINDS: Final = request_header_kinds(b"x-request-id")


class RequestHead:
    """A validated request head.

    `fwd` holds the end-to-end header lines to send upstream, as (name, ": ", value, CRLF)
    pieces ready for b"".join: hop-by-hop headers, those named in Connection, and those the
    proxy sets itself (Host, X-Forwarded-*, Via, the request id) are left out; the latter are
    kept in their own fields."""

    __slots__ = ("method", "target", "path", "query", "version", "headers", "host",
                 "content_length", "chunked", "keep_alive", "upgrade", "expect_continue",
                 "fwd", "xff", "via", "request_id", "user_agent", "upstream_lead",
                 "final_recipient")

    def __init__(self, method: bytes, target: bytes, path: bytes, query: bytes | None,
                 version: bytes, headers: list[tuple[bytes, bytes]], host: bytes,
                 content_length: int | None = None, chunked: bool = False,
                 keep_alive: bool = False, upgrade: bytes | None = None,
                 expect_continue: bool = False, fwd: list[bytes] | None = None,
                 xff: list[bytes] | None = None, via: list[bytes] | None = None,
                 request_id: bytes | None = None, user_agent: bytes = b"") -> None:
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
        self.fwd = fwd if fwd is not None else []
        self.xff = xff
        self.via = via
        # the client's own request id, when it sent a usable one
        self.request_id = request_id
        self.user_agent = user_agent
        # what the proxy made of this head for a backend, with what it depended on (see
        # lbcdn.edge.exchange.Exchange._upstream_head); heads are shared by known-head lookups
        self.upstream_lead: tuple[object, bytes, object, bytes, bytes, bytes] | None = None
        # an OPTIONS with `Max-Forwards: 0`: lbcdn answers it itself (RFC 9110 7.6.2)
        self.final_recipient = False

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


def _without(fwd: list[bytes], names: set[bytes]) -> list[bytes]:
    """`fwd` minus the header lines whose (lower-cased) name is in `names`."""
    out: list[bytes] = []
    for i in range(0, len(fwd), 4):
        if fwd[i].lower() not in names:
            out += fwd[i:i + 4]
    return out


def forwarded_for(mode: str, xff: list[bytes] | None, client: bytes) -> bytes | None:
    """The X-Forwarded-For value sent upstream under the listener's `x_forwarded_for` mode
    (`append`, `preserve`, `remove`), None for none; `xff`: the values received."""
    if mode == "append":
        return b", ".join(xff) + b", " + client if xff else client
    if mode == "preserve" and xff:
        return b", ".join(xff)
    return None


def origin_request(method: bytes, target: bytes, host: bytes, fwd: list[bytes],
                   extra: list[tuple[bytes, bytes]], head: RequestHead, x_forwarded_for: str,
                   client: bytes, forwarded_headers: bytes, id_header: bytes, *,
                   chunked: bool = False, upgrade: bytes | None = None) -> list[bytes]:
    """The one request head lbcdn sends to an origin, whichever way the request leaves (a
    proxied request, a cache fill or revalidation, each attempt of an origin group): request
    line and Host, the forwarded lines `fwd`, `extra` fields (a revalidation's validators), then
    the edge's own: X-Forwarded-For under the listener's mode, the listener's forwarded headers,
    Via, the body's framing and the Upgrade asked for, and last the request id's field name
    (`head`: the client's request, for its X-Forwarded-For and Via). The request id, and the
    blank line, follow per request."""
    parts = [method, b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    parts += fwd
    for name, value in extra:
        parts += (name, b": ", value, b"\r\n")
    xff = forwarded_for(x_forwarded_for, head.xff, client)
    if xff is not None:
        parts += (b"X-Forwarded-For: ", xff, b"\r\n")
    via = b", ".join(head.via) + b", 1.1 lbcdn" if head.via else b"1.1 lbcdn"
    parts += (forwarded_headers, b"Via: ", via, b"\r\n")
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if upgrade is not None:
        parts += (b"Connection: upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    parts += (id_header, b": ")
    return parts


PLAIN_CONNECTION: Final = frozenset({b"close", b"keep-alive", b"upgrade"})
# Connection options that remove no header line, in requests and responses alike: the usual
# values, hop-by-hop fields (dropped anyway), and Content-Length: dropping a named one would
# leave the body unframed (RFC 9112 6.3). (A request's Host is never a forwarded line.)
CONNECTION_KEEPS: Final = PLAIN_CONNECTION | HOP_BY_HOP | {b"content-length"}
# the methods lbcdn forwards (CONNECT and TRACE get 405 with this list)
ALLOWED_METHODS: Final = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
ALLOW_LINE: Final = b"Allow: " + ALLOWED_METHODS + b"\r\n"
_H2C: Final = frozenset({b"h2c"})


def check_request(method: bytes, target: bytes, version: bytes,
                  headers: list[tuple[bytes, bytes]], keep_alive: bool,
                  upgrade: bool, kinds: dict[bytes, int] = _DEFAULT_KINDS) -> RequestHead:
    """Validate a parsed request head; raise HttpError(4xx) naming what was wrong."""
    host: bytes | None = None
    hosts = 0
    content_length: int | None = None
    chunked = False
    expect_continue = False
    upgrade_value: bytes | None = None
    request_id: bytes | None = None
    user_agent = b""
    xff: list[bytes] | None = None
    via: list[bytes] | None = None
    named: set[bytes] | None = None
    fwd: list[bytes] = []
    get = kinds.get
    for name, value in headers:
        kind = get(name.lower())
        if kind is None:
            fwd += (name, b": ", value, b"\r\n")
        elif kind == H_HOST:
            hosts += 1
            host = value.strip()
        elif kind == H_UA:
            user_agent = value
            fwd += (name, b": ", value, b"\r\n")
        elif kind == H_CL:
            content_length = int(value)  # llhttp has checked digits and duplicates
            fwd += (name, b": ", value, b"\r\n")
        elif kind == H_TE:
            codings = [c.strip().lower() for c in value.split(b",")]
            if chunked or version != b"1.1" or codings != [b"chunked"]:
                if not chunked and version == b"1.1" and codings[-1] == b"chunked" \
                        and all(codings) and b"chunked" not in codings[:-1]:
                    # well framed, but a coding we do not implement (RFC 9112 6.1)
                    raise HttpError(501, "unsupported transfer coding")
                raise HttpError(400, "invalid Transfer-Encoding (only a single chunked)")
            chunked = True
        elif kind == H_CONNECTION:
            tokens = connection_tokens(value) - CONNECTION_KEEPS
            if tokens:
                named = tokens if named is None else named | tokens
        elif kind == H_EXPECT:
            if value.strip().lower() != b"100-continue":
                raise HttpError(417, "unsupported Expect value")
            if version == b"1.1":
                expect_continue = True
                fwd += (name, b": ", value, b"\r\n")
            # an HTTP/1.0 client cannot have meant it: ignored, not forwarded (RFC 9110 10.1.1)
        elif kind == H_UPGRADE:
            upgrade_value = value
        elif kind == H_XFF:
            xff = [value] if xff is None else xff + [value]
        elif kind == H_VIA:
            via = [value] if via is None else via + [value]
        elif kind == H_ID:
            request_id = value if len(value) <= 128 and _TOKEN_RE.match(value) else None
        # H_DROP: hop-by-hop, or set by the proxy itself
    if upgrade_value is not None and (connection_tokens(upgrade_value) == _H2C or chunked
                                      or content_length):
        # HTTP/2 over cleartext (curl --http2, Java clients): lbcdn speaks HTTP/1.1 to its
        # backends, and one that switched would leave an unrouted tunnel (h2c smuggling). An
        # upgrade request with a body (a WebSocket handshake has none) would have its body
        # taken for the new protocol's bytes. A server may ignore Upgrade (RFC 9110 7.8): a
        # plain request, forwarded without it.
        upgrade_value = None
    if named is not None:
        fwd = _without(fwd, named)
        if b"x-forwarded-for" in named:
            xff = None
        if b"via" in named:
            via = None
    if chunked and content_length is not None:
        raise HttpError(400, "both Content-Length and Transfer-Encoding")
    if hosts > 1:
        raise HttpError(400, "more than one Host header")
    if host is not None and not _HOST_RE.match(host):
        raise HttpError(400, "invalid Host header")

    # request-target forms, RFC 9112 3.2
    if method == b"CONNECT" or method == b"TRACE":
        # TRACE echoes the request, cookies and all, to whoever can make a browser send it
        raise HttpError(405, f"{method.decode()} is not supported", headers=ALLOW_LINE)
    if target[:1] == b"/":
        path, sep, query = target.partition(b"?")
    elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        rest = target.split(b"://", 1)[1]
        slash = rest.find(b"/")
        qmark = rest.find(b"?")
        end = min(i for i in (slash, qmark, len(rest)) if i >= 0)
        authority = rest[:end]
        if b"@" in authority or not _HOST_RE.match(authority):
            raise HttpError(400, "invalid request-target")
        # absolute-form wins over the Host header (RFC 9112 3.2.2), which 1.1 still requires
        host = authority
        path, sep, query = (rest[end:] or b"/").partition(b"?")
        if path[:1] != b"/":
            path = b"/" + path
        target = path + sep + query
    elif target == b"*" and method == b"OPTIONS":
        path, sep, query = b"*", b"", b""
    else:
        raise HttpError(400, "invalid request-target")
    if hosts == 0 and version == b"1.1":
        raise HttpError(400, "missing Host header")  # absolute-form or not (RFC 9112 3.2)
    if host is None:
        host = b""
    final_recipient = False
    if method == b"OPTIONS":
        # RFC 9110 7.6.2: an intermediary decrements Max-Forwards, and answers at zero
        for i in range(0, len(fwd), 4):
            if fwd[i].lower() == b"max-forwards":
                value = fwd[i + 2].strip()
                if value.isdigit():
                    hops = int(value)
                    final_recipient = hops == 0
                    fwd[i + 2] = b"%d" % max(hops - 1, 0)
                break
    head = RequestHead(method, target, path, query if sep else None, version, headers, host,
                       content_length, chunked, keep_alive,
                       upgrade_value if upgrade else None, expect_continue, fwd, xff, via,
                       request_id, user_agent)
    head.final_recipient = final_recipient
    return head


class HeadLimits:
    """The limits on a request head (lbcdn.configkit.limits names them: the edge's listeners
    and the control process's share their keys), copied into native attributes, and the one
    place they are checked: the edge's client connection and the control listeners' HeadGuard
    ask the same methods while llhttp parses a head. Each returns the error to answer, or
    None."""
    __slots__ = ("max_request_line_bytes", "max_header_bytes", "max_headers_total_bytes",
                 "max_header_count")

    def __init__(self, max_request_line_bytes: int, max_header_bytes: int,
                 max_headers_total_bytes: int, max_header_count: int) -> None:
        self.max_request_line_bytes = max_request_line_bytes
        self.max_header_bytes = max_header_bytes
        self.max_headers_total_bytes = max_headers_total_bytes
        self.max_header_count = max_header_count

    def url_error(self, length: int) -> HttpError | None:
        """The request-target read so far is `length` bytes long."""
        if length > self.max_request_line_bytes:
            return HttpError(414, "request line too long")
        return None

    def header_error(self, size: int, total: int, count: int) -> HttpError | None:
        """A header line of `size` bytes (name, value, ": " and CRLF) was read; with it the
        head has `count` header fields of `total` bytes."""
        if size > self.max_header_bytes:
            return HttpError(431, "a request header is too large")
        if total > self.max_headers_total_bytes:
            return HttpError(431, "request headers too large")
        if count > self.max_header_count:
            return HttpError(431, "too many request headers")
        return None

    def head_error(self, size: int) -> HttpError | None:
        """`size` bytes of a head arrived, its end not yet (a line still arriving is not seen
        by the callbacks above)."""
        if size > self.max_headers_total_bytes + self.max_request_line_bytes:
            return HttpError(431, "request head too large")
        return None


def field_lines(block: bytes) -> list[tuple[bytes, bytes]]:
    """Serialized header lines (`Name: value` CRLF ..., a status line first or not) back to
    (name, value) pairs, values without their surrounding whitespace."""
    out: list[tuple[bytes, bytes]] = []
    for line in block.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon and name[:5] != b"HTTP/":
            out.append((name, value.strip(b" \t")))
    return out


class Head:
    """A response head as the exchange hands it to a protocol adapter (lbcdn.edge.stream):
    `status`, `reason` (b"" for the standard phrase) and `length`, the length of the body when
    it is known (its Content-Length), else None.

    Its header fields (end-to-end ones only: framing and connection fields are the adapter's)
    come in one of two forms, and the other is made from it when first asked for:
    - `fields()`: (name, value) pairs, without Content-Length (that is `length`);
    - `wire()`: the HTTP/1.1 form, the status line and the field lines, with the Content-Length
      line of `length` when it is known, without the blank line. Stored entries and the heads
      read from backends already have it (and heads from backends are remembered and shared), so
      the HTTP/1.1 adapter writes them as they are; `whole` is `wire()` and the blank line when
      it was made already (b"" when not).
    `extra` holds the fields this one response adds (Age, Cache-Status, HSTS, a missing Date),
    as serialized lines; `fields()` includes them, `wire()` does not. A Head that is shared
    (a backend's, a stored entry's) is never modified: a response that adds fields gets its own.
    """

    __slots__ = ("status", "reason", "length", "extra", "whole", "_wire", "_fields")

    def __init__(self, status: int, reason: bytes, length: int | None,
                 fields: list[tuple[bytes, bytes]] | None = None, wire: bytes = b"",
                 extra: bytes = b"") -> None:
        self.status = status
        self.reason = reason
        self.length = length
        self.extra = extra
        self.whole = b""
        self._wire = wire
        self._fields = fields

    def wire(self) -> bytes:
        wire = self._wire
        if not wire:
            parts = [b"HTTP/1.1 %d %s\r\n" % (self.status, self.reason or
                                                 reason_phrase(self.status))]
            for name, value in self._fields or ():
                parts += (name, b": ", value, b"\r\n")
            if self.length is not None:
                parts.append(b"Content-Length: %d\r\n" % self.length)
            wire = self._wire = b"".join(parts)
        return wire

    def fields(self) -> list[tuple[bytes, bytes]]:
        own = self._fields
        if own is None:
            own = self._fields = [(n, v) for n, v in field_lines(self._wire)
                                  if n.lower() != b"content-length"]
        return own + field_lines(self.extra) if self.extra else own


class ResponseHead(Head):
    """A validated response head read from a backend; `fwd` holds the end-to-end header lines,
    ready to join, and `lead` is what a proxy sends first: our HTTP/1.1 status line (the
    backend's reason, or the standard one) and those lines (its `wire()`); `whole` is `lead` and
    the blank line, the whole head when the proxy adds no line of its own; `has_date` says
    whether the head has a Date field. `headers` holds only the fields the proxy looks at
    (Upgrade). Heads read from a backend are remembered by their bytes and shared by every
    response with the same head: never modify one."""

    __slots__ = ("headers", "content_length", "chunked", "keep_alive", "fwd", "lead",
                 "has_date")

    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                 content_length: int | None, chunked: bool, keep_alive: bool,
                 fwd: list[bytes], has_date: bool = True) -> None:
        lead = b"HTTP/1.1 %d %s\r\n%s" % (status, reason or reason_phrase(status),
                                            b"".join(fwd))
        super().__init__(status, reason, content_length, wire=lead)
        self.headers = headers
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.fwd = fwd
        self.lead = lead
        self.whole = lead + b"\r\n"
        self.has_date = has_date


def is_token(value: bytes) -> bool:
    return _TOKEN_RE.match(value) is not None


def response_has_body(method: bytes, status: int) -> bool:
    return not (method == b"HEAD" or status < 200 or status in (204, 304))
