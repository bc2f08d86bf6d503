"""Where bucket policies, ACLs and Block Public Access settings live on disk (blocking I/O).

Layout, beside the rest of lbcdn's bucket metadata (`<root>/.lbcdn/`, out of every key's reach):

    <root>/.lbcdn/access/<bucket>.json                   policy text, bucket ACL, block settings
    <root>/.lbcdn/access/<bucket>/<h2>/<h>.json          object ACL of key (h = sha256 of the key)
    <root>/.lbcdn/access/<bucket>/uploads/<id>.json      ACL a multipart upload will set

Rules:
- Every file is replaced atomically (lbcdn.atomicfile): a crash leaves the old or the new
  settings. A bucket record that cannot be read or parsed denies all public access (the most
  private reading), and says so in the log.
- An object ACL record names the object it was set on (size, mtime_ns, ETag) and is believed
  only while the object still has that identity: a new PUT of the key, with no ACL, is private
  again, as in S3, without a second write racing the first.
- Reads are cached per file identity (st_ino, st_size, st_mtime_ns): each request costs a stat,
  and a change made by any process (or by hand) is seen on the next request, no reload needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from typing import Any

from lbcdn.atomicfile import write_atomic
from lbcdn.bucket.bucketpolicy import parse_policy
from lbcdn.bucket.errors import S3Error
from lbcdn.bucket.publicaccess import (ALL_BLOCKED, PRIVATE, PUBLIC_READ, BucketAccess,
                                       PublicAccessBlock)

log = logging.getLogger("lbcdn.bucket.accessstore")

ObjectIdentity = tuple[int, int, str]  # size, mtime_ns, ETag
_FileId = tuple[int, int, int]


def _file_id(st: os.stat_result) -> _FileId:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _encode(access: BucketAccess) -> str:
    block = access.block
    return json.dumps({
        "policy": access.policy.text if access.policy is not None else None,
        "acl": access.acl,
        "block": list(block.as_tuple()) if block is not None else None,
    }, separators=(",", ":"))


def _decode(data: Any, bucket: str) -> BucketAccess:
    policy_text = data["policy"]
    block = data["block"]
    acl = data["acl"]
    if acl not in (PRIVATE, PUBLIC_READ):
        raise ValueError(f"unknown acl {acl!r}")
    return BucketAccess(
        parse_policy(policy_text, bucket) if policy_text is not None else None, acl,
        PublicAccessBlock(*(bool(b) for b in block)) if block is not None else None)


class AccessStore:
    def __init__(self, area: str) -> None:
        self.dir = os.path.join(area, "access")
        self._cache: dict[str, tuple[_FileId, BucketAccess]] = {}
        # Read-modify-write of a bucket record (policy, ACL and block settings share it) is
        # serialized; the S3 API, the only writer, runs in one process.
        self._lock = threading.Lock()

    def _path(self, bucket: str) -> str:
        return os.path.join(self.dir, bucket + ".json")

    def _object_path(self, bucket: str, key: str) -> str:
        h = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return os.path.join(self.dir, bucket, h[:2], h + ".json")

    # -- buckets ---------------------------------------------------------------------------

    def load(self, bucket: str) -> BucketAccess:
        path = self._path(bucket)
        try:
            fid = _file_id(os.stat(path))
            cached = self._cache.get(bucket)
            if cached is not None and cached[0] == fid:
                return cached[1]
            with open(path, "rb") as f:
                # The identity of what was read: a replace between the stat and the open
                # must not be cached under the old file's identity.
                fid = _file_id(os.fstat(f.fileno()))
                raw = f.read()
        except FileNotFoundError:
            return BucketAccess()
        try:
            access = _decode(json.loads(raw), bucket)
        except (ValueError, KeyError, TypeError, S3Error) as e:
            log.error("bucket %s: unreadable access settings in %s (%s); treating the bucket "
                      "as private with public access blocked", bucket, path, e)
            access = BucketAccess(block=ALL_BLOCKED)
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[bucket] = (fid, access)
        return access

    def save(self, bucket: str, access: BucketAccess) -> None:
        with self._lock:
            write_atomic(self._path(bucket), _encode(access))

    def update(self, bucket: str, change: Callable[[BucketAccess], BucketAccess]) -> None:
        with self._lock:
            write_atomic(self._path(bucket), _encode(change(self.load(bucket))))

    def drop(self, bucket: str) -> None:
        """Forget everything stored for a bucket (it was deleted)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(bucket))
        shutil.rmtree(os.path.join(self.dir, bucket), ignore_errors=True)
        self._cache.pop(bucket, None)

    # -- objects ---------------------------------------------------------------------------

    def object_acl(self, bucket: str, key: str, identity: ObjectIdentity) -> str:
        """The canned ACL set on the object that has `identity` now (private when none)."""
        try:
            with open(self._object_path(bucket, key), encoding="utf-8") as f:
                data = json.load(f)
            if data["key"] == key and tuple(data["object"]) == identity:
                return PUBLIC_READ if data["acl"] == PUBLIC_READ else PRIVATE
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return PRIVATE

    def set_object_acl(self, bucket: str, key: str, identity: ObjectIdentity,
                       acl: str) -> None:
        if acl == PRIVATE:
            self.forget_object(bucket, key)
            return
        record = {"key": key, "object": list(identity), "acl": acl}
        write_atomic(self._object_path(bucket, key), json.dumps(record, separators=(",", ":")))

    def forget_object(self, bucket: str, key: str) -> None:
        """The object was deleted: drop its ACL record (stale anyway, by identity)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._object_path(bucket, key))

    def _upload_path(self, bucket: str, upload_id: str) -> str:
        return os.path.join(self.dir, bucket, "uploads", upload_id + ".json")

    def set_upload_acl(self, bucket: str, upload_id: str, acl: str) -> None:
        """Remember the ACL given to CreateMultipartUpload until the upload completes."""
        write_atomic(self._upload_path(bucket, upload_id), json.dumps({"acl": acl}))

    def upload_acl(self, bucket: str, upload_id: str) -> str:
        try:
            with open(self._upload_path(bucket, upload_id), encoding="utf-8") as f:
                return PUBLIC_READ if json.load(f)["acl"] == PUBLIC_READ else PRIVATE
        except (OSError, ValueError, KeyError, TypeError):
            return PRIVATE

    def forget_upload(self, bucket: str, upload_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._upload_path(bucket, upload_id))
