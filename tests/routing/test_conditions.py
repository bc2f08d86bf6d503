"""Route conditions beyond Host and path: ALB wildcards and case rules for headers and query
strings, exact methods, CIDR ranges v4/v6, and X-Forwarded-For hops; and their use by the
router (all must hold, first route wins, a config without them never builds facts)."""

from __future__ import annotations

import re

import pytest

from lbcdn.routing import Router
from lbcdn.routing.conditions import (Conditions, RequestFacts, glob_source, parse_ip,
                                      source_address)
from lbcdn.routing.config import (FixedResponseAction, ForwardAction, HeaderCondition,
                                  MatchConfig, QueryCondition, RouteConfig)

DEFAULT = RouteConfig(name="default", action=FixedResponseAction(status=404))


def facts(method: bytes = b"GET", headers: list[tuple[bytes, bytes]] | None = None,
          query: bytes | None = None, client: bytes = b"192.0.2.1",
          xff: list[bytes] | None = None, hops: int = 0) -> RequestFacts:
    return RequestFacts(method, headers or [], query, client, xff, hops)


def holds(match: MatchConfig, f: RequestFacts) -> bool:
    cond = Conditions.compile(match)
    assert cond is not None
    return cond.holds(f)


def header(name: str, *values: str) -> MatchConfig:
    return MatchConfig(http_headers=(HeaderCondition(name=name, values=values),))


@pytest.mark.parametrize("pattern, text, ok", [
    ("abc", b"abc", True), ("abc", b"abcd", False),
    ("a*c", b"ac", True), ("a*c", b"a/b/c", True), ("a*c", b"ab", False),
    ("a?c", b"abc", True), ("a?c", b"ac", False), ("a?c", b"abbc", False),
    ("a\\*c", b"a*c", True), ("a\\*c", b"abc", False),
    ("a\\?c", b"a?c", True), ("a\\?c", b"abc", False),
    ("a.c", b"abc", False),      # regex characters are literal
    ("(x)+", b"(x)+", True),
])
def test_glob(pattern: str, text: bytes, ok: bool) -> None:
    assert (re.fullmatch(glob_source(pattern), text, re.DOTALL) is not None) is ok


def test_header_name_and_value_are_case_insensitive() -> None:
    m = header("X-Canary", "Beta-*")
    assert holds(m, facts(headers=[(b"x-CANARY", b"beta-7")]))
    assert holds(m, facts(headers=[(b"X-Canary", b"BETA-")]))
    assert not holds(m, facts(headers=[(b"X-Canary", b"alpha")]))


def test_header_missing_never_matches_even_a_star() -> None:
    assert not holds(header("X-A", "*"), facts(headers=[(b"X-B", b"1")]))
    assert holds(header("X-A", "*"), facts(headers=[(b"X-A", b"")]))


def test_header_any_value_and_any_repeat_matches() -> None:
    m = header("X-A", "one", "two")
    assert holds(m, facts(headers=[(b"X-A", b"two")]))
    assert holds(m, facts(headers=[(b"X-A", b"zero"), (b"x-a", b"one \t")]))  # trailing OWS
    assert not holds(m, facts(headers=[(b"X-A", b"three")]))


def test_every_header_condition_must_hold() -> None:
    m = MatchConfig(http_headers=(HeaderCondition("X-A", ("1",)), HeaderCondition("X-B", ("2",))))
    assert holds(m, facts(headers=[(b"X-A", b"1"), (b"X-B", b"2")]))
    assert not holds(m, facts(headers=[(b"X-A", b"1")]))


def test_query_pairs_wildcards_case_and_decoding() -> None:
    m = MatchConfig(query_string=(QueryCondition(key="Ver*", value="b?"),))
    assert holds(m, facts(query=b"x=1&version=B2"))
    assert not holds(m, facts(query=b"version=b22"))
    assert not holds(m, facts(query=None))
    spaced = MatchConfig(query_string=(QueryCondition(key="q", value="a b"),))
    assert holds(spaced, facts(query=b"q=a%20b"))
    assert not holds(spaced, facts(query=b"q=a+b"))     # `+` is not a space (as ALB)


def test_query_without_key_matches_any_parameter_and_any_pair_is_enough() -> None:
    m = MatchConfig(query_string=(QueryCondition(value="yes"), QueryCondition(key="k", value="")))
    assert holds(m, facts(query=b"a=1&b=YES"))
    assert holds(m, facts(query=b"k"))      # no `=`: the empty value
    assert not holds(m, facts(query=b"a=1&k=2"))


def test_method_is_exact_and_case_sensitive() -> None:
    m = MatchConfig(methods=("GET", "POST"))
    assert holds(m, facts(method=b"POST"))
    assert not holds(m, facts(method=b"PUT"))
    assert not holds(m, facts(method=b"get"))


@pytest.mark.parametrize("cidr, client, ok", [
    ("10.0.0.0/8", b"10.1.2.3", True),
    ("10.0.0.0/8", b"11.0.0.1", False),
    ("192.0.2.7/32", b"192.0.2.7", True),
    ("192.0.2.7/32", b"192.0.2.8", False),
    ("10.0.0.0/8", b"::ffff:10.9.9.9", True),     # IPv4-mapped IPv6 is the IPv4 address
    ("2001:db8::/32", b"2001:db8:1::5", True),
    ("2001:db8::/32", b"2001:db9::5", False),
    ("::/0", b"10.0.0.1", False),                  # families never mix
    ("0.0.0.0/0", b"::1", False),
    ("0.0.0.0/0", b"not-an-ip", False),
])
def test_source_ip_ranges(cidr: str, client: bytes, ok: bool) -> None:
    assert holds(MatchConfig(source_ips=(cidr,)), facts(client=client)) is ok


def test_source_ip_any_range_may_match() -> None:
    m = MatchConfig(source_ips=("10.0.0.0/8", "2001:db8::/32"))
    assert holds(m, facts(client=b"2001:db8::1"))
    assert holds(m, facts(client=b"10.0.0.1"))


def test_xff_hops_pick_the_entry_the_farthest_trusted_proxy_added() -> None:
    xff = [b"203.0.113.9, 10.0.0.5", b"198.51.100.2"]
    # one trusted proxy: it appended the address it saw last
    assert source_address(b"127.0.0.1", xff, 1) == parse_ip(b"198.51.100.2")
    assert source_address(b"127.0.0.1", xff, 2) == parse_ip(b"10.0.0.5")
    assert source_address(b"127.0.0.1", xff, 3) == parse_ip(b"203.0.113.9")
    # fewer entries than trusted proxies: the request did not come through them
    assert source_address(b"127.0.0.1", xff, 4) is None
    assert source_address(b"127.0.0.1", None, 1) is None
    # no trusted proxies: the peer, whatever X-Forwarded-For says
    assert source_address(b"127.0.0.1", xff, 0) == parse_ip(b"127.0.0.1")


def test_xff_spoofing_behind_a_trusted_proxy_does_not_help() -> None:
    m = MatchConfig(source_ips=("10.0.0.0/8",))
    # the client sent "X-Forwarded-For: 10.0.0.1" itself; the proxy appended its real address
    spoofed = facts(client=b"127.0.0.1", xff=[b"10.0.0.1, 203.0.113.9"], hops=1)
    assert not holds(m, spoofed)
    assert holds(m, facts(client=b"127.0.0.1", xff=[b"203.0.113.9, 10.2.3.4"], hops=1))
    assert not holds(m, facts(client=b"10.0.0.1", xff=None, hops=1))


def test_all_conditions_must_hold() -> None:
    m = MatchConfig(methods=("GET",), source_ips=("10.0.0.0/8",),
                    http_headers=(HeaderCondition("X-A", ("1",)),),
                    query_string=(QueryCondition(key="k", value="v"),))
    good = dict(method=b"GET", client=b"10.0.0.1", headers=[(b"X-A", b"1")], query=b"k=v")
    assert holds(m, facts(**good))  # type: ignore[arg-type]
    for key, bad in (("method", b"POST"), ("client", b"11.0.0.1"),
                     ("headers", [(b"X-A", b"2")]), ("query", b"k=w")):
        assert not holds(m, facts(**{**good, key: bad})), key  # type: ignore[arg-type]


def test_host_and_path_only_routes_compile_to_no_conditions() -> None:
    assert Conditions.compile(MatchConfig(hosts=("a.com",), path_prefix="/x")) is None
    assert not Router([RouteConfig("r", ForwardAction(pool="p"))], DEFAULT).conditional


def route(name: str, match: MatchConfig) -> RouteConfig:
    return RouteConfig(name=name, action=ForwardAction(pool=name), match=match)


def test_router_first_route_whose_conditions_hold_wins() -> None:
    r = Router([route("canary", header("X-Canary", "yes")),
                route("posts", MatchConfig(path_prefix="/api", methods=("POST",))),
                route("api", MatchConfig(path_prefix="/api")),
                route("all", MatchConfig())], DEFAULT)
    assert r.conditional
    f = facts(headers=[(b"X-Canary", b"YES")])
    assert r.match(b"h", b"/api", f).name == "canary"
    assert r.match(b"h", b"/api", facts(method=b"POST")).name == "posts"
    assert r.match(b"h", b"/api", facts()).name == "api"
    assert r.match(b"h", b"/", facts()).name == "all"
    # without the request's facts a conditional route never matches
    assert r.match(b"h", b"/api").name == "api"


def test_a_conditional_catch_all_does_not_hide_later_routes() -> None:
    # a route without host or path conditions ends the candidate list only when it has no
    # other conditions either
    r = Router([route("get", MatchConfig(methods=("GET",))), route("rest", MatchConfig())],
               DEFAULT)
    assert r.match(b"h", b"/", facts(method=b"GET")).name == "get"
    assert r.match(b"h", b"/", facts(method=b"PUT")).name == "rest"
