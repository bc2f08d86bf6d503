"""deploy/systemd/lbcdn.service: systemd itself accepts it (`systemd-analyze verify`, which
warns about unknown keys and unparsable values, and fails on a missing executable), its
hardening scores as systemd's own "OK" band (`systemd-analyze security --offline`), and the
keys that make lbcdn behave are there: the config checked before start and reload, SIGTERM
with a stop timeout longer than the drain, SIGHUP to reload, restart on failure, a dynamic
non-root user, a high file descriptor limit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lbcdn.config.schema import ShutdownConfig
from tests.deploy.helpers import DEPLOY, REPO

UNIT = DEPLOY / "systemd" / "lbcdn.service"
INSTALLED = "/opt/lbcdn/venv/bin/lbcdn"  # where the unit's install steps put lbcdn
CONFIG = "/etc/lbcdn/config.yaml"


def entries() -> list[tuple[str, str, str]]:
    """(section, key, value) in order; keys may repeat (ExecReload=), so no configparser."""
    out = []
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key, value))
    return out


def values(section: str, key: str) -> list[str]:
    return [v for s, k, v in entries() if s == section and k == key]


def one(section: str, key: str) -> str:
    found = values(section, key)
    assert len(found) == 1, f"[{section}] {key}= given {len(found)} times"
    return found[0]


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", text)
    assert m, f"expected a time span like 45s, got {text!r}"
    return float(m.group(1)) * (60 if m.group(2) == "min" else 1)


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze (Debian package systemd) is needed: make test installs it"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def local_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with lbcdn's path pointing at this checkout's, so `verify` finds it."""
    lbcdn = Path(sys.executable).with_name("lbcdn")
    assert lbcdn.exists(), lbcdn
    path = tmp_path / "lbcdn.service"
    path.write_text((text or UNIT.read_text()).replace(INSTALLED, str(lbcdn)))
    return path


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    result = analyze("verify", local_copy(tmp_path).name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""  # not even a warning


@pytest.mark.parametrize("old,new,message", [
    ("KillSignal=SIGTERM", "KillSignal=SIGTERMINATE", "Failed to parse signal"),
    ("TimeoutStopSec=45s", "TimeoutStopSec=forty-five", "Failed to parse"),
    ("Restart=on-failure", "Restrat=on-failure", "Unknown key"),
], ids=["signal", "timespan", "misspelt-key"])
def test_systemd_analyze_verify_reports_a_broken_unit(tmp_path: Path, old: str, new: str,
                                                      message: str) -> None:
    text = UNIT.read_text()
    assert old in text
    result = analyze("verify", local_copy(tmp_path, text.replace(old, new)).name, cwd=tmp_path)
    assert message in result.stderr


def test_systemd_analyze_verify_fails_on_a_missing_executable(tmp_path: Path) -> None:
    path = tmp_path / "lbcdn.service"
    path.write_text(UNIT.read_text())  # /opt/lbcdn/venv does not exist here
    result = analyze("verify", path.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "is not executable" in result.stderr


def test_hardening_scores_ok(tmp_path: Path) -> None:
    """systemd rates exposure 0 (locked down) to 10 (unsafe); its "OK" band ends at 3.9."""
    path = local_copy(tmp_path)
    result = analyze("security", "--offline=yes", "--threshold=25", path.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:]
    level = re.search(r"Overall exposure level for lbcdn.service: ([\d.]+)", result.stdout)
    assert level and float(level.group(1)) <= 2.5, result.stdout[-500:]


def test_config_is_checked_before_start_and_reload() -> None:
    start = one("Service", "ExecStart")
    assert start == f"{INSTALLED} serve --config {CONFIG}"
    check = f"{INSTALLED} check-config {CONFIG}"
    assert one("Service", "ExecStartPre") == check
    # Reload: validate first (systemctl reload then fails visibly), then SIGHUP.
    assert values("Service", "ExecReload") == [check, "/bin/kill -HUP $MAINPID"]


def test_installed_path_is_the_dockerfiles_venv() -> None:
    """One install layout for the image and the plain process."""
    dockerfile = (REPO / "Dockerfile").read_text()
    venv = INSTALLED.removesuffix("/bin/lbcdn")
    assert f"python3 -m venv {venv}" in dockerfile
    # the image installs the dependencies a layer before the package itself
    assert f"{venv}/bin/pip install --no-deps ." in dockerfile


def test_stop_drains_and_failures_restart() -> None:
    assert one("Service", "KillSignal") == "SIGTERM"
    assert one("Service", "KillMode") == "mixed"  # SIGTERM to lbcdn only; SIGKILL to all late
    drain_s = ShutdownConfig().drain_timeout_s
    assert seconds(one("Service", "TimeoutStopSec")) > drain_s
    assert one("Service", "Restart") == "on-failure"
    assert one("Service", "Type") == "exec"
    assert int(one("Service", "LimitNOFILE")) >= 65536


def test_runs_unprivileged() -> None:
    assert one("Service", "DynamicUser") == "yes"
    assert one("Service", "NoNewPrivileges") == "yes"
    assert one("Service", "ProtectSystem") == "strict"
    assert one("Service", "CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert one("Service", "AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    assert one("Service", "StateDirectory") == "lbcdn"
    assert one("Service", "WorkingDirectory") == "/var/lib/lbcdn"
    assert one("Install", "WantedBy") == "multi-user.target"
