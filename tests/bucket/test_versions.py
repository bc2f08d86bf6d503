"""Versions over a Storage on disk (no network): the hook keeps replaced versions, ids sort by
age, a record duplicating the current version is listed once, expire() is conditional."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbcdn.bucket.errors import S3Error
from lbcdn.bucket.storage import ObjectInfo, Storage
from lbcdn.bucket.versions import Versions, check_version_id, new_version_id


@pytest.fixture
def vs(tmp_path: Path) -> Versions:
    st = Storage(str(tmp_path))
    st.prepare()
    v = Versions(st)
    v.prepare()
    st.create_bucket("data", "u")
    return v


def put(v: Versions, key: str, body: bytes) -> ObjectInfo:
    p = v.storage.begin_write()
    p.write(body)
    return v.storage.commit(p, "data", key, {})


def test_version_ids_sort_by_age_and_are_checked() -> None:
    assert new_version_id(1) < new_version_id(2)
    check_version_id("null")
    with pytest.raises(S3Error):
        check_version_id("../x")


def test_kept_version_listed_once_when_the_commit_did_not_happen(vs: Versions) -> None:
    vs.set_status("data", "Enabled")
    v1 = put(vs, "k", b"one")
    vs._keep("data", v1)  # what a crash between keep and rename leaves behind
    assert [(v.version_id, v.latest) for v in vs.versions_of("data", "k")] == [
        (v1.version_id, True)]
    v2 = put(vs, "k", b"two")
    assert [v.version_id for v in vs.versions_of("data", "k")] == [v2.version_id,
                                                                   v1.version_id]


def test_expire_only_the_version_seen(vs: Versions) -> None:
    vs.set_status("data", "Enabled")
    seen = put(vs, "k", b"old")
    fresh = put(vs, "k", b"new")  # an upload that landed after the pass looked
    assert not vs.expire("data", seen)
    assert vs.get("data", "k", None).version_id == fresh.version_id
    assert vs.expire("data", fresh)
    with pytest.raises(S3Error) as e:
        vs.get("data", "k", None)
    assert e.value.headers["x-amz-delete-marker"] == "true"


def test_unversioned_overwrite_of_the_same_null_version_is_not_expired(vs: Versions) -> None:
    seen = put(vs, "k", b"old")
    put(vs, "k", b"newer")
    assert not vs.expire("data", seen)
    assert vs.storage.stat_object("data", "k").size == 5


def test_start_drops_data_left_without_a_record(vs: Versions) -> None:
    vs.set_status("data", "Enabled")
    v1 = put(vs, "k", b"one")
    put(vs, "k", b"two")
    d = Path(vs._key_dir("data", "k"))
    (d / (v1.version_id + ".json")).unlink()  # a crash between the link and the record
    assert (d / v1.version_id).exists()
    Versions(vs.storage).prepare()
    assert not (d / v1.version_id).exists()
    assert len(vs.versions_of("data", "k")) == 1


def test_complete_multipart_keeps_the_replaced_version(vs: Versions) -> None:
    vs.set_status("data", "Enabled")
    v1 = put(vs, "k", b"one")
    st = vs.storage
    upload = st.create_upload("data", "k", {}, "u")
    p = st.begin_write()
    p.write(b"multipart")
    part = st.commit_part(p, upload, 1)
    done = st.complete_upload("data", "k", upload.upload_id, [(1, part.etag)])
    assert done.version_id not in ("null", v1.version_id)
    assert [(v.version_id, v.latest) for v in vs.versions_of("data", "k")] == [
        (done.version_id, True), (v1.version_id, False)]
    assert vs.get("data", "k", v1.version_id).size == 3
