"""The edge cache end to end: a real daemon in front of a scripted origin that counts its
requests, real sockets, a fake wall clock for freshness (`daemon.cache.clock`)."""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lbcdn.daemon import Daemon
from tests.e2e.cache_origin import Answer, Origin, scripted_origin
from tests.e2e.harness import (HOST, RawClient, RawResponse, admin_port, free_port,
                               listener_port, proxy_config, running_daemon, until)


def cdn_config(origin: int, *, policy: dict[str, Any] | None = None,
               request_policy: dict[str, Any] | str | None = None,
               origins: dict[str, Any] | None = None, groups: dict[str, Any] | None = None,
               behaviors: list[dict[str, Any]] | None = None,
               errors: list[dict[str, Any]] | None = None,
               storage: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    cache: dict[str, Any] = {
        "policies": {"default": {"query_strings": {"behavior": "all"}, **(policy or {})}},
        "origins": origins or {"o": {"url": f"http://{HOST}:{origin}"}},
        "distributions": {"site": {
            "default_behavior": {"path_pattern": "*", "origin": "o"},
            "behaviors": behaviors or [], "custom_error_responses": errors or []}},
    }
    if isinstance(request_policy, dict):  # the default behavior's origin request policy
        cache["origin_request_policies"] = {"viewer": request_policy}
        request_policy = "viewer"
    if request_policy is not None:
        cache["distributions"]["site"]["default_behavior"]["origin_request_policy"] = \
            request_policy
    if groups:
        cache["origin_groups"] = groups
    if storage:
        cache["storage"] = storage
    return proxy_config(origin, routes=[{"name": "cdn", "cache": "site",
                                         "match": {"path_prefix": "/"}}],
                        cache=cache, **over)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def get(port: int, target: str, headers: list[tuple[str, str]] | None = None,
              method: str = "GET", body: bytes = b"") -> RawResponse:
    c = await RawClient.open(port)
    try:
        return await c.request(method, target, headers=headers, body=body)
    finally:
        await c.close()


def cc(resp: RawResponse) -> str:
    return resp.header("Cache-Status") or ""


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    async with scripted_origin() as o:
        yield o


async def started(config: dict[str, Any]) -> AsyncIterator[tuple[Daemon, int, Clock]]:
    async with running_daemon(config) as d:
        clock = Clock()
        assert d.cache is not None
        d.cache.clock = clock
        yield d, listener_port(config), clock


async def test_miss_then_hit_with_age_cache_status_and_x_cache(origin: Origin) -> None:
    origin.set("/a", Answer(headers=[("Cache-Control", "max-age=100"), ("ETag", '"v1"')]))
    async for d, port, clock in started(cdn_config(origin.port)):
        r1 = await get(port, "/a")
        assert r1.status == 200 and r1.body == b"hello"
        assert r1.header("X-Cache") == "Miss from lbcdn"
        assert "fwd=uri-miss" in cc(r1) and "stored" in cc(r1)
        assert r1.header_all("Content-Length") == ["5"]
        clock.now += 30
        r2 = await get(port, "/a")
        assert r2.body == b"hello" and r2.header("X-Cache") == "Hit from lbcdn"
        assert r2.header("Age") == "30"
        assert cc(r2) == "lbcdn; hit; ttl=70"
        head = await get(port, "/a", method="HEAD")
        assert head.status == 200 and head.body == b"" and head.header("Content-Length") == "5"
        assert origin.hits["/a"] == 1


async def test_a_response_without_date_is_served_with_the_time_it_was_received(
        origin: Origin) -> None:
    """RFC 9110 6.6.1: a cache appends the Date an origin left out; an origin's own is kept."""
    own = email.utils.formatdate(time.time(), usegmt=True)
    origin.set("/d", Answer(headers=[("Cache-Control", "max-age=100")]))
    origin.set("/own", Answer(headers=[("Cache-Control", "max-age=100"), ("Date", own)]))
    async for d, port, clock in started(cdn_config(origin.port)):
        received = clock.now
        miss = await get(port, "/d")
        clock.now += 30
        hit = await get(port, "/d")
        part = await get(port, "/d", headers=[("Range", "bytes=0-1")])
        assert part.status == 206 and part.body == b"he"
        for r in (miss, hit, part):
            dates = r.header_all("Date")
            assert len(dates) == 1, r.headers
            assert abs(email.utils.parsedate_to_datetime(dates[0]).timestamp() - received) < 1
        assert hit.header("Age") == "30" and cc(hit) == "lbcdn; hit; ttl=70"
        for _ in range(2):
            assert (await get(port, "/own")).header_all("Date") == [own]
    assert origin.hits["/d"] == 1


async def test_not_stored_no_store_private_set_cookie_authorization(origin: Origin) -> None:
    origin.set("/ns", Answer(headers=[("Cache-Control", "no-store")]))
    origin.set("/pv", Answer(headers=[("Cache-Control", "private, max-age=60")]))
    origin.set("/ck", Answer(headers=[("Cache-Control", "max-age=60"), ("Set-Cookie", "a=1")]))
    origin.set("/au", Answer(headers=[("Cache-Control", "max-age=60")]))
    async for d, port, clock in started(cdn_config(origin.port)):
        for path in ("/ns", "/pv", "/ck"):
            for _ in range(2):
                r = await get(port, path)
                assert r.status == 200 and r.header("X-Cache") == "Miss from lbcdn"
            assert origin.hits[path] == 2, path
        for _ in range(2):
            await get(port, "/au", headers=[("Authorization", "Bearer x")])
        assert origin.hits["/au"] == 2


async def test_cdn_cache_control_wins_and_is_not_forwarded(origin: Origin) -> None:
    origin.set("/c", Answer(headers=[("Cache-Control", "no-store"),
                                     ("CDN-Cache-Control", "max-age=50")]))
    async for d, port, clock in started(cdn_config(origin.port)):
        r = await get(port, "/c")
        assert r.header("CDN-Cache-Control") is None and r.header("Cache-Control") == "no-store"
        clock.now += 10
        r = await get(port, "/c")
        assert r.header("X-Cache") == "Hit from lbcdn" and "ttl=40" in cc(r)
        assert origin.hits["/c"] == 1


async def test_ttl_clamped_by_policy(origin: Origin) -> None:
    origin.set("/short", Answer(headers=[("Cache-Control", "max-age=1")]))
    origin.set("/long", Answer(headers=[("Cache-Control", "max-age=99999")]))
    origin.set("/none", Answer(headers=[]))
    config = cdn_config(origin.port, policy={"min_ttl_s": 10, "default_ttl_s": 20,
                                             "max_ttl_s": 100})
    async for d, port, clock in started(config):
        for path in ("/short", "/long", "/none"):
            await get(port, path)
        assert "ttl=10" in cc(await get(port, "/short"))
        assert "ttl=100" in cc(await get(port, "/long"))
        assert "ttl=20" in cc(await get(port, "/none"))


async def test_revalidation_304_refreshes_headers(origin: Origin) -> None:
    def answer(method: str, headers: list[tuple[str, str]]) -> Answer:
        inm = dict((n.lower(), v) for n, v in headers).get("if-none-match")
        if inm == '"v1"':
            return Answer(304, [("ETag", '"v1"'), ("Cache-Control", "max-age=10"),
                                ("X-Version", "2")])
        return Answer(200, [("ETag", '"v1"'), ("Cache-Control", "max-age=10"),
                            ("X-Version", "1")], b"body")
    origin.set("/r", answer)
    async for d, port, clock in started(cdn_config(origin.port)):
        await get(port, "/r")
        clock.now += 20
        r = await get(port, "/r")
        assert r.status == 200 and r.body == b"body"
        assert r.header("X-Cache") == "RefreshHit from lbcdn" and "fwd=stale" in cc(r)
        assert r.header("X-Version") == "2"
        assert origin.last_headers("/r")["if-none-match"] == '"v1"'
        r = await get(port, "/r")
        assert r.header("X-Cache") == "Hit from lbcdn" and r.header("X-Version") == "2"
        assert origin.hits["/r"] == 2


async def test_no_cache_and_must_revalidate(origin: Origin) -> None:
    origin.set("/nc", Answer(headers=[("Cache-Control", "no-cache, max-age=60")]))
    origin.set("/mr", Answer(headers=[("Cache-Control", "max-age=1, must-revalidate"),
                                      ("ETag", '"m"')]))
    config = cdn_config(origin.port, policy={"stale_if_error_s": 100})
    async for d, port, clock in started(config):
        await get(port, "/nc")
        await get(port, "/nc")
        assert origin.hits["/nc"] == 2
        await get(port, "/mr")
        clock.now += 5
        origin.set("/mr", Answer(500, [], b"down"))
        r = await get(port, "/mr")
        assert r.status == 500  # must-revalidate: never served stale, even on error


async def test_stale_while_revalidate_serves_stale_and_refreshes_once(origin: Origin) -> None:
    origin.set("/s", Answer(headers=[("Cache-Control", "max-age=10, stale-while-revalidate=60"),
                                     ("X-N", "1")]))
    async for d, port, clock in started(cdn_config(origin.port)):
        await get(port, "/s")
        origin.set("/s", Answer(headers=[("Cache-Control", "max-age=10"), ("X-N", "2")],
                                delay_s=0.2))
        clock.now += 15
        rs = await asyncio.gather(*(get(port, "/s") for _ in range(5)))
        assert all(r.header("X-N") == "1" and r.header("X-Cache") == "Hit from lbcdn"
                   for r in rs)
        assert d.cache is not None
        await until(lambda: not d.cache.refreshing, what="the background revalidation")
        assert origin.hits["/s"] == 2
        r = await get(port, "/s")
        assert r.header("X-N") == "2" and r.header("X-Cache") == "Hit from lbcdn"


async def test_stale_if_error_on_5xx_and_on_refused_connection(origin: Origin) -> None:
    origin.set("/e", Answer(headers=[("Cache-Control", "max-age=10, stale-if-error=100")],
                            body=b"good"))
    dead = free_port()
    config = cdn_config(origin.port, origins={
        "o": {"url": f"http://{HOST}:{origin.port}"},
        "dead": {"url": f"http://{HOST}:{dead}", "connect_attempts": 1}})
    async for d, port, clock in started(config):
        await get(port, "/e")
        clock.now += 20
        origin.set("/e", Answer(503, [], b"bad"))
        r = await get(port, "/e")
        assert r.status == 200 and r.body == b"good"
        assert "fwd=stale" in cc(r) and "fwd-status=503" in cc(r)
        # the same stored object, its origin now refusing connections
        assert d.cache is not None
        d.cache.plans["o"] = d.cache.plans["dead"]
        r = await get(port, "/e")
        assert r.status == 200 and r.body == b"good"
        clock.now += 200
        r = await get(port, "/e")
        assert r.status == 502 and r.header("X-Cache") == "Error from lbcdn"


async def test_client_conditionals_ranges_from_cache(origin: Origin) -> None:
    body = bytes(range(256)) * 4
    origin.set("/f", Answer(headers=[("Cache-Control", "max-age=60"), ("ETag", '"abc"'),
                                     ("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")],
                            body=body))
    async for d, port, clock in started(cdn_config(origin.port)):
        await get(port, "/f")
        r = await get(port, "/f", headers=[("If-None-Match", '"abc"')])
        assert r.status == 304 and r.body == b"" and r.header("ETag") == '"abc"'
        assert r.header("X-Cache") == "Hit from lbcdn"
        r = await get(port, "/f", headers=[("If-Modified-Since",
                                            "Tue, 02 Jan 2024 00:00:00 GMT")])
        assert r.status == 304
        r = await get(port, "/f", headers=[("If-Match", '"zzz"')])
        assert r.status == 412
        r = await get(port, "/f", headers=[("Range", "bytes=10-19")])
        assert r.status == 206 and r.body == body[10:20]
        assert r.header("Content-Range") == f"bytes 10-19/{len(body)}"
        r = await get(port, "/f", headers=[("Range", "bytes=-5")])
        assert r.status == 206 and r.body == body[-5:]
        r = await get(port, "/f", headers=[("Range", "bytes=5000-")])
        assert r.status == 416 and r.header("Content-Range") == f"bytes */{len(body)}"
        r = await get(port, "/f", headers=[("Range", "bytes=0-1"), ("If-Range", '"old"')])
        assert r.status == 200 and r.body == body
        assert origin.hits["/f"] == 1
        assert "range" not in origin.last_headers("/f")


async def test_a_range_on_a_miss_is_cut_from_the_fill(origin: Origin) -> None:
    """A Range on a miss fetches the whole object (stored) and answers 206 with the range
    cut from it as it arrives, as nginx's cache and CloudFront do; 416 for a range past the
    end; an origin that sends no length gets the whole body as 200 (allowed by RFC 9110 14.2)."""
    body = bytes(range(256)) * 64
    origin.set("/r", Answer(headers=[("Cache-Control", "max-age=60"), ("ETag", '"r1"')],
                            body=body))
    origin.set("/past", Answer(headers=[("Cache-Control", "max-age=60")], body=body))
    origin.set("/chunked", Answer(headers=[("Cache-Control", "max-age=60")], body=body,
                                  chunked=True))
    origin.set("/stale-if", Answer(headers=[("Cache-Control", "max-age=60"), ("ETag", '"s"')],
                                   body=body))
    async for d, port, clock in started(cdn_config(origin.port)):
        r = await get(port, "/r", headers=[("Range", "bytes=5000-5099")])
        assert r.status == 206 and r.body == body[5000:5100], (r.status, len(r.body))
        assert r.header("Content-Range") == f"bytes 5000-5099/{len(body)}"
        assert r.header_all("Content-Length") == ["100"]
        assert r.header("X-Cache") == "Miss from lbcdn"
        assert "range" not in origin.last_headers("/r")
        full = await get(port, "/r")
        assert full.status == 200 and full.body == body
        assert full.header("X-Cache") == "Hit from lbcdn" and origin.hits["/r"] == 1
        r = await get(port, "/past", headers=[("Range", "bytes=99999-")])
        assert r.status == 416 and r.body == b""
        assert r.header("Content-Range") == f"bytes */{len(body)}"
        assert (await get(port, "/past")).header("X-Cache") == "Hit from lbcdn"
        r = await get(port, "/chunked", headers=[("Range", "bytes=0-9")])
        assert r.status == 200 and r.body == body
        r = await get(port, "/stale-if", headers=[("Range", "bytes=0-9"),
                                                  ("If-Range", '"other"')])
        assert r.status == 200 and r.body == body
        assert origin.hits == {"/r": 1, "/past": 1, "/chunked": 1, "/stale-if": 1}


async def test_vary_variants_and_vary_star(origin: Origin) -> None:
    def by_lang(method: str, headers: list[tuple[str, str]]) -> Answer:
        lang = dict((n.lower(), v) for n, v in headers).get("accept-language", "none")
        return Answer(headers=[("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")],
                      body=lang.encode())
    origin.set("/v", by_lang)
    origin.set("/star", Answer(headers=[("Cache-Control", "max-age=60"), ("Vary", "*")]))
    # the origin sees Accept-Language only when the behavior forwards it
    config = cdn_config(origin.port, request_policy={
        "headers": {"behavior": "allow", "names": ["Accept-Language"]}})
    async for d, port, clock in started(config):
        assert (await get(port, "/v", [("Accept-Language", "en")])).body == b"en"
        assert (await get(port, "/v", [("Accept-Language", "fr")])).body == b"fr"
        r = await get(port, "/v", [("Accept-Language", "EN")])
        assert r.body == b"en" and r.header("X-Cache") == "Hit from lbcdn"
        assert (await get(port, "/v", [("Accept-Language", "fr")])).body == b"fr"
        assert origin.hits["/v"] == 2
        await get(port, "/star")
        await get(port, "/star")
        assert origin.hits["/star"] == 2


async def test_unsafe_method_passes_through_and_invalidates(origin: Origin) -> None:
    origin.set("/doc", Answer(headers=[("Cache-Control", "max-age=60")], body=b"v1"))
    origin.set("/other", Answer(headers=[("Cache-Control", "max-age=60")], body=b"o"))
    origin.set("/post", Answer(201, [("Location", "/other")], b"created"))
    config = cdn_config(origin.port, policy={
        "allowed_methods": ["GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"]})
    async for d, port, clock in started(config):
        await get(port, "/doc")
        await get(port, "/other")
        origin.set("/doc", Answer(200, [], b"put-ok"))
        r = await get(port, "/doc", method="PUT", body=b"new")
        assert r.status == 200 and r.body == b"put-ok"
        assert r.header("X-Cache") == "Miss from lbcdn" and "fwd=bypass" in cc(r)
        origin.set("/doc", Answer(headers=[("Cache-Control", "max-age=60")], body=b"v2"))
        assert (await get(port, "/doc")).body == b"v2"
        r = await get(port, "/post", method="POST", body=b"x")
        assert r.status == 201
        await get(port, "/other")
        assert origin.hits["/other"] == 2


async def test_method_not_allowed(origin: Origin) -> None:
    async for d, port, clock in started(cdn_config(origin.port)):
        r = await get(port, "/x", method="POST", body=b"a")
        assert r.status == 405 and r.header("Allow") == "GET, HEAD"
        assert origin.hits["/x"] == 0


async def test_gzip_variant_cached_with_weak_etag(origin: Origin) -> None:
    text = b"lbcdn compresses text. " * 200
    origin.set("/t.txt", Answer(headers=[("Cache-Control", "max-age=60"), ("ETag", '"t"'),
                                         ("Content-Type", "text/plain")], body=text))
    async for d, port, clock in started(cdn_config(origin.port)):
        r = await get(port, "/t.txt", [("Accept-Encoding", "gzip")])
        assert r.header("Content-Encoding") == "gzip" and gzip.decompress(r.body) == text
        assert r.header("ETag") == 'W/"t"' and "Accept-Encoding" in (r.header("Vary") or "")
        r = await get(port, "/t.txt", [("Accept-Encoding", "gzip, deflate")])
        assert r.header("X-Cache") == "Hit from lbcdn" and gzip.decompress(r.body) == text
        r = await get(port, "/t.txt")
        assert r.header("Content-Encoding") is None and r.body == text
        assert origin.hits["/t.txt"] == 2
        assert "accept-encoding" not in origin.last_headers("/t.txt")


async def test_cache_key_query_headers_cookies(origin: Origin) -> None:
    origin.set("/k", lambda m, h: Answer(headers=[("Cache-Control", "max-age=60")],
                                         body=str(len(origin.requests)).encode()))
    config = cdn_config(origin.port, policy={
        "query_strings": {"behavior": "allow", "names": ["v"]},
        "headers": ["X-Device"], "cookies": ["lang"]})
    async for d, port, clock in started(config):
        a = (await get(port, "/k?v=1&junk=2")).body
        assert (await get(port, "/k?junk=3&v=1")).body == a
        assert origin.last_headers("/k") is not None
        assert origin.requests[-1][0].startswith("GET /k?v=1 ")
        assert (await get(port, "/k?v=2")).body != a
        b = (await get(port, "/k?v=1", [("X-Device", "phone")])).body
        assert b != a
        c = (await get(port, "/k?v=1", [("Cookie", "lang=fr; session=9")])).body
        assert c not in (a, b)
        assert origin.last_headers("/k")["cookie"] == "lang=fr"
        assert (await get(port, "/k?v=1", [("Cookie", "session=1; lang=fr")])).body == c


async def test_collapsing_one_origin_request_and_streaming(origin: Origin) -> None:
    big = b"x" * (2 << 20)
    origin.set("/cold", Answer(headers=[("Cache-Control", "max-age=60")], body=big,
                               delay_s=0.3))
    async for d, port, clock in started(cdn_config(origin.port)):
        rs = await asyncio.gather(*(get(port, "/cold") for _ in range(100)))
        assert all(r.status == 200 and r.body == big for r in rs)
        assert origin.hits["/cold"] == 1
        assert sum("collapsed" in cc(r) for r in rs) == 99


async def test_collapsing_off_and_lock_timeout(origin: Origin) -> None:
    origin.set("/slow", Answer(headers=[("Cache-Control", "max-age=60")], delay_s=0.5))
    config = cdn_config(origin.port, policy={"lock_timeout_s": 0.1})
    async for d, port, clock in started(config):
        rs = await asyncio.gather(*(get(port, "/slow") for _ in range(3)))
        assert all(r.status == 200 for r in rs)
        assert origin.hits["/slow"] == 3  # waiters gave up on the lock and fetched alone
    config = cdn_config(origin.port, policy={"collapse": False})
    origin.hits.clear()
    origin.set("/slow", Answer(headers=[("Cache-Control", "max-age=60")], delay_s=0.2))
    async for d, port, clock in started(config):
        await asyncio.gather(*(get(port, "/slow") for _ in range(3)))
        assert origin.hits["/slow"] == 3


async def test_origin_group_failover_on_status_and_connection_error(origin: Origin) -> None:
    async with scripted_origin() as backup:
        origin.set("/g", Answer(503, [], b"primary down"))
        backup.set("/g", Answer(headers=[("Cache-Control", "max-age=60")], body=b"backup"))
        backup.set("/h", Answer(headers=[("Cache-Control", "max-age=60")], body=b"backup-h"))
        dead = free_port()
        config = cdn_config(origin.port, origins={
            "p": {"url": f"http://{HOST}:{origin.port}"},
            "dead": {"url": f"http://{HOST}:{dead}", "connect_attempts": 2,
                     "connect_timeout_s": 1},
            "b": {"url": f"http://{HOST}:{backup.port}"}},
            groups={"grp": {"primary": "p", "secondary": "b", "failover_statuses": [503]},
                    "grp2": {"primary": "dead", "secondary": "b"}},
            behaviors=[{"path_pattern": "/h", "origin": "grp2"}])
        config["cache"]["distributions"]["site"]["default_behavior"]["origin"] = "grp"
        async for d, port, clock in started(config):
            r = await get(port, "/g")
            assert r.status == 200 and r.body == b"backup"
            r = await get(port, "/h")
            assert r.status == 200 and r.body == b"backup-h"
            assert origin.hits["/g"] == 1 and backup.hits["/g"] == 1


async def test_url_origin_path_and_host(origin: Origin) -> None:
    origin.set("/prod/img.png", Answer(headers=[("Cache-Control", "max-age=60")], body=b"i"))
    config = cdn_config(origin.port, origins={"o": {"url": f"http://{HOST}:{origin.port}",
                                                    "origin_path": "/prod"}})
    async for d, port, clock in started(config):
        r = await get(port, "/img.png")
        assert r.status == 200 and r.body == b"i"
        assert origin.last_headers("/prod/img.png")["host"] == f"{HOST}:{origin.port}"


async def test_pool_origin_through_demo_backend() -> None:
    from tests.e2e.harness import demo_backend
    async with demo_backend("d1") as bport:
        config = cdn_config(bport, origins={"o": {"pool": "app"}})
        config["pools"]["app"]["health"] = {"enabled": False}  # /count must see misses only
        async for d, port, clock in started(config):
            target = "/headers/set?Cache-Control=max-age%3D60"
            r1 = await get(port, target)
            r2 = await get(port, target)
            assert r1.status == 200 and r2.header("X-Cache") == "Hit from lbcdn"
            count = json.loads((await get(bport, "/count")).body)
            assert count["requests"] == 2  # one fill and this /count


async def test_custom_error_response_page(origin: Origin) -> None:
    origin.set("/errors/404.html", Answer(headers=[("Cache-Control", "max-age=60")],
                                          body=b"<h1>not here</h1>"))
    config = cdn_config(origin.port, errors=[{"error_code": 404,
                                              "response_page_path": "/errors/404.html",
                                              "response_code": 404}])
    async for d, port, clock in started(config):
        for _ in range(2):
            r = await get(port, "/missing")
            assert r.status == 404 and r.body == b"<h1>not here</h1>"
        assert origin.hits["/errors/404.html"] == 1


async def test_error_caching_min_ttl(origin: Origin) -> None:
    origin.set("/gone", Answer(404, [], b"no"))
    config = cdn_config(origin.port, errors=[{"error_code": 404,
                                              "error_caching_min_ttl_s": 30}])
    async for d, port, clock in started(config):
        await get(port, "/gone")
        r = await get(port, "/gone")
        assert r.status == 404 and r.header("X-Cache") == "Hit from lbcdn" and "ttl=30" in cc(r)
        clock.now += 31
        await get(port, "/gone")
        assert origin.hits["/gone"] == 2


async def test_only_if_cached(origin: Origin) -> None:
    async for d, port, clock in started(cdn_config(origin.port)):
        r = await get(port, "/nothing", [("Cache-Control", "only-if-cached")])
        assert r.status == 504 and origin.hits["/nothing"] == 0


async def test_invalidation_api_hard_soft_tags_and_metrics(origin: Origin) -> None:
    for p in ("/img/a.png", "/img/b.png", "/index.html", "/t1"):
        origin.set(p, Answer(headers=[("Cache-Control", "max-age=60, stale-if-error=600"),
                                      ("Surrogate-Key", "blue red")], body=p.encode()))
    config = cdn_config(origin.port, admin={"address": HOST, "port": free_port(),
                                            "token": "s3cret"})
    async for d, port, clock in started(config):
        for p in ("/img/a.png", "/img/b.png", "/index.html", "/t1"):
            await get(port, p)
        auth = {"Authorization": "Bearer s3cret"}
        base = f"http://{HOST}:{admin_port(config)}/api/cache/invalidations"
        async with aiohttp.ClientSession(headers=auth) as s:
            async with s.post(base, json={"paths": ["/img/*"]}) as resp:
                assert resp.status == 201
                inv = await resp.json()
            assert inv["id"].startswith("I") and inv["status"] == "Completed"
            assert inv["purged"] == 2
            async with s.get(f"{base}/{inv['id']}") as resp:
                assert (await resp.json())["id"] == inv["id"]
            async with s.post(base, json={"paths": ["/a*b"]}) as resp:
                assert resp.status == 400
            async with s.post(base, json={"paths": ["/index.html"], "mode": "soft"}) as resp:
                assert (await resp.json())["purged"] == 1
            async with s.post(base, json={"tags": ["red"]}) as resp:
                assert (await resp.json())["purged"] == 2  # /index.html (soft-purged) and /t1
            async with s.get(base) as resp:
                assert len((await resp.json())["invalidations"]) == 3
            await get(port, "/img/a.png")
            assert origin.hits["/img/a.png"] == 2
            await get(port, "/t1")
            assert origin.hits["/t1"] == 2
            async with s.get(f"http://{HOST}:{admin_port(config)}/metrics") as resp:
                text = await resp.text()
        for name in ('lbcdn_cache_requests_total{result="hit"}',
                     'lbcdn_cache_requests_total{result="miss"}',
                     'lbcdn_cache_bytes{tier="memory"}', 'lbcdn_cache_objects{tier="memory"}',
                     "lbcdn_cache_origin_fetch_seconds_bucket",
                     'lbcdn_cache_purged_total{mode="hard"}'):
            assert name in text, name


async def test_soft_purge_then_stale_if_error(origin: Origin) -> None:
    origin.set("/p", Answer(headers=[("Cache-Control", "max-age=600, stale-if-error=600")],
                            body=b"kept"))
    config = cdn_config(origin.port, admin={"address": HOST, "port": free_port(),
                                            "token": "t"})
    async for d, port, clock in started(config):
        await get(port, "/p")
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer t"}) as s:
            url = f"http://{HOST}:{admin_port(config)}/api/cache/invalidations"
            async with s.post(url, json={"paths": ["/p"], "mode": "soft"}) as resp:
                assert resp.status == 201
        origin.set("/p", Answer(500, [], b"down"))
        r = await get(port, "/p")
        assert r.status == 200 and r.body == b"kept" and origin.hits["/p"] == 2


async def test_disk_tier_survives_restart(origin: Origin, tmp_path: Any) -> None:
    origin.set("/d", Answer(headers=[("Cache-Control", "max-age=600")], body=b"D" * 5000))
    config = cdn_config(origin.port, storage={"disk_path": str(tmp_path / "cache"),
                                              "max_object_bytes": 1000})
    async for d, port, clock in started(config):
        await get(port, "/d")
        assert d.cache is not None and d.cache.disk is not None
        await until(lambda: len(d.cache.disk) == 1, what="the disk write (in a thread)")
    async for d, port, clock in started(config):
        r = await get(port, "/d")
        assert r.status == 200 and r.body == b"D" * 5000
        assert r.header("X-Cache") == "Hit from lbcdn"
    assert origin.hits["/d"] == 1


async def test_plain_hit_fast_path_answers_as_the_full_flow(
        origin: Origin, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain fresh hit is answered without a CacheFlow, byte for byte as the full flow
    answers it (a harmless request Cache-Control forces the full flow)."""
    from lbcdn.edge import cache_flow
    flows: list[object] = []
    real = cache_flow.CacheFlow

    def counting(*args: Any, **kwargs: Any) -> Any:
        flows.append(args)
        return real(*args, **kwargs)
    monkeypatch.setattr(cache_flow, "CacheFlow", counting)
    origin.set("/f", Answer(headers=[("Cache-Control", "max-age=100"), ("ETag", '"v1"'),
                                     ("X-Extra", "1")], body=b"fast body"))
    full = [("Cache-Control", "max-age=1000")]
    async for d, port, clock in started(cdn_config(origin.port)):
        await get(port, "/f")
        assert len(flows) == 1
        clock.now += 30.5
        for method in ("GET", "HEAD"):
            for extra in ([], [("Connection", "close")]):
                n = len(flows)
                fast = await get(port, "/f", extra, method=method)
                assert len(flows) == n  # no CacheFlow: the fast path answered
                slow = await get(port, "/f", extra + full, method=method)
                assert len(flows) == n + 1
                assert fast.status == slow.status == 200
                assert fast.headers == slow.headers and fast.body == slow.body
                assert fast.header("Age") == "30" and cc(fast) == "lbcdn; hit; ttl=69"
        c = await RawClient.open(port)
        try:  # keep-alive on one connection: two fast hits in a row
            for _ in range(2):
                r = await c.request("GET", "/f")
                assert r.body == b"fast body" and r.header("X-Cache") == "Hit from lbcdn"
        finally:
            await c.close()
        # conditionals, stale entries and other methods take the full flow
        n = len(flows)
        r = await get(port, "/f", [("If-None-Match", '"v1"')])
        assert r.status == 304 and len(flows) == n + 1
        clock.now += 100
        r = await get(port, "/f")
        assert len(flows) == n + 2 and origin.hits["/f"] == 2
        assert r.header("X-Cache") != "Hit from lbcdn"


async def _get_close(port: int, target: str) -> int:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
                     .encode())
        data = await reader.read()
        return int(data[9:12])
    finally:
        writer.close()


@pytest.mark.slow
async def test_collapsing_1000_connections_one_origin_request(origin: Origin) -> None:
    """The bench's cold burst: 1,000 clients on their own connections (Connection: close)
    for one query-keyed URL; the origin counts requests for that exact target only, so an
    unrelated request (a health probe) cannot pass for a second fetch."""
    origin.set("/burst", Answer(headers=[("Cache-Control", "max-age=60")], body=b"b" * 1024,
                                delay_s=0.2))
    async for d, port, clock in started(cdn_config(origin.port)):
        async with asyncio.timeout(60):
            statuses = await asyncio.gather(*(_get_close(port, "/burst?cold=1")
                                              for _ in range(1000)))
        assert statuses.count(200) == 1000
        assert [line for line, _ in origin.requests] == ["GET /burst?cold=1 HTTP/1.1"]


async def test_hits_on_one_keep_alive_connection_follow_clock_purge_and_staleness(
        origin: Origin) -> None:
    """The same head again and again on one connection (the edge answers those without an
    exchange): Age and ttl move with the clock, a purge and staleness are seen at once."""
    origin.set("/k", Answer(headers=[("Cache-Control", "max-age=100"), ("ETag", '"v1"')]))
    async for d, port, clock in started(cdn_config(origin.port)):
        assert d.cache is not None
        c = await RawClient.open(port)
        try:
            seen = []
            for step in (0, 0, 7, 0, 50):
                clock.now += step
                r = await c.request("GET", "/k")
                assert r.status == 200 and r.body == b"hello"
                seen.append((r.header("X-Cache"), r.header("Age"), cc(r)))
            assert seen == [("Miss from lbcdn", None, "lbcdn; fwd=uri-miss; stored"),
                            ("Hit from lbcdn", "0", "lbcdn; hit; ttl=100"),
                            ("Hit from lbcdn", "7", "lbcdn; hit; ttl=93"),
                            ("Hit from lbcdn", "7", "lbcdn; hit; ttl=93"),
                            ("Hit from lbcdn", "57", "lbcdn; hit; ttl=43")]
            head = await c.request("HEAD", "/k")
            assert head.body == b"" and head.header("Age") == "57"
            assert origin.hits["/k"] == 1
            d.cache.memory.purge_uri(b"test.local", b"/k", soft=True)  # stale from now on
            r = await c.request("GET", "/k")
            assert r.header("X-Cache") != "Hit from lbcdn" and "fwd=stale" in cc(r)
            assert origin.hits["/k"] == 2
            d.cache.purge_uri(b"test.local", b"/k")
            r = await c.request("GET", "/k")
            assert r.header("X-Cache") == "Miss from lbcdn" and origin.hits["/k"] == 3
            r = await c.request("GET", "/k")
            assert r.header("X-Cache") == "Hit from lbcdn" and r.header("Age") == "0"
            clock.now += 101
            r = await c.request("GET", "/k")
            assert "fwd=stale" in cc(r) and origin.hits["/k"] == 4
            r = await c.request("GET", "/k", version="1.0",
                                headers=[("Connection", "keep-alive")])
            assert r.header("X-Cache") == "Hit from lbcdn"
            assert r.header("Connection") == "keep-alive"
        finally:
            await c.close()


async def test_a_remembered_hit_changes_with_each_second_and_a_clock_set_back(
        origin: Origin) -> None:
    """The answer to a known head is kept only while its Age and ttl seconds hold, and only
    for clock readings from when it was made."""
    origin.set("/s", Answer(headers=[("Cache-Control", "max-age=10")]))
    async for d, port, clock in started(cdn_config(origin.port)):
        c = await RawClient.open(port)
        try:
            ages = []
            for step in (0, 0, 0.1, 0.1, 1.0, 2.5, -3.0, 6.0, 4.0):
                clock.now += step
                r = await c.request("GET", "/s")
                ages.append((r.header("Age"), cc(r)))
        finally:
            await c.close()
        assert ages[0] == (None, "lbcdn; fwd=uri-miss; stored")
        assert ages[1:7] == [("0", "lbcdn; hit; ttl=10"), ("0", "lbcdn; hit; ttl=9"),
                             ("0", "lbcdn; hit; ttl=9"), ("1", "lbcdn; hit; ttl=8"),
                             ("3", "lbcdn; hit; ttl=6"), ("0", "lbcdn; hit; ttl=9")]
        assert ages[7] == ("6", "lbcdn; hit; ttl=3")
        assert ages[8][0] is None and "fwd=stale" in ages[8][1]   # 10.7 s: stale, fetched
        assert origin.hits["/s"] == 2


async def test_hits_answered_without_an_exchange_are_logged_and_counted(
        origin: Origin, tmp_path: Path) -> None:
    origin.set("/l", Answer(headers=[("Cache-Control", "max-age=100")]))
    log_path = tmp_path / "access.log"
    config = cdn_config(origin.port, logging={
        "level": "warning", "access_log": {"enabled": True, "path": str(log_path)}})
    async for d, port, clock in started(config):
        c = await RawClient.open(port)
        try:
            for _ in range(3):
                assert (await c.request("GET", "/l")).status == 200
        finally:
            await c.close()
        assert origin.hits["/l"] == 1
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [(r["path"], r["status"], r["route"]) for r in records] == [("/l", 200, "cdn")] * 3
    assert all(r["bytes_out"] > 5 for r in records)
    assert len({r["request_id"] for r in records}) == 3
