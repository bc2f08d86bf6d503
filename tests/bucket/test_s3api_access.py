"""Bucket policies, canned ACLs and Block Public Access through boto3 against a running
BucketServer, with anonymous reads checked by a plain HTTP client on both endpoints."""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.bucket.conftest import BOB, ThreadServer, client

OPEN = {"BlockPublicAcls": False, "IgnorePublicAcls": False, "BlockPublicPolicy": False,
        "RestrictPublicBuckets": False}


def public_policy(bucket: str, *extra: dict[str, Any], resource: str = "*") -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "PublicRead", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
         "Resource": f"arn:aws:s3:::{bucket}/{resource}"}, *extra]})


def anon(srv: ThreadServer, path: str, *, website_host: str | None = None
         ) -> tuple[int, bytes]:
    port = srv.server.website_port if website_host else srv.server.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": website_host or f"127.0.0.1:{port}"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def code_of(call: Any, *args: Any, **kw: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as e:
        call(*args, **kw)
    err = e.value.response["Error"]
    return err["Code"], err.get("Message", "")


@pytest.fixture
def pub(s3: Any) -> Any:
    s3.create_bucket(Bucket="pub")
    s3.put_object(Bucket="pub", Key="index.html", Body=b"home")
    s3.put_object(Bucket="pub", Key="private/secret.txt", Body=b"secret")
    return s3


def test_new_buckets_block_public_access(server: ThreadServer, pub: Any) -> None:
    conf = pub.get_public_access_block(Bucket="pub")["PublicAccessBlockConfiguration"]
    assert conf == {k: True for k in OPEN}
    assert code_of(pub.put_bucket_policy, Bucket="pub", Policy=public_policy("pub"))[0] == \
        "AccessDenied"
    assert code_of(pub.put_object, Bucket="pub", Key="x", Body=b"x",
                   ACL="public-read")[0] == "AccessDenied"
    assert code_of(pub.put_bucket_acl, Bucket="pub", ACL="public-read")[0] == "AccessDenied"
    assert anon(server, "/pub/index.html")[0] == 403
    # a private policy (a Deny) is not public, so it is accepted while blocked
    deny = json.dumps({"Statement": [{"Effect": "Deny", "Principal": "*",
                                      "Action": "s3:GetObject",
                                      "Resource": "arn:aws:s3:::pub/private/*"}]})
    pub.put_bucket_policy(Bucket="pub", Policy=deny)


def test_public_policy_opens_reads_on_the_api_and_website(server: ThreadServer,
                                                          pub: Any) -> None:
    pub.put_public_access_block(Bucket="pub", PublicAccessBlockConfiguration=OPEN)
    deny = {"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "s3:GetObject",
            "Resource": "arn:aws:s3:::pub/private/*"}
    pub.put_bucket_policy(Bucket="pub", Policy=public_policy("pub", deny))
    assert json.loads(pub.get_bucket_policy(Bucket="pub")["Policy"])["Statement"][1] == deny
    assert pub.get_bucket_policy_status(Bucket="pub")["PolicyStatus"]["IsPublic"]
    assert anon(server, "/pub/index.html") == (200, b"home")
    assert anon(server, "/pub/private/secret.txt")[0] == 403
    # the Deny holds for signed-in users too (the bucket owner included), as in S3
    assert code_of(pub.get_object, Bucket="pub", Key="private/secret.txt")[0] == "AccessDenied"
    assert anon(server, "/pub")[0] == 403  # no s3:ListBucket granted
    pub.put_bucket_website(Bucket="pub", WebsiteConfiguration={
        "IndexDocument": {"Suffix": "index.html"}})
    assert anon(server, "/", website_host="pub.web.example") == (200, b"home")
    # RestrictPublicBuckets voids the public statements at once
    pub.put_public_access_block(Bucket="pub", PublicAccessBlockConfiguration={
        **OPEN, "RestrictPublicBuckets": True})
    assert anon(server, "/pub/index.html")[0] == 403
    assert anon(server, "/", website_host="pub.web.example")[0] == 403
    pub.delete_public_access_block(Bucket="pub")
    assert code_of(pub.get_public_access_block, Bucket="pub")[0] == \
        "NoSuchPublicAccessBlockConfiguration"
    assert anon(server, "/pub/index.html")[0] == 200
    pub.delete_bucket_policy(Bucket="pub")
    assert anon(server, "/pub/index.html")[0] == 403
    assert code_of(pub.get_bucket_policy, Bucket="pub")[0] == "NoSuchBucketPolicy"


def test_malformed_policies_are_refused_naming_the_problem(pub: Any) -> None:
    pub.put_public_access_block(Bucket="pub", PublicAccessBlockConfiguration=OPEN)
    cond = json.dumps({"Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
        "Resource": "arn:aws:s3:::pub/*",
        "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}}]})
    code, message = code_of(pub.put_bucket_policy, Bucket="pub", Policy=cond)
    assert code == "MalformedPolicy" and "Conditions are not supported" in message
    code, message = code_of(pub.put_bucket_policy, Bucket="pub",
                            Policy=public_policy("pub").replace("s3:GetObject", "s3:PutObject"))
    assert code == "MalformedPolicy" and "s3:PutObject" in message
    assert code_of(pub.get_bucket_policy, Bucket="pub")[0] == "NoSuchBucketPolicy"


def test_only_the_owner_manages_access(server: ThreadServer, pub: Any) -> None:
    bob = client(server, BOB)
    assert code_of(bob.put_bucket_policy, Bucket="pub", Policy=public_policy("pub"))[0] == \
        "AccessDenied"
    assert code_of(bob.put_public_access_block, Bucket="pub",
                   PublicAccessBlockConfiguration=OPEN)[0] == "AccessDenied"
    assert code_of(bob.get_bucket_acl, Bucket="pub")[0] == "AccessDenied"


def test_object_acls(server: ThreadServer, pub: Any) -> None:
    pub.put_public_access_block(Bucket="pub", PublicAccessBlockConfiguration=OPEN)
    pub.put_object(Bucket="pub", Key="a.txt", Body=b"a", ACL="public-read")
    assert anon(server, "/pub/a.txt") == (200, b"a")
    grants = pub.get_object_acl(Bucket="pub", Key="a.txt")["Grants"]
    assert {"Grantee": {"Type": "Group", "URI": "http://acs.amazonaws.com/groups/global/AllUsers"},
            "Permission": "READ"} in grants
    pub.put_object(Bucket="pub", Key="a.txt", Body=b"a2")  # a new version is private again
    assert anon(server, "/pub/a.txt")[0] == 403
    pub.put_object_acl(Bucket="pub", Key="a.txt", ACL="public-read")
    assert anon(server, "/pub/a.txt") == (200, b"a2")
    pub.copy_object(Bucket="pub", Key="b.txt", CopySource="pub/a.txt", ACL="public-read")
    assert anon(server, "/pub/b.txt") == (200, b"a2")
    pub.put_public_access_block(Bucket="pub", PublicAccessBlockConfiguration={
        **OPEN, "IgnorePublicAcls": True})
    assert anon(server, "/pub/a.txt")[0] == 403
    pub.put_public_access_block(Bucket="pub", PublicAccessBlockConfiguration=OPEN)
    pub.put_object_acl(Bucket="pub", Key="a.txt", ACL="private")
    assert anon(server, "/pub/a.txt")[0] == 403
    pub.delete_object(Bucket="pub", Key="b.txt")
    pub.put_object(Bucket="pub", Key="b.txt", Body=b"b")
    assert anon(server, "/pub/b.txt")[0] == 403
    assert code_of(pub.put_object_acl, Bucket="pub", Key="missing", ACL="public-read")[0] == \
        "NoSuchKey"
    assert code_of(pub.put_object, Bucket="pub", Key="c", Body=b"c",
                   ACL="public-read-write")[0] == "NotImplemented"


def test_multipart_upload_with_public_acl(server: ThreadServer, pub: Any) -> None:
    pub.put_public_access_block(Bucket="pub", PublicAccessBlockConfiguration=OPEN)
    up = pub.create_multipart_upload(Bucket="pub", Key="mp.bin", ACL="public-read")
    etag = pub.upload_part(Bucket="pub", Key="mp.bin", UploadId=up["UploadId"], PartNumber=1,
                           Body=b"m" * 100)["ETag"]
    assert anon(server, "/pub/mp.bin")[0] == 403
    pub.complete_multipart_upload(Bucket="pub", Key="mp.bin", UploadId=up["UploadId"],
                                  MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert anon(server, "/pub/mp.bin") == (200, b"m" * 100)


def test_bucket_acl_public_read_lists(server: ThreadServer, pub: Any) -> None:
    pub.put_public_access_block(Bucket="pub", PublicAccessBlockConfiguration=OPEN)
    pub.put_bucket_acl(Bucket="pub", ACL="public-read")
    status, body = anon(server, "/pub?list-type=2")
    assert status == 200 and b"<Key>index.html</Key>" in body
    assert anon(server, "/pub/index.html")[0] == 403  # a bucket ACL does not open objects
    grants = pub.get_bucket_acl(Bucket="pub")["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("/AllUsers") for g in grants)
    pub.put_bucket_acl(Bucket="pub", ACL="private")
    assert anon(server, "/pub?list-type=2")[0] == 403


def test_deleted_bucket_forgets_its_settings(server: ThreadServer, pub: Any) -> None:
    pub.put_public_access_block(Bucket="pub", PublicAccessBlockConfiguration=OPEN)
    pub.put_bucket_policy(Bucket="pub", Policy=public_policy("pub"))
    for key in ("index.html", "private/secret.txt"):
        pub.delete_object(Bucket="pub", Key=key)
    pub.delete_bucket(Bucket="pub")
    pub.create_bucket(Bucket="pub")
    pub.put_object(Bucket="pub", Key="index.html", Body=b"again")
    assert code_of(pub.get_bucket_policy, Bucket="pub")[0] == "NoSuchBucketPolicy"
    assert anon(server, "/pub/index.html")[0] == 403


def test_configured_buckets_keep_their_yaml_access(server: ThreadServer, s3: Any) -> None:
    # no Block Public Access stored: the YAML's public_read stays in force
    assert code_of(s3.get_public_access_block, Bucket="site")[0] == \
        "NoSuchPublicAccessBlockConfiguration"
    s3.put_object(Bucket="site", Key="index.html", Body=b"yaml")
    assert anon(server, "/", website_host="site.example") == (200, b"yaml")
    assert anon(server, "/site/index.html") == (200, b"yaml")


def test_settings_survive_a_restart(server: ThreadServer, pub: Any) -> None:
    pub.put_public_access_block(Bucket="pub", PublicAccessBlockConfiguration=OPEN)
    pub.put_bucket_policy(Bucket="pub", Policy=public_policy("pub", resource="index.html"))
    pub.put_object(Bucket="pub", Key="a.txt", Body=b"a", ACL="public-read")
    server.stop()
    again = ThreadServer(server.config).start()
    try:
        assert anon(again, "/pub/index.html") == (200, b"home")
        assert anon(again, "/pub/a.txt") == (200, b"a")
        assert anon(again, "/pub/private/secret.txt")[0] == 403
        s3 = client(again)
        assert s3.get_public_access_block(Bucket="pub")["PublicAccessBlockConfiguration"] == OPEN
    finally:
        again.stop()
