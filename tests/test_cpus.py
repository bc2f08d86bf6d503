"""The default worker count: the decision alone, the cgroup reader on a synthetic tree, and the
daemon under `taskset`."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from lbcdn.cpus import choose_workers, cpu_max_texts
from tests.e2e.harness import DaemonProcess, admin_port, proxy_config, wait_for_port


@pytest.mark.parametrize("affinity, cpu_max, want", [
    (2, [], (2, "cpu affinity 2, no cgroup cpu quota")),
    (32, ["max 100000\n"], (32, "cpu affinity 32, no cgroup cpu quota")),
    (32, ["100000 100000\n"], (1, "cpu affinity 32, cgroup cpu quota 1 -> 1")),
    (4, ["150000 100000\n"], (2, "cpu affinity 4, cgroup cpu quota 1.5 -> 2")),
    (1, ["400000 100000\n"], (1, "cpu affinity 1, cgroup cpu quota 4 -> 4")),
    (8, ["50000 100000"], (1, "cpu affinity 8, cgroup cpu quota 0.5 -> 1")),
    # the tightest of the process's cgroup and its ancestors
    (8, ["max 100000", "300000 100000", "250000 50000"],
     (3, "cpu affinity 8, cgroup cpu quota 3 -> 3")),
    (8, ["garbage", "", "1 0"], (8, "cpu affinity 8, no cgroup cpu quota")),
    (0, [], (1, "cpu affinity 0, no cgroup cpu quota")),  # never fewer than one
])
def test_default_is_the_affinity_capped_by_the_cgroup_quota(
        affinity: int, cpu_max: list[str], want: tuple[int, str]) -> None:
    assert choose_workers(None, None, affinity, cpu_max) == want


def test_the_environment_overrides_the_cpus_and_the_flag_overrides_both() -> None:
    assert choose_workers(None, "3", 1, ["100000 100000"]) == (3, "LBCDN_WORKERS=3")
    assert choose_workers(None, " 12\n", 1, []) == (12, "LBCDN_WORKERS=12")
    assert choose_workers(5, "3", 1, []) == (5, "--workers")


@pytest.mark.parametrize("value", ["0", "-1", "two", "", "1.5", "2x", "²"])
def test_a_bad_environment_value_is_an_error_naming_the_variable(value: str) -> None:
    with pytest.raises(ValueError) as e:
        choose_workers(None, value, 2, [])
    assert str(e.value) == f"LBCDN_WORKERS must be a positive integer, got {value!r}"


def test_a_flag_below_one_is_an_error() -> None:
    with pytest.raises(ValueError, match="--workers must be at least 1, got 0"):
        choose_workers(0, None, 2, [])


def tree(tmp_path: Path, proc_cgroup: str, files: dict[str, str]) -> tuple[str, str]:
    """A /proc/self/cgroup file and a cgroup v2 mount with `files` (relative path: text)."""
    root = tmp_path / "cgroup"
    root.mkdir()
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "proc_cgroup").write_text(proc_cgroup)
    return str(tmp_path / "proc_cgroup"), str(root)


def test_reads_cpu_max_of_the_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    proc, root = tree(tmp_path, "0::/kubepods/pod1/ctr\n", {
        "kubepods/pod1/ctr/cpu.max": "150000 100000\n",
        "kubepods/pod1/cpu.max": "200000 100000\n",
        "kubepods/cgroup.procs": "",  # an ancestor without cpu.max (no cpu controller)
        "other/cpu.max": "10000 100000\n"})  # not ours
    assert cpu_max_texts(proc, root) == ["150000 100000\n", "200000 100000\n"]


def test_a_namespaced_or_unknown_cgroup_falls_back_to_the_mount_root(tmp_path: Path) -> None:
    files = {"cpu.max": "100000 100000\n"}
    # a cgroup namespace: the path names a cgroup this mount does not show
    proc, root = tree(tmp_path, "0::/system.slice/docker-1.scope\n", files)
    assert cpu_max_texts(proc, root) == ["100000 100000\n"]
    # a path outside the mount, and a v1-only /proc/self/cgroup (no "0::" line)
    for text in ("0::/../../etc\n", "4:cpu,cpuacct:/docker/1\n"):
        Path(proc).write_text(text)
        assert cpu_max_texts(proc, root) == ["100000 100000\n"]


def test_no_cgroup_v2_gives_no_quota(tmp_path: Path) -> None:
    assert cpu_max_texts(str(tmp_path / "missing"), str(tmp_path / "none")) == []
    proc, root = tree(tmp_path, "0::/\n", {"cgroup.procs": ""})
    assert cpu_max_texts(proc, root) == []


def runtime(config: dict[str, object]) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port(config)}/api/runtime",
                                timeout=5) as resp:
        result: dict[str, object] = json.loads(resp.read())
        return result


@pytest.mark.slow
@pytest.mark.parametrize("env, want", [
    ({}, "1 worker (cpu affinity 1, "),
    ({"LBCDN_WORKERS": "2"}, "2 workers (LBCDN_WORKERS=2)"),
])
def test_under_taskset_one_cpu_the_daemon_runs_one_process(
        tmp_path: Path, env: dict[str, str], want: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LBCDN_WORKERS", raising=False)
    config = proxy_config(1, logging={"level": "info"})
    daemon = DaemonProcess(config, tmp_path, prefix=["taskset", "-c", "0"], own_workers=True,
                           env=env)
    try:
        wait_for_port(admin_port(config))
        assert want in daemon.stderr(), daemon.stderr()
        workers = runtime(config).get("workers")
        assert (len(workers) if isinstance(workers, list) else 1) == (2 if env else 1)
    finally:
        assert daemon.stop() == 0, daemon.stderr()
