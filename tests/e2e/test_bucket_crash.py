"""kill -9 of the daemon during S3 uploads, in one process and with `--workers 2` (where the
bucket origin runs in the control process): a CompleteMultipartUpload retried with boto3 after
the restart succeeds with the right bytes and ETag, and an interrupted PUT or UploadPart leaves
nothing visible."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials

from tests.e2e.harness import HOST, DaemonProcess, free_port, proxy_config, wait_for_port

KEY_ID, SECRET = "AKIDEXAMPLE1", "s3cr3t"
WORKERS = [pytest.param([], id="one-process"), pytest.param(["--workers", "2"], id="workers-2")]


def crash_config(tmp: Path) -> dict[str, Any]:
    config = proxy_config(free_port())  # the edge is not used: its target never answers
    config["buckets"] = {
        "root": str(tmp / "buckets"), "port": free_port(), "min_part_bytes": 1 << 20,
        "users": {"u": {"access_key_id": KEY_ID, "secret_access_key": SECRET, "admin": True}},
        "buckets": {"data": {"owner": "u"}}}
    return config


class Restartable:
    """The daemon over one bucket root, started again after each kill -9."""

    def __init__(self, config: dict[str, Any], tmp: Path, workers: list[str]) -> None:
        self.config, self.tmp, self.workers = config, tmp, workers
        self.port = int(config["buckets"]["port"])
        self.root = Path(config["buckets"]["root"])
        self.runs = 0
        self.daemon: DaemonProcess | None = None
        self.start()

    def start(self) -> None:
        self.runs += 1
        run_dir = self.tmp / f"run{self.runs}"
        run_dir.mkdir()
        self.daemon = DaemonProcess(self.config, run_dir, self.workers)
        wait_for_port(self.port, proc=self.daemon.proc)

    def kill(self) -> None:
        if self.daemon is not None:
            self.daemon.kill()  # SIGKILL to the whole process group

    def s3(self) -> Any:
        return boto3.client("s3", endpoint_url=f"http://{HOST}:{self.port}",
                            aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
                            region_name="us-east-1",
                            config=BotoConfig(retries={"max_attempts": 1}, read_timeout=30,
                                              s3={"addressing_style": "path"}))

    def leftovers(self) -> list[str]:
        area = self.root / ".lbcdn"
        return [str(p.relative_to(area)) for d in ("tmp", "uploads") for p in (area / d).iterdir()]


def wait_until(condition: Callable[[], bool], done: threading.Event,
               timeout_s: float = 20) -> None:
    """Poll (tightly: the windows are milliseconds) until `condition` or until `done`."""
    deadline = time.monotonic() + timeout_s
    while not done.is_set() and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if condition():
                return
        time.sleep(0.0005)


def multipart_etag(parts: list[bytes]) -> str:
    return '"' + hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + \
        f'-{len(parts)}"'


@pytest.mark.slow
@pytest.mark.parametrize("workers", WORKERS)
def test_kill_9_during_complete_then_retry_succeeds(tmp_path: Path, workers: list[str]) -> None:
    config = crash_config(tmp_path)
    parts = [os.urandom(4 << 20) for _ in range(4)]  # assembling them takes a while
    whole, etag = b"".join(parts), multipart_etag(parts)
    srv = Restartable(config, tmp_path, workers)
    area = srv.root / ".lbcdn"
    # Kill at three points of the completion: while the parts are being joined, once the
    # completion record is written, once the object is in place.
    stages: dict[str, Callable[[str, str], bool]] = {
        "assembling": lambda uid, key: any(
            p.stat().st_size >= 1 << 20 for p in (area / "tmp").iterdir() if p.is_file()),
        "recorded": lambda uid, key: (area / "completed" / f"{uid}.json").exists(),
        "committed": lambda uid, key: (srv.root / "data" / key).exists(),
    }
    try:
        for stage, reached in stages.items():
            s3, key = srv.s3(), f"obj-{stage}"
            uid = s3.create_multipart_upload(Bucket="data", Key=key,
                                             ContentType="x/mp")["UploadId"]
            listed = {"Parts": [
                {"PartNumber": n, "ETag": s3.upload_part(Bucket="data", Key=key, UploadId=uid,
                                                         PartNumber=n, Body=body)["ETag"]}
                for n, body in enumerate(parts, 1)]}
            done = threading.Event()

            def complete() -> None:
                with contextlib.suppress(Exception):  # the connection dies with the daemon
                    s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=uid,
                                                 MultipartUpload=listed)
                done.set()

            thread = threading.Thread(target=complete)
            thread.start()
            wait_until(lambda: reached(uid, key), done)
            srv.kill()
            thread.join(30)
            srv.start()
            s3 = srv.s3()
            r = s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=uid,
                                             MultipartUpload=listed)
            assert r["ETag"] == etag, stage
            got = s3.get_object(Bucket="data", Key=key)
            assert (got["ETag"], got["ContentType"]) == (etag, "x/mp"), stage
            assert got["Body"].read() == whole, stage
            assert "Uploads" not in s3.list_multipart_uploads(Bucket="data"), stage
            # retried once more: still the same answer
            assert s3.complete_multipart_upload(Bucket="data", Key=key, UploadId=uid,
                                                MultipartUpload=listed)["ETag"] == etag
            assert srv.leftovers() == [], stage
    finally:
        srv.kill()


def _start_signed_put(port: int, path: str, body: bytes, sent: int) -> socket.socket:
    """A signed PUT whose head and first `sent` body bytes are on the wire, the rest never."""
    url = f"http://{HOST}:{port}{path}"
    req = AWSRequest(method="PUT", url=url, data=body)
    S3SigV4Auth(Credentials(KEY_ID, SECRET), "s3", "us-east-1").add_auth(req)
    headers = {**dict(req.headers.items()), "Content-Length": str(len(body)),
               "Host": f"{HOST}:{port}"}
    sock = socket.create_connection((HOST, port), timeout=10)
    head = f"PUT {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(head.encode() + b"\r\n" + body[:sent])
    return sock


@pytest.mark.slow
@pytest.mark.parametrize("workers", WORKERS)
def test_kill_9_during_put_and_upload_part_leaves_no_partial_object(
        tmp_path: Path, workers: list[str]) -> None:
    srv = Restartable(crash_config(tmp_path), tmp_path, workers)
    tmp_dir = srv.root / ".lbcdn" / "tmp"
    try:
        s3 = srv.s3()
        s3.put_object(Bucket="data", Key="obj", Body=b"the old version")
        uid = s3.create_multipart_upload(Bucket="data", Key="mp")["UploadId"]
        first = s3.upload_part(Bucket="data", Key="mp", UploadId=uid, PartNumber=1,
                               Body=b"part one")["ETag"]
        # a kill with a PUT over an object, a PUT of a new one and an UploadPart in flight
        body = os.urandom(8 << 20)
        socks = [_start_signed_put(srv.port, "/data/obj", body, 4 << 20),
                 _start_signed_put(srv.port, "/data/new", body, 4 << 20),
                 _start_signed_put(srv.port, f"/data/mp?partNumber=2&uploadId={uid}",
                                   body, 4 << 20)]
        never = threading.Event()
        wait_until(lambda: sum(p.stat().st_size >= 1 << 20 for p in tmp_dir.iterdir())
                   >= 3, never)
        assert sum(p.stat().st_size >= 1 << 20 for p in tmp_dir.iterdir()) >= 3, \
            "the uploads never reached their temp files"
        srv.kill()
        for sock in socks:
            sock.close()
        srv.start()
        s3 = srv.s3()
        assert s3.get_object(Bucket="data", Key="obj")["Body"].read() == b"the old version"
        with pytest.raises(s3.exceptions.NoSuchKey):
            s3.get_object(Bucket="data", Key="new")
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="data")["Contents"]] == ["obj"]
        parts = s3.list_parts(Bucket="data", Key="mp", UploadId=uid)["Parts"]
        assert [(p["PartNumber"], p["ETag"]) for p in parts] == [(1, first)]
        assert list(tmp_dir.iterdir()) == []  # the partial bodies went at start
        r = s3.complete_multipart_upload(Bucket="data", Key="mp", UploadId=uid, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": first}]})
        assert s3.get_object(Bucket="data", Key="mp")["Body"].read() == b"part one"
        assert r["ETag"] == multipart_etag([b"part one"])
    finally:
        srv.kill()
