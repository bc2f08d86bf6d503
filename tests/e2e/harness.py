"""Starting real daemons and backends for end-to-end tests, on 127.0.0.1 with ports picked at
run time, and stopping everything that was started.

Two ways to run the daemon:
- `running_daemon(config)`: in the test's own event loop (fast; most tests);
- `DaemonProcess`: `python -m lbcdn serve` in a subprocess, for what needs a process of its own
  (signals, RSS, the CLI, real exit codes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import yaml

from lbcdn.config.load import parse_config
from lbcdn.daemon import Daemon
from lbcdn.demo.backend import start_demo_backend

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def proxy_config(*targets: int, **overrides: Any) -> dict[str, Any]:
    """A one-listener config forwarding everything to `targets` (ports on 127.0.0.1)."""
    config: dict[str, Any] = {
        "listeners": [{"name": "web", "address": HOST, "port": free_port()}],
        "pools": {"app": {"targets": [f"{HOST}:{p}" for p in targets]}},
        "default_route": {"forward": "app"},
        "admin": {"address": HOST, "port": free_port()},
        "logging": {"level": "warning", "access_log": {"enabled": False}},
        "shutdown": {"drain_timeout_s": 5},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def listener_port(config: dict[str, Any], index: int = 0) -> int:
    return int(config["listeners"][index]["port"])


def admin_port(config: dict[str, Any]) -> int:
    return int(config["admin"]["port"])


@contextlib.asynccontextmanager
async def running_daemon(config: dict[str, Any]) -> AsyncIterator[Daemon]:
    daemon = Daemon(parse_config(config))
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


@contextlib.asynccontextmanager
async def demo_backend(name: str = "b1") -> AsyncIterator[int]:
    """A built-in demo backend in this event loop; yields its port."""
    server = await start_demo_backend(HOST, 0, name)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


def wait_for_port(port: int, timeout_s: float = 15.0, proc: subprocess.Popen[bytes] | None = None
                  ) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {HOST}:{port} after {timeout_s} s")


class DaemonProcess:
    """`python -m lbcdn serve --config FILE` in a subprocess, with its own process group."""

    def __init__(self, config: dict[str, Any], tmp: Path, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.config = config
        self.path = tmp / "lbcdn.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.stderr_path = tmp / "lbcdn.stderr"
        self.stdout_path = tmp / "lbcdn.stdout"
        self._stderr = open(self.stderr_path, "wb")
        self._stdout = open(self.stdout_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lbcdn", "serve", "--config", str(self.path),
             *(extra_args or [])],
            stdout=self._stdout, stderr=self._stderr, start_new_session=True,
            env={**os.environ, **(env or {})})
        try:
            wait_for_port(listener_port(config), proc=self.proc)
        except BaseException:
            self.kill()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._stderr.close()
        self._stdout.close()
        return self.proc.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._stderr.close()
        self._stdout.close()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")


class BackendProcess:
    """`python -m lbcdn demo-backend` in a subprocess (its memory is not the daemon's)."""

    def __init__(self, name: str = "b1") -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lbcdn", "demo-backend", "--address", HOST,
             "--port", str(self.port), "--name", name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for_port(self.port, proc=self.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@contextlib.contextmanager
def backend_process(name: str = "b1") -> Iterator[BackendProcess]:
    backend = BackendProcess(name)
    try:
        yield backend
    finally:
        backend.stop()


async def raw_exchange(port: int, data: bytes, *, read_timeout_s: float = 5.0,
                       half_close: bool = False) -> bytes:
    """Send raw bytes, read until the server closes (or the timeout): the wire truth."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        chunks: list[bytes] = []
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(read_timeout_s):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
