"""Path and Host rewrites of a forward: strip and replace a prefix, regex with ALB `$N`
groups, Host without its port, literal backslashes, and a leading `/` kept."""

from __future__ import annotations

from lbcdn.routing.config import RewriteConfig
from lbcdn.routing.rewrite import Rewriter, replacement_problem


def test_strip_prefix_keeps_a_leading_slash() -> None:
    r = Rewriter(RewriteConfig(path_prefix="/api"))
    assert r.path(b"/api/users") == b"/users"
    assert r.path(b"/api") == b"/"
    assert r.path(b"/other/api") == b"/other/api"   # not a prefix: unchanged


def test_replace_prefix() -> None:
    r = Rewriter(RewriteConfig(path_prefix="/v1/", prefix_replacement="/v2/"))
    assert r.path(b"/v1/x") == b"/v2/x"


def test_regex_with_groups_after_the_prefix() -> None:
    r = Rewriter(RewriteConfig(path_prefix="/shop/", prefix_replacement="/",
                               path_regex=r"^/item/([0-9]+)/(\w+)$",
                               path_replacement="/items/$2/$1"))
    assert r.path(b"/shop/item/42/red") == b"/items/red/42"
    assert r.path(b"/shop/cart") == b"/cart"


def test_only_the_first_match_is_replaced_and_backslashes_are_literal() -> None:
    r = Rewriter(RewriteConfig(path_regex="a", path_replacement="\\n"))
    assert r.path(b"/aa") == b"/\\na"


def test_host_rewrite_drops_the_port_and_keeps_ipv6_brackets() -> None:
    r = Rewriter(RewriteConfig(host_regex=r"^(\w+)\.old\.com$", host_replacement="$1.new.com"))
    assert r.host(b"shop.old.com:8080") == b"shop.new.com"
    assert r.host(b"other.com") == b"other.com"
    fixed = Rewriter(RewriteConfig(host_regex=".*", host_replacement="internal"))
    assert fixed.host(b"[::1]:80") == b"internal"
    assert Rewriter(RewriteConfig(path_prefix="/x")).host(b"a.com:1") == b"a.com:1"


def test_replacement_problem_names_a_missing_group() -> None:
    assert replacement_problem("/$1", 1) is None
    assert replacement_problem("/$2", 1) == "$2 refers to a group the regex does not have (1)"
