"""The ACME client and manager against small fake CAs in this event loop: a URL that is not an
ACME directory, a CA answering garbage (clear errors, nothing half-written on disk), and a
replica that waits for another's issuance lock and picks its certificate up."""

from __future__ import annotations

import asyncio
import datetime
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from lbcdn.acme.client import key_pem, new_key
from lbcdn.acme.config import AcmeConfig, OnDemandConfig
from lbcdn.acme.manager import AcmeManager, Wanted
from lbcdn.acme.store import AcmeStore, cert_id
from tests.e2e.harness import until

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(routes: dict[str, Handler]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


class FakeCa:
    """Accepts every request (signatures unchecked), authorizations valid at once; what it
    answers at `bad` is garbage."""

    def __init__(self, bad: str) -> None:
        self.bad = bad
        self.base = ""
        self.seen: list[str] = []

    def routes(self) -> dict[str, Handler]:
        def answer(name: str, body: dict[str, Any], status: int = 200,
                   location: str | None = None) -> Handler:
            async def handler(request: web.Request) -> web.StreamResponse:
                self.seen.append(name)
                headers = {"Replay-Nonce": f"n{len(self.seen)}"}
                if location:
                    headers["Location"] = self.base + location
                if name == self.bad:
                    return web.Response(text="<html>oops</html>", status=status,
                                        headers=headers)
                data = {k: (self.base + v if isinstance(v, str) and v.startswith("/") else v)
                        for k, v in body.items()}
                if name == "order":
                    data["authorizations"] = [self.base + "/authz"]
                return web.json_response(data, status=status, headers=headers)
            return handler
        return {
            "/dir": answer("dir", {"newNonce": "/nonce", "newAccount": "/account",
                                   "newOrder": "/order"}),
            "/nonce": answer("nonce", {}),
            "/account": answer("account", {"status": "valid"}, 201, "/acct/1"),
            "/order": answer("order", {"status": "ready", "finalize": "/finalize"}, 201,
                             "/order/1"),
            "/authz": answer("authz", {"status": "valid"}),
            "/finalize": answer("finalize", {"status": "processing"}),
            "/order/1": answer("order-status", {"status": "valid", "certificate": "/cert"}),
            "/cert": answer("cert", {}),
        }


@pytest.fixture
async def fake_ca(request: pytest.FixtureRequest) -> AsyncIterator[tuple[FakeCa, str]]:
    ca = FakeCa(request.param)
    runner, base = await serve(ca.routes())
    ca.base = base
    try:
        yield ca, base + "/dir"
    finally:
        await runner.cleanup()


async def failure(tmp: Path, directory: str) -> tuple[str, AcmeManager]:
    published: list[dict[str, Any]] = []

    async def publish(view: dict[str, Any]) -> None:
        published.append(view)
    manager = AcmeManager(str(tmp), publish, lambda: None)
    config = AcmeConfig(directory=directory, names=("a.test",), challenge="http-01")
    await manager.apply([Wanted(cert_id(directory, config.names), config, "http-01",
                                ("tls",))])
    manager.run()
    [job] = manager.jobs.values()
    try:
        await until(lambda: job.last_error, 15, what="the failure")
    finally:
        await manager.stop()
    assert published[-1]["certs"] == {}
    assert job.last_error is not None
    return job.last_error, manager


def leftovers(tmp: Path) -> list[str]:
    """What a failed issuance left in the store, apart from the account key and locks."""
    return sorted(p for p in os.listdir(tmp / "acme")
                  if not p.startswith("account-") and not p.endswith(".lock"))


async def test_a_url_that_is_not_an_acme_directory(tmp_path: Path) -> None:
    runner, base = await serve({"/page": _html, "/gone": _missing})
    try:
        error, _ = await failure(tmp_path, base + "/page")
        assert error == (f"directory: {base}/page is not an ACME directory (no newNonce, "
                         "newAccount, newOrder)")
        error, _ = await failure(tmp_path, base + "/gone")
        assert error == f"directory: {base}/gone answered 404; is it an ACME directory URL?"
    finally:
        await runner.cleanup()
    error, _ = await failure(tmp_path, base + "/page")   # nobody listens any more
    assert error.startswith(f"directory: cannot reach the CA at {base}/page")
    assert leftovers(tmp_path) == []


async def _html(request: web.Request) -> web.Response:
    return web.Response(text="<html>a web site</html>", content_type="text/html")


async def _missing(request: web.Request) -> web.Response:
    return web.Response(status=404)


@pytest.mark.parametrize(("fake_ca", "expected"), [
    ("order", "newOrder: the CA's answer is not JSON: b'<html>oops</html>'"),
    ("authz", "authorization: the CA's answer is not JSON: b'<html>oops</html>'"),
    ("cert", "certificate download: the CA's answer is not a PEM chain"),
], indirect=["fake_ca"])
async def test_a_ca_answering_garbage_leaves_nothing_half_written(
        tmp_path: Path, fake_ca: tuple[FakeCa, str], expected: str) -> None:
    ca, directory = fake_ca
    error, _ = await failure(tmp_path, directory)
    assert error == expected
    assert leftovers(tmp_path) == []
    for path in (tmp_path / "acme").iterdir():
        assert path.stat().st_mode & 0o077 == 0, path


def self_signed(name: str, tmp: Path) -> tuple[str, str]:
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier(b"\x01\x02\x03", None, None),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem(key)


@pytest.mark.parametrize("fake_ca", ["none"], indirect=True)
async def test_a_replica_waits_for_the_issuing_lock_and_takes_the_result(
        tmp_path: Path, fake_ca: tuple[FakeCa, str]) -> None:
    ca, directory = fake_ca
    config = AcmeConfig(directory=directory, names=("a.test",), challenge="http-01")
    cid = cert_id(directory, config.names)
    other = AcmeStore(str(tmp_path))          # another replica, same state directory
    lock = other.try_lock(cid)
    assert lock is not None
    views: list[dict[str, Any]] = []

    async def publish(view: dict[str, Any]) -> None:
        views.append(view)
    manager = AcmeManager(str(tmp_path), publish, lambda: None)
    await manager.apply([Wanted(cid, config, "http-01", ("tls",))])
    manager.run()
    [job] = manager.jobs.values()
    try:
        await until(lambda: job.issuing, 5, what="waiting for the lock")
        await asyncio.sleep(1.5)
        assert ca.seen == [] and job.stored is None   # it did not ask the CA
        chain, key = self_signed("a.test", tmp_path)
        stored = other.save(cid, chain, key, "1")
        lock.release()
        await until(lambda: job.stored is not None, 5, what="the certificate taken")
        assert job.stored == stored and job.last_error is None and not job.issuing
        assert views[-1]["certs"] == {"tls": [[["a.test"], stored.cert_file,
                                                stored.key_file]]}
        assert ca.seen == []
    finally:
        await manager.stop()


async def test_on_demand_refusals_are_remembered(tmp_path: Path) -> None:
    async def publish(view: dict[str, Any]) -> None:
        pass
    now = [1000.0]
    manager = AcmeManager(str(tmp_path), publish, lambda: None, clock=lambda: now[0])
    od = OnDemandConfig(directory="http://127.0.0.1:9/dir", allow=("*.shop.test",))
    await manager.apply([], {"tls": (od, 8443)})
    assert await manager.demand("plain", "a.shop.test") == \
        "listener 'plain' issues no certificates on demand"
    assert await manager.demand("tls", "x.other.test") == \
        "on-demand: x.other.test is not in the allow-list"
    # a CA that cannot be reached: the failure is the answer, and is remembered
    error = await manager.demand("tls", "a.shop.test")
    assert error is not None and "cannot reach the CA" in error
    assert manager.jobs == {}
    assert await manager.demand("tls", "A.shop.test.") == error
    assert manager.refused["a.shop.test"][0] == 1060.0
    now[0] += 61   # a minute later it is tried again
    assert await manager.demand("tls", "a.shop.test") == error
    assert manager.refused["a.shop.test"][0] == 1121.0
    await manager.stop()


async def test_renewal_information_brings_the_renewal_forward(tmp_path: Path) -> None:
    """ACME Renewal Information (RFC 9773): the CA's suggested window wins over two thirds
    of the lifetime when it is earlier."""
    now = time.time()
    asked: list[str] = []

    async def directory(request: web.Request) -> web.Response:
        return web.json_response({"newNonce": base + "/n", "newAccount": base + "/a",
                                  "newOrder": base + "/o", "renewalInfo": base + "/ari/"})

    async def ari(request: web.Request) -> web.Response:
        asked.append(request.match_info["id"])
        def iso(t: float) -> str:
            return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat() \
                .replace("+00:00", "Z")
        return web.json_response({"suggestedWindow": {"start": iso(now + 100),
                                                      "end": iso(now + 200)}})
    runner, base = await serve({"/dir": directory, "/ari/{id}": ari})
    config = AcmeConfig(directory=base + "/dir", names=("a.test",), challenge="http-01")
    cid = cert_id(config.directory, config.names)
    chain, key = self_signed("a.test", tmp_path)   # 90 days: two thirds is day 60
    AcmeStore(str(tmp_path)).save(cid, chain, key, "1")

    async def publish(view: dict[str, Any]) -> None:
        pass
    manager = AcmeManager(str(tmp_path), publish, lambda: None)
    await manager.apply([Wanted(cid, config, "http-01", ("tls",))])
    manager.run()
    [job] = manager.jobs.values()
    try:
        await until(lambda: job.suggested is not None, 10, what="renewal information")
        await until(lambda: job.next_renewal is not None and job.next_renewal < now + 300, 5)
        assert now + 100 <= job.next_renewal <= now + 200
        assert asked == ["AQID.AQ"]   # key id 01 02 03, serial 1
    finally:
        await manager.stop()
        await runner.cleanup()
