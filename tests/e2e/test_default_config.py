"""`config/default.yaml` (what `make run` starts) really works: the daemon runs it, with its
ports moved to free ones, and the README's curl commands get what the README says. It runs
while the file's own ports are taken (as they are while `make run` serves), in one process and
with two workers (`make run` starts one per CPU).

The port rewrite keeps the file's own wiring: every port number is replaced by the same new
port wherever it appears (a demo backend's `port` and the pool target `127.0.0.1:9001` that
points at it move together).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import DaemonProcess, free_port

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "config" / "default.yaml"
_HOST_PORT = re.compile(r"^(\[[^\]]+\]|[^:\[\]]+):(\d+)$")
# What a make-run daemon holds, read from the file's text rather than through rewrite_ports (so
# a port the rewrite misses is still taken): `port: N`, `*_port: N`, `host:N`.
_PORT_IN_TEXT = re.compile(r"(?:port:\s*|[\d\]]:)(\d{2,5})\b")
TOKEN = "demo-token"  # the file's default for ${LBCDN_ADMIN_TOKEN}


def rewrite_ports(config: Any, ports: dict[int, int]) -> Any:
    """A copy of `config` with each port number mapped to a free port (the same old port
    always to the same new one): `port:` values and `host:port` target strings."""
    def new(old: int) -> int:
        if old not in ports:
            ports[old] = free_port()
        return ports[old]

    if isinstance(config, dict):
        out: dict[str, Any] = {}
        for key, value in config.items():
            is_port = key == "port" or key.endswith("_port")  # buckets.website_port
            if is_port and isinstance(value, int) and value != 0:
                out[key] = new(value)
            elif is_port and isinstance(value, str) and value.isdigit():
                out[key] = new(int(value))
            elif key == "address" and isinstance(value, str) and _HOST_PORT.match(value):
                m = _HOST_PORT.match(value)
                assert m is not None
                out[key] = f"{m.group(1)}:{new(int(m.group(2)))}"
            else:
                out[key] = rewrite_ports(value, ports)
        return out
    if isinstance(config, list):
        return [rewrite_ports(item, ports) for item in config]
    if isinstance(config, str):
        m = _HOST_PORT.match(config)
        if m is not None:
            return f"{m.group(1)}:{new(int(m.group(2)))}"
    return config


def test_rewrite_ports_keeps_targets_in_step() -> None:
    ports: dict[int, int] = {}
    out = rewrite_ports({"demo_backends": [{"name": "a", "port": 9001}],
                         "pools": {"p": {"targets": ["127.0.0.1:9001",
                                                     {"host": "127.0.0.1", "port": 9002},
                                                     {"address": "[::1]:9001"}]}},
                         "admin": {"port": 9901},
                         "buckets": {"port": 9000, "website_port": 9081}}, ports)
    assert set(ports) == {9001, 9002, 9901, 9000, 9081}
    assert out["demo_backends"][0]["port"] == ports[9001]
    assert out["pools"]["p"]["targets"] == [f"127.0.0.1:{ports[9001]}",
                                            {"host": "127.0.0.1", "port": ports[9002]},
                                            {"address": f"[::1]:{ports[9001]}"}]
    assert out["admin"]["port"] == ports[9901]
    assert out["buckets"] == {"port": ports[9000], "website_port": ports[9081]}


@contextlib.contextmanager
def held(ports: set[int]) -> Iterator[None]:
    """TCP and UDP sockets on 127.0.0.1 for each of `ports` that is free: what a running
    `make run` holds (ports already taken, by it or anyone, stay taken meanwhile)."""
    with contextlib.ExitStack() as stack:
        for port in ports:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                s = stack.enter_context(socket.socket(socket.AF_INET, kind))
                with contextlib.suppress(OSError):
                    s.bind(("127.0.0.1", port))
                    if kind == socket.SOCK_STREAM:
                        s.listen()
        yield


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "workers-2"])
def default_daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[tuple[DaemonProcess, dict[int, int]]]:
    assert DEFAULT.exists(), f"{DEFAULT} is missing (make run starts it)"
    text = DEFAULT.read_text()
    taken = {int(p) for p in _PORT_IN_TEXT.findall(text)}
    assert {8080, 9901, 9081, 5300} <= taken, taken
    ports: dict[int, int] = {}
    config = rewrite_ports(yaml.safe_load(text), ports)
    assert {8080, 9901} <= set(ports), f"default.yaml no longer uses 8080/9901: {ports}"
    tmp = tmp_path_factory.mktemp("default-config")
    # as `make run` does, in a directory of the test's own: the demo site in the bucket `site`
    config["buckets"]["root"] = str(tmp / "buckets")
    # (copied as `cp` does: modified now, not when checked out)
    shutil.copytree(REPO / "config" / "demo-site", tmp / "buckets" / "site",
                    copy_function=shutil.copy)
    with held(taken):
        daemon = DaemonProcess(config, tmp, extra_args=["--workers", str(request.param)])
        try:
            yield daemon, ports
        finally:
            code = daemon.stop()
            assert code == 0, daemon.stderr()


def curl(*args: str) -> str:
    result = subprocess.run(["curl", "-s", "--max-time", "10", *args], capture_output=True,
                            text=True, timeout=20)
    assert result.returncode == 0, (args, result.returncode, result.stderr)
    return result.stdout


def base(ports: dict[int, int]) -> str:
    return f"http://127.0.0.1:{ports[8080]}"


def test_fixed_response_hello(default_daemon: tuple[DaemonProcess, dict[int, int]]) -> None:
    _, ports = default_daemon
    out = curl("-w", "\n%{http_code} %{content_type}", f"{base(ports)}/hello")
    assert out == "hello from lbcdn\n\n200 text/plain"


def test_redirect(default_daemon: tuple[DaemonProcess, dict[int, int]]) -> None:
    _, ports = default_daemon
    out = curl("-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
               f"{base(ports)}/old/guide.html?x=1")
    assert out == f"301 {base(ports)}/docs/old/guide.html?x=1"


def test_proxied_round_robin_over_both_demo_backends(
        default_daemon: tuple[DaemonProcess, dict[int, int]]) -> None:
    _, ports = default_daemon
    # Both backends answer, though not from the first request on: the demo pool is health
    # checked, and once one target has passed its checks the other, still `initial`, gets no
    # traffic until it passes too (as on ALB); its checks run every 5 s.
    seen: set[str] = set()
    deadline = time.monotonic() + 20
    while seen != {"app-1", "app-2"} and time.monotonic() < deadline:
        answer = json.loads(curl(f"{base(ports)}/anything?q=1"))
        assert answer["path"] == "/anything"
        assert answer["query"] == "q=1"
        seen.add(answer["backend"])
        time.sleep(0.05)
    assert seen == {"app-1", "app-2"}


def test_status_and_headers_come_through(
        default_daemon: tuple[DaemonProcess, dict[int, int]]) -> None:
    _, ports = default_daemon
    assert curl("-o", "/dev/null", "-w", "%{http_code}", f"{base(ports)}/status/503") == "503"
    head = curl("-D", "-", "-o", "/dev/null", f"{base(ports)}/status/200")
    assert head.startswith("HTTP/1.1 200 ")
    assert re.search(r"(?im)^x-backend: app-[12]$", head), head


def test_download_and_upload_with_curl(default_daemon: tuple[DaemonProcess, dict[int, int]],
                                       tmp_path: Path) -> None:
    _, ports = default_daemon
    out = tmp_path / "bytes.bin"
    code = curl("-o", str(out), "-w", "%{http_code}", f"{base(ports)}/bytes/1048576")
    assert code == "200"
    assert out.read_bytes() == b"0123456789abcdef" * 65536
    answer = json.loads(curl("--data-binary", f"@{out}", f"{base(ports)}/sink"))
    assert answer["body_bytes"] == 1048576


def test_admin_health_and_metrics(default_daemon: tuple[DaemonProcess, dict[int, int]]) -> None:
    _, ports = default_daemon
    admin = f"http://127.0.0.1:{ports[9901]}"
    assert json.loads(curl(f"{admin}/healthz")) == {"status": "ok"}
    curl(f"{base(ports)}/hello")
    metrics = curl("-w", "\n%{http_code}", f"{admin}/metrics")
    assert metrics.endswith("\n200")
    assert "# TYPE" in metrics


def test_access_log_lines(default_daemon: tuple[DaemonProcess, dict[int, int]]) -> None:
    """The default config logs each request as one JSON line (to stdout)."""
    daemon, ports = default_daemon
    curl("-H", "X-Request-Id: default-config-test", f"{base(ports)}/hello")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in daemon.stdout().splitlines() if line.strip()]
        hits = [e for e in lines if e.get("request_id") == "default-config-test"]
        if hits:
            break
        time.sleep(0.05)
    assert len(hits) == 1, daemon.stdout()[-2000:]
    entry = hits[0]
    assert (entry["method"], entry["path"], entry["status"], entry["route"]) == \
        ("GET", "/hello", 200, "hello")


def test_the_site_pool_is_health_checked_with_a_host_the_website_serves() -> None:
    # the website endpoint picks the bucket by Host: a check sent with the target's address
    # gets 404, and the demo's site target would show unhealthy for good
    config = yaml.safe_load(DEFAULT.read_text())
    hosts = config["buckets"]["buckets"]["site"]["website"]["hosts"]
    assert config["pools"]["site"]["health"]["host"] in hosts


def site_twice(ports: dict[int, int], path: str = "/") -> list[str]:
    """The X-Cache of two GETs of the demo site on one connection (so one worker answers
    both: with workers each has its own cache), as the README's example does it."""
    url = f"{base(ports)}{path}"
    head = curl("-o", "/dev/null", "-o", "/dev/null", "-D", "-", "-H", "Host: site.localhost",
                url, url)
    return re.findall(r"(?im)^x-cache: (.*?)\r?$", head)


def invalidate(ports: dict[int, int], *auth: str) -> tuple[int, dict[str, Any]]:
    out = curl("-X", "POST", *auth, "-H", "Content-Type: application/json",
               "-d", '{"paths": ["/*"]}', "-w", "\n%{http_code}",
               f"http://127.0.0.1:{ports[9901]}/api/cache/invalidations")
    body, code = out.rsplit("\n", 1)
    return int(code), json.loads(body)


def test_the_site_is_served_through_the_edge_cache(
        default_daemon: tuple[DaemonProcess, dict[int, int]]) -> None:
    _, ports = default_daemon
    page = curl("-H", "Host: site.localhost", f"{base(ports)}/")
    assert "<h1>Served by lbcdn's bucket origin</h1>" in page
    # the first may be a hit already (an earlier test, or the line above, on this worker)
    assert site_twice(ports)[1] == "Hit from lbcdn"
    # fresh for the policy's 60 s, though the file was copied in a moment ago (the Last-Modified
    # heuristic alone would give it a fraction of a second)
    head = curl("-o", "/dev/null", "-o", "/dev/null", "-D", "-", "-H", "Host: site.localhost",
                f"{base(ports)}/style.css", f"{base(ports)}/style.css")
    ttl = re.findall(r"(?im)^cache-status: lbcdn; hit; ttl=(\d+)\r?$", head)
    assert ttl and int(ttl[0]) >= 50, head
    code, answer = invalidate(ports, "-H", f"Authorization: Bearer {TOKEN}")
    assert code == 201, answer
    assert answer["status"] == "Completed" and answer["paths"] == ["/*"], answer
    assert answer["purged"] >= 1, answer
    # purged on every worker before the admin API answered
    assert site_twice(ports) == ["Miss from lbcdn", "Hit from lbcdn"]


def test_the_admin_token_guards_the_api(
        default_daemon: tuple[DaemonProcess, dict[int, int]]) -> None:
    _, ports = default_daemon
    assert invalidate(ports)[0] == 401
    assert invalidate(ports, "-H", "Authorization: Bearer wrong")[0] == 401
    reload = curl("-X", "POST", "-H", f"Authorization: Bearer {TOKEN}",
                  f"http://127.0.0.1:{ports[9901]}/api/reload")
    assert json.loads(reload) == {"status": "reloaded"}


README = REPO / "README.md"
# What a README example must show again: status lines, redirects, cache outcomes. Dates, ids,
# counts, backends (each worker has its own turn) and health states vary from run to run.
_STABLE_LINE = re.compile(r"^(HTTP/1\.1 \d{3}\b.*|Location: .*|X-Cache: .*)$")


def try_it_commands() -> list[tuple[str, list[str]]]:
    """The `$ command` lines of the README's "Try it" console blocks (with their `\\`
    continuation lines), each with the output the README shows for it."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Try it\n"):]
    section = section[:section.index("\n## ", 1)]
    commands: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", section, re.S):
        lines = block.splitlines()
        while lines:
            line = lines.pop(0)
            assert line.startswith("$ "), line
            command = line[2:]
            while command.endswith("\\"):
                command = command[:-1] + lines.pop(0)
            output = []
            while lines and not lines[0].startswith("$ "):
                output.append(lines.pop(0))
            commands.append((command, output))
    return commands


def test_readme_try_it_commands_work_on_the_demo(
        default_daemon: tuple[DaemonProcess, dict[int, int]], tmp_path: Path) -> None:
    """Every curl command of "Try it", run as written (ports moved), with the token the README
    exports; `dig` is left to tests/dns (it is not installed everywhere)."""
    _, ports = default_daemon
    invalidate(ports, "-H", f"Authorization: Bearer {TOKEN}")  # the examples start uncached

    def moved(text: str) -> str:
        return re.sub(r"127\.0\.0\.1:(\d+)",
                      lambda m: f"127.0.0.1:{ports.get(int(m.group(1)), int(m.group(1)))}",
                      text)

    ran = 0
    for command, output in try_it_commands():
        if command.startswith(("dig ", "export ")):
            continue
        # with workers, /metrics holds what they reported, each once a second
        deadline = time.monotonic() + (5 if "/metrics" in command else 0)
        while True:
            result = subprocess.run(["bash", "-o", "pipefail", "-c", moved(command)],
                                    cwd=tmp_path, capture_output=True, text=True, timeout=60,
                                    env={"PATH": "/usr/bin:/bin", "LBCDN_ADMIN_TOKEN": TOKEN})
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert result.returncode == 0, (command, result.stderr)
        actual = [line.rstrip("\r") for line in result.stdout.splitlines()]
        expected = [moved(line) for line in output if _STABLE_LINE.match(line)]
        assert [line for line in actual if _STABLE_LINE.match(line)] == expected, command
        if not any('"error"' in line for line in output):
            assert not [line for line in actual if '"error"' in line], (command, actual)
        ran += 1
    assert ran >= 20
