"""RoutePolicy: a route's blocks compiled for a listener, applied to heads (no sockets)."""

from __future__ import annotations

from lbcdn.edge.policy import RoutePolicy, cookie, field
from lbcdn.http.head import RequestHead, ResponseHead
from lbcdn.routing.config import (CorsConfig, ForwardAction, HeaderActionsConfig, RouteConfig,
                                  RouteRateLimitConfig, SecurityHeadersConfig)

VALUES = (b"192.0.2.1", b"rid", b"example.com", b"https")


def request(headers: list[tuple[bytes, bytes]], method: bytes = b"GET") -> RequestHead:
    fwd: list[bytes] = []
    for name, value in headers:
        fwd += (name, b": ", value, b"\r\n")
    return RequestHead(method, b"/", b"/", None, b"1.1", headers, b"example.com", fwd=fwd)


def policy(tls: bool = False, **blocks: object) -> RoutePolicy:
    return RoutePolicy(RouteConfig(name="r", action=ForwardAction(pool="app"),
                                   **blocks), tls)  # type: ignore[arg-type]


def test_fields_and_cookies() -> None:
    head = request([(b"Origin", b"https://a"), (b"Cookie", b"a=1; sid=xyz"),
                    (b"cookie", b"other=2")])
    assert field(head, b"origin") == b"https://a"
    assert cookie(head, b"sid") == b"xyz" and cookie(head, b"other") == b"2"
    assert cookie(head, b"SID") is None and field(head, b"x") is None


def test_request_head_is_a_copy() -> None:
    head = request([(b"X-Drop", b"1"), (b"Accept", b"*/*")])
    p = policy(request_headers=HeaderActionsConfig(set={"X-Client": "#{client_ip}"},
                                                   remove=("x-drop",)))
    out = p.request_head(head, VALUES)
    assert b"".join(out.fwd) == b"Accept: */*\r\nX-Client: 192.0.2.1\r\n"
    assert b"".join(head.fwd) == b"X-Drop: 1\r\nAccept: */*\r\n"


def test_security_headers_hsts_on_https_only() -> None:
    sec = SecurityHeadersConfig(strict_transport_security="max-age=60",
                                content_type_options=True)
    resp = ResponseHead(200, b"OK", [], 0, False, True, [b"A: b", b"\r\n"])
    plain = policy(security_headers=sec).response_head(resp, request([]), VALUES)
    assert b"Strict-Transport-Security" not in plain.lead
    assert plain.lead.endswith(b"A: b\r\nX-Content-Type-Options: nosniff\r\n")
    https = policy(True, security_headers=sec).response_head(resp, request([]), VALUES)
    assert b"Strict-Transport-Security: max-age=60\r\n" in https.lead


def test_no_response_change_keeps_the_shared_head() -> None:
    resp = ResponseHead(200, b"OK", [], 0, False, True, [])
    p = policy(rate_limit=RouteRateLimitConfig(rate_per_s=1, burst=1))
    assert p.response_head(resp, request([]), VALUES) is resp


def test_cors_override_or_not() -> None:
    resp = ResponseHead(200, b"OK", [], 0, False, True,
                        [b"Access-Control-Allow-Origin: *", b"\r\n"])
    head = request([(b"Origin", b"https://a.example")])
    over = policy(cors=CorsConfig(allow_origins=("https://a.example",)))
    assert over.response_head(resp, head, VALUES).lead.endswith(
        b"Access-Control-Allow-Origin: https://a.example\r\nVary: Origin\r\n")
    keep = policy(cors=CorsConfig(allow_origins=("https://a.example",), override=False))
    assert keep.response_head(resp, head, VALUES).lead.endswith(
        b"Access-Control-Allow-Origin: *\r\nVary: Origin\r\n")


def test_preflight_only_for_options_with_origin_and_method() -> None:
    p = policy(cors=CorsConfig(allow_origins=("https://a.example",)))
    assert p.preflight(request([(b"Origin", b"https://a.example")], b"OPTIONS")) is None
    assert p.preflight(request([(b"Origin", b"https://a.example"),
                                (b"Access-Control-Request-Method", b"GET")])) is None
    answer = p.preflight(request([(b"Origin", b"https://a.example"),
                                  (b"Access-Control-Request-Method", b"GET")], b"OPTIONS"))
    assert answer is not None and answer[0] == 204


def test_admit_and_refuse() -> None:
    p = policy(rate_limit=RouteRateLimitConfig(rate_per_s=0.01, burst=1, key="header",
                                               key_name="X-Key", max_keys=64))
    ok, lines = p.admit(request([(b"X-Key", b"k")]), b"192.0.2.1")
    assert ok is None
    assert lines == b'RateLimit-Policy: "r";q=1;w=100\r\nRateLimit: "r";r=0;t=100\r\n'
    refused, lines = p.admit(request([(b"X-Key", b"k")]), b"192.0.2.1")
    assert refused is not None and refused.status == 429 and lines == b""
    assert refused.headers.startswith(b"Retry-After: 100\r\n")
    assert p.admit(request([(b"X-Key", b"other")]), b"192.0.2.1")[0] is None


def test_a_429_carries_the_cors_fields() -> None:
    p = policy(rate_limit=RouteRateLimitConfig(rate_per_s=0.01, burst=1, max_keys=64),
               cors=CorsConfig(allow_origins=("https://a.example",)))
    head = request([(b"Origin", b"https://a.example")])
    assert p.admit(head, b"198.51.100.1")[0] is None
    refused, _ = p.admit(head, b"198.51.100.1")
    assert refused is not None and refused.status == 429
    assert refused.headers.endswith(
        b"Access-Control-Allow-Origin: https://a.example\r\nVary: Origin\r\n")
