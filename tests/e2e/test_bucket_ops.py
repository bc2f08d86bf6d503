"""Operations tools rely on, through boto3 and the aws CLI against the daemon (in one process and
with `--workers 2`): conditional writes (If-None-Match / If-Match on PutObject and
CompleteMultipartUpload, exactly one winner among racing writers), UploadPartCopy, partNumber
reads, GetObjectAttributes and checksums."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest
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
