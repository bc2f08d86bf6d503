"""Lifecycle rules: parsing (with S3's errors), the pure decisions, and a pass over a Storage
on disk, including an upload that lands between the pass's look and its delete."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lbcdn.bucket.errors import S3Error
from lbcdn.bucket.lifecycle import (Lifecycle, LifecycleStore, Rule, Tags, current_expired,
                                    noncurrent_expired, parse_lifecycle, tags_from_header,
                                    upload_expired)
from lbcdn.bucket.storage import ObjectInfo, Storage
from lbcdn.bucket.versions import Versions


def lc_xml(rules: str) -> bytes:
    return f"<LifecycleConfiguration>{rules}</LifecycleConfiguration>".encode()


def test_parse_filters_and_actions() -> None:
    rules = parse_lifecycle(lc_xml(
        "<Rule><ID>a</ID><Status>Enabled</Status><Filter><And><Prefix>p/</Prefix>"
        "<Tag><Key>k</Key><Value>v</Value></Tag></And></Filter>"
        "<Expiration><Days>3</Days></Expiration>"
        "<NoncurrentVersionExpiration><NoncurrentDays>2</NoncurrentDays>"
        "<NewerNoncurrentVersions>4</NewerNoncurrentVersions></NoncurrentVersionExpiration>"
        "</Rule><Rule><Status>Disabled</Status><Prefix>old/</Prefix>"
        "<Expiration><Date>2030-01-01T00:00:00Z</Date></Expiration></Rule>"))
    assert rules[0] == Rule("a", True, "p/", (("k", "v"),), 3, None, False, 2, 4, None)
    assert rules[1].prefix == "old/" and not rules[1].enabled and rules[1].date == 1893456000
    assert rules[0].matches("p/x", {"k": "v"}) and not rules[0].matches("p/x", {})


@pytest.mark.parametrize("rule,code", [
    ("<Status>On</Status><Expiration><Days>1</Days></Expiration>", "MalformedXML"),
    ("<Status>Enabled</Status>", "MalformedXML"),
    ("<Status>Enabled</Status><Expiration><Days>0</Days></Expiration>", "InvalidArgument"),
    ("<Status>Enabled</Status><Expiration><Days>1</Days><Date>2030-01-01</Date></Expiration>",
     "MalformedXML"),
    ("<Status>Enabled</Status><Expiration><Date>2030-01-01T10:00:00Z</Date></Expiration>",
     "InvalidArgument"),
    ("<Status>Enabled</Status><Transition><Days>1</Days></Transition>", "NotImplemented"),
    ("<Status>Enabled</Status><Filter><Tag><Key>k</Key><Value>v</Value></Tag></Filter>"
     "<AbortIncompleteMultipartUpload><DaysAfterInitiation>1</DaysAfterInitiation>"
     "</AbortIncompleteMultipartUpload>", "InvalidRequest"),
])
def test_parse_refuses(rule: str, code: str) -> None:
    with pytest.raises(S3Error) as e:
        parse_lifecycle(lc_xml(f"<Rule>{rule}</Rule>"))
    assert e.value.code == code


def test_decisions() -> None:
    r = Rule("r", True, days=2, noncurrent_days=1, newer_noncurrent=1, abort_days=3)
    assert not current_expired(r, 100.0, 100.0 + 2 * 10 - 1, 10)
    assert current_expired(r, 100.0, 100.0 + 2 * 10, 10)
    assert not noncurrent_expired(r, 0.0, 0, 100.0, 10)  # the newest noncurrent is kept
    assert noncurrent_expired(r, 0.0, 1, 100.0, 10)
    assert not noncurrent_expired(r, 95.0, 1, 100.0, 10)
    assert upload_expired(r, 0.0, 30.0, 10) and not upload_expired(r, 0.0, 29.0, 10)
    assert tags_from_header("a=1&b=x%20y") == {"a": "1", "b": "x y"}


class RacingTags(Tags):
    """Tags whose lookup lets an upload land: the pass looked at the key just before."""

    def __init__(self, storage: Storage, upload: list[bytes]) -> None:
        super().__init__(storage)
        self.upload = upload

    def get(self, bucket: str, info: ObjectInfo) -> dict[str, str]:
        if self.upload:
            p = self.storage.begin_write()
            p.write(self.upload.pop())
            self.storage.commit(p, bucket, info.key, {})
        return super().get(bucket, info)


@pytest.mark.parametrize("versioning", [None, "Enabled"])
def test_pass_never_removes_an_upload_that_landed_after_it_looked(
        tmp_path: Path, versioning: str | None) -> None:
    st = Storage(str(tmp_path))
    st.prepare()
    versions = Versions(st)
    versions.prepare()
    st.create_bucket("data", "u")
    if versioning:
        versions.set_status("data", versioning)
    p = st.begin_write()
    p.write(b"old")
    st.commit(p, "data", "k", {})
    store = LifecycleStore(st)
    store.put("data", lc_xml("<Rule><Status>Enabled</Status><Filter><Prefix></Prefix>"
                             "</Filter><Expiration><Days>1</Days></Expiration></Rule>"))
    lc = Lifecycle(st, versions, RacingTags(st, [b"fresh"]), store, day_s=1.0,
                   max_versions_per_pass=100)
    # Both versions count as due by their age; the fresh one must survive this pass anyway.
    stats = lc.run_pass(time.time() + 10)
    assert stats.expired == 0
    assert st.stat_object("data", "k").size == 5
    assert lc.run_pass(time.time() + 10).expired == 1


def test_pass_is_bounded_and_resumes(tmp_path: Path) -> None:
    st = Storage(str(tmp_path))
    st.prepare()
    versions = Versions(st)
    st.create_bucket("data", "u")
    for i in range(5):
        p = st.begin_write()
        p.write(b"x")
        st.commit(p, "data", f"k{i}", {})
    store = LifecycleStore(st)
    store.put("data", lc_xml("<Rule><Status>Enabled</Status><Filter><Prefix>k</Prefix>"
                             "</Filter><Expiration><Days>1</Days></Expiration></Rule>"))
    lc = Lifecycle(st, versions, Tags(st), store, day_s=1.0, max_versions_per_pass=2)
    assert [lc.run_pass(time.time() + 10).expired for _ in range(3)] == [2, 2, 1]
    assert list(st.iter_keys("data")) == []
