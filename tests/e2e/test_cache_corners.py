"""Edge-cache corners found by trying it as a new user would (issue 16): the Age a response
arrives with, the default TTL against the Last-Modified heuristic, custom error responses and
error caching, 304 header updates, extension methods, and request collapsing for stale and
purged entries. A real daemon in front of a scripted origin, real sockets; a fake wall clock
(`daemon.cache.clock`) where freshness is the point."""

from __future__ import annotations

import asyncio
import email.utils

from tests.e2e.cache_origin import Answer, Origin
from tests.e2e.test_cache import cc, cdn_config, get, origin, started

__all__ = ["origin"]  # the fixture


async def test_the_age_a_response_arrives_with_counts(origin: Origin) -> None:
    """RFC 9111 4.2.3: an origin's (or a parent cache's) Age is part of the corrected initial
    age; the Age sent on hits is the current age, and the freshness left shrinks with it."""
    origin.set("/old", Answer(headers=[("Cache-Control", "max-age=3600"), ("Age", "7200"),
                                       ("ETag", '"o"')]))
    origin.set("/young", Answer(headers=[("Cache-Control", "max-age=3600"), ("Age", "100")]))
    async for d, port, clock in started(cdn_config(origin.port)):
        miss = await get(port, "/young")
        assert miss.header("Age") == "100" and "stored" in cc(miss)
        clock.now += 1
        hit = await get(port, "/young")
        assert hit.header("Age") == "101" and cc(hit) == "lbcdn; hit; ttl=3499"
        clock.now += 10
        full = await get(port, "/young", headers=[("Cache-Control", "max-stale=0")])
        assert full.header("Age") == "111" and cc(full) == "lbcdn; hit; ttl=3489"
        assert origin.hits["/young"] == 1
        await get(port, "/old")
        again = await get(port, "/old")   # older than its max-age on arrival: stale at once
        assert "fwd=stale" in cc(again), again.headers
        assert origin.hits["/old"] == 2
        assert origin.last_headers("/old").get("if-none-match") == '"o"'


async def test_default_ttl_wins_over_the_last_modified_heuristic(origin: Origin) -> None:
    """No explicit freshness: the policy's default_ttl_s (CloudFront's Default TTL), not 10% of
    the time since Last-Modified; a policy with heuristic_freshness asks for the heuristic."""
    config = cdn_config(origin.port, policy={"default_ttl_s": 60}, behaviors=[
        {"path_pattern": "/h/*", "origin": "o", "policy": "heuristic"}])
    config["cache"]["policies"]["heuristic"] = {"default_ttl_s": 60,
                                                "heuristic_freshness": True}
    async for d, port, clock in started(config):
        clock.now = float(int(clock.now))  # Date has whole seconds
        day = 86400
        headers = [("Date", email.utils.formatdate(clock.now, usegmt=True)),
                   ("Last-Modified", email.utils.formatdate(clock.now - 5, usegmt=True))]
        old = [headers[0], ("Last-Modified",
                            email.utils.formatdate(clock.now - day, usegmt=True))]
        origin.set("/lm", Answer(headers=headers))
        origin.set("/h/recent", Answer(headers=headers))
        origin.set("/h/old", Answer(headers=old))
        for path in ("/lm", "/h/recent", "/h/old"):
            await get(port, path)
        clock.now += 30
        hit = await get(port, "/lm")
        assert cc(hit) == "lbcdn; hit; ttl=30" and origin.hits["/lm"] == 1
        assert "fwd=stale" in cc(await get(port, "/h/recent"))  # 10% of 5 s
        assert cc(await get(port, "/h/old")) == "lbcdn; hit; ttl=30"  # 10% of a day, capped


async def test_custom_error_response_caches_the_origin_error(origin: Origin) -> None:
    """With a page configured, the origin's 404 is still cached for error_caching_min_ttl_s
    (8 requests over 8 s with a 5 s minimum: 2 origin requests); every answer is the page
    with the configured status, and reports the error's Age and ttl; the page is an object of
    its own, cached by its own freshness."""
    origin.set("/missing", Answer(404, [], b"origin's own 404"))
    origin.set("/errors/404.html", Answer(headers=[("Cache-Control", "max-age=600")],
                                          body=b"<h1>not here</h1>"))
    config = cdn_config(origin.port, policy={"default_ttl_s": 3600}, errors=[
        {"error_code": 404, "response_page_path": "/errors/404.html", "response_code": 410,
         "error_caching_min_ttl_s": 5}])
    async for d, port, clock in started(config):
        reported = []
        for _ in range(8):
            r = await get(port, "/missing")
            assert (r.status, r.body) == (410, b"<h1>not here</h1>"), r
            reported.append((r.header("Age"), cc(r)))
            clock.now += 1
        assert origin.hits["/missing"] == 2
        # the answers report the stored error (what decides when the origin is asked again),
        # not the page's own entry
        assert reported == [(None, "lbcdn; fwd=uri-miss; stored")] + [
            (str(i), f"lbcdn; hit; ttl={5 - i}") for i in range(1, 5)] + [
            (None, "lbcdn; fwd=stale; stored")] + [
            (str(i), f"lbcdn; hit; ttl={5 - i}") for i in range(1, 3)]
        assert origin.hits["/errors/404.html"] == 1
        page = await get(port, "/errors/404.html")
        assert page.status == 200 and cc(page).startswith("lbcdn; hit")
        # requests collapsed on the error's fetch get the page too
        origin.set("/slow-missing", Answer(404, [], b"origin's own 404", delay_s=0.3))
        answers = await asyncio.gather(*(get(port, "/slow-missing") for _ in range(20)))
        assert {(r.status, r.body) for r in answers} == {(410, b"<h1>not here</h1>")}
        assert origin.hits["/slow-missing"] == 1


async def test_a_304_updates_stored_fields_but_not_those_the_body_depends_on(
        origin: Origin) -> None:
    """RFC 9111 3.2 / 4.3.4: after a 304 the stored response carries the 304's fields
    (new ones added, others replaced), except Content-Length, Content-Encoding, Content-Type
    and Vary: the stored body is what it was, and so is how it is described and selected."""
    def answer(method: str, headers: list[tuple[str, str]]) -> Answer:
        if dict((n.lower(), v) for n, v in headers).get("if-none-match") == '"v1"':
            return Answer(304, [("ETag", '"v1"'), ("Cache-Control", "max-age=10"),
                                ("Content-Type", "application/json"),
                                ("Content-Encoding", "gzip"), ("Content-Length", "0"),
                                ("Vary", "Cookie"), ("X-Version", "2"), ("X-Added", "yes")])
        return Answer(200, [("ETag", '"v1"'), ("Cache-Control", "max-age=10"),
                            ("Content-Type", "image/png"), ("Vary", "Accept"),
                            ("X-Version", "1")], b"body")
    origin.set("/r", answer)
    async for d, port, clock in started(cdn_config(origin.port)):
        await get(port, "/r")
        clock.now += 20
        for expected_cache in ("RefreshHit from lbcdn", "Hit from lbcdn"):
            r = await get(port, "/r")
            assert r.header("X-Cache") == expected_cache
            assert (r.status, r.body) == (200, b"body")
            assert r.header_all("Content-Length") == ["4"]
            assert r.header("Content-Type") == "image/png"
            assert r.header("Content-Encoding") is None and r.header("Vary") == "Accept"
            assert (r.header("X-Version"), r.header("X-Added")) == ("2", "yes")
        assert origin.hits["/r"] == 2


async def test_extension_methods_listed_in_allowed_methods_reach_the_origin(
        origin: Origin) -> None:
    """A policy may allow extension methods (PROPFIND, REPORT...): they pass through to the
    origin as unsafe requests (a success invalidates the URL); a method it does not allow
    gets 405 with Allow."""
    origin.set("/dav", Answer(headers=[("Cache-Control", "max-age=60")], body=b"v1"))
    config = cdn_config(origin.port, policy={
        "allowed_methods": ["GET", "HEAD", "PROPFIND", "REPORT"]})
    async for d, port, clock in started(config):
        assert (await get(port, "/dav")).body == b"v1"
        origin.set("/dav", Answer(207, [], b"<multistatus/>"))
        r = await get(port, "/dav", method="PROPFIND")
        assert (r.status, r.body) == (207, b"<multistatus/>")
        assert origin.requests[-1][0].startswith("PROPFIND /dav ")
        origin.set("/dav", Answer(headers=[("Cache-Control", "max-age=60")], body=b"v2"))
        assert (await get(port, "/dav")).body == b"v2"   # the PROPFIND invalidated it
        refused = await get(port, "/dav", method="SEARCH")
        assert refused.status == 405
        assert refused.header("Allow") == "GET, HEAD, PROPFIND, REPORT"
