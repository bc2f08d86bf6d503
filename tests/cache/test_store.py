"""Entries, the memory tier (LRU in bytes, Vary, invalidation indexes) and the streaming fill."""

from __future__ import annotations

from dataclasses import replace
from email.utils import formatdate

from lbcdn.cache.config import CachePolicyConfig
from lbcdn.cache.entry import ENTRY_OVERHEAD, CachedResponse, build, freshened, parse_tags
from lbcdn.cache.key import variant_key
from lbcdn.cache.policy import F_PURGED, RequestDirectives, Use, evaluate
from lbcdn.cache.store import Fill, MemoryStore, Miss

NOW = 1_700_000_000.0
P = CachePolicyConfig()


def h(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in pairs]


def entry(path: str = "/a", body: bytes = b"hello", *, vary: str | None = None,
          req: list[tuple[bytes, bytes]] | None = None, extra: list[tuple[str, str]] = (),  # type: ignore[assignment]
          host: bytes = b"h", query: bytes = b"", now: float = NOW) -> CachedResponse:
    headers = h(("Date", formatdate(now, usegmt=True)), ("Cache-Control", "max-age=60"),
                ("Content-Type", "text/plain"), ("ETag", '"e1"'), *extra)
    if vary:
        headers += h(("Vary", vary))
    vnames = tuple(v.strip().lower().encode() for v in vary.split(",")) if vary else ()
    variant = variant_key(vnames, req or [])
    assert variant is not None
    return build(key=host + b"|" + path.encode(), variant=variant, host=host,
                 path=path.encode(), query=query, status=200, headers=headers,
                 chunks=(body[:2], body[2:]) if len(body) > 2 else (body,),
                 request_time=now - 0.5, response_time=now, policy=P, now=now)


def test_build_entry() -> None:
    e = entry(extra=[("Age", "10"), ("Connection", "close"), ("Transfer-Encoding", "chunked"),
                     ("Surrogate-Key", "a b"), ("Cache-Tag", "c, d"),
                     ("CDN-Cache-Control", "max-age=30"),
                     ("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT")])
    assert e.body == b"hello" and e.size == 5 and e.chunks == (b"he", b"llo")
    assert e.lifetime == 30 and e.lifetime_source == "max-age"
    assert e.initial_age == 10.5       # Age + response delay
    assert e.tags == frozenset({b"a", b"b", b"c", b"d"})
    assert e.etag == b'"e1"' and e.last_modified_raw == b"Sun, 06 Nov 1994 08:49:37 GMT"
    assert e.head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert e.head.endswith(b"Content-Length: 5\r\n")
    for absent in (b"Age:", b"Connection:", b"Transfer-Encoding:", b"CDN-Cache-Control:"):
        assert absent not in e.head
    assert e.charge == 5 + len(e.head) + ENTRY_OVERHEAD
    assert parse_tags(h(("Surrogate-Key", "  x   y "))) == frozenset({b"x", b"y"})


def test_private_fields_not_stored() -> None:
    e = entry(extra=[("Cache-Control", 'private="X-User"'), ("X-User", "bob")])
    assert all(n.lower() != b"x-user" for n, _ in e.headers)


def test_freshened_after_304() -> None:
    e = entry()
    later = NOW + 100
    assert evaluate(e, RequestDirectives(), later).use is Use.REVALIDATE
    f = freshened(e.purged(), h(("Cache-Control", "max-age=300"), ("ETag", '"e1"'),
                                ("Date", formatdate(later, usegmt=True))),
                  later - 0.1, later, P, later)
    assert f.lifetime == 300 and f.body == e.body and f.response_time == later
    assert not f.flags & F_PURGED
    assert evaluate(f, RequestDirectives(), later + 10).use is Use.FRESH
    assert b"Content-Length: 5\r\n" in f.head


def test_lookup_and_vary() -> None:
    s = MemoryStore(1 << 20, 1 << 20)
    assert s.lookup(b"h|/a", []) == Miss.URI
    en = entry(vary="Accept-Language", req=h(("Accept-Language", "en")), body=b"english")
    de = entry(vary="Accept-Language", req=h(("Accept-Language", "de")), body=b"deutsch")
    assert s.put(en) and s.put(de)
    assert len(s) == 2
    hit = s.lookup(b"h|/a", h(("Accept-Language", "DE")))
    assert isinstance(hit, CachedResponse) and hit.body == b"deutsch"
    assert s.lookup(b"h|/a", h(("Accept-Language", "fr"))) == Miss.VARY
    assert s.lookup(b"h|/a", []) == Miss.VARY
    # A new Vary for the primary key drops the variants selected by the old one.
    plain = entry(body=b"plain")
    assert s.put(plain)
    assert len(s) == 1 and s.bytes == plain.charge
    got = s.lookup(b"h|/a", h(("Accept-Language", "de")))
    assert isinstance(got, CachedResponse) and got.body == b"plain"


def test_replace_keeps_bytes_exact() -> None:
    s = MemoryStore(1 << 20, 1 << 20)
    s.put(entry(body=b"1" * 100))
    s.put(entry(body=b"2" * 10))
    assert len(s) == 1 and s.bytes == entry(body=b"2" * 10).charge


def test_lru_in_bytes() -> None:
    one = entry("/0", b"x" * 1000).charge
    s = MemoryStore(one * 3, one * 3)
    evicted: list[bytes] = []
    s.on_evict = lambda e: evicted.append(e.path)
    for i in range(3):
        assert s.put(entry(f"/{i}", b"x" * 1000))
    assert isinstance(s.lookup(b"h|/0", []), CachedResponse)   # /0 is now most recent
    assert s.put(entry("/3", b"x" * 1000))
    assert evicted == [b"/1"] and s.evictions == 1
    assert s.lookup(b"h|/1", []) == Miss.URI
    assert s.bytes == 3 * one and s.bytes <= s.max_bytes
    assert s.purge_uri(b"h", b"/1") == 0     # index cleaned on eviction


def test_object_limit() -> None:
    s = MemoryStore(1 << 20, 2000)
    assert not s.put(entry(body=b"x" * 2000))
    assert s.put(entry(body=b"x" * 100))
    assert not MemoryStore(1000, 1 << 20).put(entry(body=b"x" * 600))


def test_purges() -> None:
    s = MemoryStore(1 << 20, 1 << 20)
    s.put(entry("/img/a.png", extra=[("Surrogate-Key", "img")]))
    s.put(entry("/img/b.png", extra=[("Cache-Tag", "img,b")]))
    s.put(entry("/img/a.png", host=b"other"))
    s.put(entry("/index.html", query=b"v=1"))
    assert s.purge_uri(b"h", b"/img/a.png", soft=True) == 1
    a = s.lookup(b"h|/img/a.png", [])
    assert isinstance(a, CachedResponse) and a.flags & F_PURGED
    assert s.purge_tags([b"b"]) == 1
    assert s.lookup(b"h|/img/b.png", []) == Miss.URI
    assert s.purge_tags([b"img", b"nothing"]) == 1
    assert s.purge_matching(lambda host, path, q: path.startswith(b"/index")) == 1
    assert len(s) == 1 and s.bytes == entry("/img/a.png", host=b"other").charge
    s.clear()
    assert len(s) == 0 and s.bytes == 0


def test_generation_moves_with_every_change_and_only_then() -> None:
    one = entry("/0", b"x" * 1000).charge
    s = MemoryStore(one * 2, one * 2)
    seen = [s.generation]

    def changed() -> bool:
        moved = s.generation != seen[-1]
        seen.append(s.generation)
        return moved

    s.put(entry("/0", b"x" * 1000))
    assert changed()
    s.lookup(b"h|/0", [])
    s.get(b"h|/0", b"")
    s.purge_uri(b"h", b"/none")
    assert not changed()                       # reading (and purging nothing) changes nothing
    s.put(entry("/1", b"x" * 1000))
    assert changed()
    s.put(entry("/2", b"x" * 1000))            # evicts /0
    assert changed() and s.lookup(b"h|/0", []) == Miss.URI
    s.purge_uri(b"h", b"/1", soft=True)
    assert changed()
    s.purge_uri(b"h", b"/1")
    assert changed()
    assert not s.put(entry("/big", b"x" * 5000)) and not changed()   # refused: nothing stored
    s.clear()
    assert changed()


# -- fill --------------------------------------------------------------------------------------

def test_fill_readers_follow_along() -> None:
    fill = Fill(200, [], expected_bytes=6, max_bytes=100)
    events: list[int] = []
    fill.listen(lambda f: events.append(f.size))
    first = fill.reader()
    assert first is not None
    fill.append(b"ab")
    assert first.take() == [b"ab"] and first.take() == []
    late = fill.reader()       # a collapsed waiter joining mid-body starts at byte 0
    assert late is not None
    fill.append(b"cd")
    fill.append(b"")           # empty chunks are not events
    assert late.take() == [b"ab", b"cd"]
    assert not late.at_end
    fill.append(b"ef")
    fill.finish()
    assert first.take() == [b"cd", b"ef"] and first.at_end
    assert late.take() == [b"ef"] and late.at_end
    assert events == [2, 4, 6, 6]
    assert fill.complete_body == (b"ab", b"cd", b"ef")
    fill.append(b"more")       # after the end: ignored
    assert fill.size == 6


def test_fill_short_body_fails() -> None:
    fill = Fill(200, [], expected_bytes=10, max_bytes=100)
    fill.append(b"abc")
    fill.finish()
    assert fill.error is not None and fill.finished and fill.complete_body is None


def test_fill_failure_notifies() -> None:
    fill = Fill(200, [], expected_bytes=None, max_bytes=100)
    seen: list[str | None] = []
    fill.listen(lambda f: seen.append(f.error))
    fill.append(b"x")
    fill.fail("reset")
    fill.fail("again")
    assert seen == [None, "reset"] and fill.complete_body is None


def test_fill_too_large_becomes_pass_through() -> None:
    fill = Fill(200, [], expected_bytes=None, max_bytes=5)
    r = fill.reader()
    assert r is not None
    fill.append(b"abc")
    assert fill.storable
    fill.append(b"def")
    assert not fill.storable
    assert fill.lag_bytes() == 6
    assert r.take() == [b"abc", b"def"]
    assert fill.chunks == [] and fill.lag_bytes() == 0   # nothing kept once read
    assert fill.reader() is None                          # late joiners refused
    fill.append(b"g")
    fill.finish()
    assert r.take() == [b"g"] and r.at_end and fill.complete_body is None
    known_big = Fill(200, [], expected_bytes=6, max_bytes=5)
    assert not known_big.storable


def test_fill_trim_waits_for_slowest_reader() -> None:
    fill = Fill(200, [], expected_bytes=None, max_bytes=1)
    fast, slow = fill.reader(), fill.reader()
    assert fast is not None and slow is not None
    fill.append(b"a")
    fill.append(b"b")
    assert fast.take() == [b"a", b"b"]
    assert fill.chunks == [b"a", b"b"]
    assert slow.take() == [b"a", b"b"]
    assert fill.chunks == []
    fill.append(b"c")
    fill.close_reader(slow)       # a client that left no longer holds chunks back
    assert fast.take() == [b"c"] and fill.chunks == []


def test_entry_is_immutable() -> None:
    e = entry()
    try:
        e.status = 404  # type: ignore[misc]
    except AttributeError:
        pass
    else:
        raise AssertionError("CachedResponse must be frozen")
    assert replace(e, status=404).status == 404 and e.status == 200
