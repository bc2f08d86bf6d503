"""Scenario `pools`: what pools (issue 3) cost: health checks, balancing policies, picks.

1. Health checks. A helper (pool_targets.py, pinned to --client-cpu so it does not compete
   with lbcdn) listens on 1,000 ports of 127.0.0.1. lbcdn (`serve --workers 1`, pinned to
   --server-cpu) has one pool of those 1,000 targets with `health: {interval_s: 1,
   timeout_s: 0.5}` and takes no traffic. Once every target is healthy (admin API) and one
   more interval has passed, lbcdn's CPU time (utime + stime of it and any children, from
   /proc/PID/stat) is read over --duration seconds, once with `reuse_connection: false` (a new
   connection per check, as ALB does) and once with `true` (the default). Target: < 10% of
   one core. Checks per second come from its /metrics, read outside the window.
2. Balancing. Two nginx backends (1 KiB file) and three lbcdn daemons whose pool of those two
   has `balance.algorithm` round_robin, least_outstanding_requests and consistent_hash
   (hash_key client_ip), health checks off so only the policy differs. wrk -c64, interleaved
   rounds (median), all in the same run. Target: req/s of each >= 0.95x round robin (being
   faster is fine). Every wrk connection comes from 127.0.0.1, so consistent_hash sends all
   of them to one backend; both backends share one core, so that costs the same backend CPU.
3. Pick cost. pool_picks.py, pinned to --server-cpu: µs per pick of every policy at 10 and
   10,000 targets, in one process, no sockets. Target: going from 10 to 10,000 targets adds
   less than 5% of lbcdn's CPU time per proxied request (measured in part 2 of the same run),
   i.e. less than the noise of a req/s measurement.

With --stand-in, part 2 runs nginx proxies (round robin, least_conn, hash $remote_addr
consistent) in lbcdn's place, and part 1 is skipped (it needs lbcdn's health checker).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import (Bench, BenchError, Server, WrkResult, cpu_seconds, free_port, interleave,
                     lbcdn_yaml, median_by, need_tools, nginx_proxy_block, raise_nofile, table,
                     verdict)

HERE = Path(__file__).resolve().parent

HEALTH_TARGETS = 1000
HEALTH_INTERVAL_S = 1.0
HEALTH_TIMEOUT_S = 0.5
HEALTH_TARGET_SHARE = 0.10
HEALTHY_DEADLINE_S = 30.0

ALGORITHMS = ("round_robin", "least_outstanding_requests", "consistent_hash")
NGINX_BALANCE = {"round_robin": "", "least_outstanding_requests": "least_conn;",
                 "consistent_hash": "hash $remote_addr consistent;"}
POLICY_MIN_RATIO = 0.95

PICKS = 100_000
PICK_MAX_SHARE = 0.05


def run(bench: Bench) -> None:
    need_tools("nginx", "wrk", "taskset")
    raise_nofile(65536)  # 1,000 listening sockets in the helper, 1,000 kept checks in lbcdn
    health = _health_part(bench)
    policies = _policy_part(bench)
    picks = _pick_part(bench, policies["round_robin"].cpu_us_per_request)
    passes = [*(h.passed for h in health.values()), *(p.passed for p in policies.values()),
              *(c.passed for c in picks.values())]
    bench.results["pools"] = {
        "health": {k: asdict(v) for k, v in health.items()},
        "policies": {k: asdict(v) for k, v in policies.items()},
        "picks": {k: asdict(v) for k, v in picks.items()},
        "pass": all(passes)}


# --------------------------------------------------------------------------- 1. health checks

@dataclass(frozen=True)
class CheckCost:
    cpu_share: float        # of one core
    cpu_s: float
    window_s: float
    checks_per_s: float
    cpu_us_per_check: float
    healthy_after: int
    failed_checks: int
    passed: bool


def _health_part(bench: Bench) -> dict[str, CheckCost]:
    print(f"  1. health checks: {HEALTH_TARGETS} targets, interval {HEALTH_INTERVAL_S:g} s, "
          f"timeout {HEALTH_TIMEOUT_S:g} s, no traffic (lbcdn on cpu {bench.server_cpu}, "
          f"targets on cpu {bench.client_cpu}, window {bench.duration_s:g} s)")
    if bench.stand_in:
        print("     skipped: --stand-in has no health checker to measure")
        return {}
    helper, ports = _start_targets(bench, HEALTH_TARGETS)
    out: dict[str, CheckCost] = {}
    rows = []
    for reuse in (False, True):
        name = f"reuse_connection={str(reuse).lower()}"
        res = _measure_checks(bench, ports, reuse)
        out[name] = res
        rows.append([name, f"{res.cpu_share * 100:.1f}%", f"{res.checks_per_s:.0f}",
                     f"{res.cpu_us_per_check:.0f}", str(res.healthy_after),
                     str(res.failed_checks)])
    bench.stop(helper)
    print()
    print(table(["health checks", "cpu of one core", "checks/s", "cpu us/check",
                 "healthy after", "failed checks"], rows))
    print()
    for name, res in out.items():
        print(f"  {verdict(res.passed)}  {name}: lbcdn uses {res.cpu_share * 100:.1f}% of one "
              f"core for {HEALTH_TARGETS} targets at {HEALTH_INTERVAL_S:g} s (target < "
              f"{HEALTH_TARGET_SHARE * 100:g}% with every target healthy)")
    print()
    return out


def _start_targets(bench: Bench, count: int) -> tuple[Server, list[int]]:
    """The helper answering every target, pinned to the client CPU, stopped by bench."""
    d = bench.tmp / "targets"
    d.mkdir(mode=0o755)
    ports_file, log = d / "ports.json", d / "targets.log"
    cmd = [sys.executable, str(HERE / "pool_targets.py"), "--count", str(count),
           "--ports-file", str(ports_file)]
    server = bench.spawn("targets", cmd, 0, cpu=bench.client_cpu, log=log)
    deadline = time.monotonic() + 20
    while not ports_file.exists():
        if server.proc.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"the targets helper did not start:\n{server.log_tail()}")
        time.sleep(0.05)
    ports: list[int] = json.loads(ports_file.read_text())
    server.port = ports[0]
    bench.wait_ready(server, "/", 10)
    return server, ports


def _measure_checks(bench: Bench, ports: list[int], reuse: bool) -> CheckCost:
    name = f"lbcdn-health-reuse-{str(reuse).lower()}"
    admin = free_port()
    targets = "\n".join(f'      - "127.0.0.1:{p}"' for p in ports)
    pool = f"""  many:
    targets:
{targets}
    health:
      interval_s: {HEALTH_INTERVAL_S}
      timeout_s: {HEALTH_TIMEOUT_S}
      reuse_connection: {str(reuse).lower()}
"""
    server = _lbcdn(bench, name, pool, admin_port=admin)
    try:
        states = _wait_all_healthy(admin, len(ports), server)
        time.sleep(HEALTH_INTERVAL_S)  # one more round so first-check work is over
        checks0 = _checks_total(admin)
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        time.sleep(bench.duration_s)
        cpu1, t1 = cpu_seconds(server.pid), time.monotonic()
        checks1 = _checks_total(admin)
        after = _pool_states(admin)
    finally:
        bench.stop(server)
    wall, cpu = t1 - t0, cpu1 - cpu0
    done = sum(checks1.values()) - sum(checks0.values())
    failed = done - (checks1.get("pass", 0) - checks0.get("pass", 0))
    healthy = after.get("healthy", 0)
    share = cpu / wall
    ok = share < HEALTH_TARGET_SHARE and healthy == len(ports)
    print(f"     {name}: all {states.get('healthy', 0)} healthy; cpu {cpu:.2f} s in {wall:.1f} s "
          f"= {share * 100:.1f}% of one core, {done / wall:.0f} checks/s, "
          f"{int(failed)} failed, states after {after}")
    return CheckCost(share, cpu, wall, done / wall, cpu / max(done, 1) * 1e6, healthy,
                     int(failed), ok)


def _admin_json(port: int, path: str) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        data: dict[str, object] = json.loads(r.read())
        return data


def _pool_states(admin: int) -> dict[str, int]:
    pools = _admin_json(admin, "/api/pools")["pools"]
    assert isinstance(pools, list)
    states: dict[str, int] = pools[0]["states"]
    return states


def _wait_all_healthy(admin: int, count: int, server: Server) -> dict[str, int]:
    deadline = time.monotonic() + HEALTHY_DEADLINE_S
    states: dict[str, int] = {}
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(f"{server.name} exited:\n{server.log_tail()}")
        states = _pool_states(admin)
        if states.get("healthy", 0) == count:
            return states
        time.sleep(0.5)
    raise BenchError(f"{server.name}: not every target healthy after {HEALTHY_DEADLINE_S:g} s: "
                     f"{states}\n{server.log_tail()}")


_CHECKS = re.compile(r'^lbcdn_health_checks_total\{([^}]*)\}\s+([0-9.e+]+)$', re.MULTILINE)


def _checks_total(admin: int) -> dict[str, float]:
    """lbcdn_health_checks_total summed by outcome."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for labels, value in _CHECKS.findall(text):
        m = re.search(r'outcome="([^"]*)"', labels)
        outcome = m.group(1) if m else "?"
        out[outcome] = out.get(outcome, 0.0) + float(value)
    return out


# --------------------------------------------------------------------------- 2. policies

@dataclass(frozen=True)
class PolicyRun:
    rps: float
    ratio: float            # req/s over round robin's
    cpu_us_per_request: float
    p99_ms: float
    errors: int
    all_rps: list[float]
    passed: bool


def _policy_part(bench: Bench) -> dict[str, PolicyRun]:
    b1, b2 = bench.nginx_backend("backend-1"), bench.nginx_backend("backend-2")
    daemons: list[tuple[str, Server]] = []
    for algo in ALGORITHMS:
        if bench.stand_in:
            daemons.append((algo, _nginx_balancer(bench, algo, (b1.port, b2.port))))
            continue
        pool = f"""  backend:
    targets: ["127.0.0.1:{b1.port}", "127.0.0.1:{b2.port}"]
    max_idle_per_target: 64
    health:
      enabled: false
    balance:
      algorithm: {algo}
      hash_key: client_ip
"""
        daemons.append((algo, _lbcdn(bench, f"lbcdn-{algo}", pool, path="/1k.bin")))
    print(f"  2. balancing: backends :{b1.port} :{b2.port}; "
          + ", ".join(f"{a} :{s.port}" for a, s in daemons)
          + f" (cpu {bench.server_cpu}; wrk cpu {bench.client_cpu}, -c{bench.connections} "
          f"-d{bench.duration_s:g}s x{bench.rounds})")
    width = max(len(a) for a in ALGORITHMS)

    def show(r: int, algo: str, run: tuple[WrkResult, float]) -> str:
        res, cpu_us = run
        return (f"     round {r}: {algo:<{width}} {res.rps:>9.0f} req/s  cpu {cpu_us:.0f} "
                f"us/req  p99 {res.p99_ms:.2f} ms  errors {res.errors}")
    runs = interleave(bench.rounds, daemons, bench.wrk_cpu, show)
    for _, server in daemons:
        bench.stop(server)
    best = {a: _median(rs) for a, rs in runs.items()}
    base = best["round_robin"][0]
    if base.rps <= 0:
        raise BenchError("round robin served nothing")
    out: dict[str, PolicyRun] = {}
    rows = []
    for algo, (res, cpu_us) in best.items():
        ratio = res.rps / base.rps
        ok = ratio >= POLICY_MIN_RATIO and res.errors == 0
        out[algo] = PolicyRun(res.rps, ratio, cpu_us, res.p99_ms, res.errors,
                              [x.rps for x, _ in runs[algo]], ok)
        rows.append([algo, f"{res.rps:.0f}", f"{ratio:.2f}x", f"{cpu_us:.0f}",
                     f"{res.p50_ms:.2f}", f"{res.p99_ms:.2f}", str(res.errors)])
    print()
    print(table(["algorithm", "req/s", "vs round robin", "cpu us/req", "p50 ms", "p99 ms",
                 "errors"], rows))
    print()
    for algo in ALGORITHMS[1:]:
        o = out[algo]
        print(f"  {verdict(o.passed)}  {algo}: {o.ratio:.3f}x round robin req/s "
              f"(target >= {POLICY_MIN_RATIO:g}x{', no errors' if o.errors else ''})")
    print()
    bench.stop(b2)
    bench.stop(b1)
    return out


def _nginx_balancer(bench: Bench, algo: str, ports: tuple[int, ...]) -> Server:
    port = free_port()
    block = nginx_proxy_block(port, ports, balance=NGINX_BALANCE[algo])
    name = f"{algo}(nginx-stand-in)"
    return bench._nginx(name, bench._dir(name), block, port)


def _median(rs: list[tuple[WrkResult, float]]) -> tuple[WrkResult, float]:
    return median_by(rs, lambda x: x[0].rps)


# --------------------------------------------------------------------------- 3. pick cost

@dataclass(frozen=True)
class PolicyPick:
    us_per_pick_10: float
    us_per_pick_10000: float
    extra_us: float         # what 10,000 targets add to a pick
    build_ms_10000: float
    passed: bool


def _pick_part(bench: Bench, request_cpu_us: float) -> dict[str, PolicyPick]:
    cmd = ["taskset", "-c", bench.server_cpu, sys.executable, str(HERE / "pool_picks.py"),
           "--picks", str(PICKS), "--json"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise BenchError("pool_picks.py did not finish in 300 s") from e
    if proc.returncode != 0:
        raise BenchError(f"pool_picks.py failed:\n{proc.stderr}")
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    per: dict[str, dict[int, dict[str, Any]]] = {}
    for row in rows:
        per.setdefault(str(row["policy"]), {})[int(row["targets"])] = row
    budget = PICK_MAX_SHARE * request_cpu_us
    print(f"  3. pick cost: {PICKS} picks per policy and size, one process on cpu "
          f"{bench.server_cpu}, no sockets")
    out: dict[str, PolicyPick] = {}
    table_rows = []
    for policy, sizes in per.items():
        small, large = sizes[10], sizes[10_000]
        us10, us10k = float(small["us_per_pick"]), float(large["us_per_pick"])
        extra = us10k - us10
        out[policy] = PolicyPick(us10, us10k, extra, float(large["build_ms"]), extra < budget)
        table_rows.append([policy, f"{us10:.2f}", f"{us10k:.2f}", f"{extra:+.2f}",
                           f"{float(large['build_ms']):.1f}", verdict(extra < budget)])
    print()
    print(table(["policy", "us/pick @10", "us/pick @10000", "10000 - 10", "build ms @10000",
                 "verdict"], table_rows))
    print()
    worst, cost = max(out.items(), key=lambda kv: kv[1].extra_us)
    print(f"  {verdict(all(o.passed for o in out.values()))}  10,000 targets add at most "
          f"{cost.extra_us:+.2f} us per pick ({worst}); target < {PICK_MAX_SHARE * 100:g}% of "
          f"the cpu per request of round robin in part 2 = {budget:.2f} us"
          f"{' (of the nginx stand-in, not lbcdn)' if bench.stand_in else ''}")
    return out


# --------------------------------------------------------------------------- lbcdn

def _lbcdn(bench: Bench, name: str, pool_yaml: str, *, admin_port: int = 0,
           path: str = "/") -> Server:
    """lbcdn serve --workers 1 with one listener forwarding everything to pool `pool_yaml`."""
    port = free_port()
    pool_name = pool_yaml.split(":", 1)[0].strip()
    cfg = bench.lbcdn_config(name, lbcdn_yaml(port, pool_yaml, forward=pool_name,
                                              listener_extra=["idle_timeout_s: 60"],
                                              admin_port=admin_port), echo=False)
    return bench.start(name, bench.lbcdn_serve_cmd(cfg, workers=1), port, path=path)
