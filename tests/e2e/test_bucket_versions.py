"""S3 versioning through boto3 and the aws CLI against the daemon (in one process and with
`--workers 2`): PutBucketVersioning Enabled/Suspended, version ids on PUT/DELETE, delete
markers, GET/HEAD/DELETE by versionId (deleting a delete marker restores), ListObjectVersions
with pagination, prefix and delimiter, CopyObject from a version, the null version of suspended
and unversioned buckets, and kill -9 during a versioned PUT."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from tests.e2e.harness import HOST, DaemonProcess, free_port, proxy_config, wait_for_port

KEY_ID, SECRET = "AKIDVERSIONS", "versions-secret-1"
AWS = str(Path(sys.executable).parent / "aws")
WORKERS = [pytest.param([], id="one-process"), pytest.param(["--workers", "2"], id="workers-2")]


class Daemon:
    def __init__(self, tmp: Path, workers: list[str]) -> None:
        self.tmp, self.workers = tmp, workers
        self.root = tmp / "buckets"
        self.port = free_port()
        self.config = proxy_config(free_port())
        self.config["buckets"] = {
            "root": str(self.root), "port": self.port, "min_part_bytes": 1 << 20,
            "users": {"u": {"access_key_id": KEY_ID, "secret_access_key": SECRET,
                            "admin": True}},
            "buckets": {"data": {"owner": "u"}}}
        self.url = f"http://{HOST}:{self.port}"
        self.runs = 0
        self.proc = self.start()

    def start(self) -> DaemonProcess:
        self.runs += 1
        run = self.tmp / f"run{self.runs}"
        run.mkdir()
        proc = DaemonProcess(self.config, run, self.workers)
        wait_for_port(self.port, proc=proc.proc)
        return proc

    def s3(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=KEY_ID,
                            aws_secret_access_key=SECRET, region_name="us-east-1",
                            config=BotoConfig(retries={"max_attempts": 1}, read_timeout=30,
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


def body(s3: Any, key: str, **kw: Any) -> bytes:
    return bytes(s3.get_object(Bucket="data", Key=key, **kw)["Body"].read())


def versions(s3: Any, **kw: Any) -> list[tuple[str, str, bool, bool]]:
    """(key, version id, is latest, is a delete marker) in listing order."""
    r = s3.list_object_versions(Bucket="data", **kw)
    out = [(v["Key"], v["VersionId"], v["IsLatest"], False) for v in r.get("Versions", [])]
    out += [(m["Key"], m["VersionId"], m["IsLatest"], True) for m in r.get("DeleteMarkers", [])]
    return out


def test_unversioned_bucket_lists_null_versions(daemon: Daemon) -> None:
    s3 = daemon.s3()
    assert "Status" not in s3.get_bucket_versioning(Bucket="data")
    r = s3.put_object(Bucket="data", Key="a", Body=b"1")
    assert "VersionId" not in r
    s3.put_object(Bucket="data", Key="a", Body=b"2")
    (daemon.root / "data" / "dropped").write_bytes(b"by hand")
    assert versions(s3) == [("a", "null", True, False), ("dropped", "null", True, False)]
    assert body(s3, "a", VersionId="null") == b"2"
    s3.delete_object(Bucket="data", Key="a")
    assert versions(s3) == [("dropped", "null", True, False)]


def test_versions_markers_and_restore(daemon: Daemon) -> None:
    s3 = daemon.s3()
    s3.put_object(Bucket="data", Key="k", Body=b"before")  # the null version
    daemon.aws("s3api", "put-bucket-versioning", "--bucket", "data",
               "--versioning-configuration", "Status=Enabled")
    assert s3.get_bucket_versioning(Bucket="data")["Status"] == "Enabled"
    v1 = s3.put_object(Bucket="data", Key="k", Body=b"one")["VersionId"]
    v2 = s3.put_object(Bucket="data", Key="k", Body=b"two")["VersionId"]
    assert len({v1, v2, "null"}) == 3
    head = s3.head_object(Bucket="data", Key="k")
    assert head["VersionId"] == v2 and head["ContentLength"] == 3
    assert body(s3, "k") == b"two"
    assert body(s3, "k", VersionId=v1) == b"one"
    assert body(s3, "k", VersionId="null") == b"before"
    assert versions(s3) == [("k", v2, True, False), ("k", v1, False, False),
                            ("k", "null", False, False)]
    # A DELETE makes a delete marker: the key is gone, its versions stay.
    d = s3.delete_object(Bucket="data", Key="k")
    assert d["DeleteMarker"] is True
    marker = d["VersionId"]
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="data", Key="k")
    assert e.value.response["Error"]["Code"] == "NoSuchKey"
    assert e.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amz-delete-marker"] == "true"
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket="data", Key="k", VersionId=marker)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 405
    assert s3.list_objects_v2(Bucket="data").get("KeyCount") == 0
    listed = s3.list_object_versions(Bucket="data")
    assert [(m["VersionId"], m["IsLatest"]) for m in listed["DeleteMarkers"]] == [(marker, True)]
    assert [(v["VersionId"], v["IsLatest"]) for v in listed["Versions"]] == [
        (v2, False), (v1, False), ("null", False)]
    # Deleting the marker restores the newest version, Last-Modified kept.
    d = s3.delete_object(Bucket="data", Key="k", VersionId=marker)
    assert d["DeleteMarker"] is True and d["VersionId"] == marker
    assert body(s3, "k") == b"two"
    assert s3.head_object(Bucket="data", Key="k")["LastModified"] == head["LastModified"]
    # Deleting the current version by id makes the previous one current.
    s3.delete_object(Bucket="data", Key="k", VersionId=v2)
    assert body(s3, "k") == b"one"
    assert versions(s3) == [("k", v1, True, False), ("k", "null", False, False)]
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="data", Key="k", VersionId=v2)
    assert e.value.response["Error"]["Code"] == "NoSuchVersion"
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="data", Key="k", VersionId="../../etc")
    assert e.value.response["Error"]["Code"] == "InvalidArgument"
    # Copy from an old version.
    c = s3.copy_object(Bucket="data", Key="copy",
                       CopySource={"Bucket": "data", "Key": "k", "VersionId": "null"})
    assert c["CopySourceVersionId"] == "null" and c["VersionId"] not in (v1, "null")
    assert body(s3, "copy") == b"before"
    # Copying an old version onto its own key restores it as a new version.
    s3.copy_object(Bucket="data", Key="k", CopySource={"Bucket": "data", "Key": "k",
                                                      "VersionId": "null"})
    assert body(s3, "k") == b"before" and body(s3, "k", VersionId=v1) == b"one"
    # A versioned bucket is not empty while versions remain; deleting them all empties it.
    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket="data")
    assert e.value.response["Error"]["Code"] == "BucketNotEmpty"
    objs = [{"Key": k, "VersionId": v} for k, v, _, _ in versions(s3)]
    r = s3.delete_objects(Bucket="data", Delete={"Objects": objs})
    assert sorted(x["VersionId"] for x in r["Deleted"]) == sorted(o["VersionId"] for o in objs)
    assert versions(s3) == []
    s3.delete_bucket(Bucket="data")


def test_suspended_bucket_writes_null_versions(daemon: Daemon) -> None:
    s3 = daemon.s3()
    s3.put_bucket_versioning(Bucket="data", VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket="data", Key="k", Body=b"one")["VersionId"]
    s3.put_bucket_versioning(Bucket="data", VersioningConfiguration={"Status": "Suspended"})
    assert s3.get_bucket_versioning(Bucket="data")["Status"] == "Suspended"
    assert s3.put_object(Bucket="data", Key="k", Body=b"n1")["VersionId"] == "null"
    assert s3.put_object(Bucket="data", Key="k", Body=b"n2")["VersionId"] == "null"
    assert versions(s3) == [("k", "null", True, False), ("k", v1, False, False)]
    assert body(s3, "k", VersionId=v1) == b"one"
    d = s3.delete_object(Bucket="data", Key="k")
    assert d["DeleteMarker"] is True and d["VersionId"] == "null"
    assert versions(s3) == [("k", v1, False, False), ("k", "null", True, True)]
    with pytest.raises(ClientError) as e:
        s3.put_bucket_versioning(Bucket="data", VersioningConfiguration={"Status": "Off"})
    assert e.value.response["Error"]["Code"] == "MalformedXML"


def test_list_object_versions_pages(daemon: Daemon) -> None:
    s3 = daemon.s3()
    daemon.aws("s3api", "put-bucket-versioning", "--bucket", "data",
               "--versioning-configuration", "Status=Enabled")
    made: list[tuple[str, str]] = []
    for key in ("a", "b/1", "b/2", "c"):
        for i in range(3):
            made.append((key, s3.put_object(Bucket="data", Key=key, Body=b"%d" % i)["VersionId"]))
    expected = [(k, v) for key in ("a", "b/1", "b/2", "c")
                for k, v in reversed([m for m in made if m[0] == key])]
    seen: list[tuple[str, str]] = []
    kw: dict[str, Any] = {"MaxKeys": 2}
    while True:
        r = s3.list_object_versions(Bucket="data", **kw)
        seen += [(v["Key"], v["VersionId"]) for v in r.get("Versions", [])]
        assert len(r.get("Versions", [])) <= 2
        if not r["IsTruncated"]:
            break
        kw = {"MaxKeys": 2, "KeyMarker": r["NextKeyMarker"],
              "VersionIdMarker": r["NextVersionIdMarker"]}
    assert seen == expected
    r = s3.list_object_versions(Bucket="data", Delimiter="/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["b/"]
    assert sorted({v["Key"] for v in r["Versions"]}) == ["a", "c"]
    r = s3.list_object_versions(Bucket="data", Prefix="b/", KeyMarker="b/1")
    assert {v["Key"] for v in r["Versions"]} == {"b/2"}
    # The aws CLI pages through all of them.
    out = daemon.aws("s3api", "list-object-versions", "--bucket", "data", "--page-size", "5")
    assert [(v["Key"], v["VersionId"]) for v in out["Versions"]] == expected
    assert [v["IsLatest"] for v in out["Versions"]].count(True) == 4


@pytest.mark.slow
@pytest.mark.parametrize("workers", WORKERS)
def test_kill_9_during_versioned_put_keeps_previous(tmp_path: Path, workers: list[str]) -> None:
    d = Daemon(tmp_path, workers)
    try:
        s3 = d.s3()
        s3.put_bucket_versioning(Bucket="data", VersioningConfiguration={"Status": "Enabled"})
        old = os.urandom(1 << 20)
        v1 = s3.put_object(Bucket="data", Key="k", Body=old)["VersionId"]
        area = d.root / ".lbcdn"
        # Kill while the body is received, and once the replaced version is kept (its record
        # written: the rename onto the key follows within microseconds).
        stages = {
            "receiving": lambda: any(p.is_file() and p.stat().st_size >= 8 << 20
                                     for p in (area / "tmp").iterdir()),
            "kept": lambda: any((area / "versions").glob(f"data/*/*/{v1}.json")),
        }
        for stage, reached in stages.items():
            big = os.urandom(64 << 20)

            def put() -> None:
                with contextlib.suppress(Exception):  # the connection dies with the daemon
                    s3.put_object(Bucket="data", Key="k", Body=big)

            t = threading.Thread(target=put)
            t.start()
            deadline = time.monotonic() + 30
            while not reached() and time.monotonic() < deadline:
                time.sleep(0.0005)
            assert reached(), stage
            d.proc.kill()
            t.join(30)
            d.proc = d.start()
            s3 = d.s3()
            listed = versions(s3)
            current = s3.head_object(Bucket="data", Key="k")
            if current["VersionId"] == v1:
                assert listed[0][:3] == ("k", v1, True)
                assert body(s3, "k") == old
            else:  # the new version made it: the old one is listed, intact
                assert ("k", v1, False, False) in listed
                assert body(s3, "k", VersionId=v1) == old
                assert body(s3, "k") == big
            assert body(s3, "k", VersionId=v1) == old
            assert len({v for _, v, _, _ in listed}) == len(listed)
    finally:
        d.proc.stop()
