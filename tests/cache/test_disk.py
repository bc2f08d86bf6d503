"""The disk tier: round trips, restart, torn and corrupt files, LRU in bytes, purges."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lbcdn.cache.disk import CorruptFile, DiskStore, decode, encode, file_name
from lbcdn.cache.entry import CachedResponse
from lbcdn.cache.policy import F_PURGED
from tests.cache.test_store import entry, h


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.lbc"))


def test_encode_decode_round_trip() -> None:
    e = entry(extra=[("Surrogate-Key", "a b"), ("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT")],
              vary="Accept-Language", req=h(("Accept-Language", "en")), body=b"\xff" * 300)
    got = decode(encode(e))
    assert got.body == e.body and got.chunks == (e.body,)
    assert got == CachedResponse(**{**{f: getattr(e, f) for f in e.__dataclass_fields__},
                                    "chunks": (e.body,)})


@pytest.mark.parametrize("damage", ["truncate", "flip_body", "flip_meta", "magic", "extend"])
def test_decode_detects_damage(damage: str) -> None:
    data = bytearray(encode(entry(body=b"x" * 100)))
    if damage == "truncate":
        data = data[:-10]
    elif damage == "flip_body":
        data[-40] ^= 1
    elif damage == "flip_meta":
        data[30] ^= 1
    elif damage == "magic":
        data[0] ^= 1
    else:
        data += b"\0"
    with pytest.raises(CorruptFile):
        decode(bytes(data))


def test_put_lookup_restart(tmp_path: Path) -> None:
    s = DiskStore(str(tmp_path), 1 << 20, 1 << 20, fsync=False)
    en = entry(vary="Accept-Language", req=h(("Accept-Language", "en")), body=b"english")
    assert s.put(en) and s.put(entry("/b", b"bee"))
    got = s.lookup(en.key, h(("Accept-Language", "en")))
    assert got is not None and got.body == b"english"
    assert s.lookup(en.key, h(("Accept-Language", "de"))) is None
    assert s.lookup(b"nothing", []) is None
    assert len(files(tmp_path)) == 2
    # a crash mid-write leaves a temp file: removed at start, never indexed
    (tmp_path / "tmp" / "half-written").write_bytes(b"LBCD1\n...")
    again = DiskStore(str(tmp_path), 1 << 20, 1 << 20, fsync=False)
    assert len(again) == 2 and again.bytes == s.bytes
    got = again.lookup(en.key, h(("Accept-Language", "EN")))
    assert got is not None and got.body == b"english" and got.lifetime == en.lifetime
    assert os.listdir(tmp_path / "tmp") == []


def test_torn_file_never_served(tmp_path: Path) -> None:
    s = DiskStore(str(tmp_path), 1 << 20, 1 << 20, fsync=False)
    e = entry(body=b"z" * 1000)
    s.put(e)
    (path,) = files(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    assert s.lookup(e.key, []) is None
    assert s.corrupt == 1 and files(tmp_path) == [] and len(s) == 0 and s.bytes == 0


def test_corrupt_file_dropped_at_start(tmp_path: Path) -> None:
    s = DiskStore(str(tmp_path), 1 << 20, 1 << 20, fsync=False)
    s.put(entry("/a"))
    s.put(entry("/b"))
    a = tmp_path / file_name(entry("/a").key, b"")[:2] / (file_name(entry("/a").key, b"") + ".lbc")
    a.write_bytes(a.read_bytes()[:20])
    again = DiskStore(str(tmp_path), 1 << 20, 1 << 20, fsync=False)
    assert len(again) == 1 and again.corrupt == 1
    assert again.lookup(entry("/a").key, []) is None
    assert again.lookup(entry("/b").key, []) is not None


def test_lru_in_bytes_and_limits(tmp_path: Path) -> None:
    size = len(encode(entry("/0", b"x" * 500)))
    s = DiskStore(str(tmp_path), size * 2, size * 2, fsync=False)
    s.put(entry("/0", b"x" * 500))
    s.put(entry("/1", b"x" * 500))
    assert s.lookup(entry("/0").key, []) is not None       # /0 becomes most recent
    s.put(entry("/2", b"x" * 500))
    assert s.evictions == 1 and len(s) == 2 and s.bytes == 2 * size
    assert s.lookup(entry("/1").key, []) is None
    assert len(files(tmp_path)) == 2
    assert not s.put(entry("/big", b"x" * (size * 2)))
    # replacing a variant keeps the byte count exact
    s.put(entry("/2", b"y" * 500))
    assert s.bytes == 2 * size and len(files(tmp_path)) == 2


def test_vary_change_drops_old_variants(tmp_path: Path) -> None:
    s = DiskStore(str(tmp_path), 1 << 20, 1 << 20, fsync=False)
    s.put(entry(vary="Accept-Language", req=h(("Accept-Language", "en"))))
    s.put(entry(vary="Accept-Language", req=h(("Accept-Language", "de"))))
    s.put(entry(body=b"plain"))
    assert len(s) == 1 and len(files(tmp_path)) == 1
    got = s.lookup(entry().key, h(("Accept-Language", "de")))
    assert got is not None and got.body == b"plain"


def test_purges_and_soft_purge_survives_restart(tmp_path: Path) -> None:
    s = DiskStore(str(tmp_path), 1 << 20, 1 << 20, fsync=False)
    s.put(entry("/img/a", extra=[("Cache-Tag", "img")]))
    s.put(entry("/img/b", extra=[("Surrogate-Key", "img b")]))
    s.put(entry("/c", query=b"v=1"))
    assert s.purge_uri(b"h", b"/img/a", soft=True) == 1
    again = DiskStore(str(tmp_path), 1 << 20, 1 << 20, fsync=False)
    got = again.lookup(entry("/img/a").key, [])
    assert got is not None and got.flags & F_PURGED
    assert again.purge_tags([b"b"]) == 1
    assert again.lookup(entry("/img/b").key, []) is None
    assert again.purge_matching(lambda host, path, q: q == b"v=1") == 1
    assert again.delete(entry("/img/a").key) == 1
    assert len(again) == 0 and files(tmp_path) == [] and again.bytes == 0


def test_fsync_path(tmp_path: Path) -> None:
    s = DiskStore(str(tmp_path), 1 << 20, 1 << 20, fsync=True)
    assert s.put(entry())
    assert s.purge_uri(b"h", b"/a", soft=True) == 1
    got = s.lookup(entry().key, [])
    assert got is not None and got.flags & F_PURGED
