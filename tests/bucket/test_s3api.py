"""The S3 API through boto3 (real SigV4, default checksum settings) and raw HTTP."""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.bucket.conftest import ALICE, BOB, ThreadServer, client


def code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    r = exc.value.response
    return r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"]


def raw(srv: ThreadServer, method: str, target: str, headers: dict[str, str] | None = None,
        body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.server.port, timeout=10)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_bucket_operations(s3: Any) -> None:
    s3.create_bucket(Bucket="photos")
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket="photos")
    assert code(e) == ("BucketAlreadyOwnedByYou", 409)
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket="Bad_Name")
    assert code(e)[0] == "InvalidBucketName"
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert names == ["photos", "shared", "site"]
    s3.head_bucket(Bucket="photos")
    assert s3.get_bucket_location(Bucket="photos").get("LocationConstraint") is None
    s3.put_object(Bucket="photos", Key="k", Body=b"x")
    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket="photos")
    assert code(e) == ("BucketNotEmpty", 409)
    s3.delete_object(Bucket="photos", Key="k")
    s3.delete_bucket(Bucket="photos")
    with pytest.raises(ClientError) as e:
        s3.head_bucket(Bucket="photos")
    assert code(e)[1] == 404


def test_put_get_head_metadata(s3: Any) -> None:
    body = os.urandom(300_000)
    r = s3.put_object(Bucket="site", Key="dir/file.bin", Body=body, ContentType="x/y",
                      CacheControl="max-age=30", ContentDisposition="attachment",
                      Metadata={"owner": "me"})
    assert r["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    g = s3.get_object(Bucket="site", Key="dir/file.bin")
    assert g["Body"].read() == body
    assert (g["ContentType"], g["CacheControl"], g["ContentDisposition"]) == \
        ("x/y", "max-age=30", "attachment")
    assert g["Metadata"] == {"owner": "me"}
    h = s3.head_object(Bucket="site", Key="dir/file.bin")
    assert h["ContentLength"] == len(body) and h["ETag"] == r["ETag"]
    o = s3.get_object(Bucket="site", Key="dir/file.bin", ResponseContentType="text/plain",
                      ResponseCacheControl="no-store")
    assert (o["ContentType"], o["CacheControl"]) == ("text/plain", "no-store")


def test_errors_are_s3_xml(server: ThreadServer, s3: Any) -> None:
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="site", Key="missing")
    assert code(e) == ("NoSuchKey", 404)
    assert e.value.response["ResponseMetadata"]["RequestId"]
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="nobucket", Key="k")
    assert code(e) == ("NoSuchBucket", 404)
    status, headers, body = raw(server, "GET", "/site/missing")
    assert status == 403  # anonymous: no list permission on "site"
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied')
    assert b"<RequestId>" + headers["x-amz-request-id"].encode() in body


def test_conditional_and_ranged_gets(s3: Any) -> None:
    data = bytes(range(256)) * 4
    etag = s3.put_object(Bucket="site", Key="r.bin", Body=data)["ETag"]
    assert s3.get_object(Bucket="site", Key="r.bin", Range="bytes=10-19")["Body"].read() == \
        data[10:20]
    g = s3.get_object(Bucket="site", Key="r.bin", Range="bytes=-5")
    assert g["ContentRange"] == "bytes 1019-1023/1024" and g["Body"].read() == data[-5:]
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="site", Key="r.bin", Range="bytes=2000-")
    assert code(e) == ("InvalidRange", 416)
    assert s3.get_object(Bucket="site", Key="r.bin", IfMatch=etag)["Body"].read() == data
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="site", Key="r.bin", IfMatch='"nope"')
    assert code(e) == ("PreconditionFailed", 412)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="site", Key="r.bin", IfNoneMatch=etag)
    assert code(e)[1] == 304
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="site", Key="r.bin", IfModifiedSince=future)
    assert code(e)[1] == 304
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="site", Key="r.bin",
                      IfUnmodifiedSince=datetime(2000, 1, 1, tzinfo=timezone.utc))
    assert code(e) == ("PreconditionFailed", 412)


def test_copy_object(s3: Any) -> None:
    s3.put_object(Bucket="site", Key="a.txt", Body=b"copy me", ContentType="text/a",
                  Metadata={"m": "1"})
    r = s3.copy_object(Bucket="shared", Key="b.txt", CopySource={"Bucket": "site",
                                                                  "Key": "a.txt"})
    assert r["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(b"copy me").hexdigest()}"'
    h = s3.head_object(Bucket="shared", Key="b.txt")
    assert h["ContentType"] == "text/a" and h["Metadata"] == {"m": "1"}
    s3.copy_object(Bucket="shared", Key="b.txt", CopySource="shared/b.txt",
                   MetadataDirective="REPLACE", ContentType="text/b")
    assert s3.head_object(Bucket="shared", Key="b.txt")["Metadata"] == {}
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket="shared", Key="b.txt", CopySource="shared/b.txt")
    assert code(e)[0] == "InvalidRequest"
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket="shared", Key="c", CopySource="shared/b.txt",
                       CopySourceIfMatch='"x"')
    assert code(e) == ("PreconditionFailed", 412)


def test_multipart_complete_abort_and_errors(s3: Any) -> None:
    parts_data = [os.urandom(5 << 20), os.urandom(1000)]
    up = s3.create_multipart_upload(Bucket="site", Key="mp.bin", ContentType="x/mp")
    uid = up["UploadId"]
    etags = [s3.upload_part(Bucket="site", Key="mp.bin", UploadId=uid, PartNumber=i + 1,
                            Body=d)["ETag"] for i, d in enumerate(parts_data)]
    listed = s3.list_parts(Bucket="site", Key="mp.bin", UploadId=uid)["Parts"]
    assert [p["PartNumber"] for p in listed] == [1, 2]
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket="site")["Uploads"]] == [uid]
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket="site", Key="mp.bin", UploadId=uid,
                                     MultipartUpload={"Parts": [
                                         {"PartNumber": 2, "ETag": etags[1]},
                                         {"PartNumber": 1, "ETag": etags[0]}]})
    assert code(e) == ("InvalidPartOrder", 400)
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket="site", Key="mp.bin", UploadId=uid,
                                     MultipartUpload={"Parts": [
                                         {"PartNumber": 1, "ETag": etags[1]}]})
    assert code(e) == ("InvalidPart", 400)
    r = s3.complete_multipart_upload(Bucket="site", Key="mp.bin", UploadId=uid,
                                     MultipartUpload={"Parts": [
                                         {"PartNumber": i + 1, "ETag": t}
                                         for i, t in enumerate(etags)]})
    assert r["ETag"].endswith('-2"')
    g = s3.get_object(Bucket="site", Key="mp.bin")
    assert g["Body"].read() == b"".join(parts_data) and g["ContentType"] == "x/mp"
    # a retried Complete (the client missed the answer) succeeds again, as on S3
    again = s3.complete_multipart_upload(Bucket="site", Key="mp.bin", UploadId=uid,
                                         MultipartUpload={"Parts": [
                                             {"PartNumber": i + 1, "ETag": t}
                                             for i, t in enumerate(etags)]})
    assert (again["ETag"], again["Key"]) == (r["ETag"], "mp.bin")
    with pytest.raises(ClientError) as e:  # another part list is no retry
        s3.complete_multipart_upload(Bucket="site", Key="mp.bin", UploadId=uid,
                                     MultipartUpload={"Parts": [
                                         {"PartNumber": 1, "ETag": etags[0]}]})
    assert code(e) == ("NoSuchUpload", 404)
    assert "Uploads" not in s3.list_multipart_uploads(Bucket="site")
    # abort
    uid2 = s3.create_multipart_upload(Bucket="site", Key="gone.bin")["UploadId"]
    s3.upload_part(Bucket="site", Key="gone.bin", UploadId=uid2, PartNumber=1, Body=b"x")
    s3.abort_multipart_upload(Bucket="site", Key="gone.bin", UploadId=uid2)
    with pytest.raises(ClientError) as e:
        s3.list_parts(Bucket="site", Key="gone.bin", UploadId=uid2)
    assert code(e) == ("NoSuchUpload", 404)
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket="site", Key="gone.bin")
    assert code(e)[1] == 404


def test_list_objects_v2_and_v1(s3: Any) -> None:
    keys = ["a/1", "a/2", "b+c d", "c/x/y", "ü"]
    for k in keys:
        s3.put_object(Bucket="shared", Key=k, Body=b"x")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="shared",
                                                         PaginationConfig={"PageSize": 2})
    assert [o["Key"] for p in pages for o in p.get("Contents", [])] == keys
    r = s3.list_objects_v2(Bucket="shared", Delimiter="/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["a/", "c/"]
    assert [o["Key"] for o in r["Contents"]] == ["b+c d", "ü"]
    r = s3.list_objects_v2(Bucket="shared", Prefix="a/", StartAfter="a/1")
    assert [o["Key"] for o in r["Contents"]] == ["a/2"]
    pages = s3.get_paginator("list_objects").paginate(Bucket="shared", Delimiter="/",
                                                      PaginationConfig={"PageSize": 1})
    got = [(o.get("Key") or o.get("Prefix")) for p in pages
           for o in p.get("Contents", []) + p.get("CommonPrefixes", [])]
    assert sorted(got) == ["a/", "b+c d", "c/", "ü"]


def test_delete_objects(s3: Any) -> None:
    for k in ("d/1", "d/2"):
        s3.put_object(Bucket="shared", Key=k, Body=b"x")
    r = s3.delete_objects(Bucket="shared", Delete={"Objects": [
        {"Key": "d/1"}, {"Key": "d/2"}, {"Key": "never-there"}, {"Key": "../x"},
        {"Key": "k" * 1025}]})
    assert sorted(d["Key"] for d in r["Deleted"]) == ["../x", "d/1", "d/2", "never-there"]
    assert [(x["Key"], x["Code"]) for x in r["Errors"]] == [("k" * 1025, "KeyTooLongError")]
    assert "Contents" not in s3.list_objects_v2(Bucket="shared")


def test_bad_signatures_and_unknown_keys(server: ThreadServer) -> None:
    wrong = client(server, (ALICE[0], "not-the-secret"))
    with pytest.raises(ClientError) as e:
        wrong.list_buckets()
    assert code(e) == ("SignatureDoesNotMatch", 403)
    unknown = client(server, ("AKIDNOBODY", "whatever"))
    with pytest.raises(ClientError) as e:
        unknown.list_objects_v2(Bucket="site")
    assert code(e) == ("InvalidAccessKeyId", 403)
    with pytest.raises(ClientError) as e:
        wrong.put_object(Bucket="site", Key="x", Body=b"x")
    assert code(e) == ("SignatureDoesNotMatch", 403)


def test_permissions(server: ThreadServer, s3: Any) -> None:
    bob = client(server, BOB)
    s3.put_object(Bucket="shared", Key="doc", Body=b"for bob")
    s3.put_object(Bucket="site", Key="pub", Body=b"public")
    assert bob.get_object(Bucket="shared", Key="doc")["Body"].read() == b"for bob"
    assert [o["Key"] for o in bob.list_objects_v2(Bucket="shared")["Contents"]] == ["doc"]
    with pytest.raises(ClientError) as e:
        bob.put_object(Bucket="shared", Key="doc", Body=b"overwrite")
    assert code(e) == ("AccessDenied", 403)
    with pytest.raises(ClientError) as e:
        bob.delete_bucket(Bucket="shared")
    assert code(e) == ("AccessDenied", 403)
    assert [b["Name"] for b in bob.list_buckets()["Buckets"]] == ["shared"]
    # a bucket bob creates is his; alice (admin) sees it too
    bob.create_bucket(Bucket="bobs")
    bob.put_object(Bucket="bobs", Key="k", Body=b"1")
    assert s3.get_object(Bucket="bobs", Key="k")["Body"].read() == b"1"
    # anonymous: public-read bucket readable, private one not, nothing writable
    assert raw(server, "GET", "/site/pub")[2] == b"public"
    assert raw(server, "GET", "/shared/doc")[0] == 403
    assert raw(server, "PUT", "/site/new", body=b"x")[0] == 403


def test_virtual_host_style(server: ThreadServer, s3: Any) -> None:
    s3.put_object(Bucket="site", Key="v/host.txt", Body=b"vhost")
    status, _, body = raw(server, "GET", "/v/host.txt", {"Host": "site.s3.example"})
    assert (status, body) == (200, b"vhost")
    status, _, body = raw(server, "GET", "/?list-type=2", {"Host": "site.s3.example"})
    assert status == 403  # anonymous listing of "site" is not allowed


@pytest.mark.parametrize("target", [
    "/site/..%2F..%2Fetc%2Fpasswd", "/site/%2e%2e/%2e%2e/etc/passwd", "/site/a/../../x",
    "/site/%252e%252e%252fx", "/site/%2Fetc%2Fpasswd", "/site/a%00b", "/site/..%5c..%5cx",
    "/site/.lbcdn/meta", "/.lbcdn/meta/x", "/site//etc/passwd",
])
def test_escape_attempts_over_http(server: ThreadServer, target: str) -> None:
    status, _, body = raw(server, "GET", target)
    assert status in (400, 403, 404), (target, status)
    assert b"root:" not in body


def test_metadata_area_not_addressable(server: ThreadServer, s3: Any) -> None:
    s3.put_object(Bucket="site", Key="m", Body=b"x")
    with pytest.raises(ClientError) as e:
        s3.list_objects_v2(Bucket=".lbcdn")
    assert code(e)[1] in (400, 404)
    status, _, _ = raw(server, "GET", "/.lbcdn/tmp")
    assert status in (400, 403, 404)


def test_failed_upload_keeps_previous_version(server: ThreadServer, s3: Any,
                                              bucket_root: Path) -> None:
    s3.put_object(Bucket="site", Key="keep", Body=b"version one")
    # a body shorter than its Content-Length: the client goes away mid-upload
    import socket
    sock = socket.create_connection(("127.0.0.1", server.server.port), timeout=5)
    sock.sendall(b"PUT /site/keep HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                 b"x-amz-content-sha256: UNSIGNED-PAYLOAD\r\n\r\n" + b"y" * 1000)
    sock.close()
    # and a bad Content-MD5 (checked by the payload reader)
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket="site", Key="keep", Body=b"version two",
                      ContentMD5="1B2M2Y8AsgTpgAmY7PhCfg==")
    assert code(e)[0] == "BadDigest"
    assert s3.get_object(Bucket="site", Key="keep")["Body"].read() == b"version one"
    assert os.listdir(bucket_root / ".lbcdn" / "tmp") == []


def test_concurrent_puts_one_wins_whole(s3: Any) -> None:
    bodies = [bytes([i]) * 200_000 for i in range(4)]

    def put(b: bytes) -> None:
        s3.put_object(Bucket="site", Key="race", Body=b)

    threads = [threading.Thread(target=put, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    got = s3.get_object(Bucket="site", Key="race")
    data = got["Body"].read()
    assert data in bodies
    assert got["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'


def test_website_configuration_api(s3: Any) -> None:
    s3.create_bucket(Bucket="webcfg")
    with pytest.raises(ClientError) as e:
        s3.get_bucket_website(Bucket="webcfg")
    assert code(e) == ("NoSuchWebsiteConfiguration", 404)
    s3.put_bucket_website(Bucket="webcfg", WebsiteConfiguration={
        "IndexDocument": {"Suffix": "home.html"}, "ErrorDocument": {"Key": "oops.html"},
        "RoutingRules": [{"Condition": {"KeyPrefixEquals": "old/"},
                          "Redirect": {"ReplaceKeyPrefixWith": "new/"}}]})
    w = s3.get_bucket_website(Bucket="webcfg")
    assert w["IndexDocument"] == {"Suffix": "home.html"}
    assert w["RoutingRules"][0]["Redirect"]["ReplaceKeyPrefixWith"] == "new/"
    s3.delete_bucket_website(Bucket="webcfg")
    with pytest.raises(ClientError):
        s3.get_bucket_website(Bucket="webcfg")
