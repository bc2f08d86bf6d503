"""Shared by the deployment tests: where the files are, running `lbcdn check-config` the way an
operator does, reading the commented-out config blocks that wait for a feature, and watching a
process tree that runs as a container would (tini as PID 1 of its own PID namespace)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def check_config(path: Path, env: Mapping[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
    """`python -m lbcdn check-config PATH` with exactly `env` added to a minimal environment
    (so a variable the CI machine happens to set cannot make a config pass)."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    return subprocess.run([sys.executable, "-m", "lbcdn", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**base, **(env or {}), "PYTHONPATH": str(REPO)})


def commented_block(text: str, key: str) -> Any:
    """The value of a commented-out `# key:` block in YAML `text`: the `# key:` line and the
    following comment lines at the same indentation that are indented further after `#`."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.fullmatch(rf"(\s*)# ({re.escape(key)}:.*)", line)
        if m is None:
            continue
        indent, out = m.group(1), [m.group(2)]
        for nxt in lines[i + 1:]:
            body = re.fullmatch(rf"{indent}# (\s+\S.*)", nxt)
            if body is None:
                break
            out.append(body.group(1))
        return yaml.safe_load("\n".join(out))[key]
    raise AssertionError(f"no commented-out `{key}:` block")


def variables_without_default(text: str) -> set[str]:
    """Names of `${NAME}` references (no `:-default`) in a config text, comments included."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))


def pid_1_of(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> int:
    """The host PID of the process that `unshare --fork` started, once it has become tini
    (right after the fork it is still a copy of unshare)."""
    deadline = time.monotonic() + timeout_s
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    while time.monotonic() < deadline:
        pids = children.read_text().split()
        if pids and Path(f"/proc/{pids[0]}/comm").read_text().strip() == "tini":
            return int(pids[0])
        time.sleep(0.02)
    raise TimeoutError("unshare started no tini")


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # --kill-child takes the namespace down too
        proc.wait(10)
