import struct

import pytest

from lbcdn.http.proxyproto import (MAX_V2_BYTES, V1_MAX_BYTES, V2_SIGNATURE, ProxyError,
                                   build_v1, build_v2, may_be_header, parse)


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


def test_v1_tcp4_and_the_bytes_after_it() -> None:
    data = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n"
    h = parse(data)
    assert h is not None and h.source == ("203.0.113.7", 56324)
    assert data[h.length:] == b"GET / HTTP/1.1\r\n"


def test_v1_tcp6() -> None:
    h = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n")
    assert h is not None and h.source == ("2001:db8::1", 1)


def test_v1_unknown_gives_no_address() -> None:
    h = parse(b"PROXY UNKNOWN ffff:f...f:ffff 65535\r\nrest")
    assert h is not None and h.source is None and h.length == 37


@pytest.mark.parametrize("partial", [b"P", b"PROX", b"PROXY TCP4 1.2.3.4", b"\r\n\r\n\x00",
                                     V2_SIGNATURE + b"\x21\x11\x00"])
def test_partial_headers_ask_for_more(partial: bytes) -> None:
    assert parse(partial) is None
    assert may_be_header(partial)


@pytest.mark.parametrize("data, message", [
    (b"GET / HTTP/1.1\r\n\r\n", "no PROXY protocol header"),
    (b"\x16\x03\x01\x02\x00", "no PROXY protocol header"),
    (b"PROXY TCP4 " + b"1" * 200, f"longer than {V1_MAX_BYTES}"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "not ended by CRLF"),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "expected TCP4|TCP6"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "expected TCP4|TCP6"),
    (b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "bad address"),
    (b"PROXY TCP4 ::1 ::2 1 2\r\n", "not an IPv4 address"),
    (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "not an IPv6 address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "bad port"),
    (V2_SIGNATURE[:8] + b"XXXX", "no PROXY protocol header"),
    (V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "unsupported version 1"),
    (V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "unknown command 2"),
    (V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4), "family 0x11 needs 12"),
    (V2_SIGNATURE + b"\x21\x41\x00\x00", "unknown address family"),
    (V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, MAX_V2_BYTES), f"more than {MAX_V2_BYTES}"),
])
def test_bad_headers_are_refused_saying_why(data: bytes, message: str) -> None:
    with pytest.raises(ProxyError, match=message):
        parse(data)


def test_v2_tcp4_with_tlvs_skipped() -> None:
    tlvs = b"\x01\x00\x02h2" + b"\x04\x00\x00"   # ALPN and a NOOP
    body = bytes([198, 51, 100, 9, 10, 0, 0, 1]) + struct.pack("!HH", 40000, 443) + tlvs
    data = v2(1, 0x11, body) + b"\x16\x03\x01"
    h = parse(data)
    assert h is not None and h.source == ("198.51.100.9", 40000)
    assert data[h.length:] == b"\x16\x03\x01"


def test_v2_truncated_waits_for_the_rest() -> None:
    whole = build_v2(("198.51.100.9", 1), ("10.0.0.1", 2))
    for n in range(len(whole)):
        assert parse(whole[:n]) is None
    assert parse(whole) is not None


def test_v2_local_and_unspec_give_no_address() -> None:
    for data in (v2(0, 0x00, b""), v2(0, 0x11, bytes(12)), v2(1, 0x00, b""),
                 v2(1, 0x31, bytes(216))):
        h = parse(data)
        assert h is not None and h.source is None and h.length == len(data)


def test_built_headers_read_back() -> None:
    for build in (build_v1, build_v2):
        for src, dst in ((("203.0.113.7", 5000), ("10.1.2.3", 80)),
                         (("2001:db8::7", 5000), ("2001:db8::1", 8443))):
            h = parse(build(src, dst))
            assert h is not None and h.source == src
    assert build_v1(("203.0.113.7", 1), ("::1", 2)) == b"PROXY UNKNOWN\r\n"
    h = parse(build_v2(("203.0.113.7", 1), ("::1", 2)))
    assert h is not None and h.source is None


def test_may_be_header_tells_http_and_tls_apart() -> None:
    assert not may_be_header(b"GET / HTTP/1.1\r\n")
    assert not may_be_header(b"PUT / HTTP/1.1\r\n")
    assert not may_be_header(b"\x16\x03\x01")
    assert may_be_header(b"PROXY TCP4 ")
