"""Side-by-side benchmarks of lbcdn against nginx (and later Knot DNS). Run by `make bench`.

    python benchmarks/run.py [--duration S] [--rounds N] [scenario ...]   (default: all)
    python benchmarks/run.py --list

A report, not a test: it prints tables and PASS/FAIL per target and exits 0 whatever the
results; it exits 1 only when a scenario could not run (a tool missing, a server that did not
start). Results also go to benchmarks/results/<time>.json (not committed).

A new scenario is a module with `run(bench: Bench) -> None` added to SCENARIOS below; it starts
its servers through `bench` (which stops them at the end) and stores its numbers in
`bench.results[name]`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scenario_dns  # noqa: E402
import scenario_bucket  # noqa: E402
import scenario_cache  # noqa: E402
import scenario_h2  # noqa: E402
import scenario_idle  # noqa: E402
import scenario_pools  # noqa: E402
import scenario_proxy  # noqa: E402
import scenario_reload  # noqa: E402
import scenario_rules  # noqa: E402
import scenario_s3  # noqa: E402
import scenario_tls  # noqa: E402
import scenario_workers  # noqa: E402
from harness import REPO, Bench, BenchError, Scenario  # noqa: E402

SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "proxy": ("pass-through proxy req/s and latency: backend, nginx proxy, lbcdn (wrk)",
              scenario_proxy.run),
    "idle": ("RSS added by 10,000 idle keep-alive client connections to lbcdn",
             scenario_idle.run),
    "bucket": ("bucket origin: 256 MiB GET vs nginx (sendfile), 256 MiB PUT via boto3", scenario_bucket.run),
    "s3": ("S3 API 1 KiB GET and PUT ops/s, 16 clients (wrk, presigned URLs): lbcdn vs moto "
           "server and nginx (static GET, WebDAV PUT)", scenario_s3.run),
    "dns": ("authoritative UDP qps: Knot DNS (1 UDP worker) and lbcdn DnsServer (dnsperf)",
            scenario_dns.run),
    "cache": ("edge cache vs nginx proxy_cache: 1 KiB hit req/s, 64 MiB hit throughput, "
              "1,000 cold requests -> 1 origin request, RSS with a full 1 GiB memory tier",
              scenario_cache.run),
    "cache-workers": ("edge cache with 2 workers sharing one cache vs nginx worker_processes 2 "
                      "proxy_cache: 1 KiB hit req/s, 1,000 cold requests -> 1 origin request",
                      scenario_cache.run_workers),
    "cache-signed": ("edge cache 1 KiB hit req/s with signed-URL checking off and on vs nginx "
                     "proxy_cache", scenario_cache.run_signed),
    "tls": ("HTTPS: keep-alive req/s, resumed and full TLS handshakes/s, lbcdn vs nginx",
            scenario_tls.run),
    "h2": ("HTTP/2 (h2c) req/s and cpu us/req: nginx http2, lbcdn 1 and 2 workers, and lbcdn "
           "over HTTP/1.1 (h2load)", scenario_h2.run),
    "workers": ("req/s with lbcdn --workers 1 and 2 vs nginx worker_processes 1 and 2",
                scenario_workers.run),
    "reload": ("500 req/s while lbcdn reloads 5 times (SIGHUP), slow requests in flight: "
               "failed / reset", scenario_reload.run),
    "pools": ("1,000 health-checked targets: cpu; req/s per balancing algorithm; us per pick",
              scenario_pools.run),
    "rules": ("us to route a request through 10 and 1,000 rules with mixed conditions",
              scenario_rules.run),
}


def default_lbcdn_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "lbcdn"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lbcdn"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scenarios", nargs="*", metavar="scenario",
                   help=f"which to run (default: all): {', '.join(SCENARIOS)}")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--duration", type=float, default=float(os.environ.get("BENCH_DURATION", 10)),
                   help="seconds per measured wrk run (default 10, env BENCH_DURATION)")
    p.add_argument("--warmup", type=float, default=float(os.environ.get("BENCH_WARMUP", 2)),
                   help="seconds of warm-up before each measured run (default 2; 0 = none)")
    p.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 1)),
                   help="measure each server N times, interleaved; report the median (default 1)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--server-cpu", default="0", help="taskset CPU list for servers (default 0)")
    p.add_argument("--client-cpu", default="1", help="taskset CPU list for wrk (default 1)")
    p.add_argument("--lbcdn", default=None,
                   help="command that runs lbcdn (default: the lbcdn next to this python)")
    p.add_argument("--stand-in", action="store_true",
                   help="run an nginx proxy in lbcdn's place (to check the harness itself)")
    p.add_argument("--keep-tmp", action="store_true", help="keep configs and logs")
    args = p.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    if args.duration <= 0 or args.rounds < 1 or args.connections < 1:
        p.error("--duration, --rounds and --connections must be positive")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM/SIGHUP unwind like Ctrl-C so every `finally` stops its servers.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.list:
        for name, (desc, _) in SCENARIOS.items():
            print(f"{name:<8} {desc}")
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if (os.cpu_count() or 1) < 2:
        print("warning: fewer than 2 CPUs; servers and wrk share a core", file=sys.stderr)

    names = args.scenarios or list(SCENARIOS)
    lbcdn_cmd = args.lbcdn.split() if args.lbcdn else default_lbcdn_cmd()
    results: dict[str, object] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(),
        "duration_s": args.duration, "rounds": args.rounds, "connections": args.connections,
        "stand_in": args.stand_in,
    }
    failed: list[str] = []
    for name in names:
        print(f"== {name}: {SCENARIOS[name][0]}")
        bench = Bench(duration_s=args.duration, warmup_s=args.warmup,
                      connections=args.connections, rounds=args.rounds,
                      server_cpu=args.server_cpu, client_cpu=args.client_cpu,
                      lbcdn_cmd=lbcdn_cmd, stand_in=args.stand_in, keep_tmp=args.keep_tmp)
        try:
            SCENARIOS[name][1](bench)
        except BenchError as e:
            print(f"  ERROR: {name} could not run: {e}")
            failed.append(name)
        except KeyboardInterrupt:
            print("  interrupted; stopping servers", file=sys.stderr)
            bench.close()
            return 130
        except Exception:
            traceback.print_exc()
            failed.append(name)
        finally:
            bench.close()
        results.update(bench.results)
        print()

    out_dir = REPO / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / time.strftime("%Y%m%d-%H%M%S.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {out.relative_to(REPO)}")
    if failed:
        print(f"could not run: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
