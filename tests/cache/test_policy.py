"""RFC 9111 decisions with a fake clock: storability, freshness, age, reuse, stale serving."""

from __future__ import annotations

from dataclasses import dataclass, replace
from email.utils import formatdate

import pytest

from lbcdn.cache.config import CachePolicyConfig
from lbcdn.cache.policy import (ANY_STALENESS, F_AUTH_OK, F_NO_CACHE, F_NO_STALE, F_PURGED,
                                RequestDirectives, Use, corrected_initial_age, current_age,
                                evaluate, freshness_lifetime, is_origin_error, not_storable,
                                parse_request, parse_response, stale_windows, storage_flags,
                                usable_on_error, validators)

NOW = 1_700_000_000.0
P = CachePolicyConfig()


def date(t: float) -> bytes:
    return formatdate(t, usegmt=True).encode()


def hdrs(*pairs: tuple[str, str | bytes]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v if isinstance(v, bytes) else v.encode()) for n, v in pairs]


D = ("Date", date(NOW))
H = replace(P, heuristic_freshness=True)

# (id, status, response headers, request headers, policy, storable?, lifetime, source)
ROWS: list[tuple[str, int, list[tuple[str, str | bytes]], list[tuple[str, str]],
                 CachePolicyConfig, str | None, float | None, str | None]] = [
    ("200 max-age", 200, [D, ("Cache-Control", "max-age=60")], [], P, None, 60, "max-age"),
    ("200 s-maxage wins", 200, [D, ("Cache-Control", "max-age=60, s-maxage=30")], [], P,
     None, 30, "s-maxage"),
    ("max-age beats Expires", 200, [D, ("Cache-Control", "max-age=60"),
                                    ("Expires", date(NOW + 999))], [], P, None, 60, "max-age"),
    ("Expires - Date", 200, [D, ("Expires", date(NOW + 100))], [], P, None, 100, "expires"),
    ("Expires without Date uses response time", 200, [("Expires", date(NOW + 50))], [], P,
     None, 50, "expires"),
    ("Expires in the past", 200, [D, ("Expires", date(NOW - 100))], [], P, None, 0, "expires"),
    ("Expires 0 is expired", 200, [D, ("Expires", "0")], [], P, None, 0, "expires"),
    ("invalid max-age is stale", 200, [D, ("Cache-Control", "max-age=abc")], [], P, None, 0,
     "max-age"),
    ("no freshness: default TTL", 200, [D], [], P, None, 86400, "default"),
    ("Last-Modified: default TTL (CloudFront)", 200, [D, ("Last-Modified", date(NOW - 5))],
     [], replace(P, default_ttl_s=60), None, 60, "default"),
    ("heuristic 10% of LM age", 200, [D, ("Last-Modified", date(NOW - 1000))], [], H, None,
     100, "heuristic"),
    ("heuristic below the default TTL", 200, [D, ("Last-Modified", date(NOW - 5))], [],
     replace(H, default_ttl_s=60), None, 0.5, "heuristic"),
    ("heuristic capped by default TTL", 200, [D, ("Last-Modified", date(NOW - 10 ** 7))], [],
     replace(H, default_ttl_s=60), None, 60, "heuristic"),
    ("heuristic, LM in the future: default", 200, [D, ("Last-Modified", date(NOW + 10))], [],
     H, None, 86400, "default"),
    ("min TTL raises max-age", 200, [D, ("Cache-Control", "max-age=5")], [],
     replace(P, min_ttl_s=30), None, 30, "max-age"),
    ("max TTL lowers max-age", 200, [D, ("Cache-Control", "max-age=5000")], [],
     replace(P, max_ttl_s=100, default_ttl_s=100), None, 100, "max-age"),
    ("max TTL lowers Expires", 200, [D, ("Expires", date(NOW + 5000))], [],
     replace(P, max_ttl_s=100, default_ttl_s=100), None, 100, "expires"),
    ("404 cacheable by default, error TTL", 404, [D], [], P, None, 10, "error-default"),
    ("404 with max-age", 404, [D, ("Cache-Control", "max-age=77")], [], P, None, 77,
     "max-age"),
    ("302 without freshness not stored", 302, [D], [], P, "explicit", None, None),
    ("302 with max-age", 302, [D, ("Cache-Control", "max-age=9")], [], P, None, 9, "max-age"),
    ("302 public: default", 302, [D, ("Cache-Control", "public")], [], P, None, 86400,
     "default"),
    ("307 with Expires", 307, [D, ("Expires", date(NOW + 20))], [], P, None, 20, "expires"),
    ("500 not stored", 500, [D], [], P, "explicit", None, None),
    ("503 with max-age stored", 503, [D, ("Cache-Control", "max-age=5")], [], P, None, 5,
     "max-age"),
    ("no-store", 200, [D, ("Cache-Control", "max-age=60, no-store")], [], P, "no-store",
     None, None),
    ("must-understand overrides no-store", 200,
     [D, ("Cache-Control", "max-age=60, no-store, must-understand")], [], P, None, 60,
     "max-age"),
    ("must-understand unknown status", 299,
     [D, ("Cache-Control", "max-age=60, no-store, must-understand")], [], P, "no-store",
     None, None),
    ("private", 200, [D, ("Cache-Control", "max-age=60, private")], [], P, "private", None,
     None),
    ("qualified private is stored", 200, [D, ("Cache-Control", 'max-age=60, private="x-u"')],
     [], P, None, 60, "max-age"),
    ("request no-store", 200, [D, ("Cache-Control", "max-age=60")],
     [("Cache-Control", "no-store")], P, "request no-store", None, None),
    ("Authorization", 200, [D, ("Cache-Control", "max-age=60")],
     [("Authorization", "Basic x")], P, "Authorization", None, None),
    ("Authorization + public", 200, [D, ("Cache-Control", "max-age=60, public")],
     [("Authorization", "Basic x")], P, None, 60, "max-age"),
    ("Authorization + s-maxage", 200, [D, ("Cache-Control", "s-maxage=6")],
     [("Authorization", "Basic x")], P, None, 6, "s-maxage"),
    ("Authorization + must-revalidate", 200, [D, ("Cache-Control", "must-revalidate")],
     [("Authorization", "Basic x")], P, None, 86400, "default"),
    ("Set-Cookie refused", 200, [D, ("Cache-Control", "max-age=60"), ("Set-Cookie", "a=1")],
     [], P, "Set-Cookie", None, None),
    ("Set-Cookie allowed by policy", 200, [D, ("Cache-Control", "max-age=60"),
                                           ("Set-Cookie", "a=1")], [],
     replace(P, cache_set_cookie=True), None, 60, "max-age"),
    ("Set-Cookie named by no-cache", 200,
     [D, ("Cache-Control", 'max-age=60, no-cache="Set-Cookie"'), ("Set-Cookie", "a=1")], [],
     P, None, 60, "max-age"),
    ("Vary star", 200, [D, ("Cache-Control", "max-age=60"), ("Vary", "*")], [], P,
     "Vary: *", None, None),
    ("206 not stored", 206, [D, ("Cache-Control", "max-age=60")], [], P, "206", None, None),
    ("304 not stored", 304, [D, ("Cache-Control", "max-age=60")], [], P, "304", None, None),
    ("CDN-Cache-Control beats Cache-Control", 200,
     [D, ("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "max-age=600")], [], P,
     None, 600, "max-age"),
    ("CDN-Cache-Control no-store", 200,
     [D, ("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "no-store")], [], P,
     "no-store", None, None),
    ("CDN-Cache-Control ignores Cache-Control no-store", 200,
     [D, ("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=30")], [], P,
     None, 30, "max-age"),
    ("CDN-Cache-Control ignores Expires", 200,
     [D, ("Expires", date(NOW + 5)), ("CDN-Cache-Control", "public")], [], P,
     None, 86400, "default"),
    ("invalid CDN-Cache-Control falls back", 200,
     [D, ("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "Max-Age=600")], [], P,
     None, 60, "max-age"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_storability_and_freshness(row: tuple) -> None:  # type: ignore[type-arg]
    _, status, rh, qh, policy, refused, lifetime, source = row
    meta = parse_response(status, hdrs(*rh))
    why = not_storable(b"GET", parse_request(hdrs(*qh)), meta, policy)
    if refused is None:
        assert why is None
        f = freshness_lifetime(meta, policy, response_time=NOW)
        assert (f.lifetime, f.source) == (lifetime, source)
    else:
        assert why is not None and refused in why


def test_methods() -> None:
    meta = parse_response(200, hdrs(D, ("Cache-Control", "max-age=1")))
    req = RequestDirectives()
    assert not_storable(b"GET", req, meta, P) is None
    assert "HEAD" in (not_storable(b"HEAD", req, meta, P) or "")
    assert not_storable(b"POST", req, meta, P) == "method not cached"
    assert not_storable(b"OPTIONS", req, meta, P) == "method not cached"
    opts = replace(P, allowed_methods=("GET", "HEAD", "OPTIONS"),
                   cached_methods=("GET", "HEAD", "OPTIONS"))
    assert not_storable(b"OPTIONS", req, meta, opts) is None


# -- age: RFC 9111 4.2.3 ----------------------------------------------------------------------

def test_age_calculation() -> None:
    # Sent at t=100, response at t=102 with Date t=99 and Age 5: the response delay (2) is
    # added to the Age (conservative), which beats the apparent age (3).
    assert corrected_initial_age(5, 99.0, 100.0, 102.0) == 7
    # A clock-skewed Date far in the past: apparent age dominates.
    assert corrected_initial_age(0, 50.0, 100.0, 101.0) == 51
    # Date in the future: apparent age is 0, not negative.
    assert corrected_initial_age(0, 200.0, 100.0, 100.5) == 0.5
    # No Date: the response time stands in.
    assert corrected_initial_age(3, None, 100.0, 100.0) == 3
    assert current_age(7.0, 102.0, 150.0) == 55.0
    assert current_age(7.0, 102.0, 100.0) == 7.0  # a clock stepping back never lowers it


@dataclass(frozen=True)
class FakeEntry:
    initial_age: float = 0.0
    response_time: float = NOW
    lifetime: float = 60.0
    flags: int = 0
    swr_s: float = 0.0
    sie_s: float = 0.0
    etag: bytes | None = None
    last_modified_raw: bytes | None = None


R = RequestDirectives()

# (id, entry, request, seconds after storing, expected use)
REUSE = [
    ("fresh", FakeEntry(), R, 30, Use.FRESH),
    ("exactly at lifetime is stale", FakeEntry(), R, 60, Use.REVALIDATE),
    ("initial age counts", FakeEntry(initial_age=50), R, 20, Use.REVALIDATE),
    ("request no-cache", FakeEntry(), RequestDirectives(no_cache=True), 1, Use.REVALIDATE),
    ("response no-cache", FakeEntry(flags=F_NO_CACHE), R, 1, Use.REVALIDATE),
    ("request max-age", FakeEntry(), RequestDirectives(max_age=10), 20, Use.REVALIDATE),
    ("request max-age ok", FakeEntry(), RequestDirectives(max_age=30), 20, Use.FRESH),
    ("request max-age=0", FakeEntry(), RequestDirectives(max_age=0), 1, Use.REVALIDATE),
    ("min-fresh", FakeEntry(), RequestDirectives(min_fresh=50), 20, Use.REVALIDATE),
    ("min-fresh ok", FakeEntry(), RequestDirectives(min_fresh=30), 20, Use.FRESH),
    ("max-stale any", FakeEntry(), RequestDirectives(max_stale=ANY_STALENESS), 9999,
     Use.STALE),
    ("max-stale in range", FakeEntry(), RequestDirectives(max_stale=100), 150, Use.STALE),
    ("max-stale out of range", FakeEntry(), RequestDirectives(max_stale=10), 150,
     Use.REVALIDATE),
    ("must-revalidate beats max-stale", FakeEntry(flags=F_NO_STALE),
     RequestDirectives(max_stale=ANY_STALENESS), 100, Use.REVALIDATE),
    ("swr window", FakeEntry(swr_s=30), R, 80, Use.STALE_REVALIDATE),
    ("swr window over", FakeEntry(swr_s=30), R, 91, Use.REVALIDATE),
    ("swr but must-revalidate", FakeEntry(swr_s=30, flags=F_NO_STALE), R, 80, Use.REVALIDATE),
    ("swr but request no-cache", FakeEntry(swr_s=30), RequestDirectives(no_cache=True), 80,
     Use.REVALIDATE),
    ("only-if-cached fresh", FakeEntry(), RequestDirectives(only_if_cached=True), 1,
     Use.FRESH),
    ("only-if-cached stale", FakeEntry(), RequestDirectives(only_if_cached=True), 100,
     Use.GATEWAY_TIMEOUT),
    ("Authorization without public", FakeEntry(), RequestDirectives(authorization=True), 1,
     Use.REVALIDATE),
    ("Authorization with public", FakeEntry(flags=F_AUTH_OK),
     RequestDirectives(authorization=True), 1, Use.FRESH),
    ("soft purged", FakeEntry(flags=F_PURGED), R, 1, Use.REVALIDATE),
]


@pytest.mark.parametrize("row", REUSE, ids=[r[0] for r in REUSE])
def test_reuse(row: tuple) -> None:  # type: ignore[type-arg]
    _, entry, req, after, expected = row
    d = evaluate(entry, req, NOW + after)
    assert d.use is expected, d.reason


def test_decision_age_and_ttl() -> None:
    d = evaluate(FakeEntry(initial_age=5), R, NOW + 10)
    assert (d.age, d.ttl) == (15, 45)
    d = evaluate(FakeEntry(), R, NOW + 70)
    assert d.ttl == -10


@pytest.mark.parametrize("cc, req, expected", [
    ("no-cache", "", RequestDirectives(no_cache=True)),
    ("", "no-cache", RequestDirectives(no_cache=True)),               # Pragma alone counts
    ("max-age=5", "no-cache", RequestDirectives(max_age=5)),          # CC present: Pragma not
    ("max-stale", "", RequestDirectives(max_stale=ANY_STALENESS)),
    ("max-stale=7, min-fresh=3", "", RequestDirectives(max_stale=7, min_fresh=3)),
    ("max-stale=x", "", RequestDirectives()),
    ("max-age=x", "", RequestDirectives(max_age=0)),
    ("only-if-cached, no-store", "", RequestDirectives(only_if_cached=True, no_store=True)),
    ("stale-if-error=30", "", RequestDirectives(stale_if_error=30)),
])
def test_parse_request(cc: str, req: str, expected: RequestDirectives) -> None:
    headers = ([(b"Cache-Control", cc.encode())] if cc else []) + \
        ([(b"Pragma", req.encode())] if req else [])
    assert parse_request(headers) == expected


def test_flags_and_windows() -> None:
    def flags(cc: str) -> int:
        return storage_flags(parse_response(200, [(b"Cache-Control", cc.encode())]))
    assert flags("no-cache") == F_NO_CACHE
    assert flags('no-cache="set-cookie"') == 0
    assert flags("must-revalidate") == F_NO_STALE | F_AUTH_OK
    assert flags("proxy-revalidate") == F_NO_STALE
    assert flags("s-maxage=1") == F_NO_STALE | F_AUTH_OK
    assert flags("public") == F_AUTH_OK
    meta = parse_response(200, [(b"Cache-Control", b"stale-while-revalidate=7")])
    assert stale_windows(meta, replace(P, stale_if_error_s=3)) == (7.0, 3.0)
    meta = parse_response(200, [(b"Cache-Control", b"stale-if-error=9")])
    assert stale_windows(meta, replace(P, stale_while_revalidate_s=2)) == (2.0, 9.0)


def test_stale_if_error() -> None:
    e = FakeEntry(sie_s=100)
    assert usable_on_error(e, R, NOW + 150)
    assert not usable_on_error(e, R, NOW + 161)
    assert not usable_on_error(replace(e, flags=F_NO_STALE), R, NOW + 70)
    assert usable_on_error(replace(e, flags=F_PURGED), R, NOW + 1)   # soft purge keeps it
    assert usable_on_error(FakeEntry(), RequestDirectives(stale_if_error=50), NOW + 100)
    assert not usable_on_error(FakeEntry(), R, NOW + 61)
    assert all(is_origin_error(s) for s in (None, 500, 502, 503, 504))
    assert not any(is_origin_error(s) for s in (200, 404, 501))


def test_validators() -> None:
    assert validators(FakeEntry()) == []
    e = FakeEntry(etag=b'"v1"', last_modified_raw=b"Sun, 06 Nov 1994 08:49:37 GMT")
    assert validators(e) == [(b"If-None-Match", b'"v1"'),
                             (b"If-Modified-Since", b"Sun, 06 Nov 1994 08:49:37 GMT")]
