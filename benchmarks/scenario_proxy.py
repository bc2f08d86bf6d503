"""Scenario `proxy`: pass-through proxying, lbcdn against nginx, side by side.

A backend nginx serves a 1 KiB file. wrk measures, in this order and in the same run, the
backend directly (baseline), nginx as a reverse proxy and lbcdn, each after a warm-up run.
With --rounds N the three are measured N times, interleaved, and the round with the median
req/s of each server is reported (the machine is shared: single runs are noisy).
Then nginx and lbcdn are measured again at the same load: every wrk connection waits a random
delay (wrk's Lua `delay()`, uniform in 0..2d ms so the connections do not fire in step) between
its requests, d set so the offered rate is about half of lbcdn's peak, a rate both sustain. Latency at saturation follows throughput (64 requests queue behind
the slower server), so the p99 target is checked where the issue puts it, at the same load.
Targets (issue 2): lbcdn req/s >= 1.0x nginx; lbcdn p99 <= nginx p99 + 1 ms at the same load.
"""

from __future__ import annotations

from harness import Bench, BenchError, Server, WrkResult, interleave, median_by, table, verdict

PACED_FRACTION = 0.5   # of lbcdn's peak req/s, for the same-load latency run

TARGET_RATIO = 1.0
TARGET_P99_EXTRA_MS = 1.0


def run(bench: Bench) -> None:
    backend = bench.nginx_backend()
    nginx = bench.nginx_proxy(backend.port)
    lbcdn = bench.lbcdn(backend.port)
    subjects = [("backend direct", backend), ("nginx proxy", nginx), (lbcdn.name, lbcdn)]
    print(f"  backend :{backend.port}  nginx :{nginx.port}  {lbcdn.name} :{lbcdn.port}  "
          f"(servers on cpu {bench.server_cpu}, wrk on cpu {bench.client_cpu}, "
          f"-c{bench.connections} -d{bench.duration_s:g}s x{bench.rounds})")

    width = max(len(name) for name, _ in subjects)

    def measure(server: Server) -> WrkResult:
        if bench.warmup_s > 0:
            bench.wrk(server.port, duration_s=bench.warmup_s)
        return bench.wrk(server.port)

    def show(r: int, name: str, res: WrkResult) -> str:
        return (f"  round {r}: {name:<{width}} {res.rps:>10.0f} req/s  p50 {res.p50_ms:.2f} ms"
                f"  p99 {res.p99_ms:.2f} ms  errors {res.errors}")
    runs = interleave(bench.rounds, subjects, measure, show)

    best = {name: _median_run(rs) for name, rs in runs.items()}
    base, ng, lb = best["backend direct"], best["nginx proxy"], best[lbcdn.name]
    if ng.rps <= 0:
        raise BenchError("nginx proxy served nothing")

    rows = []
    for name, res in best.items():
        ratio_s = f"{res.rps / ng.rps:.2f}x"
        dp99 = f"{res.p99_ms - ng.p99_ms:+.2f}"
        rows.append([name, f"{res.rps:.0f}", f"{res.p50_ms:.2f}", f"{res.p99_ms:.2f}", ratio_s,
                     dp99, str(res.errors)])
    print()
    print(table(["server", "req/s", "p50 ms", "p99 ms", "vs nginx", "p99 - nginx ms", "errors"],
                rows))

    delay_ms = max(1, round(bench.connections / (PACED_FRACTION * lb.rps) * 1000))
    script = bench.tmp / "paced.lua"
    script.write_text(f"function delay()\n  return math.random(0, {2 * delay_ms})\nend\n")
    paced = {}
    for name, server in (("nginx proxy", nginx), (lbcdn.name, lbcdn)):
        paced[name] = bench.wrk_url(f"http://127.0.0.1:{server.port}/1k.bin", script=script)
    png, plb = paced["nginx proxy"], paced[lbcdn.name]
    print()
    print(f"  same load: each of {bench.connections} connections waits 0-{2 * delay_ms} ms "
          f"(random) between requests")
    print(table(["server", "req/s", "p50 ms", "p99 ms", "p99 - nginx ms", "errors"],
                [[name, f"{r.rps:.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
                  f"{r.p99_ms - png.p99_ms:+.2f}", str(r.errors)] for name, r in paced.items()]))

    ratio = lb.rps / ng.rps
    extra = plb.p99_ms - png.p99_ms
    clean = lb.errors == 0 and plb.errors == 0
    print()
    print(f"  {verdict(ratio >= TARGET_RATIO and clean)}  req/s lbcdn/nginx = {ratio:.2f}x "
          f"(target >= {TARGET_RATIO:.1f}x{', and no errors' if not clean else ''})")
    print(f"  {verdict(extra <= TARGET_P99_EXTRA_MS and clean)}  p99 lbcdn - nginx at the same "
          f"load ({plb.rps:.0f} and {png.rps:.0f} req/s) = {extra:+.2f} ms "
          f"(target <= +{TARGET_P99_EXTRA_MS:g} ms)")
    if not clean:
        print(f"  lbcdn answered {lb.non_2xx} non-2xx responses and had {lb.socket_errors} "
              f"socket errors: its numbers do not count")

    bench.results["proxy"] = {
        name: {"rps": r.rps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors,
               "all_rps": [x.rps for x in runs[name]]}
        for name, r in best.items()
    } | {"ratio": ratio, "p99_extra_ms": extra, "baseline_rps": base.rps,
         "same_load": {"delay_ms": delay_ms} | {
             name: {"rps": r.rps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors}
             for name, r in paced.items()},
         "pass": ratio >= TARGET_RATIO and extra <= TARGET_P99_EXTRA_MS and clean}


def _median_run(rs: list[WrkResult]) -> WrkResult:
    return median_by(rs, lambda r: r.rps)
