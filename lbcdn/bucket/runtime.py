"""The bucket origin's runtime, shared by the S3 API and the website endpoint.

Job: hold what a request needs (storage, access policy, the authenticate and body-reader
functions, the clock) and answer the cross-cutting questions: which bucket does this Host
name, what is a bucket's effective website configuration, who is asking.

Rules: built from a BucketsConfig once (a reload builds a new one); the two boundaries that
belong to other modules -- SigV4 (sigv4.authenticate) and body verification
(payload.PayloadReader) -- are injected, so tests can run with stand-ins.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import StreamReader

from lbcdn.bucket.access import AccessPolicy, Action, User
from lbcdn.bucket.accessstore import AccessStore, ObjectIdentity
from lbcdn.bucket.config import BucketsConfig
from lbcdn.bucket.errors import S3Error
from lbcdn.bucket.publicaccess import PUBLIC_READ, may_consult_object_acl, public_decision
from lbcdn.bucket.storage import ObjectInfo, Storage
from lbcdn.bucket.lifecycle import Lifecycle, LifecycleStore, Tags
from lbcdn.bucket.versions import Versions
from lbcdn.bucket.websiteconf import WebsiteConfig, parse_website_xml


class AuthLike(Protocol):
    @property
    def access_key_id(self) -> str | None: ...


class Authenticator(Protocol):
    """sigv4.authenticate bound to credentials and region."""

    def __call__(self, method: str, raw_path: str, query: list[tuple[str, str]],
                 headers: Mapping[str, str], now: datetime) -> Any: ...


# Returns an async iterable of verified body pieces; when it has an `md5_hex` attribute it is
# set at the end of iteration and used as the ETag (so the body is not hashed twice).
BodyReaderFactory = Callable[[StreamReader, Any, Mapping[str, str]], AsyncIterable[bytes]]


def sigv4_authenticator(policy: AccessPolicy, region: str) -> Authenticator:
    from lbcdn.bucket import sigv2, sigv4

    def authenticate(method: str, raw_path: str, query: list[tuple[str, str]],
                     headers: Mapping[str, str], now: datetime) -> Any:
        if sigv2.is_v2_presigned(dict(query)):
            # `aws s3 presign` (CLI v1) still signs with signature version 2.
            return sigv2.authenticate_v2_query(method, raw_path, query, headers, policy, now)
        return sigv4.authenticate(method, raw_path, query, headers, policy, now, region=region)

    return authenticate


def payload_reader_factory() -> BodyReaderFactory:
    from lbcdn.bucket import payload

    def make(stream: StreamReader, auth: Any,
             headers: Mapping[str, str]) -> AsyncIterable[bytes]:
        reader: AsyncIterable[bytes] = payload.PayloadReader(stream, auth, headers)
        return reader

    return make


@dataclass
class BucketRuntime:
    config: BucketsConfig
    storage: Storage
    policy: AccessPolicy
    authenticate: Authenticator
    body_reader: BodyReaderFactory
    clock: Callable[[], float] = time.time
    access: AccessStore = field(init=False)
    versions: Versions = field(init=False)
    tags: Tags = field(init=False)
    lifecycle_rules: LifecycleStore = field(init=False)
    lifecycle: Lifecycle = field(init=False)

    def __post_init__(self) -> None:
        self.access = AccessStore(self.storage.area)
        self.versions = Versions(self.storage)
        self.tags = Tags(self.storage)
        self.lifecycle_rules = LifecycleStore(self.storage)
        lc = self.config.lifecycle
        self.lifecycle = Lifecycle(self.storage, self.versions, self.tags,
                                   self.lifecycle_rules, day_s=lc.day_s,
                                   max_versions_per_pass=lc.max_versions_per_pass)

    @classmethod
    def build(cls, config: BucketsConfig, *, authenticate: Authenticator | None = None,
              body_reader: BodyReaderFactory | None = None,
              clock: Callable[[], float] = time.time) -> BucketRuntime:
        policy = AccessPolicy(config)
        return cls(config, Storage(config.root, min_part_bytes=config.min_part_bytes), policy,
                   authenticate or sigv4_authenticator(policy, config.region),
                   body_reader or payload_reader_factory(), clock)

    def prepare(self) -> None:
        """Create the directory layout and the configured buckets (blocking)."""
        self.storage.prepare()
        self.versions.prepare()
        for name, bc in self.config.buckets.items():
            self.storage.ensure_bucket(name, bc.owner)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def user_for(self, auth: AuthLike) -> User | None:
        user = self.policy.user(auth.access_key_id)
        if auth.access_key_id is not None and user is None:
            raise S3Error("InvalidAccessKeyId")
        return user

    # -- permissions -------------------------------------------------------------------------

    def allowed(self, user: User | None, action: Action, bucket: str, key: str | None = None,
                info: ObjectInfo | None = None) -> bool:
        """Whether `user` (None: anonymous) may do `action` (blocking: reads the bucket's
        state and stored access settings; NoSuchBucket when it does not exist). `info`: the
        object at `key`, when the caller has it already."""
        if user is None:
            # The owner matters to signed-in users only; spare anonymous reads (every website
            # request) reading the bucket's state file.
            self.storage.require_bucket(bucket)
            owner = None
        else:
            owner = self.storage.bucket_state(bucket).owner
        if action not in ("read", "list"):
            return self.policy.allowed(user, action, bucket, key, owner)
        access = self.access.load(bucket)
        shared = public_decision(access, action, key, False)
        if shared is None and action == "read" and key is not None \
                and may_consult_object_acl(access) \
                and not self.policy.allowed(user, action, bucket, key, owner):
            # Only now is the object's own ACL worth a look (it costs a stat of the object).
            shared = public_decision(access, action, key, self._object_public(bucket, key, info))
        return self.policy.allowed(user, action, bucket, key, owner, shared)

    def _object_public(self, bucket: str, key: str, info: ObjectInfo | None) -> bool:
        if info is None:
            try:
                info = self.storage.stat_object(bucket, key)
            except S3Error:
                return False
        return self.access.object_acl(bucket, key, object_identity(info)) == PUBLIC_READ

    # -- hosts ------------------------------------------------------------------------------

    def virtual_bucket(self, host: str) -> str | None:
        """Bucket named by a virtual-host-style Host (`photos.s3.localhost`), else None."""
        name = host.rsplit(":", 1)[0].lower() if not host.startswith("[") else ""
        for suffix in self.config.virtual_host_suffixes:
            if name.endswith("." + suffix):
                return name[:-len(suffix) - 1]
        return None

    def website_bucket(self, host: str) -> str | None:
        """Bucket whose website endpoint this Host names, else None."""
        name = host.rsplit(":", 1)[0].lower() if not host.startswith("[") else ""
        for bucket, bc in self.config.buckets.items():
            if bc.website is not None and name in (h.lower() for h in bc.website.hosts):
                return bucket
        for suffix in self.config.website_host_suffixes:
            if name.endswith("." + suffix):
                return name[:-len(suffix) - 1]
        return None

    # -- website configuration --------------------------------------------------------------

    def website_config(self, bucket: str) -> WebsiteConfig | None:
        """The stored configuration (PutBucketWebsite) or the configured default (blocking)."""
        state = self.storage.bucket_state(bucket)
        if state.website is not None:
            try:
                return parse_website_xml(state.website.encode("utf-8"))
            except S3Error:
                return None
        bc = self.config.buckets.get(bucket)
        if bc is not None and bc.website is not None:
            return WebsiteConfig(bc.website.index_document, bc.website.error_document)
        return None


def object_identity(info: ObjectInfo) -> ObjectIdentity:
    return (info.size, info.mtime_ns, info.etag)
