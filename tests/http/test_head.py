"""check_request and the response head parser without sockets: what each accepts, what it
refuses with which status, and what the validated head says about framing and forwarding."""

from __future__ import annotations

import pytest

from lbcdn.http.errors import HttpError
from lbcdn.http.head import check_request, connection_tokens, forwarded_for, is_token, \
    origin_request, \
    response_has_body
from lbcdn.http.response import parse_head

H = [(b"Host", b"example.com")]


def req(target: bytes = b"/", headers: list[tuple[bytes, bytes]] | None = None,
        method: bytes = b"GET", version: bytes = b"1.1"):
    return check_request(method, target, version, H if headers is None else headers,
                         True, False)


def refused(status: int, **kw: object) -> str:
    with pytest.raises(HttpError) as info:
        req(**kw)  # type: ignore[arg-type]
    assert info.value.status == status, info.value
    assert info.value.close is True
    return info.value.detail


def test_plain_get() -> None:
    head = req(b"/p?q=1")
    assert (head.method, head.path, head.query, head.host) == (b"GET", b"/p", b"q=1",
                                                                b"example.com")
    assert head.content_length is None and not head.chunked and not head.has_body
    assert head.keep_alive and head.upgrade is None and not head.expect_continue


def test_query_absent_vs_empty() -> None:
    assert req(b"/p").query is None
    assert req(b"/p?").query == b""


def test_content_length_and_chunked() -> None:
    head = req(headers=H + [(b"Content-Length", b"12")], method=b"POST")
    assert head.content_length == 12 and head.has_body
    assert not req(headers=H + [(b"Content-Length", b"0")]).has_body
    head = req(headers=H + [(b"Transfer-Encoding", b"Chunked ")], method=b"POST")
    assert head.chunked and head.content_length is None and head.has_body


@pytest.mark.parametrize("te", [b"gzip", b"chunked, chunked", b",chunked", b"identity",
                                b"chunked;q=1", b""])
def test_transfer_encoding_other_than_chunked(te: bytes) -> None:
    refused(400, headers=H + [(b"Transfer-Encoding", te)])


def test_unknown_coding_before_chunked_is_not_implemented() -> None:
    refused(501, headers=H + [(b"Transfer-Encoding", b"gzip, chunked")])


def test_two_transfer_encoding_headers() -> None:
    refused(400, headers=H + [(b"Transfer-Encoding", b"chunked")] * 2)


@pytest.mark.parametrize("order", ["cl-first", "te-first"])
def test_content_length_with_transfer_encoding(order: str) -> None:
    pair = [(b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked")]
    refused(400, headers=H + (pair if order == "cl-first" else pair[::-1]))


def test_transfer_encoding_on_http10() -> None:
    # RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing.
    refused(400, headers=H + [(b"Transfer-Encoding", b"chunked")], version=b"1.0")


def test_host_rules() -> None:
    assert "Host" in refused(400, headers=[])
    refused(400, headers=H + H)
    refused(400, headers=[(b"Host", b"a"), (b"HOST", b"b")])
    # an empty host is no host (RFC 9110 4.2.1), with a port or not, on 1.0 too
    for bad in (b"a b", b"a/b", b"u@a", b"a:1:2", b"a:x", b"[::1", b"", b":80"):
        refused(400, headers=[(b"Host", bad)])
        refused(400, headers=[(b"Host", bad)], version=b"1.0")
    for good in (b"a.example:8080", b"[::1]:80", b"127.0.0.1", b"a:"):
        assert req(headers=[(b"Host", good)]).host == good


def test_http10_without_host() -> None:
    head = req(headers=[], version=b"1.0")
    assert head.host == b"" and head.version == b"1.0"


@pytest.mark.parametrize("target", [b"foo", b"http://", b"http:///p", b"http://:80/",
                                    b"http://u@h/", b"ftp://h/", b"?a", b"*", b""])
def test_invalid_targets(target: bytes) -> None:
    refused(400, target=target)


def test_absolute_form_takes_host_and_becomes_origin_form() -> None:
    head = req(b"http://Origin.example:81/a/b?x=1", headers=[(b"Host", b"other")])
    assert (head.host, head.target, head.path, head.query) == (
        b"Origin.example:81", b"/a/b?x=1", b"/a/b", b"x=1")
    head = req(b"https://h.example", headers=[], version=b"1.0")
    assert (head.host, head.target, head.path) == (b"h.example", b"/", b"/")
    head = req(b"http://h.example?q", headers=[], version=b"1.0")
    assert (head.target, head.path, head.query) == (b"/?q", b"/", b"q")


def test_absolute_form_does_not_excuse_a_missing_host_on_http11() -> None:
    # RFC 9112 3.2: a 1.1 request without Host gets 400, whatever the form of its target.
    assert "Host" in refused(400, target=b"http://h.example/x", headers=[])


def test_double_slash_is_origin_form() -> None:
    head = req(b"//x")
    assert head.path == b"//x" and head.host == b"example.com"


def test_options_asterisk() -> None:
    head = req(b"*", method=b"OPTIONS")
    assert head.path == b"*"


def test_connect_is_405() -> None:
    refused(405, target=b"example.com:443", method=b"CONNECT")


def test_expect() -> None:
    assert req(headers=H + [(b"Expect", b"100-Continue")]).expect_continue
    with pytest.raises(HttpError) as info:
        req(headers=H + [(b"Expect", b"something-else")])
    assert info.value.status == 417


def forwarded(fwd: list[bytes]) -> bytes:
    return b"".join(fwd)


def test_expect_100_continue_is_ignored_on_http10() -> None:
    # RFC 9110 10.1.1: a server MUST ignore a 100-continue expectation in an HTTP/1.0 request;
    # forwarded as 1.1, it would make the backend wait to send a 100 the client cannot read.
    hs = H + [(b"Expect", b"100-continue"), (b"Content-Length", b"5")]
    head = req(headers=hs, method=b"POST", version=b"1.0")
    assert not head.expect_continue
    assert forwarded(head.fwd) == b"Content-Length: 5\r\n"
    assert forwarded(req(headers=hs, method=b"POST").fwd) == \
        b"Expect: 100-continue\r\nContent-Length: 5\r\n"


def test_connection_named_headers_are_dropped() -> None:
    head = req(headers=H + [(b"Connection", b"close, X-Secret ,, Keep-Alive"),
                            (b"X-Secret", b"1"), (b"Keep-Alive", b"timeout=5"),
                            (b"TE", b"trailers"), (b"X-Kept", b"2")])
    assert forwarded(head.fwd) == b"X-Kept: 2\r\n"


def test_framing_headers_named_in_connection_are_kept() -> None:
    # RFC 9112 6.3: the body length comes from Content-Length; a Connection option naming it
    # must not leave the forwarded body without its length (nor unsettle Host or chunked).
    head = req(headers=H + [(b"Connection", b"Content-Length, Host"),
                            (b"Content-Length", b"3")], method=b"POST")
    assert forwarded(head.fwd) == b"Content-Length: 3\r\n"
    assert head.content_length == 3 and head.host == b"example.com"
    head = req(headers=H + [(b"Connection", b"transfer-encoding"),
                            (b"Transfer-Encoding", b"chunked")], method=b"POST")
    assert head.chunked


def test_upgrade_kept_only_when_parser_says_upgrade() -> None:
    hs = H + [(b"Connection", b"upgrade"), (b"Upgrade", b"websocket")]
    assert check_request(b"GET", b"/", b"1.1", hs, True, True).upgrade == b"websocket"
    assert check_request(b"GET", b"/", b"1.1", hs, True, False).upgrade is None


@pytest.mark.parametrize("offer", [b"h2c", b"H2C", b" h2c ,"])
def test_an_upgrade_to_h2c_alone_is_ignored(offer: bytes) -> None:
    # curl --http2 on http://: lbcdn speaks HTTP/1.1 to backends, so no switch to h2c (and no
    # tunnel a backend's 101 would open); HTTP2-Settings, named in Connection, goes too
    hs = H + [(b"Connection", b"Upgrade, HTTP2-Settings"), (b"Upgrade", offer),
              (b"HTTP2-Settings", b"AAMAAABkAAQCAAAAAAIAAAAA"), (b"X-Kept", b"1")]
    head = check_request(b"GET", b"/", b"1.1", hs, True, True)
    assert head.upgrade is None
    assert forwarded(head.fwd) == b"X-Kept: 1\r\n"


def test_an_upgrade_offering_more_than_h2c_is_kept() -> None:
    hs = H + [(b"Connection", b"upgrade"), (b"Upgrade", b"h2c, websocket")]
    assert check_request(b"GET", b"/", b"1.1", hs, True, True).upgrade == b"h2c, websocket"


def test_request_id_only_when_a_sane_token() -> None:
    def rid(value: bytes) -> bytes | None:
        return req(headers=H + [(b"X-Request-Id", value)]).request_id
    assert rid(b"abc-123") == b"abc-123"
    assert rid(b"a b") is None
    assert rid(b"x" * 129) is None
    assert rid(b"x" * 128) == b"x" * 128


# -- responses ----------------------------------------------------------------------------------

def resp(headers: list[tuple[bytes, bytes]], status: int = 200):
    lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return parse_head(b"HTTP/1.1 %d OK\r\n" % status + lines + b"\r\n")


def bad_response(headers: list[tuple[bytes, bytes]], status: int = 200) -> None:
    with pytest.raises(HttpError) as info:
        resp(headers, status)
    assert info.value.status == 502
    assert "upstream" in info.value.detail


def test_response_framing() -> None:
    assert resp([(b"Content-Length", b"5")]).content_length == 5
    r = resp([(b"Transfer-Encoding", b"chunked")])
    assert r.chunked and r.content_length is None
    r = resp([])
    assert r.content_length is None and not r.chunked


@pytest.mark.parametrize("headers", [
    [(b"Content-Length", b"5"), (b"Content-Length", b"5")],
    [(b"Content-Length", b"5"), (b"Content-Length", b"6")],
    [(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")],
    [(b"Transfer-Encoding", b"gzip")],
    [(b"Transfer-Encoding", b"gzip, chunked")],
    [(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")],
], ids=["cl-dup", "cl-differ", "cl-te", "te-gzip", "te-gzip-chunked", "te-twice"])
def test_malformed_responses(headers: list[tuple[bytes, bytes]]) -> None:
    bad_response(headers)


@pytest.mark.parametrize("value", [b"+5", b"0x5", b"", b"5, 5", b"-1", b"5 5"])
def test_response_content_length_not_plain_digits(value: bytes) -> None:
    # the parser must not rely on int(): int(b"+5") and int(b" 5") succeed.
    bad_response([(b"Content-Length", value)])


@pytest.mark.parametrize("status", [0, 99, 600, 1000])
def test_response_status_out_of_range(status: int) -> None:
    bad_response([], status)


def test_response_connection_tokens_dropped() -> None:
    r = resp([(b"Connection", b"X-Internal"), (b"X-Internal", b"1"), (b"Keep-Alive", b"t=5"),
              (b"Server", b"x")])
    assert forwarded(r.fwd) == b"Server: x\r\n"


def test_helpers() -> None:
    assert connection_tokens(b" Close ,keep-alive,, ") == {b"close", b"keep-alive"}
    assert is_token(b"X-Ok_1") and not is_token(b"a b") and not is_token(b"")
    assert not response_has_body(b"HEAD", 200)
    assert not response_has_body(b"GET", 204) and not response_has_body(b"GET", 304)
    assert not response_has_body(b"GET", 103)
    assert response_has_body(b"GET", 200) and response_has_body(b"POST", 404)


@pytest.mark.parametrize("mode, received, expected", [
    ("append", None, b"10.0.0.1"),
    ("append", [b"1.1.1.1", b"2.2.2.2"], b"1.1.1.1, 2.2.2.2, 10.0.0.1"),
    ("preserve", None, None),
    ("preserve", [b"1.1.1.1", b"2.2.2.2"], b"1.1.1.1, 2.2.2.2"),
    ("remove", [b"1.1.1.1"], None),
])
def test_forwarded_for_per_mode(mode: str, received: list[bytes] | None,
                                expected: bytes | None) -> None:
    assert forwarded_for(mode, received, b"10.0.0.1") == expected


def test_origin_request_is_one_head_for_every_way_to_an_origin() -> None:
    head = check_request(b"POST", b"/a?b", b"1.1",
                         [(b"Host", b"h"), (b"X-Forwarded-For", b"1.1.1.1"), (b"Via", b"1.0 p"),
                          (b"Transfer-Encoding", b"chunked")], True, False)
    lines = origin_request(b"POST", b"/o/a?b", b"origin", [b"X-A: 1\r\n"],
                           [(b"If-None-Match", b'"v"')], head, "append", b"10.0.0.1",
                           b"X-Forwarded-Proto: http\r\n", b"X-Request-Id", chunked=True)
    assert b"".join(lines) == (
        b"POST /o/a?b HTTP/1.1\r\nHost: origin\r\nX-A: 1\r\nIf-None-Match: \"v\"\r\n"
        b"X-Forwarded-For: 1.1.1.1, 10.0.0.1\r\nX-Forwarded-Proto: http\r\n"
        b"Via: 1.0 p, 1.1 lbcdn\r\nTransfer-Encoding: chunked\r\nX-Request-Id: ")
    removed = b"".join(origin_request(b"GET", b"/", b"o", [], [], head, "remove", b"10.0.0.1",
                                      b"", b"Id", upgrade=b"websocket"))
    assert b"X-Forwarded-For" not in removed and b"Transfer-Encoding" not in removed
    assert removed.endswith(b"Connection: upgrade\r\nUpgrade: websocket\r\nId: ")
