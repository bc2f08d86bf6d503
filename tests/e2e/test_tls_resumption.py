"""TLS resumption across workers, reloads and ticket-key rotations (lbcdn.tlstickets), with
`openssl s_client` as the client: TLS 1.2 with -reconnect, TLS 1.3 with -sess_out/-sess_in."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.e2e.harness import HOST, DaemonProcess, backend_process, listener_port, proxy_config, \
    wait_until
from tests.e2e.test_tls import write_cert

ATTEMPTS = 20


def config_with_tls(backend: int, tmp: Path, **tickets: Any) -> dict[str, Any]:
    config = proxy_config(backend)
    ca = trustme.CA()
    config["listeners"][0]["tls"] = {"certificates": [write_cert(ca, tmp, "a.test")]}
    config["logging"]["level"] = "info"  # to see the reloads
    if tickets:
        config["tls_session_tickets"] = tickets
    return config


def s_client(port: int, *args: str) -> str:
    """One `openssl s_client` run that sends a request and reads the answer (so that TLS 1.3
    tickets, sent after the handshake, arrive)."""
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-servername", "a.test",
         "-ign_eof", *args],
        input="GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        capture_output=True, text=True, timeout=20)
    return out.stdout


def reused_tls12(port: int) -> int:
    """Of ATTEMPTS resumptions with TLS 1.2 (s_client -reconnect: 5 after the first), how
    many the server accepted."""
    reused = 0
    for _ in range(ATTEMPTS // 5):
        lines = [l for l in s_client(port, "-tls1_2", "-reconnect").splitlines()
                 if l.startswith(("New,", "Reused,"))]
        assert len(lines) == 6, lines
        assert lines[0].startswith("New,")
        reused += sum(l.startswith("Reused,") for l in lines[1:])
    return reused


def tls13_session(port: int, path: Path) -> None:
    assert "New, TLSv1.3" in s_client(port, "-tls1_3", "-sess_out", str(path))
    assert path.stat().st_size > 0


def reused_tls13(port: int, session: Path, attempts: int = ATTEMPTS) -> int:
    return sum("Reused, TLSv1.3" in s_client(port, "-tls1_3", "-sess_in", str(session))
               for _ in range(attempts))


def reload(daemon: DaemonProcess, count: int) -> None:
    os.kill(daemon.pid, signal.SIGHUP)
    wait_until(lambda: daemon.stderr().count("configuration reloaded") >= count, 20,
               what=f"reload {count}; log: {daemon.stderr()[-2000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_every_resumption_is_accepted_across_workers_and_reloads(tmp_path: Path,
                                                                 workers: str) -> None:
    with backend_process() as backend:
        config = config_with_tls(backend.port, tmp_path)
        daemon = DaemonProcess(config, tmp_path, ["--workers", workers])
        try:
            port = listener_port(config)
            before = tmp_path / "before.tls13"
            tls13_session(port, before)
            assert (reused_tls12(port), reused_tls13(port, before)) == (ATTEMPTS, ATTEMPTS)
            reload(daemon, 1)
            # a session from before the reload, and new ones, resume on every worker
            assert reused_tls13(port, before) == ATTEMPTS
            after = tmp_path / "after.tls13"
            tls13_session(port, after)
            assert (reused_tls12(port), reused_tls13(port, after)) == (ATTEMPTS, ATTEMPTS)
        finally:
            daemon.stop()


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_rotation_reaches_every_worker_and_retires_old_keys(tmp_path: Path,
                                                            workers: str) -> None:
    """Keys rotate every 3 s: a client that keeps coming back (within a period) with the
    ticket it got last resumes every time, on any worker; a ticket three rotations old no longer
    resumes (the previous key is accepted, the one before it is gone)."""
    with backend_process() as backend:
        config = config_with_tls(backend.port, tmp_path, rotate_every_s=3)
        daemon = DaemonProcess(config, tmp_path, ["--workers", workers])
        try:
            port = listener_port(config)
            old = tmp_path / "old.tls13"
            tls13_session(port, old)
            chained = tmp_path / "chained.tls13"
            tls13_session(port, chained)
            reused = attempts = 0
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                attempts += 1
                reused += "Reused, TLSv1.3" in s_client(
                    port, "-tls1_3", "-sess_in", str(chained), "-sess_out", str(chained))
            assert reused == attempts
            assert reused_tls13(port, chained, 1) == 1
            assert reused_tls13(port, old, 2) == 0
        finally:
            daemon.stop()
