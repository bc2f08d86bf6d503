"""Scenario `rules`: what ALB-style conditions (issue 20) cost the router.

route_matches.py, pinned to --server-cpu: µs to route one request (its RequestFacts made, then
Router.match, as the exchange does) with 10 and 1,000 rules, host and path only and with mixed
header, query, method and source-IP conditions; in one process, no sockets, interleaved
rounds, medians. Target: 1,000 rules with mixed conditions cost at most 2 µs per request more
than 10. The host and path-only rows show that hot path beside it (the `proxy` scenario's
ratio against nginx is the end-to-end check). Without sockets there is nothing for nginx to
stand in for: --stand-in runs it all the same.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harness import Bench, BenchError, need_tools, table, verdict

HERE = Path(__file__).resolve().parent
MAX_EXTRA_US = 2.0


def run(bench: Bench) -> None:
    need_tools("taskset")
    cmd = ["taskset", "-c", bench.server_cpu, sys.executable, str(HERE / "route_matches.py"),
           "--rounds", str(max(bench.rounds, 5)), "--json"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise BenchError("route_matches.py did not finish in 600 s") from e
    if proc.returncode != 0:
        raise BenchError(f"route_matches.py failed:\n{proc.stderr}")
    rows = json.loads(proc.stdout)
    us = {(bool(r["mixed"]), int(r["rules"]) >= 1000): float(r["us_per_request"]) for r in rows}
    extra = us[(True, True)] - us[(True, False)]
    passed = extra <= MAX_EXTRA_US
    print(f"  µs to route one request, one process on cpu {bench.server_cpu}, no sockets")
    print(table(["rules", "10", "1,000", "extra"],
                [[kind, f"{us[(m, False)]:.2f}", f"{us[(m, True)]:.2f}",
                  f"{us[(m, True)] - us[(m, False)]:+.2f}"]
                 for kind, m in (("host + path only", False), ("mixed conditions", True))]))
    print(f"  1,000 mixed rules add {extra:+.2f} µs per request (target <= {MAX_EXTRA_US}): "
          f"{verdict(passed)}")
    bench.results["rules"] = {"rows": rows, "extra_us": extra, "pass": passed}
