"""The decisions about an origin's answer to a cache fetch (lbcdn.cache.miss), on a fake clock."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from lbcdn.cache.config import CachePolicyConfig
from lbcdn.cache.entry import CachedResponse, build
from lbcdn.cache.miss import Revalidated, fill_head, refreshed, revalidated
from lbcdn.cache.policy import RequestDirectives

T0 = 1_700_000_000.0
POLICY = CachePolicyConfig(stale_if_error_s=300)
GZIP = CachePolicyConfig(compress=True)
PLAIN = RequestDirectives()


def h(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in pairs]


def entry(etag: str = '"v1"') -> CachedResponse:
    headers = h(("Date", formatdate(T0, usegmt=True)), ("Cache-Control", "max-age=60"),
                ("ETag", etag), ("Content-Type", "text/html"), ("Content-Length", "5"))
    return build(key=b"k", variant=b"", host=b"example.com", path=b"/p", query=b"",
                 status=200, headers=headers, chunks=(b"hello",), request_time=T0,
                 response_time=T0, policy=POLICY, now=T0)


@pytest.mark.parametrize(("status", "after_s", "expected"), [
    (304, 100, Revalidated.NOT_MODIFIED),
    (503, 100, Revalidated.STALE_ON_ERROR),     # stale 40 s, stale-if-error allows 300
    (503, 1000, Revalidated.MODIFIED),          # past stale-if-error: the error is the answer
    (404, 100, Revalidated.MODIFIED),           # not an origin error: a new response
    (200, 100, Revalidated.MODIFIED),
])
def test_what_a_revalidation_answer_means(status: int, after_s: float,
                                          expected: Revalidated) -> None:
    assert revalidated(entry(), status, PLAIN, T0 + after_s) is expected


def test_a_304_freshens_and_replaces_only_when_its_validators_match() -> None:
    now = T0 + 100
    fresh, replaces = refreshed(entry(), h(("ETag", '"v1"'), ("X-New", "1")), now - 0.1, now,
                                POLICY)
    assert replaces and fresh.response_time == now and (b"X-New", b"1") in fresh.headers
    _, replaces = refreshed(entry(), h(("ETag", '"other"')), now - 0.1, now, POLICY)
    assert not replaces


def test_a_new_response_is_stored_as_get_and_served_without_hop_by_hop_fields() -> None:
    plan = fill_head(b"HEAD", 200, h(("Cache-Control", "max-age=60"), ("Connection", "x-a"),
                                     ("X-A", "1"), ("Content-Type", "text/html")),
                     10, PLAIN, POLICY, [], negotiated=True)
    assert plan.why is None and plan.coding is None and plan.length == 10
    assert [n for n, _ in plan.headers] == [b"Cache-Control", b"Content-Type"]


def test_vary_star_and_no_store_are_not_storable() -> None:
    star = fill_head(b"GET", 200, h(("Cache-Control", "max-age=60"), ("Vary", "*")), None,
                     PLAIN, POLICY, [], negotiated=True)
    assert star.why == "Vary: *" and star.variant is None
    no_store = fill_head(b"GET", 200, h(("Cache-Control", "no-store")), None, PLAIN, POLICY,
                         [], negotiated=True)
    assert no_store.why is not None


def test_compression_follows_the_client_and_a_refresh_stores_the_identity() -> None:
    headers = h(("Cache-Control", "max-age=60"), ("Content-Type", "text/html"))
    accepts = h(("Accept-Encoding", "gzip"))
    plan = fill_head(b"GET", 200, headers, 5000, PLAIN, GZIP, accepts, negotiated=True)
    assert plan.coding == b"gzip" and plan.length is None
    assert (b"Content-Encoding", b"gzip") in plan.headers and b"accept-encoding" in plan.vary
    refresh = fill_head(b"GET", 200, headers, 5000, PLAIN, GZIP, accepts, negotiated=False)
    assert refresh.coding is None and refresh.length == 5000
    assert b"accept-encoding" in refresh.vary   # the identity varies by it too
