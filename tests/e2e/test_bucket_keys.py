"""Every key S3 accepts, through boto3 and the aws CLI against the daemon (in one process and
with `--workers 2`): keys that cannot be files (a key and keys under it, folder markers,
300-byte segments, `..`, `//`) are stored, read and listed exactly; listings match S3 (empty
for prefixes that match nothing, v1 Prefix as given, FetchOwner, ListBuckets paging); metadata
and Content-Encoding round-trip; a client that goes away mid-GET logs no traceback;
`Expect: 100-continue` is answered as S3 does; an invalid UTF-8 key is a 400."""

from __future__ import annotations

import base64
import gzip
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials

from tests.e2e.harness import HOST, DaemonProcess, free_port, proxy_config

KEY_ID, SECRET = "AKIDKEYS", "keys-secret-1"
AWS = str(Path(sys.executable).parent / "aws")
WORKERS = [pytest.param([], id="one-process"), pytest.param(["--workers", "2"], id="workers-2")]

ODD_KEYS = ["foo/bar", "foo/bar/xyzzy", "foo/bar/", "folder/", "x" * 300, "a/" + "y" * 300,
            "../up", "/abs", "a//b", "./dot", "café/ünï ✓", "sp ace+plus%25", "tab\tkey",
            "k" * 1024]


class Daemon:
    def __init__(self, tmp: Path, workers: list[str]) -> None:
        self.root = tmp / "buckets"
        self.port, self.web_port = free_port(), free_port()
        config = proxy_config(free_port())
        config["buckets"] = {
            "root": str(self.root), "port": self.port, "website_port": self.web_port,
            "users": {"u": {"access_key_id": KEY_ID, "secret_access_key": SECRET,
                            "admin": True}},
            "buckets": {"data": {"owner": "u"},
                        "site": {"owner": "u", "public_read": True,
                                 "website": {"index_document": "index.html",
                                             "hosts": ["site.test"]}}}}
        self.proc = DaemonProcess(config, tmp, workers)
        self.url = f"http://{HOST}:{self.port}"

    def s3(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=KEY_ID,
                            aws_secret_access_key=SECRET, region_name="us-east-1",
                            config=BotoConfig(retries={"max_attempts": 1},
                                              s3={"addressing_style": "path"}))

    def aws(self, cwd: Path, *args: str, ok: bool = True) -> str:
        """The aws CLI's stdout; with ok=False it must fail, and its stderr is returned."""
        env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(cwd / "none"),
               "AWS_SHARED_CREDENTIALS_FILE": str(cwd / "none")}
        r = subprocess.run([AWS, "--endpoint-url", self.url, *args], env=env, cwd=cwd,
                           capture_output=True, text=True, timeout=120)
        assert (r.returncode == 0) == ok, f"aws {' '.join(args)}: {r.stdout}\n{r.stderr}"
        return r.stdout if ok else r.stderr


@pytest.fixture(params=WORKERS)
def daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, request.param)
    try:
        yield d
    finally:
        d.proc.stop()
        log = d.proc.stderr()
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def listed(s3: Any, **kw: Any) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="data", **kw):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


@pytest.mark.slow
def test_every_key_is_stored_and_listed_exactly(daemon: Daemon) -> None:
    s3 = daemon.s3()
    for k in ODD_KEYS:
        s3.put_object(Bucket="data", Key=k, Body=k.encode())
    for k in ODD_KEYS:
        assert s3.get_object(Bucket="data", Key=k)["Body"].read() == k.encode(), k
    want = sorted(ODD_KEYS, key=lambda k: k.encode())
    assert listed(s3) == want
    assert listed(s3, PaginationConfig={"PageSize": 3}) == want
    v1 = s3.list_objects(Bucket="data", MaxKeys=1000)
    assert [o["Key"] for o in v1["Contents"]] == want
    r = s3.list_objects_v2(Bucket="data", Prefix="foo/bar/", Delimiter="/")
    assert [o["Key"] for o in r["Contents"]] == ["foo/bar/", "foo/bar/xyzzy"]
    r = s3.list_objects_v2(Bucket="data", Delimiter="/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["../", "./", "/", "a/", "café/",
                                                          "folder/", "foo/"]
    # a plain key is still the plain file, where the website and operators see it
    assert (daemon.root / "data" / "foo" / "bar").read_bytes() == b"foo/bar"
    assert not (daemon.root / "up").exists()
    s3.delete_objects(Bucket="data", Delete={"Objects": [{"Key": k} for k in ODD_KEYS]})
    assert listed(s3) == []


@pytest.mark.slow
def test_aws_cli_with_folder_markers_and_conflicting_keys(daemon: Daemon,
                                                          tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("file")
    daemon.aws(tmp_path, "s3api", "put-object", "--bucket", "data", "--key", "photos/")
    daemon.aws(tmp_path, "s3", "cp", "f.txt", "s3://data/photos/a")
    daemon.aws(tmp_path, "s3", "cp", "f.txt", "s3://data/photos/a/b")
    daemon.aws(tmp_path, "s3", "cp", "f.txt", "s3://data/" + "z" * 300)
    out = daemon.aws(tmp_path, "s3", "ls", "--recursive", "s3://data")
    names = [line.split()[-1] for line in out.splitlines()]
    assert names == ["photos/", "photos/a", "photos/a/b", "z" * 300]
    out = daemon.aws(tmp_path, "s3", "ls", "s3://data/photos/")
    # the folder "a/", the folder marker itself (an empty name, 0 bytes) and the object "a"
    assert [line.split()[-1] if line.split()[-1] != "0" else "" for line in
            out.splitlines()] == ["a/", "", "a"], out
    daemon.aws(tmp_path, "s3", "cp", "s3://data/photos/a/b", "back.txt")
    assert (tmp_path / "back.txt").read_text() == "file"
    daemon.aws(tmp_path, "s3", "rm", "--recursive", "s3://data/")
    assert daemon.aws(tmp_path, "s3", "ls", "--recursive", "s3://data") == ""


def test_prefixes_matching_nothing_list_nothing(daemon: Daemon) -> None:
    s3 = daemon.s3()
    for k in ("a/1", "z/2"):
        s3.put_object(Bucket="data", Key=k, Body=b"x")
    for prefix in ("/", "//", "nothing", "z/2/", "a//"):
        assert "Contents" not in s3.list_objects_v2(Bucket="data", Prefix=prefix), prefix
        assert "Contents" not in s3.list_objects(Bucket="data", Prefix=prefix), prefix
    s3.put_object(Bucket="data", Key="/lead", Body=b"x")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="data", Prefix="/")["Contents"]] \
        == ["/lead"]


def test_v1_prefix_is_echoed_as_given_and_owners(daemon: Daemon) -> None:
    s3 = daemon.s3()
    s3.put_object(Bucket="data", Key="a b+c/1", Body=b"x")
    # boto3 asks for url encoding on its own, and decodes all but v1's Prefix
    r = s3.list_objects(Bucket="data", Prefix="a b+c/")
    assert (r["Prefix"], [o["Key"] for o in r["Contents"]]) == ("a b+c/", ["a b+c/1"])
    assert r["Contents"][0]["Owner"]["ID"] == "u"  # v1 always has owners
    r = s3.list_objects_v2(Bucket="data", Prefix="a b+c/")
    assert r["Prefix"] == "a b+c/" and "Owner" not in r["Contents"][0]
    r = s3.list_objects_v2(Bucket="data", FetchOwner=True)
    assert [o["Owner"] for o in r["Contents"]] == [{"ID": "u", "DisplayName": "u"}]


def test_list_buckets_pages(daemon: Daemon) -> None:
    s3 = daemon.s3()
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["data", "site"]
    first = s3.list_buckets(MaxBuckets=1)
    assert [b["Name"] for b in first["Buckets"]] == ["data"]
    second = s3.list_buckets(MaxBuckets=1, ContinuationToken=first["ContinuationToken"])
    assert [b["Name"] for b in second["Buckets"]] == ["site"]
    assert "ContinuationToken" not in second
    r = s3.list_buckets(Prefix="si")
    assert ([b["Name"] for b in r["Buckets"]], r["Prefix"]) == (["site"], "si")


def test_content_encoding_is_kept_byte_for_byte(daemon: Daemon) -> None:
    """The header as given, and the body as sent (never decompressed on the way in)."""
    s3 = daemon.s3()
    body = gzip.compress(b"hello " * 100)
    for value in ("gzip", "gzip, br", "GZip", "x-custom;q=1 ,  br"):
        s3.put_object(Bucket="data", Key="e", Body=body, ContentEncoding=value)
        got = s3.get_object(Bucket="data", Key="e")
        assert (got["ContentEncoding"], got["Body"].read()) == (value, body)


def test_utf8_metadata_round_trips(daemon: Daemon) -> None:
    s3 = daemon.s3()
    word = "=?UTF-8?B?" + base64.b64encode("café ✓".encode()).decode() + "?="
    s3.put_object(Bucket="data", Key="m", Body=b"x",
                  Metadata={"b": word, "q": "=?utf-8?q?caf=C3=A9?=", "plain": "a  b"})
    head = s3.head_object(Bucket="data", Key="m")
    # as S3: stored decoded, returned as one UTF-8 B-encoded word
    assert head["Metadata"] == {"b": word, "q": "=?UTF-8?B?Y2Fmw6k=?=", "plain": "a  b"}
    # raw UTF-8 in the header (curl, other SDKs) is stored as that text too
    url = f"{daemon.url}/data/raw"
    req = AWSRequest(method="PUT", url=url, data=b"x", headers={"x-amz-meta-r": "café"})
    S3SigV4Auth(Credentials(KEY_ID, SECRET), "s3", "us-east-1").add_auth(req)
    headers = {**dict(req.headers.items()), "Content-Length": "1", "Connection": "close",
               "Host": f"{HOST}:{daemon.port}"}
    with socket.create_connection((HOST, daemon.port), timeout=10) as s:
        s.sendall(("PUT /data/raw HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\nx").encode())
        assert s.recv(100).startswith(b"HTTP/1.1 200 ")
    assert s3.head_object(Bucket="data", Key="raw")["Metadata"] == {"r": "=?UTF-8?B?Y2Fmw6k=?="}


def test_client_gone_during_get_logs_no_traceback(daemon: Daemon) -> None:
    """Resets in the middle of sendfile (large) and of a small body; the fixture checks the
    log."""
    s3 = daemon.s3()
    s3.put_object(Bucket="data", Key="big", Body=os.urandom(32 << 20))
    s3.put_object(Bucket="site", Key="small", Body=b"s" * 1000)
    big_url = s3.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": "big"})
    target = big_url.split(str(daemon.port), 1)[1]
    for port, path, host in ((daemon.port, target, "x"), (daemon.web_port, "/small",
                                                           "site.test")):
        for _ in range(5):
            s = socket.create_connection((HOST, port))
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            s.recv(100)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            s.close()  # RST
    time.sleep(1.0)
    assert s3.head_object(Bucket="data", Key="big")["ContentLength"] == 32 << 20


def expect_exchange(port: int, head: str, body: bytes) -> bytes:
    """Send the head, wait for the interim (or final) answer as a client honouring
    `Expect: 100-continue` does, send the body only after a 100, return everything read."""
    with socket.create_connection((HOST, port)) as s:
        s.settimeout(10)
        s.sendall(head.encode())
        first = s.recv(65536)
        if not first.startswith(b"HTTP/1.1 100 "):
            return first
        s.sendall(body)
        rest = b""
        while b"\r\n\r\n" not in rest:
            rest += s.recv(65536)
        return first + rest


def test_expect_100_continue(daemon: Daemon) -> None:
    s3 = daemon.s3()
    # refused before the body is sent: the error, no 100 Continue, connection closed
    got = expect_exchange(daemon.port, "PUT /data/k HTTP/1.1\r\nHost: x\r\n"
                          "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n", b"hello")
    assert got.startswith(b"HTTP/1.1 403 ") and b"AccessDenied" in got, got
    # allowed: 100 Continue, then the body, then 200
    url = s3.generate_presigned_url("put_object", Params={"Bucket": "data", "Key": "k"})
    got = expect_exchange(daemon.port, f"PUT {url.split(str(daemon.port), 1)[1]} HTTP/1.1\r\n"
                          "Host: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
                          b"hello")
    assert got.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 "), got
    assert s3.get_object(Bucket="data", Key="k")["Body"].read() == b"hello"
    # boto3 sends Expect: 100-continue on PutObject
    s3.put_object(Bucket="data", Key="k2", Body=b"x" * 100000)
    assert s3.head_object(Bucket="data", Key="k2")["ContentLength"] == 100000


def signed_exchange(daemon: Daemon, method: str, target: str,
                    headers: dict[str, str] | None = None) -> bytes:
    req = AWSRequest(method=method, url=daemon.url + target, data=b"", headers=headers or {})
    S3SigV4Auth(Credentials(KEY_ID, SECRET), "s3", "us-east-1").add_auth(req)
    sent = {**dict(req.headers.items()), "Content-Length": "0", "Connection": "close",
            "Host": f"{HOST}:{daemon.port}"}
    with socket.create_connection((HOST, daemon.port), timeout=10) as s:
        s.sendall((f"{method} {target} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in sent.items()) + "\r\n").encode())
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got


def test_invalid_utf8_is_400(daemon: Daemon) -> None:
    for raw in (b"/data/%ff%fe", b"/data/a%c3", b"/data/\xff\xfe"):  # unsigned
        with socket.create_connection((HOST, daemon.port)) as s:
            s.settimeout(10)
            s.sendall(b"GET " + raw + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        assert got.startswith(b"HTTP/1.1 400 "), got
    for method, target, code, headers in (
            ("GET", "/data/%FF%FE", b"InvalidURI", {}),
            ("PUT", "/data/a%C3", b"InvalidURI", {}),
            ("GET", "/data?prefix=%FF", b"InvalidArgument", {}),
            ("GET", "/data?delimiter=%C3", b"InvalidArgument", {}),
            ("GET", "/data?marker=a%FF", b"InvalidArgument", {}),
            ("GET", "/data?list-type=2&start-after=%FF", b"InvalidArgument", {}),
            ("GET", "/data?uploads&prefix=%FF", b"InvalidArgument", {}),
            ("PUT", "/data/dst", b"InvalidURI", {"x-amz-copy-source": "/data/%FF"})):
        got = signed_exchange(daemon, method, target, headers)
        assert got.startswith(b"HTTP/1.1 400 ") and b"<Code>" + code + b"</Code>" in got, \
            (target, got)
