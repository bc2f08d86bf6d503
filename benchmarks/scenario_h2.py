"""Scenario `h2`: HTTP/2 to viewers (h2c with prior knowledge), lbcdn against nginx `http2`.

A backend nginx serves a 1 KiB file; nginx (`listen ... http2`, proxying over HTTP/1.1 with
keep-alive) and lbcdn (`http_versions` default: h2 and http1.1) proxy to it. h2load (Debian
nghttp2-client) drives each with the same load: C connections, M concurrent streams each, for
the duration; then lbcdn again over HTTP/1.1 (`h2load --h1`), so the per-request cost HTTP/2
adds to lbcdn is the difference. lbcdn runs as one process and as --workers 2. Then cache hits
of the same object: nginx `http2` with proxy_cache against lbcdn's edge cache (one process
each; scenario_cache's servers, the warm-up fills the caches). cpu us/req is
the server's own cpu time (all its processes) per request. No target: a report for the docs
(docs/guides/edge.md, "HTTP/2").
"""

from __future__ import annotations

import re

import scenario_cache
from harness import Bench, BenchError, Server, backend_pool_yaml, cpu_seconds, free_port, \
    lbcdn_yaml, need_tools, run_tool, table

STREAMS = 10   # concurrent streams per connection (-m)


class H2Result:
    def __init__(self, rps: float, done: int, failed: int, cpu_us: float) -> None:
        self.rps, self.done, self.failed, self.cpu_us = rps, done, failed, cpu_us


def h2load(bench: Bench, server: Server, *, h1: bool = False,
           duration_s: float | None = None) -> H2Result:
    duration = duration_s or bench.duration_s
    conns = max(1, bench.connections // 4)
    cmd = ["taskset", "-c", bench.client_cpu, "h2load", "-c", str(conns), "-m",
           "1" if h1 else str(STREAMS), "-D", f"{duration:g}", "-t", "1"]
    if h1:
        cmd.append("--h1")
    cmd.append(f"http://127.0.0.1:{server.port}/1k.bin")
    before = cpu_seconds(server.pid)
    out = run_tool(cmd, duration + 30)
    cpu = cpu_seconds(server.pid) - before
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    counts = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed", out)
    if rate is None or counts is None:
        raise BenchError(f"h2load said:\n{out}")
    done = int(counts.group(2))
    return H2Result(float(rate.group(1)), done, int(counts.group(3)),
                    cpu / done * 1e6 if done else 0.0)


def _h2_ready(port: int) -> bool:
    """Ready means one HTTP/2 GET (prior knowledge) succeeds."""
    out = run_tool(["h2load", "-n", "1", "-c", "1", f"http://127.0.0.1:{port}/1k.bin"], 10)
    if "1 succeeded" not in out:
        raise OSError(f"h2load: {out[-200:]}")
    return True


def _lbcdn(bench: Bench, backend: int, workers: int) -> Server:
    port = free_port()
    name = f"lbcdn-{workers}w"
    cfg = bench.lbcdn_config(name, lbcdn_yaml(port, backend_pool_yaml(backend)))
    return bench.start(name, bench.lbcdn_serve_cmd(cfg, workers=workers), port, path="/1k.bin")


def run(bench: Bench) -> None:
    need_tools("h2load")
    backend = bench.nginx_backend()
    rows = []
    results: dict[str, dict[str, float]] = {}
    # nginx's plain `http2` listener speaks only HTTP/2 (prior knowledge)
    nginx = bench.nginx_proxy(backend.port, listen_opts="http2", ready=_h2_ready)
    subjects: list[tuple[str, Server, bool]] = [("nginx http2", nginx, False)]
    for workers in (1, 2):
        server = _lbcdn(bench, backend.port, workers)
        subjects += [(f"lbcdn h2 {workers}w", server, False),
                     (f"lbcdn h1 {workers}w", server, True)]
    # cache hits (the warm-up fills both caches): nginx proxy_cache against the edge cache
    origin = scenario_cache._backend(bench)
    subjects += [
        ("nginx h2 cache", scenario_cache._nginx_cache(bench, origin.port, listen_opts="http2",
                                                       ready=_h2_ready), False),
        ("lbcdn h2 cache", scenario_cache._lbcdn_cache(bench, origin.port, "lbcdn-cache"),
         False)]
    for name, server, h1 in subjects:
        if bench.warmup_s > 0:
            h2load(bench, server, h1=h1, duration_s=bench.warmup_s)
        res = h2load(bench, server, h1=h1)
        print(f"  {name:<14} {res.rps:>9.0f} req/s  cpu {res.cpu_us:.0f} us/req  "
              f"failed {res.failed}")
        rows.append([name, f"{res.rps:.0f}", f"{res.cpu_us:.0f}", str(res.failed)])
        results[name] = {"rps": res.rps, "cpu_us_per_request": res.cpu_us,
                         "failed": res.failed}
    print()
    print(table(["server", "req/s", "cpu us/req", "failed"], rows))
    bench.results["h2"] = results | {"streams_per_connection": STREAMS}
