"""Buckets on disk: a bucket is a directory under the root, an object is a file in it.

Layout (everything lbcdn owns lives in `<root>/.lbcdn/`, which no key can reach because a
bucket name cannot start with a dot and keys are resolved inside their bucket directory):

    <root>/<bucket>/<key>                          object data (files dropped in by hand too)
    <root>/.lbcdn/spill/<bucket>/<h2>/<h>          data of a key that cannot be a file there
    <root>/.lbcdn/meta/<bucket>/<h2>/<h>/<ino>.json metadata of key (h = sha256 of the key)
    <root>/.lbcdn/buckets/<bucket>.json            owner, creation time, website configuration
    <root>/.lbcdn/uploads/<id>/                    multipart uploads in progress
    <root>/.lbcdn/uploads/<id>/part-<n>.json       part n: its ETag (names its data) and size
    <root>/.lbcdn/uploads/<id>/part-<n>-<etag>     part n's data
    <root>/.lbcdn/completed/<id>.json              completion record of an upload
    <root>/.lbcdn/tmp/                             temporary files (emptied at start)
    <root>/.lbcdn/versions/, versioning/          noncurrent versions (versions.py)
    <root>/.lbcdn/lifecycle/, tags/               lifecycle rules, object tags (lifecycle.py)

Rules:
- Which keys are files and which are spilled is decided in layout.py (and documented there);
  this class is the only place that turns keys into paths. A key is read from its file first,
  then from the spill area; a spilled copy is believed only with its metadata, and a commit
  drops the previous version's metadata before removing its data; a start removes spilled
  copies left without metadata or shadowed by the key's file (a crash between the two), so
  the copy a commit replaced never comes back.
- Writes are atomic: data goes to a temp file, is fsynced, and its metadata is written (temp,
  fsync, rename) under the temp file's inode number *before* the data is renamed into place.
  Metadata is only believed when (size, mtime_ns, inode) of the file match what it records,
  so a crash between the two renames leaves the old object with its old metadata, and a file
  changed by hand is treated as a new hand-dropped file.
- ETags: MD5 of the content for single PUTs and copies, `md5-of-md5s-N` for multipart; for a
  hand-dropped file computed once and stored (the same identity check invalidates it).
- Every path is resolved (symlinks included) and must stay inside the bucket directory.
- All methods here block (disk I/O); the async callers run them in a thread, except
  `PendingWrite.write`, which only appends to the page cache.

Multipart uploads survive a kill -9 at any point (the names in quotes are the `checkpoint`
steps, where the tests crash on purpose):
- An upload is created in tmp/ and renamed into uploads/, so it exists whole or not at all.
- UploadPart renames the part's data to `part-<n>-<etag>` ("part_data"), then atomically
  replaces `part-<n>.json`; that replace is the commit point. A part is believed only when the
  data its JSON names exists, so a crash leaves the previous version of the part (if any).
- CompleteMultipartUpload, in this order:
  1. check the part list, assemble the parts into a temp file in tmp/ ("assembled");
  2. fsync it, write the object's metadata under its inode (as any PUT);
  3. write the completion record `completed/<id>.json` (bucket, key, part list, ETag, and the
     identity of the assembled file) and fsync its directory ("recorded");
  4. rename the file onto the key and fsync the directory: the commit point ("committed");
  5. move `uploads/<id>` into tmp/ in one rename ("detached"), then delete it.
  Recovery (`_settle`, at start for every record, and before any Complete of that upload):
  a record whose upload directory is still there is rolled forward (step 5) when the object
  at its key has the recorded identity, else rolled back (record deleted: the upload and all
  its parts are intact and the assembled temp file goes with tmp/). A record without its
  upload is a finished completion: a retried Complete with the same part list answers from
  it, as S3 does, until it is COMPLETED_TTL_S old; expired records are swept at start and,
  at most every _SWEEP_EVERY_S, after a Complete.
- Aborts and deleted buckets move the upload directory into tmp/ in one rename, too, so no
  upload is ever listed with some of its parts gone.
- Parts, Complete and Abort of one upload take that upload's lock, so a Complete never sees a
  part half-replaced and two Completes of one upload run one after the other (the second
  answers from the record).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import hashlib
import heapq
import itertools
import json
import mimetypes
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from lbcdn.bucket import layout
from lbcdn.bucket.checksums import (ALGORITHM_HEADER, COMPOSITE, TYPE_HEADER, check_claimed,
                                    is_checksum_header, multipart_checksum)
from lbcdn.bucket.config import valid_bucket_name
from lbcdn.bucket.errors import S3Error
from lbcdn.bucket.httpsem import WriteCondition, check_write
from lbcdn.bucket.keys import MAX_KEY_BYTES, check_key
from lbcdn.bucket.payload import Checksum

# Headers S3 stores with an object and returns on GET/HEAD (plus every x-amz-meta-*).
STORED_HEADERS = ("content-type", "cache-control", "content-encoding", "content-disposition",
                  "content-language", "expires", "x-amz-website-redirect-location")
_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{16,128}")
_COPY_CHUNK = 1 << 20
MAX_PARTS = 10000
# S3 answers a repeated Complete of a completed upload with success again (observed by its
# users, not documented, for how long unsaid); a client retries within minutes.
COMPLETED_TTL_S = 24 * 3600.0
_SWEEP_EVERY_S = 600.0

Identity = tuple[int, int, int]  # (size, mtime_ns, inode)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    path: str                       # real path of the data file
    size: int
    mtime_ns: int
    etag: str                       # without quotes
    headers: dict[str, str]         # stored headers (STORED_HEADERS, x-amz-meta-*), lower-case
    parts: int = 0                  # number of parts for multipart objects
    version_id: str = "null"        # "null": written while the bucket was not versioning
    part_sizes: tuple[int, ...] = ()  # their sizes (objects completed before: unknown)

    @property
    def last_modified(self) -> float:
        return self.mtime_ns / 1e9

    @property
    def content_type(self) -> str:
        ct = self.headers.get("content-type")
        if ct:
            return ct
        guessed, _ = mimetypes.guess_type(self.key, strict=False)
        return guessed or "application/octet-stream"


@dataclass(frozen=True)
class BucketState:
    name: str
    created: float
    owner: str | None = None        # user name
    website: str | None = None      # stored PutBucketWebsite XML


@dataclass(frozen=True)
class ListResult:
    contents: list[ObjectInfo]
    prefixes: list[str]
    truncated: bool
    next_after: str | None          # resume point (exclusive) when truncated


@dataclass(frozen=True)
class UploadInfo:
    upload_id: str
    bucket: str
    key: str
    initiated: float
    headers: dict[str, str]
    owner: str | None


@dataclass(frozen=True)
class PartInfo:
    number: int
    etag: str
    size: int
    last_modified: float
    checksums: dict[str, str] = field(default_factory=dict)  # algorithm -> base64


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _inside(path: str, base: str) -> bool:
    return path == base or path.startswith(base + os.sep)


def _write_json_atomic(path: str, data: Any, tmp_dir: str) -> None:
    fd, tmp = _mkstemp(tmp_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def completion_recovery(upload_present: bool, object_committed: bool, age_s: float) -> str:
    """What to do with a completion record (see the module docstring): "roll_forward" (the
    object is in place: drop the upload), "roll_back" (it is not: drop the record, the upload
    stays), "keep" (a finished completion, still answered to retries) or "expire"."""
    if upload_present:
        return "roll_forward" if object_committed else "roll_back"
    return "expire" if age_s >= COMPLETED_TTL_S else "keep"


def _part_data(number: int, etag: str) -> str:
    return f"part-{number:05d}-{etag}"


def _name_part_data(upload_dir: str) -> None:
    """Rename the data of parts uploaded by an earlier version (`part-<n>`, no ETag in its
    name) to `part-<n>-<etag>`, so that an upload in progress across an upgrade keeps its
    parts. A part whose record cannot be read was never committed, and is left to Abort."""
    with contextlib.suppress(OSError):
        for name in os.listdir(upload_dir):
            if not re.fullmatch(r"part-\d{5}", name):
                continue
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                with open(os.path.join(upload_dir, name + ".json"), encoding="utf-8") as f:
                    etag = str(json.load(f)["etag"])
                os.rename(os.path.join(upload_dir, name),
                          os.path.join(upload_dir, _part_data(int(name[5:]), etag)))


def _no_checkpoint(step: str) -> None:
    pass


@contextlib.contextmanager
def _null_version(bucket: str, key: str, restore: str | None) -> Iterator[str]:
    yield "null"


def _mkstemp(tmp_dir: str) -> tuple[int, str]:
    path = os.path.join(tmp_dir, secrets.token_hex(12))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    return fd, path


class PendingWrite:
    """An object (or part) being received: appended to a temp file while its MD5 is computed.
    Nothing is visible until `commit`; `abort` (or a crash) leaves only a temp file behind."""

    def __init__(self, storage: Storage, *, hash_md5: bool = True) -> None:
        self.storage = storage
        self.fd, self.tmp_path = _mkstemp(storage.tmp_dir)
        # Off when the body reader hashes already; then the caller sets `etag`.
        self.md5 = hashlib.md5() if hash_md5 else None
        self.etag: str | None = None
        # Verified x-amz-checksum-* values of the body (algorithm -> base64), set by the caller.
        self.checksums: dict[str, str] = {}
        self.size = 0
        self.closed = False

    def digest(self) -> str:
        if self.etag is not None:
            return self.etag
        if self.md5 is None:
            raise ValueError("no MD5 computed and no ETag given")
        return self.md5.hexdigest()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        if self.md5 is not None:
            self.md5.update(view)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)

    def abort(self) -> None:
        """Drop the temp file (also after `_sync_close`, when a commit failed late)."""
        if not self.closed:
            self.closed = True
            os.close(self.fd)
        with contextlib.suppress(OSError):
            os.unlink(self.tmp_path)

    def _sync_close(self) -> os.stat_result:
        os.fsync(self.fd)
        st = os.fstat(self.fd)
        os.close(self.fd)
        self.closed = True
        return st


class Storage:
    """The bucket directories under `root` (see the module docstring for the layout)."""

    def __init__(self, root: str, *, min_part_bytes: int = 5 << 20,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = os.path.realpath(root)
        self.area = os.path.join(self.root, ".lbcdn")
        self.tmp_dir = os.path.join(self.area, "tmp")
        self.meta_dir = os.path.join(self.area, "meta")
        self.spill_dir = os.path.join(self.area, "spill")
        self.state_dir = os.path.join(self.area, "buckets")
        self.uploads_dir = os.path.join(self.area, "uploads")
        self.completed_dir = os.path.join(self.area, "completed")
        self.min_part_bytes = min_part_bytes
        self.clock = clock
        # Called with the name of each step of the multipart protocol as it is passed; the
        # tests make it crash the process there.
        self.checkpoint: Callable[[str], None] = _no_checkpoint
        # Wraps every commit: yields the new version's id after keeping the version it
        # replaces (versions.py installs it; `restore` is the id of a version made current
        # again). Without versioning every object is the "null" version.
        self.version_hook: Callable[[str, str, str | None],
                                    contextlib.AbstractContextManager[str]] = _null_version
        # In-memory copy of metadata by data path; believed only while the identity matches.
        self._meta_cache: dict[str, tuple[Identity, ObjectInfo]] = {}
        # Bucket state files by bucket name, believed only while the identity matches.
        self._state_cache: dict[str, tuple[Identity, BucketState]] = {}
        # Per-upload and per-key locks with their number of holders and waiters. The S3 API
        # runs in one process (the control process with --workers), so these are enough.
        self._locks: dict[str, tuple[threading.Lock, int]] = {}
        self._locks_guard = threading.Lock()
        self._last_sweep = 0.0

    def prepare(self) -> None:
        """Create the layout, settle the completions a crash interrupted, drop expired
        completion records and the temp files a crash left behind."""
        for d in (self.root, self.tmp_dir, self.meta_dir, self.spill_dir, self.state_dir,
                  self.uploads_dir, self.completed_dir):
            os.makedirs(d, exist_ok=True)
        for name in os.listdir(self.completed_dir):
            if name.endswith(".json") and _UPLOAD_ID.fullmatch(name[:-5]):
                self._settle(name[:-5])
        self._last_sweep = self.clock()
        for name in os.listdir(self.uploads_dir):
            if _UPLOAD_ID.fullmatch(name):
                _name_part_data(os.path.join(self.uploads_dir, name))
        for name in os.listdir(self.spill_dir):
            if self.bucket_exists(name):
                self._settle_spill(name)
        for name in os.listdir(self.tmp_dir):
            path = os.path.join(self.tmp_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)  # a discarded upload
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    # -- buckets ---------------------------------------------------------------------------

    def bucket_dir(self, bucket: str) -> str:
        if not valid_bucket_name(bucket):
            raise S3Error("NoSuchBucket", resource=f"/{bucket}", extra={"BucketName": bucket})
        return os.path.join(self.root, bucket)

    def bucket_exists(self, bucket: str) -> bool:
        return valid_bucket_name(bucket) and os.path.isdir(os.path.join(self.root, bucket))

    def require_bucket(self, bucket: str) -> str:
        """The bucket's real directory. On every request, twice: `self.root` is real already,
        so only a bucket directory that is itself a symlink needs `realpath` (which lstats
        every component from / in Python: a third of a 1 KiB GET's CPU)."""
        path = self.bucket_dir(bucket)
        if os.path.islink(path):
            path = os.path.realpath(path)
        if not os.path.isdir(path):
            raise S3Error("NoSuchBucket", resource=f"/{bucket}", extra={"BucketName": bucket})
        return path

    def list_buckets(self) -> list[BucketState]:
        out = []
        for name in sorted(os.listdir(self.root)):
            if valid_bucket_name(name) and os.path.isdir(os.path.join(self.root, name)):
                out.append(self.bucket_state(name))
        return out

    def bucket_state(self, bucket: str) -> BucketState:
        path = self.require_bucket(bucket)
        state_path = os.path.join(self.state_dir, bucket + ".json")
        try:
            # Read on every signed request (the owner decides access): decoded again only when
            # the file was replaced (every save is a rename: a new inode), here or by another
            # worker. Replaced between the stat and the open, the new text is kept under the
            # old identity and read once more next time: never stale.
            st = os.stat(state_path)
            ident: Identity = (st.st_size, st.st_mtime_ns, st.st_ino)
            cached = self._state_cache.get(bucket)
            if cached is not None and cached[0] == ident:
                return cached[1]
            with open(state_path, encoding="utf-8") as f:
                data = json.load(f)
            state = BucketState(bucket, float(data["created"]), data.get("owner"),
                                data.get("website"))
        except (OSError, ValueError, KeyError):
            return BucketState(bucket, os.stat(path).st_mtime)
        if len(self._state_cache) > 10000:
            self._state_cache.clear()
        self._state_cache[bucket] = (ident, state)
        return state

    def _save_state(self, state: BucketState) -> None:
        _write_json_atomic(os.path.join(self.state_dir, state.name + ".json"),
                           {"created": state.created, "owner": state.owner,
                            "website": state.website}, self.tmp_dir)

    def create_bucket(self, bucket: str, owner: str | None) -> None:
        if not valid_bucket_name(bucket):
            raise S3Error("InvalidBucketName", resource=f"/{bucket}",
                          extra={"BucketName": bucket})
        path = os.path.join(self.root, bucket)
        try:
            os.mkdir(path)
        except FileExistsError:
            existing = self.bucket_state(bucket)
            if existing.owner is None or existing.owner == owner:
                raise S3Error("BucketAlreadyOwnedByYou", resource=f"/{bucket}",
                              extra={"BucketName": bucket}) from None
            raise S3Error("BucketAlreadyExists", "The requested bucket name is not available.",
                          resource=f"/{bucket}", extra={"BucketName": bucket}) from None
        self._save_state(BucketState(bucket, time.time(), owner))
        _fsync_dir(self.root)

    def ensure_bucket(self, bucket: str, owner: str | None) -> None:
        """Create a configured bucket at start when missing (idempotent)."""
        if not self.bucket_exists(bucket):
            self.create_bucket(bucket, owner)

    def delete_bucket(self, bucket: str) -> None:
        path = self.require_bucket(bucket)
        for _ in self.iter_keys(bucket):
            raise S3Error("BucketNotEmpty", resource=f"/{bucket}", extra={"BucketName": bucket})
        shutil.rmtree(path)  # only empty directories can be left
        shutil.rmtree(os.path.join(self.meta_dir, bucket), ignore_errors=True)
        shutil.rmtree(os.path.join(self.spill_dir, bucket), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.state_dir, bucket + ".json"))
        for upload in self.list_uploads(bucket):
            with self._lock(upload.upload_id):
                self._discard_upload(upload.upload_id)

    def set_website(self, bucket: str, xml: str | None) -> None:
        state = self.bucket_state(bucket)
        self._save_state(BucketState(state.name, state.created, state.owner, xml))

    # -- paths -----------------------------------------------------------------------------

    def _locate(self, bucket: str, key: str) -> tuple[str, str | None, str]:
        """(bucket real dir, real path of the key's file or None when the key cannot be a
        file, path of its place in the spill area); AccessDenied when the file path leaves
        the bucket (a symlink)."""
        check_key(key)
        base = self.require_bucket(bucket)
        rel = layout.file_path(key)
        path: str | None = None
        if rel is not None:
            path = os.path.realpath(os.path.join(base, rel))
            if not _inside(path, base) or path == base:
                raise S3Error("AccessDenied", "The key resolves outside its bucket.",
                              resource=f"/{bucket}/{key}")
        return base, path, os.path.join(self.spill_dir, bucket, layout.spill_path(key))

    def _meta_key_dir(self, bucket: str, key: str) -> str:
        return os.path.join(self.meta_dir, bucket, layout.spill_path(key))

    # -- objects ---------------------------------------------------------------------------

    def stat_object(self, bucket: str, key: str) -> ObjectInfo:
        """The object's info (ETag computed and stored on first sight for a file); NoSuchKey
        when neither its file nor its spilled copy exists (see layout.py)."""
        _, path, spill = self._locate(bucket, key)
        if path is not None:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                st = os.stat(path)
                info = self._info(bucket, key, path, st, adopt=True) \
                    if stat.S_ISREG(st.st_mode) else None
                if info is not None:
                    return info
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            st = os.stat(spill)
            if stat.S_ISREG(st.st_mode):
                info = self._info(bucket, key, spill, st, adopt=False)
                if info is not None:
                    return info
        raise S3Error("NoSuchKey", resource=f"/{bucket}/{key}", extra={"Key": key})

    def _stored_info(self, bucket: str, key: str | None, path: str,
                     st: os.stat_result) -> ObjectInfo | None:
        """The metadata written for exactly this version of the data at `path`, if any, of
        `key` (None: of the key it names, for a spilled copy found by listing its area)."""
        ident: Identity = (st.st_size, st.st_mtime_ns, st.st_ino)
        cached = self._meta_cache.get(path)
        if cached is not None and cached[0] == ident and key in (None, cached[1].key):
            return cached[1]
        meta_dir = self._meta_key_dir(bucket, key) if key is not None else os.path.join(
            self.meta_dir, bucket, os.path.relpath(path, os.path.join(self.spill_dir, bucket)))
        try:
            with open(os.path.join(meta_dir, f"{st.st_ino}.json"), encoding="utf-8") as f:
                data = json.load(f)
            stored = str(data["key"])
            if tuple(data["identity"]) != ident or (key is not None and stored != key):
                return None
            info = ObjectInfo(stored, path, st.st_size, st.st_mtime_ns, data["etag"],
                              dict(data.get("headers", {})), int(data.get("parts", 0)),
                              str(data.get("version_id", "null")),
                              tuple(int(n) for n in data.get("part_sizes", ())))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self._remember(path, ident, info)
        return info

    def _remember(self, path: str, ident: Identity, info: ObjectInfo) -> None:
        if len(self._meta_cache) > 50000:
            self._meta_cache.clear()
        self._meta_cache[path] = (ident, info)

    def _info(self, bucket: str, key: str, path: str, st: os.stat_result, *,
              adopt: bool) -> ObjectInfo | None:
        """Info of the data at `path`. Without metadata, a file (`adopt`) is a hand-dropped
        one, hashed once; a spilled copy is a superseded one (not an object)."""
        info = self._stored_info(bucket, key, path, st)
        if info is not None or not adopt:
            return info
        # A hand-dropped (or hand-changed) file: hash it once and remember the result.
        ident: Identity = (st.st_size, st.st_mtime_ns, st.st_ino)
        md5 = hashlib.md5()
        with open(path, "rb") as f:
            while chunk := f.read(_COPY_CHUNK):
                md5.update(chunk)
        info = ObjectInfo(key, path, st.st_size, st.st_mtime_ns, md5.hexdigest(), {})
        with contextlib.suppress(OSError):
            self._write_meta(bucket, key, ident, info)
        self._remember(path, ident, info)
        return info

    def _write_meta(self, bucket: str, key: str, ident: Identity, info: ObjectInfo) -> None:
        _write_json_atomic(os.path.join(self._meta_key_dir(bucket, key), f"{ident[2]}.json"),
                           {"key": key, "identity": list(ident), "etag": info.etag,
                            "headers": info.headers, "parts": info.parts,
                            "version_id": info.version_id,
                            "part_sizes": list(info.part_sizes)}, self.tmp_dir)

    def begin_write(self, *, hash_md5: bool = True) -> PendingWrite:
        return PendingWrite(self, hash_md5=hash_md5)

    def _file_target(self, base: str, path: str | None) -> str | None:
        """`path` when the key's file can be put there now (its directories made), else None:
        the key is spilled (layout.py)."""
        if path is None:
            return None
        parent = os.path.dirname(path)
        try:
            os.makedirs(parent, exist_ok=True)
        except (NotADirectoryError, FileExistsError):
            return None  # a prefix of the key is a file
        if not _inside(os.path.realpath(parent), base):
            raise S3Error("AccessDenied", "The key resolves outside its bucket.")
        return None if os.path.isdir(path) else path

    def commit(self, pending: PendingWrite, bucket: str, key: str, headers: dict[str, str],
               *, etag: str | None = None, part_sizes: tuple[int, ...] = (),
               before_rename: Callable[[ObjectInfo, Identity], None] | None = None,
               condition: WriteCondition | None = None,
               restore: str | None = None) -> ObjectInfo:
        """Make `pending` the object at `key`: fsync, metadata under the new inode, rename
        onto the key's file or, when it cannot be one, its spill place (layout.py).
        `before_rename` runs just before the rename (a Complete writes its record there).
        `condition` (If-Match / If-None-Match) is checked against the current object under
        the key's lock, which every commit and delete of the key holds from that check until
        the old version's metadata is gone: of racing conditional writes exactly one wins.
        `version_hook` around it all keeps the replaced version (`restore`: see there)."""
        with self.version_hook(bucket, key, restore) as version_id:
            return self._commit(pending, bucket, key, headers, etag, part_sizes, before_rename,
                                condition, version_id)

    def _commit(self, pending: PendingWrite, bucket: str, key: str, headers: dict[str, str],
                etag: str | None, part_sizes: tuple[int, ...],
                before_rename: Callable[[ObjectInfo, Identity], None] | None,
                condition: WriteCondition | None, version_id: str) -> ObjectInfo:
        orphan_meta: str | None = None  # the new version's metadata, until the rename
        try:
            base, path, spill = self._locate(bucket, key)
            st = pending._sync_close()
            ident: Identity = (st.st_size, st.st_mtime_ns, st.st_ino)
            with self._key_lock(bucket, key):
                if condition is not None:
                    self._check_condition(bucket, key, condition)
                # Under the lock: a concurrent commit's clean-up would take it for stale.
                orphan_meta = os.path.join(self._meta_key_dir(bucket, key),
                                           f"{st.st_ino}.json")
                info = ObjectInfo(key, "", st.st_size, st.st_mtime_ns,
                                  etag or pending.digest(), dict(headers), len(part_sizes),
                                  version_id, part_sizes)
                self._write_meta(bucket, key, ident, info)
                placed = self._place(pending, base, path, spill, info, ident, before_rename)
                orphan_meta = None
                info = replace(info, path=placed)
                # The old version's metadata goes first: a spilled copy without it is no
                # object, so a crash before the unlink below cannot bring an old version back.
                self._drop_other_meta(bucket, key, keep=st.st_ino)
                if placed != spill:
                    with contextlib.suppress(OSError):
                        os.unlink(spill)
                # under the lock too: a later commit's entry must not be overwritten by this
                self._remember(placed, ident, info)
        except BaseException:
            pending.abort()
            if orphan_meta is not None:
                with contextlib.suppress(OSError):
                    os.unlink(orphan_meta)
            raise
        return info

    def _check_condition(self, bucket: str, key: str, condition: WriteCondition) -> None:
        # From the disk, not the metadata cache: a replaced file's inode is reused at once and
        # files written within one clock tick share mtime_ns, so a cached identity can match
        # a newer version of the same size (racing writers of equal-sized bodies).
        _, path, spill = self._locate(bucket, key)
        for p in (path, spill):
            if p is not None:
                self._meta_cache.pop(p, None)
        try:
            current: str | None = self.stat_object(bucket, key).etag
        except S3Error as e:
            if e.code != "NoSuchKey":
                raise
            current = None
        outcome = check_write(condition, current)
        if outcome == "no_such_key":
            raise S3Error("NoSuchKey", resource=f"/{bucket}/{key}", extra={"Key": key})
        if outcome == "precondition_failed":
            raise S3Error("PreconditionFailed", extra={
                "Condition": "If-None-Match" if condition.if_none_match else "If-Match"})

    def _place(self, pending: PendingWrite, base: str, path: str | None, spill: str,
               info: ObjectInfo, ident: Identity,
               before_rename: Callable[[ObjectInfo, Identity], None] | None) -> str:
        """Rename the data onto the key's file or its spill place; where it went."""
        target = self._file_target(base, path)
        if before_rename is not None:
            before_rename(replace(info, path=target or spill), ident)
        placed = None
        if target is not None:
            try:
                os.rename(pending.tmp_path, target)
                placed = target
            except (IsADirectoryError, NotADirectoryError, FileNotFoundError):
                pass  # a concurrent write made the path a directory (or its parent a file)
        if placed is None:
            os.makedirs(os.path.dirname(spill), exist_ok=True)
            os.rename(pending.tmp_path, spill)
            placed = spill
        _fsync_dir(os.path.dirname(placed))
        self.checkpoint("placed")
        return placed

    def _settle_spill(self, bucket: str) -> None:
        """Remove the spilled copies a crash left behind: data without metadata (a version
        superseded before its unlink), and copies shadowed by the key's file (a key that
        became a file again, killed between the rename and the clean-up)."""
        root = os.path.join(self.spill_dir, bucket)
        for sub in os.listdir(root):
            with contextlib.suppress(OSError, S3Error):
                for e in os.scandir(os.path.join(root, sub)):
                    key = self._spilled_key(bucket, sub, e)
                    if key is not None:
                        _, path, _ = self._locate(bucket, key)
                        if path is None or not os.path.isfile(path):
                            continue
                        self._drop_other_meta(bucket, key, keep=os.stat(path).st_ino)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(e.path)

    def _drop_other_meta(self, bucket: str, key: str, keep: int | None) -> None:
        d = self._meta_key_dir(bucket, key)
        with contextlib.suppress(OSError):
            for name in os.listdir(d):
                if name != f"{keep}.json":
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(d, name))

    def delete_object(self, bucket: str, key: str) -> None:
        """Remove the object, its file and any spilled copy (no error when it does not
        exist, as S3), then empty parent directories."""
        base, path, spill = self._locate(bucket, key)
        with self._key_lock(bucket, key):
            self._unlink_object(bucket, key, path, spill)
        if path is None:
            return
        parent = os.path.dirname(path)
        while parent != base and _inside(parent, base):
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = os.path.dirname(parent)

    def _unlink_object(self, bucket: str, key: str, path: str | None, spill: str) -> None:
        self._drop_other_meta(bucket, key, keep=None)
        with contextlib.suppress(OSError):
            os.rmdir(self._meta_key_dir(bucket, key))
        for p in (spill, path):
            if p is None:
                continue
            self._meta_cache.pop(p, None)
            try:
                if os.path.isdir(p) and not os.path.islink(p):
                    continue
                os.unlink(p)
            except (FileNotFoundError, NotADirectoryError):
                continue

    def copy_object(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str,
                    headers: dict[str, str] | None, src: ObjectInfo | None = None
                    ) -> ObjectInfo:
        """Copy data (and, when `headers` is None, the stored headers) to a new object;
        `src`: the source version when not the current one."""
        if src is None:
            src = self.stat_object(src_bucket, src_key)
        check_key(dst_key)
        pending = self.begin_write()
        try:
            with open(src.path, "rb") as f:
                while chunk := f.read(_COPY_CHUNK):
                    pending.write(chunk)
        except BaseException:
            pending.abort()
            raise
        if headers is None:  # a composite checksum describes parts the copy does not have
            headers = dict(src.headers) if src.headers.get(TYPE_HEADER) != COMPOSITE else {
                k: v for k, v in src.headers.items() if not is_checksum_header(k)}
        return self.commit(pending, dst_bucket, dst_key, headers)

    # -- listing ---------------------------------------------------------------------------

    def spilled_keys(self, bucket: str) -> list[str]:
        """The keys stored in the bucket's spill area, sorted (one scan of it: a listing
        costs this once per page, so the spill area is meant for the few odd keys)."""
        keys: list[str] = []
        root = os.path.join(self.spill_dir, bucket)
        try:
            subdirs = os.listdir(root)
        except FileNotFoundError:
            return keys
        for sub in subdirs:
            with contextlib.suppress(OSError):
                for e in os.scandir(os.path.join(root, sub)):
                    key = self._spilled_key(bucket, sub, e)
                    if key is not None:
                        keys.append(key)
        keys.sort()
        return keys

    def _spilled_key(self, bucket: str, sub: str, e: os.DirEntry[str]) -> str | None:
        """The key of one spilled data file, from its metadata (None: not an object)."""
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            return None
        info = self._stored_info(bucket, None, e.path, st) if stat.S_ISREG(st.st_mode) \
            else None
        if info is None or layout.spill_path(info.key) != f"{sub}/{e.name}":
            return None
        return info.key

    def iter_keys(self, bucket: str, prefix: str = "", after: str = "",
                  spilled: list[str] | None = None) -> Iterator[str]:
        """Keys starting with `prefix` and greater than `after`, in UTF-8 byte order (which is
        code point order, so str comparison): the files (walking only the directories that
        can hold them) merged with the spilled keys (`spilled`, from `spilled_keys`).
        Symlinked directories are not followed; symlinked files are listed only when they
        resolve to a regular file inside the bucket."""
        base = self.require_bucket(bucket)
        if spilled is None:
            spilled = self.spilled_keys(bucket)
        # The spilled keys with the prefix are one run of the sorted list.
        lo = max(bisect.bisect_left(spilled, prefix), bisect.bisect_right(spilled, after))
        spill_keys = itertools.takewhile(lambda k: k.startswith(prefix),
                                         itertools.islice(spilled, lo, None))
        files: Iterator[str] = iter(())
        dir_part = layout.listable_dir(prefix)
        if dir_part is not None:
            name_prefix = prefix[len(dir_part) + 1:] if dir_part else prefix
            start = os.path.join(base, dir_part) if dir_part else base
            if _inside(os.path.realpath(start), base) and not (dir_part and
                                                               os.path.islink(start)):
                files = self._walk(base, start, dir_part + "/" if dir_part else "",
                                   name_prefix, after)
        last: str | None = None
        for key in heapq.merge(files, spill_keys):
            if key != last:  # a key both a file and spilled (a crash in between)
                yield key
                last = key

    def _walk(self, base: str, dirpath: str, keyprefix: str, name_prefix: str,
              after: str) -> Iterator[str]:
        entries: list[tuple[str, bool]] = []
        try:
            it = os.scandir(dirpath)
        except OSError:
            return
        with it:
            for e in it:
                name = e.name
                if not name.startswith(name_prefix):
                    continue
                try:
                    name.encode("utf-8")
                    if e.is_dir(follow_symlinks=False):
                        entries.append((keyprefix + name + "/", True))
                    elif e.is_file(follow_symlinks=False):
                        entries.append((keyprefix + name, False))
                    elif e.is_symlink():
                        real = os.path.realpath(e.path)
                        if _inside(real, base) and os.path.isfile(real):
                            entries.append((keyprefix + name, False))
                except (UnicodeEncodeError, OSError):
                    continue  # names that are not UTF-8 cannot be keys
        entries.sort()
        for k, is_dir in entries:
            if is_dir:
                if after >= k and not after.startswith(k):
                    continue  # every key under k sorts before `after`
                yield from self._walk(base, os.path.join(base, k[:-1]), k, "", after)
            elif k > after and len(k.encode("utf-8")) <= MAX_KEY_BYTES:
                yield k

    def list_objects(self, bucket: str, prefix: str = "", delimiter: str = "",
                     after: str = "", max_keys: int = 1000) -> ListResult:
        contents: list[ObjectInfo] = []
        prefixes: list[str] = []
        last: str | None = None
        if delimiter and after.startswith(prefix):
            i = after.find(delimiter, len(prefix))
            if i >= 0:
                # The marker rolls up into a common prefix that sorts before it: skip all of
                # it (otherwise the prefix would be returned again, after its own marker).
                after = max(after, after[:i + len(delimiter)] + "\U0010ffff")
        spilled = self.spilled_keys(bucket)
        it = self.iter_keys(bucket, prefix, after, spilled)
        while True:
            key = next(it, None)
            if key is None:
                return ListResult(contents, prefixes, False, None)
            if len(contents) + len(prefixes) >= max_keys:
                return ListResult(contents, prefixes, max_keys > 0, last)
            if delimiter:
                i = key.find(delimiter, len(prefix))
                if i >= 0:
                    cp = key[:i + len(delimiter)]
                    prefixes.append(cp)
                    # Resume past everything under the common prefix.
                    last = cp + "\U0010ffff"
                    it = self.iter_keys(bucket, prefix, last, spilled)
                    continue
            try:
                contents.append(self.stat_object(bucket, key))
            except S3Error:
                continue  # vanished (or changed into a directory) while listing
            last = key

    # -- multipart -------------------------------------------------------------------------

    def _upload_dir(self, upload_id: str) -> str:
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise S3Error("NoSuchUpload", extra={"UploadId": upload_id})
        return os.path.join(self.uploads_dir, upload_id)

    def _record_path(self, upload_id: str) -> str:
        return os.path.join(self.completed_dir, upload_id + ".json")

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        """The lock of one upload (its id) or one key (`_key_lock`), while anyone uses it."""
        with self._locks_guard:
            lock, users = self._locks.get(name, (threading.Lock(), 0))
            self._locks[name] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._locks_guard:
                lock, users = self._locks[name]
                if users == 1:
                    del self._locks[name]
                else:
                    self._locks[name] = (lock, users - 1)

    def _key_lock(self, bucket: str, key: str) -> contextlib.AbstractContextManager[None]:
        # "/" cannot be in an upload id, so key locks never share a name with upload locks.
        return self._lock(f"/{bucket}/{key}")

    def create_upload(self, bucket: str, key: str, headers: dict[str, str],
                      owner: str | None) -> UploadInfo:
        self._locate(bucket, key)
        upload_id = new_upload_id()
        info = UploadInfo(upload_id, bucket, key, time.time(), dict(headers), owner)
        staging = os.path.join(self.tmp_dir, upload_id)
        os.mkdir(staging)
        try:
            _write_json_atomic(os.path.join(staging, "upload.json"),
                               {"bucket": bucket, "key": key, "initiated": info.initiated,
                                "headers": headers, "owner": owner}, self.tmp_dir)
            os.rename(staging, os.path.join(self.uploads_dir, upload_id))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return info

    def get_upload(self, bucket: str, key: str, upload_id: str) -> UploadInfo:
        d = self._upload_dir(upload_id)
        try:
            with open(os.path.join(d, "upload.json"), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            raise S3Error("NoSuchUpload", extra={"UploadId": upload_id}) from None
        if data["bucket"] != bucket or data["key"] != key:
            raise S3Error("NoSuchUpload", extra={"UploadId": upload_id})
        return UploadInfo(upload_id, bucket, key, float(data["initiated"]),
                          dict(data.get("headers", {})), data.get("owner"))

    def commit_part(self, pending: PendingWrite, upload: UploadInfo, number: int) -> PartInfo:
        d = self._upload_dir(upload.upload_id)
        try:
            pending._sync_close()
            part = PartInfo(number, pending.digest(), pending.size, time.time(),
                            dict(pending.checksums))
            data = _part_data(number, part.etag)
            with self._lock(upload.upload_id):
                os.rename(pending.tmp_path, os.path.join(d, data))
                self.checkpoint("part_data")
                _write_json_atomic(os.path.join(d, f"part-{number:05d}.json"),
                                   {"etag": part.etag, "size": part.size,
                                    "last_modified": part.last_modified,
                                    "checksums": part.checksums}, self.tmp_dir)
                for name in os.listdir(d):  # the data of the version this one replaced
                    if name.startswith(f"part-{number:05d}-") and name != data:
                        with contextlib.suppress(OSError):
                            os.unlink(os.path.join(d, name))
        except FileNotFoundError:
            pending.abort()
            raise S3Error("NoSuchUpload", extra={"UploadId": upload.upload_id}) from None
        except BaseException:
            pending.abort()
            raise
        return part

    def copy_part(self, src: ObjectInfo, start: int, length: int, upload: UploadInfo,
                  number: int) -> PartInfo:
        """UploadPartCopy: bytes [start, start+length) of the object `src` describes become
        part `number`, with the checksum the upload declared (checksums.py)."""
        algorithm = upload.headers.get(ALGORITHM_HEADER)
        checksum = Checksum(algorithm.lower()) if algorithm else None
        pending = self.begin_write()
        try:
            with open(src.path, "rb") as f:
                st = os.fstat(f.fileno())
                if (st.st_size, st.st_mtime_ns) != (src.size, src.mtime_ns):
                    raise S3Error("PreconditionFailed", "The source object changed while "
                                                        "being copied.")
                offset = start
                while offset < start + length:
                    chunk = os.pread(f.fileno(), min(_COPY_CHUNK, start + length - offset),
                                     offset)
                    if not chunk:
                        raise S3Error("InternalError", "The source object is shorter than "
                                                       "recorded.")
                    pending.write(chunk)
                    if checksum is not None:
                        checksum.update(chunk)
                    offset += len(chunk)
        except BaseException:
            pending.abort()
            raise
        if checksum is not None:
            pending.checksums = {checksum.algorithm: checksum.b64()}
        return self.commit_part(pending, upload, number)

    def list_parts(self, upload: UploadInfo) -> list[PartInfo]:
        d = self._upload_dir(upload.upload_id)
        parts = []
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            raise S3Error("NoSuchUpload", extra={"UploadId": upload.upload_id}) from None
        for name in names:
            m = re.fullmatch(r"part-(\d{5})\.json", name)
            if not m:
                continue
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                with open(os.path.join(d, name), encoding="utf-8") as f:
                    data = json.load(f)
                number = int(m.group(1))
                if os.path.exists(os.path.join(d, _part_data(number, str(data["etag"])))):
                    parts.append(PartInfo(number, str(data["etag"]), int(data["size"]),
                                          float(data["last_modified"]),
                                          dict(data.get("checksums", {}))))
        parts.sort(key=lambda p: p.number)
        return parts

    def complete_upload(self, bucket: str, key: str, upload_id: str,
                        wanted: list[tuple[int, str]],
                        condition: WriteCondition | None = None,
                        claimed: dict[str, str] | None = None,
                        object_size: int | None = None) -> ObjectInfo:
        """Join the listed parts (numbers ascending, ETags matching) into the object, when
        `condition` holds (see `commit`), the parts make the `claimed` checksum (see
        checksums.check_claimed) and have `object_size` bytes. For an upload completed
        already with this part list, the object it made (as S3 answers a retried Complete)."""
        if not wanted:
            raise S3Error("MalformedXML", "You must specify at least one part.")
        numbers = [n for n, _ in wanted]
        if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
            raise S3Error("InvalidPartOrder")
        self._upload_dir(upload_id)  # a malformed id is NoSuchUpload
        with self._lock(upload_id):
            record = self._settle(upload_id)
            if record is None:
                info = self._complete(self.get_upload(bucket, key, upload_id), wanted,
                                      condition, claimed or {}, object_size)
            else:
                info = self._replay(record, bucket, key, upload_id, wanted)
        with contextlib.suppress(OSError):  # housekeeping: never fails the Complete
            self._sweep_completed()
        return info

    def _complete(self, upload: UploadInfo, wanted: list[tuple[int, str]],
                  condition: WriteCondition | None, claimed: dict[str, str],
                  object_size: int | None) -> ObjectInfo:
        have = {p.number: p for p in self.list_parts(upload)}
        chosen: list[PartInfo] = []
        for i, (n, etag) in enumerate(wanted):
            part = have.get(n)
            if part is None or part.etag != etag.strip('"').lower():
                raise S3Error("InvalidPart", extra={"PartNumber": str(n), "ETag": etag})
            if i < len(wanted) - 1 and part.size < self.min_part_bytes:
                raise S3Error("EntityTooSmall", extra={
                    "ProposedSize": str(part.size), "MinSizeAllowed": str(self.min_part_bytes),
                    "PartNumber": str(n), "ETag": part.etag})
            chosen.append(part)
        if object_size is not None and object_size != sum(p.size for p in chosen):
            raise S3Error("InvalidRequest", f"The provided x-amz-mp-object-size {object_size} "
                          "does not match the size of the parts.")
        headers = {k: v for k, v in upload.headers.items() if not is_checksum_header(k)}
        headers.update(multipart_checksum(upload.headers,
                                          [(p.checksums, p.size) for p in chosen]))
        check_claimed(headers, claimed)
        d = self._upload_dir(upload.upload_id)
        pending = self.begin_write()
        try:
            for part in chosen:
                with open(os.path.join(d, _part_data(part.number, part.etag)), "rb") as src:
                    _copy_range(src.fileno(), pending.fd, part.size)
                pending.size += part.size
            self.checkpoint("assembled")
        except BaseException:
            pending.abort()
            raise
        md5s = b"".join(bytes.fromhex(p.etag) for p in chosen)
        etag = f"{hashlib.md5(md5s).hexdigest()}-{len(chosen)}"
        sizes = tuple(p.size for p in chosen)

        def record(info: ObjectInfo, ident: Identity) -> None:
            _write_json_atomic(self._record_path(upload.upload_id), {
                "bucket": upload.bucket, "key": upload.key, "identity": list(ident),
                "etag": etag, "headers": headers, "part_sizes": list(sizes),
                "parts": [[p.number, p.etag] for p in chosen], "completed": self.clock()},
                self.tmp_dir)
            _fsync_dir(self.completed_dir)
            self.checkpoint("recorded")

        try:
            info = self.commit(pending, upload.bucket, upload.key, headers, etag=etag,
                               part_sizes=sizes, before_rename=record, condition=condition)
        except BaseException:
            with contextlib.suppress(OSError):
                self._settle(upload.upload_id)  # the record goes, unless the rename happened
            raise
        self.checkpoint("committed")
        self._discard_upload(upload.upload_id)
        return info

    def _replay(self, record: dict[str, Any], bucket: str, key: str, upload_id: str,
                wanted: list[tuple[int, str]]) -> ObjectInfo:
        """The answer to a Complete of an upload that is completed already."""
        same = [[n, etag.strip('"').lower()] for n, etag in wanted] == record["parts"]
        if (record["bucket"], record["key"]) != (bucket, key) or not same:
            raise S3Error("NoSuchUpload", extra={"UploadId": upload_id})
        size, mtime_ns, _ = record["identity"]
        path = self._committed_path(record)
        return ObjectInfo(key, path or "", size, mtime_ns, record["etag"],
                          dict(record["headers"]), len(record["parts"]),
                          part_sizes=tuple(int(n) for n in record.get("part_sizes", ())))

    def _committed_path(self, record: dict[str, Any]) -> str | None:
        """Where the object a completion record describes is (its file or its spilled copy),
        None when neither has the recorded identity."""
        with contextlib.suppress(OSError, S3Error, KeyError, TypeError, ValueError):
            ident = tuple(record["identity"])
            _, path, spill = self._locate(str(record["bucket"]), str(record["key"]))
            for p in (path, spill):
                if p is None:
                    continue
                with contextlib.suppress(OSError):
                    st = os.stat(p)
                    if (st.st_size, st.st_mtime_ns, st.st_ino) == ident:
                        return p
        return None

    def _settle(self, upload_id: str) -> dict[str, Any] | None:
        """Roll an interrupted completion forward or back, drop an expired record (see the
        module docstring); the record of a finished completion, else None."""
        path = self._record_path(upload_id)
        try:
            with open(path, encoding="utf-8") as f:
                record: dict[str, Any] = json.load(f)
            age_s = self.clock() - float(record["completed"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # written atomically: missing, or damaged by hand
        upload_present = os.path.isdir(os.path.join(self.uploads_dir, upload_id))
        committed = upload_present and self._committed_path(record) is not None
        action = completion_recovery(upload_present, committed, age_s)
        if action in ("roll_back", "expire"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return None
        if action == "roll_forward":
            self._discard_upload(upload_id)
        return record

    def _sweep_completed(self) -> None:
        """Drop expired completion records, at most every _SWEEP_EVERY_S."""
        now = self.clock()
        if now - self._last_sweep < _SWEEP_EVERY_S:
            return
        self._last_sweep = now
        for name in os.listdir(self.completed_dir):
            upload_id = name.removesuffix(".json")
            if (name.endswith(".json") and _UPLOAD_ID.fullmatch(upload_id)
                    and not os.path.isdir(os.path.join(self.uploads_dir, upload_id))):
                with self._lock(upload_id):
                    self._settle(upload_id)

    def _discard_upload(self, upload_id: str) -> None:
        """Remove an upload in one step (a rename into tmp/), then its files."""
        trash = os.path.join(self.tmp_dir, secrets.token_hex(12))
        try:
            os.rename(self._upload_dir(upload_id), trash)
        except FileNotFoundError:
            return
        self.checkpoint("detached")
        shutil.rmtree(trash, ignore_errors=True)

    def abort_upload(self, upload: UploadInfo) -> None:
        with self._lock(upload.upload_id):
            self._discard_upload(upload.upload_id)

    def list_uploads(self, bucket: str, prefix: str = "") -> list[UploadInfo]:
        out = []
        try:
            names = os.listdir(self.uploads_dir)
        except FileNotFoundError:
            return []
        for upload_id in names:
            with contextlib.suppress(OSError, ValueError, KeyError):
                with open(os.path.join(self.uploads_dir, upload_id, "upload.json"),
                          encoding="utf-8") as f:
                    data = json.load(f)
                if data["bucket"] == bucket and data["key"].startswith(prefix):
                    out.append(UploadInfo(upload_id, bucket, data["key"],
                                          float(data["initiated"]),
                                          dict(data.get("headers", {})), data.get("owner")))
        out.sort(key=lambda u: (u.key, u.initiated))
        return out


def _copy_range(src_fd: int, dst_fd: int, count: int) -> None:
    """Append `count` bytes of src to dst in the kernel when it can (copy_file_range)."""
    offset = 0
    while offset < count:
        try:
            n = os.copy_file_range(src_fd, dst_fd, count - offset, offset)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            n = 0
        if n == 0:
            data = os.pread(src_fd, min(_COPY_CHUNK, count - offset), offset)
            if not data:
                raise S3Error("InternalError", "A part file is shorter than recorded.")
            n = os.write(dst_fd, data)
        offset += n


def new_request_id() -> str:
    return secrets.token_hex(8).upper()


def new_upload_id() -> str:
    """An unguessable upload id that never begins with "-": the aws CLI (argparse) takes
    `--upload-id -abc` for an option and refuses the command."""
    while True:
        upload_id = secrets.token_urlsafe(36)
        if upload_id[0] != "-":
            return upload_id


__all__ = ["BucketState", "ListResult", "ObjectInfo", "PartInfo", "PendingWrite", "Storage",
           "UploadInfo", "STORED_HEADERS", "new_request_id", "new_upload_id"]
