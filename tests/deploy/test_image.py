"""The container image, built and run. `make image` builds the Dockerfile with buildah on a
Debian bookworm that debootstrap makes (no image registry is reachable here); a build from
unchanged inputs is buildah's layer cache, seconds. `podman run` needs cgroups this machine
does not give, so the image runs the way a runtime would run it, without one: its root
filesystem (a buildah working container) read-only, in new PID and mount namespaces, as the
image's user, in its working directory, with its environment, entrypoint and command, on the
host's network.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lbcdn import __version__
from tests.deploy.conftest import BUILD
from tests.deploy.helpers import REPO, get, pid_1_of, stop
from tests.e2e.harness import HOST, backend_process, free_port, wait_for_port

pytestmark = pytest.mark.slow

BASE = "localhost/lbcdn-base:bookworm"  # the Makefile's LOCAL_BASE
# What `make image` built last, by ID: another checkout may retag lbcdn:VERSION meanwhile.
IMAGE_ID = REPO / "build" / "image" / "image.id"
# Measured at 256.5 MB, of which the Debian base is 175.8 MB and lbcdn's layers (tini, the
# venv, the config) 80.6 MB; about 20% more is allowed for each.
SIZE_BUDGET_MB = 310
OWN_LAYERS_BUDGET_MB = 100
# Dependencies that only building needs: none of them may be installed in the image.
BUILD_PACKAGES = {"gcc", "cpp", "libc6-dev", "python3-dev", "libpython3.11-dev", "binutils",
                  "make"}

# Run in new mount and PID namespaces (sh is PID 1 until it execs): the image's root gets a
# mount of its own that is made read-only, with /proc of the new PID namespace, the host's
# /dev and a tmpfs /tmp, as a runtime gives a container started with --read-only.
SETUP = """set -e
root=$1 user=$2 workdir=$3; shift 3
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount -o remount,bind,ro "$root"
exec chroot --userspec="$user" "$root" /usr/bin/env -i -C "$workdir" "$@"
"""


def buildah(*args: str) -> str:
    result = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (args, result.stderr)
    return result.stdout


def layer_sizes(image: str) -> list[int]:
    """Uncompressed size of each layer, base first, as its manifest records them."""
    manifest = json.loads(json.loads(buildah("inspect", "--type", "image", image))["Manifest"])
    return [int(layer["size"]) for layer in manifest["layers"]]


@dataclass(frozen=True)
class Image:
    id: str
    root: Path
    config: dict[str, Any]  # the Docker image config: User, Env, Entrypoint, Healthcheck, ...

    def run(self, argv: list[str], env: dict[str, str], **popen: Any
            ) -> subprocess.Popen[bytes]:
        """`argv` in the image as a container runtime starts its process: the image's user,
        working directory and environment (plus `env`, as `-e` adds it, and HOME as the
        user's home in the image's /etc/passwd)."""
        user = self.config["User"]
        uid = user.split(":")[0]
        homes = [line.split(":")[5] for line in (self.root / "etc/passwd").read_text().splitlines()
                 if line.split(":")[2] == uid]
        environment = [*self.config["Env"], f"HOME={homes[0] if homes else '/'}",
                       *(f"{k}={v}" for k, v in env.items())]
        return subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
             "sh", "-c", SETUP, "sh", str(self.root), user, self.config["WorkingDir"],
             *environment, *argv],
            start_new_session=True, **popen)

    def output(self, argv: list[str], env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[bytes]:
        proc = self.run(argv, env or {}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            stop(proc)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> Iterator[Image]:
    assert os.geteuid() == 0, "buildah, mount and chroot need root (CI runs as root)"
    build = request.config.stash[BUILD]  # started by conftest.py when the session began
    waited = time.monotonic()
    code, output = build.wait(timeout_s=1500)
    print(f"make image: {time.monotonic() - build.started:.1f} s, "
          f"{time.monotonic() - waited:.1f} s of them waited for here")
    assert code == 0, output
    built = IMAGE_ID.read_text().strip()
    info = json.loads(buildah("inspect", "--type", "image", built))
    assert f"localhost/lbcdn:{__version__}" in buildah("images", "--format", "{{.Name}}:{{.Tag}}",
                                                       built).split()
    container = buildah("from", "--pull=never", built).strip()
    try:
        yield Image(built, Path(buildah("mount", container).strip()), info["Docker"]["config"])
    finally:
        buildah("rm", container)  # unmounts it too


def status(pid: int) -> str:
    return Path(f"/proc/{pid}/status").read_text()


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += tree(int(child))
    return out


def test_image_serves_as_its_non_root_user_and_passes_its_healthcheck(
        image: Image, tmp_path: Path) -> None:
    config = image.config
    assert config["User"] == "10001:10001"
    with backend_process("app") as backend:
        # Not the default ports: the HEALTHCHECK must follow LBCDN_ADMIN_PORT.
        http, admin = free_port(), free_port()
        env = {"LBCDN_UPSTREAM": f"{HOST}:{backend.port}", "LBCDN_HTTP_ADDRESS": HOST,
               "LBCDN_HTTP_PORT": str(http), "LBCDN_ADMIN_PORT": str(admin),
               "LBCDN_DRAIN_TIMEOUT_S": "5"}
        out, err = tmp_path / "stdout", tmp_path / "stderr"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = image.run([*config["Entrypoint"], *config["Cmd"]], env,
                             stdout=stdout, stderr=stderr)
        try:
            init = pid_1_of(proc)
            wait_for_port(http, timeout_s=30, proc=proc)
            wait_for_port(admin, timeout_s=30, proc=proc)
            code, body = get(f"http://{HOST}:{http}/from-image")
            assert (code, json.loads(body)["backend"]) == (200, "app"), body

            processes = tree(init)
            assert len(processes) >= 2  # tini and lbcdn serve (and its workers)
            for pid in processes:
                text = status(pid)
                assert re.search(r"^Uid:\s+10001\s+10001\s+10001\s+10001$", text, re.M), text
                assert re.search(r"^Gid:\s+10001\s+10001\s+10001\s+10001$", text, re.M), text
                assert re.search(r"^Groups:\s*(10001\s*)?$", text, re.M), text
            assert re.search(r"^NSpid:\s+\d+\s+1$", status(init), re.M)  # tini is PID 1

            [kind, *health] = config["Healthcheck"]["Test"]
            assert kind == "CMD"
            check = image.output(health, env)
            assert check.returncode == 0, check
            assert check.stdout.decode() == (
                f'http://127.0.0.1:{admin}/healthz: 200 {{"status": "ok"}}\n')

            os.kill(init, signal.SIGTERM)  # as `docker stop` does
            assert proc.wait(20) == 0, err.read_text()
        finally:
            stop(proc)
    log = err.read_text()
    assert "hot path compiled" in log, log
    assert "draining (up to 5.0 s)" in log and "stopped" in log, log
    [access] = [json.loads(line) for line in out.read_text().splitlines()
                if '"/from-image"' in line]
    assert access["status"] == 200


def test_image_runs_the_compiled_hot_path_without_build_tools(image: Image) -> None:
    version = image.output(["lbcdn", "--version"])
    assert (version.returncode, version.stdout.decode()) == (
        0, f"lbcdn {__version__} (hot path compiled)\n"), version
    installed = set(re.findall(r"^Package: (\S+)\nStatus: install ok installed$",
                               (image.root / "var/lib/dpkg/status").read_text(), re.M))
    assert "tini" in installed
    assert not installed & BUILD_PACKAGES, installed & BUILD_PACKAGES
    [site] = (image.root / "opt/lbcdn/venv/lib").glob("python3*/site-packages")
    assert (site / "lbcdn" / "_native.json").exists()
    assert not [p.name for p in site.iterdir()
                if re.match(r"(mypy|mypyc|pip|setuptools)(-|$)", p.name)]
    for directory in ("usr/bin", "usr/local/bin", "opt/lbcdn/venv/bin"):
        assert not [p.name for p in (image.root / directory).iterdir()
                    if re.fullmatch(r"(.*-)?(gcc|cc|mypyc?)(-[\d.]+)?", p.name)], directory


def test_image_size_within_budget(image: Image) -> None:
    sizes, base = layer_sizes(image.id), layer_sizes(BASE)
    assert sizes[:len(base)] == base
    total, own = sum(sizes) / 1e6, sum(sizes[len(base):]) / 1e6
    print(f"image {total:.1f} MB, lbcdn's layers {own:.1f} MB")
    assert total <= SIZE_BUDGET_MB and own <= OWN_LAYERS_BUDGET_MB, (total, own)
