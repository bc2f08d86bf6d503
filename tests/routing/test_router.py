"""Router: first match in order, host forms (exact, wildcard, case, port, trailing dot), path prefix
and CloudFront patterns, combined conditions, and the host-candidate cache."""

from __future__ import annotations

import time

import pytest

from lbcdn.routing.config import FixedResponseAction, ForwardAction, MatchConfig, RouteConfig
from lbcdn.routing import Router
from lbcdn.routing import router as router_mod
from lbcdn.routing.router import compile_path_pattern, normalize_host

DEFAULT = RouteConfig(name="default", action=FixedResponseAction(status=404))


def route(name: str, *hosts: str, prefix: str | None = None, path: str | None = None
          ) -> RouteConfig:
    return RouteConfig(name=name, action=ForwardAction(pool=name),
                       match=MatchConfig(hosts=hosts, path_prefix=prefix, path=path))


def name_of(r: Router, host: bytes | str, path: bytes | str) -> str:
    return r.match(host, path).name


def test_no_routes_gives_default() -> None:
    assert Router([], DEFAULT).match(b"example.com", b"/") is DEFAULT


def test_first_match_wins_in_order() -> None:
    r = Router([route("api", prefix="/api"), route("all"), route("never", prefix="/api")],
               DEFAULT)
    assert name_of(r, b"x", b"/api/v1") == "api"
    assert name_of(r, b"x", b"/other") == "all"


def test_later_route_reached_when_earlier_fails_and_default_when_none() -> None:
    r = Router([route("a", "a.com"), route("b", "b.com")], DEFAULT)
    assert name_of(r, b"b.com", b"/") == "b"
    assert r.match(b"c.com", b"/") is DEFAULT


def test_exact_host_is_exact() -> None:
    r = Router([route("ex", "example.com")], DEFAULT)
    assert name_of(r, b"example.com", b"/") == "ex"
    assert name_of(r, b"www.example.com", b"/") == "default"
    assert name_of(r, b"example.co", b"/") == "default"
    assert name_of(r, b"xexample.com", b"/") == "default"


def test_wildcard_matches_one_or_more_labels_but_not_the_apex() -> None:
    r = Router([route("wild", "*.example.com")], DEFAULT)
    assert name_of(r, b"a.example.com", b"/") == "wild"
    assert name_of(r, b"a.b.example.com", b"/") == "wild"
    assert name_of(r, b"example.com", b"/") == "default"
    assert name_of(r, b"badexample.com", b"/") == "default"
    assert name_of(r, b".example.com", b"/") == "default"
    assert name_of(r, b"a.example.com.evil", b"/") == "default"


def test_host_case_port_and_trailing_dot_ignored() -> None:
    r = Router([route("ex", "example.com"), route("v6", "[::1]"), route("w", "*.w.org")],
               DEFAULT)
    for host in (b"EXAMPLE.com", b"example.com:8080", b"Example.Com.:443", b"example.com.",
                 "example.com:80"):
        assert name_of(r, host, b"/") == "ex", host
    assert name_of(r, b"[::1]:80", b"/") == "v6"
    assert name_of(r, b"[::1]", b"/") == "v6"
    assert name_of(r, b"A.W.ORG:81", b"/") == "w"


def test_normalize_host_forms() -> None:
    assert normalize_host(b"Example.COM:8080") == b"example.com"
    assert normalize_host(b"[::1]:80") == b"[::1]"
    assert normalize_host(b"example.com.") == b"example.com"
    assert normalize_host(b"::1") == b"::1"  # bare IPv6: colons are the address, not a port
    assert normalize_host(b"") == b""


def test_config_hosts_are_normalized_too() -> None:
    r = Router([route("ex", "Example.com.")], DEFAULT)
    assert name_of(r, b"example.com", b"/") == "ex"


@pytest.mark.parametrize("bad", ["*", "a.*.com", "*example.com", "ex?mple.com", "*.*.com", ""])
def test_unsupported_host_patterns_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="host"):
        Router([route("bad", bad)], DEFAULT)


def test_route_without_hosts_matches_missing_host() -> None:
    r = Router([route("h", "example.com"), route("any")], DEFAULT)
    assert name_of(r, b"", b"/") == "any"


def test_several_hosts_on_one_route() -> None:
    r = Router([route("multi", "a.com", "*.b.com")], DEFAULT)
    assert name_of(r, b"a.com", b"/") == "multi"
    assert name_of(r, b"x.b.com", b"/") == "multi"
    assert name_of(r, b"b.com", b"/") == "default"


def test_path_prefix() -> None:
    r = Router([route("img", prefix="/img/")], DEFAULT)
    assert name_of(r, b"h", b"/img/a.png") == "img"
    assert name_of(r, b"h", b"/img/") == "img"
    assert name_of(r, b"h", b"/img") == "default"
    assert name_of(r, b"h", b"/IMG/a.png") == "default"  # paths are case-sensitive
    assert name_of(r, "h", "/img/a.png") == "img"


@pytest.mark.parametrize(("pattern", "path", "hit"), [
    ("/images/*", "/images/a/b/c.jpg", True),
    ("/images/*", "/images/", True),
    ("/images/*", "/images", False),
    ("*.jpg", "/a/b.jpg", True),
    ("*.jpg", "/a/b.jpgx", False),  # the pattern covers the whole path
    ("/a/*.jpg", "/a/b/c.jpg", True),  # `*` crosses `/`
    ("/file?.txt", "/file1.txt", True),
    ("/file?.txt", "/file.txt", False),
    ("/file?.txt", "/file12.txt", False),
    ("/a+b(c).txt", "/a+b(c).txt", True),  # regex metacharacters are literal
    ("/a+b(c).txt", "/aab(c).txt", False),
    ("/a+b(c).txt", "/a+bc.txt", False),
    ("/x.y", "/xzy", False),
    ("/[ab]^$|\\", "/[ab]^$|\\", True),
    ("/[ab]", "/a", False),
    ("/a*b*c", "/abc", True),
    ("/a*b*c", "/a-b-b-c", True),
    ("/a*b*c", "/a-c-b", False),
    ("/a**", "/a", True),
    ("*", "/anything", True),
    ("/é*", "/é/x", True),  # literal non-ASCII compared as UTF-8 bytes
])
def test_path_patterns(pattern: str, path: str, hit: bool) -> None:
    r = Router([route("p", path=pattern)], DEFAULT)
    assert (name_of(r, b"h", path.encode()) == "p") is hit


def test_pattern_does_not_backtrack_catastrophically() -> None:
    # One `.*` per star takes seconds on this path (O(n^4)); the atomic form takes microseconds.
    matcher = compile_path_pattern("/*a*a*a*a*b").fullmatch
    start = time.perf_counter()
    assert matcher(b"/" + b"a" * 250) is None
    assert matcher(b"/" + b"a" * 250 + b"b") is not None
    assert time.perf_counter() - start < 0.5


def test_host_and_path_conditions_must_all_hold() -> None:
    r = Router([
        route("both", "api.example.com", prefix="/v1/", path="/v1/*.json"),
        route("host-only", "api.example.com"),
    ], DEFAULT)
    assert name_of(r, b"api.example.com", b"/v1/x.json") == "both"
    assert name_of(r, b"api.example.com", b"/v1/x.xml") == "host-only"
    assert name_of(r, b"api.example.com", b"/v2/x.json") == "host-only"
    assert name_of(r, b"www.example.com", b"/v1/x.json") == "default"


def test_order_respected_across_exact_wildcard_and_any_host_routes() -> None:
    r = Router([
        route("wild-api", "*.example.com", prefix="/api"),
        route("exact", "www.example.com"),
        route("any-static", prefix="/static"),
        route("wild", "*.example.com"),
    ], DEFAULT)
    assert name_of(r, b"www.example.com", b"/api/x") == "wild-api"
    assert name_of(r, b"www.example.com", b"/static/x") == "exact"
    assert name_of(r, b"img.example.com", b"/static/x") == "any-static"
    assert name_of(r, b"img.example.com", b"/x") == "wild"
    assert name_of(r, b"other.org", b"/static/x") == "any-static"
    assert name_of(r, b"other.org", b"/x") == "default"


def test_host_cache_is_bounded_and_stays_correct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router_mod, "HOST_CACHE_MAX", 4)
    r = Router([route("ex", "example.com")], DEFAULT)
    for i in range(10):
        assert name_of(r, f"h{i}.org".encode(), b"/") == "default"
        assert len(r._host_cache) <= 4
    assert name_of(r, b"example.com", b"/") == "ex"
    assert name_of(r, b"example.com", b"/") == "ex"  # served from the cache
