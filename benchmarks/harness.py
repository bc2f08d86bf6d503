"""Shared machinery for the side-by-side benchmarks: servers, wrk, tables.

Rules:
- Only 127.0.0.1. Ports are picked free at run time.
- Every server runs in its own process group, pinned with taskset, and is registered with a
  `Bench` so that it is stopped (SIGTERM, then SIGKILL) when the run ends, whatever happens.
- Every run is bounded in time; nothing here waits without a deadline.
- Stdlib only: this runs with the project's venv but needs none of its packages.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

REPO = Path(__file__).resolve().parent.parent
BODY_1K = (b"0123456789abcdef" * 64)[:1023] + b"\n"

T = TypeVar("T")
# Asked again and again until it says True or the deadline passes; it may raise OSError to say
# why it is not ready yet (the last reason goes into the error).
Probe = Callable[[int], bool]


class BenchError(Exception):
    """The benchmark could not run (missing tool, server did not start): not a FAIL result."""


# --------------------------------------------------------------------------- small helpers

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)} (make bench installs them)")


def raise_nofile(want: int = 65536) -> int:
    """Raise RLIMIT_NOFILE for this process (and so for the servers it starts)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:  # root may raise the hard limit (up to fs.nr_open)
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            pass
    new_soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new_soft > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int) -> int:
    """VmRSS of pid and all its descendants, in KiB."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except FileNotFoundError:
            continue
        for t in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
            except FileNotFoundError:
                continue
            for k in kids:
                out.append(int(k))
                todo.append(int(k))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid and its descendants (nginx: master and worker)."""
    ticks = 0
    for p in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def median_by(items: Sequence[T], key: Callable[[T], float]) -> T:
    """The item whose key is the (low) median: a real run stands for all rounds, not a mean."""
    med = statistics.median_low([key(x) for x in items])
    return next(x for x in items if key(x) == med)


def interleave(rounds: int, subjects: Sequence[tuple[str, Server]],
               measure: Callable[[Server], T], show: Callable[[int, str, T], str]
               ) -> dict[str, list[T]]:
    """Measure every subject once per round, round by round (so that a noisy moment on the
    shared machine hits all of them alike); print show(round, name, result) after each."""
    runs: dict[str, list[T]] = {name: [] for name, _ in subjects}
    for r in range(rounds):
        for name, server in subjects:
            res = measure(server)
            runs[name].append(res)
            print(show(r + 1, name, res))
    return runs


def run_tool(cmd: Sequence[str], timeout_s: float) -> str:
    """Run a load generator to its end; its stdout, or BenchError (named after the tool)."""
    tool = cmd[3] if cmd[:1] == ["taskset"] else cmd[0]
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout_s,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{tool} did not finish: {' '.join(cmd)}") from e
    if out.returncode != 0:
        raise BenchError(f"{tool} failed ({out.returncode}): {out.stderr or out.stdout}")
    return out.stdout


def open_fds(pid: int) -> int:
    """Open file descriptors of pid and all its descendants."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except (FileNotFoundError, PermissionError):
            pass
    return total


def http_get(port: int, path: str = "/", host: str = "bench", timeout: float = 2.0) -> int:
    """One HTTP/1.1 GET with Connection: close; returns the status code."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        return get_status(s, path, host, f"port {port}")


def get_status(s: socket.socket, path: str, host: str, where: str) -> int:
    """Send a GET with Connection: close on s (plain or TLS); the status code of the answer."""
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    if not m:
        raise OSError(f"no HTTP status line from {where}: {data[:80]!r}")
    return int(m.group(1))


def http_probe(path: str, get: Callable[[int, str], int] = http_get) -> Probe:
    """Ready means a GET of path (by `get`: plain HTTP unless told) answers 200."""
    def probe(port: int) -> bool:
        status = get(port, path)
        if status != 200:
            raise OSError(f"status {status}")
        return True
    return probe


# --------------------------------------------------------------------------- configs

def nginx_conf(d: Path, server_block: str, workers: int = 1) -> str:
    """A whole nginx.conf: everything under d, no access log, long keep-alive."""
    return f"""# generated by benchmarks/harness.py
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile 65536;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 32768;
}}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 3600s;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type application/octet-stream;
{server_block}
}}
"""


def nginx_static_block(port: int, root: Path, listen_opts: str = "") -> str:
    """A server block serving the files under root."""
    listen = f"127.0.0.1:{port} {listen_opts}".rstrip()
    return f"""
    server {{
        listen {listen};
        root {root};
        location / {{ }}
    }}"""


def nginx_proxy_block(port: int, backend_ports: Sequence[int], *, listen_opts: str = "",
                      balance: str = "", server_extra: Sequence[str] = ()) -> str:
    """A reverse proxy with upstream keep-alive that adds the headers lbcdn adds by default
    (X-Forwarded-For/-Proto/-Port, Via, a request id), so that nginx and lbcdn do the same
    work, and the backend behind each parses the same header lines."""
    listen = f"127.0.0.1:{port} {listen_opts}".rstrip()
    upstream = ([balance] if balance else []) + [f"server 127.0.0.1:{p};" for p in backend_ports]
    return f"""
    upstream backend {{
{"".join(f"        {ln}{chr(10)}" for ln in upstream)}        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 3600s;
    }}
    server {{
        listen {listen};
{"".join(f"        {ln}{chr(10)}" for ln in server_extra)}        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header Via "1.1 nginx";
            proxy_set_header X-Request-Id $request_id;
        }}
    }}"""


def backend_pool_yaml(backend_port: int) -> str:
    """The pool `backend`: one target, upstream keep-alive as nginx's `keepalive 64`."""
    return f"""  backend:
    targets: ["127.0.0.1:{backend_port}"]
    max_idle_per_target: 64
"""


def lbcdn_yaml(port: int, pools_yaml: str, *, forward: str = "backend",
               listener_name: str = "bench", listener_extra: Sequence[str] = (),
               admin_port: int = 0) -> str:
    """An lbcdn config: one listener on port whose one route forwards everything to `forward`,
    quiet logs. listener_extra: more keys of the listener, unindented ("tls:", "  x: y")."""
    extra = "".join(f"    {ln}\n" for ln in listener_extra)
    return f"""# generated by benchmarks/harness.py
listeners:
  - name: {listener_name}
    address: 127.0.0.1
    port: {port}
{extra}pools:
{pools_yaml}routes:
  - name: all
    forward: {forward}
admin:
  port: {admin_port}
logging:
  level: warning
  access_log:
    enabled: false
"""


# --------------------------------------------------------------------------- servers

@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


@dataclass
class Bench:
    """One benchmark run: options, a temp dir, and the servers to stop at the end."""
    duration_s: float
    warmup_s: float
    connections: int
    rounds: int
    server_cpu: str
    client_cpu: str
    lbcdn_cmd: list[str]
    stand_in: bool  # use nginx in place of lbcdn (to prove the harness)
    keep_tmp: bool = False
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lbcdn-bench-")))
    servers: list[Server] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # nginx workers drop to an unprivileged user when run as root: let them read the files.
        os.chmod(self.tmp, 0o755)

    # ---- lifecycle

    def start(self, name: str, cmd: Sequence[str], port: int, *, path: str = "/",
              timeout_s: float = 20.0, ready: Probe | None = None) -> Server:
        """Spawn cmd on the server CPU and wait until `ready` (default: GET path is 200)."""
        server = self.spawn(name, cmd, port)
        self.wait_ready(server, path, timeout_s, ready=ready)
        return server

    def spawn(self, name: str, cmd: Sequence[str], port: int, *, cpu: str | None = None,
              log: Path | None = None) -> Server:
        """Start cmd pinned to cpu (default the server CPU) in its own process group."""
        log = log or self.tmp / f"{name}.log"
        full = ["taskset", "-c", cpu or self.server_cpu, *cmd]
        with open(log, "wb") as f:
            proc = subprocess.Popen(full, stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        server = Server(name, port, proc, log)
        self.servers.append(server)  # registered at once: stopped in close whatever happens
        return server

    def wait_ready(self, server: Server, path: str, timeout_s: float, *,
                   ready: Probe | None = None) -> None:
        probe = ready or http_probe(path)
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise BenchError(f"{server.name} exited with {server.proc.returncode}:\n"
                                 f"{server.log_tail()}")
            try:
                if probe(server.port):
                    return
                last = None
            except OSError as e:
                last = e
            time.sleep(0.1)
        raise BenchError(f"{server.name} not ready on port {server.port} after {timeout_s}s "
                         f"({last}):\n{server.log_tail()}")

    def stop(self, server: Server, grace_s: float = 10.0) -> None:
        if server.proc.poll() is None:
            try:
                os.killpg(server.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                server.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                print(f"  {server.name} did not stop in {grace_s}s; SIGKILL", file=sys.stderr)
        # Whatever is left in the group (workers of a killed master) goes too.
        try:
            os.killpg(server.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            server.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if server in self.servers:
            self.servers.remove(server)

    def close(self) -> None:
        for server in list(reversed(self.servers)):
            self.stop(server)
        if self.keep_tmp:
            print(f"temp dir kept: {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- the servers every scenario uses

    def nginx_backend(self, name: str = "backend", *, workers: int = 1,
                      listen_opts: str = "") -> Server:
        """nginx serving a 1 KiB file at /1k.bin (and /)."""
        need_tools("nginx")
        d = self._dir(name)
        (d / "www").mkdir(mode=0o755)
        (d / "www" / "1k.bin").write_bytes(BODY_1K)
        (d / "www" / "index.html").write_bytes(BODY_1K)
        port = free_port()
        return self._nginx(name, d, nginx_static_block(port, d / "www", listen_opts), port,
                           workers=workers)

    def nginx_proxy(self, backend_port: int, name: str = "nginx", *, workers: int = 1,
                    listen_opts: str = "", ready: Probe | None = None) -> Server:
        """nginx as a reverse proxy to backend_port (see nginx_proxy_block); `ready`: how to
        tell it is up (a GET over HTTP/1.1 unless told)."""
        need_tools("nginx")
        d = self._dir(name)
        port = free_port()
        return self._nginx(name, d, nginx_proxy_block(port, [backend_port],
                                                      listen_opts=listen_opts), port,
                           path="/1k.bin", workers=workers, ready=ready)

    def lbcdn(self, backend_port: int, *, idle_timeout_s: float = 60.0,
              name: str = "lbcdn") -> Server:
        """lbcdn serve, one process, one listener forwarding everything to the backend."""
        if self.stand_in:
            return self.nginx_proxy(backend_port, name=f"{name}(nginx-stand-in)")
        port = free_port()
        cfg = self.lbcdn_config(name, lbcdn_yaml(
            port, backend_pool_yaml(backend_port),
            listener_extra=[f"idle_timeout_s: {idle_timeout_s}"]))
        workers = 1 if self._lbcdn_has_workers() else None
        return self.start(name, self.lbcdn_serve_cmd(cfg, workers=workers), port,
                          path="/1k.bin")

    def lbcdn_config(self, name: str, text: str, *, echo: bool = True) -> Path:
        """Write text as <tmp>/<name>/lbcdn.yaml and have `lbcdn check-config` accept it."""
        cfg = self._dir(name) / "lbcdn.yaml"
        cfg.write_text(text)
        self.check_lbcdn_config(cfg, echo=echo)
        return cfg

    def check_lbcdn_config(self, cfg: Path, *, echo: bool = True) -> None:
        """BenchError unless `lbcdn check-config` accepts cfg; echo: quote cfg in the error
        (off for configs of a thousand targets)."""
        check = subprocess.run([*self.lbcdn_cmd, "check-config", str(cfg)], capture_output=True,
                               text=True, timeout=60, stdin=subprocess.DEVNULL)
        if check.returncode != 0:
            quoted = f"\n{cfg.read_text()}" if echo else ""
            raise BenchError(f"lbcdn check-config rejected the generated config:\n"
                             f"{check.stdout}{check.stderr}{quoted}")

    def lbcdn_serve_cmd(self, cfg: Path, *, workers: int | None = 1,
                        log_level: str = "warning") -> list[str]:
        """`lbcdn serve` of cfg; workers None leaves --workers out (an lbcdn without it)."""
        cmd = [*self.lbcdn_cmd, "serve", "--config", str(cfg), "--log-level", log_level]
        if workers is not None:
            cmd += ["--workers", str(workers)]
        return cmd

    def _lbcdn_has_workers(self) -> bool:
        try:
            out = subprocess.run([*self.lbcdn_cmd, "serve", "--help"], capture_output=True,
                                 text=True, timeout=60, stdin=subprocess.DEVNULL).stdout
        except (OSError, subprocess.TimeoutExpired):
            return False
        return "--workers" in out

    def _dir(self, name: str) -> Path:
        d = self.tmp / re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        d.mkdir(mode=0o755)
        return d

    def _nginx(self, name: str, d: Path, server_block: str, port: int,
               path: str = "/1k.bin", *, workers: int = 1, ready: Probe | None = None) -> Server:
        conf = d / "nginx.conf"
        conf.write_text(nginx_conf(d, server_block, workers))
        return self.start(name, ["nginx", "-p", str(d), "-e", f"{d}/error.log", "-c", str(conf)],
                          port, path=path, ready=ready)

    # ---- load

    def wrk(self, port: int, path: str = "/1k.bin", duration_s: float | None = None) -> "WrkResult":
        return self.wrk_url(f"http://127.0.0.1:{port}{path}", duration_s=duration_s)

    def wrk_url(self, url: str, *, connections: int | None = None,
                duration_s: float | None = None, script: Path | None = None) -> "WrkResult":
        """wrk -t1 on the client CPU; connections and duration default to the bench's."""
        need_tools("wrk", "taskset")
        dur = max(1, round(duration_s if duration_s is not None else self.duration_s))
        conns = connections if connections is not None else self.connections
        cmd = ["taskset", "-c", self.client_cpu, "wrk", "-t1", f"-c{conns}", f"-d{dur}s",
               "--latency"]
        if script is not None:
            cmd += ["-s", str(script)]
        cmd.append(url)
        return parse_wrk(run_tool(cmd, dur + 60))

    def wrk_cpu(self, server: Server, path: str = "/1k.bin") -> tuple["WrkResult", float]:
        """A warm-up (if any), then one wrk run against server and the server's cpu
        microseconds per request meanwhile (all its processes)."""
        if self.warmup_s > 0:
            self.wrk(server.port, path, duration_s=self.warmup_s)
        cpu0 = cpu_seconds(server.pid)
        res = self.wrk(server.port, path)
        return res, (cpu_seconds(server.pid) - cpu0) / max(res.requests, 1) * 1e6


# --------------------------------------------------------------------------- wrk output

@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    raw: str

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    def find(pattern: str) -> str:
        m = re.search(pattern, out, re.MULTILINE)
        if not m:
            raise BenchError(f"unexpected wrk output (no {pattern!r}):\n{out}")
        return m.group(1)

    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors = sum(int(g) for g in m.groups())
    m2 = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(
        rps=float(find(r"^Requests/sec:\s+([\d.]+)")),
        p50_ms=_to_ms(find(r"^\s+50%\s+(\S+)")),
        p99_ms=_to_ms(find(r"^\s+99%\s+(\S+)")),
        requests=int(find(r"^\s+(\d+) requests in")),
        non_2xx=int(m2.group(1)) if m2 else 0,
        socket_errors=errors,
        raw=out,
    )


# --------------------------------------------------------------------------- output

def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


Scenario = Callable[[Bench], None]
