"""The command line: real `python -m lbcdn` runs for the entry point, in-process runs of
`main()` for the rest (fast), with the daemon and demo backend replaced by fakes."""

from __future__ import annotations

import http.server
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from lbcdn import __version__, native
from lbcdn.cli import healthz_address, main
from tests.dns.geodb import city, write_geo_db
from tests.e2e.harness import (HOST, DaemonProcess, admin_port, free_port, proxy_config,
                               wait_for_port)

REPO = Path(__file__).resolve().parents[1]
GOOD = "listeners:\n  - {name: web, port: 8080}\n"
BAD = ("listeners:\n  - {name: web, port: 0}\n"
       "routes:\n  - {name: r, match: {path: x}, fixed_response: {}}\n")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lbcdn", *args], capture_output=True,
                          text=True, timeout=30, cwd=REPO)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    return path


# -- through the real entry point ------------------------------------------------------

def test_version_subprocess() -> None:
    result = run("--version")
    assert (result.returncode, result.stdout) == (
        0, f"lbcdn {__version__} (hot path {native.describe()})\n")


def test_check_config_subprocess(good: Path, bad: Path) -> None:
    ok = run("check-config", str(good))
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, f"{good}: ok\n", "")
    fail = run("check-config", str(bad))
    assert fail.returncode == 1
    assert fail.stdout == ""
    assert fail.stderr.splitlines() == [
        "listeners[0].port: must be >= 1; got 0",
        'routes[0].match.path: must start with "/"',
        f"{bad}: invalid (2 errors)",
    ]


def test_check_config_refuses_an_action_beside_cache(tmp_path: Path) -> None:
    """A cache route stands alone (its distribution names the origin); an action beside it
    would never run, so check-config refuses it and names the YAML path."""
    cache = ("cache:\n  origins: {o: {url: 'http://127.0.0.1:9'}}\n"
             "  distributions: {site: {default_behavior: {path_pattern: '*', origin: o}}}\n")
    alone = tmp_path / "alone.yaml"
    alone.write_text(GOOD + "routes:\n  - {name: r, cache: site}\n" + cache)
    assert run("check-config", str(alone)).returncode == 0
    both = tmp_path / "both.yaml"
    both.write_text(GOOD + "routes:\n  - {name: r, cache: site, fixed_response: {}}\n" + cache)
    fail = run("check-config", str(both))
    assert fail.returncode == 1
    assert fail.stderr.splitlines() == [
        "routes[0].fixed_response: not with cache: the route is answered through distribution "
        "'site', whose behaviors name the origin; remove fixed_response",
        f"{both}: invalid (1 error)"]


def test_full_example_passes_check_config() -> None:
    result = run("check-config", "config/example-full.yaml")
    assert (result.returncode, result.stdout) == (0, "config/example-full.yaml: ok\n"), \
        result.stderr


# -- in process ------------------------------------------------------------------------

def test_check_config_several_files(good: Path, bad: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(good), str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == f"{good}: ok\n"
    assert err.endswith(f"{bad}: invalid (2 errors)\n")


def test_check_config_yaml_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("listeners: [\n")
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:2:1: YAML syntax error: ")
    assert err.endswith(f"{path}: invalid (1 error)\n")


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.yaml"
    assert main(["check-config", str(missing)]) == 1
    assert f"{missing}: cannot read: No such file or directory" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["serve"]) == 2  # --config is required
    assert main(["frobnicate"]) == 2
    assert main(["--log-level", "loud", "check-config", "x"]) == 2
    assert "usage: lbcdn" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("serve", "check-config", "healthcheck", "demo-backend"):
        assert command in out


@pytest.mark.parametrize("address, port, reached", [
    ("127.0.0.1", 9901, ("127.0.0.1", 9901)),
    ("0.0.0.0", 9901, ("127.0.0.1", 9901)),
    ("::", 9902, ("::1", 9902)),
    ("10.1.2.3", 80, ("10.1.2.3", 80)),
    ("127.0.0.1", 0, None),  # admin API off
])
def test_healthz_address(address: str, port: int, reached: tuple[str, int] | None) -> None:
    assert healthz_address(address, port) == reached


def test_healthcheck_asks_the_admin_port_of_the_config(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    daemon = DaemonProcess(proxy_config(free_port()), tmp_path)
    port = admin_port(daemon.config)
    url = f"http://{HOST}:{port}/healthz"
    try:
        wait_for_port(port, proc=daemon.proc)
        assert main(["healthcheck", "--config", str(daemon.path)]) == 0
        assert capsys.readouterr().out == f'{url}: 200 {{"status": "ok"}}\n'
    finally:
        assert daemon.stop() == 0
    assert main(["healthcheck", "-c", str(daemon.path)]) == 1
    assert capsys.readouterr().err == (
        f"lbcdn healthcheck: {url}: [Errno 111] Connection refused\n")


def test_healthcheck_fails_on_a_draining_or_silent_admin_api(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind((HOST, 0))
        silent.listen()
        port = silent.getsockname()[1]
        config.write_text(GOOD + f"admin: {{port: {port}}}\n")
        started = time.monotonic()
        assert main(["healthcheck", "-c", str(config), "--timeout-s", "0.3"]) == 1
        assert time.monotonic() - started < 5
        assert capsys.readouterr().err.endswith("/healthz: timed out\n")

    draining = http.server.HTTPServer((HOST, 0), Draining)
    thread = threading.Thread(target=draining.serve_forever, daemon=True)
    thread.start()
    try:
        config.write_text(GOOD + f"admin: {{port: {draining.server_port}}}\n")
        assert main(["healthcheck", "-c", str(config)]) == 1
        assert capsys.readouterr().out.endswith('/healthz: 503 {"status": "draining"}\n')
    finally:
        draining.shutdown()
        draining.server_close()


class Draining(http.server.BaseHTTPRequestHandler):
    """/healthz of a daemon that got SIGTERM."""

    def do_GET(self) -> None:
        body = b'{"status": "draining"}'
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_healthcheck_without_admin_api_or_with_a_bad_config(
        good: Path, bad: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    off = tmp_path / "off.yaml"
    off.write_text(GOOD + "admin: {port: 0}\n")
    assert main(["healthcheck", "-c", str(off)]) == 0
    assert capsys.readouterr().out == (
        "lbcdn healthcheck: the admin API is off (admin.port: 0): nothing to ask\n")
    assert main(["healthcheck", "-c", str(bad)]) == 1
    assert capsys.readouterr().err.endswith(f"{bad}: invalid (2 errors)\n")
    assert main(["healthcheck"]) == 2  # --config is required


FakeCalls = list[tuple[Any, str | None, str | None]]


@pytest.fixture
def fake_daemon(monkeypatch: pytest.MonkeyPatch) -> FakeCalls:
    calls: list[tuple[Any, str | None, str | None]] = []

    def serve(config: Any, log_level: str | None = None, config_path: str | None = None) -> int:
        calls.append((config, log_level, config_path))
        return 7

    def serve_workers(config_path: str, workers: int, log_level: str | None) -> int:
        calls.append((None, log_level, f"{config_path} x{workers}"))
        return 8

    module = types.ModuleType("lbcdn.daemon")
    module.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lbcdn.daemon", module)
    workers = types.ModuleType("lbcdn.workers")
    workers.serve_workers = serve_workers  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lbcdn.workers", workers)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("LBCDN_WORKERS", raising=False)
    # serve configures root logging; keep that from leaking into other tests
    monkeypatch.setattr(logging.root, "handlers", list(logging.root.handlers))
    monkeypatch.setattr(logging.root, "level", logging.root.level)
    return calls


def test_serve_loads_config_and_hands_over(good: Path,
                                           fake_daemon: FakeCalls) -> None:
    assert main(["serve", "--config", str(good), "--workers", "1"]) == 7
    config, level, path = fake_daemon[0]
    assert config.listeners[0].port == 8080 and level is None
    assert path == str(good)  # so SIGHUP can re-read the same file


def test_serve_with_workers_runs_the_control_process(good: Path,
                                                     fake_daemon: FakeCalls) -> None:
    assert main(["serve", "--config", str(good), "--workers", "3"]) == 8
    assert fake_daemon[0][2] == f"{good} x3"
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ  # removed again afterwards
    assert main(["serve", "--config", str(good), "--workers", "0"]) == 2  # so SIGHUP can re-read the same file


def test_serve_worker_count_from_the_environment_and_logged(
        good: Path, fake_daemon: FakeCalls, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LBCDN_WORKERS", "3")
    assert main(["serve", "--config", str(good)]) == 8
    assert fake_daemon[-1][2] == f"{good} x3"
    assert "INFO lbcdn.cli 3 workers (LBCDN_WORKERS=3)" in capsys.readouterr().err
    assert main(["serve", "--config", str(good), "--workers", "1"]) == 7  # the flag wins
    assert "1 worker (--workers): everything in one process" in capsys.readouterr().err

    monkeypatch.setenv("LBCDN_WORKERS", "many")
    assert main(["serve", "--config", str(good)]) == 2
    assert capsys.readouterr().err == \
        "lbcdn serve: LBCDN_WORKERS must be a positive integer, got 'many'\n"


@pytest.mark.parametrize("argv, level", [
    (["--log-level", "debug", "serve"], "debug"),
    (["serve", "--log-level", "warning"], "warning"),
    (["--log-level", "debug", "serve", "--log-level", "error"], "error"),
])
def test_serve_log_level_global_or_local(good: Path, argv: list[str], level: str,
                                         fake_daemon: FakeCalls) -> None:
    assert main([*argv, "--config", str(good), "--workers", "1"]) == 7
    assert fake_daemon[0][1] == level


def test_serve_invalid_config_does_not_start(bad: Path, capsys: pytest.CaptureFixture[str],
                                             fake_daemon: FakeCalls) -> None:
    assert main(["serve", "-c", str(bad)]) == 1
    assert fake_daemon == []
    assert 'routes[0].match.path: must start with "/"' in capsys.readouterr().err


@pytest.fixture
def fake_demo(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, str]]:
    calls: list[tuple[str, int, str]] = []

    def run_demo_backend(address: str, port: int, name: str) -> int:
        calls.append((address, port, name))
        return 0

    # demo-backend configures root logging; keep that from leaking into other tests.
    monkeypatch.setattr(logging.root, "handlers", list(logging.root.handlers))
    monkeypatch.setattr(logging.root, "level", logging.root.level)
    module = types.ModuleType("lbcdn.demo.backend")
    module.run_demo_backend = run_demo_backend  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lbcdn.demo.backend", module)
    return calls


def test_demo_backend(fake_demo: list[tuple[str, int, str]]) -> None:
    assert main(["demo-backend", "--port", "9100"]) == 0
    assert main(["demo-backend", "--address", "127.0.0.2", "--port", "9101", "--name", "x"]) == 0
    assert fake_demo == [("127.0.0.1", 9100, "demo"), ("127.0.0.2", 9101, "x")]


def test_demo_backend_port_checked(fake_demo: list[tuple[str, int, str]],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo-backend", "--port", "0"]) == 2
    assert main(["demo-backend"]) == 2
    assert fake_demo == []
    assert "--port must be 1-65535, got 0" in capsys.readouterr().err


def test_dns_ds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`lbcdn dns ds ZONE`: the DS and DNSKEY of each key, read from admin.state_dir; clear
    errors for an unsigned zone and for keys not made yet (the daemon makes them)."""
    from lbcdn.dns.keys import load_or_create
    from lbcdn.dns.names import parse_name
    path = tmp_path / "lbcdn.yaml"
    path.write_text(GOOD + f"admin: {{state_dir: {tmp_path / 'state'}}}\n"
                    "dns:\n  zones:\n    - {name: example.com, dnssec: {enabled: true}}\n"
                    "    - {name: plain.example}\n")
    assert main(["dns", "ds", "example.com", "-c", str(path)]) == 1
    assert "no keys for example.com yet" in capsys.readouterr().err
    assert main(["dns", "ds", "plain.example", "-c", str(path)]) == 1
    assert "plain.example is not a signed zone" in capsys.readouterr().err
    key = load_or_create(str(tmp_path / "state"), parse_name("example.com."), 13)[0]
    assert main(["dns", "ds", "example.com.", "-c", str(path)]) == 0
    ds, dnskey = capsys.readouterr().out.splitlines()
    assert ds.startswith(f"example.com. IN DS {key.tag} 13 2 ")
    assert dnskey.startswith("example.com. IN DNSKEY 257 3 13 ")


def test_check_config_opens_the_location_database(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "listeners: [{name: web, port: 8080}]\n"
        "pools: {app: {targets: ['127.0.0.1:9000']}}\n"
        "default_route: {forward: app}\n"
        "dns: {location_database: geo.mmdb, zones: [{name: example.com}]}\n")
    assert main(["check-config", str(path)]) == 1
    assert "dns.location_database: cannot read" in capsys.readouterr().err
    write_geo_db(tmp_path / "geo.mmdb", {"192.0.2.0/24": city("EU", "DE")})
    assert main(["check-config", str(path)]) == 0
