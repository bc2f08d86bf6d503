"""HttpError and error_response: the one place lbcdn's own answers become bytes."""

from __future__ import annotations

import pytest

from lbcdn.http.errors import HttpError, error_response, failure_status, reason


def split(data: bytes) -> tuple[list[bytes], dict[bytes, bytes], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b": ")
        assert name.lower() not in headers, f"duplicate {name!r}"
        headers[name.lower()] = value
    return lines, headers, body


def test_http_error_defaults() -> None:
    err = HttpError(400, "bad thing")
    assert (err.status, err.detail, err.close) == (400, "bad thing", True)
    assert str(err) == "bad thing"
    assert str(HttpError(502)) == "502"
    assert HttpError(503, close=False).close is False


def test_reason_phrases() -> None:
    assert reason(400) == b"Bad Request"
    assert reason(431) == b"Request Header Fields Too Large"
    assert reason(504) == b"Gateway Timeout"
    assert reason(599) == b""  # unregistered: an empty reason (RFC 9112 4), not a made-up one


@pytest.mark.parametrize("status, phrase", [
    (413, b"Content Too Large"), (414, b"URI Too Long"), (416, b"Range Not Satisfiable"),
    (422, b"Unprocessable Content"),
])
def test_reason_phrases_are_rfc9110s(status: int, phrase: bytes) -> None:
    # RFC 9110 15.5 renamed these; Python's http.HTTPStatus (before 3.13) has the old names
    assert reason(status) == phrase
    assert error_response(status, b"r").startswith(b"HTTP/1.1 %d %s\r\n" % (status, phrase))


@pytest.mark.parametrize("status", [400, 405, 408, 413, 414, 417, 431, 502, 503, 504])
def test_error_response_is_well_framed(status: int) -> None:
    data = error_response(status, b"rid-1", "what went wrong")
    lines, headers, body = split(data)
    assert lines[0] == b"HTTP/1.1 %d %s" % (status, reason(status))
    assert int(headers[b"content-length"]) == len(body)
    assert headers[b"connection"] == b"close"
    assert headers[b"x-request-id"] == b"rid-1"
    assert headers[b"server"] == b"lbcdn"
    assert headers[b"content-type"].startswith(b"text/plain")
    assert b"lbcdn" in body and b"rid-1" in body and b"what went wrong" in body
    assert b"transfer-encoding" not in headers


def test_keep_alive_error_has_no_connection_close() -> None:
    _, headers, _ = split(error_response(503, b"r", connection=b""))
    assert b"connection" not in headers


def test_head_only_keeps_the_length_of_the_body_it_omits() -> None:
    full = error_response(404, b"r", "x")
    head = error_response(404, b"r", "x", head_only=True)
    assert full.startswith(head) and head.endswith(b"\r\n\r\n")
    _, headers, body = split(head)
    assert body == b""
    assert int(headers[b"content-length"]) == len(split(full)[2])


def test_extra_headers_and_custom_id_header() -> None:
    data = error_response(405, b"r9", extra_headers=b"Allow: GET, HEAD\r\n",
                          id_header=b"X-Trace")
    _, headers, _ = split(data)
    assert headers[b"allow"] == b"GET, HEAD"
    assert headers[b"x-trace"] == b"r9"
    assert b"x-request-id" not in headers


def test_detail_cannot_inject_header_lines() -> None:
    # the detail lands in the body only, never in the head
    data = error_response(400, b"r", "evil\r\nSet-Cookie: a=b")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Set-Cookie" not in head
    assert int(split(data)[1][b"content-length"]) == len(body)



@pytest.mark.parametrize(("kind", "status"), [
    ("connect_timeout", 504), ("response_timeout", 504), ("no_target", 503),
    ("connect_refused", 502), ("reset", 502), ("malformed_response", 502),
    ("tls_handshake", 502), ("deregistered", 502),
])
def test_one_map_from_an_upstream_failure_to_a_status(kind: str, status: int) -> None:
    assert failure_status(kind) == status
