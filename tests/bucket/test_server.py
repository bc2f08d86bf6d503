"""BucketServer as a whole: lifecycle, the aws CLI against it, a SIGKILL during a PUT, and
the memory bound of serving a 1 GiB object (sendfile)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lbcdn.bucket.config import load_buckets_config
from lbcdn.bucket.server import BucketServer
from tests.bucket.conftest import ALICE, ENV, ProcServer, ThreadServer, base_config

AWS = str(Path(sys.executable).parent / "aws")


async def test_start_stop_and_port_in_use(bucket_root: Path) -> None:
    srv = BucketServer(load_buckets_config(base_config(bucket_root), env=ENV))
    await srv.start()
    try:
        assert set(srv.ports) == {"s3", "website"}
        assert (bucket_root / "site").is_dir() and (bucket_root / ".lbcdn" / "tmp").is_dir()
        taken = base_config(bucket_root, port=srv.port, website_port=None)
        other = BucketServer(load_buckets_config(taken, env=ENV))
        with pytest.raises(OSError):
            await other.start()
        assert other.ports == {}
    finally:
        await srv.stop()
    with socket.socket() as s:  # the port is free again
        s.bind(("127.0.0.1", srv.port or 0))


def aws(srv_url: str, tmp: Path, *args: str, check: bool = True) -> str:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ALICE[0], "AWS_SECRET_ACCESS_KEY": ALICE[1],
           "AWS_DEFAULT_REGION": "us-east-1"}
    r = subprocess.run([AWS, "--endpoint-url", srv_url, *args], env=env, cwd=tmp,
                       capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"aws {' '.join(args)} failed: {r.stdout}\n{r.stderr}")
    return r.stdout


@pytest.mark.slow
def test_aws_cli(server: ThreadServer, tmp_path: Path) -> None:
    url = server.url
    aws(url, tmp_path, "s3", "mb", "s3://cli-bucket")
    (tmp_path / "small.txt").write_bytes(b"small file\n")
    big = os.urandom(50 << 20)
    (tmp_path / "big.bin").write_bytes(big)
    aws(url, tmp_path, "s3", "cp", "small.txt", "s3://cli-bucket/small.txt")
    aws(url, tmp_path, "s3", "cp", "big.bin", "s3://cli-bucket/big.bin")
    head = aws(url, tmp_path, "s3api", "head-object", "--bucket", "cli-bucket", "--key",
               "big.bin")
    assert '"PartsCount": ' in head and "52428800" in head  # multipart upload
    aws(url, tmp_path, "s3", "cp", "s3://cli-bucket/big.bin", "big.back")
    assert hashlib.md5((tmp_path / "big.back").read_bytes()).digest() == \
        hashlib.md5(big).digest()
    site = tmp_path / "site"
    (site / "sub").mkdir(parents=True)
    (site / "index.html").write_text("<h1>home</h1>")
    (site / "error.html").write_text("<h1>error</h1>")
    (site / "sub" / "page.html").write_text("page")
    aws(url, tmp_path, "s3", "sync", "site", "s3://cli-bucket/site")
    aws(url, tmp_path, "s3", "sync", "s3://cli-bucket/site", "back")
    for f in ("index.html", "error.html", "sub/page.html"):
        assert (tmp_path / "back" / f).read_bytes() == (site / f).read_bytes()
    listing = aws(url, tmp_path, "s3", "ls", "--recursive", "s3://cli-bucket")
    assert "site/sub/page.html" in listing and "big.bin" in listing
    aws(url, tmp_path, "s3", "website", "s3://cli-bucket", "--index-document", "index.html",
        "--error-document", "error.html")
    assert '"Suffix": "index.html"' in aws(url, tmp_path, "s3api", "get-bucket-website",
                                           "--bucket", "cli-bucket")
    presigned = aws(url, tmp_path, "s3", "presign", "s3://cli-bucket/small.txt",
                    "--expires-in", "300").strip()
    r = subprocess.run(["curl", "-sS", "-f", presigned], capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout == b"small file\n"
    tampered = presigned.replace("small.txt", "big.bin")
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", tampered],
                       capture_output=True, timeout=30, text=True)
    assert r.stdout == "403"
    aws(url, tmp_path, "s3", "rm", "--recursive", "s3://cli-bucket")
    assert aws(url, tmp_path, "s3", "ls", "s3://cli-bucket").strip() == ""
    aws(url, tmp_path, "s3", "rb", "s3://cli-bucket")


def _signed_put(url: str, bucket: str, key: str, body: bytes) -> tuple[str, dict[str, str]]:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method="PUT", url=f"{url}/{bucket}/{key}", data=body)
    S3SigV4Auth(Credentials(*ALICE), "s3", "us-east-1").add_auth(req)
    headers = {k: v for k, v in req.headers.items()}
    headers["Content-Length"] = str(len(body))
    headers["Host"] = url.split("//", 1)[1]
    return f"/{bucket}/{key}", headers


@pytest.mark.slow
def test_sigkill_during_put_keeps_old_object(tmp_path: Path) -> None:
    root = tmp_path / "root"
    data = base_config(root, website_port=None)
    proc = ProcServer(tmp_path, data)
    try:
        import boto3
        s3 = boto3.client("s3", endpoint_url=proc.url, aws_access_key_id=ALICE[0],
                          aws_secret_access_key=ALICE[1], region_name="us-east-1")
        s3.put_object(Bucket="site", Key="obj", Body=b"the old version", ContentType="x/old")
        new = os.urandom(20 << 20)
        path, headers = _signed_put(proc.url, "site", "obj", new)
        sock = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
        head = f"PUT {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in
                                                    headers.items()) + "\r\n"
        sock.sendall(head.encode() + new[:12 << 20])
        # wait until the server has written part of the body into its temp file
        tmp_dir = root / ".lbcdn" / "tmp"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            sizes = [f.stat().st_size for f in tmp_dir.iterdir()]
            if sizes and max(sizes) > (1 << 20):
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the upload never reached the temp file")
        proc.kill()
        sock.close()
    finally:
        proc.stop()
    assert (root / "site" / "obj").read_bytes() == b"the old version"
    again = ProcServer(tmp_path, data)
    try:
        import boto3
        s3 = boto3.client("s3", endpoint_url=again.url, aws_access_key_id=ALICE[0],
                          aws_secret_access_key=ALICE[1], region_name="us-east-1")
        got = s3.get_object(Bucket="site", Key="obj")
        assert got["Body"].read() == b"the old version" and got["ContentType"] == "x/old"
        assert list((root / ".lbcdn" / "tmp").iterdir()) == []  # leftovers dropped at start
    finally:
        again.stop()


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_one_gib_object_served_with_small_rss(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "site").mkdir(parents=True)
    big = root / "site" / "huge.bin"
    with open(big, "wb") as f:  # sparse: no disk needed, same path through the server
        f.truncate(1 << 30)
    proc = ProcServer(tmp_path, base_config(root, website_port=None))
    try:
        # the first request pays for the one-time ETag (MD5 of 1 GiB)
        req = urllib.request.Request(f"{proc.url}/site/huge.bin", method="HEAD")
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.headers["Content-Length"] == str(1 << 30)
        with socket.create_connection(("127.0.0.1", proc.port), timeout=30) as sock:
            sock.sendall(b"GET /site/huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            got = 0
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(65536)
            got = len(head.split(b"\r\n\r\n", 1)[1])
            assert head.startswith(b"HTTP/1.1 200")
            while got < (1 << 30):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
        assert got == 1 << 30
        hwm = _vm_hwm_kib(proc.proc.pid)
        assert hwm < 100 * 1024, f"peak RSS {hwm} KiB"
    finally:
        proc.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_client_gone_mid_download_server_survives(server: ThreadServer, s3: Any,
                                                  bucket_root: Path) -> None:
    (bucket_root / "site" / "dl.bin").write_bytes(os.urandom(8 << 20))
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.server.port), timeout=5) as sock:
            sock.sendall(b"GET /site/dl.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(1000)
    assert s3.head_object(Bucket="site", Key="dl.bin")["ContentLength"] == 8 << 20
