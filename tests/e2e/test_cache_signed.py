"""Private content through the real daemon: a behavior with `trusted_key_groups` serves only
requests signed by one of its keys (CloudFront signed URLs and cookies), made by botocore's
CloudFrontSigner and by the aws CLI's `aws cloudfront sign`, in one process and with
`--workers 2`. The signature parameters and cookies reach neither the cache key nor the
origin."""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from botocore.signers import CloudFrontSigner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.e2e.cache_origin import Answer, Origin, scripted_origin
from tests.e2e.harness import HOST, DaemonProcess, RawClient, listener_port, wait_for_port
from tests.e2e.test_cache import cdn_config

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
STRANGER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
AWS = str(Path(sys.executable).with_name("aws"))
DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
          b'<Message>Access denied</Message></Error>')
MISSING = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>MissingKey</Code>'
           b'<Message>Missing Key-Pair-Id query parameter or cookie value</Message></Error>')


def signer(key: rsa.RSAPrivateKey = KEY) -> CloudFrontSigner:
    return CloudFrontSigner("K1", lambda m: key.sign(m, padding.PKCS1v15(), hashes.SHA1()))


def later(s: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(time.time() + s, datetime.timezone.utc)


def fetch(url: str, cookie: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def aws_sign(tmp: Path, url: str, *extra: str) -> str:
    pem = tmp / "private.pem"  # the aws CLI reads PKCS#1 ("BEGIN RSA PRIVATE KEY")
    pem.write_bytes(KEY.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()))
    env = {**os.environ, "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    out = subprocess.run([AWS, "cloudfront", "sign", "--url", url, "--key-pair-id", "K1",
                          "--private-key", f"file://{pem}", "--date-less-than",
                          later(3600).strftime("%Y-%m-%dT%H:%M:%S"), *extra],
                         capture_output=True, text=True, timeout=60, env=env, check=True)
    return out.stdout.strip()


def config(origin: int, tmp: Path) -> dict[str, object]:
    pem = tmp / "public.pem"
    pem.write_bytes(KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    c = cdn_config(origin, behaviors=[{"path_pattern": "/private/*", "origin": "o",
                                       "trusted_key_groups": ["signers"]}])
    c["cache"]["key_groups"] = {"signers": {"public_keys": {"K1": {"pem_file": str(pem)}}}}
    return c


def origin_targets(origin: Origin, path: str) -> list[str]:
    return [line.split(" ")[1] for line, _ in origin.requests
            if line.split(" ")[1].split("?")[0] == path]


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_signed_urls_and_cookies(tmp_path: Path, workers: str) -> None:
    async with scripted_origin() as origin:
        for path in ("/private/a.txt", "/private/b.txt", "/private/c.txt", "/public.txt"):
            origin.set(path, Answer(headers=[("Cache-Control", "max-age=600")],
                                    body=path.encode()))
        c = config(origin.port, tmp_path)
        daemon = DaemonProcess(c, tmp_path, ["--workers", workers])
        try:
            port = listener_port(c)
            await asyncio.to_thread(wait_for_port, port)
            base = f"http://{HOST}:{port}"

            def run() -> None:
                # botocore, canned policy, with a query of the viewer's own
                url = signer().generate_presigned_url(f"{base}/private/a.txt?v=2",
                                                      date_less_than=later(600))
                for _ in range(6):
                    status, headers, body = fetch(url)
                    assert (status, body) == (200, b"/private/a.txt"), (status, body)
                # another signature for the same object is the same cache entry
                again = signer().generate_presigned_url(f"{base}/private/a.txt?v=2",
                                                        date_less_than=later(900))
                status, headers, _ = fetch(again)
                assert status == 200 and "hit" in headers["cache-status"], headers
                # the origin saw the viewer's query, not CloudFront's parameters
                targets = origin_targets(origin, "/private/a.txt")
                assert set(targets) == {"/private/a.txt?v=2"}, targets
                assert len(targets) <= int(workers)

                # the aws CLI: canned, and custom with an address condition
                status, _, body = fetch(aws_sign(tmp_path, f"{base}/private/b.txt"))
                assert (status, body) == (200, b"/private/b.txt")
                ok = aws_sign(tmp_path, f"{base}/private/b.txt", "--ip-address", "127.0.0.1/32")
                assert "Policy=" in ok and fetch(ok)[0] == 200
                elsewhere = aws_sign(tmp_path, f"{base}/private/b.txt",
                                     "--ip-address", "10.0.0.0/8")
                assert fetch(elsewhere)[::2] == (403, DENIED)

                # a custom policy's wildcard resource, as a signed cookie
                s = signer()
                policy = s.build_policy(f"{base}/private/*", later(600)).encode()
                cookie = (f"theme=dark; CloudFront-Policy={s._url_b64encode(policy).decode()}; "
                          f"CloudFront-Signature={s._url_b64encode(s.rsa_signer(policy)).decode()}"
                          f"; CloudFront-Key-Pair-Id=K1")
                status, _, body = fetch(f"{base}/private/c.txt", cookie)
                assert (status, body) == (200, b"/private/c.txt")
                sent = origin.last_headers("/private/c.txt")
                assert "cloudfront" not in sent.get("cookie", "").lower()

                # each way of being wrong: CloudFront's 403
                expired = signer().generate_presigned_url(f"{base}/private/a.txt?v=2",
                                                          date_less_than=later(-5))
                status, headers, body = fetch(expired)
                assert (status, body) == (403, DENIED)
                assert headers["content-type"] == "text/xml"
                forged = signer(STRANGER).generate_presigned_url(
                    f"{base}/private/a.txt?v=2", date_less_than=later(600))
                assert fetch(forged)[::2] == (403, DENIED)
                assert fetch(url.replace("v=2", "v=3"))[::2] == (403, DENIED)   # tampered
                assert fetch(url.replace("/a.txt", "/b.txt"))[::2] == (403, DENIED)  # resource
                assert fetch(f"{base}/private/a.txt?v=2")[::2] == (403, MISSING)
                # other behaviors stay public
                assert fetch(f"{base}/public.txt")[::2] == (200, b"/public.txt")

            await asyncio.to_thread(run)
        finally:
            daemon.stop()


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_repeated_signed_request_expires_on_its_keep_alive_connection(
        tmp_path: Path, workers: str) -> None:
    """The same head again and again on one connection (the listener's known-head path, which
    answers hits without an Exchange) is still checked each time: once its signature expires
    the cached object is refused."""
    async with scripted_origin() as origin:
        origin.set("/private/a.txt", Answer(headers=[("Cache-Control", "max-age=600")],
                                            body=b"secret"))
        c = config(origin.port, tmp_path)
        daemon = DaemonProcess(c, tmp_path, ["--workers", workers])
        try:
            port = listener_port(c)
            await asyncio.to_thread(wait_for_port, port)
            expires = int(time.time()) + 3
            url = signer().generate_presigned_url(
                f"http://{HOST}:{port}/private/a.txt",
                date_less_than=datetime.datetime.fromtimestamp(expires, datetime.timezone.utc))
            target = url.split(f"{port}", 1)[1]
            client = await RawClient.open(port)
            try:
                served = 0
                while time.time() < expires - 0.5:
                    r = await client.request("GET", target, host=f"{HOST}:{port}")
                    assert (r.status, r.body) == (200, b"secret"), r
                    served += 1
                    await asyncio.sleep(0.05)
                assert served >= 10
                await asyncio.sleep(max(0.0, expires - time.time()) + 0.2)
                r = await client.request("GET", target, host=f"{HOST}:{port}")
                assert (r.status, r.body) == (403, DENIED), r
            finally:
                await client.close()
            assert origin.hits["/private/a.txt"] == 1
        finally:
            daemon.stop()
