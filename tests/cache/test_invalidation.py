"""Invalidation paths, ids, idempotency, hard/soft purges and tags on real stores."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from lbcdn.cache.disk import DiskStore
from lbcdn.cache.entry import CachedResponse
from lbcdn.cache.invalidation import (MAX_PATHS, InvalidationError, Registry, apply, check_path,
                                      path_matcher)
from lbcdn.cache.policy import F_PURGED
from lbcdn.cache.store import MemoryStore
from tests.cache.test_store import entry


@pytest.mark.parametrize("path, ok", [
    ("/index.html", True), ("/images/*", True), ("/*", True), ("/a.js*", True),
    ("*", False), ("images/a", False), ("/a*/b", False), ("/a b", False), ("/a\tb", False),
])
def test_check_path(path: str, ok: bool) -> None:
    assert (check_path(path) is None) is ok


@pytest.mark.parametrize("paths, host, path, query, hit", [
    (["/index.html"], b"h", b"/index.html", b"", True),
    (["/index.html"], b"h", b"/index.html", b"v=1", False),
    (["/index.html*"], b"h", b"/index.html", b"v=1", True),
    (["/index.html?v=1"], b"h", b"/index.html", b"v=1", True),
    (["/images/*"], b"h", b"/images/a/b.png", b"", True),
    (["/images/*"], b"h", b"/imagesX", b"", False),
    (["/*"], b"h", b"/", b"", True),
    (["/Index.html"], b"h", b"/index.html", b"", False),   # case-sensitive
])
def test_path_matcher(paths: list[str], host: bytes, path: bytes, query: bytes,
                      hit: bool) -> None:
    assert path_matcher(paths)(host, path, query) is hit


def test_host_scope() -> None:
    m = path_matcher(["/*"], [b"Example.com"])
    assert m(b"example.com", b"/a", b"") and not m(b"other", b"/a", b"")


def test_registry_ids_status_idempotency() -> None:
    r = Registry(random.Random(7))
    a = r.create(["/a"], now=10.0, caller_reference="ref-1")
    assert a.id.startswith("I") and len(a.id) == 14 and a.id[1:].isalnum() and a.id.isupper()
    assert a.status == "InProgress" and r.get(a.id) == a
    assert r.create(["/a"], now=11.0, caller_reference="ref-1") is a
    with pytest.raises(InvalidationError, match="caller_reference"):
        r.create(["/b"], now=11.0, caller_reference="ref-1")
    b = r.create(tags=["img"], soft=True, now=12.0)
    assert b.id != a.id and [i.id for i in r.list()] == [b.id, a.id]
    done = r.complete(a.id, 13.0, purged=4)
    assert done.status == "Completed" and r.get(a.id) == done
    assert done.describe()["mode"] == "hard" and done.describe()["purged"] == 4
    assert r.get("Inope") is None


@pytest.mark.parametrize("paths, tags, message", [
    ([], [], "at least one"),
    (["nope"], [], "must start with /"),
    (["/a*b"], [], "only at the end"),
    ([], ["a b"], "tag"),
    (["/x"] * (MAX_PATHS + 1), [], "at most"),
])
def test_registry_refuses(paths: list[str], tags: list[str], message: str) -> None:
    with pytest.raises(InvalidationError, match=message):
        Registry().create(paths, tags, now=0.0)


def _populate(store: MemoryStore | DiskStore) -> None:
    store.put(entry("/index.html"))
    store.put(entry("/images/a.png", extra=[("Surrogate-Key", "img")]))
    store.put(entry("/images/b.png", extra=[("Cache-Tag", "img")]))
    store.put(entry("/app.js", query=b"v=2"))


def _get(store: MemoryStore | DiskStore, path: str) -> CachedResponse | None:
    got = store.lookup(b"h|" + path.encode(), [])
    return got if isinstance(got, CachedResponse) else None


def test_apply_to_memory_and_disk(tmp_path: Path) -> None:
    mem = MemoryStore(1 << 20, 1 << 20)
    disk = DiskStore(str(tmp_path), 1 << 20, 1 << 20, fsync=False)
    for s in (mem, disk):
        _populate(s)
    r = Registry()
    soft = r.create(["/images/*"], soft=True, now=0.0)
    assert apply(soft, [mem, disk]) == 4
    for s in (mem, disk):
        got = _get(s, "/images/a.png")
        assert got is not None and got.flags & F_PURGED
    hard = r.create(["/app.js*", "/index.html"], tags=["img"], now=1.0)
    assert apply(hard, [mem, disk]) == 8
    for s in (mem, disk):
        assert len(s) == 0
