"""redirect_location: ALB placeholders, default ports, query handling and loop detection."""

from __future__ import annotations

from lbcdn.routing.config import RedirectAction
from lbcdn.routing import redirect_location


def loc(action: RedirectAction, scheme: str = "http", host: str = "example.com", port: int = 80,
        path: str = "/a/b", query: str = "") -> str | None:
    return redirect_location(action, scheme=scheme, host=host, port=port, path=path, query=query)


def test_http_to_https_keeps_host_path_query_and_drops_default_port() -> None:
    action = RedirectAction(protocol="https", port="443")
    assert loc(action, query="x=1&y=2") == "https://example.com/a/b?x=1&y=2"


def test_protocol_value_is_case_insensitive() -> None:
    assert loc(RedirectAction(protocol="HTTPS", port="443")) == "https://example.com/a/b"


def test_non_default_port_is_kept() -> None:
    assert loc(RedirectAction(protocol="https", port="8443")) == "https://example.com:8443/a/b"
    assert loc(RedirectAction(port="8080")) == "http://example.com:8080/a/b"


def test_port_placeholder_kept_when_not_default_for_new_scheme() -> None:
    # http on 8080 -> https on #{port}: 8080 is not https's default, so it stays.
    assert loc(RedirectAction(protocol="https"), port=8080) == "https://example.com:8080/a/b"


def test_port_placeholder_dropped_when_default() -> None:
    assert loc(RedirectAction(host="new.example.com")) == "http://new.example.com/a/b"


def test_host_header_port_is_dropped() -> None:
    assert loc(RedirectAction(protocol="https", port="443"), host="example.com:8080",
               port=8080) == "https://example.com/a/b"
    assert loc(RedirectAction(protocol="https", port="443"), host="[::1]:80"
               ) == "https://[::1]/a/b"


def test_path_placeholder_has_no_leading_slash() -> None:
    assert loc(RedirectAction(path="/new/#{path}")) == "http://example.com/new/a/b"
    assert loc(RedirectAction(path="/new/#{path}"), path="/") == "http://example.com/new/"


def test_placeholders_in_every_part() -> None:
    action = RedirectAction(host="#{host}.mirror.net", path="/#{protocol}/#{port}/#{path}",
                            query="from=#{host}&#{query}")
    assert (loc(action, host="Ex.com", port=80, path="/p", query="q=1")
            == "http://Ex.com.mirror.net/http/80/p?from=Ex.com&q=1")


def test_values_are_not_expanded_twice() -> None:
    action = RedirectAction(host="other.com")
    assert loc(action, path="/#{host}") == "http://other.com/#{host}"


def test_unknown_placeholder_stays_literal() -> None:
    assert loc(RedirectAction(path="/#{nope}")) == "http://example.com/#{nope}"


def test_query_replaced_or_dropped() -> None:
    assert loc(RedirectAction(host="o.com", query="")) == "http://o.com/a/b"
    assert loc(RedirectAction(host="o.com", query=""), query="x=1") == "http://o.com/a/b"
    assert loc(RedirectAction(host="o.com", query="k=v"), query="x=1") == "http://o.com/a/b?k=v"
    assert loc(RedirectAction(host="o.com")) == "http://o.com/a/b"  # no '?' for empty query


def test_loop_to_the_same_url_returns_none() -> None:
    assert loc(RedirectAction()) is None
    assert loc(RedirectAction(), query="x=1") is None
    # Same URL spelled differently: explicit default port, host in another case.
    assert loc(RedirectAction(protocol="http", port="80", host="EXAMPLE.COM")) is None
    assert loc(RedirectAction(protocol="https", port="443"), scheme="https", port=443) is None


def test_not_a_loop_when_any_part_differs() -> None:
    assert loc(RedirectAction(), port=80, path="/a/b", query="") is None
    assert loc(RedirectAction(path="/#{path}/")) == "http://example.com/a/b/"
    assert loc(RedirectAction(query="x=2"), query="x=1") == "http://example.com/a/b?x=2"
    assert loc(RedirectAction(port="80"), port=8080) == "http://example.com/a/b"
    assert loc(RedirectAction(protocol="https"), scheme="http", port=443
               ) == "https://example.com/a/b"
