"""The access store on disk: round trips, object ACLs bound to the object's identity, changes
seen without a reload, unreadable records read as private."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from lbcdn.bucket.accessstore import AccessStore
from lbcdn.bucket.bucketpolicy import parse_policy
from lbcdn.bucket.publicaccess import (ALL_BLOCKED, PRIVATE, PUBLIC_READ, BucketAccess,
                                       PublicAccessBlock)

POLICY = json.dumps({"Statement": {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                                   "Resource": "arn:aws:s3:::b1/*"}})


def test_round_trip_and_update(tmp_path: Path) -> None:
    store = AccessStore(str(tmp_path))
    assert store.load("b1") == BucketAccess()
    store.save("b1", BucketAccess(block=ALL_BLOCKED))
    store.update("b1", lambda a: replace(a, policy=parse_policy(POLICY, "b1"), acl=PUBLIC_READ))
    again = AccessStore(str(tmp_path)).load("b1")  # another process reading the same files
    assert again.block == ALL_BLOCKED and again.acl == PUBLIC_READ
    assert again.policy is not None and again.policy.text == POLICY
    store.update("b1", lambda a: replace(a, block=PublicAccessBlock()))
    assert store.load("b1").block == PublicAccessBlock()
    store.drop("b1")
    assert store.load("b1") == BucketAccess()


def test_a_change_by_another_process_is_seen(tmp_path: Path) -> None:
    reader, writer = AccessStore(str(tmp_path)), AccessStore(str(tmp_path))
    writer.save("b1", BucketAccess(block=ALL_BLOCKED))
    assert reader.load("b1").block == ALL_BLOCKED
    writer.save("b1", BucketAccess())
    assert reader.load("b1").block is None


@pytest.mark.parametrize("content", ['{"policy": null', '{"acl": "public-read"}',
                                     '{"policy": "{}", "acl": "private", "block": null}'])
def test_unreadable_record_is_private_and_blocked(tmp_path: Path, content: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    store = AccessStore(str(tmp_path))
    os.makedirs(store.dir)
    Path(store.dir, "b1.json").write_text(content)
    assert store.load("b1") == BucketAccess(block=ALL_BLOCKED)
    assert "unreadable access settings" in caplog.text


def test_object_acl_follows_the_object_identity(tmp_path: Path) -> None:
    store = AccessStore(str(tmp_path))
    v1 = (5, 1000, "etag1")
    assert store.object_acl("b1", "k", v1) == PRIVATE
    store.set_object_acl("b1", "k", v1, PUBLIC_READ)
    assert store.object_acl("b1", "k", v1) == PUBLIC_READ
    assert store.object_acl("b1", "k", (5, 2000, "etag2")) == PRIVATE  # overwritten: private
    assert store.object_acl("b1", "other", v1) == PRIVATE
    store.set_object_acl("b1", "k", v1, PRIVATE)
    assert store.object_acl("b1", "k", v1) == PRIVATE
    store.set_object_acl("b1", "k", v1, PUBLIC_READ)
    store.forget_object("b1", "k")
    assert store.object_acl("b1", "k", v1) == PRIVATE


def test_upload_acl(tmp_path: Path) -> None:
    store = AccessStore(str(tmp_path))
    assert store.upload_acl("b1", "u" * 20) == PRIVATE
    store.set_upload_acl("b1", "u" * 20, PUBLIC_READ)
    assert store.upload_acl("b1", "u" * 20) == PUBLIC_READ
    store.forget_upload("b1", "u" * 20)
    assert store.upload_acl("b1", "u" * 20) == PRIVATE
