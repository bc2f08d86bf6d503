"""Bucket lifecycle rules through boto3 and the aws CLI against the daemon (in one process and
with `--workers 2`), with `buckets.lifecycle.day_s: 1` so a lifecycle "day" is one second:
expiration of current versions by age, prefix and tag, of noncurrent versions (keeping the
newest ones), of lone delete markers, abort of stale multipart uploads, and a pass running
while uploads go on never removes a fresh upload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from tests.e2e.harness import HOST, DaemonProcess, free_port, proxy_config, wait_for_port

KEY_ID, SECRET = "AKIDLIFECYCLE", "lifecycle-secret-1"
AWS = str(Path(sys.executable).parent / "aws")
WORKERS = [pytest.param([], id="one-process"), pytest.param(["--workers", "2"], id="workers-2")]
DAY_S = 1.0


class Daemon:
    def __init__(self, tmp: Path, workers: list[str]) -> None:
        self.tmp = tmp
        self.port = free_port()
        config = proxy_config(free_port())
        config["buckets"] = {
            "root": str(tmp / "buckets"), "port": self.port, "min_part_bytes": 1,
            "lifecycle": {"interval_s": 0.2, "day_s": DAY_S},
            "users": {"u": {"access_key_id": KEY_ID, "secret_access_key": SECRET,
                            "admin": True}},
            "buckets": {"data": {"owner": "u"}}}
        self.proc = DaemonProcess(config, tmp, workers)
        wait_for_port(self.port, proc=self.proc.proc)
        self.url = f"http://{HOST}:{self.port}"

    def s3(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=KEY_ID,
                            aws_secret_access_key=SECRET, region_name="us-east-1",
                            config=BotoConfig(retries={"max_attempts": 1},
                                              s3={"addressing_style": "path"}))

    def aws(self, *args: str) -> Any:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(self.tmp / "none"),
               "AWS_SHARED_CREDENTIALS_FILE": str(self.tmp / "none")}
        r = subprocess.run([AWS, "--endpoint-url", self.url, "--output", "json", *args],
                           env=env, cwd=self.tmp, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"aws {' '.join(args)}: {r.stdout}\n{r.stderr}"
        return json.loads(r.stdout) if r.stdout.strip() else None


@pytest.fixture(params=WORKERS)
def daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, request.param)
    try:
        yield d
    finally:
        d.proc.stop()
        log = d.proc.stderr()
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def eventually(cond: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def keys(s3: Any) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket="data").get("Contents", [])]


def test_lifecycle_configuration_round_trip_and_errors(daemon: Daemon) -> None:
    s3 = daemon.s3()
    with pytest.raises(ClientError) as e:
        s3.get_bucket_lifecycle_configuration(Bucket="data")
    assert e.value.response["Error"]["Code"] == "NoSuchLifecycleConfiguration"
    rules = {"Rules": [
        {"ID": "tmp", "Status": "Enabled", "Filter": {"Prefix": "tmp/"},
         "Expiration": {"Days": 30}},
        {"ID": "old", "Status": "Enabled", "Filter": {"And": {
            "Prefix": "logs/", "Tags": [{"Key": "k", "Value": "v"}]}},
         "NoncurrentVersionExpiration": {"NoncurrentDays": 7, "NewerNoncurrentVersions": 2}},
        {"ID": "mpu", "Status": "Disabled", "Filter": {},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]}
    (daemon.tmp / "lc.json").write_text(json.dumps(rules))
    daemon.aws("s3api", "put-bucket-lifecycle-configuration", "--bucket", "data",
               "--lifecycle-configuration", f"file://{daemon.tmp / 'lc.json'}")
    got = daemon.aws("s3api", "get-bucket-lifecycle-configuration", "--bucket", "data")
    assert [r["ID"] for r in got["Rules"]] == ["tmp", "old", "mpu"]
    assert got["Rules"][1]["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": 7, "NewerNoncurrentVersions": 2}
    bad = {"Rules": [{"ID": "t", "Status": "Enabled", "Filter": {"Prefix": ""},
                      "Transitions": [{"Days": 1, "StorageClass": "GLACIER"}]}]}
    with pytest.raises(ClientError) as e:
        s3.put_bucket_lifecycle_configuration(Bucket="data", LifecycleConfiguration=bad)
    assert e.value.response["Error"]["Code"] == "NotImplemented"
    with pytest.raises(ClientError) as e:
        s3.put_bucket_lifecycle_configuration(Bucket="data", LifecycleConfiguration={
            "Rules": [{"ID": "x", "Status": "Enabled", "Filter": {"Prefix": ""}}]})
    assert e.value.response["Error"]["Code"] == "MalformedXML"
    s3.delete_bucket_lifecycle(Bucket="data")
    with pytest.raises(ClientError):
        s3.get_bucket_lifecycle_configuration(Bucket="data")


def test_expiration_by_prefix_and_tag(daemon: Daemon) -> None:
    s3 = daemon.s3()
    for key in ("tmp/a", "tmp/b", "keep/a", "tagged", "untagged"):
        s3.put_object(Bucket="data", Key=key, Body=b"x")
    s3.put_object_tagging(Bucket="data", Key="tagged",
                          Tagging={"TagSet": [{"Key": "expire", "Value": "yes"}]})
    assert s3.get_object_tagging(Bucket="data", Key="tagged")["TagSet"] == [
        {"Key": "expire", "Value": "yes"}]
    s3.put_object(Bucket="data", Key="tagged2", Body=b"x", Tagging="expire=yes&other=1")
    s3.put_bucket_lifecycle_configuration(Bucket="data", LifecycleConfiguration={"Rules": [
        {"ID": "tmp", "Status": "Enabled", "Filter": {"Prefix": "tmp/"},
         "Expiration": {"Days": 2}},
        {"ID": "tag", "Status": "Enabled", "Filter": {"Tag": {"Key": "expire", "Value": "yes"}},
         "Expiration": {"Days": 2}}]})
    eventually(lambda: keys(s3) == ["keep/a", "untagged"])
    # An unversioned bucket: expired objects are gone, no versions remain.
    assert [v["Key"] for v in s3.list_object_versions(Bucket="data")["Versions"]] == [
        "keep/a", "untagged"]


def test_noncurrent_expiration_markers_and_uploads(daemon: Daemon) -> None:
    s3 = daemon.s3()
    s3.put_bucket_versioning(Bucket="data", VersioningConfiguration={"Status": "Enabled"})
    made = [s3.put_object(Bucket="data", Key="k", Body=b"%d" % i)["VersionId"]
            for i in range(5)]
    # A delete marker with no version under it (S3 makes one for a missing key).
    assert s3.delete_object(Bucket="data", Key="gone")["DeleteMarker"] is True
    upload = s3.create_multipart_upload(Bucket="data", Key="mp")["UploadId"]
    s3.put_bucket_lifecycle_configuration(Bucket="data", LifecycleConfiguration={"Rules": [
        {"ID": "nc", "Status": "Enabled", "Filter": {"Prefix": ""},
         "NoncurrentVersionExpiration": {"NoncurrentDays": 2, "NewerNoncurrentVersions": 1}},
        {"ID": "dm", "Status": "Enabled", "Filter": {"Prefix": "gone"},
         "Expiration": {"ExpiredObjectDeleteMarker": True}},
        {"ID": "mpu", "Status": "Enabled", "Filter": {"Prefix": ""},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 3}}]})

    def listed() -> list[tuple[str, str]]:
        r = s3.list_object_versions(Bucket="data")
        return [(v["Key"], v["VersionId"]) for v in r.get("Versions", []) + r.get(
            "DeleteMarkers", [])]

    # `k` keeps its current version and one noncurrent one; the lone marker goes.
    eventually(lambda: listed() == [("k", made[4]), ("k", made[3])])
    assert s3.get_object(Bucket="data", Key="k")["Body"].read() == b"4"
    eventually(lambda: not s3.list_multipart_uploads(Bucket="data").get("Uploads"))
    with pytest.raises(ClientError) as e:
        s3.upload_part(Bucket="data", Key="mp", UploadId=upload, PartNumber=1, Body=b"x")
    assert e.value.response["Error"]["Code"] == "NoSuchUpload"


@pytest.mark.slow
def test_pass_during_uploads_never_removes_fresh_ones(daemon: Daemon) -> None:
    s3 = daemon.s3()
    s3.put_bucket_lifecycle_configuration(Bucket="data", LifecycleConfiguration={"Rules": [
        {"ID": "all", "Status": "Enabled", "Filter": {"Prefix": ""},
         "Expiration": {"Days": 1}}]})
    failures: list[str] = []

    def writer(n: int) -> None:
        c = daemon.s3()
        key = f"w{n}"
        for i in range(12):
            # Let the object come due, then replace it while passes run.
            c.put_object(Bucket="data", Key=key, Body=b"old")
            time.sleep(DAY_S * 0.97)
            body = b"new-%d" % i
            c.put_object(Bucket="data", Key=key, Body=body)
            try:
                got = c.get_object(Bucket="data", Key=key)["Body"].read()
                if got != body:
                    failures.append(f"{key}: {got!r}")
            except ClientError as e:
                failures.append(f"{key}: {e.response['Error']['Code']}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures
    eventually(lambda: keys(s3) == [])  # and the rule does act
