"""`lbcdn serve --workers N` end to end: a control process, N workers on shared ports, reload
pushed to every worker, dead workers restarted, metrics aggregated, clean shutdown."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import (HOST, DaemonProcess, admin_port, free_port, listener_port,
                               proxy_config, wait_for_port, wait_until)

pytestmark = pytest.mark.slow


def fixed(body: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    config = dict(base or proxy_config(1))  # the pool is unused: the default route answers
    config["default_route"] = {"fixed_response": {"body": body}}
    config["logging"] = {"level": "info", "access_log": {"enabled": False}}
    return config


def get(port: int, path: str = "/") -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Connection": "close"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, resp.read().decode()


def runtime(config: dict[str, Any]) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port(config)}/api/runtime",
                                timeout=5) as resp:
        return json.loads(resp.read())


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    return alive


def alive_in_group(pgid: int) -> list[int]:
    """The processes of process group `pgid` that have not exited (from /proc; a zombie that
    waits for its parent to reap it has exited)."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry))
    return alive


def port_free(port: int) -> bool:
    """Whether a new daemon could listen on `port` (as the control process claims it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            s.listen(1)
        except OSError:
            return False
        return True


def test_workers_serve_reload_restart_and_stop(tmp_path: Path) -> None:
    config = fixed("v1")
    daemon = DaemonProcess(config, tmp_path, ["--workers", "2"])
    try:
        port = listener_port(config)
        wait_for_port(admin_port(config))
        wait_until(lambda: all(w["ready"] for w in runtime(config)["workers"]))
        workers = runtime(config)["workers"]
        assert len(workers) == 2
        pids = [w["pid"] for w in workers]
        assert len(set(pids)) == 2 and daemon.pid not in pids
        for _ in range(20):
            assert get(port) == (200, "v1")

        # metrics of every worker, aggregated by the control process (workers flush each 1 s)
        def counted() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port(config)}/metrics") as r:
                text = r.read().decode()
            line = [l for l in text.splitlines() if l.startswith(
                'lbcdn_http_requests_total{listener="web",route="default",status_class="2xx"}')]
            return bool(line) and float(line[0].split()[-1]) == 20.0
        wait_until(counted)

        # a reload reaches every worker
        daemon.path.write_text(yaml.safe_dump(fixed("v2", config)))
        os.kill(daemon.pid, signal.SIGHUP)
        wait_until(lambda: runtime(config)["reloads"] == 1)
        assert {get(port)[1] for _ in range(20)} == {"v2"}

        # an invalid file changes nothing
        daemon.path.write_text("listeners: oops\n")
        os.kill(daemon.pid, signal.SIGHUP)
        wait_until(lambda: "reload failed" in daemon.stderr(), what="the refused reload")
        assert runtime(config)["reloads"] == 1
        assert get(port) == (200, "v2")

        # a worker that dies is replaced, and keeps the new configuration
        os.kill(pids[0], signal.SIGKILL)
        wait_until(lambda: runtime(config)["workers"][0]["restarts"] == 1
                 and runtime(config)["workers"][0]["ready"])
        new_pid = runtime(config)["workers"][0]["pid"]
        assert new_pid != pids[0]
        assert {get(port)[1] for _ in range(20)} == {"v2"}
        pids[0] = new_pid
    finally:
        assert daemon.stop() == 0, daemon.stderr()
    wait_until(lambda: not pids_alive(pids), timeout_s=5)
    assert "exited with -9; restarting" in daemon.stderr()


def test_a_second_instance_on_the_same_port_refuses_to_start(tmp_path: Path) -> None:
    # workers bind with SO_REUSEPORT, which alone would let a second lbcdn take half the
    # connections; the control process claims the port without it first
    first = fixed("first")
    (tmp_path / "a").mkdir()
    daemon = DaemonProcess(first, tmp_path / "a", ["--workers", "2"])
    try:
        wait_until(lambda: all(w["ready"] for w in runtime(first)["workers"]))
        second = fixed("second", first)
        second["admin"] = {**first["admin"], "port": free_port()}
        (tmp_path / "b").mkdir()
        other = DaemonProcess(second, tmp_path / "b", ["--workers", "2"])
        try:
            assert other.proc.wait(30) == 1
        finally:
            other.kill()
        assert "cannot bind" in other.stderr() and "in use" in other.stderr(), other.stderr()
        assert {get(listener_port(first))[1] for _ in range(20)} == {"first"}

        # a reload that adds a listener on a port someone else listens on changes nothing
        with socket.create_server(("127.0.0.1", 0)) as taken:
            grown = fixed("grown", first)
            grown["listeners"] = first["listeners"] + [
                {"name": "taken", "address": "127.0.0.1", "port": taken.getsockname()[1]}]
            daemon.path.write_text(yaml.safe_dump(grown))
            os.kill(daemon.pid, signal.SIGHUP)
            wait_until(lambda: "listener 'taken' cannot bind" in daemon.stderr())
        assert runtime(first)["reloads"] == 0
        assert get(listener_port(first)) == (200, "first")

        # a port our workers hold may move to another address of its
        moved = fixed("moved", first)
        moved["listeners"] = [{**first["listeners"][0], "address": "localhost"}]
        daemon.path.write_text(yaml.safe_dump(moved))
        os.kill(daemon.pid, signal.SIGHUP)
        wait_until(lambda: runtime(first)["reloads"] == 1)
        assert {get(listener_port(first))[1] for _ in range(10)} == {"moved"}
    finally:
        assert daemon.stop() == 0, daemon.stderr()


def test_two_listeners_naming_one_address_two_ways_refuse_to_start(tmp_path: Path) -> None:
    config = fixed("x")
    port = listener_port(config)
    config["listeners"].append({"name": "same", "address": "localhost", "port": port})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "lbcdn", "serve", "--config", str(path),
                           "--workers", "2"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "listener 'same' cannot bind localhost:" in proc.stderr, proc.stderr


async def test_target_stats_add_up_and_weight_latency_by_request_rate(tmp_path: Path) -> None:
    from lbcdn.config.load import load_config_text
    from lbcdn.workers import Supervisor
    path = tmp_path / "lbcdn.yaml"
    text = yaml.safe_dump(proxy_config(1))
    sup = Supervisor(load_config_text(text, str(path)), str(path), text, 3, None)
    row = {"in_flight": 1, "requests": 10, "errors": 1, "error_rate": 0.1, "latency_s": 0.010,
           "requests_per_s": 10.0, "open_connections": 2, "idle_connections": 1}
    sup.workers[0].stats = {"app": {"t:1": row}}
    sup.workers[1].stats = {"app": {"t:1": {**row, "requests": 30, "errors": 0,
                                            "error_rate": 0.0, "latency_s": 0.050,
                                            "requests_per_s": 30.0}}}
    # a worker that has not served this target in its window: no latency, no weight
    sup.workers[2].stats = {"app": {"t:1": {**row, "requests": 5, "errors": 0,
                                            "error_rate": 0.0, "latency_s": None,
                                            "requests_per_s": 0.0}}}
    got = sup._target_stats("app")["t:1"]
    assert (got["in_flight"], got["requests"], got["errors"], got["open_connections"],
            got["idle_connections"]) == (3, 45, 1, 6, 3)
    assert got["requests_per_s"] == pytest.approx(40.0)
    assert got["latency_s"] == pytest.approx((0.010 * 10 + 0.050 * 30) / 40)
    assert got["error_rate"] == pytest.approx(1 / 40)
    assert got["ejected"] is False
    sup.workers[1].stats["app"]["t:1"]["ejected"] = True  # out in one worker: shown as out
    assert sup._target_stats("app")["t:1"]["ejected"] is True
    assert sup._target_stats("other") == {}


def test_killing_the_control_process_takes_the_whole_daemon_down_at_once(tmp_path: Path) -> None:
    # a backend that never answers (connections wait in its backlog): requests stay in flight,
    # which a graceful drain would wait 30 s for
    silent = socket.create_server((HOST, 0))
    config = proxy_config(silent.getsockname()[1], shutdown={"drain_timeout_s": 30})
    config["pools"]["app"]["response_timeout_s"] = 60
    temp = tmp_path / "tmp"  # where the control process makes its metrics directory
    temp.mkdir()
    (tmp_path / "first").mkdir()
    daemon = DaemonProcess(config, tmp_path / "first", ["--workers", "2"],
                           env={"TMPDIR": str(temp)})
    clients: list[socket.socket] = []
    try:
        wait_for_port(admin_port(config))
        wait_until(lambda: all(w["ready"] for w in runtime(config)["workers"]))
        assert len(alive_in_group(daemon.pid)) == 3 and os.listdir(temp)
        for _ in range(6):
            clients.append(socket.create_connection((HOST, listener_port(config))))
            clients[-1].sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: runtime(config)["pools"][0]["targets"][0]["in_flight"] == 6)

        os.kill(daemon.pid, signal.SIGKILL)
        assert daemon.proc.wait(5) == -signal.SIGKILL
        wait_until(lambda: not alive_in_group(daemon.pid), timeout_s=5)  # not the 30 s drain
        assert port_free(listener_port(config)) and port_free(admin_port(config))
        assert os.listdir(temp) == []  # the metrics directory went with the daemon
        for client in clients:  # requests in flight were cut, not left hanging
            client.settimeout(1)
            try:
                assert client.recv(1) == b""
            except ConnectionResetError:
                pass
        assert "the control process is gone" in daemon.stderr(), daemon.stderr()
    finally:
        daemon.kill()
        silent.close()
        for client in clients:
            client.close()

    # whatever supervises the daemon can start it again at once, on the same ports
    with socket.create_server((HOST, 0)) as backend:
        config = proxy_config(backend.getsockname()[1], listeners=config["listeners"],
                              admin=config["admin"])
        config["default_route"] = {"fixed_response": {"body": "again"}}
        (tmp_path / "again").mkdir()
        again = DaemonProcess(config, tmp_path / "again", ["--workers", "2"],
                              env={"TMPDIR": str(temp)})
        try:
            assert get(listener_port(config)) == (200, "again")
        finally:
            assert again.stop() == 0, again.stderr()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_runtime_counts_each_listeners_open_connections(tmp_path: Path, workers: str) -> None:
    config = fixed("hi")
    daemon = DaemonProcess(config, tmp_path, ["--workers", workers])
    clients: list[http.client.HTTPConnection] = []
    try:
        wait_for_port(admin_port(config))

        def open_connections() -> int:
            return int(runtime(config)["listeners"][0]["open_connections"])
        for _ in range(3):  # idle keep-alive connections, after one request each
            clients.append(http.client.HTTPConnection(HOST, listener_port(config), timeout=5))
            clients[-1].request("GET", "/")
            assert clients[-1].getresponse().read() == b"hi"
        wait_until(lambda: open_connections() == 3)  # workers report every second
        for client in clients[:2]:
            client.close()
        wait_until(lambda: open_connections() == 1)
    finally:
        for client in clients:
            client.close()
        assert daemon.stop() == 0, daemon.stderr()


async def test_a_worker_whose_restart_fails_is_started_again_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the control process cannot start a worker for a moment (descriptors or processes short):
    # the monitor keeps trying rather than ending, which stopped every later restart
    import errno

    from lbcdn.config.load import load_config_text
    from lbcdn.workers import Supervisor
    path = tmp_path / "lbcdn.yaml"
    config = fixed("ok")
    text = yaml.safe_dump(config)
    sup = Supervisor(load_config_text(text, str(path)), str(path), text, 1, None)
    await sup.start()
    try:
        first = sup.workers[0].proc
        assert first is not None
        real_popen = subprocess.Popen
        failures: list[int] = []

        def popen(*args: Any, **kwargs: Any) -> Any:
            if len(failures) < 2:
                failures.append(1)
                raise OSError(errno.EMFILE, "Too many open files")
            return real_popen(*args, **kwargs)
        monkeypatch.setattr("lbcdn.workers.subprocess.Popen", popen)
        first.kill()
        deadline = asyncio.get_running_loop().time() + 20
        while not (sup.workers[0].ready.is_set() and sup.workers[0].proc is not first):
            assert asyncio.get_running_loop().time() < deadline, "the worker was not restarted"
            await asyncio.sleep(0.05)
        assert len(failures) == 2
        assert sup.workers[0].restarts >= 3
        status, body = await asyncio.to_thread(get, listener_port(config))
        assert (status, body) == (200, "ok")
    finally:
        await sup.stop()
