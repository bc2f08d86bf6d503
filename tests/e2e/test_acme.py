"""ACME certificates against a real CA (Debian's pebble): HTTP-01, DNS-01 (through lbcdn's own
DNS, wildcard included) and TLS-ALPN-01 validated for real, then curl and openssl trusting
pebble's root check the chain and names; renewal, restart reuse, a CA that is down, a failing
challenge, bad input. In one process and with `--workers 2`."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import ssl
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from lbcdn.acme.store import AcmeStore, cert_id
from tests.e2e.harness import HOST, DaemonProcess, free_port, wait_for_port, wait_until
from tests.e2e.pebble import Pebble, acme_config

pytestmark = pytest.mark.slow

WORKERS = [pytest.param([], id="single"), pytest.param(["--workers", "2"], id="workers2")]


class Setup:
    def __init__(self, tmp: Path, **pebble: Any) -> None:
        self.tmp = tmp
        self.http_port, self.tls_port, self.dns_port = free_port(), free_port(), free_port()
        self.state = tmp / "state"
        self.pebble = Pebble(tmp, http_port=self.http_port, tls_port=self.tls_port,
                             dns_port=self.dns_port, **pebble)
        self.daemon: DaemonProcess | None = None

    def config(self, acme: list[dict[str, Any]]) -> dict[str, Any]:
        return acme_config(self.pebble.directory, self.pebble.api_ca, self.state,
                           http_port=self.http_port, tls_port=self.tls_port,
                           dns_port=self.dns_port, acme=acme)

    def start(self, config: dict[str, Any], args: list[str]) -> DaemonProcess:
        run = self.tmp / f"run{time.monotonic_ns()}"
        run.mkdir()
        self.daemon = DaemonProcess(config, run, extra_args=args)
        self.admin = int(config["admin"]["port"])
        # the admin API answers the polls that follow: a slow start refused the first one
        wait_for_port(self.admin, proc=self.daemon.proc)
        return self.daemon

    def api(self, method: str, path: str) -> tuple[int, Any]:
        req = urllib.request.Request(f"http://{HOST}:{self.admin}{path}", method=method,
                                     headers={"Authorization": "Bearer t0k"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def certificates(self) -> list[dict[str, Any]]:
        status, body = self.api("GET", "/api/acme/certificates")
        assert status == 200, body
        return list(body["certificates"])

    def wait_issued(self, count: int = 1, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        def issued() -> bool:
            return sum(1 for c in self.certificates()
                       if c["not_after"] and c["issuer"] and not c["issuing"]) >= count
        try:
            wait_until(issued, timeout_s, 0.3, "ACME certificates issued")
        except AssertionError:
            raise AssertionError(f"{self.certificates()}\nlbcdn:\n"
                                 f"{self.daemon.stderr()[-4000:] if self.daemon else ''}"
                                 f"\npebble:\n{self.pebble.output()[-3000:]}") from None
        return self.certificates()

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        self.pebble.stop()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def curl(setup: Setup, name: str, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(root), "--resolve",
         f"{name}:{setup.tls_port}:{HOST}", f"https://{name}:{setup.tls_port}/"],
        capture_output=True, text=True, timeout=20)


def openssl_verify(setup: Setup, name: str, root: Path) -> str:
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"{HOST}:{setup.tls_port}", "-servername", name,
         "-CAfile", str(root), "-verify_hostname", name, "-verify_return_error", "-showcerts"],
        input="", capture_output=True, text=True, timeout=20)
    assert "Verify return code: 0 (ok)" in out.stdout, out.stdout[-2000:] + out.stderr
    return out.stdout


def assert_served(setup: Setup, names: list[str]) -> None:
    root = setup.pebble.root(setup.tmp)
    for name in names:
        out = curl(setup, name, root)
        assert out.returncode == 0, out.stderr
        assert out.stdout == "hello from lbcdn\n"
        shown = openssl_verify(setup, name, root)
        assert shown.count("BEGIN CERTIFICATE") >= 2  # leaf and pebble's intermediate


def assert_private(state: Path) -> None:
    acme = state / "acme"
    assert stat.S_IMODE(acme.stat().st_mode) == 0o700
    files = [p for p in acme.iterdir() if p.suffix in (".key", ".crt", ".json")]
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not [p for p in acme.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("args", WORKERS)
def test_http01_issues_serves_and_is_reused_after_restart(setup: Setup, args: list[str]) -> None:
    names = ["www.example.test", "api.example.test"]
    config = setup.config([{"names": names, "challenge": "http-01"}])
    setup.start(config, args)
    [cert] = setup.wait_issued()
    assert cert["names"] == names and cert["challenge"] == "http-01"
    assert "Pebble" in cert["issuer"] and cert["last_error"] is None
    assert cert["next_renewal"] > time.time()
    assert_served(setup, names)
    assert_private(setup.state)
    # a restart uses the stored certificate: pebble is not asked again
    assert setup.daemon is not None
    setup.daemon.stop()
    orders = setup.pebble.output().count("Issued certificate serial")
    assert orders == 1
    setup.start(config, args)
    [again] = setup.wait_issued()
    assert again["not_after"] == cert["not_after"]
    assert_served(setup, names[:1])
    assert setup.pebble.output().count("Issued certificate serial") == orders
    # a forced renewal, through the admin API, of a certificate years from its renewal
    serial = served_serial(setup, names[0])
    status, body = setup.api("POST", "/api/acme/certificates/www.example.test/renew")
    assert status == 202 and body == {"renewing": cert["id"]}
    wait_until(lambda: served_serial(setup, names[0]) != serial, 30, 0.3, "forced renewal")
    assert setup.pebble.output().count("Issued certificate serial") == 2
    status, body = setup.api("POST", "/api/acme/certificates/nope.example.test/renew")
    assert status == 404 and "nope.example.test" in body["error"]


@pytest.mark.parametrize("args", WORKERS)
def test_dns01_through_our_own_zone_gets_a_wildcard(setup: Setup, args: list[str]) -> None:
    names = ["example.test", "*.example.test"]
    setup.start(setup.config([{"names": names}]), args)  # default: dns-01, our zone
    [cert] = setup.wait_issued()
    assert cert["challenge"] == "dns-01"
    assert_served(setup, ["example.test", "anything.example.test"])
    # (pebble validates dns-01 only by asking lbcdn's DNS listener for the TXT records:
    # PEBBLE_VA_ALWAYS_VALID=0, `-dnsserver` our port)
    # the challenge records are gone again
    status, body = setup.api("GET", "/api/dns/zones/example.test/records")
    assert status == 200
    assert not [r for r in body["records"] if "_acme-challenge" in r["name"]], body


@pytest.mark.parametrize("args", WORKERS)
def test_tls_alpn01_answered_with_the_challenge_certificate(setup: Setup,
                                                            args: list[str]) -> None:
    setup.start(setup.config([{"names": ["alpn.example.test"],
                               "challenge": "tls-alpn-01"}]), args)
    [cert] = setup.wait_issued()
    assert cert["challenge"] == "tls-alpn-01"
    assert_served(setup, ["alpn.example.test"])


def served_serial(setup: Setup, name: str) -> str:
    out = subprocess.run(
        f"openssl s_client -connect {HOST}:{setup.tls_port} -servername {name} </dev/null "
        "2>/dev/null | openssl x509 -noout -serial", shell=True, capture_output=True,
        text=True, timeout=20)
    assert out.stdout.startswith("serial="), out
    return out.stdout.strip()


@pytest.mark.parametrize("args", WORKERS)
def test_short_lived_certificate_is_renewed_and_swapped_without_dropping(
        tmp_path: Path, args: list[str]) -> None:
    setup = Setup(tmp_path, validity_s=15)   # renewed at two thirds: every ~10 s
    try:
        setup.start(setup.config([{"names": ["www.example.test"], "challenge": "http-01"}]),
                    args)
        [first] = setup.wait_issued()
        root = setup.pebble.root(tmp_path)
        serial = served_serial(setup, "www.example.test")
        assert first["next_renewal"] - first["not_before"] == pytest.approx(
            (first["not_after"] - first["not_before"]) * 2 / 3, abs=1)
        # a keep-alive connection made with the first certificate outlives the swap
        ctx = ssl.create_default_context(cafile=str(root))
        raw = socket.create_connection((HOST, setup.tls_port), timeout=10)
        conn = ctx.wrap_socket(raw, server_hostname="www.example.test")
        request = b"GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n"
        conn.sendall(request)
        assert b"hello from lbcdn" in conn.recv(65536)
        wait_until(lambda: setup.certificates()[0]["not_after"] > first["not_after"], 40, 0.5,
                   "the certificate renewed")
        wait_until(lambda: served_serial(setup, "www.example.test") != serial, 10, 0.3,
                   "the renewed certificate served")
        conn.sendall(request)
        assert b"hello from lbcdn" in conn.recv(65536)
        conn.close()
        assert_served(setup, ["www.example.test"])
        assert len(list((setup.state / "acme").glob("*.crt"))) == 1  # old pairs removed
    finally:
        setup.stop()


def metrics(setup: Setup) -> str:
    with urllib.request.urlopen(f"http://{HOST}:{setup.admin}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def status_page(setup: Setup) -> str:
    with urllib.request.urlopen(f"http://{HOST}:{setup.admin}/", timeout=10) as resp:
        return str(resp.read().decode())


@pytest.mark.parametrize("args", WORKERS)
def test_ca_down_keeps_the_old_certificate_and_shows_the_error(setup: Setup,
                                                               args: list[str]) -> None:
    setup.start(setup.config([{"names": ["www.example.test"], "challenge": "http-01",
                               "retry_initial_s": 30}]), args)
    [cert] = setup.wait_issued()
    root = setup.pebble.root(setup.tmp)
    serial = served_serial(setup, "www.example.test")
    assert 'lbcdn_acme_failing{certificate="www.example.test"} 0.0' in metrics(setup)
    setup.pebble.stop()
    status, _ = setup.api("POST", f"/api/acme/certificates/{cert['id']}/renew")
    assert status == 202
    wait_until(lambda: setup.certificates()[0]["last_error"], 20, 0.3, "the error shown")
    [failed] = setup.certificates()
    assert "cannot reach the CA" in failed["last_error"], failed
    assert failed["failures"] == 1 and failed["not_after"] == cert["not_after"]
    assert failed["next_renewal"] > time.time() + 10   # retried after a pause, not at once
    assert served_serial(setup, "www.example.test") == serial
    out = curl(setup, "www.example.test", root)
    assert out.returncode == 0 and out.stdout == "hello from lbcdn\n", out.stderr
    assert 'lbcdn_acme_failing{certificate="www.example.test"} 1.0' in metrics(setup)
    assert 'lbcdn_acme_issuances_total{certificate="www.example.test",result="error"} 1.0' \
        in metrics(setup)
    page = status_page(setup)
    assert 'class="acme-cert"' in page and "cannot reach the CA" in page
    assert setup.daemon is not None
    assert "issuance failed (the current certificate stays in use)" in setup.daemon.stderr()


@pytest.mark.parametrize("args", WORKERS)
def test_a_failing_challenge_is_reported_and_writes_nothing(setup: Setup,
                                                           args: list[str]) -> None:
    # other.test is not in lbcdn's DNS: pebble cannot resolve it, the challenge fails
    setup.start(setup.config([{"names": ["www.other.test"], "challenge": "http-01"}]), args)
    wait_until(lambda: setup.certificates()[0]["last_error"], 30, 0.3, "the failure")
    [cert] = setup.certificates()
    assert "challenge http-01 for www.other.test failed" in cert["last_error"], cert
    assert cert["issuer"] is None and cert["not_after"] is None
    acme = setup.state / "acme"
    assert not list(acme.glob("*.crt")) and not list(acme.glob("*.json"))
    assert len(list(acme.glob("account-*.key"))) == 1
    # the plain listener is not held up by it (and redirects, as configured)
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                          f"http://{HOST}:{setup.http_port}/"], capture_output=True, text=True,
                         timeout=20)
    assert out.stdout == "301", out


def test_replicas_sharing_a_state_dir_issue_once(setup: Setup) -> None:
    names = ["www.example.test"]
    config = setup.config([{"names": names, "challenge": "http-01"}])
    # another replica holds the issuing lock: this one waits, the CA is not asked
    lock = AcmeStore(str(setup.state)).try_lock(cert_id(setup.pebble.directory, names))
    assert lock is not None
    setup.start(config, [])
    wait_until(lambda: setup.certificates()[0]["issuing"], 10, 0.2, "waiting for the lock")
    time.sleep(2)
    assert setup.pebble.output().count("POST /order-plz") == 0
    assert setup.daemon is not None
    assert "another process holds the issuing lock" in setup.daemon.stderr()
    lock.release()
    [cert] = setup.wait_issued()
    # a second replica (two workers) on other ports, same state directory: it takes the
    # stored certificate, and the CA is not asked again
    other = json.loads(json.dumps(config))
    other["listeners"][0]["port"], other["listeners"][1]["port"] = free_port(), free_port()
    other["dns"]["listeners"][0]["port"] = free_port()
    other["admin"]["port"] = free_port()
    run = setup.tmp / "replica"
    run.mkdir()
    replica = DaemonProcess(other, run, extra_args=["--workers", "2"])
    try:
        first_admin = setup.admin
        setup.admin = other["admin"]["port"]
        [theirs] = setup.wait_issued()
        assert theirs["not_after"] == cert["not_after"]
        root = setup.pebble.root(setup.tmp)
        out = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--cacert", str(root), "--resolve",
             f"www.example.test:{other['listeners'][1]['port']}:{HOST}",
             f"https://www.example.test:{other['listeners'][1]['port']}/"],
            capture_output=True, text=True, timeout=20)
        assert out.returncode == 0 and out.stdout == "hello from lbcdn\n", out.stderr
        setup.admin = first_admin
        assert setup.pebble.output().count("Issued certificate serial") == 1
    finally:
        replica.stop()


def test_external_account_binding(tmp_path: Path) -> None:
    # pebble wants EAB: without it the error says so; with the CA's key id and MAC key the
    # account is made and the certificate issued
    mac = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
    setup = Setup(tmp_path, eab={"kid-1": mac})
    try:
        names = ["www.example.test"]
        setup.start(setup.config([
            {"names": names, "challenge": "http-01"},
            {"names": ["api.example.test"], "challenge": "http-01",
             "eab": {"kid": "kid-1", "hmac_key": mac}}]), [])
        wait_until(lambda: all(c["last_error"] or c["not_after"]
                               for c in setup.certificates()), 30, 0.3, "both settled")
        without, with_eab = setup.certificates()
        assert without["last_error"] == ("newAccount: this CA needs external account binding "
                                         "(set `eab`)"), without
        assert with_eab["last_error"] is None and with_eab["issuer"]
    finally:
        setup.stop()


def test_certificate_files_win_over_acme_and_reloads_keep_acme_certificates(
        setup: Setup) -> None:
    ca = trustme.CA()
    own = ca.issue_cert("www.example.test")
    crt, key = setup.tmp / "own.crt", setup.tmp / "own.key"
    own.cert_chain_pems[0].write_to_path(str(crt))
    own.private_key_pem.write_to_path(str(key))
    config = setup.config([{"names": ["www.example.test", "api.example.test"],
                            "challenge": "http-01"}])
    config["listeners"][1]["tls"]["certificates"] = [{"cert_file": str(crt),
                                                      "key_file": str(key)}]
    setup.start(config, ["--workers", "2"])
    setup.wait_issued()
    ca.cert_pem.write_to_path(str(setup.tmp / "own-ca.pem"))
    openssl_verify(setup, "www.example.test", setup.tmp / "own-ca.pem")   # the file's
    assert_served(setup, ["api.example.test"])                            # ACME's
    status, body = setup.api("POST", "/api/reload")
    assert status == 200, body
    assert_served(setup, ["api.example.test"])
    openssl_verify(setup, "www.example.test", setup.tmp / "own-ca.pem")


@contextlib.contextmanager
def ask_server(approved: set[str]) -> Iterator[tuple[str, list[str]]]:
    """The `ask` URL: 200 for the approved names, 403 for the others."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            name = query.get("domain", [""])[0]
            asked.append(name)
            self.send_response(200 if name in approved else 403)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass
    server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}/ask", asked
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("args", WORKERS)
def test_on_demand_issuance_allow_list_ask_and_rate_limit(setup: Setup, args: list[str]) -> None:
    approved = {"good.shop.example.test", "a.shop.example.test", "b.shop.example.test"}
    with ask_server(approved) as (ask, asked):
        config = setup.config([])
        config["listeners"][1]["tls"] = {"on_demand": {
            "directory": setup.pebble.directory, "ca_bundle": str(setup.pebble.api_ca),
            "allow": ["*.shop.example.test"], "ask": ask, "max_per_minute": 2,
            "challenge": "http-01"}}
        setup.start(config, args)
        root = setup.pebble.root(setup.tmp)
        # the first handshake for an allowed, approved name waits for its certificate
        assert_served(setup, ["good.shop.example.test"])
        [cert] = setup.certificates()
        assert cert["on_demand"] and cert["names"] == ["good.shop.example.test"]
        # refused: not in the allow-list (by the worker: nothing is asked); the ask URL
        # says no
        for name in ("www.example.test", "bad.shop.example.test"):
            out = curl(setup, name, root)
            assert out.returncode != 0, out
        assert_served(setup, ["a.shop.example.test"])
        # a third new certificate within a minute: over max_per_minute
        assert curl(setup, "b.shop.example.test", root).returncode != 0
        assert setup.daemon is not None
        log = setup.daemon.stderr()
        assert "www.example.test" not in log and "www.example.test" not in asked
        assert f"on-demand: {ask} answered 403 for bad.shop.example.test" in log
        assert "more than 2 new certificates a minute" in log
        assert setup.pebble.output().count("Issued certificate serial") == 2
        # after a restart the stored certificate is used: no issuance, no rate limit spent
        setup.daemon.stop()
        setup.start(config, args)
        assert_served(setup, ["good.shop.example.test", "a.shop.example.test"])
        assert setup.pebble.output().count("Issued certificate serial") == 2
