"""Operations tools rely on, through boto3 and the aws CLI against the daemon (in one process and
with `--workers 2`): conditional writes (If-None-Match / If-Match on PutObject and
CompleteMultipartUpload, exactly one winner among racing writers), UploadPartCopy, partNumber
reads, GetObjectAttributes and checksums."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from awscrt import checksums as crt_checksums
from botocore.exceptions import ClientError

from tests.e2e.test_bucket_keys import Daemon, daemon  # noqa: F401 (the fixture)

MIB = 1 << 20


def code_of(e: ClientError) -> tuple[int, str]:
    return e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]


def error(fn: Any, **kw: Any) -> tuple[int, str]:
    with pytest.raises(ClientError) as ei:
        fn(**kw)
    return code_of(ei.value)


def test_conditional_put(daemon: Daemon) -> None:
    s3 = daemon.s3()
    etag = s3.put_object(Bucket="data", Key="lock", Body=b"v1", IfNoneMatch="*")["ETag"]
    assert error(s3.put_object, Bucket="data", Key="lock", Body=b"v2",
                 IfNoneMatch="*") == (412, "PreconditionFailed")
    assert error(s3.put_object, Bucket="data", Key="lock", Body=b"v2",
                 IfMatch='"0123456789abcdef0123456789abcdef"') == (412, "PreconditionFailed")
    assert error(s3.put_object, Bucket="data", Key="missing", Body=b"v2",
                 IfMatch=etag) == (404, "NoSuchKey")
    assert error(s3.put_object, Bucket="data", Key="lock", Body=b"v2",
                 IfNoneMatch=etag) == (501, "NotImplemented")
    assert s3.get_object(Bucket="data", Key="lock")["Body"].read() == b"v1"
    etag2 = s3.put_object(Bucket="data", Key="lock", Body=b"v2", IfMatch=etag)["ETag"]
    assert s3.get_object(Bucket="data", Key="lock")["Body"].read() == b"v2"
    # The old ETag no longer matches: a compare-and-swap loses to the write that came first.
    assert error(s3.put_object, Bucket="data", Key="lock", Body=b"v3",
                 IfMatch=etag) == (412, "PreconditionFailed")
    assert etag2 != etag


@pytest.mark.slow
def test_racing_conditional_puts_one_wins(daemon: Daemon) -> None:
    """16 clients PUT the same new key with If-None-Match: * at once, 5 rounds: each round
    exactly one succeeds, the rest get 412, and the object is the winner's bytes. Then the same
    race as compare-and-swap with If-Match on the current ETag."""
    clients = [daemon.s3() for _ in range(16)]
    for rnd in range(5):
        key = f"race-{rnd}"
        barrier = threading.Barrier(len(clients))
        wins: list[bytes] = []
        losses: list[tuple[int, str]] = []
        start = clients[0].put_object(Bucket="data", Key="cas", Body=b"base")["ETag"]
        cas_wins: list[bytes] = []

        def race(i: int, s3: Any) -> None:
            body = f"writer {i} round {rnd}".encode() * 1000
            barrier.wait()
            try:
                s3.put_object(Bucket="data", Key=key, Body=body, IfNoneMatch="*")
                wins.append(body)
            except ClientError as e:
                losses.append(code_of(e))
            try:
                s3.put_object(Bucket="data", Key="cas", Body=body, IfMatch=start)
                cas_wins.append(body)
            except ClientError as e:
                losses.append(code_of(e))

        threads = [threading.Thread(target=race, args=(i, c)) for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(wins) == 1 and len(cas_wins) == 1, (wins, cas_wins, losses)
        assert losses == [(412, "PreconditionFailed")] * (2 * len(clients) - 2)
        assert clients[0].get_object(Bucket="data", Key=key)["Body"].read() == wins[0]
        assert clients[0].get_object(Bucket="data", Key="cas")["Body"].read() == cas_wins[0]


def _upload(s3: Any, key: str, parts: list[bytes]) -> tuple[str, list[dict[str, Any]]]:
    upload_id = s3.create_multipart_upload(Bucket="data", Key=key)["UploadId"]
    done = [{"PartNumber": n, "ETag": s3.upload_part(Bucket="data", Key=key,
                                                     UploadId=upload_id, PartNumber=n,
                                                     Body=body)["ETag"]}
            for n, body in enumerate(parts, 1)]
    return upload_id, done


def test_conditional_complete(daemon: Daemon) -> None:
    s3 = daemon.s3()
    s3.put_object(Bucket="data", Key="mp", Body=b"old")
    upload_id, parts = _upload(s3, "mp", [b"a" * (5 * MIB), b"b"])
    assert error(s3.complete_multipart_upload, Bucket="data", Key="mp", UploadId=upload_id,
                 MultipartUpload={"Parts": parts}, IfNoneMatch="*") == (412,
                                                                       "PreconditionFailed")
    # The upload is still there: completing it with the right ETag works.
    etag = s3.head_object(Bucket="data", Key="mp")["ETag"]
    done = s3.complete_multipart_upload(Bucket="data", Key="mp", UploadId=upload_id,
                                        MultipartUpload={"Parts": parts}, IfMatch=etag)
    assert done["ETag"].endswith('-2"')
    body = s3.get_object(Bucket="data", Key="mp")["Body"].read()
    assert hashlib.md5(body).hexdigest() == hashlib.md5(b"a" * (5 * MIB) + b"b").hexdigest()
    upload_id, parts = _upload(s3, "mp-new", [b"c"])
    s3.complete_multipart_upload(Bucket="data", Key="mp-new", UploadId=upload_id,
                                 MultipartUpload={"Parts": parts}, IfNoneMatch="*")
    assert s3.get_object(Bucket="data", Key="mp-new")["Body"].read() == b"c"


def test_conditional_put_aws_cli(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"cli")
    daemon.aws(tmp_path, "s3api", "put-object", "--bucket", "data", "--key", "cli",
               "--body", "f", "--if-none-match", "*")
    err = daemon.aws(tmp_path, "s3api", "put-object", "--bucket", "data", "--key", "cli",
                     "--body", "f", "--if-none-match", "*", ok=False)
    assert "PreconditionFailed" in err


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def expected_checksum(algorithm: str, data: bytes) -> str:
    """Computed here independently of lbcdn (zlib, awscrt, hashlib)."""
    if algorithm == "CRC32":
        return _b64(zlib.crc32(data).to_bytes(4, "big"))
    if algorithm == "CRC32C":
        return _b64(crt_checksums.crc32c(data).to_bytes(4, "big"))
    if algorithm == "CRC64NVME":
        return _b64(crt_checksums.crc64nvme(data).to_bytes(8, "big"))
    return _b64(hashlib.new(algorithm.lower(), data).digest())


ALGORITHMS = ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"]


def test_checksums_single_put(daemon: Daemon) -> None:
    s3 = daemon.s3()
    data = os.urandom(100_000)
    for alg in ALGORITHMS:
        want = expected_checksum(alg, data)
        put = s3.put_object(Bucket="data", Key=f"ck-{alg}", Body=data, ChecksumAlgorithm=alg)
        assert put[f"Checksum{alg}"] == want
        head = s3.head_object(Bucket="data", Key=f"ck-{alg}", ChecksumMode="ENABLED")
        assert (head[f"Checksum{alg}"], head["ChecksumType"]) == (want, "FULL_OBJECT")
        got = s3.get_object(Bucket="data", Key=f"ck-{alg}", ChecksumMode="ENABLED")
        assert got[f"Checksum{alg}"] == want and got["Body"].read() == data
        # Not asked for, or a range: no checksum (a range's bytes have none).
        plain = s3.head_object(Bucket="data", Key=f"ck-{alg}")
        assert f"Checksum{alg}" not in plain
        part = s3.get_object(Bucket="data", Key=f"ck-{alg}", Range="bytes=0-9",
                             ChecksumMode="ENABLED")
        assert f"Checksum{alg}" not in part and part["Body"].read() == data[:10]
        # A checksum that does not match the body is refused; the object stays.
        wrong = expected_checksum(alg, data + b"x")
        assert error(s3.put_object, Bucket="data", Key=f"ck-{alg}", Body=data,
                     **{f"Checksum{alg}": wrong}) == (400, "BadDigest")
    assert s3.get_object(Bucket="data", Key="ck-SHA1")["Body"].read() == data


@pytest.mark.parametrize("alg,kind", [("SHA256", "COMPOSITE"), ("CRC32", "COMPOSITE"),
                                      ("CRC32C", "FULL_OBJECT"), ("CRC64NVME", "FULL_OBJECT")])
def test_checksums_multipart(daemon: Daemon, alg: str, kind: str) -> None:
    s3 = daemon.s3()
    chunks = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(1000)]
    extra = {"ChecksumType": kind} if alg != "CRC64NVME" else {}
    created = s3.create_multipart_upload(Bucket="data", Key="mpck", ChecksumAlgorithm=alg,
                                         **extra)
    assert created["ChecksumAlgorithm"] == alg
    upload_id = created["UploadId"]
    parts = []
    for n, chunk in enumerate(chunks, 1):
        r = s3.upload_part(Bucket="data", Key="mpck", UploadId=upload_id, PartNumber=n,
                           Body=chunk, ChecksumAlgorithm=alg)
        assert r[f"Checksum{alg}"] == expected_checksum(alg, chunk)
        parts.append({"PartNumber": n, "ETag": r["ETag"],
                      f"Checksum{alg}": r[f"Checksum{alg}"]})
    listed = s3.list_parts(Bucket="data", Key="mpck", UploadId=upload_id)["Parts"]
    assert [p[f"Checksum{alg}"] for p in listed] == [p[f"Checksum{alg}"] for p in parts]
    done = s3.complete_multipart_upload(Bucket="data", Key="mpck", UploadId=upload_id,
                                        MultipartUpload={"Parts": parts})
    if kind == "COMPOSITE":
        inner = b"".join(base64.b64decode(p[f"Checksum{alg}"]) for p in parts)
        want = f"{expected_checksum(alg, inner)}-3"
    else:
        want = expected_checksum(alg, b"".join(chunks))
    assert (done[f"Checksum{alg}"], done["ChecksumType"]) == (want, kind)
    head = s3.head_object(Bucket="data", Key="mpck", ChecksumMode="ENABLED")
    assert (head[f"Checksum{alg}"], head["ChecksumType"]) == (want, kind)
    got = s3.get_object(Bucket="data", Key="mpck", ChecksumMode="ENABLED")["Body"].read()
    assert got == b"".join(chunks)


def test_checksum_pairs_s3_refuses(daemon: Daemon) -> None:
    s3 = daemon.s3()
    for alg, kind in (("SHA1", "FULL_OBJECT"), ("CRC64NVME", "COMPOSITE")):
        assert error(s3.create_multipart_upload, Bucket="data", Key="x",
                     ChecksumAlgorithm=alg, ChecksumType=kind) == (400, "InvalidRequest")


def test_checksums_default_transfer_and_cli(daemon: Daemon, tmp_path: Path) -> None:
    """boto3's managed transfer and the aws CLI with their default checksums (CRC32, sent as
    an aws-chunked trailer) upload in parts; the downloads verify what comes back."""
    s3 = daemon.s3()
    src = tmp_path / "big"
    src.write_bytes(os.urandom(12 * MIB))
    s3.upload_file(str(src), "data", "big")
    head = s3.head_object(Bucket="data", Key="big", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"].endswith("-2") and head["ChecksumType"] == "COMPOSITE"
    s3.download_file("data", "big", str(tmp_path / "back"))
    assert (tmp_path / "back").read_bytes() == src.read_bytes()
    daemon.aws(tmp_path, "s3", "cp", "big", "s3://data/cli-big")
    out = json.loads(daemon.aws(tmp_path, "s3api", "head-object", "--bucket", "data", "--key",
                                "cli-big", "--checksum-mode", "ENABLED"))
    assert out["ChecksumCRC32"].endswith("-2")
    small = tmp_path / "small"
    small.write_bytes(b"hello checksums")
    daemon.aws(tmp_path, "s3", "cp", "small", "s3://data/cli-small")
    out = json.loads(daemon.aws(tmp_path, "s3api", "head-object", "--bucket", "data", "--key",
                                "cli-small", "--checksum-mode", "ENABLED"))
    assert out["ChecksumCRC32"] == expected_checksum("CRC32", b"hello checksums")
    daemon.aws(tmp_path, "s3", "cp", "s3://data/cli-big", "cli-back")
    assert (tmp_path / "cli-back").read_bytes() == src.read_bytes()


def test_upload_part_copy(daemon: Daemon, tmp_path: Path) -> None:
    s3 = daemon.s3()
    src = os.urandom(6 * MIB + 100)
    src_etag = s3.put_object(Bucket="data", Key="src", Body=src)["ETag"]
    upload_id = s3.create_multipart_upload(Bucket="data", Key="joined",
                                           ChecksumAlgorithm="SHA256")["UploadId"]
    first = s3.upload_part_copy(Bucket="data", Key="joined", UploadId=upload_id, PartNumber=1,
                                CopySource={"Bucket": "data", "Key": "src"},
                                CopySourceRange=f"bytes=0-{5 * MIB}",
                                CopySourceIfMatch=src_etag)["CopyPartResult"]
    assert first["ETag"] == f'"{hashlib.md5(src[:5 * MIB + 1]).hexdigest()}"'
    assert first["ChecksumSHA256"] == expected_checksum("SHA256", src[:5 * MIB + 1])
    # The aws CLI, the whole source as part 2.
    out = json.loads(daemon.aws(tmp_path, "s3api", "upload-part-copy", "--bucket", "data",
                                "--key", "joined", "--upload-id", upload_id, "--part-number",
                                "2", "--copy-source", "data/src"))
    second = out["CopyPartResult"]
    for cond in ({"CopySourceIfNoneMatch": src_etag}, {"CopySourceIfMatch": '"abc"'},
                 {"CopySourceIfModifiedSince": datetime(2100, 1, 1, tzinfo=timezone.utc)},
                 {"CopySourceIfUnmodifiedSince": datetime(2000, 1, 1, tzinfo=timezone.utc)}):
        assert error(s3.upload_part_copy, Bucket="data", Key="joined", UploadId=upload_id,
                     PartNumber=3, CopySource={"Bucket": "data", "Key": "src"},
                     **cond) == (412, "PreconditionFailed"), cond
    for bad in (f"bytes=0-{len(src)}", "bytes=5-", "bytes=9-3", "items=0-1"):
        assert error(s3.upload_part_copy, Bucket="data", Key="joined", UploadId=upload_id,
                     PartNumber=3, CopySource={"Bucket": "data", "Key": "src"},
                     CopySourceRange=bad) == (400, "InvalidArgument"), bad
    parts = [{"PartNumber": 1, "ETag": first["ETag"], "ChecksumSHA256": first["ChecksumSHA256"]},
             {"PartNumber": 2, "ETag": second["ETag"], "ChecksumSHA256": second["ChecksumSHA256"]}]
    # A part listed twice is out of order, as on S3.
    assert error(s3.complete_multipart_upload, Bucket="data", Key="joined", UploadId=upload_id,
                 MultipartUpload={"Parts": [parts[0], parts[0], parts[1]]}) == (
        400, "InvalidPartOrder")
    done = s3.complete_multipart_upload(Bucket="data", Key="joined", UploadId=upload_id,
                                        MultipartUpload={"Parts": parts})
    assert s3.get_object(Bucket="data", Key="joined")["Body"].read() == src[:5 * MIB + 1] + src
    # A repeated Complete answers as the first did.
    again = s3.complete_multipart_upload(Bucket="data", Key="joined", UploadId=upload_id,
                                         MultipartUpload={"Parts": parts})
    assert (again["ETag"], again["ChecksumSHA256"]) == (done["ETag"], done["ChecksumSHA256"])


def test_part_number_reads_and_attributes(daemon: Daemon, tmp_path: Path) -> None:
    s3 = daemon.s3()
    chunks = [os.urandom(5 * MIB), os.urandom(5 * MIB), b"tail"]
    upload_id, parts = _upload(s3, "parts", chunks)
    s3.complete_multipart_upload(Bucket="data", Key="parts", UploadId=upload_id,
                                 MultipartUpload={"Parts": parts})
    start = 0
    for n, chunk in enumerate(chunks, 1):
        got = s3.get_object(Bucket="data", Key="parts", PartNumber=n)
        assert got["Body"].read() == chunk and got["PartsCount"] == 3
        assert got["ContentRange"] == f"bytes {start}-{start + len(chunk) - 1}/{10 * MIB + 4}"
        head = s3.head_object(Bucket="data", Key="parts", PartNumber=n)
        assert head["ContentLength"] == len(chunk) and head["PartsCount"] == 3
        start += len(chunk)
    assert error(s3.get_object, Bucket="data", Key="parts", PartNumber=4) == (
        416, "InvalidPartNumber")
    assert error(s3.get_object, Bucket="data", Key="parts", PartNumber=1,
                 Range="bytes=0-1") == (400, "InvalidRequest")
    s3.put_object(Bucket="data", Key="plain", Body=b"plain body", ChecksumAlgorithm="CRC32")
    assert s3.get_object(Bucket="data", Key="plain", PartNumber=1)["Body"].read() == \
        b"plain body"
    assert error(s3.get_object, Bucket="data", Key="plain", PartNumber=2) == (
        416, "InvalidPartNumber")

    attrs = s3.get_object_attributes(Bucket="data", Key="parts", ObjectAttributes=[
        "ETag", "ObjectParts", "StorageClass", "ObjectSize", "Checksum"], MaxParts=2)
    assert attrs["ETag"] == s3.head_object(Bucket="data", Key="parts")["ETag"].strip('"')
    assert attrs["ObjectSize"] == 10 * MIB + 4 and attrs["StorageClass"] == "STANDARD"
    op = attrs["ObjectParts"]
    assert (op["TotalPartsCount"], op["IsTruncated"], op["NextPartNumberMarker"]) == (3, True, 2)
    assert [(p["PartNumber"], p["Size"]) for p in op["Parts"]] == [(1, 5 * MIB), (2, 5 * MIB)]
    rest = s3.get_object_attributes(Bucket="data", Key="parts", ObjectAttributes=["ObjectParts"],
                                    PartNumberMarker=2)["ObjectParts"]
    assert [(p["PartNumber"], p["Size"]) for p in rest["Parts"]] == [(3, 4)]
    out = json.loads(daemon.aws(tmp_path, "s3api", "get-object-attributes", "--bucket", "data",
                                "--key", "plain", "--object-attributes", "Checksum",
                                "ObjectSize"))
    assert out["ObjectSize"] == 10
    assert out["Checksum"] == {"ChecksumCRC32": expected_checksum("CRC32", b"plain body"),
                               "ChecksumType": "FULL_OBJECT"}
    assert error(s3.get_object_attributes, Bucket="data", Key="nope",
                 ObjectAttributes=["ETag"]) == (404, "NoSuchKey")


def test_complete_with_full_object_checksum(daemon: Daemon) -> None:
    """A Complete carrying the whole object's CRC (what s3transfer sends when given one) and
    its size: checked against the parts, not taken for the checksum of the XML body."""
    s3 = daemon.s3()
    chunks = [os.urandom(5 * MIB), b"tail"]
    whole = expected_checksum("CRC32", b"".join(chunks))

    def upload() -> tuple[str, list[dict[str, Any]]]:
        upload_id = s3.create_multipart_upload(Bucket="data", Key="fo", ChecksumAlgorithm="CRC32",
                                               ChecksumType="FULL_OBJECT")["UploadId"]
        parts = []
        for n, chunk in enumerate(chunks, 1):
            r = s3.upload_part(Bucket="data", Key="fo", UploadId=upload_id, PartNumber=n,
                               Body=chunk, ChecksumAlgorithm="CRC32")
            parts.append({"PartNumber": n, "ETag": r["ETag"], "ChecksumCRC32": r["ChecksumCRC32"]})
        return upload_id, parts

    upload_id, parts = upload()
    common = {"Bucket": "data", "Key": "fo", "UploadId": upload_id,
              "MultipartUpload": {"Parts": parts}, "ChecksumType": "FULL_OBJECT"}
    assert error(s3.complete_multipart_upload, ChecksumCRC32=expected_checksum("CRC32", b"x"),
                 **common) == (400, "BadDigest")
    assert error(s3.complete_multipart_upload, ChecksumSHA256=expected_checksum("SHA256", b"x"),
                 **common) == (400, "InvalidRequest")
    assert error(s3.complete_multipart_upload, ChecksumCRC32=whole, MpuObjectSize=3,
                 **common) == (400, "InvalidRequest")
    done = s3.complete_multipart_upload(ChecksumCRC32=whole, MpuObjectSize=5 * MIB + 4, **common)
    assert (done["ChecksumCRC32"], done["ChecksumType"]) == (whole, "FULL_OBJECT")
