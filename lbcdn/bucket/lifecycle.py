"""Bucket lifecycle rules (S3 PutBucketLifecycleConfiguration) and object tags, and the
background pass that applies the rules.

Stored (inside `<root>/.lbcdn/`):

    lifecycle/<bucket>.xml                       the configuration as put (validated)
    tags/<bucket>/<h2>/<h>/<version id>.json     an object version's tags, with its
                                                 (mtime_ns, ETag): a new version of the same
                                                 id ("null") starts without tags, as on S3

Supported actions: Expiration (Days, Date, ExpiredObjectDeleteMarker),
NoncurrentVersionExpiration (NoncurrentDays, NewerNoncurrentVersions),
AbortIncompleteMultipartUpload (DaysAfterInitiation); filters by Prefix, Tag and And.
Transitions have nowhere to go here and are refused with NotImplemented.

The pass (`Lifecycle.run_pass`, blocking; BucketServer runs it in a thread every
`buckets.lifecycle.interval_s` in the process serving S3) examines at most
`max_versions_per_pass` versions, resuming where the previous pass stopped. A "day" is
`buckets.lifecycle.day_s` seconds (86400; tests shrink it); an age counts from the version's
Last-Modified (a noncurrent one's from when its successor was written), not rounded to
midnight as S3 does. Decisions are pure functions of the facts and `now`. An expiration of a
current version is made under the key's lock only if the version is still current
(Versions.expire), so a pass never removes an upload that landed after it looked.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import logging
import os
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from lbcdn.bucket import layout
from lbcdn.bucket.errors import S3Error
from lbcdn.bucket.storage import ObjectInfo, Storage, _write_json_atomic
from lbcdn.bucket.versions import Version, Versions
from lbcdn.bucket.xmlio import parse_xml

log = logging.getLogger("lbcdn.bucket.lifecycle")

MAX_RULES = 1000
MAX_TAGS = 10
_REFUSED = ("Transition", "NoncurrentVersionTransition")


@dataclass(frozen=True)
class Rule:
    id: str
    enabled: bool
    prefix: str = ""
    tags: tuple[tuple[str, str], ...] = ()
    days: int | None = None                 # Expiration/Days
    date: float | None = None               # Expiration/Date (unix time)
    expired_marker: bool = False            # Expiration/ExpiredObjectDeleteMarker
    noncurrent_days: int | None = None
    newer_noncurrent: int | None = None
    abort_days: int | None = None

    def matches(self, key: str, tags: Mapping[str, str]) -> bool:
        return key.startswith(self.prefix) and all(tags.get(k) == v for k, v in self.tags)


# -- decisions (pure) ------------------------------------------------------------------------

def current_expired(rule: Rule, mtime_s: float, now: float, day_s: float) -> bool:
    if rule.days is not None and now - mtime_s >= rule.days * day_s:
        return True
    return rule.date is not None and now >= rule.date


def noncurrent_expired(rule: Rule, noncurrent_since_s: float, newer_noncurrent: int,
                       now: float, day_s: float) -> bool:
    """`newer_noncurrent`: how many noncurrent versions of the key are newer than this one."""
    if rule.noncurrent_days is None:
        return False
    if rule.newer_noncurrent is not None and newer_noncurrent < rule.newer_noncurrent:
        return False
    return now - noncurrent_since_s >= rule.noncurrent_days * day_s


def upload_expired(rule: Rule, initiated_s: float, now: float, day_s: float) -> bool:
    return rule.abort_days is not None and now - initiated_s >= rule.abort_days * day_s


# -- parsing ---------------------------------------------------------------------------------

def _int(el: ET.Element, name: str, lo: int) -> int | None:
    text = el.findtext(name)
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise S3Error("MalformedXML", f"{name} must be an integer.") from None
    if value < lo:
        raise S3Error("InvalidArgument", f"{name} must be at least {lo}.",
                      extra={"ArgumentName": name, "ArgumentValue": text})
    return value


def _date(text: str) -> float:
    m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})(?:T00:00:00(?:\.0+)?(?:Z|\+00:00))?",
                     text.strip())
    if not m:
        raise S3Error("InvalidArgument", "Date must be at midnight UTC (ISO 8601).",
                      extra={"ArgumentName": "Date", "ArgumentValue": text})
    return float(calendar.timegm((int(m[1]), int(m[2]), int(m[3]), 0, 0, 0)))


def _tag(el: ET.Element) -> tuple[str, str]:
    return (el.findtext("Key") or "", el.findtext("Value") or "")


def parse_lifecycle(body: bytes) -> list[Rule]:
    root = parse_xml(body, "LifecycleConfiguration")
    rules: list[Rule] = []
    seen: set[str] = set()
    elements = root.findall("Rule")
    if not elements or len(elements) > MAX_RULES:
        raise S3Error("MalformedXML", f"A lifecycle configuration has 1 to {MAX_RULES} rules.")
    for i, el in enumerate(elements):
        rid = el.findtext("ID") or f"rule-{i + 1}"
        if rid in seen or len(rid) > 255:
            raise S3Error("InvalidArgument", "Rule IDs must be unique and at most 255 "
                          "characters.", extra={"ArgumentName": "ID", "ArgumentValue": rid})
        seen.add(rid)
        status = el.findtext("Status")
        if status not in ("Enabled", "Disabled"):
            raise S3Error("MalformedXML", f"Rule {rid}: Status must be Enabled or Disabled.")
        for name in _REFUSED:
            if el.find(name) is not None:
                raise S3Error("NotImplemented", f"Rule {rid}: {name} is not supported (one "
                              "storage class).")
        prefix, tags = el.findtext("Prefix") or "", []
        flt = el.find("Filter")
        if flt is not None:
            parts = list(flt)
            if len(parts) > 1:
                raise S3Error("MalformedXML", f"Rule {rid}: Filter takes one of Prefix, Tag "
                              "or And.")
            for p in parts:
                if p.tag == "Prefix":
                    prefix = p.text or ""
                elif p.tag == "Tag":
                    tags.append(_tag(p))
                elif p.tag == "And":
                    prefix = p.findtext("Prefix") or ""
                    tags.extend(_tag(t) for t in p.findall("Tag"))
                else:
                    raise S3Error("NotImplemented", f"Rule {rid}: Filter {p.tag} is not "
                                  "supported.")
        days = date = None
        marker = False
        exp = el.find("Expiration")
        if exp is not None:
            days = _int(exp, "Days", 1)
            date_text = exp.findtext("Date")
            date = _date(date_text) if date_text is not None else None
            marker = (exp.findtext("ExpiredObjectDeleteMarker") or "").strip() == "true"
            if (days is not None) + (date is not None) + marker != 1:
                raise S3Error("MalformedXML", f"Rule {rid}: Expiration takes one of Days, "
                              "Date or ExpiredObjectDeleteMarker.")
            if marker and tags:
                raise S3Error("InvalidRequest", f"Rule {rid}: ExpiredObjectDeleteMarker "
                              "cannot be used with a tag filter.")
        nc_days = newer = None
        nce = el.find("NoncurrentVersionExpiration")
        if nce is not None:
            nc_days = _int(nce, "NoncurrentDays", 1)
            newer = _int(nce, "NewerNoncurrentVersions", 1)
            if nc_days is None:
                raise S3Error("MalformedXML", f"Rule {rid}: NoncurrentVersionExpiration "
                              "needs NoncurrentDays.")
        abort = None
        aimu = el.find("AbortIncompleteMultipartUpload")
        if aimu is not None:
            abort = _int(aimu, "DaysAfterInitiation", 1)
            if abort is None:
                raise S3Error("MalformedXML", f"Rule {rid}: AbortIncompleteMultipartUpload "
                              "needs DaysAfterInitiation.")
            if tags:
                raise S3Error("InvalidRequest", f"Rule {rid}: AbortIncompleteMultipartUpload "
                              "cannot be used with a tag filter.")
        if exp is None and nce is None and aimu is None:
            raise S3Error("MalformedXML", f"Rule {rid}: at least one action is needed.")
        rules.append(Rule(rid, status == "Enabled", prefix, tuple(tags), days, date, marker,
                          nc_days, newer, abort))
    return rules


def parse_tagging(body: bytes) -> dict[str, str]:
    root = parse_xml(body, "Tagging")
    tags: dict[str, str] = {}
    for el in root.findall("TagSet/Tag"):
        key, value = _tag(el)
        if key in tags:
            raise S3Error("InvalidTag", "Cannot provide multiple Tags with the same key",
                          status=400)
        tags[key] = value
    check_tags(tags)
    return tags


def tags_from_header(value: str) -> dict[str, str]:
    """`x-amz-tagging: k1=v1&k2=v2` (URL-encoded) of a PutObject."""
    tags: dict[str, str] = {}
    for k, v in parse_qsl(value, keep_blank_values=True):
        tags[k] = v
    check_tags(tags)
    return tags


def check_tags(tags: Mapping[str, str]) -> None:
    if len(tags) > MAX_TAGS:
        raise S3Error("BadRequest", f"Object tags cannot be greater than {MAX_TAGS}",
                      status=400)
    for k, v in tags.items():
        if not k or len(k) > 128 or len(v) > 256:
            raise S3Error("InvalidTag", "A tag key is 1-128 characters, a value at most 256.",
                          status=400)


# -- stores ----------------------------------------------------------------------------------

class Tags:
    """Object tags by version (see the module docstring)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.dir = os.path.join(storage.area, "tags")

    def _path(self, bucket: str, key: str, version_id: str) -> str:
        return os.path.join(self.dir, bucket, layout.spill_path(key), version_id + ".json")

    def get(self, bucket: str, info: ObjectInfo) -> dict[str, str]:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            with open(self._path(bucket, info.key, info.version_id), encoding="utf-8") as f:
                data = json.load(f)
            if (data["mtime_ns"], data["etag"]) == (info.mtime_ns, info.etag):
                return {str(k): str(v) for k, v in data["tags"].items()}
        return {}

    def put(self, bucket: str, info: ObjectInfo, tags: Mapping[str, str]) -> None:
        path = self._path(bucket, info.key, info.version_id)
        if not tags:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        _write_json_atomic(path, {"mtime_ns": info.mtime_ns, "etag": info.etag,
                                  "tags": dict(tags)}, self.storage.tmp_dir)


class LifecycleStore:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.dir = os.path.join(storage.area, "lifecycle")

    def _path(self, bucket: str) -> str:
        return os.path.join(self.dir, bucket + ".xml")

    def get(self, bucket: str) -> bytes | None:
        self.storage.require_bucket(bucket)
        try:
            with open(self._path(bucket), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def put(self, bucket: str, body: bytes) -> None:
        self.storage.require_bucket(bucket)
        parse_lifecycle(body)
        os.makedirs(self.dir, exist_ok=True)
        tmp = os.path.join(self.storage.tmp_dir, f"lifecycle-{bucket}-{time.time_ns()}")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path(bucket))

    def delete(self, bucket: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(bucket))

    def buckets(self) -> list[str]:
        with contextlib.suppress(FileNotFoundError):
            return sorted(n[:-4] for n in os.listdir(self.dir) if n.endswith(".xml"))
        return []


# -- the pass --------------------------------------------------------------------------------

@dataclass
class PassStats:
    examined: int = 0
    expired: int = 0
    noncurrent_expired: int = 0
    markers_removed: int = 0
    uploads_aborted: int = 0


class Lifecycle:
    def __init__(self, storage: Storage, versions: Versions, tags: Tags,
                 store: LifecycleStore, *, day_s: float, max_versions_per_pass: int) -> None:
        self.storage, self.versions, self.tags, self.store = storage, versions, tags, store
        self.day_s = day_s
        self.budget = max_versions_per_pass
        self._cursor: dict[str, str] = {}   # bucket -> last key examined by the previous pass

    def run_pass(self, now: float) -> PassStats:
        stats = PassStats()
        for bucket in self.store.buckets():
            if stats.examined >= self.budget:
                break
            with contextlib.suppress(S3Error, OSError):
                body = self.store.get(bucket)
                rules = [r for r in parse_lifecycle(body) if r.enabled] if body else []
                if rules:
                    self._bucket(bucket, rules, now, stats)
        return stats

    def _bucket(self, bucket: str, rules: list[Rule], now: float, stats: PassStats) -> None:
        for upload in self.storage.list_uploads(bucket):
            if any(r.matches(upload.key, {}) and upload_expired(r, upload.initiated, now,
                                                                self.day_s) for r in rules):
                self.storage.abort_upload(upload)
                stats.uploads_aborted += 1
        after = self._cursor.pop(bucket, "")
        for key in self.versions.keys(bucket, "", after):
            if stats.examined >= self.budget:
                self._cursor[bucket] = after
                return
            vs = self.versions.versions_of(bucket, key)
            stats.examined += max(1, len(vs))
            self._key(bucket, vs, rules, now, stats)
            after = key

    def _key(self, bucket: str, vs: list[Version], rules: list[Rule], now: float,
             stats: PassStats) -> None:
        if not vs:
            return
        latest = vs[0]
        if latest.info is not None:
            tags = self.tags.get(bucket, latest.info)
            if any(r.matches(latest.key, tags) and current_expired(
                    r, latest.info.last_modified, now, self.day_s) for r in rules):
                if self.versions.expire(bucket, latest.info):
                    stats.expired += 1
                return  # the pass after sees the key as it is then
        elif len(vs) == 1 and any(r.expired_marker and r.matches(latest.key, {})
                                  for r in rules):
            if self.versions.remove_lone_marker(bucket, latest.key, latest.version_id):
                stats.markers_removed += 1
            return
        for newer, (prev, v) in enumerate(zip(vs, vs[1:])):
            tags = self.tags.get(bucket, v.info) if v.info is not None else {}
            if any(r.matches(v.key, tags) and noncurrent_expired(
                    r, prev.mtime_ns / 1e9, newer, now, self.day_s) for r in rules):
                self.versions.delete(bucket, v.key, v.version_id)
                stats.noncurrent_expired += 1
