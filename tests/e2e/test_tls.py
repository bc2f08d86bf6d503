"""HTTPS listeners (SNI, versions, resumption, reload), viewer protocol policies, HSTS, and
HTTPS to backends — with certificates made by trustme and real TLS clients (Python ssl, curl)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml
from aiohttp import web

from lbcdn.config.load import load_config
from lbcdn.daemon import Daemon
from tests.e2e.harness import HOST, DaemonProcess, demo_backend, free_port, listener_port, \
    proxy_config, running_daemon, wait_for_port


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def write_cert(ca: trustme.CA, tmp: Path, *names: str) -> dict[str, str]:
    cert = ca.issue_cert(*names)
    stem = names[0].replace("*", "star")
    crt, key = tmp / f"{stem}.crt", tmp / f"{stem}.key"
    cert.cert_chain_pems[0].write_to_path(str(crt))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(crt), append=True)
    cert.private_key_pem.write_to_path(str(key))
    return {"cert_file": str(crt), "key_file": str(key)}


def tls_config(backend: int, tmp: Path, ca: trustme.CA, **route: Any) -> dict[str, Any]:
    config = proxy_config(backend)
    config["listeners"] = [
        {"name": "plain", "address": HOST, "port": free_port()},
        {"name": "tls", "address": HOST, "port": free_port(), "tls": {"certificates": [
            write_cert(ca, tmp, "default.test"),
            write_cert(ca, tmp, "a.test"),
            write_cert(ca, tmp, "*.wild.test"),
        ]}},
    ]
    config["routes"] = [{"name": "app", "forward": "app", **route}]
    return config


def client_ctx(ca: trustme.CA, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.check_hostname = False
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def handshake(port: int, ca: trustme.CA, server_name: str | None, *,
              ctx: ssl.SSLContext | None = None,
              session: ssl.SSLSession | None = None) -> tuple[str, str, ssl.SSLSession | None, bool]:
    """(certificate subject CN/SAN, TLS version, session, reused) of one handshake."""
    ctx = ctx or client_ctx(ca)
    with socket.create_connection((HOST, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name, session=session) as tls:
            cert = tls.getpeercert()
            san = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
            tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while tls.recv(65536):
                pass
            return san[0], str(tls.version()), tls.session, tls.session_reused


async def in_thread(fn: Any, *args: Any, **kw: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kw))


async def test_certificates_by_sni_with_a_default(tmp_path: Path, ca: trustme.CA) -> None:
    async with demo_backend() as b:
        config = tls_config(b, tmp_path, ca)
        async with running_daemon(config):
            port = listener_port(config, 1)
            assert (await in_thread(handshake, port, ca, "a.test"))[0] == "a.test"
            assert (await in_thread(handshake, port, ca, "x.wild.test"))[0] == "*.wild.test"
            assert (await in_thread(handshake, port, ca, "deeper.x.wild.test"))[0] == \
                "default.test"  # a wildcard covers one label only
            assert (await in_thread(handshake, port, ca, "other.test"))[0] == "default.test"
            assert (await in_thread(handshake, port, ca, None))[0] == "default.test"


async def test_only_tls12_and_13_and_sessions_resume(tmp_path: Path, ca: trustme.CA) -> None:
    async with demo_backend() as b:
        config = tls_config(b, tmp_path, ca)
        async with running_daemon(config):
            port = listener_port(config, 1)
            _, version, _, _ = await in_thread(handshake, port, ca, "a.test")
            assert version == "TLSv1.3"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                old = client_ctx(ca)
                old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.0/1.1
                old.minimum_version = ssl.TLSVersion.TLSv1
                old.maximum_version = ssl.TLSVersion.TLSv1_1
            with pytest.raises(ssl.SSLError, match="TLSV1_ALERT_PROTOCOL_VERSION"):
                await in_thread(handshake, port, ca, "a.test", ctx=old)
            tls12 = client_ctx(ca, ssl.TLSVersion.TLSv1_2)
            _, version, session, reused = await in_thread(handshake, port, ca, "a.test",
                                                          ctx=tls12)
            assert version == "TLSv1.2" and not reused
            _, _, _, reused = await in_thread(handshake, port, ca, "a.test", ctx=tls12,
                                              session=session)
            assert reused


def old_client(ca: trustme.CA) -> ssl.SSLContext:
    """A client that offers only TLS 1.0 and 1.1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = client_ctx(ca)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    return ctx


def s_client(port: int, *args: str) -> str:
    out = subprocess.run(["openssl", "s_client", "-connect", f"{HOST}:{port}",
                          "-servername", "a.test", *args], input="", capture_output=True,
                         text=True, timeout=20)
    assert out.returncode != 0, out.stdout
    return out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("workers", [None, "2"])
async def test_refused_versions_and_ciphers_get_their_alert(tmp_path: Path, ca: trustme.CA,
                                                            workers: str | None) -> None:
    """Not an EOF: the client learns why (protocol_version 70, handshake_failure 40)."""
    async with demo_backend() as b:
        config = tls_config(b, tmp_path, ca)
        strict = {"name": "tls13", "address": HOST, "port": free_port(),
                  "tls": {**config["listeners"][1]["tls"], "min_version": "1.3"}}
        config["listeners"].append(strict)
        async with contextlib.AsyncExitStack() as stack:
            if workers is None:
                await stack.enter_async_context(running_daemon(config))
            else:
                daemon = await in_thread(DaemonProcess, config, tmp_path, ["--workers", workers])
                stack.push_async_callback(in_thread, daemon.stop)
            port, port13 = listener_port(config, 1), listener_port(config, 2)
            for _ in range(4):  # new connections: with workers, the kernel spreads them
                with pytest.raises(ssl.SSLError, match="TLSV1_ALERT_PROTOCOL_VERSION"):
                    await in_thread(handshake, port, ca, "a.test", ctx=old_client(ca))
                tls12 = client_ctx(ca, ssl.TLSVersion.TLSv1_2)
                tls12.set_ciphers("AES128-SHA256:AES256-GCM-SHA384")  # no ECDHE: refused
                with pytest.raises(ssl.SSLError, match="SSLV3_ALERT_HANDSHAKE_FAILURE"):
                    await in_thread(handshake, port, ca, "a.test", ctx=tls12)
                with pytest.raises(ssl.SSLError, match="TLSV1_ALERT_PROTOCOL_VERSION"):
                    await in_thread(handshake, port13, ca, "a.test",
                                    ctx=client_ctx(ca, ssl.TLSVersion.TLSv1_2))
            assert "alert protocol version" in await in_thread(s_client, port, "-tls1_1")
            assert "alert handshake failure" in await in_thread(
                s_client, port, "-tls1_2", "-cipher", "AES128-SHA")
            assert "alert protocol version" in await in_thread(s_client, port13, "-tls1_2")
            # what is accepted still works, on every listener
            assert (await in_thread(handshake, port, ca, "a.test"))[1] == "TLSv1.3"
            _, version, _, _ = await in_thread(handshake, port, ca, "a.test",
                                               ctx=client_ctx(ca, ssl.TLSVersion.TLSv1_2))
            assert version == "TLSv1.2"
            assert (await in_thread(handshake, port13, ca, "a.test"))[1] == "TLSv1.3"


def trickled_handshake(port: int, ca: trustme.CA, pieces: int) -> bytes:
    """A TLS 1.3 GET whose ClientHello goes out in `pieces` writes, 50 ms apart (through a
    MemoryBIO client, so the bytes on the wire are under the test's control)."""
    ctx = client_ctx(ca)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="a.test")
    with socket.create_connection((HOST, port), timeout=5) as raw:
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()
        step = -(-len(hello) // pieces)
        for at in range(0, len(hello), step):
            raw.sendall(hello[at:at + step])
            time.sleep(0.05)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(65536))
        tls.write(b"GET /trickled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw.sendall(outgoing.read())
        data = b""
        while True:  # until the server's close_notify or its close
            try:
                part = tls.read(65536)
                if not part:
                    return data
                data += part
            except ssl.SSLWantReadError:
                chunk = raw.recv(65536)
                if not chunk:
                    return data
                incoming.write(chunk)
            except ssl.SSLZeroReturnError:
                return data


async def test_a_trickled_client_hello_is_read_whole_then_handed_to_tls(
        tmp_path: Path, ca: trustme.CA) -> None:
    async with demo_backend() as b:
        config = tls_config(b, tmp_path, ca)
        config["listeners"][1]["header_timeout_s"] = 2
        async with running_daemon(config):
            port = listener_port(config, 1)
            response = await in_thread(trickled_handshake, port, ca, 5)
            assert response.startswith(b"HTTP/1.1 200 ") and b"/trickled" in response
            # no ClientHello at all: closed at the header timeout
            reader, writer = await asyncio.open_connection(HOST, port)
            started = time.monotonic()
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 6) == b""
            assert 1.5 < time.monotonic() - started < 5
            writer.close()


async def test_curl_over_https_and_forwarded_proto(tmp_path: Path, ca: trustme.CA) -> None:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    async with demo_backend() as b:
        config = tls_config(b, tmp_path, ca)
        async with running_daemon(config):
            port = listener_port(config, 1)
            out = await in_thread(subprocess.run, [
                "curl", "-sS", "--cacert", str(tmp_path / "ca.pem"),
                "--resolve", f"a.test:{port}:{HOST}", f"https://a.test:{port}/hello"],
                capture_output=True, text=True, timeout=20)
            assert out.returncode == 0, out.stderr
            assert '["X-Forwarded-Proto", "https"]' in out.stdout
            assert f'["X-Forwarded-Port", "{port}"]' in out.stdout


async def test_viewer_protocol_policies_and_hsts(tmp_path: Path, ca: trustme.CA) -> None:
    async with demo_backend() as b:
        for policy, status in (("redirect-to-https", 301), ("https-only", 403)):
            config = tls_config(b, tmp_path, ca, viewer_protocol=policy, hsts_max_age_s=600)
            async with running_daemon(config), aiohttp.ClientSession() as session:
                url = f"http://{HOST}:{listener_port(config)}/p/a?q=1"
                async with session.get(url, allow_redirects=False,
                                       headers={"Host": "www.test:8080"}) as resp:
                    assert resp.status == status
                    assert "Strict-Transport-Security" not in resp.headers
                    if status == 301:
                        assert resp.headers["Location"] == "https://www.test/p/a?q=1"
                ctx = ssl.create_default_context()
                ca.configure_trust(ctx)
                ctx.check_hostname = False
                async with session.get(f"https://{HOST}:{listener_port(config, 1)}/x",
                                       ssl=ctx) as resp:
                    assert resp.status == 200
                    assert resp.headers["Strict-Transport-Security"] == "max-age=600"
        config = tls_config(b, tmp_path, ca, viewer_protocol="redirect-to-https",
                            https_redirect_status=308)
        async with running_daemon(config), aiohttp.ClientSession() as session:
            async with session.post(f"http://{HOST}:{listener_port(config)}/x", data=b"1",
                                    allow_redirects=False) as resp:
                assert resp.status == 308


@pytest.fixture
async def https_backend(ca: trustme.CA) -> Any:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"sni-ok {request.host}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("backend.test").configure_cert(ctx)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, ssl_context=ctx)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def test_https_to_backends(tmp_path: Path, ca: trustme.CA, https_backend: int) -> None:
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cases = [({"ca_file": str(tmp_path / "ca.pem"), "server_name": "backend.test"}, 200),
             ({"server_name": "backend.test"}, 502),      # system CAs do not know trustme's
             ({"ca_file": str(tmp_path / "ca.pem"), "server_name": "other.test"}, 502),
             ({"verify": False}, 200)]
    for tls, status in cases:
        config = proxy_config(https_backend, pools={"app": {
            "targets": [f"{HOST}:{https_backend}"], "tls": tls}})
        async with running_daemon(config), aiohttp.ClientSession() as session:
            async with session.get(f"http://{HOST}:{listener_port(config)}/x") as resp:
                assert resp.status == status, (tls, await resp.text())
                if status == 200:
                    assert (await resp.text()).startswith("sni-ok")


async def test_reload_swaps_certificates_without_closing(tmp_path: Path, ca: trustme.CA) -> None:
    async with demo_backend() as b:
        config = tls_config(b, tmp_path, ca)
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(config))
        daemon = Daemon(load_config(path), path)
        await daemon.start()
        try:
            port = listener_port(config, 1)
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            ctx.check_hostname = False
            reader, writer = await asyncio.open_connection(HOST, port, ssl=ctx,
                                                           server_hostname="a.test")
            first = writer.get_extra_info("peercert")
            # a new certificate for a.test appears in the same files
            new = write_cert(ca, tmp_path / "..", "a.test")
            Path(config["listeners"][1]["tls"]["certificates"][1]["cert_file"]).write_bytes(
                Path(new["cert_file"]).read_bytes())
            Path(config["listeners"][1]["tls"]["certificates"][1]["key_file"]).write_bytes(
                Path(new["key_file"]).read_bytes())
            await daemon.reload()
            second = await in_thread(lambda: _peer_serial(port, ca))
            assert second != first["serialNumber"]
            # the connection opened before the reload still works
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
                b"HTTP/1.1 200")
            writer.close()
        finally:
            await daemon.stop()


def _peer_serial(port: int, ca: trustme.CA) -> str:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.check_hostname = False
    with socket.create_connection((HOST, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="a.test") as tls:
            return str(tls.getpeercert()["serialNumber"])


@pytest.mark.slow
@pytest.mark.parametrize("workers", [None, "2"])
async def test_handed_to_tls_alpn_h2_and_refused_by_openssl(tmp_path: Path, ca: trustme.CA,
                                                           workers: str | None) -> None:
    """The gate hands the connection to the loop's TLS protocol (asyncio's in process,
    uvloop's in the daemon): ALPN h2 and http/1.1 are served; a handshake OpenSSL refuses
    (a ClientHello the gate passes on) is closed, not left open."""
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    async with demo_backend() as b:
        config = tls_config(b, tmp_path, ca)
        async with contextlib.AsyncExitStack() as stack:
            if workers is None:
                await stack.enter_async_context(running_daemon(config))
            else:
                daemon = await in_thread(DaemonProcess, config, tmp_path, ["--workers", workers])
                stack.push_async_callback(in_thread, daemon.stop)
            port = listener_port(config, 1)
            await in_thread(wait_for_port, port)   # DaemonProcess waited for the first listener
            for flag, version in (("--http2", "2"), ("--http1.1", "1.1")) * 2:
                out = await in_thread(subprocess.run, [
                    "curl", "-sS", flag, "--cacert", str(tmp_path / "ca.pem"), "-o", "/dev/null",
                    "-w", "%{http_code} %{http_version}", "--resolve", f"a.test:{port}:{HOST}",
                    f"https://a.test:{port}/hello"], capture_output=True, text=True, timeout=20)
                assert (out.returncode, out.stdout) == (0, f"200 {version}"), out.stderr
            # a well-formed record holding a ClientHello that is not one (too short to parse):
            # the gate leaves it to OpenSSL, which refuses it
            hello = bytes([1, 0, 0, 4]) + b"\x03\x03\x00\x00"
            bogus = bytes([22, 3, 1, 0, len(hello)]) + hello
            for _ in range(4):
                reader, writer = await asyncio.open_connection(HOST, port)
                writer.write(bogus)
                with contextlib.suppress(ConnectionResetError):
                    await asyncio.wait_for(reader.read(), 5)   # closed, with or without an alert
                writer.close()
            assert (await in_thread(handshake, port, ca, "a.test"))[0] == "a.test"
