"""The `buckets:` configuration section: where buckets live, who may do what, website hosting.

Rules: frozen dataclasses with `doc(...)` fields, loaded and validated by the generic reflective
loader (lbcdn.configkit.reflect) like the rest of the tree; cross-field checks are registered as
validators here, so the YAML path of every problem is named. Secrets come from the environment
(`secret_access_key: ${ALICE_SECRET}`). Config is data; BucketServer builds its runtime from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lbcdn.configkit.errors import ConfigError
from lbcdn.configkit.reflect import INVALID, VALIDATORS, Loader, join
from lbcdn.configkit.fields import REQUIRED, doc
from lbcdn.configkit.limits import HttpLimitsConfig

# S3 bucket naming rules (the current ones): 3-63 chars of a-z 0-9 . -, starting and ending
# with a letter or digit, no "..", not an IP address.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_LIKE = re.compile(r"\d+\.\d+\.\d+\.\d+")
_ACCESS_KEY = re.compile(r"[A-Za-z0-9_+=,.@-]{3,128}")

ANY_USER = "*"


def valid_bucket_name(name: str) -> bool:
    return (bool(_BUCKET_NAME.fullmatch(name)) and ".." not in name and ".-" not in name
            and "-." not in name and not _IP_LIKE.fullmatch(name))


@dataclass(frozen=True)
class BucketUserConfig:
    access_key_id: str = doc("Access key id the user signs with (AWS_ACCESS_KEY_ID).", REQUIRED)
    secret_access_key: str = doc(
        "Secret key; write `${ENV_VAR}` to read it from the environment.", REQUIRED)
    admin: bool = doc(
        "May create and delete any bucket and has every permission on every bucket.", False)


@dataclass(frozen=True)
class BucketWebsiteConfig:
    """Website hosting defaults, used while no configuration was stored with
    PutBucketWebsite (`aws s3 website`); a stored one wins."""
    index_document: str = doc("Index document suffix served for `/` and every `folder/`.",
                              "index.html")
    error_document: str | None = doc("Key served (with the original status) on 4xx errors.",
                                     None)
    hosts: tuple[str, ...] = doc(
        "Host names served as this bucket's website endpoint (on either listener).",
        default_factory=tuple)


@dataclass(frozen=True)
class BucketConfig:
    """A bucket declared in the config (created at start when missing). Buckets created
    through the API belong to their creator and need no entry here."""
    read: tuple[str, ...] = doc(
        "User names (keys of `buckets.users`, or `*` for any signed-in user) allowed to "
        "GET/HEAD objects.", default_factory=tuple)
    write: tuple[str, ...] = doc("User names allowed to put, copy and delete objects.",
                                 default_factory=tuple)
    list: tuple[str, ...] = doc("User names allowed to list objects and uploads.",
                                default_factory=tuple)
    owner: str | None = doc("User name that owns the bucket (full control).", None)
    public_read: bool = doc("Anyone, unsigned, may GET/HEAD every object.", False)
    public_read_prefixes: tuple[str, ...] = doc(
        "Key prefixes anyone may GET/HEAD (public-read per prefix).", default_factory=tuple)
    public_list: bool = doc(
        "Anyone may list the bucket; the website then answers 404 instead of 403 for "
        "missing keys, as S3 does.", False)
    website: BucketWebsiteConfig | None = doc("Static website hosting for this bucket.", None)


@dataclass(frozen=True)
class BucketLifecycleConfig:
    """The background pass applying buckets' lifecycle rules (PutBucketLifecycleConfiguration)."""
    interval_s: float = doc("Time between two lifecycle passes.", 3600.0, lo=0.01)
    max_versions_per_pass: int = doc(
        "Most object versions one pass examines; the next pass resumes after them.", 10000,
        lo=1)
    day_s: float = doc(
        "Seconds in a lifecycle \"day\" (Days, NoncurrentDays, DaysAfterInitiation). Only "
        "tests change it, to see rules act within seconds.", 86400.0, lo=0.001)


@dataclass(frozen=True)
class BucketsConfig:
    root: str = doc("Directory holding one directory per bucket (and `.lbcdn/` for metadata "
                    "and temporary files, on the same file system).", REQUIRED)
    address: str = doc("Address of the S3 API listener.", "127.0.0.1")
    port: int = doc("Port of the S3 API listener; 0 picks a free one.", 9000, lo=0, hi=65535)
    website_address: str = doc("Address of the website endpoint listener.", "127.0.0.1")
    website_port: int | None = doc(
        "Port of a separate website endpoint listener (unset: website hosts are served on "
        "the S3 port only); 0 picks a free one.", None, lo=0, hi=65535)
    region: str = doc("Region name reported by GetBucketLocation and required in signatures.",
                      "us-east-1")
    virtual_host_suffixes: tuple[str, ...] = doc(
        "Host suffixes for virtual-host-style requests: with `s3.localhost`, "
        "`photos.s3.localhost` addresses bucket `photos`.", default_factory=tuple)
    website_host_suffixes: tuple[str, ...] = doc(
        "Host suffixes naming a bucket's website endpoint: with `web.localhost`, "
        "`photos.web.localhost` serves bucket `photos` as a website.", default_factory=tuple)
    users: dict[str, BucketUserConfig] = doc("Users by name.", default_factory=dict)
    buckets: dict[str, BucketConfig] = doc("Buckets by name, with their permissions.",
                                           default_factory=dict)
    max_object_bytes: int = doc("Largest single PUT or part accepted (S3: 5 GiB).",
                                5 << 30, lo=1)
    min_part_bytes: int = doc("Smallest non-final multipart part (S3: 5 MiB).", 5 << 20, lo=0)
    clock_skew_s: float = doc("Largest accepted difference between a request's signing time "
                              "and ours (S3: 15 minutes).", 900.0, lo=1)
    drain_timeout_s: float = doc("On stop, how long in-flight requests may run.", 10.0, lo=0)
    lifecycle: BucketLifecycleConfig = doc("Lifecycle rule evaluation.",
                                           default_factory=BucketLifecycleConfig)
    limits: HttpLimitsConfig = doc("Limits on the clients of the S3 API and website listeners "
                                   "(each listener has its own `max_connections`).",
                                   default_factory=HttpLimitsConfig)


def _check_users(loader: Loader, values: Mapping[str, Any], path: str) -> None:
    users: Mapping[str, BucketUserConfig] = values.get("users", {})
    seen: dict[str, str] = {}
    for name, user in users.items():
        upath = join(join(path, "users"), name)
        if not _ACCESS_KEY.fullmatch(user.access_key_id):
            loader.error(join(upath, "access_key_id"),
                         "must be 3-128 characters of letters, digits and _+=,.@-")
        elif user.access_key_id in seen:
            loader.error(join(upath, "access_key_id"),
                         f"already used by user {seen[user.access_key_id]!r}")
        else:
            seen[user.access_key_id] = name
        if not user.secret_access_key:
            loader.error(join(upath, "secret_access_key"), "must not be empty")
    for bname, bucket in values.get("buckets", {}).items():
        bpath = join(join(path, "buckets"), bname)
        if not valid_bucket_name(bname):
            loader.error(bpath, "not a valid S3 bucket name (3-63 of a-z 0-9 . -, starting "
                                "and ending with a letter or digit)")
        for grant in ("read", "write", "list"):
            for i, who in enumerate(getattr(bucket, grant)):
                if who != ANY_USER and who not in users:
                    loader.error(f"{join(bpath, grant)}[{i}]", f"unknown user {who!r}")
        if bucket.owner is not None and bucket.owner not in users:
            loader.error(join(bpath, "owner"), f"unknown user {bucket.owner!r}")
    if values.get("website_port") and values.get("website_port") == values.get("port") \
            and values.get("website_address") == values.get("address"):
        loader.error(join(path, "website_port"), "must differ from `port`")


VALIDATORS.setdefault(BucketsConfig, []).append(_check_users)


def load_buckets_config(data: object, env: Mapping[str, str] | None = None,
                        path: str = "buckets") -> BucketsConfig:
    """Load a `buckets:` mapping alone (tests, tools); raises ConfigError with YAML paths."""
    import os

    loader = Loader(os.environ if env is None else env)
    value = loader.value(BucketsConfig, data, path)
    if loader.problems or value is INVALID:
        raise ConfigError(loader.problems)
    assert isinstance(value, BucketsConfig)
    return value
