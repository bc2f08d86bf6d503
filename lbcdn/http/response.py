"""A strict HTTP/1.1 response reader for upstream connections: bytes in, events out, no I/O.

Why not httptools here: llhttp reports every header through a Python callback, and a proxy then
walks the headers again to rebuild them. A backend's response head is forwarded nearly
unchanged, so this reader validates the whole head with one regular expression, finds the few
headers that matter (framing and hop-by-hop) with another, and forwards the rest as one slice.
Bodies with a Content-Length are passed on as the slices that arrived, without copying.
Backends repeat their heads byte for byte (only Date moves, once a second), so the outcome of
parsing a head is remembered by its bytes, and a read that starts with the head remembered last
is not even searched for the end of its head; each response still gets its own ResponseHead.

The grammar is RFC 9112's, without the leniencies: a status line `HTTP/1.x NNN [reason]`;
header lines `token ":" value` where value is HT, SP, VCHAR or obs-text (so no CR, LF, NUL,
no obs-fold, no whitespace before the colon); CRLF line ends only. Content-Length must be
digits and appear once; Transfer-Encoding must be exactly `chunked` and not come with a
Content-Length; chunk sizes are hex digits only (no sign, prefix or whitespace before them,
at most 15 after leading zeros) with CRLF line ends. Anything else raises HttpError(502): a
malformed response never reaches the client.
"""

from __future__ import annotations

import re
from typing import Final

from mypy_extensions import mypyc_attr

from lbcdn.http.errors import HttpError
from lbcdn.http.head import CONNECTION_KEEPS, ResponseHead, connection_tokens
from lbcdn.memo import remember

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_CHUNK_LINE: Final = 4096

_VALUE: Final = rb"[\t\x20-\x7e\x80-\xff]*"
_HEAD_RE: Final = re.compile(
    rb"HTTP/1\.[01] [0-9]{3}(?: " + _VALUE + rb")?\r\n"
    rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:" + _VALUE + rb"\r\n)*\r\n")
# chunk-size, then chunk-ext with the BWS RFC 9112 7.1.1 allows before its ";"; leading zeros
# are no part of the at most 15 hex digits (60 bits) a size may have
_CHUNK_SIZE_RE: Final = re.compile(
    rb"0*([0-9A-Fa-f]{1,15})(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?\r\n")
_BARE_LF_RE: Final = re.compile(rb"(?<!\r)\n")
_TRAILER_LINE_RE: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:" + _VALUE + rb"\r\n")

_MALFORMED: Final = "upstream sent a malformed response"

# states (Final: compiled code reads them as constants, not from the module's dict)
_HEAD: Final = 0
_LENGTH: Final = 1
_CHUNK_SIZE: Final = 2
_CHUNK_DATA: Final = 3
_CHUNK_END: Final = 4
_TRAILERS: Final = 5
_UNTIL_CLOSE: Final = 6
_DONE: Final = 7


@mypyc_attr(allow_interpreted_subclasses=True)
class ResponseSink:
    """What a ResponseReader reports to. A base class, not a Protocol: compiled code calls a
    base class's methods through its method table, a Protocol's by looking up their names."""

    def response_interim(self, head: ResponseHead) -> None:
        raise NotImplementedError

    def response_head(self, head: ResponseHead) -> None:
        raise NotImplementedError

    def response_body(self, data: bytes) -> None:
        raise NotImplementedError

    def response_done(self, reusable: bool) -> None:
        raise NotImplementedError

    def response_upgrade(self, head: ResponseHead, rest: bytes) -> None:
        raise NotImplementedError


# Parsing is a pure function of the head's bytes, and a backend repeats its heads byte for byte
# (Date changes once a second), so a head seen before is not parsed again: its ResponseHead is
# shared (never modified). The table is bounded in entries and in head size and emptied when
# full; only heads that parsed cleanly are kept.
# `_recent.last` is the head remembered most recently: a read that starts with it needs no search
# for the end of its head (that head ends at its first CRLF CRLF, so the read's head is exactly
# it).
MEMO_MAX_ENTRIES: Final = 256
MEMO_MAX_HEAD_BYTES: Final = 2048
_parsed: Final[dict[bytes, ResponseHead]] = {}


class _Recent:
    """Holds `last` (an attribute, not a module global: compiled code reads it directly)."""

    def __init__(self) -> None:
        self.last: tuple[bytes, ResponseHead] | None = None


_recent: Final = _Recent()


def parse_head(head: bytes) -> ResponseHead:
    """Validate a complete response head (through its final CRLF CRLF) and build the
    ResponseHead whose `fwd` holds its end-to-end header lines (shared: see `_parsed`)."""
    if len(head) > MEMO_MAX_HEAD_BYTES:
        return _parse(head)
    parsed = _parsed.get(head)
    if parsed is None:
        parsed = remember(_parsed, head, _parse(head), MEMO_MAX_ENTRIES)
    _recent.last = head, parsed
    return parsed


def _parse(head: bytes) -> ResponseHead:
    if _HEAD_RE.fullmatch(head) is None:
        raise HttpError(502, _MALFORMED)
    status = int(head[9:12])
    # RFC 9110 8.6: no Content-Length on a 1xx or a 204; one that came is checked, not forwarded
    no_length = status < 200 or status == 204
    line_end = head.find(b"\r\n")
    # `HTTP/1.1 200\r\n` (no SP before an empty reason, RFC 9112 4) must not slice [13:12]:
    # compiled, a bytes slice that ends before it starts is an error, not b""
    reason = head[13:line_end] if line_end > 13 else b""
    http10 = head[7] == 0x30  # b"0"
    content_length: int | None = None
    chunked = False
    conn_close = http10
    named: set[bytes] | None = None
    upgrade: bytes | None = None
    # the header block without the status line, the hop-by-hop lines (and a Content-Length
    # not forwarded) and the final CRLF, as the pieces between the lines left out; it starts
    # with the status line's CRLF
    pieces: list[bytes] = []
    pos = line_end
    # The grammar check above guarantees `\r\nname:` starts each header line and that no
    # value holds a CR, so a case-sensitive scan of a lower-cased copy finds the headers that
    # matter with their values (twice as fast as a case-insensitive one). The values it gives
    # are lower-cased: only Upgrade's is taken from the head itself.
    lower = head.lower()
    for m in _SPECIAL_RE.finditer(lower, line_end):
        name, value = m.group(1, 2)
        value = value.strip(b" \t")
        if name == b"content-length":
            if content_length is not None or not value.isdigit():
                raise HttpError(502, _MALFORMED)
            content_length = int(value)
            if not no_length:
                continue  # forwarded: it frames the body
        start, end = m.span()
        pieces.append(head[pos:start])
        pos = end
        if name == b"connection":
            if value == b"keep-alive":
                if http10:
                    conn_close = False
                continue  # the usual value, without a set of tokens
            tokens = connection_tokens(value)
            if b"close" in tokens:
                conn_close = True
            elif http10 and b"keep-alive" in tokens:
                conn_close = False
            tokens -= CONNECTION_KEEPS
            if tokens:
                named = tokens if named is None else named | tokens
        elif name == b"transfer-encoding":
            if chunked or value != b"chunked":
                raise HttpError(502, _MALFORMED)
            chunked = True
        elif name == b"upgrade":
            upgrade = head[m.start(2):end].strip(b" \t")
    if chunked and content_length is not None:
        raise HttpError(502, _MALFORMED)
    if not 100 <= status <= 599:
        raise HttpError(502, _MALFORMED)
    if pieces:
        pieces.append(head[pos:-4])
        block = b"".join(pieces)
    else:
        block = head[line_end:-4]
    if named:
        block = b"".join(line for line in _lines(block)
                         if line[2:line.find(b":")].lower() not in named)
    block = block[2:]
    return ResponseHead(status, reason, [] if upgrade is None else [(b"Upgrade", upgrade)],
                        None if no_length else content_length, chunked, not conn_close,
                        [block, b"\r\n"] if block else [],
                        # a Date named in Connection is gone; the proxy adds one (RFC 9110 6.6.1)
                        has_date=b"\r\ndate:" in lower and not (named and b"date" in named))


_SPECIAL_RE: Final = re.compile(rb"\r\n(content-length|transfer-encoding|connection|keep-alive|"
                                rb"proxy-connection|te|trailer|upgrade):([^\r]*)")


def _lines(block: bytes) -> list[bytes]:
    """b"\r\nA: 1\r\nB: 2" -> [b"\r\nA: 1", b"\r\nB: 2"]."""
    return [b"\r\n" + part for part in block.split(b"\r\n")[1:]]


class ResponseReader:
    """Reads one response (and the interim ones before it) from an upstream connection."""

    __slots__ = ("_sink", "_head_only", "_state", "_buf", "_remaining", "_keep_alive")

    def __init__(self, sink: ResponseSink, head_only: bool) -> None:
        self._sink = sink
        self._head_only = head_only
        self._state = _HEAD
        self._buf = b""
        self._remaining = 0
        self._keep_alive = False

    def feed(self, data: bytes) -> None:
        state = self._state
        if state == _LENGTH:
            # the hot path: a body slice of a Content-Length response
            n = len(data)
            if n < self._remaining:
                self._remaining -= n
                self._sink.response_body(data)
                return
        elif state == _UNTIL_CLOSE:
            self._sink.response_body(data)
            return
        if self._buf:
            data = self._buf + data
            self._buf = b""
        while data:
            state = self._state
            if state == _HEAD:
                data = self._read_head(data)
            elif state == _LENGTH:
                n = self._remaining
                if len(data) < n:
                    self._remaining -= len(data)
                    self._sink.response_body(data)
                    return
                self._sink.response_body(data[:n] if len(data) > n else data)
                self._finish(len(data) > n)
                return
            elif state == _CHUNK_SIZE:
                m = _CHUNK_SIZE_RE.match(data)
                if m is None:
                    if b"\n" in data[:MAX_CHUNK_LINE] or len(data) >= MAX_CHUNK_LINE:
                        raise HttpError(502, _MALFORMED)
                    self._buf = data
                    return
                size = int(m.group(1), 16)
                data = data[m.end():]
                if size == 0:
                    self._state = _TRAILERS
                else:
                    self._remaining = size
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                n = self._remaining
                if len(data) <= n:
                    self._remaining -= len(data)
                    self._sink.response_body(data)
                    if self._remaining == 0:
                        self._state = _CHUNK_END
                    return
                self._sink.response_body(data[:n])
                data = data[n:]
                self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(data) < 2:
                    if data != b"\r":
                        raise HttpError(502, _MALFORMED)
                    self._buf = data
                    return
                if data[:2] != b"\r\n":
                    raise HttpError(502, _MALFORMED)
                data = data[2:]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                if data[:2] == b"\r\n":
                    self._finish(len(data) > 2)
                    return
                end = data.find(b"\r\n")
                if end < 0:
                    if len(data) >= MAX_CHUNK_LINE or b"\n" in data:
                        raise HttpError(502, _MALFORMED)
                    self._buf = data
                    return
                if _TRAILER_LINE_RE.fullmatch(data, 0, end + 2) is None:
                    raise HttpError(502, _MALFORMED)
                data = data[end + 2:]  # trailers are not forwarded
            elif state == _UNTIL_CLOSE:
                self._sink.response_body(data)
                return
            else:  # _DONE: bytes after the response; the connection cannot be trusted
                raise HttpError(502, _MALFORMED)
            if self._state == _DONE:
                return

    def eof(self) -> bool:
        """The backend closed the connection; True if that completed the response."""
        if self._state == _UNTIL_CLOSE:
            self._state = _DONE
            self._keep_alive = False
            self._sink.response_done(False)
            return True
        return self._state == _DONE

    def _read_head(self, data: bytes) -> bytes:
        last = _recent.last
        if last is not None and data.startswith(last[0]):
            end = len(last[0])
            head = last[1]
        else:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > MAX_HEAD_BYTES or _BARE_LF_RE.search(data):
                    raise HttpError(502, _MALFORMED)
                self._buf = data
                return b""
            end += 4
            if end > MAX_HEAD_BYTES:
                raise HttpError(502, _MALFORMED)
            head = parse_head(data[:end] if end < len(data) else data)
        rest = data[end:] if end < len(data) else b""
        status = head.status
        sink = self._sink
        if status < 200:
            if status == 101:
                self._state = _DONE
                sink.response_upgrade(head, rest)
                return b""
            sink.response_interim(head)
            return rest
        self._keep_alive = head.keep_alive
        sink.response_head(head)
        n = head.content_length
        if self._head_only or status == 204 or status == 304:
            self._finish(bool(rest))
            return b""
        elif n is not None:
            if len(rest) >= n:
                # the usual case: the whole body came with the head (or there is none)
                if n:
                    sink.response_body(rest if len(rest) == n else rest[:n])
                self._finish(len(rest) > n)
                return b""
            self._remaining = n
            self._state = _LENGTH
        elif head.chunked:
            self._state = _CHUNK_SIZE
        else:
            self._state = _UNTIL_CLOSE
        return rest

    def _finish(self, leftover: bool = False) -> None:
        """The response is complete. Bytes after it (`leftover`) mean the backend does not
        frame its responses the way we read them: its connection is not reused."""
        self._state = _DONE
        self._sink.response_done(self._keep_alive and not leftover)
