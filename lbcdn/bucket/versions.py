"""Object versions (S3 versioning): the versioning state of buckets, the versions a key had,
delete markers, and listing them.

Layout (beside storage.py's, inside `<root>/.lbcdn/`):

    versioning/<bucket>.json                    {"status": "Enabled" | "Suspended"}
    versions/<bucket>/<h2>/<h>/<version id>     data of a noncurrent version (a hard link)
    versions/<bucket>/<h2>/<h>/<version id>.json its record: key, identity, ETag, headers,
                                                parts, mtime_ns, marker (a delete marker)

(h = sha256 of the key, as for the spill area.) The current version stays where storage.py
puts every object (its file or its spilled copy, served with sendfile as before); its id is in
its metadata. Only noncurrent versions and delete markers live here.

Rules:
- A bucket that never had versioning configured behaves as before: every object is the
  "null" version, and listing versions lists each object once as `null`, latest.
- Every commit runs inside `Storage.version_hook` (installed here), under the key's lock:
  before the new data is renamed into place, the current version is kept by hard-linking its
  data here and writing its record (record last: a version is believed only with its record
  and data of the recorded identity). A kill -9 anywhere leaves the previous version intact
  and listed: until the rename it is both current and recorded here, and a record with the
  current version's id is never listed twice (nor trusted over the current one).
- Suspended buckets write the "null" version: it replaces a current "null" version (which is
  not kept) and drops a noncurrent "null" record.
- The newest version is the current one when it is an object; when the newest is a delete
  marker there is no current object. Deleting the current version or the newest delete marker
  makes the next newest version current again (hard-linked back into place, keeping its
  Last-Modified), or leaves the newest marker latest.
- Version ids are 32 hex digits (creation time in ns, then random), so ids sort by age;
  versions of a key are ordered by (mtime_ns, id), newest first.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

from lbcdn.bucket import layout
from lbcdn.bucket.errors import S3Error
from lbcdn.bucket.storage import ObjectInfo, Storage, _fsync_dir, _write_json_atomic

_VERSION_ID = re.compile(r"null|[0-9a-f]{32}")
STATUSES = ("Enabled", "Suspended")


@dataclass(frozen=True)
class Version:
    key: str
    version_id: str
    mtime_ns: int
    info: ObjectInfo | None          # None: a delete marker
    latest: bool = False
    current: bool = False            # the object at the key's place (not a record here)


@dataclass(frozen=True)
class VersionListing:
    versions: list[Version]
    prefixes: list[str]
    truncated: bool
    next_key: str | None
    next_version_id: str | None


def new_version_id(now_ns: int) -> str:
    return f"{now_ns:016x}{secrets.token_hex(8)}"


def check_version_id(version_id: str) -> str:
    if not _VERSION_ID.fullmatch(version_id):
        raise S3Error("InvalidArgument", "Invalid version id specified",
                      extra={"ArgumentName": "versionId", "ArgumentValue": version_id})
    return version_id


def newest_first(versions: list[Version]) -> list[Version]:
    return sorted(versions, key=lambda v: (v.mtime_ns, v.version_id), reverse=True)


class Versions:
    """Versioning over a Storage (see the module docstring)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.dir = os.path.join(storage.area, "versions")
        self.conf_dir = os.path.join(storage.area, "versioning")
        # The bucket origin runs in one process: this cache is the truth once loaded.
        self._status: dict[str, str | None] = {}
        self._locks = [threading.RLock() for _ in range(64)]
        storage.version_hook = self._hook

    def prepare(self) -> None:
        """Create the layout; drop the data a crash left without its record (a kept version
        whose record was not written is still the current one)."""
        os.makedirs(self.dir, exist_ok=True)
        os.makedirs(self.conf_dir, exist_ok=True)
        for bucket in os.listdir(self.dir):
            with contextlib.suppress(OSError):
                for sub in os.listdir(os.path.join(self.dir, bucket)):
                    for e in os.scandir(os.path.join(self.dir, bucket, sub)):
                        names = set(os.listdir(e.path))
                        for name in names:
                            if not name.endswith(".json") and name + ".json" not in names:
                                with contextlib.suppress(OSError):
                                    os.unlink(os.path.join(e.path, name))

    # -- bucket state ------------------------------------------------------------------------

    def status(self, bucket: str) -> str | None:
        """"Enabled", "Suspended", or None (never configured)."""
        if bucket not in self._status:
            status: str | None = None
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                with open(os.path.join(self.conf_dir, bucket + ".json"), encoding="utf-8") as f:
                    status = str(json.load(f)["status"])
            self._status[bucket] = status if status in STATUSES else None
        return self._status[bucket]

    def set_status(self, bucket: str, status: str) -> None:
        self.storage.require_bucket(bucket)
        _write_json_atomic(os.path.join(self.conf_dir, bucket + ".json"), {"status": status},
                           self.storage.tmp_dir)
        self._status[bucket] = status

    def has_versions(self, bucket: str) -> bool:
        return bool(self._version_keys(bucket, ""))

    def drop_bucket(self, bucket: str) -> None:
        """Forget a deleted bucket's versions and state (a new bucket of its name is new)."""
        trash = os.path.join(self.storage.tmp_dir, secrets.token_hex(12))
        with contextlib.suppress(FileNotFoundError):
            os.rename(os.path.join(self.dir, bucket), trash)
        shutil.rmtree(trash, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.conf_dir, bucket + ".json"))
        self._status.pop(bucket, None)

    # -- records -----------------------------------------------------------------------------

    def _key_dir(self, bucket: str, key: str) -> str:
        return os.path.join(self.dir, bucket, layout.spill_path(key))

    def _lock(self, bucket: str, key: str) -> threading.RLock:
        return self._locks[hash((bucket, key)) % len(self._locks)]

    def _records(self, bucket: str, key: str) -> list[Version]:
        d = self._key_dir(bucket, key)
        out: list[Version] = []
        try:
            names = os.listdir(d)
        except (FileNotFoundError, NotADirectoryError):
            return out
        for name in names:
            vid = name.removesuffix(".json")
            if name == vid or not _VERSION_ID.fullmatch(vid):
                continue
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                with open(os.path.join(d, name), encoding="utf-8") as f:
                    rec = json.load(f)
                if rec["key"] != key:
                    continue
                if rec.get("marker"):
                    out.append(Version(key, vid, int(rec["mtime_ns"]), None))
                    continue
                path = os.path.join(d, vid)
                st = os.stat(path)
                if [st.st_size, st.st_mtime_ns, st.st_ino] != rec["identity"]:
                    continue  # changed by hand: no longer the version recorded
                out.append(Version(key, vid, st.st_mtime_ns, ObjectInfo(
                    key, path, st.st_size, st.st_mtime_ns, str(rec["etag"]),
                    dict(rec.get("headers", {})), int(rec.get("parts", 0)), vid)))
        return out

    def _current(self, bucket: str, key: str) -> ObjectInfo | None:
        try:
            return self.storage.stat_object(bucket, key)
        except S3Error as e:
            if e.code == "NoSuchKey":
                return None
            raise

    def versions_of(self, bucket: str, key: str) -> list[Version]:
        """Every version of the key, newest first, the latest flagged."""
        cur = self._current(bucket, key)
        recs = newest_first([r for r in self._records(bucket, key)
                             if cur is None or r.version_id != cur.version_id])
        out = ([Version(key, cur.version_id, cur.mtime_ns, cur, current=True)]
               if cur is not None else []) + recs
        if out:
            out[0] = replace(out[0], latest=True)
        return out

    def _keep(self, bucket: str, info: ObjectInfo) -> None:
        """Record `info` (the current version) as noncurrent: data first, record last."""
        d = self._key_dir(bucket, info.key)
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(self.storage.tmp_dir, secrets.token_hex(12))
        os.link(info.path, tmp)
        os.replace(tmp, os.path.join(d, info.version_id))
        st = os.stat(os.path.join(d, info.version_id))
        _write_json_atomic(os.path.join(d, info.version_id + ".json"), {
            "key": info.key, "identity": [st.st_size, st.st_mtime_ns, st.st_ino],
            "etag": info.etag, "headers": info.headers, "parts": info.parts,
            "mtime_ns": st.st_mtime_ns, "marker": False}, self.storage.tmp_dir)
        _fsync_dir(d)

    def _mark(self, bucket: str, key: str, version_id: str) -> None:
        d = self._key_dir(bucket, key)
        _write_json_atomic(os.path.join(d, version_id + ".json"), {
            "key": key, "mtime_ns": time.time_ns(), "marker": True}, self.storage.tmp_dir)
        _fsync_dir(d)

    def _remove(self, bucket: str, key: str, version_id: str) -> None:
        """Drop a record (record first: data without one is no version)."""
        d = self._key_dir(bucket, key)
        for name in (version_id + ".json", version_id):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(d, name))
        with contextlib.suppress(OSError):  # the key's directory, then its H2 one
            os.rmdir(d)
            os.rmdir(os.path.dirname(d))

    @contextlib.contextmanager
    def _hook(self, bucket: str, key: str, restore: str | None) -> Iterator[str]:
        with self._lock(bucket, key):
            status = self.status(bucket)
            if restore is not None or status is None:
                yield restore or "null"
                return
            new = "null" if status == "Suspended" else new_version_id(time.time_ns())
            cur = self._current(bucket, key)
            if cur is not None and cur.version_id != new:
                self._keep(bucket, cur)
            yield new
            if new == "null":
                self._remove(bucket, key, "null")

    # -- operations --------------------------------------------------------------------------

    def get(self, bucket: str, key: str, version_id: str | None) -> ObjectInfo:
        """The object a GET/HEAD reads; NoSuchKey (with the delete marker's headers when the
        latest version is one), NoSuchVersion, MethodNotAllowed for a delete marker."""
        if version_id is None:
            cur = self._current(bucket, key)
            if cur is not None:
                return cur
            if self.status(bucket) is not None:
                for v in self.versions_of(bucket, key)[:1]:
                    if v.info is None:
                        raise S3Error("NoSuchKey", extra={"Key": key}, headers={
                            "x-amz-delete-marker": "true", "x-amz-version-id": v.version_id})
            raise S3Error("NoSuchKey", extra={"Key": key})
        check_version_id(version_id)
        for v in self.versions_of(bucket, key):
            if v.version_id == version_id:
                if v.info is None:
                    raise S3Error("MethodNotAllowed", headers={
                        "x-amz-delete-marker": "true", "x-amz-version-id": version_id,
                        "Allow": "DELETE"})
                return v.info
        raise S3Error("NoSuchVersion", extra={"Key": key, "VersionId": version_id})

    def delete(self, bucket: str, key: str, version_id: str | None) -> tuple[str | None, bool]:
        """DeleteObject: (the version id to answer with, whether it is a delete marker)."""
        if version_id is not None:
            check_version_id(version_id)
        with self._lock(bucket, key):
            status = self.status(bucket)
            if version_id is None:
                if status is None:
                    self.storage.delete_object(bucket, key)
                    return None, False
                new = "null" if status == "Suspended" else new_version_id(time.time_ns())
                cur = self._current(bucket, key)
                if cur is not None and cur.version_id != new:
                    self._keep(bucket, cur)
                self.storage.delete_object(bucket, key)
                self._mark(bucket, key, new)
                return new, True
            for v in self.versions_of(bucket, key):
                if v.version_id != version_id:
                    continue
                if v.current:
                    self.storage.delete_object(bucket, key)
                self._remove(bucket, key, version_id)
                self._promote(bucket, key)
                return version_id, v.info is None
            return version_id, False  # S3 answers 204 for a version that is not there

    def expire(self, bucket: str, info: ObjectInfo) -> bool:
        """Delete the key's current version (as a DELETE without versionId) only when
        `info` still is it: the lifecycle's delete never removes a newer upload."""
        with self._lock(bucket, info.key):
            cur = self._current(bucket, info.key)
            if cur is None or (cur.version_id, cur.mtime_ns, cur.etag, cur.size) != (
                    info.version_id, info.mtime_ns, info.etag, info.size):
                return False
            self.delete(bucket, info.key, None)
            return True

    def remove_lone_marker(self, bucket: str, key: str, version_id: str) -> bool:
        """Remove a delete marker that is the key's only version (an expired one)."""
        with self._lock(bucket, key):
            vs = self.versions_of(bucket, key)
            if len(vs) != 1 or vs[0].info is not None or vs[0].version_id != version_id:
                return False
            self._remove(bucket, key, version_id)
            return True

    def _promote(self, bucket: str, key: str) -> None:
        """Without a current object, make the newest version current when it is an object."""
        if self._current(bucket, key) is not None:
            return
        recs = newest_first(self._records(bucket, key))
        if not recs or recs[0].info is None:
            return
        info = recs[0].info
        pending = self.storage.begin_write()
        # Link, not copy: the version keeps its inode, so its identity and Last-Modified.
        os.close(pending.fd)
        os.unlink(pending.tmp_path)
        os.link(info.path, pending.tmp_path)
        pending.fd = os.open(pending.tmp_path, os.O_RDONLY | os.O_CLOEXEC)
        pending.size = info.size
        self.storage.commit(pending, bucket, key, info.headers, etag=info.etag,
                            part_sizes=info.part_sizes, restore=info.version_id)
        self._remove(bucket, key, info.version_id)

    # -- listing -----------------------------------------------------------------------------

    def _version_keys(self, bucket: str, prefix: str) -> list[str]:
        """The keys with a record here starting with `prefix`, sorted (one scan)."""
        keys: list[str] = []
        root = os.path.join(self.dir, bucket)
        try:
            subs = os.listdir(root)
        except FileNotFoundError:
            return keys
        for sub in subs:
            with contextlib.suppress(OSError):
                for e in os.scandir(os.path.join(root, sub)):
                    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                        for name in os.listdir(e.path):
                            if name.endswith(".json"):
                                with open(os.path.join(e.path, name), encoding="utf-8") as f:
                                    key = str(json.load(f)["key"])
                                if key.startswith(prefix):
                                    keys.append(key)
                                break
        keys.sort()
        return keys

    def keys(self, bucket: str, prefix: str = "", after: str = "") -> Iterator[str]:
        """Keys with a current version or a record here, after `after`, in order."""
        spilled = self.storage.spilled_keys(bucket)
        recorded = [k for k in self._version_keys(bucket, prefix) if k > after]
        return _merge_unique(self.storage.iter_keys(bucket, prefix, after, spilled),
                             iter(recorded))

    def list(self, bucket: str, prefix: str = "", delimiter: str = "", key_marker: str = "",
             version_id_marker: str = "", max_keys: int = 1000) -> VersionListing:
        """ListObjectVersions: versions in key order, newest first within a key, after
        (key_marker, version_id_marker) (after all of key_marker without the latter)."""
        if version_id_marker:
            check_version_id(version_id_marker)
            if not key_marker:
                raise S3Error("InvalidArgument", "A version-id marker cannot be specified "
                              "without a key marker.",
                              extra={"ArgumentName": "version-id-marker"})
        after = key_marker
        if delimiter and after.startswith(prefix):
            i = after.find(delimiter, len(prefix))
            if i >= 0:  # the marker is inside a common prefix returned already
                after = max(after, after[:i + len(delimiter)] + "\U0010ffff")
        keys = self.keys(bucket, prefix, after)
        versions: list[Version] = []
        prefixes: list[str] = []
        last: tuple[str, str | None] | None = None
        # With a version-id marker, the marker's key comes first, from after that version.
        skip_to = version_id_marker if after == key_marker else ""
        for key in itertools.chain([key_marker] if skip_to else [], keys):
            if delimiter:
                i = key.find(delimiter, len(prefix))
                if i >= 0:
                    cp = key[:i + len(delimiter)]
                    if prefixes and prefixes[-1] == cp:
                        continue
                    if len(versions) + len(prefixes) >= max_keys:
                        return VersionListing(versions, prefixes, max_keys > 0, *_next(last))
                    prefixes.append(cp)
                    last = (cp, None)
                    continue
            vs = self.versions_of(bucket, key)
            if skip_to:
                ids = [v.version_id for v in vs]
                vs = vs[ids.index(skip_to) + 1:] if skip_to in ids else []
                skip_to = ""
            for v in vs:
                if len(versions) + len(prefixes) >= max_keys:
                    return VersionListing(versions, prefixes, max_keys > 0, *_next(last))
                versions.append(v)
                last = (v.key, v.version_id)
        return VersionListing(versions, prefixes, False, None, None)


def _next(last: tuple[str, str | None] | None) -> tuple[str | None, str | None]:
    return (None, None) if last is None else last


def _merge_unique(a: Iterator[str], b: Iterator[str]) -> Iterator[str]:
    last: str | None = None
    for key in heapq.merge(a, b):
        if key != last:
            yield key
            last = key
