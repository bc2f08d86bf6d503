"""Scenario `workers`: all cores, lbcdn --workers 1 and 2 against nginx worker_processes 1 and 2.

Plain HTTP pass-through proxying of a 1 KiB file (as in `proxy`), measured twice:
- 1 worker: the backend nginx and the proxy on --server-cpu (core 0), wrk on --client-cpu
  (core 1), as in every other scenario;
- 2 workers: the backend nginx (2 workers), the proxy and wrk all pinned to both cores. This
  machine has 2 cores, so the load generator shares them with the servers: the 2-worker numbers
  measure how much proxying each server gets out of a fixed CPU budget, not linear scaling.
The pinning and the load are the same for lbcdn and nginx in each phase, so the ratio is fair.
nginx listens with `reuseport` (one socket per worker), as lbcdn's workers share the listeners
with SO_REUSEPORT, so both spread connections over workers the same way.
lbcdn runs as `lbcdn serve --workers N` (a control process plus N data-plane processes).

No numeric target in issue 7: the table prints req/s, lbcdn/nginx per phase, each proxy's cpu
time per request (all its processes, from /proc) and each server's 2-worker/1-worker scaling;
the only PASS/FAIL is that lbcdn answered without errors.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from harness import (Bench, BenchError, Server, WrkResult, backend_pool_yaml, descendants,
                     free_port, interleave, lbcdn_yaml, median_by, need_tools, table, verdict)

WORKER_COUNTS = (1, 2)
WORKERS_READY_S = 20.0


def run(bench: Bench) -> None:
    need_tools("nginx", "wrk", "taskset")
    both = f"{bench.server_cpu},{bench.client_cpu}"
    results: dict[int, dict[str, tuple[WrkResult, float]]] = {}
    lb_name = "lbcdn(nginx-stand-in)" if bench.stand_in else "lbcdn"
    for n in WORKER_COUNTS:
        server_cpu, client_cpu = (bench.server_cpu, bench.client_cpu) if n == 1 else (both, both)
        with _pinned(bench, server_cpu, client_cpu):
            backend = nginx(bench, f"backend-w{n}", n, backend_port=None)
            ng = nginx(bench, f"nginx-w{n}", n, backend_port=backend.port)
            lb = (nginx(bench, f"{lb_name}-w{n}", n, backend_port=backend.port)
                  if bench.stand_in else lbcdn(bench, f"lbcdn-w{n}", n, backend.port))
            shared = " (wrk shares these cores with the servers)" if n > 1 else ""
            print(f"  {n} worker(s): backend :{backend.port}  nginx :{ng.port}  {lb_name} "
                  f":{lb.port}  servers on cpu {server_cpu}, wrk on cpu {client_cpu}{shared}")
            results[n] = _measure(bench, n, [("nginx", ng), (lb_name, lb)])
            for s in (lb, ng, backend):
                bench.stop(s)

    rows = []
    for n in WORKER_COUNTS:
        (a, ca), (b, cb) = results[n]["nginx"], results[n][lb_name]
        rows.append([f"{n} worker{'s' if n > 1 else ''}", f"{a.rps:.0f}", f"{b.rps:.0f}",
                     f"{b.rps / a.rps:.2f}x", f"{ca:.0f}", f"{cb:.0f}", f"{ca / cb:.2f}x",
                     f"{a.p99_ms:.2f}", f"{b.p99_ms:.2f}", str(a.errors), str(b.errors)])
    lo, hi = WORKER_COUNTS[0], WORKER_COUNTS[-1]
    scale_ng = results[hi]["nginx"][0].rps / results[lo]["nginx"][0].rps
    scale_lb = results[hi][lb_name][0].rps / results[lo][lb_name][0].rps
    rows.append([f"{hi}w / {lo}w", f"{scale_ng:.2f}x", f"{scale_lb:.2f}x", "", "", "", "", "", "",
                 "", ""])
    print()
    print(table(["workers", "nginx req/s", f"{lb_name} req/s", "lbcdn/nginx", "nginx cpu us/req",
                 "lbcdn cpu us/req", "nginx/lbcdn cpu", "nginx p99 ms", "lbcdn p99 ms",
                 "nginx errors", "lbcdn errors"], rows))
    print()
    print(f"  note: {hi} workers on a {hi}-core machine share the cores with wrk and the backend; "
          f"cpu us/req is the proxy's own\n  cpu time (all its processes) per request, which "
          f"the load on this shared machine disturbs less than req/s")
    errors = sum(results[n][lb_name][0].errors for n in WORKER_COUNTS)
    print(f"  {verdict(errors == 0)}  {lb_name} answered every request ({errors} errors; the "
          f"ratios have no target in issue 7)")
    bench.results["workers"] = {
        str(n): {name: {"rps": r.rps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors,
                        "cpu_us_per_request": cpu}
                 for name, (r, cpu) in results[n].items()}
        | {"ratio": results[n][lb_name][0].rps / results[n]["nginx"][0].rps}
        for n in WORKER_COUNTS
    } | {"scaling_nginx": scale_ng, "scaling_lbcdn": scale_lb, "pass": errors == 0}


def _measure(bench: Bench, n: int,
             subjects: list[tuple[str, Server]]) -> dict[str, tuple[WrkResult, float]]:
    """Each server's median wrk run and its cpu microseconds per request in that run."""
    width = max(len(name) for name, _ in subjects)

    def show(r: int, name: str, run: tuple[WrkResult, float]) -> str:
        res, cpu_us = run
        return (f"  round {r}, {n}w: {name:<{width}} {res.rps:>10.0f} req/s  "
                f"cpu {cpu_us:.0f} us/req  p99 {res.p99_ms:.2f} ms  errors {res.errors}")
    runs = interleave(bench.rounds, subjects, bench.wrk_cpu, show)
    if any(r.rps <= 0 for r, _ in runs["nginx"]):
        raise BenchError("nginx served nothing")
    return {name: median_by(rs, lambda x: x[0].rps) for name, rs in runs.items()}


@contextmanager
def _pinned(bench: Bench, server_cpu: str, client_cpu: str) -> Iterator[None]:
    # Bench.start and Bench.wrk pin with the bench's CPU lists; a phase borrows other ones.
    saved = bench.server_cpu, bench.client_cpu
    bench.server_cpu, bench.client_cpu = server_cpu, client_cpu
    try:
        yield
    finally:
        bench.server_cpu, bench.client_cpu = saved


def nginx(bench: Bench, name: str, workers: int, backend_port: int | None) -> Server:
    """nginx with `workers` worker processes listening with reuseport: a static 1 KiB file
    server when backend_port is None, else a reverse proxy to it (Bench.nginx_proxy)."""
    if backend_port is None:
        server = bench.nginx_backend(name, workers=workers, listen_opts="reuseport")
    else:
        server = bench.nginx_proxy(backend_port, name, workers=workers, listen_opts="reuseport")
    _wait_processes(server, workers)
    return server


def lbcdn(bench: Bench, name: str, workers: int, backend_port: int) -> Server:
    port = free_port()
    cfg = bench.lbcdn_config(name, lbcdn_yaml(port, backend_pool_yaml(backend_port)))
    server = bench.start(name, bench.lbcdn_serve_cmd(cfg, workers=workers), port,
                         path="/1k.bin")
    if workers > 1:
        _wait_processes(server, workers)
    return server


def _wait_processes(server: Server, workers: int) -> None:
    """The first process to answer is not proof that all of them listen: wait until the
    master/control process has its `workers` children before measuring."""
    deadline = time.monotonic() + WORKERS_READY_S
    while len(descendants(server.pid)) < workers:
        if time.monotonic() > deadline or server.proc.poll() is not None:
            raise BenchError(f"{server.name}: fewer than {workers} worker processes after "
                             f"{WORKERS_READY_S:g}s:\n{server.log_tail()}")
        time.sleep(0.1)
