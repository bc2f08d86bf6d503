"""Errors lbcdn answers itself, and the one place they turn into a status and bytes.

Who was at fault decides the status: the client (400, 405, 408, 413, 414, 417, 431) or the
upstream (502 bad response or reset, 503 nothing to send to, 504 too slow). Bodies are short, name
lbcdn and the request id, and never carry internals (no exception text, no target addresses).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

from lbcdn.http.date import http_date


class HttpError(Exception):
    """A request lbcdn answers itself with `status`. `detail` is safe to show the client."""

    def __init__(self, status: int, detail: str = "", *, close: bool = True,
                 headers: bytes = b"") -> None:
        super().__init__(detail or str(status))
        self.status = status
        self.detail = detail
        self.close = close
        self.headers = headers  # ready-made header lines, e.g. b"Allow: GET\r\n" on a 405


# The registered reason phrases: RFC 9110's names where Python's list still has RFC 7231's.
_PHRASES: Final = {s.value: s.phrase.encode() for s in HTTPStatus} | {
    413: b"Content Too Large", 414: b"URI Too Long", 416: b"Range Not Satisfiable",
    422: b"Unprocessable Content",
}


def reason(status: int) -> bytes:
    """The standard reason phrase of `status`; b"" for an unregistered code (RFC 9112 4: the
    reason phrase may be empty)."""
    return _PHRASES.get(status, b"")


def failure_status(kind: str) -> int:
    """The status a request is answered with when its upstream failed in this way (before any
    of the response was sent): 504 too slow, 503 nothing to send to, 502 the rest (refused,
    reset, a malformed response, cut at the end of a deregistration delay)."""
    if kind == "connect_timeout" or kind == "response_timeout":
        return 504
    if kind == "no_target":
        return 503
    return 502


def error_body(status: int, request_id: bytes, detail: str = "") -> bytes:
    """The body of lbcdn's own error response."""
    return b"%d %s%s\nlbcdn request id: %s\n" % (
        status, reason(status), (": " + detail).encode("ascii", "replace") if detail else b"",
        request_id)


def error_fields(request_id: bytes, id_header: bytes = b"X-Request-Id"
                 ) -> list[tuple[bytes, bytes]]:
    """The header fields of lbcdn's own error response (its body is `error_body`)."""
    return [(b"Server", b"lbcdn"), (b"Date", http_date()),
            (b"Content-Type", b"text/plain; charset=utf-8"), (id_header, request_id)]


def error_response(status: int, request_id: bytes, detail: str = "", *,
                   connection: bytes = b"close", head_only: bool = False,
                   extra_headers: bytes = b"", id_header: bytes = b"X-Request-Id") -> bytes:
    """A complete HTTP/1.1 error response, for a connection that speaks no more than that (a
    listener turning a connection away, the control process's listeners). `connection` is the
    Connection header value to send (b"" for none); `extra_headers` are ready-made header
    lines."""
    body = error_body(status, request_id, detail)
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason(status))]
    for name, value in error_fields(request_id, id_header):
        parts += (name, b": ", value, b"\r\n")
    parts += (b"Content-Length: %d\r\n" % len(body), extra_headers,
              b"Connection: %s\r\n" % connection if connection else b"", b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)
