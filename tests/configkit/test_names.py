"""Host, header and host:port syntax."""

import pytest

from lbcdn.configkit import names


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:80", ("127.0.0.1", 80)),
    ("Backend.Local:8080", ("backend.local", 8080)),
    ("[::1]:9000", ("::1", 9000)),
    ("[2001:db8::1]:443", ("2001:db8::1", 443)),
    ("h:0", ("h", 0)),
    ("h", None),
    (":80", None),
    ("h:", None),
    ("h:+80", None),
    ("h:8o", None),
    ("h:123456", None),
    ("::1:80", None),
    ("[::1]80", None),
    ("[nothost]:80", None),
    ("[127.0.0.1]:80", None),
])
def test_split_host_port(text: str, expected: tuple[str, int] | None) -> None:
    assert names.split_host_port(text) == expected


@pytest.mark.parametrize("host", ["example.com", "*.example.com", "a-b.c_d.example", "10.0.0.1",
                                  "[::1]", "localhost"])
def test_match_host_ok(host: str) -> None:
    assert names.match_host_problem(host) is None


@pytest.mark.parametrize("host, fragment", [
    ("a*.example.com", "whole first label"),
    ("*example.com", "whole first label"),
    ("www.*.example.com", "whole first label"),
    ("*.*.example.com", "whole first label"),
    ("*.com", "at least two labels"),
    ("example.com:80", "without a port"),
    ("exa mple.com", "not a valid host name"),
    ("a..b", "empty label"),
    ("-a.com", "not a valid host name"),
    ("[nope]", "bracketed IPv6"),
    ("", "must not be empty"),
    ("a" * 64 + ".com", "longer than 63"),
])
def test_match_host_problems(host: str, fragment: str) -> None:
    problem = names.match_host_problem(host)
    assert problem is not None and fragment in problem


def test_header_token() -> None:
    assert names.header_token_problem("X-Request-Id") is None
    assert names.header_token_problem("") == "must not be empty"
    assert "not a valid header name" in (names.header_token_problem("X Request") or "")
    assert "not a valid header name" in (names.header_token_problem("X-Id:") or "")


def test_target_and_bind_hosts() -> None:
    assert names.target_host_problem("::1") is None
    assert names.target_host_problem("backend") is None
    assert names.target_host_problem("::zz") is not None
    assert names.bind_address_problem("0.0.0.0") is None
    assert names.bind_address_problem("::") is None
    assert names.bind_address_problem("bad host") is not None


def test_format_host_port() -> None:
    assert names.format_host_port("::1", 80) == "[::1]:80"
    assert names.format_host_port("a", 80) == "a:80"
