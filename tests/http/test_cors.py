"""CORS decisions (Fetch standard): preflights and actual responses, origins matched exactly."""

from __future__ import annotations

import pytest

from lbcdn.http.cors import Cors

ORIGIN = b"https://app.example.com"


def cors(**kw: object) -> Cors:
    args: dict[str, object] = dict(allow_origins=["https://app.example.com"],
                                   allow_methods=["GET", "PUT"], allow_headers=["X-Token"],
                                   expose_headers=["X-Id", "X-Other"], max_age_s=600,
                                   allow_credentials=False)
    args.update(kw)
    return Cors(**args)  # type: ignore[arg-type]


def test_preflight_allowed() -> None:
    status, fields = cors().preflight(ORIGIN, b"PUT", b"x-token")
    assert status == 204
    assert dict(fields) == {
        b"Access-Control-Allow-Origin": ORIGIN, b"Access-Control-Allow-Methods": b"GET, PUT",
        b"Access-Control-Allow-Headers": b"X-Token", b"Access-Control-Max-Age": b"600",
        b"Vary": b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"}


@pytest.mark.parametrize("origin, method, headers", [
    (b"https://evil.example.com", b"GET", None),
    (b"https://app.example.com.evil.example", b"GET", None),   # exact, not a prefix
    (b"http://app.example.com", b"GET", None),                 # another scheme
    (b"https://app.example.com:8443", b"GET", None),           # another port
    (b"null", b"GET", None),
    (ORIGIN, b"DELETE", None),
    (ORIGIN, b"GET", b"x-token, x-other"),
])
def test_preflight_refused_without_any_allow_field(origin: bytes, method: bytes,
                                                   headers: bytes | None) -> None:
    status, fields = cors().preflight(origin, method, headers)
    assert status == 403
    assert [n for n, _ in fields] == [b"Vary"]


def test_origin_case_insensitive_and_echoed_as_sent() -> None:
    status, fields = cors().preflight(b"https://APP.example.com", b"get", None)
    assert status == 204 and fields[0] == (b"Access-Control-Allow-Origin",
                                           b"https://APP.example.com")


def test_credentials_and_any_header() -> None:
    status, fields = cors(allow_credentials=True, allow_headers=["*"]).preflight(
        ORIGIN, b"GET", b"X-A, x-b")
    assert status == 204
    got = dict(fields)
    assert got[b"Access-Control-Allow-Credentials"] == b"true"
    assert got[b"Access-Control-Allow-Headers"] == b"X-A, x-b"   # echoed: "*" is literal here


def test_any_origin() -> None:
    c = cors(allow_origins=["*"])
    assert c.preflight(b"https://x.example", b"GET", None)[1][0] == (
        b"Access-Control-Allow-Origin", b"*")
    assert c.actual(b"https://x.example") == [
        (b"Access-Control-Allow-Origin", b"*"),
        (b"Access-Control-Expose-Headers", b"X-Id, X-Other")]
    assert c.actual(None) == []


def test_star_with_credentials_refused() -> None:
    with pytest.raises(ValueError, match="credentials"):
        cors(allow_origins=["*"], allow_credentials=True)


def test_actual_responses() -> None:
    c = cors(allow_credentials=True)
    assert c.actual(ORIGIN) == [
        (b"Access-Control-Allow-Origin", ORIGIN), (b"Access-Control-Allow-Credentials", b"true"),
        (b"Access-Control-Expose-Headers", b"X-Id, X-Other"), (b"Vary", b"Origin")]
    assert c.actual(b"https://evil.example") == [(b"Vary", b"Origin")]
    assert c.actual(None) == [(b"Vary", b"Origin")]

