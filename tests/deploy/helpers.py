"""Shared by the deployment tests: where the files are, running `lbcdn check-config` the way an
operator does, and reading the commented-out config blocks that wait for a feature."""

from __future__ import annotations

import os
import re
import subprocess
import sys
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
