"""How many data-plane workers `lbcdn serve` starts: as many as the CPUs this process may use.

os.cpu_count() counts the machine's cores, of which a container or `taskset` often gets few: a
pod limited to 1 CPU on a 32-core node would start 32 workers (~70 MB each). So the default is
the CPU affinity mask's size, capped by the cgroup v2 CPU quota (`cpu.max`, rounded up).
LBCDN_WORKERS overrides it, and `--workers` overrides both.

The decision (`choose_workers`) is a pure function of those inputs; the readers around it are
thin and take their paths as arguments. cgroup v1's CFS quota (cpu.cfs_quota_us) is not read:
on a v1 host, set LBCDN_WORKERS.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

ENV = "LBCDN_WORKERS"


def choose_workers(flag: int | None, env: str | None, affinity: int,
                   cpu_max: Sequence[str]) -> tuple[int, str]:
    """The worker count and the reason for it, as the start-up log shows it.

    `flag`: `--workers` (None: not given); `env`: the LBCDN_WORKERS value (None: unset);
    `affinity`: how many CPUs the affinity mask allows; `cpu_max`: the texts of the cgroup v2
    `cpu.max` files over this process ("QUOTA PERIOD", or "max PERIOD" for no quota), its own
    cgroup's and its ancestors': the tightest quota applies. Raises ValueError naming the
    option or variable when a given count is not a positive integer."""
    if flag is not None:
        if flag < 1:
            raise ValueError(f"--workers must be at least 1, got {flag}")
        return flag, "--workers"
    if env is not None:
        if not re.fullmatch(r"[0-9]+", env.strip()) or int(env) < 1:
            raise ValueError(f"{ENV} must be a positive integer, got {env!r}")
        return int(env), f"{ENV}={int(env)}"
    count = max(1, affinity)
    reason = f"cpu affinity {affinity}"
    quota = min((q for q in map(_quota, cpu_max) if q is not None), default=None)
    if quota is None:
        return count, f"{reason}, no cgroup cpu quota"
    capped = max(1, math.ceil(quota))
    return min(count, capped), f"{reason}, cgroup cpu quota {quota:g} -> {capped}"


def _quota(text: str) -> float | None:
    """CPUs' worth of time a `cpu.max` text allows per period; None: no quota (or unreadable,
    which the kernel never writes)."""
    parts = text.split()
    if len(parts) != 2 or not parts[0].isdecimal() or not parts[1].isdecimal():
        return None  # "max 100000" among them
    quota, period = int(parts[0]), int(parts[1])
    return quota / period if quota > 0 and period > 0 else None


def affinity_count() -> int:
    """How many CPUs this process may run on (`taskset`, a container's cpuset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # no affinity masks on this platform (macOS)


def cpu_max_texts(proc_cgroup: str = "/proc/self/cgroup",
                  root: str = "/sys/fs/cgroup") -> list[str]:
    """The `cpu.max` texts that apply to this process: those of its cgroup v2 directory under
    `root` (from `proc_cgroup`'s "0::PATH" line) and of every ancestor up to `root`. When that
    directory is not there (a cgroup namespace shows another root), `root`'s own. Missing or
    unreadable files are left out: no cgroup v2, or no cpu controller, gives []."""
    path = None
    try:
        with open(proc_cgroup, encoding="utf-8") as f:
            for line in f:
                if line.startswith("0::"):
                    path = line[3:].strip()
    except OSError:
        pass
    top = os.path.abspath(root)
    here = os.path.normpath(os.path.join(top, (path or "/").lstrip("/")))
    if os.path.commonpath([top, here]) != top or not os.path.isdir(here):
        here = top
    texts = []
    while True:
        try:
            with open(os.path.join(here, "cpu.max"), encoding="utf-8") as f:
                texts.append(f.read())
        except OSError:
            pass
        if here == top:
            return texts
        here = os.path.dirname(here)


def workers(flag: int | None, env: str | None) -> tuple[int, str]:
    """`choose_workers` with this process's affinity and cgroup quota."""
    return choose_workers(flag, env, affinity_count(), cpu_max_texts())
