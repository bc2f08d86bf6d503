"""Scenario `tls`: HTTPS termination, lbcdn against nginx, side by side (issue 7).

One nginx backend serves a 1 KiB file over plain HTTP. In front of it, both terminating TLS with
the same certificate (made at run time with `openssl req -x509`, RSA 2048, so that the server's
signature - not the client's verification - is the costly half of a full handshake):
- nginx, 1 worker, `listen ... ssl`, `ssl_protocols TLSv1.2 TLSv1.3`, the same TLS 1.2 cipher
  list as lbcdn, upstream keep-alive, the headers lbcdn adds by default;
- lbcdn serve --workers 1 with an HTTPS listener (`listeners[].tls.certificates`).

Three measurements per server, interleaved by round (--rounds N reports the median round):
- keep-alive req/s: wrk -c{connections} over https (one handshake per connection, then reuse);
- resumed handshakes/s: wrk with a Lua script sending `Connection: close`, so every request is a
  new TCP + TLS connection; wrk keeps its TLS session, so these are resumptions (TLS 1.3 PSK with
  ECDHE: no certificate, no signature);
- full handshakes/s: `openssl s_time -new` (no session reuse), S_TIME_PROCS processes at once,
  each doing handshake + one GET + close in a loop; the sum of their connections / seconds.

No numeric target in issue 7: the table prints ratios; the only PASS/FAIL is that lbcdn served
every request without errors (a run with errors does not count).

Then resumption across workers (issue 19): lbcdn --workers 2, `openssl s_time -reuse` for
RESUME_SECONDS with TLS 1.2 and with TLS 1.3, before and after a reload (SIGHUP); every
connection after the first must resume, whichever worker the kernel hands it to (PASS/FAIL).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness import (Bench, BenchError, Server, WrkResult, backend_pool_yaml, cpu_seconds,
                     free_port, get_status, http_probe, lbcdn_yaml, median_by, need_tools,
                     nginx_proxy_block, table, verdict)

S_TIME_PROCS = 16          # sequential clients each; enough to keep one server core busy
CLOSE_CONNECTIONS = 16     # wrk connections for the Connection: close run
CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20"  # what lbcdn.tls allows; nginx gets the same
MIN_RESPONSE_BYTES = 1024  # s_time reads the whole response; less than the body means an error
RESUME_SECONDS = 3
RELOAD_SETTLE_S = 3.0      # SIGHUP to every worker applying it; reloads take well under that


@dataclass
class Measure:
    rate: float        # req/s or handshakes/s, as the client saw it
    errors: int
    server_cpu: float  # share of one core the server (all its processes) used meanwhile
    p99_ms: float | None = None

    @property
    def cpu_us_each(self) -> float:
        """Server CPU time per request / handshake: what the clients cannot cap."""
        return self.server_cpu / self.rate * 1e6 if self.rate > 0 else float("inf")

    @property
    def per_core(self) -> float:
        """The rate one fully busy server core would sustain at that cost."""
        return 1e6 / self.cpu_us_each if self.cpu_us_each > 0 else 0.0


KINDS = ("keep-alive", "resumed", "full")


def run(bench: Bench) -> None:
    need_tools("openssl", "wrk", "taskset", "nginx")
    cert, key = make_certificate(bench.tmp)
    backend = bench.nginx_backend()
    nginx = nginx_tls_proxy(bench, backend.port, cert, key)
    if bench.stand_in:
        lbcdn = nginx_tls_proxy(bench, backend.port, cert, key, name="lbcdn(nginx-stand-in)")
    else:
        lbcdn = lbcdn_tls(bench, backend.port, cert, key)
    subjects = [("nginx", nginx), (lbcdn.name, lbcdn)]
    close_lua = bench.tmp / "close.lua"
    close_lua.write_text('wrk.headers["Connection"] = "close"\n')
    secs = max(1, round(bench.duration_s))
    print(f"  backend :{backend.port}  nginx https :{nginx.port}  {lbcdn.name} https "
          f":{lbcdn.port}  (servers on cpu {bench.server_cpu}, clients on cpu {bench.client_cpu}, "
          f"{secs}s per run x{bench.rounds}; RSA 2048 certificate)")

    runs: dict[str, dict[str, list[Measure]]] = {
        name: {k: [] for k in KINDS} for name, _ in subjects}
    width = max(len(name) for name, _ in subjects)
    for r in range(bench.rounds):
        for name, server in subjects:
            url = f"https://127.0.0.1:{server.port}/1k.bin"
            if bench.warmup_s > 0:
                wrk_https(bench, url, bench.connections, bench.warmup_s)
                wrk_https(bench, url, CLOSE_CONNECTIONS, bench.warmup_s, script=close_lua)
            got = {
                "keep-alive": _measured(server, lambda: _wrk_measure(
                    bench, url, bench.connections, secs)),
                "resumed": _measured(server, lambda: _wrk_measure(
                    bench, url, CLOSE_CONNECTIONS, secs, close_lua)),
                "full": _measured(server, lambda: s_time(bench, server.port, secs)),
            }
            for k, m in got.items():
                runs[name][k].append(m)
            print(f"  round {r + 1}: {name:<{width}} " + "  ".join(
                f"{k} {m.rate:.0f}/s (cpu {m.server_cpu:.0%}, errors {m.errors})"
                for k, m in got.items()))

    best = {name: {k: _median(ms) for k, ms in by_kind.items()} for name, by_kind in runs.items()}
    ng, lb = best["nginx"], best[lbcdn.name]
    if any(ng[k].rate <= 0 for k in KINDS):
        raise BenchError("nginx served nothing over TLS")

    labels = {"keep-alive": f"keep-alive req/s (wrk -c{bench.connections})",
              "resumed": f"resumed handshakes/s (wrk Connection: close -c{CLOSE_CONNECTIONS})",
              "full": f"full handshakes/s (openssl s_time -new x{S_TIME_PROCS})"}
    rows = []
    for k in KINDS:
        a, b = ng[k], lb[k]
        rows.append([labels[k], f"{a.rate:.0f}", f"{b.rate:.0f}", f"{b.rate / a.rate:.2f}x"])
        rows.append(["  server cpu meanwhile", f"{a.server_cpu:.0%}", f"{b.server_cpu:.0%}", ""])
        rows.append(["  server cpu us each", f"{a.cpu_us_each:.0f}", f"{b.cpu_us_each:.0f}", ""])
        rows.append(["  per busy server core", f"{a.per_core:.0f}", f"{b.per_core:.0f}",
                     f"{b.per_core / a.per_core:.2f}x"])
    ka_n, ka_l = ng["keep-alive"].p99_ms or 0.0, lb["keep-alive"].p99_ms or 0.0
    rows.append(["keep-alive p99 ms", f"{ka_n:.2f}", f"{ka_l:.2f}", f"{ka_l - ka_n:+.2f} ms"])
    print()
    print(table(["measure", "nginx", lbcdn.name, "lbcdn/nginx"], rows))

    lb_errors = sum(lb[k].errors for k in KINDS)
    print()
    print("  The clients share one core: where a server stays well below 100% cpu the clients "
          "were the limit,\n  and 'per busy server core' (1 / server cpu per handshake) is the "
          "fairer comparison.")
    print(f"  {verdict(lb_errors == 0)}  {lbcdn.name} answered every TLS request "
          f"({lb_errors} errors; the ratios above have no target in issue 7)")
    resumption = {} if bench.stand_in else resumption_across_workers(bench, backend.port, cert,
                                                                       key)
    resumed_all = all(new == 0 and reused > 0 for reused, new in resumption.values())
    bench.results["tls"] = {
        name: {k: {"rate": m.rate, "server_cpu": m.server_cpu, "cpu_us_each": m.cpu_us_each,
                   "errors": m.errors, "p99_ms": m.p99_ms} for k, m in by_kind.items()}
        for name, by_kind in best.items()
    } | {f"ratio_{k}": lb[k].rate / ng[k].rate for k in KINDS} | {
        f"ratio_{k}_per_core": lb[k].per_core / ng[k].per_core for k in KINDS} | {
        "pass": lb_errors == 0} | {
        "resumption_workers_2": {k: {"reused": r, "new": n} for k, (r, n) in resumption.items()},
        "resumption_pass": resumed_all}


def resumption_across_workers(bench: Bench, backend_port: int, cert: Path,
                              key: Path) -> dict[str, tuple[int, int]]:
    """(reused, new) connections per TLS version and phase, lbcdn --workers 2."""
    server = lbcdn_tls(bench, backend_port, cert, key, name="lbcdn-workers-2", workers=2)
    out: dict[str, tuple[int, int]] = {}
    for phase in ("before reload", "after reload"):
        if phase == "after reload":
            os.kill(server.pid, signal.SIGHUP)
            time.sleep(RELOAD_SETTLE_S)
        for version in ("1.2", "1.3"):
            out[f"TLS {version} {phase}"] = s_time_reuse(bench, server.port, version)
    print()
    print(table(["lbcdn --workers 2: s_time -reuse", "resumed", "full"],
                [[k, str(r), str(n)] for k, (r, n) in out.items()]))
    ok = all(n == 0 and r > 0 for r, n in out.values())
    print(f"  {verdict(ok)}  every returning connection resumed, on either worker "
          f"(target 100%, issue 19)")
    return out


def _measured(server: Server, load: Callable[[], tuple[float, int, float | None]]) -> Measure:
    cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
    rate, errors, p99 = load()
    share = (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0)
    return Measure(rate, errors, share, p99)


def _wrk_measure(bench: Bench, url: str, connections: int, secs: int,
                 script: Path | None = None) -> tuple[float, int, float | None]:
    res = wrk_https(bench, url, connections, secs, script=script)
    return res.rps, res.errors, res.p99_ms


def _median(ms: list[Measure]) -> Measure:
    # Each measure's median round stands for the server (as in `proxy`).
    return median_by(ms, lambda m: m.rate)


# --------------------------------------------------------------------------- certificate

def make_certificate(d: Path) -> tuple[Path, Path]:
    cert, key = d / "cert.pem", d / "key.pem"
    cmd = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
           "-out", str(cert), "-days", "2", "-subj", "/CN=bench.local",
           "-addext", "subjectAltName=DNS:bench.local,IP:127.0.0.1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise BenchError(f"openssl req failed: {out.stderr}")
    key.chmod(0o644)  # nginx workers run unprivileged when the bench runs as root
    return cert, key


# --------------------------------------------------------------------------- servers

def https_get(port: int, path: str, timeout: float = 2.0) -> int:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the bench's own throwaway certificate
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname="bench.local") as s:
            return get_status(s, path, "bench", f"https port {port}")


def nginx_tls_proxy(bench: Bench, backend_port: int, cert: Path, key: Path,
                    name: str = "nginx-tls") -> Server:
    port = free_port()
    block = nginx_proxy_block(port, [backend_port], listen_opts="ssl", server_extra=[
        f"ssl_certificate {cert};", f"ssl_certificate_key {key};",
        "ssl_protocols TLSv1.2 TLSv1.3;", f"ssl_ciphers {CIPHERS_TLS12};",
        "ssl_prefer_server_ciphers on;"])
    return bench._nginx(name, bench._dir(name), block, port, ready=http_probe("/1k.bin", https_get))


def lbcdn_tls(bench: Bench, backend_port: int, cert: Path, key: Path,
              name: str = "lbcdn", workers: int = 1) -> Server:
    port = free_port()
    cfg = bench.lbcdn_config(name, lbcdn_yaml(
        port, backend_pool_yaml(backend_port), listener_name="bench-tls", listener_extra=[
            "tls:", "  certificates:", f"    - cert_file: {cert}", f"      key_file: {key}"]))
    return bench.start(name, bench.lbcdn_serve_cmd(cfg, workers=workers), port,
                       ready=http_probe("/1k.bin", https_get))


# --------------------------------------------------------------------------- load

def wrk_https(bench: Bench, url: str, connections: int, duration_s: float,
              script: Path | None = None) -> WrkResult:
    return bench.wrk_url(url, connections=connections, duration_s=duration_s, script=script)


_S_TIME_DONE = re.compile(r"^(\d+) connections in \d+ real seconds, (\d+) bytes read per conn",
                          re.MULTILINE)


def s_time(bench: Bench, port: int, seconds: int) -> tuple[float, int, float | None]:
    """Full handshakes per second (no session reuse) and the number of failed clients."""
    cmd = ["taskset", "-c", bench.client_cpu, "openssl", "s_time", "-connect",
           f"127.0.0.1:{port}", "-new", "-time", str(seconds), "-www", "/1k.bin"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True)
             for _ in range(S_TIME_PROCS)]
    total, errors = 0, 0
    try:
        for p in procs:
            try:
                out, _ = p.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                errors += 1
                continue
            m = _S_TIME_DONE.search(out.decode(errors="replace"))
            if p.returncode != 0 or m is None:
                errors += 1
                continue
            total += int(m.group(1))
            if int(m.group(2)) < MIN_RESPONSE_BYTES:
                errors += 1  # an error page, not the 1 KiB file
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    return total / seconds, errors, None


def s_time_reuse(bench: Bench, port: int, version: str) -> tuple[int, int]:
    """(resumed, full) handshakes of one `openssl s_time -reuse` client: it prints `r` for a
    resumed connection and `*` for a full one."""
    cmd = ["taskset", "-c", bench.client_cpu, "openssl", "s_time", "-connect",
           f"127.0.0.1:{port}", "-reuse", "-time", str(RESUME_SECONDS),
           "-tls1_3" if version == "1.3" else "-tls1_2", "-www", "/1k.bin"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=RESUME_SECONDS + 30,
                         stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise BenchError(f"openssl s_time -reuse failed: {out.stdout[-500:]}{out.stderr}")
    marks = "".join(line for line in out.stdout.splitlines() if re.fullmatch(r"[r*]+", line))
    return marks.count("r"), marks.count("*")
