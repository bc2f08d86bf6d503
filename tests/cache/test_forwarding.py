"""What a cache behavior forwards to its origin: the cache key plus the origin request policy,
the edge's own rules for Accept-Encoding, conditionals, Range and request bodies."""

from __future__ import annotations

import pytest

from lbcdn.cache.config import MANAGED_ORIGIN_REQUEST_POLICIES, CachePolicyConfig, \
    ForwardedValuesConfig, OriginRequestPolicyConfig, QueryStringsConfig
from lbcdn.cache.forwarding import Filter, Forwarding, keeps, union, without

# What attackers send to make an origin build a poisoned answer (issue 13), and a few more.
POISON = ["X-Forwarded-Host", "X-Host", "X-Original-URL", "X-Rewrite-URL", "X-Forwarded-Server",
          "X-Forwarded-Scheme", "Forwarded", "X-HTTP-Method-Override", "User-Agent",
          "Accept-Language", "Origin", "Referer", "Authorization", "Cache-Control", "Pragma"]


def fwd(*pairs: tuple[str, str]) -> list[bytes]:
    out: list[bytes] = []
    for n, v in pairs:
        out += (n.encode(), b": ", v.encode(), b"\r\n")
    return out


def names(lines: list[bytes]) -> list[str]:
    return [lines[i].decode() for i in range(0, len(lines), 4)]


def sent(lines: list[bytes]) -> dict[str, str]:
    return {lines[i].decode().lower(): lines[i + 2].decode() for i in range(0, len(lines), 4)}


def orp(headers: tuple[str, ...] | str = (), cookies: tuple[str, ...] | str = (),
        query: tuple[str, ...] | str = ()) -> OriginRequestPolicyConfig:
    def values(v: tuple[str, ...] | str) -> ForwardedValuesConfig:
        if isinstance(v, str):
            return ForwardedValuesConfig("all")
        return ForwardedValuesConfig("allow", v) if v else ForwardedValuesConfig()
    return OriginRequestPolicyConfig(values(headers), values(cookies), values(query))


def test_filter_algebra() -> None:
    only_a: Filter = (False, frozenset({b"a"}))
    only_b: Filter = (False, frozenset({b"b"}))
    all_but_a: Filter = (True, frozenset({b"a"}))
    all_but_ab: Filter = (True, frozenset({b"a", b"b"}))
    assert union(only_a, only_b) == (False, frozenset({b"a", b"b"}))
    assert union(only_a, all_but_ab) == (True, frozenset({b"b"}))
    assert union(all_but_ab, only_a) == (True, frozenset({b"b"}))
    assert union(all_but_a, all_but_ab) == all_but_a
    assert without(only_a, frozenset({b"a"})) == (False, frozenset())
    assert without(all_but_a, frozenset({b"b"})) == all_but_ab
    assert keeps(all_but_a, b"z") and not keeps(all_but_a, b"a")
    assert keeps(only_a, b"a") and not keeps(only_a, b"z")


@pytest.mark.parametrize("header", POISON)
def test_by_default_no_viewer_header_outside_the_key_reaches_the_origin(header: str) -> None:
    f = Forwarding(CachePolicyConfig(), None)
    lines = fwd((header, "evil.example"), ("Accept", "*/*"))
    assert f.lines(lines, passthrough=False) == []
    assert f.lines(lines, passthrough=True) == []


def test_keyed_and_listed_headers_are_forwarded_as_sent() -> None:
    f = Forwarding(CachePolicyConfig(headers=("x-device",)), orp(headers=("User-Agent",)))
    lines = fwd(("X-Device", "phone"), ("user-agent", "curl/8"), ("X-Forwarded-Host", "evil"))
    assert f.lines(lines, passthrough=False) == fwd(("X-Device", "phone"),
                                                    ("user-agent", "curl/8"))


def test_all_viewer_forwards_everything_but_what_the_cache_answers_itself() -> None:
    f = Forwarding(CachePolicyConfig(), MANAGED_ORIGIN_REQUEST_POLICIES["AllViewer"])
    lines = fwd(("X-Forwarded-Host", "a"), ("Authorization", "Basic x"), ("Range", "bytes=0-1"),
                ("If-None-Match", '"e"'), ("Cookie", "a=1; b=2"))
    assert names(f.lines(lines, passthrough=False)) == ["X-Forwarded-Host", "Authorization",
                                                         "Cookie"]
    assert names(f.lines(lines, passthrough=True)) == ["X-Forwarded-Host", "Authorization",
                                                        "Range", "If-None-Match", "Cookie"]
    all_but = OriginRequestPolicyConfig(ForwardedValuesConfig("all_except", ("X-Secret",)))
    f = Forwarding(CachePolicyConfig(headers=("X-Secret",)), all_but)
    # the key's X-Secret is forwarded even though the policy lists it as an exception
    assert names(f.lines(fwd(("X-Secret", "1"), ("X-B", "2")), passthrough=False)) == [
        "X-Secret", "X-B"]
    f = Forwarding(CachePolicyConfig(), all_but)
    assert names(f.lines(fwd(("X-Secret", "1"), ("X-B", "2")), passthrough=False)) == ["X-B"]


def test_conditionals_and_range_only_on_a_pass_through() -> None:
    f = Forwarding(CachePolicyConfig(), None)
    lines = fwd(("If-Match", '"e"'), ("If-Unmodified-Since", "x"), ("Range", "bytes=0-1"),
                ("If-None-Match", '"e"'), ("If-Modified-Since", "x"), ("If-Range", '"e"'))
    assert f.lines(lines, passthrough=False) == []
    assert f.lines(lines, passthrough=True) == lines


def test_body_fields_only_on_a_pass_through_and_max_forwards_always() -> None:
    f = Forwarding(CachePolicyConfig(), None)
    lines = fwd(("Content-Length", "3"), ("Content-Type", "text/plain"),
                ("Content-Encoding", "gzip"), ("Expect", "100-continue"), ("Max-Forwards", "3"))
    assert f.lines(lines, passthrough=True) == lines
    # a GET's Content-Type is no body's description: an origin could echo it into a cached page
    assert f.lines(lines, passthrough=False) == fwd(("Max-Forwards", "3"))


def test_cookies_keyed_listed_all_and_all_but() -> None:
    lines = fwd(("Cookie", "session=9; lang=fr"), ("Cookie", "theme=dark;flag"))
    assert Forwarding(CachePolicyConfig(), None).lines(lines, passthrough=False) == []
    keyed = Forwarding(CachePolicyConfig(cookies=("lang",)), None)
    assert keyed.lines(lines, passthrough=False) == fwd(("Cookie", "lang=fr"))
    both = Forwarding(CachePolicyConfig(cookies=("lang",)), orp(cookies=("theme",)))
    assert sent(both.lines(lines, passthrough=True))["cookie"] == "lang=fr; theme=dark"
    every = Forwarding(CachePolicyConfig(), orp(cookies="all"))
    assert sent(every.lines(lines, passthrough=False))["cookie"] == \
        "session=9; lang=fr; theme=dark; flag"
    all_but = OriginRequestPolicyConfig(cookies=ForwardedValuesConfig("all_except",
                                                                      ("session",)))
    assert sent(Forwarding(CachePolicyConfig(), all_but).lines(
        lines, passthrough=False))["cookie"] == "lang=fr; theme=dark; flag"
    # names are case-sensitive, as in the key
    assert keyed.lines(fwd(("Cookie", "LANG=fr")), passthrough=False) == []
    # a key holding the whole Cookie header: every cookie is forwarded
    whole = Forwarding(CachePolicyConfig(headers=("Cookie",)), None)
    assert sent(whole.lines(lines, passthrough=False))["cookie"] == \
        "session=9; lang=fr; theme=dark; flag"


@pytest.mark.parametrize("accept, compress, expected", [
    ("gzip, deflate, br", True, None),       # the cache compresses: the origin sends identity
    ("gzip, deflate, br", False, "br"),      # what the variant is keyed under
    ("gzip, deflate", False, "gzip"),
    ("deflate", False, None),                 # identity: nothing to ask for
    (None, False, None),
])
def test_accept_encoding_is_the_one_the_cache_keys_on(accept: str | None, compress: bool,
                                                     expected: str | None) -> None:
    for policy in (CachePolicyConfig(compress=compress),
                   CachePolicyConfig(compress=compress, headers=("Accept-Encoding",))):
        f = Forwarding(policy, MANAGED_ORIGIN_REQUEST_POLICIES["AllViewer"])
        lines = fwd(("Accept-Encoding", accept)) if accept is not None else []
        assert sent(f.lines(lines, passthrough=False)).get("accept-encoding") == expected


@pytest.mark.parametrize("key, listed, query, expected", [
    (QueryStringsConfig(), None, b"a=1&utm=2", None),
    (QueryStringsConfig("allow", ("a",)), None, b"utm=2&a=1", b"a=1"),
    (QueryStringsConfig("allow", ("a",)), ("utm",), b"utm=2&a=1&x=3", b"a=1&utm=2"),
    (QueryStringsConfig(), "all", b"b=2&a=1", b"a=1&b=2"),
    (QueryStringsConfig("all_except", ("utm",)), None, b"utm=2&a=1", b"a=1"),
    (QueryStringsConfig("all_except", ("utm", "fbclid")), ("utm",), b"utm=2&fbclid=3&a=1",
     b"a=1&utm=2"),
    (QueryStringsConfig("all"), None, None, None),
])
def test_query_is_the_keyed_and_listed_parameters(
        key: QueryStringsConfig, listed: tuple[str, ...] | str | None, query: bytes | None,
        expected: bytes | None) -> None:
    f = Forwarding(CachePolicyConfig(query_strings=key),
                   orp(query=listed) if listed is not None else None)
    assert f.query_for(query) == expected


def test_signing_parameters_and_cookies_never_reach_the_origin() -> None:
    from lbcdn.cache.config import MANAGED_ORIGIN_REQUEST_POLICIES
    from lbcdn.cache.signedurl import COOKIE_NAMES, QUERY_NAMES
    f = Forwarding(CachePolicyConfig(), MANAGED_ORIGIN_REQUEST_POLICIES["AllViewer"],
                   QUERY_NAMES, COOKIE_NAMES)
    assert f.query_for(b"v=1&Expires=9&Signature=s&Key-Pair-Id=K&Policy=p") == b"v=1"
    lines = fwd(("Cookie", "a=1; CloudFront-Policy=p; CloudFront-Signature=s; "
                           "CloudFront-Key-Pair-Id=K; CloudFront-Expires=9"))
    assert f.lines(lines, passthrough=False) == fwd(("Cookie", "a=1"))
