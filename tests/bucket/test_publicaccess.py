"""Canned ACLs, Block Public Access and their decision together with the policy (pure)."""

from __future__ import annotations

import json

import pytest

from lbcdn.bucket.bucketpolicy import parse_policy
from lbcdn.bucket.errors import S3Error
from lbcdn.bucket.publicaccess import (ALL_BLOCKED, ALL_USERS, PRIVATE, PUBLIC_READ,
                                       BucketAccess, PublicAccessBlock, acl_from_headers,
                                       acl_from_xml, parse_block, public_decision, render_acl,
                                       render_block)

PUBLIC_POLICY = parse_policy(json.dumps({"Statement": [
    {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
     "Resource": "arn:aws:s3:::b1/*"},
    {"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject",
     "Resource": "arn:aws:s3:::b1/secret/*"}]}), "b1")


def test_no_settings_no_opinion() -> None:
    assert public_decision(BucketAccess(), "read", "k", False) is None
    assert public_decision(BucketAccess(), "list", None, False) is None


def test_policy_allow_and_deny() -> None:
    a = BucketAccess(policy=PUBLIC_POLICY)
    assert public_decision(a, "read", "k", False) == "allow"
    assert public_decision(a, "read", "secret/k", True) == "deny"


def test_restrict_public_buckets_voids_the_policy_allow_but_not_its_deny() -> None:
    a = BucketAccess(policy=PUBLIC_POLICY, block=PublicAccessBlock(restrict_public_buckets=True))
    assert public_decision(a, "read", "k", False) is None
    assert public_decision(a, "read", "secret/k", False) == "deny"


def test_acls_and_ignore_public_acls() -> None:
    assert public_decision(BucketAccess(), "read", "k", True) == "allow"
    # a bucket's public-read lets anyone list, not read objects (as S3)
    bucket_public = BucketAccess(acl=PUBLIC_READ)
    assert public_decision(bucket_public, "list", None, False) == "allow"
    assert public_decision(bucket_public, "read", "k", False) is None
    ignored = BucketAccess(acl=PUBLIC_READ, block=PublicAccessBlock(ignore_public_acls=True))
    assert public_decision(ignored, "list", None, False) is None
    assert public_decision(ignored, "read", "k", True) is None
    # the other two settings refuse new public settings; they do not void stored ones
    refusing = BucketAccess(acl=PUBLIC_READ, block=PublicAccessBlock(True, False, True, False))
    assert public_decision(refusing, "list", None, False) == "allow"


@pytest.mark.parametrize("headers,acl", [
    ({}, None),
    ({"x-amz-acl": "private"}, PRIVATE),
    ({"x-amz-acl": "public-read"}, PUBLIC_READ),
    ({"x-amz-acl": "bucket-owner-full-control"}, PRIVATE),
    ({"x-amz-grant-read": f'uri="{ALL_USERS}"'}, PUBLIC_READ),
    ({"x-amz-grant-read": f"uri={ALL_USERS}"}, PUBLIC_READ),
])
def test_acl_from_headers(headers: dict[str, str], acl: str | None) -> None:
    assert acl_from_headers(headers) == acl


@pytest.mark.parametrize("headers,code", [
    ({"x-amz-acl": "public-read-write"}, "NotImplemented"),
    ({"x-amz-acl": "authenticated-read"}, "NotImplemented"),
    ({"x-amz-acl": "nonsense"}, "InvalidArgument"),
    ({"x-amz-grant-write": f'uri="{ALL_USERS}"'}, "NotImplemented"),
    ({"x-amz-grant-read": 'id="abc"'}, "NotImplemented"),
    ({"x-amz-acl": "private", "x-amz-grant-read": f'uri="{ALL_USERS}"'}, "InvalidRequest"),
])
def test_acl_headers_refused(headers: dict[str, str], code: str) -> None:
    with pytest.raises(S3Error) as e:
        acl_from_headers(headers)
    assert e.value.code == code


def test_acl_xml_round_trip() -> None:
    assert acl_from_xml(render_acl("alice", PUBLIC_READ)) == PUBLIC_READ
    assert acl_from_xml(render_acl("alice", PRIVATE)) == PRIVATE
    other = render_acl("alice", PRIVATE).replace(
        b"</AccessControlList>",
        b'<Grant><Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        b'xsi:type="CanonicalUser"><ID>bob</ID></Grantee><Permission>WRITE</Permission>'
        b"</Grant></AccessControlList>")
    with pytest.raises(S3Error) as e:
        acl_from_xml(other)
    assert e.value.code == "NotImplemented" and "WRITE to bob" in e.value.message
    with pytest.raises(S3Error) as e:
        acl_from_xml(b"<nope")
    assert e.value.code == "MalformedXML"


def test_block_xml() -> None:
    assert parse_block(render_block(ALL_BLOCKED)) == ALL_BLOCKED
    partial = b"<PublicAccessBlockConfiguration><BlockPublicAcls>TRUE</BlockPublicAcls>" \
              b"</PublicAccessBlockConfiguration>"
    assert parse_block(partial) == PublicAccessBlock(block_public_acls=True)
    for bad in (b"<PublicAccessBlockConfiguration><BlockPublicAcls>yes</BlockPublicAcls>"
                b"</PublicAccessBlockConfiguration>",
                b"<PublicAccessBlockConfiguration><Other>true</Other>"
                b"</PublicAccessBlockConfiguration>",
                b"<Wrong/>"):
        with pytest.raises(S3Error) as e:
            parse_block(bad)
        assert e.value.code == "MalformedXML"
