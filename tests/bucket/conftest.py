"""Shared fixtures for the bucket origin tests: a BucketServer on 127.0.0.1 (run-time ports) in
a thread of its own (so synchronous clients such as boto3 can talk to it), boto3 clients, and
a subprocess runner for tests that must kill or measure the server process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lbcdn.bucket.config import BucketsConfig, load_buckets_config
from lbcdn.bucket.server import BucketServer

REPO = Path(__file__).resolve().parents[2]
ALICE = ("AKIDALICE", "alice-secret-key")     # admin
BOB = ("AKIDBOB", "bob-secret-key")           # read on "shared"
ENV = {"ALICE_SECRET": ALICE[1], "BOB_SECRET": BOB[1]}


def base_config(root: Path, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "root": str(root), "port": 0, "website_port": 0,
        "users": {
            "alice": {"access_key_id": ALICE[0], "secret_access_key": "${ALICE_SECRET}",
                      "admin": True},
            "bob": {"access_key_id": BOB[0], "secret_access_key": "${BOB_SECRET}"},
        },
        "buckets": {
            "site": {"public_read": True, "website": {"index_document": "index.html",
                                                      "error_document": "error.html",
                                                      "hosts": ["site.example"]}},
            "shared": {"read": ["bob"], "list": ["bob"]},
        },
        "virtual_host_suffixes": ["s3.example"],
        "website_host_suffixes": ["web.example"],
        "min_part_bytes": 5 << 20,
    }
    data.update(over)
    return data


class ThreadServer:
    """A BucketServer running on its own event loop in a daemon thread."""

    def __init__(self, config: BucketsConfig) -> None:
        self.config = config
        self.server = BucketServer(config)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as e:  # surfaced by start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> ThreadServer:
        self.thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("bucket server did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self.thread.is_alive() and self._error is None:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def website_url(self) -> str:
        return f"http://127.0.0.1:{self.server.website_port}"


@pytest.fixture
def bucket_root(tmp_path: Path) -> Path:
    root = tmp_path / "buckets"
    root.mkdir()
    return root


@pytest.fixture
def server(bucket_root: Path) -> Iterator[ThreadServer]:
    cfg = load_buckets_config(base_config(bucket_root), env=ENV)
    srv = ThreadServer(cfg).start()
    try:
        yield srv
    finally:
        srv.stop()


def client(srv: ThreadServer, creds: tuple[str, str] = ALICE, **kw: Any) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=srv.url, aws_access_key_id=creds[0],
                        aws_secret_access_key=creds[1], region_name="us-east-1",
                        config=Config(retries={"max_attempts": 1}, **kw))


@pytest.fixture
def s3(server: ThreadServer) -> Any:
    return client(server)


@pytest.fixture(autouse=True)
def _isolated_aws_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing of the machine's AWS setup leaks into boto3 or the aws CLI."""
    cfg = tmp_path / "aws-config"
    creds = tmp_path / "aws-credentials"
    cfg.write_text("")
    creds.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)


class ProcServer:
    """`python -m lbcdn.bucket` in a subprocess (to be killed or measured)."""

    def __init__(self, tmp: Path, data: dict[str, Any]) -> None:
        cfg = tmp / "bucket-config.yaml"
        cfg.write_text(yaml.safe_dump({"buckets": data}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lbcdn.bucket", str(cfg)], cwd=REPO,
            env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.proc.stderr.read()}")
        parts = line.split()
        self.port = int(parts[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
