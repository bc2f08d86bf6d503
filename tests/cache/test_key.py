"""Cache keys per policy and Vary variant keys."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lbcdn.cache.config import CachePolicyConfig, QueryStringsConfig
from lbcdn.cache.key import KeyBuilder, header_value, normalize_query, variant_key

P = CachePolicyConfig()


def h(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in pairs]


@pytest.mark.parametrize("behavior, names, query, expected", [
    ("none", [], b"b=2&a=1", b""),
    ("all", [], b"b=2&a=1&a=0", b"a=0&a=1&b=2"),
    ("all", [], b"&&x&", b"x"),
    ("allow", ["a"], b"b=2&a=1&A=3", b"a=1"),
    ("all_except", ["utm"], b"utm=x&z=1&b", b"b&z=1"),
    ("all", [], None, b""),
])
def test_normalize_query(behavior: str, names: list[str], query: bytes | None,
                         expected: bytes) -> None:
    assert normalize_query(query, behavior, frozenset(n.encode() for n in names)) == expected


def test_primary_key_shape() -> None:
    kb = KeyBuilder(P)
    a = kb.primary(b"GET", b"Example.COM:8080", b"/x", b"q=1", [])
    assert a == kb.primary(b"HEAD", b"example.com.", b"/x", b"q=2", [])  # query not kept
    assert a != kb.primary(b"GET", b"example.com", b"/X", None, [])     # path case-sensitive
    assert a != kb.primary(b"OPTIONS", b"example.com", b"/x", None, [])
    assert a != kb.primary(b"GET", b"other.com", b"/x", None, [])


def test_headers_and_cookies_in_key() -> None:
    policy = replace(P, headers=("Accept-Language", "X-Device"), cookies=("session",),
                     query_strings=QueryStringsConfig("allow", ("v",)))
    kb = KeyBuilder(policy)

    def key(*pairs: tuple[str, str], query: bytes | None = b"v=1") -> bytes:
        return kb.primary(b"GET", b"h", b"/", query, h(*pairs))
    base = key(("Accept-Language", "EN, fr"), ("Cookie", "session=abc; other=1"))
    assert base == key(("accept-language", "en,fr"), ("Cookie", "other=2; session=abc"))
    assert base != key(("Accept-Language", "de"), ("Cookie", "session=abc"))
    assert base != key(("Accept-Language", "en,fr"), ("Cookie", "session=xyz"))
    assert key() != key(("X-Device", ""))   # absent differs from empty
    assert key(query=b"v=1&x=2") == key(query=b"x=3&v=1")
    assert key(query=b"v=1") != key(query=b"v=2")


def test_kept_query() -> None:
    kb = KeyBuilder(replace(P, query_strings=QueryStringsConfig("all_except", ("utm",))))
    assert kb.kept_query(b"utm=1&b=2&a=1") == b"a=1&b=2"
    assert kb.kept_query(b"utm=1") is None


def test_variant_key() -> None:
    assert variant_key((), []) == b""
    assert variant_key((b"*",), []) is None
    a = variant_key((b"accept-language", b"x-a"), h(("Accept-Language", "en"), ("X-A", "1")))
    assert a == variant_key((b"x-a", b"accept-language"),
                            h(("X-A", "1"), ("accept-language", "EN")))
    assert a != variant_key((b"accept-language", b"x-a"), h(("Accept-Language", "en")))
    # Custom fields are case-sensitive; lists are whitespace-normalized.
    assert variant_key((b"x-a",), h(("X-A", "a"))) != variant_key((b"x-a",), h(("X-A", "A")))
    assert variant_key((b"x-a",), h(("X-A", "a , b"))) == \
        variant_key((b"x-a",), h(("X-A", "a"), ("X-A", "b")))


@pytest.mark.parametrize("value, coding", [
    ("gzip, deflate, br", b"br"),
    ("gzip, deflate", b"gzip"),
    ("br;q=0.5, gzip", b"gzip"),
    ("identity", b"identity"),
    ("*", b"br"),
])
def test_accept_encoding_normalized_to_the_coding_chosen(value: str, coding: bytes) -> None:
    assert header_value(h(("Accept-Encoding", value)), b"accept-encoding") == coding


@pytest.mark.parametrize("behavior,names,kept", [
    ("all", (), b"a=1&b=2"), ("all_except", ("b",), b"a=1"), ("allow", ("a", "Expires"), b"a=1"),
    ("none", (), None)])
def test_never_keyed_names_leave_the_key_whatever_the_policy(
        behavior: str, names: tuple[str, ...], kept: bytes | None) -> None:
    """A behavior with trusted key groups: CloudFront's signing parameters are not keyed."""
    from lbcdn.cache.signedurl import QUERY_NAMES
    policy = replace(P, query_strings=QueryStringsConfig(behavior, names))  # type: ignore[arg-type]
    kb = KeyBuilder(policy, QUERY_NAMES)
    query = b"b=2&Expires=9&a=1&Signature=s&Key-Pair-Id=K&Policy=p"
    assert kb.kept_query(query) == kept
