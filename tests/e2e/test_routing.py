"""Routing end to end: ordered rules on Host (exact, wildcard) and path (prefix, CloudFront
pattern), first match wins, the default route; and the three actions through real sockets:
forward, ALB-style redirect, fixed response."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.e2e.harness import (
    RawClient, RawResponse, demo_backend, listener_port, proxy_config, running_daemon,
)


def fixed(name: str, match: dict[str, Any], body: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "match": match,
            "fixed_response": {"status": 200, "content_type": "text/plain", "body": body,
                               **extra}}


ROUTES: list[dict[str, Any]] = [
    fixed("exact", {"host": "exact.example"}, "exact\n"),
    fixed("wild", {"host": "*.wild.example"}, "wild\n"),
    fixed("both", {"host": "both.example", "path_prefix": "/x/"}, "both\n"),
    fixed("first-a", {"path_prefix": "/first/"}, "first-a\n"),
    fixed("first-b", {"path_prefix": "/first/"}, "first-b\n"),
    fixed("first-c", {"path_prefix": "/first/deeper/"}, "first-c\n"),
    {"name": "api", "match": {"path_prefix": "/api/"}, "forward": "app"},
    fixed("css", {"path": "/assets/*.css"}, "css\n"),
    fixed("png3", {"path": "/img/???.png"}, "png3\n"),
    fixed("json-503", {"host": "down.example"}, '{"down": true}', status=503,
          content_type="application/json"),
    {"name": "limited", "match": {"path_prefix": "/limited/"}, "max_body_bytes": 10,
     "forward": "app"},
    {"name": "r301", "match": {"host": "r301.example"},
     "redirect": {"status": 301, "protocol": "https", "port": "443"}},
    {"name": "r302", "match": {"host": "r302.example"},
     "redirect": {"status": 302, "host": "new.example", "path": "/new/#{path}"}},
    {"name": "r307", "match": {"host": "r307.example"},
     "redirect": {"status": 307, "protocol": "http", "port": "80",
                  "query": "from=#{host}&#{query}"}},
    {"name": "r308", "match": {"host": "r308.example"},
     "redirect": {"status": 308, "protocol": "https", "port": "8443", "path": "/v2/#{path}"}},
    {"name": "loop", "match": {"host": "loop.example"}, "redirect": {"status": 301}},
]


@contextlib.asynccontextmanager
async def routed(default_route: dict[str, Any] | None = None
                 ) -> AsyncIterator[tuple[int, RawClient]]:
    async with demo_backend("app-1") as backend:
        cfg = proxy_config(backend, routes=ROUTES)
        if default_route is None:
            del cfg["default_route"]
        else:
            cfg["default_route"] = default_route
        async with running_daemon(cfg):
            port = listener_port(cfg)
            c = await RawClient.open(port)
            try:
                yield port, c
            finally:
                await c.close()


def body_of(resp: RawResponse) -> str:
    return resp.body.decode()


def backend_path(resp: RawResponse) -> str:
    assert resp.status == 200, resp
    assert resp.header("X-Backend") == "app-1", resp
    return str(json.loads(resp.body)["path"])


FORWARD_DEFAULT = {"name": "to-app", "forward": "app"}


@pytest.mark.parametrize("host, path, expected", [
    ("exact.example", "/", "exact\n"),
    ("EXACT.Example.", "/anything", "exact\n"),
    ("exact.example:8080", "/", "exact\n"),
    ("a.wild.example", "/", "wild\n"),
    ("a.b.wild.example", "/z", "wild\n"),
    ("A.WILD.EXAMPLE:81", "/", "wild\n"),
    ("both.example", "/x/1", "both\n"),
    ("any.example", "/first/", "first-a\n"),
    ("any.example", "/first/deeper/x", "first-a\n"),   # an earlier rule wins over a longer one
    ("exact.example", "/first/", "exact\n"),           # host rule listed first wins
    ("any.example", "/assets/app.css", "css\n"),
    ("any.example", "/assets/deep/dir/x.css", "css\n"),  # * spans /
    ("any.example", "/img/abc.png", "png3\n"),
])
async def test_rule_matches(host: str, path: str, expected: str) -> None:
    async with routed(FORWARD_DEFAULT) as (_, c):
        resp = await c.request("GET", path, host=host)
        assert resp.status == 200
        assert body_of(resp) == expected


@pytest.mark.parametrize("host, path", [
    ("wild.example", "/"),               # the wildcard needs at least one label
    ("sub.exact.example", "/"),          # exact is exact
    ("both.example", "/y/1"),            # all conditions must hold
    ("other.example", "/x/1"),
    ("any.example", "/First/"),          # paths are case-sensitive
    ("any.example", "/firs"),
    ("any.example", "/assets/app.css.map"),  # a pattern must match the whole path
    ("any.example", "/img/abcd.png"),
    ("any.example", "/img/ab.png"),
])
async def test_non_matches_fall_to_the_default_route(host: str, path: str) -> None:
    async with routed(FORWARD_DEFAULT) as (_, c):
        resp = await c.request("GET", path, host=host)
        assert backend_path(resp) == path


async def test_forward_route_reaches_the_pool_with_query() -> None:
    async with routed(None) as (_, c):
        resp = await c.request("GET", "/api/v1/items?limit=5")
        assert backend_path(resp) == "/api/v1/items"
        assert json.loads(resp.body)["query"] == "limit=5"


async def test_absolute_form_authority_is_the_host_for_routing() -> None:
    # RFC 9112 3.2.2: with an absolute-form target the Host header is ignored
    async with routed(FORWARD_DEFAULT) as (_, c):
        resp = await c.request("GET", "http://exact.example/z", host="other.example")
        assert body_of(resp) == "exact\n"
        resp = await c.request("GET", "http://other.example/z", host="exact.example")
        assert backend_path(resp) == "/z"


async def test_path_routing_ignores_the_query() -> None:
    async with routed(None) as (_, c):
        resp = await c.request("GET", "/assets/a.css?v=3")
        assert body_of(resp) == "css\n"


async def test_without_default_route_unmatched_gets_404() -> None:
    async with routed(None) as (_, c):
        resp = await c.request("GET", "/nothing/here")
        assert resp.status == 404
        assert resp.header("Content-Length") == str(len(resp.body))
        assert b"no route" in resp.body
        # a local answer keeps the connection
        assert (await c.request("GET", "/assets/a.css")).status == 200


async def test_default_fixed_response_route() -> None:
    default = {"name": "teapot", "fixed_response": {"status": 418,
                                                    "content_type": "text/x-teapot",
                                                    "body": "short and stout"}}
    async with routed(default) as (_, c):
        resp = await c.request("GET", "/unmatched")
        assert resp.status == 418
        assert resp.header("Content-Type") == "text/x-teapot"
        assert resp.body == b"short and stout"


# -- fixed response -----------------------------------------------------------------------------

async def test_fixed_response_status_type_and_body() -> None:
    async with routed(None) as (_, c):
        resp = await c.request("GET", "/", host="down.example")
        assert resp.status == 503
        assert resp.header("Content-Type") == "application/json"
        assert resp.header("Content-Length") == str(len(b'{"down": true}'))
        assert resp.body == b'{"down": true}'


async def test_fixed_response_head_has_no_body_but_the_same_length() -> None:
    async with routed(None) as (_, c):
        get = await c.request("GET", "/", host="down.example")
        head = await c.request("HEAD", "/", host="down.example")
        assert head.status == 503
        assert head.header("Content-Length") == get.header("Content-Length") == "14"
        assert head.header("Content-Type") == "application/json"
        # nothing after the head: the next response parses from the first byte
        after = await c.request("GET", "/assets/x.css")
        assert after.status == 200 and after.body == b"css\n"


async def test_fixed_response_to_a_post_with_body_keeps_the_connection_in_sync() -> None:
    async with routed(None) as (_, c):
        resp = await c.request("POST", "/assets/a.css", body=b"x" * 5000)
        assert resp.status == 200 and resp.body == b"css\n"
        after = await c.request("GET", "/img/abc.png")
        assert after.body == b"png3\n"


# -- redirects ----------------------------------------------------------------------------------

async def redirect(c: RawClient, host: str, target: str, method: str = "GET") -> RawResponse:
    resp = await c.request(method, target, host=host)
    assert 300 <= resp.status < 400, resp
    if method != "HEAD":
        assert resp.body == b""
    return resp


async def test_redirect_301_to_https_drops_the_default_port_and_keeps_path_and_query() -> None:
    async with routed(None) as (_, c):
        resp = await redirect(c, "r301.example", "/a/b%20c?x=1&y=2")
        assert resp.status == 301
        assert resp.header("Location") == "https://r301.example/a/b%20c?x=1&y=2"


async def test_redirect_301_without_query_has_no_question_mark() -> None:
    async with routed(None) as (_, c):
        resp = await redirect(c, "r301.example", "/plain")
        assert resp.header("Location") == "https://r301.example/plain"


async def test_redirect_302_new_host_keeps_the_listener_port() -> None:
    async with routed(None) as (port, c):
        resp = await redirect(c, "r302.example", "/old/page?q=1")
        assert resp.status == 302
        # http on a non-default port: #{port} (the port the client used) appears in the URL
        assert resp.header("Location") == f"http://new.example:{port}/new/old/page?q=1"


async def test_redirect_307_http_port_80_is_omitted_and_query_template() -> None:
    async with routed(None) as (_, c):
        resp = await redirect(c, "r307.example", "/p?k=v")
        assert resp.status == 307
        assert resp.header("Location") == "http://r307.example/p?from=r307.example&k=v"


async def test_redirect_308_non_default_https_port_is_kept() -> None:
    async with routed(None) as (_, c):
        resp = await redirect(c, "r308.example", "/items/7")
        assert resp.status == 308
        assert resp.header("Location") == "https://r308.example:8443/v2/items/7"


async def test_redirect_host_port_is_not_copied_into_the_new_host() -> None:
    async with routed(None) as (_, c):
        resp = await redirect(c, "r301.example:8080", "/x")
        assert resp.header("Location") == "https://r301.example/x"


async def test_redirect_head_and_keep_alive() -> None:
    async with routed(None) as (_, c):
        head = await redirect(c, "r301.example", "/h", method="HEAD")
        assert head.header("Location") == "https://r301.example/h"
        again = await redirect(c, "r301.example", "/h2")
        assert again.header("Location") == "https://r301.example/h2"


async def test_redirect_to_the_same_url_is_refused_with_500() -> None:
    async with routed(None) as (_, c):
        resp = await c.request("GET", "/same?x=1", host="loop.example")
        assert resp.status == 500
        assert "location" not in resp.names()
        assert b"lbcdn" in resp.body


# -- what every local answer carries -----------------------------------------------------------

IMF_FIXDATE = re.compile(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug"
                         r"|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT")


@pytest.mark.parametrize("host, path, status", [
    ("any.example", "/assets/a.css", 200),
    ("r301.example", "/x", 301),
    ("any.example", "/unrouted", 404),
])
async def test_local_answers_carry_a_date(host: str, path: str, status: int) -> None:
    # RFC 9110 6.6.1: an origin server with a clock MUST send Date in 2xx, 3xx and 4xx
    # responses; for fixed responses, redirects and its 404 lbcdn is the origin server.
    async with routed(None) as (_, c):
        resp = await c.request("GET", path, host=host)
        assert resp.status == status
        date = resp.header("Date")
        assert date is not None and IMF_FIXDATE.fullmatch(date), resp.headers


# -- per-route body limit -----------------------------------------------------------------------

async def test_route_body_limit() -> None:
    async with routed(None) as (port, c):
        ok = await c.request("POST", "/limited/a", body=b"0123456789")
        assert backend_path(ok) == "/limited/a"
        assert json.loads(ok.body)["body_bytes"] == 10
        too_big = await c.request("POST", "/limited/a", body=b"01234567890")
        assert too_big.status == 413
        assert b"lbcdn" in too_big.body
        other = await RawClient.open(port)
        try:  # another route has no limit
            resp = await other.request("POST", "/api/x", body=b"y" * 1000)
            assert backend_path(resp) == "/api/x"
            assert json.loads(resp.body)["body_bytes"] == 1000
        finally:
            await other.close()


async def test_route_body_limit_on_a_chunked_body() -> None:
    async with routed(None) as (_, c):
        await c.send(b"POST /limited/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"\r\n5\r\n01234\r\n6\r\n567890\r\n0\r\n\r\n")
        resp = await c.response()
        assert resp.status == 413
