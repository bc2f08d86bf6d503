"""The pure pieces together, as the edge exchange will drive them, on a fake clock: miss,
store, hit, stale, revalidation (304 merge), conditional and range answers from the entry,
a compressed variant, stale-if-error after a soft purge."""

from __future__ import annotations

import gzip
from email.utils import formatdate

from lbcdn.cache.compress import VARIANT_FIELDS, compress, compressed_headers, eligible, negotiate
from lbcdn.cache.conditional import RangeKind, plan_range, precondition
from lbcdn.cache.config import CachePolicyConfig
from lbcdn.cache.entry import CachedResponse, build, freshened
from lbcdn.cache.headers import Outcome, cache_lines, not_modified_headers, validator_matches
from lbcdn.cache.key import KeyBuilder, variant_key
from lbcdn.cache.policy import (RequestDirectives, Use, evaluate, not_storable, parse_request,
                                parse_response, usable_on_error, validators)
from lbcdn.cache.store import MemoryStore, Miss

T0 = 1_700_000_000.0
POLICY = CachePolicyConfig(stale_if_error_s=300)
KEYS = KeyBuilder(POLICY)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def advance(self, s: float) -> float:
        self.now += s
        return self.now


def h(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in pairs]


def origin_headers(now: float, body: bytes) -> list[tuple[bytes, bytes]]:
    return h(("Date", formatdate(now, usegmt=True)), ("Cache-Control", "max-age=60"),
             ("ETag", '"v1"'), ("Content-Type", "text/html"),
             ("Last-Modified", formatdate(now - 3600, usegmt=True)),
             ("Content-Length", str(len(body))))


def store_response(store: MemoryStore, clock: Clock, req: list[tuple[bytes, bytes]],
                   status: int, headers: list[tuple[bytes, bytes]],
                   body: bytes) -> CachedResponse | None:
    primary = KEYS.primary(b"GET", b"example.com", b"/page", None, req)
    meta = parse_response(status, headers)
    if not_storable(b"GET", parse_request(req), meta, POLICY) is not None:
        return None
    variant = variant_key(meta.vary, req)
    assert variant is not None
    e = build(key=primary, variant=variant, host=b"example.com", path=b"/page", query=b"",
              status=status, headers=headers, chunks=(body,), request_time=clock.now - 0.01,
              response_time=clock.now, policy=POLICY, now=clock.now, meta=meta)
    assert store.put(e)
    return e


def test_miss_hit_stale_refresh() -> None:
    clock = Clock()
    store = MemoryStore(1 << 20, 1 << 20)
    req = h(("Host", "example.com"))
    primary = KEYS.primary(b"GET", b"example.com", b"/page", None, req)
    assert store.lookup(primary, req) == Miss.URI

    body = b"<html>" + b"x" * 2000 + b"</html>"
    stored = store_response(store, clock, req, 200, origin_headers(clock.now, body), body)
    assert stored is not None

    clock.advance(30)
    hit = store.lookup(primary, req)
    assert isinstance(hit, CachedResponse)
    d = evaluate(hit, parse_request(req), clock.now)
    assert d.use is Use.FRESH and int(d.age) == 30 and int(d.ttl) == 29
    wire = hit.head + cache_lines(Outcome.HIT, d.age, ttl=d.ttl) + b"\r\n" + hit.body
    assert wire.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nAge: 30\r\n" in wire and b"X-Cache: Hit from lbcdn\r\n" in wire
    assert b"Content-Length: %d\r\n" % len(body) in wire and wire.endswith(body)

    # HEAD shares the GET entry
    assert KEYS.primary(b"HEAD", b"example.com", b"/page", None, req) == primary

    # client revalidation answered from the entry
    cond = req + h(("If-None-Match", '"v1"'))
    assert precondition(b"GET", cond, hit.etag, hit.last_modified, hit.date,
                        hit.response_time) == 304
    assert [n for n, _ in not_modified_headers(hit.headers)] == \
        [b"Date", b"Cache-Control", b"ETag", b"Last-Modified"]
    rng = plan_range(b"GET", hit.status, req + h(("Range", "bytes=0-5")), hit.size, hit.etag,
                     hit.last_modified, hit.date)
    assert rng.kind is RangeKind.PARTIAL and hit.body[rng.start:rng.end + 1] == b"<html>"

    # stale: revalidate with the stored validators; the origin says 304
    clock.advance(60)
    d = evaluate(hit, parse_request(req), clock.now)
    assert d.use is Use.REVALIDATE
    assert validators(hit)[0] == (b"If-None-Match", b'"v1"')
    not_modified = h(("Date", formatdate(clock.now, usegmt=True)),
                     ("Cache-Control", "max-age=600"), ("ETag", '"v1"'))
    assert validator_matches(hit.etag, hit.last_modified_raw, not_modified)
    fresh = freshened(hit, not_modified, clock.now - 0.01, clock.now, POLICY, clock.now)
    store.put(fresh)
    clock.advance(100)
    again = store.lookup(primary, req)
    assert isinstance(again, CachedResponse) and again.body == body
    d = evaluate(again, RequestDirectives(), clock.now)
    assert d.use is Use.FRESH and again.lifetime == 600
    assert b"Cache-Control: max-age=600\r\n" in again.head

    # a soft purge makes it stale, but it can still stand in when the origin fails
    store.purge_uri(b"example.com", b"/page", soft=True)
    purged = store.lookup(primary, req)
    assert isinstance(purged, CachedResponse)
    assert evaluate(purged, RequestDirectives(), clock.now).use is Use.REVALIDATE
    assert usable_on_error(purged, RequestDirectives(), clock.now)
    assert not usable_on_error(purged, RequestDirectives(), clock.now + 1000)


def test_compressed_variant_is_stored_and_selected() -> None:
    clock = Clock()
    store = MemoryStore(1 << 20, 1 << 20)
    body = b"<p>compress me</p>" * 200
    headers = origin_headers(clock.now, body)
    assert eligible(POLICY.compress, 200, headers, len(body))
    gz_req = h(("Accept-Encoding", "gzip, deflate"))
    coding = negotiate(b"gzip, deflate")
    assert coding == b"gzip"
    packed = compress(body, coding)
    gz = store_response(store, clock, gz_req, 200,
                        compressed_headers(headers, coding, len(packed)), packed)
    assert gz is not None and gz.vary == (b"accept-encoding",)
    assert gz.etag == b'W/"v1"'
    primary = KEYS.primary(b"GET", b"example.com", b"/page", None, gz_req)
    # another browser's spelling of the same preference selects the same variant
    same = store.lookup(primary, h(("Accept-Encoding", "deflate, gzip;q=0.9")))
    assert isinstance(same, CachedResponse) and gzip.decompress(same.body) == body
    # a client without gzip misses the variant
    assert store.lookup(primary, []) == Miss.VARY
    # a 304 from the origin (strong tag) refreshes the variant without undoing its coding
    clock.advance(120)
    not_modified = h(("ETag", '"v1"'), ("Cache-Control", "max-age=5"),
                     ("Date", formatdate(clock.now, usegmt=True)), ("Vary", "Cookie"))
    assert validator_matches(gz.etag, gz.last_modified_raw, not_modified)
    fresh = freshened(gz, not_modified, clock.now, clock.now, POLICY, clock.now,
                      keep=VARIANT_FIELDS)
    assert fresh.etag == b'W/"v1"' and fresh.lifetime == 5
    assert (b"Content-Encoding", b"gzip") in fresh.headers
    assert (b"Vary", b"Accept-Encoding") in fresh.headers


def test_age_the_response_arrived_with_counts_though_it_is_not_stored() -> None:
    """RFC 9111 4.2.3: the stored fields drop Age, but the initial age keeps it; a 304's own
    Age sets the age of the freshened entry."""
    clock = Clock()

    def stored(headers: list[tuple[bytes, bytes]], age: int | None = None) -> CachedResponse:
        return build(key=b"k", variant=b"", host=b"example.com", path=b"/p", query=b"",
                     status=200, headers=headers, chunks=(b"x",),
                     request_time=clock.now - 1.0, response_time=clock.now, policy=POLICY,
                     now=clock.now, age=age)

    fields = h(("Cache-Control", "max-age=3600"), ("ETag", '"v1"'))
    old = stored(fields, age=7200)
    assert old.initial_age == 7201.0   # Age + the response delay (corrected_age_value)
    assert stored(fields + h(("Age", "7200"))).initial_age == 7201.0
    assert evaluate(old, RequestDirectives(), clock.now).use is Use.REVALIDATE
    young = stored(fields, age=100)
    d = evaluate(young, RequestDirectives(), clock.advance(1))
    assert (d.use, int(d.age), int(d.ttl)) == (Use.FRESH, 102, 3498)
    refreshed = freshened(young, h(("ETag", '"v1"'), ("Age", "30")), clock.now - 0.5,
                          clock.now, POLICY, clock.now)
    assert refreshed.initial_age == 30.5
    assert freshened(young, h(("ETag", '"v1"')), clock.now, clock.now, POLICY,
                     clock.now).initial_age == 0.0
