"""The Dockerfile and the image's built-in config (deploy/docker/config.yaml). test_image.py
builds the image and runs it; here, without building, its text is checked (the base as an ARG,
non-root numeric user, tini as PID 1, SIGTERM, the config path, ports, the HEALTHCHECK, the
Makefile's install steps), and what the image would run is run from this tree: `tini -- lbcdn
serve` as PID 1 of a new PID namespace (as in a container), configured only by environment
variables, proxying to a demo backend, stopped by a SIGTERM sent from outside the namespace
(as `docker stop` does).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from lbcdn.config.load import load_config
from lbcdn.configkit.errors import ConfigError
from tests.deploy.helpers import DEPLOY, REPO, get, pid_1_of, stop
from tests.e2e.harness import HOST, backend_process, free_port, wait_for_port

DOCKERFILE = REPO / "Dockerfile"
ENV_CONFIG = DEPLOY / "docker" / "config.yaml"
IMAGE_CONFIG = "/etc/lbcdn/config.yaml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word, rest))
            pending = ""
    return out


def args_of(word: str) -> list[str]:
    return [rest for w, rest in instructions() if w == word]


def exec_form(word: str) -> list[str]:
    [text] = args_of(word)
    value = json.loads(text)
    assert isinstance(value, list)
    return [str(v) for v in value]


# -- the Dockerfile ----------------------------------------------------------------------


def test_runs_as_a_fixed_non_root_uid() -> None:
    [user] = args_of("USER")
    uid, gid = user.split(":")
    assert uid.isdigit() and gid.isdigit()  # numeric: runAsNonRoot can verify it
    assert int(uid) != 0 and int(gid) != 0
    runs = " ".join(args_of("RUN"))
    assert f"--uid {uid}" in runs and f"--gid {gid}" in runs


def test_tini_is_pid_1_and_sigterm_stops() -> None:
    assert "apt-get install -y --no-install-recommends tini" in " ".join(args_of("RUN"))
    assert exec_form("ENTRYPOINT") == ["tini", "--", "lbcdn"]
    assert args_of("STOPSIGNAL") == ["SIGTERM"]
    assert exec_form("CMD") == ["serve", "--config", IMAGE_CONFIG]


def test_ships_the_environment_config_where_serve_reads_it() -> None:
    # COPY --from=<stage> copies between stages, not from the build context
    copies = [c.split() for c in args_of("COPY") if not c.startswith("--from=")]
    assert ["deploy/docker/config.yaml", IMAGE_CONFIG] in copies
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for *sources, _ in copies:
        for source in sources:
            assert (REPO / source).exists(), source
            # A source left out of the build context fails `docker build` only.
            parts = Path(source).parts
            assert not [p for p in ignored if p in parts or p == source], (source, ignored)


def test_base_is_an_arg_defaulting_to_the_public_python_image() -> None:
    assert args_of("ARG") == ["BASE_IMAGE=python:3.11-slim"]
    assert args_of("FROM") == ["${BASE_IMAGE} AS native", "${BASE_IMAGE}"]
    assert "--build-arg BASE_IMAGE=$(IMAGE_BASE)" in (REPO / "Makefile").read_text()


def stage_runs(index: int) -> str:
    """The RUN arguments of build stage `index` (0: native, 1: the image), joined."""
    stages: list[list[str]] = []
    for word, rest in instructions():
        if word == "FROM":
            stages.append([])
        elif word == "RUN" and stages:
            stages[-1].append(rest)
    return " ".join(stages[index])


def test_install_steps_are_the_makefiles() -> None:
    """Same interpreter line, a venv, this pyproject.toml's runtime dependencies in it and its
    `native` extra beside it, the package without the test extras, and the hot path compiled
    as `make native` does, in a build stage whose venv the image copies."""
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^PYTHON \?= python3$", makefile, re.M)
    assert "$(PYTHON) -m venv $(VENV)" in makefile
    assert "$(BIN)/python -m lbcdn.native build" in makefile
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["native"]
    build = stage_runs(0)
    assert 'p["dependencies"]' in build and 'p["optional-dependencies"]["native"]' in build
    assert build.count("python3 -m venv /opt/lbcdn/venv") == 1
    assert "/opt/lbcdn/venv/bin/pip install -r runtime.txt" in build
    assert "pip install --target /opt/lbcdn/native -r native.txt" in build
    assert "/opt/lbcdn/venv/bin/pip install --no-deps ." in build
    assert "/opt/lbcdn/venv/bin/python -m lbcdn.native build" in build
    # the image installs nothing with pip: it copies the venv built and compiled above
    assert "pip" not in stage_runs(1)
    [copied] = [c for c in args_of("COPY") if c.startswith("--from=")]
    assert copied == "--from=native /opt/lbcdn/venv /opt/lbcdn/venv"


def test_exposed_ports_and_healthcheck_match_the_built_in_config() -> None:
    cfg = load_config(ENV_CONFIG, env={"LBCDN_UPSTREAM": "app:8000"})
    [exposed] = args_of("EXPOSE")
    assert set(exposed.split()) == {f"{cfg.listeners[0].port}/tcp", f"{cfg.admin.port}/tcp",
                                    "5353/udp", "5353/tcp"}
    # The health check reads the admin listener from the config that CMD serves.
    [health] = args_of("HEALTHCHECK")
    options, _, command = health.partition(" CMD ")
    assert json.loads(command) == ["lbcdn", "healthcheck", "--config", IMAGE_CONFIG]
    assert str(cfg.admin.port) not in options + command
    assert exec_form("CMD")[-2:] == ["--config", IMAGE_CONFIG]


# -- the built-in config -----------------------------------------------------------------


def documented_variables() -> dict[str, str]:
    """NAME -> default from the table in the config file's header comment."""
    rows = re.findall(r"^# \| (LBCDN_\w+)\s*\| ([^|]*?)\s*\|", ENV_CONFIG.read_text(), re.M)
    return dict(rows)


def test_every_variable_is_documented_with_its_default() -> None:
    text = "\n".join(line for line in ENV_CONFIG.read_text().splitlines()
                     if not line.startswith("#"))
    used = {name: default if sep else "required"
            for name, sep, default in re.findall(r"\$\{(\w+)(:-)?([^}]*)\}", text)}
    assert used == documented_variables()


def test_defaults_suit_a_container() -> None:
    cfg = load_config(ENV_CONFIG, env={"LBCDN_UPSTREAM": "app.internal:8000"})
    [listener] = cfg.listeners
    assert (listener.address, listener.port) == ("0.0.0.0", 8080)
    # No token can be set here, so the admin API stays inside the container.
    assert (cfg.admin.address, cfg.admin.port, cfg.admin.token) == ("127.0.0.1", 9901, None)
    [target] = cfg.pools["app"].targets
    assert (target.host, target.port) == ("app.internal", 8000)
    assert cfg.shutdown.drain_timeout_s == 30
    assert cfg.logging.access_log.enabled is True and cfg.logging.access_log.path is None


def test_every_setting_follows_its_variable() -> None:
    cfg = load_config(ENV_CONFIG, env={
        "LBCDN_UPSTREAM": "[::1]:9000", "LBCDN_UPSTREAM_HOST_HEADER": "target",
        "LBCDN_HTTP_ADDRESS": "::", "LBCDN_HTTP_PORT": "80",
        "LBCDN_ADMIN_ADDRESS": "0.0.0.0", "LBCDN_ADMIN_PORT": "0",
        "LBCDN_LOG_LEVEL": "debug", "LBCDN_ACCESS_LOG": "false", "LBCDN_DRAIN_TIMEOUT_S": "2.5"})
    [listener] = cfg.listeners
    assert (listener.address, listener.port) == ("::", 80)
    [target] = cfg.pools["app"].targets
    assert (target.host, target.port) == ("::1", 9000)
    assert cfg.pools["app"].host_header == "target"
    assert (cfg.admin.address, cfg.admin.port) == ("0.0.0.0", 0)
    assert cfg.logging.level == "debug"
    assert cfg.logging.access_log.enabled is False
    assert cfg.shutdown.drain_timeout_s == 2.5


def test_upstream_is_required_and_bad_values_name_their_path() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(ENV_CONFIG, env={})
    assert err.value.lines() == [
        "pools.app.targets[0]: environment variable LBCDN_UPSTREAM is not set "
        "(use ${LBCDN_UPSTREAM:-default} to give a default)"]
    with pytest.raises(ConfigError) as err:
        load_config(ENV_CONFIG, env={"LBCDN_UPSTREAM": "app:8000", "LBCDN_HTTP_PORT": "http"})
    assert [p for p, _ in err.value.problems] == ["listeners[0].port"]


# -- the image's process tree, run ---------------------------------------------------------


def in_container(env: dict[str, str], stderr: Any) -> subprocess.Popen[bytes]:
    """`tini -- lbcdn serve --config deploy/docker/config.yaml` as PID 1 of a new PID
    namespace (the network is the host's, so 127.0.0.1 reaches it)."""
    unshare, tini = shutil.which("unshare"), shutil.which("tini")
    assert unshare and tini, "unshare (util-linux) and tini are needed: make test installs them"
    base = {k: v for k, v in os.environ.items() if not k.startswith("LBCDN_")}
    return subprocess.Popen(
        [unshare, "--pid", "--fork", "--kill-child", tini, "--",
         sys.executable, "-m", "lbcdn", "serve", "--config", str(ENV_CONFIG)],
        env={**base, **env}, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)


def test_image_process_serves_from_env_and_drains_on_sigterm_as_pid_1(tmp_path: Path) -> None:
    with backend_process("app") as backend:
        http, admin = free_port(), free_port()
        env = {"LBCDN_UPSTREAM": f"{HOST}:{backend.port}", "LBCDN_HTTP_ADDRESS": HOST,
               "LBCDN_HTTP_PORT": str(http), "LBCDN_ADMIN_PORT": str(admin),
               "LBCDN_ACCESS_LOG": "false", "LBCDN_DRAIN_TIMEOUT_S": "5"}
        log = tmp_path / "stderr"
        with open(log, "wb") as stderr:
            proc = in_container(env, stderr)
        try:
            init = pid_1_of(proc)
            status = Path(f"/proc/{init}/status").read_text()
            assert re.search(r"^Name:\s+tini$", status, re.M), status
            assert re.search(r"^NSpid:\s+\d+\s+1$", status, re.M), status  # PID 1 inside
            wait_for_port(http, proc=proc)
            wait_for_port(admin, proc=proc)
            code, body = get(f"http://{HOST}:{http}/from-env")
            assert code == 200
            assert json.loads(body)["backend"] == "app"
            assert json.loads(body)["path"] == "/from-env"
            assert get(f"http://{HOST}:{admin}/healthz")[0] == 200
            # As `docker stop` does: SIGTERM to PID 1 from outside its namespace. tini passes
            # it on; lbcdn drains and exits 0, and so does tini.
            os.kill(init, signal.SIGTERM)
            assert proc.wait(15) == 0, log.read_text()
        finally:
            stop(proc)
    text = log.read_text()
    assert "draining (up to 5.0 s)" in text and "stopped" in text, text


def test_image_process_exit_code_passes_through_tini(tmp_path: Path) -> None:
    """A config error (LBCDN_UPSTREAM unset) makes the container exit 1, with the reason."""
    log = tmp_path / "stderr"
    with open(log, "wb") as stderr:
        proc = in_container({}, stderr)
    try:
        assert proc.wait(30) == 1
    finally:
        stop(proc)
    assert "LBCDN_UPSTREAM is not set" in log.read_text()
