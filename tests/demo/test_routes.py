"""Which endpoint a request head reaches, and how bad parameters are refused."""

from __future__ import annotations

from lbcdn.demo.routes import (ECHO, PATTERN, PATTERN_CHUNK, Kind, has_no_body, route,
                               status_line)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def test_echo_is_the_default_and_shared() -> None:
    assert route(b"GET", "/", "") is ECHO
    assert route(b"GET", "/nothing/here", "a=1") is ECHO
    assert route(b"GET", "/echo", "").kind is Kind.ECHO
    assert route(b"DELETE", "/sink", "").kind is Kind.ECHO


def test_streaming_endpoints_need_post_or_put() -> None:
    assert route(b"POST", "/echo", "").kind is Kind.ECHO_STREAM
    assert route(b"PUT", "/sink", "").kind is Kind.SINK


def test_bytes_parameters() -> None:
    r = route(b"GET", "/bytes/100", "chunked=1&close=0&abort_after=500")
    assert (r.kind, r.number, r.chunked, r.close, r.abort_after) == (Kind.BYTES, 100, True,
                                                                     False, 100)
    assert route(b"GET", "/bytes/-1", "").kind is Kind.BAD
    assert route(b"GET", "/bytes/1e3", "").kind is Kind.BAD
    assert route(b"GET", "/bytes/", "").kind is Kind.BAD
    assert route(b"GET", "/bytes/5", "abort_after=x").kind is Kind.BAD


def test_status_range() -> None:
    assert route(b"GET", "/status/503", "").number == 503
    for bad in ("101", "103", "99", "1000", "abc", "+200"):
        r = route(b"GET", f"/status/{bad}", "")
        assert (r.kind, r.number) == (Kind.BAD, 400), bad


def test_delay_bounds() -> None:
    assert route(b"GET", "/delay/250", "").number == 250
    assert route(b"GET", "/delay/99999999", "").kind is Kind.BAD


def test_headers_set_refuses_injection_and_framing() -> None:
    r = route(b"GET", "/headers/set", "Set-Cookie=a%3D1&Cache-Control=max-age%3D60")
    assert r.headers == (("Set-Cookie", "a=1"), ("Cache-Control", "max-age=60"))
    assert route(b"GET", "/headers/set", "X-A=1%0d%0aX-B:%202").kind is Kind.BAD
    assert route(b"GET", "/headers/set", "Content-Length=5").kind is Kind.BAD
    assert route(b"GET", "/headers/set", "Bad%20Name=1").kind is Kind.BAD


def test_websocket_handshake_checks() -> None:
    ok = route(b"GET", "/ws", "", upgrade="websocket", ws_key=KEY, ws_version="13",
               can_upgrade=True)
    assert ok.kind is Kind.WEBSOCKET
    assert route(b"GET", "/ws", "").kind is Kind.NEED_UPGRADE
    assert route(b"GET", "/ws", "", upgrade="h2c", can_upgrade=True).kind is Kind.NEED_UPGRADE
    no_key = route(b"GET", "/ws", "", upgrade="websocket", ws_version="13", can_upgrade=True)
    assert (no_key.kind, no_key.number) == (Kind.BAD, 400)
    old = route(b"GET", "/ws", "", upgrade="websocket", ws_key=KEY, ws_version="8",
                can_upgrade=True)
    assert (old.kind, old.number, old.headers) == (Kind.BAD, 426,
                                                   (("Sec-WebSocket-Version", "13"),))


def test_status_lines_and_bodyless_statuses() -> None:
    assert status_line(200) == b"HTTP/1.1 200 OK\r\n"
    assert status_line(413) == b"HTTP/1.1 413 Content Too Large\r\n"
    assert status_line(599) == b"HTTP/1.1 599 \r\n"
    assert has_no_body(204) and has_no_body(304) and not has_no_body(200)


def test_pattern_chunk_stays_in_phase() -> None:
    assert len(PATTERN_CHUNK) == 64 * 1024
    assert PATTERN_CHUNK[:16] == PATTERN and PATTERN_CHUNK[-16:] == PATTERN
