"""Storage on disk: atomic writes, metadata beside the object, ETags, listing order and
paging, multipart, and the ways a key could escape its bucket."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from lbcdn.bucket.errors import S3Error
from lbcdn.bucket.storage import COMPLETED_TTL_S, ObjectInfo, Storage, completion_recovery, \
    new_upload_id


@pytest.fixture
def st(tmp_path: Path) -> Storage:
    s = Storage(str(tmp_path / "root"), min_part_bytes=4)
    s.prepare()
    s.create_bucket("bkt", "alice")
    return s


def put(st: Storage, key: str, data: bytes, headers: dict[str, str] | None = None,
        bucket: str = "bkt") -> str:
    w = st.begin_write()
    w.write(data)
    return st.commit(w, bucket, key, headers or {}).etag


def test_put_then_stat(st: Storage) -> None:
    etag = put(st, "a/b.txt", b"hello", {"content-type": "text/x", "x-amz-meta-k": "v"})
    assert etag == hashlib.md5(b"hello").hexdigest()
    info = st.stat_object("bkt", "a/b.txt")
    assert (info.size, info.etag, info.content_type) == (5, etag, "text/x")
    assert info.headers["x-amz-meta-k"] == "v"
    assert Path(st.root, "bkt", "a", "b.txt").read_bytes() == b"hello"
    # metadata lives outside the bucket, in the .lbcdn area
    assert not any(p.name.endswith(".json") for p in Path(st.root, "bkt").rglob("*"))


def test_metadata_survives_restart(st: Storage) -> None:
    put(st, "k", b"x", {"cache-control": "max-age=60"})
    again = Storage(st.root)
    again.prepare()
    assert again.stat_object("bkt", "k").headers == {"cache-control": "max-age=60"}


def test_hand_dropped_file_etag_cached_until_change(st: Storage) -> None:
    path = Path(st.root, "bkt", "hand.html")
    path.write_bytes(b"<p>one</p>")
    info = st.stat_object("bkt", "hand.html")
    assert info.etag == hashlib.md5(b"<p>one</p>").hexdigest()
    assert info.content_type == "text/html"
    # stored: a fresh Storage finds the cached ETag without hashing (the file is unchanged)
    fresh = Storage(st.root)
    assert fresh.stat_object("bkt", "hand.html").etag == info.etag
    path.write_bytes(b"<p>two!</p>")
    os.utime(path, ns=(info.mtime_ns + 10**9, info.mtime_ns + 10**9))
    assert fresh.stat_object("bkt", "hand.html").etag == hashlib.md5(b"<p>two!</p>").hexdigest()


def test_file_replaced_by_hand_drops_stale_metadata(st: Storage) -> None:
    put(st, "k.bin", b"old", {"content-type": "text/old"})
    path = Path(st.root, "bkt", "k.bin")
    tmp = path.with_name("other")
    tmp.write_bytes(b"new content")
    os.rename(tmp, path)
    info = st.stat_object("bkt", "k.bin")
    assert info.etag == hashlib.md5(b"new content").hexdigest()
    assert "content-type" not in info.headers


def test_aborted_write_leaves_old_object(st: Storage) -> None:
    put(st, "k", b"old")
    w = st.begin_write()
    w.write(b"new partial")
    w.abort()
    assert Path(st.root, "bkt", "k").read_bytes() == b"old"
    assert os.listdir(st.tmp_dir) == []


def test_crash_between_metadata_and_rename_keeps_old_metadata(st: Storage) -> None:
    """Metadata of the new version is keyed by its inode, so the old version keeps its own."""
    put(st, "k", b"old", {"content-type": "text/old"})
    w = st.begin_write()
    w.write(b"new")
    w._sync_close()
    # what commit writes before the rename, then "crash" (no rename)
    stt = os.stat(w.tmp_path)
    from lbcdn.bucket.storage import ObjectInfo
    st._write_meta("bkt", "k", (stt.st_size, stt.st_mtime_ns, stt.st_ino),
                   ObjectInfo("k", "", 3, stt.st_mtime_ns, "x", {"content-type": "text/new"}))
    fresh = Storage(st.root)
    fresh.prepare()  # drops the temp file
    info = fresh.stat_object("bkt", "k")
    assert info.headers == {"content-type": "text/old"}
    assert Path(info.path).read_bytes() == b"old"


def test_temp_files_cleared_at_start(st: Storage) -> None:
    w = st.begin_write()
    w.write(b"junk")
    Storage(st.root).prepare()
    assert os.listdir(st.tmp_dir) == []


def test_delete_removes_empty_parents(st: Storage) -> None:
    put(st, "a/b/c", b"1")
    put(st, "a/d", b"2")
    st.delete_object("bkt", "a/b/c")
    assert not Path(st.root, "bkt", "a", "b").exists()
    assert Path(st.root, "bkt", "a", "d").exists()
    st.delete_object("bkt", "missing")  # no error, as S3
    with pytest.raises(S3Error) as e:
        st.stat_object("bkt", "a/b/c")
    assert e.value.code == "NoSuchKey"


def read(st: Storage, key: str) -> bytes:
    return Path(st.stat_object("bkt", key).path).read_bytes()


def test_key_and_keys_under_it_coexist(st: Storage) -> None:
    put(st, "a", b"file")
    put(st, "a/b", b"under a file", {"content-type": "x/y"})
    put(st, "a/b/c", b"deeper")
    put(st, "d/e", b"in a directory")
    put(st, "d", b"named like a directory")
    assert [read(st, k) for k in ("a", "a/b", "a/b/c", "d/e", "d")] == [
        b"file", b"under a file", b"deeper", b"in a directory", b"named like a directory"]
    assert st.stat_object("bkt", "a/b").content_type == "x/y"
    assert list(st.iter_keys("bkt")) == ["a", "a/b", "a/b/c", "d", "d/e"]
    assert Path(st.root, "bkt", "a").read_bytes() == b"file"  # the plain key stays a file
    assert os.listdir(st.tmp_dir) == []


def test_spilled_key_becomes_a_file_when_it_can(st: Storage) -> None:
    put(st, "a", b"file")
    put(st, "a/b", b"spilled")
    st.delete_object("bkt", "a")
    assert read(st, "a/b") == b"spilled"
    put(st, "a/b", b"now a file")
    assert Path(st.root, "bkt", "a", "b").read_bytes() == b"now a file"
    assert st.spilled_keys("bkt") == []
    assert [p for p in Path(st.spill_dir).rglob("*") if p.is_file()] == []
    st.delete_object("bkt", "a/b")
    assert list(st.iter_keys("bkt")) == []


@pytest.mark.parametrize("key", ["folder/", "x" * 300, "a/" + "y" * 256 + "/z", "../up",
                                 "/abs", "a//b", "./a", "a/./b", "nul\x00", "\u00e9" * 512])
def test_keys_that_cannot_be_files_are_stored_exactly(st: Storage, key: str) -> None:
    put(st, "plain", b"p")
    put(st, key, b"odd", {"x-amz-meta-k": "v"})
    info = st.stat_object("bkt", key)
    assert (read(st, key), info.key, info.headers) == (b"odd", key, {"x-amz-meta-k": "v"})
    assert list(st.iter_keys("bkt")) == sorted([key, "plain"])
    # nothing outside the bucket directory and the spill area
    assert sorted(p.name for p in Path(st.root, "bkt").iterdir()) == ["plain"]
    assert not Path(st.root, "up").exists() and not Path("/abs").exists()
    again = restart(st)
    assert read(again, key) == b"odd"
    again.delete_object("bkt", key)
    with pytest.raises(S3Error):
        again.stat_object("bkt", key)
    assert list(again.iter_keys("bkt")) == ["plain"]


def test_listing_merges_files_and_spilled_keys(st: Storage) -> None:
    keys = ["a", "a/", "a/b", "a/b/", "a/b/c", "a-", "b//c", "b/c", "photos/", "photos/1.jpg",
            "photos/2/", "z"]
    for k in keys:
        put(st, k, k.encode())
    keys.sort()
    assert list(st.iter_keys("bkt")) == keys
    pages: list[str] = []
    after = ""
    while True:
        r = st.list_objects("bkt", after=after, max_keys=2)
        pages += [i.key for i in r.contents]
        if not r.truncated:
            break
        assert r.next_after is not None
        after = r.next_after
    assert pages == keys
    r = st.list_objects("bkt", prefix="photos/", delimiter="/")
    assert ([i.key for i in r.contents], r.prefixes) == (["photos/", "photos/1.jpg"],
                                                          ["photos/2/"])
    r = st.list_objects("bkt", delimiter="/")
    assert ([i.key for i in r.contents], r.prefixes) == (["a", "a-", "z"],
                                                          ["a/", "b/", "photos/"])
    r = st.list_objects("bkt", prefix="b/", delimiter="/")
    assert ([i.key for i in r.contents], r.prefixes) == (["b/c"], ["b//"])


@pytest.mark.parametrize("prefix", ["/", "//", "zz", "a/b/c/", "\u00e9"])
def test_prefix_matching_nothing_lists_nothing(st: Storage, prefix: str) -> None:
    for k in ("a", "a/b/c", "z/"):
        put(st, k, b"x")
    assert list(st.iter_keys("bkt", prefix)) == []
    assert st.list_objects("bkt", prefix=prefix).contents == []


def test_prefix_of_spilled_keys(st: Storage) -> None:
    for k in ("/abs", "/abs/x", "a"):
        put(st, k, b"x")
    assert list(st.iter_keys("bkt", "/")) == ["/abs", "/abs/x"]
    assert [i.key for i in st.list_objects("bkt", prefix="/abs/").contents] == ["/abs/x"]


def test_bucket_written_by_the_previous_layout_keeps_working(st: Storage) -> None:
    """Files in the bucket directory, metadata at meta/<bucket>/<h2>/<h>/<inode>.json, written
    here by hand in the format of the previous version: read back unchanged."""
    f = Path(st.root, "bkt", "docs", "a.html")
    f.parent.mkdir()
    f.write_bytes(b"<p>hi</p>")
    s = os.stat(f)
    h = hashlib.sha256(b"docs/a.html").hexdigest()
    meta = Path(st.meta_dir, "bkt", h[:2], h, f"{s.st_ino}.json")
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"key": "docs/a.html",
                                "identity": [s.st_size, s.st_mtime_ns, s.st_ino],
                                "etag": "0123456789abcdef0123456789abcdef",
                                "headers": {"content-type": "text/html", "x-amz-meta-a": "b"},
                                "parts": 0}))
    again = restart(st)
    info = again.stat_object("bkt", "docs/a.html")
    assert (info.etag, info.headers["x-amz-meta-a"], info.path) == (
        "0123456789abcdef0123456789abcdef", "b", str(f))
    assert list(again.iter_keys("bkt")) == ["docs/a.html"]
    put(again, "docs/a.html/x", b"now possible")  # the new layout on the same bucket
    assert list(again.iter_keys("bkt")) == ["docs/a.html", "docs/a.html/x"]


def test_crash_when_a_spilled_key_becomes_a_file(st: Storage) -> None:
    """kill -9 between the rename onto the file and the removal of the spilled copy: the new
    version is the object, and the old one never comes back (not even after a delete)."""
    put(st, "a", b"file")
    put(st, "a/b", b"old, spilled")
    st.delete_object("bkt", "a")
    crash_at(st, "placed", lambda: put(st, "a/b", b"new, a file"))
    assert read(st, "a/b") == b"new, a file"
    assert list(st.iter_keys("bkt")) == ["a/b"]
    st = restart(st)
    assert read(st, "a/b") == b"new, a file"
    assert st.spilled_keys("bkt") == []
    assert [p for p in Path(st.spill_dir).rglob("*") if p.is_file()] == []
    st.delete_object("bkt", "a/b")
    assert list(st.iter_keys("bkt")) == []


@pytest.mark.parametrize("key", ["k", "folder/", "a/b"])
def test_crash_just_before_the_rename_keeps_the_old_version(st: Storage, key: str) -> None:
    put(st, "a", b"a file, so that a/b is spilled")
    put(st, key, b"old", {"content-type": "text/old"})
    w = st.begin_write()
    w.write(b"new")
    crash_at(st, "renaming", lambda: st.commit(
        w, "bkt", key, {"content-type": "text/new"},
        before_rename=lambda info, ident: st.checkpoint("renaming")))
    st = restart(st)
    info = st.stat_object("bkt", key)
    assert (read(st, key), info.headers) == (b"old", {"content-type": "text/old"})
    assert os.listdir(st.tmp_dir) == []


def test_listing_order_is_utf8_byte_order(st: Storage) -> None:
    keys = ["a-c", "a/b", "a0", "b", "é", "Z", "a/b/c-", "a/b-"]
    for k in keys:
        if k == "a/b":
            continue  # a/b is a directory here
        put(st, k, b"x")
    got = list(st.iter_keys("bkt"))
    want = sorted((k for k in keys if k != "a/b"), key=lambda k: k.encode("utf-8"))
    assert got == want


def test_listing_prefix_delimiter_and_paging(st: Storage) -> None:
    for k in ["photos/2024/a.jpg", "photos/2024/b.jpg", "photos/2025/c.jpg", "photos/x.jpg",
              "readme", "zz/1"]:
        put(st, k, b"x")
    r = st.list_objects("bkt", prefix="photos/", delimiter="/")
    assert [i.key for i in r.contents] == ["photos/x.jpg"]
    assert r.prefixes == ["photos/2024/", "photos/2025/"]
    r = st.list_objects("bkt", delimiter="/")
    assert r.prefixes == ["photos/", "zz/"] and [i.key for i in r.contents] == ["readme"]
    # paging one entry at a time visits everything once, in order
    seen: list[str] = []
    after = ""
    while True:
        r = st.list_objects("bkt", prefix="photos/", delimiter="/", after=after, max_keys=1)
        seen += r.prefixes + [i.key for i in r.contents]
        if not r.truncated:
            break
        assert r.next_after is not None
        after = r.next_after
    assert seen == ["photos/2024/", "photos/2025/", "photos/x.jpg"]
    assert [i.key for i in st.list_objects("bkt", prefix="pho").contents][:1] == \
        ["photos/2024/a.jpg"]
    assert [i.key for i in st.list_objects("bkt", after="photos/2025/c.jpg").contents] == \
        ["photos/x.jpg", "readme", "zz/1"]


def test_bucket_lifecycle(st: Storage) -> None:
    with pytest.raises(S3Error) as e:
        st.create_bucket("bkt", "alice")
    assert e.value.code == "BucketAlreadyOwnedByYou"
    with pytest.raises(S3Error) as e:
        st.create_bucket("bkt", "bob")
    assert e.value.code == "BucketAlreadyExists"
    for bad in ("ab", "UPPER", ".lbcdn", "a..b", "192.168.1.1", "-ab"):
        with pytest.raises(S3Error) as e:
            st.create_bucket(bad, "alice")
        assert e.value.code == "InvalidBucketName"
    put(st, "k", b"x")
    with pytest.raises(S3Error) as e:
        st.delete_bucket("bkt")
    assert e.value.code == "BucketNotEmpty"
    st.delete_object("bkt", "k")
    st.delete_bucket("bkt")
    assert [b.name for b in st.list_buckets()] == []


def test_multipart(st: Storage) -> None:
    up = st.create_upload("bkt", "big", {"content-type": "a/b"}, "alice")
    etags = []
    for n, data in ((1, b"aaaa"), (2, b"bbbb"), (3, b"c")):
        w = st.begin_write()
        w.write(data)
        etags.append((n, st.commit_part(w, up, n).etag))
    assert [p.number for p in st.list_parts(up)] == [1, 2, 3]
    assert [u.upload_id for u in st.list_uploads("bkt")] == [up.upload_id]
    with pytest.raises(S3Error) as e:
        st.complete_upload("bkt", "big", up.upload_id, [etags[1], etags[0]])
    assert e.value.code == "InvalidPartOrder"
    with pytest.raises(S3Error) as e:
        st.complete_upload("bkt", "big", up.upload_id, [(1, etags[0][1]), (2, "0" * 32)])
    assert e.value.code == "InvalidPart"
    with pytest.raises(S3Error) as e:
        st.complete_upload("bkt", "big", up.upload_id, [etags[2], (4, "x")])
    assert e.value.code in ("InvalidPart", "EntityTooSmall")
    info = st.complete_upload("bkt", "big", up.upload_id, etags)
    md5s = b"".join(hashlib.md5(d).digest() for d in (b"aaaa", b"bbbb", b"c"))
    assert info.etag == hashlib.md5(md5s).hexdigest() + "-3"
    assert Path(info.path).read_bytes() == b"aaaabbbbc"
    assert st.stat_object("bkt", "big").headers == {"content-type": "a/b"}
    with pytest.raises(S3Error) as e:
        st.get_upload("bkt", "big", up.upload_id)
    assert e.value.code == "NoSuchUpload"


def test_small_non_final_part_is_refused(tmp_path: Path) -> None:
    s = Storage(str(tmp_path / "r"), min_part_bytes=10)
    s.prepare()
    s.create_bucket("bkt", None)
    up = s.create_upload("bkt", "k", {}, None)
    tags = []
    for n in (1, 2):
        w = s.begin_write()
        w.write(b"tiny")
        tags.append((n, s.commit_part(w, up, n).etag))
    with pytest.raises(S3Error) as e:
        s.complete_upload("bkt", "k", up.upload_id, tags)
    assert e.value.code == "EntityTooSmall"


def test_upload_id_cannot_traverse(st: Storage) -> None:
    with pytest.raises(S3Error) as e:
        st.get_upload("bkt", "k", "../../meta")
    assert e.value.code == "NoSuchUpload"


def test_symlink_escaping_bucket_is_refused(st: Storage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    os.symlink(outside / "secret", Path(st.root, "bkt", "link"))
    os.symlink(outside, Path(st.root, "bkt", "dirlink"))
    for key in ("link", "dirlink/secret"):
        with pytest.raises(S3Error) as e:
            st.stat_object("bkt", key)
        assert e.value.code == "AccessDenied"
    with pytest.raises(S3Error):
        put(st, "dirlink/new", b"x")
    assert not (outside / "new").exists()
    assert list(st.iter_keys("bkt")) == []  # neither is listed


def test_symlink_inside_bucket_is_served(st: Storage) -> None:
    put(st, "real.txt", b"data")
    os.symlink("real.txt", Path(st.root, "bkt", "alias.txt"))
    assert st.stat_object("bkt", "alias.txt").size == 4
    assert list(st.iter_keys("bkt")) == ["alias.txt", "real.txt"]


def test_bucket_state_follows_changes_made_by_another_process(st: Storage) -> None:
    # Another worker is another Storage over the same root: what it saves is seen at once,
    # though this one remembers the state it read.
    other = Storage(st.root)
    assert st.bucket_state("bkt").website is None
    other.set_website("bkt", "<WebsiteConfiguration/>")
    assert st.bucket_state("bkt").website == "<WebsiteConfiguration/>"
    st.set_website("bkt", None)
    assert other.bucket_state("bkt").website is None
    assert st.bucket_state("bkt").owner == other.bucket_state("bkt").owner == "alice"


def test_bucket_directory_that_is_a_symlink(st: Storage, tmp_path: Path) -> None:
    # An operator may keep a bucket elsewhere and link it in: its objects resolve inside the
    # link's target, a symlink inside it that leaves the target is still refused, and a
    # dangling link (or one to a file) is no bucket.
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "sub").mkdir(parents=True)
    (elsewhere / "sub" / "k.txt").write_bytes(b"linked")
    (tmp_path / "secret").write_bytes(b"secret")
    os.symlink(tmp_path / "secret", elsewhere / "out")
    os.symlink(elsewhere, Path(st.root, "linked"))
    assert st.require_bucket("linked") == os.path.realpath(elsewhere)
    info = st.stat_object("linked", "sub/k.txt")
    assert (info.size, info.path) == (6, os.path.realpath(elsewhere / "sub" / "k.txt"))
    with pytest.raises(S3Error) as e:
        st.stat_object("linked", "out")
    assert e.value.code == "AccessDenied"
    os.symlink(tmp_path / "gone", Path(st.root, "dangling"))
    os.symlink(tmp_path / "secret", Path(st.root, "tofile"))
    for bucket in ("dangling", "tofile", "missing"):
        with pytest.raises(S3Error) as e:
            st.require_bucket(bucket)
        assert e.value.code == "NoSuchBucket"


def test_metadata_and_temp_areas_are_not_buckets(st: Storage) -> None:
    for name in (".lbcdn", "tmp"):
        with pytest.raises(S3Error) as e:
            st.stat_object(name, "meta")
        assert e.value.code == "NoSuchBucket"
    assert ".lbcdn" not in [b.name for b in st.list_buckets()]


def test_copy(st: Storage) -> None:
    put(st, "src", b"payload", {"content-type": "text/a"})
    info = st.copy_object("bkt", "src", "bkt", "dst", None)
    assert info.etag == hashlib.md5(b"payload").hexdigest()
    assert st.stat_object("bkt", "dst").headers == {"content-type": "text/a"}
    st.copy_object("bkt", "src", "bkt", "dst2", {"content-type": "text/b"})
    assert st.stat_object("bkt", "dst2").content_type == "text/b"


def test_website_state(st: Storage) -> None:
    st.set_website("bkt", "<x/>")
    assert st.bucket_state("bkt").website == "<x/>"
    assert st.bucket_state("bkt").owner == "alice"
    st.set_website("bkt", None)
    assert st.bucket_state("bkt").website is None


# -- crashes: a forked child runs the operation and dies (os._exit, as kill -9: no cleanup
# runs) at one step of the protocol; a new Storage over the same directory is the restart.

class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def crash_at(st: Storage, step: str, action: Callable[[], object]) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            st.checkpoint = lambda s: os._exit(9) if s == step else None
            action()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9, f"the child never reached {step!r}"


def restart(st: Storage, clock: Callable[[], float] | None = None) -> Storage:
    fresh = Storage(st.root, min_part_bytes=st.min_part_bytes, **(
        {"clock": clock} if clock else {}))
    fresh.prepare()
    return fresh


PARTS = (b"aaaa", b"bbbb", b"c")
WHOLE = b"".join(PARTS)
MP_ETAG = hashlib.md5(b"".join(hashlib.md5(d).digest() for d in PARTS)).hexdigest() + "-3"


def upload_parts(st: Storage, key: str = "big") -> tuple[str, list[tuple[int, str]]]:
    up = st.create_upload("bkt", key, {"content-type": "a/b"}, "alice")
    tags = []
    for n, data in enumerate(PARTS, 1):
        w = st.begin_write()
        w.write(data)
        tags.append((n, '"' + st.commit_part(w, up, n).etag + '"'))
    return up.upload_id, tags


def leftovers(st: Storage) -> list[str]:
    """What a finished multipart upload may not leave behind."""
    return os.listdir(st.tmp_dir) + os.listdir(st.uploads_dir)


def test_completion_recovery_decisions() -> None:
    assert completion_recovery(True, True, 0) == "roll_forward"
    assert completion_recovery(True, False, 0) == "roll_back"
    assert completion_recovery(True, False, COMPLETED_TTL_S * 2) == "roll_back"
    assert completion_recovery(False, False, 0) == "keep"
    assert completion_recovery(False, False, COMPLETED_TTL_S) == "expire"


@pytest.mark.parametrize("key", ["big", "big/"])  # a file, a spilled key
@pytest.mark.parametrize("step", ["assembled", "recorded"])
def test_crash_before_commit_point_keeps_upload_whole(st: Storage, step: str, key: str) -> None:
    put(st, key, b"old version")
    uid, tags = upload_parts(st, key)
    crash_at(st, step, lambda: st.complete_upload("bkt", key, uid, tags))
    st = restart(st)
    assert read(st, key) == b"old version"
    assert [u.upload_id for u in st.list_uploads("bkt")] == [uid]
    up = st.get_upload("bkt", key, uid)
    assert [(p.number, f'"{p.etag}"') for p in st.list_parts(up)] == tags
    assert os.listdir(st.tmp_dir) == [] and os.listdir(st.completed_dir) == []
    info = st.complete_upload("bkt", key, uid, tags)  # the retry completes it
    assert info.etag == MP_ETAG and Path(info.path).read_bytes() == WHOLE
    assert st.stat_object("bkt", key).headers == {"content-type": "a/b"}
    assert leftovers(st) == []


@pytest.mark.parametrize("key", ["big", "big/"])
@pytest.mark.parametrize("step", ["committed", "detached"])
def test_crash_after_commit_point_rolls_forward(st: Storage, step: str, key: str) -> None:
    uid, tags = upload_parts(st, key)
    crash_at(st, step, lambda: st.complete_upload("bkt", key, uid, tags))
    st = restart(st)
    info = st.stat_object("bkt", key)
    assert (info.etag, info.parts, info.headers) == (MP_ETAG, 3, {"content-type": "a/b"})
    assert Path(info.path).read_bytes() == WHOLE
    assert st.list_uploads("bkt") == [] and leftovers(st) == []
    again = st.complete_upload("bkt", key, uid, tags)  # the retry succeeds, same ETag
    assert (again.key, again.etag, again.size) == (key, MP_ETAG, len(WHOLE))


def test_retried_complete_answers_from_record_until_it_expires(tmp_path: Path) -> None:
    clock = Clock()
    st = Storage(str(tmp_path / "root"), min_part_bytes=4, clock=clock)
    st.prepare()
    st.create_bucket("bkt", "alice")
    uid, tags = upload_parts(st)
    first = st.complete_upload("bkt", "big", uid, tags)
    assert st.complete_upload("bkt", "big", uid, [(n, e.strip('"')) for n, e in tags]) == first
    for other in (tags[:2], [(1, tags[0][1]), (2, tags[1][1]), (3, '"' + "0" * 32 + '"')]):
        with pytest.raises(S3Error) as e:  # another part list is not a retry
            st.complete_upload("bkt", "big", uid, other)
        assert e.value.code == "NoSuchUpload"
    with pytest.raises(S3Error) as e:
        st.complete_upload("bkt", "other-key", uid, tags)
    assert e.value.code == "NoSuchUpload"
    with pytest.raises(S3Error) as e:  # parts, list and abort: the upload is gone
        st.get_upload("bkt", "big", uid)
    assert e.value.code == "NoSuchUpload"
    # kept across a restart, dropped at start once expired
    clock.now += COMPLETED_TTL_S - 1
    st = restart(st, clock)
    assert st.complete_upload("bkt", "big", uid, tags).etag == MP_ETAG
    clock.now += 2
    restart(st, clock)
    assert os.listdir(st.completed_dir) == []
    with pytest.raises(S3Error) as e:
        st.complete_upload("bkt", "big", uid, tags)
    assert e.value.code == "NoSuchUpload"


def test_expired_records_are_swept_by_a_later_complete(tmp_path: Path) -> None:
    clock = Clock()
    st = Storage(str(tmp_path / "root"), min_part_bytes=4, clock=clock)
    st.prepare()
    st.create_bucket("bkt", "alice")
    uid, tags = upload_parts(st, "one")
    st.complete_upload("bkt", "one", uid, tags)
    clock.now += COMPLETED_TTL_S
    uid2, tags2 = upload_parts(st, "two")
    st.complete_upload("bkt", "two", uid2, tags2)
    assert os.listdir(st.completed_dir) == [uid2 + ".json"]


def test_failure_before_commit_point_rolls_back_in_process(st: Storage) -> None:
    uid, tags = upload_parts(st)

    def fail(step: str) -> None:
        if step == "recorded":
            raise OSError("disk full")

    st.checkpoint = fail
    with pytest.raises(OSError):
        st.complete_upload("bkt", "big", uid, tags)
    assert os.listdir(st.completed_dir) == [] and os.listdir(st.tmp_dir) == []
    with pytest.raises(S3Error):
        st.stat_object("bkt", "big")
    st.checkpoint = lambda step: None
    assert st.complete_upload("bkt", "big", uid, tags).etag == MP_ETAG
    assert leftovers(st) == []


def test_failure_after_commit_point_is_finished_by_the_retry(st: Storage) -> None:
    uid, tags = upload_parts(st)

    def fail(step: str) -> None:
        if step == "committed":
            raise OSError("I/O error")

    st.checkpoint = fail
    with pytest.raises(OSError):
        st.complete_upload("bkt", "big", uid, tags)
    st.checkpoint = lambda step: None
    assert st.complete_upload("bkt", "big", uid, tags).etag == MP_ETAG
    assert st.list_uploads("bkt") == [] and leftovers(st) == []


def test_concurrent_completes_of_one_upload_agree(st: Storage) -> None:
    uid, tags = upload_parts(st)
    results: list[ObjectInfo | BaseException] = []

    def complete() -> None:
        try:
            results.append(st.complete_upload("bkt", "big", uid, tags))
        except BaseException as e:
            results.append(e)

    threads = [threading.Thread(target=complete) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert [r.etag for r in results if isinstance(r, ObjectInfo)] == [MP_ETAG] * 4, results
    assert Path(st.root, "bkt", "big").read_bytes() == WHOLE
    assert leftovers(st) == []


def test_crash_while_replacing_a_part_keeps_the_old_part(st: Storage) -> None:
    uid, tags = upload_parts(st)
    up = st.get_upload("bkt", "big", uid)

    def replace_part_one() -> None:
        w = st.begin_write()
        w.write(b"AAAA")
        st.commit_part(w, up, 1)

    crash_at(st, "part_data", replace_part_one)
    st = restart(st)
    assert [(p.number, f'"{p.etag}"') for p in st.list_parts(up)] == tags
    assert Path(st.complete_upload("bkt", "big", uid, tags).path).read_bytes() == WHOLE


def test_replaced_part_is_the_one_completed(st: Storage) -> None:
    uid, tags = upload_parts(st)
    up = st.get_upload("bkt", "big", uid)
    w = st.begin_write()
    w.write(b"AAAA")
    new = st.commit_part(w, up, 1)
    assert sorted(os.listdir(st._upload_dir(uid))) == sorted(
        ["upload.json"] + [f"part-{n:05d}.json" for n in (1, 2, 3)]
        + [f"part-{n:05d}-{e.strip(chr(34))}" for n, e in [(1, new.etag), *tags[1:]]])
    info = st.complete_upload("bkt", "big", uid, [(1, new.etag), *tags[1:]])
    assert Path(info.path).read_bytes() == b"AAAAbbbbc"


def test_crash_during_abort_leaves_no_half_upload(st: Storage) -> None:
    uid, _ = upload_parts(st)
    up = st.get_upload("bkt", "big", uid)
    crash_at(st, "detached", lambda: st.abort_upload(up))
    st = restart(st)
    assert st.list_uploads("bkt") == [] and leftovers(st) == []
    with pytest.raises(S3Error) as e:
        st.get_upload("bkt", "big", uid)
    assert e.value.code == "NoSuchUpload"


def test_parts_of_an_earlier_version_survive_the_upgrade(st: Storage) -> None:
    # Before parts were named by ETag, a part's data was `part-<n>` beside `part-<n>.json`.
    uid, tags = upload_parts(st)
    d = st._upload_dir(uid)
    for n, etag in tags:
        os.rename(os.path.join(d, f"part-{n:05d}-{etag.strip(chr(34))}"),
                  os.path.join(d, f"part-{n:05d}"))
    st = restart(st)
    up = st.get_upload("bkt", "big", uid)
    assert [(p.number, f'"{p.etag}"') for p in st.list_parts(up)] == tags
    assert Path(st.complete_upload("bkt", "big", uid, tags).path).read_bytes() == WHOLE


@pytest.mark.parametrize("key", ["lock", "dir/lock/"])  # a file key and a spilled one
def test_racing_conditional_commits_one_wins(st: Storage, key: str) -> None:
    """Threads commit the same key with If-None-Match: * (then If-Match on one ETag) at
    once: exactly one each time, and every writer's metadata survives the others' clean-up."""
    from lbcdn.bucket.httpsem import WriteCondition
    for cond in (WriteCondition(if_none_match=True), None):
        if cond is None:
            cond = WriteCondition(if_match=st.stat_object("bkt", key).etag)
        barrier = threading.Barrier(8)
        won: list[bytes] = []
        lost: list[str] = []

        def write(i: int, condition: WriteCondition = cond) -> None:
            w = st.begin_write()
            # bodies unlike the first round's: a writer whose body (so ETag) equals the one its
            # If-Match names rightly leaves that ETag for the next writer to match too
            body = f"writer {i}{'+' if condition.if_match else ''}".encode()
            w.write(body)
            barrier.wait()
            try:
                st.commit(w, "bkt", key, {"x-amz-meta-i": str(i)}, condition=condition)
                won.append(body)
            except S3Error as e:
                lost.append(e.code)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and lost == ["PreconditionFailed"] * 7
        assert read(st, key) == won[0]
        st._meta_cache.clear()
        assert st.stat_object("bkt", key).headers == {
            "x-amz-meta-i": won[0].decode()[7:].rstrip("+")}


def test_upload_ids_never_begin_with_a_dash() -> None:
    """`aws s3api upload-part --upload-id -X...` is refused by the CLI's argument parser: one
    id in 64 began with "-" (a CI run failed on it)."""
    ids = [new_upload_id() for _ in range(3000)]
    assert not [i for i in ids if i.startswith("-")]
    assert len(set(ids)) == len(ids) and all(len(i) == 48 for i in ids)
