"""Origin access control: a cache behavior in front of a private S3 bucket, every origin
request signed with SigV4 by the edge. Two S3 implementations: lbcdn's own bucket API (no
public access: an unsigned GET is refused) and moto's server; one process and `--workers 2`.
Through the edge: a miss, a hit, a range, and a conditional revalidation (the S3 ETag as
If-None-Match; the origin's 304 freshens the entry: RefreshHit)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.e2e.harness import HOST, DaemonProcess, free_port, listener_port, proxy_config, \
    wait_for_port
from tests.e2e.test_cache import cdn_config

KEY_ID, SECRET = "AKIDEDGE0001", "edge-secret-key"
BUCKET = "private-media"
BODY = bytes(range(256)) * 64  # 16 KiB
WORKERS = [pytest.param([], id="one-process"), pytest.param(["--workers", "2"], id="workers-2")]


def s3_client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
                        config=Config(s3={"addressing_style": "path"}))


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


@contextlib.contextmanager
def moto_server(tmp: Path) -> Iterator[str]:
    port = free_port()
    log = open(tmp / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout_s=60, proc=proc)
        yield f"http://{HOST}:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def edge_config(origin_port: int, endpoint: str, secret: dict[str, str]) -> dict[str, Any]:
    # a 1 s default TTL: S3 sends no Cache-Control, so the entry is stale a second later
    return cdn_config(origin_port, policy={"default_ttl_s": 1, "max_ttl_s": 1},
                      origins={"o": {"s3": {
                          "endpoint": endpoint, "bucket": BUCKET,
                          "credentials": {"access_key_id": KEY_ID, **secret}}}})


def through_the_edge(port: int) -> None:
    base = f"http://{HOST}:{port}"
    status, headers, body = get(f"{base}/media/clip.bin")
    assert (status, body) == (200, BODY), (status, headers, body[:200])
    status, headers, body = get(f"{base}/media/clip.bin", {"Range": "bytes=100-163"})
    assert (status, body) == (206, BODY[100:164]), (status, headers)
    assert headers["content-range"] == f"bytes 100-163/{len(BODY)}"
    status, _, body = get(f"{base}/media/missing.bin")
    assert status in (403, 404), status  # the bucket's own answer, not ours
    time.sleep(1.5)  # stale now: the next request revalidates with the ETag
    refreshed = []
    for _ in range(6):  # new connections: with two workers each has its own entry
        status, headers, body = get(f"{base}/media/clip.bin")
        assert (status, body) == (200, BODY)
        refreshed.append(headers["x-cache"])
    assert "RefreshHit from lbcdn" in refreshed, refreshed
    # a client's own conditional, answered from the entry
    status, _, _ = get(f"{base}/media/clip.bin", {"If-None-Match": headers["etag"]})
    assert status == 304


@pytest.mark.slow
@pytest.mark.parametrize("workers", WORKERS)
def test_private_lbcdn_bucket_behind_the_edge(tmp_path: Path, workers: list[str]) -> None:
    s3_port = free_port()
    endpoint = f"http://{HOST}:{s3_port}"
    (tmp_path / "edge-secret").write_text(SECRET + "\n")
    config = edge_config(s3_port, endpoint,
                         {"secret_access_key_file": str(tmp_path / "edge-secret")})
    config["buckets"] = {
        "root": str(tmp_path / "buckets"), "port": s3_port,
        "users": {"edge": {"access_key_id": KEY_ID, "secret_access_key": SECRET}},
        "buckets": {BUCKET: {"read": ["edge"], "write": ["edge"]}}}
    daemon = DaemonProcess(config, tmp_path, workers)
    try:
        wait_for_port(s3_port, proc=daemon.proc)
        wait_for_port(listener_port(config), proc=daemon.proc)
        s3_client(endpoint).put_object(Bucket=BUCKET, Key="media/clip.bin", Body=BODY)
        # the bucket is private: an unsigned request is refused
        assert get(f"{endpoint}/{BUCKET}/media/clip.bin")[0] == 403
        through_the_edge(listener_port(config))
    finally:
        daemon.stop()


@pytest.mark.slow
@pytest.mark.parametrize("workers", WORKERS)
def test_moto_s3_behind_the_edge(tmp_path: Path, workers: list[str]) -> None:
    with moto_server(tmp_path) as endpoint:
        client = s3_client(endpoint)
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key="media/clip.bin", Body=BODY)
        config = edge_config(free_port(), endpoint, {"secret_access_key": SECRET})
        daemon = DaemonProcess(config, tmp_path, workers)
        try:
            wait_for_port(listener_port(config), proc=daemon.proc)
            through_the_edge(listener_port(config))
        finally:
            daemon.stop()
