"""A website published with the aws CLI alone, against the daemon, in one process and with
`--workers 2` (the S3 API and the website endpoint run in the control process; the edge in the
workers forwards to the website endpoint): `aws s3 mb` + `sync` + `website`, then Block Public
Access lifted and a public-read bucket policy put; a plain HTTP client fetching by Host
`BUCKET.<website suffix>` sees 403 before and the site after, no reload in between. And
`aws s3 cp --acl public-read` makes one object readable."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import HOST, DaemonProcess, free_port, proxy_config, wait_for_port

KEY_ID, SECRET = "AKIDPUBLISH1", "publish-secret"
SUFFIX = "s3-website.localhost"
AWS = str(Path(sys.executable).parent / "aws")
WORKERS = [pytest.param([], id="one-process"), pytest.param(["--workers", "2"], id="workers-2")]


class Aws:
    def __init__(self, port: int, tmp: Path) -> None:
        self.url = f"http://{HOST}:{port}"
        self.tmp = tmp
        (tmp / "aws-config").write_text("")
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
                    "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
                    "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_CONFIG_FILE": str(tmp / "aws-config"),
                    "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "aws-config")}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([AWS, "--endpoint-url", self.url, *args], env=self.env,
                           cwd=self.tmp, capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"aws {' '.join(args)} failed: {r.stdout}\n{r.stderr}")
        return r


def fetch(port: int, path: str, host: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def fetch_all(ports: list[int], path: str, host: str, times: int = 6) -> set[tuple[int, bytes]]:
    """Every answer `path` gets, from the website port and (new connections each time, which
    the kernel spreads over the workers) through the edge."""
    return {fetch(port, path, host) for port in ports for _ in range(times)}


def policy(bucket: str, *, listable: bool) -> str:
    statements: list[dict[str, Any]] = [
        {"Sid": "PublicReadGetObject", "Effect": "Allow", "Principal": "*",
         "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}]
    if listable:
        statements.append({"Sid": "PublicList", "Effect": "Allow", "Principal": {"AWS": "*"},
                           "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}"})
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


@pytest.mark.slow
@pytest.mark.parametrize("workers", WORKERS)
def test_publish_a_website_with_the_aws_cli(tmp_path: Path, workers: list[str]) -> None:
    s3_port, web_port = free_port(), free_port()
    config = proxy_config(web_port)  # the edge forwards everything to the website endpoint
    config["buckets"] = {
        "root": str(tmp_path / "buckets"), "port": s3_port, "website_port": web_port,
        "website_host_suffixes": [SUFFIX],
        "users": {"me": {"access_key_id": KEY_ID, "secret_access_key": SECRET}}}
    site = tmp_path / "site"
    (site / "docs").mkdir(parents=True)
    (site / "index.html").write_text("<h1>home</h1>")
    (site / "error.html").write_text("<h1>not here</h1>")
    (site / "docs" / "index.html").write_text("docs")
    (tmp_path / "policy.json").write_text(policy("my-site", listable=False))
    (tmp_path / "policy-list.json").write_text(policy("my-site", listable=True))
    (tmp_path / "file.txt").write_text("shared file")
    daemon = DaemonProcess(config, tmp_path, workers)
    try:
        wait_for_port(s3_port, proc=daemon.proc)
        wait_for_port(web_port, proc=daemon.proc)
        ports = [web_port, int(config["listeners"][0]["port"])]
        host = f"my-site.{SUFFIX}"
        aws = Aws(s3_port, tmp_path)
        aws("s3", "mb", "s3://my-site")
        aws("s3", "sync", str(site), "s3://my-site")
        aws("s3", "website", "s3://my-site", "--index-document", "index.html",
            "--error-document", "error.html")
        # private until the owner says otherwise
        assert {s for s, _ in fetch_all(ports, "/", host)} == {403}
        refused = aws("s3api", "put-bucket-policy", "--bucket", "my-site", "--policy",
                      "file://policy.json", check=False)
        assert refused.returncode != 0 and "AccessDenied" in refused.stderr
        aws("s3api", "put-public-access-block", "--bucket", "my-site",
            "--public-access-block-configuration",
            "BlockPublicAcls=false,IgnorePublicAcls=false,BlockPublicPolicy=false,"
            "RestrictPublicBuckets=false")
        aws("s3api", "put-bucket-policy", "--bucket", "my-site", "--policy",
            "file://policy.json")
        assert fetch_all(ports, "/", host) == {(200, b"<h1>home</h1>")}
        assert fetch_all(ports, "/docs/", host) == {(200, b"docs")}
        # without s3:ListBucket a missing key is 403, as on S3; the error document either way
        assert fetch_all(ports, "/missing.html", host) == {(403, b"<h1>not here</h1>")}
        aws("s3api", "put-bucket-policy", "--bucket", "my-site", "--policy",
            "file://policy-list.json")
        assert fetch_all(ports, "/missing.html", host) == {(404, b"<h1>not here</h1>")}
        assert json.loads(json.loads(aws("s3api", "get-bucket-policy", "--bucket",
                                         "my-site").stdout)["Policy"]) == \
            json.loads(policy("my-site", listable=True))
        # anonymous GETs on the S3 API follow the same policy
        assert fetch(s3_port, "/my-site/index.html", f"{HOST}:{s3_port}") == \
            (200, b"<h1>home</h1>")
        aws("s3api", "delete-bucket-policy", "--bucket", "my-site")
        assert {s for s, _ in fetch_all(ports, "/", host)} == {403}

        # one object made public with the CLI's --acl
        aws("s3", "mb", "s3://files")
        aws("s3", "cp", "file.txt", "s3://files/private.txt")
        blocked = aws("s3", "cp", "--acl", "public-read", "file.txt", "s3://files/public.txt",
                      check=False)
        assert blocked.returncode != 0 and "AccessDenied" in blocked.stderr
        aws("s3api", "put-public-access-block", "--bucket", "files",
            "--public-access-block-configuration", "BlockPublicAcls=false,"
            "IgnorePublicAcls=false,BlockPublicPolicy=true,RestrictPublicBuckets=true")
        aws("s3", "cp", "--acl", "public-read", "file.txt", "s3://files/public.txt")
        s3_host = f"{HOST}:{s3_port}"
        assert fetch(s3_port, "/files/public.txt", s3_host) == (200, b"shared file")
        assert fetch(s3_port, "/files/private.txt", s3_host)[0] == 403
        assert "AllUsers" in aws("s3api", "get-object-acl", "--bucket", "files", "--key",
                                 "public.txt").stdout
    finally:
        daemon.stop()
