"""A route's header actions, CORS block, security headers and rate limit end to end, through a
real daemon and the demo backend (which echoes the request headers it got, and sets response
headers on `/headers/set?name=value`)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e.harness import (
    RawClient, demo_backend, listener_port, proxy_config, running_daemon,
)

ROUTES: list[dict[str, Any]] = [
    {"name": "actions", "match": {"host": "actions.example"}, "forward": "app",
     "request_headers": {"set": {"X-Client": "#{client_ip} #{scheme} #{host}",
                                 "X-Replaced": "edge"},
                         "add": {"X-Rid": "#{request_id}"},
                         "remove": ["X-Secret"]},
     "response_headers": {"set": {"X-Origin-Said": "edge says"}, "add": {"X-Added": "1"},
                          "remove": ["X-Drop"]}},
    {"name": "fixed", "match": {"host": "fixed.example"},
     "fixed_response": {"status": 200, "body": "ok"},
     "response_headers": {"set": {"X-Fixed": "#{host}"}}},
    {"name": "sec-override", "match": {"host": "sec-override.example"}, "forward": "app",
     "security_headers": {"override": True, "content_type_options": True,
                          "frame_options": "DENY", "referrer_policy": "no-referrer",
                          "content_security_policy": "default-src 'self'",
                          "strict_transport_security": "max-age=60"}},
    {"name": "sec-keep", "match": {"host": "sec-keep.example"}, "forward": "app",
     "security_headers": {"override": False, "frame_options": "DENY",
                          "referrer_policy": "no-referrer"}},
    {"name": "cors", "match": {"host": "cors.example"}, "forward": "app",
     "cors": {"allow_origins": ["http://allowed.example:8000"],
              "allow_methods": ["GET", "PUT"], "allow_headers": ["X-Token"],
              "expose_headers": ["X-Backend"], "max_age_s": 120,
              "allow_credentials": True}},
    {"name": "cors-any", "match": {"host": "cors-any.example"}, "forward": "app",
     "cors": {"allow_origins": ["*"], "allow_headers": ["*"]}},
    {"name": "limited", "match": {"host": "limited.example"}, "forward": "app",
     "rate_limit": {"rate_per_s": 0.5, "burst": 3}},
    {"name": "by-key", "match": {"host": "by-key.example"}, "forward": "app",
     "rate_limit": {"rate_per_s": 0.5, "burst": 1, "key": "header", "key_name": "X-Api-Key"}},
    {"name": "by-cookie", "match": {"host": "by-cookie.example"}, "forward": "app",
     "rate_limit": {"rate_per_s": 0.5, "burst": 1, "key": "cookie", "key_name": "sid"}},
]


@contextlib.asynccontextmanager
async def policed() -> AsyncIterator[RawClient]:
    async with demo_backend("app-1") as backend:
        cfg = proxy_config(backend, routes=ROUTES)
        async with running_daemon(cfg):
            c = await RawClient.open(listener_port(cfg))
            try:
                yield c
            finally:
                await c.close()


def echoed(body: bytes) -> dict[str, list[str]]:
    """The request headers the demo backend got, by lower-case name."""
    out: dict[str, list[str]] = {}
    for name, value in json.loads(body)["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


async def test_request_and_response_header_actions() -> None:
    async with policed() as c:
        resp = await c.request(
            "GET", "/headers/set?X-Drop=gone&X-Origin-Said=origin&X-Kept=yes",
            headers=[("X-Secret", "s"), ("X-Replaced", "client"), ("X-Replaced", "again"),
                     ("X-Request-Id", "rid-123")], host="Actions.Example:8080")
        assert resp.status == 200, resp
        got = echoed(resp.body)
        assert "x-secret" not in got
        assert got["x-replaced"] == ["edge"]
        assert got["x-client"] == ["127.0.0.1 http actions.example"]
        assert got["x-rid"] == ["rid-123"]
        assert resp.header("X-Drop") is None
        assert resp.header_all("X-Origin-Said") == ["edge says"]
        assert resp.header("X-Added") == "1" and resp.header("X-Kept") == "yes"
        # a local answer gets the fields too
        fixed = await c.request("GET", "/", host="fixed.example")
        assert fixed.status == 200 and fixed.header("X-Fixed") == "fixed.example", fixed


async def test_security_headers_override_or_not() -> None:
    async with policed() as c:
        resp = await c.request("GET", "/headers/set?X-Frame-Options=SAMEORIGIN",
                               host="sec-override.example")
        assert resp.header_all("X-Frame-Options") == ["DENY"], resp
        assert resp.header("X-Content-Type-Options") == "nosniff"
        assert resp.header("Referrer-Policy") == "no-referrer"
        assert resp.header("Content-Security-Policy") == "default-src 'self'"
        assert resp.header("Strict-Transport-Security") is None  # plain HTTP: never
        resp = await c.request("GET", "/headers/set?X-Frame-Options=SAMEORIGIN",
                               host="sec-keep.example")
        assert resp.header_all("X-Frame-Options") == ["SAMEORIGIN"], resp
        assert resp.header("Referrer-Policy") == "no-referrer"


async def test_cors_preflight_answered_at_the_edge() -> None:
    async with policed() as c:
        ok = await c.request("OPTIONS", "/x", host="cors.example", headers=[
            ("Origin", "http://allowed.example:8000"), ("Access-Control-Request-Method", "PUT"),
            ("Access-Control-Request-Headers", "x-token")])
        assert ok.status == 204, ok
        assert ok.header("Access-Control-Allow-Origin") == "http://allowed.example:8000"
        assert ok.header("Access-Control-Allow-Credentials") == "true"
        assert ok.header("Access-Control-Allow-Methods") == "GET, PUT"
        assert ok.header("Access-Control-Allow-Headers") == "X-Token"
        assert ok.header("Access-Control-Max-Age") == "120"
        assert "Origin" in (ok.header("Vary") or "")
        assert ok.header("X-Backend") is None  # never reached the origin
        for headers in ([("Origin", "http://evil.example"),
                         ("Access-Control-Request-Method", "GET")],
                        [("Origin", "http://allowed.example:8000"),
                         ("Access-Control-Request-Method", "DELETE")],
                        [("Origin", "http://allowed.example:8000"),
                         ("Access-Control-Request-Method", "GET"),
                         ("Access-Control-Request-Headers", "x-other")]):
            no = await c.request("OPTIONS", "/x", headers=headers, host="cors.example")
            assert no.status == 403, no
            assert not any(n.startswith("access-control-") for n in no.names()), no
        # an OPTIONS that is no preflight goes to the origin
        plain = await c.request("OPTIONS", "/x", host="cors.example")
        assert plain.header("X-Backend") == "app-1", plain


async def test_cors_actual_responses() -> None:
    async with policed() as c:
        resp = await c.request("GET", "/headers/set?Access-Control-Allow-Origin=*",
                               headers=[("Origin", "http://allowed.example:8000")],
                               host="cors.example")
        assert resp.header_all("Access-Control-Allow-Origin") == [
            "http://allowed.example:8000"], resp
        assert resp.header("Access-Control-Expose-Headers") == "X-Backend"
        assert resp.header("Access-Control-Allow-Credentials") == "true"
        assert "Origin" in resp.header_all("Vary")
        other = await c.request("GET", "/", headers=[("Origin", "http://evil.example")],
                               host="cors.example")
        assert other.header("Access-Control-Allow-Origin") is None, other
        assert "Origin" in other.header_all("Vary")
        anyone = await c.request("GET", "/", headers=[("Origin", "http://x.example")],
                                host="cors-any.example")
        assert anyone.header("Access-Control-Allow-Origin") == "*", anyone
        pre = await c.request("OPTIONS", "/", host="cors-any.example", headers=[
            ("Origin", "http://x.example"), ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "x-a, x-b")])
        assert pre.status == 204 and pre.header("Access-Control-Allow-Headers") == "x-a, x-b"


async def test_rate_limit_answers_429_with_its_headers() -> None:
    async with policed() as c:
        statuses = []
        for _ in range(3):
            resp = await c.request("GET", "/", host="limited.example")
            statuses.append(resp.status)
            assert resp.header("RateLimit-Policy") == '"limited";q=1;w=2', resp
            assert (resp.header("RateLimit") or "").startswith('"limited";r='), resp
        assert statuses == [200, 200, 200]
        refused = await c.request("GET", "/", host="limited.example")
        assert refused.status == 429, refused
        assert refused.header("Retry-After") == "2"   # 1 token at 0.5/s
        assert refused.header("RateLimit") == '"limited";r=0;t=6', refused
        assert refused.header("RateLimit-Policy") == '"limited";q=1;w=2'
        # the connection stays usable, and other routes are not limited
        assert (await c.request("GET", "/", host="sec-keep.example")).status == 200


@pytest.mark.parametrize("host, first, second", [
    ("by-key.example", [("X-Api-Key", "a")], [("X-Api-Key", "b")]),
    ("by-cookie.example", [("Cookie", "x=1; sid=a")], [("Cookie", "sid=b")]),
])
async def test_rate_limit_per_header_or_cookie(host: str, first: list[tuple[str, str]],
                                               second: list[tuple[str, str]]) -> None:
    async with policed() as c:
        assert (await c.request("GET", "/", headers=first, host=host)).status == 200
        assert (await c.request("GET", "/", headers=first, host=host)).status == 429
        assert (await c.request("GET", "/", headers=second, host=host)).status == 200
        # without the key: one bucket for all such requests
        assert (await c.request("GET", "/", host=host)).status == 200
        assert (await c.request("GET", "/", host=host)).status == 429


async def test_cache_hits_are_rate_limited_and_get_the_response_fields() -> None:
    """A hit on a cache route with a policy goes through it: no answer from a known head
    skips the limit (lbcdn.edge.cache_hit)."""
    async with demo_backend("app-1") as backend:
        cfg = proxy_config(backend, routes=[{
            "name": "cdn", "cache": "site", "match": {"path_prefix": "/"},
            "rate_limit": {"rate_per_s": 0.01, "burst": 4},
            "response_headers": {"add": {"X-Edge": "#{scheme}"}}}],
            cache={"origins": {"o": {"url": f"http://127.0.0.1:{backend}"}},
                   "distributions": {"site": {"default_behavior": {
                       "path_pattern": "*", "origin": "o"}}}})
        async with running_daemon(cfg):
            c = await RawClient.open(listener_port(cfg))
            try:
                answers = [await c.request("GET", "/headers/set?Cache-Control=max-age%3D60")
                           for _ in range(5)]
            finally:
                await c.close()
    assert [a.status for a in answers] == [200, 200, 200, 200, 429], answers
    assert all(a.header("X-Edge") == "http" for a in answers[:4]), answers
    assert all("hit" in (a.header("Cache-Status") or "") for a in answers[1:4]), answers
