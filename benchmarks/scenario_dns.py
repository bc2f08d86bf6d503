"""Scenario `dns`: authoritative UDP answers, lbcdn against Knot DNS, side by side.

One zone file and one query file. Knot DNS (1 UDP worker, 1 background worker) serves the zone
as a primary; lbcdn's DnsServer serves the same file from benchmarks/dns_runner.py (the DNS data
plane alone, one process). Both are pinned to the server CPU, dnsperf to the client CPU. Each
gets a warm-up, then `dnsperf -l <duration> -q 256` (as many queries in flight as it can keep);
with --rounds N the two are measured N times, interleaved, and the median round is reported.
Then lbcdn gets a run capped at half its measured peak (`-Q`), which must lose nothing.
Two query mixes, each measured that way: "mixed" (what a busy server sees: the apex, a name
whose address set lbcdn rotates per answer, CNAMEs, negative answers, mixed case) and
"prepared" (only fixed answers, each one exact-table hit in the fast path: the design's
ceiling). Every answer of both mixes is served from prepared bytes; the fast-path counters
printed at the end say so ("uncacheable" counts answers the engine computed per query).
Targets (issue 6): lbcdn qps >= 0.9x Knot's; no lost queries at half of lbcdn's peak rate.
Then "signed" (issue 18): both servers sign the zone (Knot with automatic signing, a CSK
ECDSAP256SHA256 like lbcdn's online signing) and dnsperf sets the DO bit (-D) on the mixed
query file; target lbcdn qps >= 0.8x Knot's (SIGNED_TARGET_RATIO).
Each run also reports the server's CPU time per answered query: when other work shares the
server CPU, qps measures the share a server got as much as the server, while CPU per query
does not; the ratio of the two servers' CPU per query is printed beside the qps ratio.
"""

from __future__ import annotations

import re
import socket
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import statistics

from harness import (Bench, BenchError, Server, cpu_seconds, free_port, median_by, need_tools,
                     run_tool, table, verdict)

TARGET_RATIO = 0.9
SIGNED_TARGET_RATIO = 0.8
ORIGIN = "example.com"

ZONE = """$ORIGIN example.com.
$TTL 300
@       3600 IN SOA ns1.example.com. hostmaster.example.com. 2026112501 7200 900 1209600 300
@       3600 IN NS  ns1
@       3600 IN NS  ns2
ns1          IN A    192.0.2.53
ns2          IN A    192.0.2.54
@            IN A    192.0.2.10
@            IN MX   10 mail
mail         IN A    192.0.2.25
www          IN A    192.0.2.1
www          IN AAAA 2001:db8::1
lb           IN A    192.0.2.11
lb           IN A    192.0.2.12
api          IN A    192.0.2.3
static       IN CNAME www
txt          IN TXT  "v=spf1 -all"
_sip._tcp    IN SRV  10 60 5060 sip
sip          IN A    192.0.2.80
"""

# "mixed": what a busy authoritative server sees: hot positive answers, the apex (SOA, MX,
# NS), a name with several addresses (rotated per answer by lbcdn, as Route 53 does: its
# rotations are prepared and sent in turn), CNAMEs, negative answers, a client spelling names
# in mixed case.
QUERIES = """www.example.com A
www.example.com AAAA
api.example.com A
static.example.com A
example.com MX
mail.example.com A
lb.example.com A
txt.example.com TXT
example.com NS
_sip._tcp.example.com SRV
nothere.example.com A
www.example.com MX
WWW.Example.com A
example.com SOA
"""

# "prepared": only names with one fixed answer (no rotation, not the apex): the ceiling of
# the prepared-answer design, for comparison with the mixed run.
QUERIES_PREPARED = """www.example.com A
www.example.com AAAA
api.example.com A
static.example.com A
mail.example.com A
txt.example.com TXT
_sip._tcp.example.com SRV
nothere.example.com A
www.example.com MX
WWW.Example.com A
"""


@dataclass
class PerfResult:
    qps: float
    sent: int
    completed: int
    lost: int
    avg_latency_ms: float
    raw: str
    cpu_us_per_query: float = field(default=float("nan"))  # the server's, during the run


def parse_dnsperf(out: str) -> PerfResult:
    def num(pattern: str) -> str:
        m = re.search(pattern, out)
        if not m:
            raise BenchError(f"unexpected dnsperf output (no {pattern!r}):\n{out}")
        return m.group(1)
    lat = re.search(r"Average Latency \(s\):\s+([\d.]+)", out)
    return PerfResult(qps=float(num(r"Queries per second:\s+([\d.]+)")),
                      sent=int(num(r"Queries sent:\s+(\d+)")),
                      completed=int(num(r"Queries completed:\s+(\d+)")),
                      lost=int(num(r"Queries lost:\s+(\d+)")),
                      avg_latency_ms=float(lat.group(1)) * 1000 if lat else float("nan"),
                      raw=out)


def dnsperf(bench: Bench, port: int, queries: Path, duration_s: float,
            max_qps: float | None = None, do: bool = False) -> PerfResult:
    dur = max(1, round(duration_s))
    cmd = ["taskset", "-c", bench.client_cpu, "dnsperf", "-s", "127.0.0.1", "-p", str(port),
           "-d", str(queries), "-l", str(dur), "-q", "256", "-t", "2", "-b", "4096"]
    if max_qps is not None:
        cmd += ["-Q", str(int(max_qps))]
    if do:
        cmd += ["-D"]
    return parse_dnsperf(run_tool(cmd, dur + 60))


def dns_ready(port: int) -> bool:
    """One SOA query over UDP (stdlib only): True when any answer with our id comes back."""
    qid = 0x4C42
    qname = b"".join(bytes([len(p)]) + p.encode() for p in ORIGIN.split(".")) + b"\x00"
    wire = struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0) + qname + struct.pack("!HH", 6, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(wire, ("127.0.0.1", port))
            data = s.recv(4096)
        except OSError:
            return False
    return len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid and data[3] & 0x0F == 0


def start_dns(bench: Bench, name: str, cmd: list[str], port: int,
              timeout_s: float = 20.0) -> Server:
    """Bench.start, but ready means the server answers a DNS query."""
    return bench.start(name, cmd, port, timeout_s=timeout_s, ready=dns_ready)


def knot(bench: Bench, zone_file: Path, signed: bool = False) -> Server:
    need_tools("knotd")
    d = bench.tmp / ("knot-signed" if signed else "knot")
    policy = ("policy:\n  - id: csk\n    algorithm: ecdsap256sha256\n"
              "    single-type-signing: on\n" if signed else "")
    signing = "    dnssec-signing: on\n    dnssec-policy: csk\n" if signed else ""
    for sub in ("run", "db"):
        (d / sub).mkdir(parents=True)
    port = free_port()
    conf = d / "knot.conf"
    conf.write_text(f"""# generated by benchmarks/scenario_dns.py
server:
    rundir: "{d}/run"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: warning
database:
    storage: "{d}/db"
{policy}template:
  - id: default
    storage: "{zone_file.parent}"
    zonefile-sync: -1
    journal-content: none
zone:
  - domain: {ORIGIN}
    file: "{zone_file}"
{signing}""")
    return start_dns(bench, "knot", ["knotd", "-c", str(conf)], port)


def lbcdn_dns(bench: Bench, zone_file: Path, signed: bool = False) -> Server:
    port = free_port()
    runner = Path(__file__).resolve().parent / "dns_runner.py"
    lbcdn_python = Path(bench.lbcdn_cmd[0]).parent / "python"
    python = str(lbcdn_python) if lbcdn_python.exists() else sys.executable
    keys = ["--dnssec", str(bench.tmp / "lbcdn-keys")] if signed else []
    return start_dns(bench, "lbcdn", [python, str(runner), "--zone", str(zone_file),
                                      "--origin", ORIGIN, "--port", str(port), *keys], port)


def run(bench: Bench) -> None:
    need_tools("dnsperf", "taskset", "knotd")
    if bench.stand_in:
        raise BenchError("the dns scenario has no stand-in (use Knot twice by hand)")
    zone_file = bench.tmp / "zones" / f"{ORIGIN}.zone"
    zone_file.parent.mkdir(mode=0o755)
    zone_file.write_text(ZONE)
    mixes = {"mixed": bench.tmp / "queries-mixed.txt",
             "prepared": bench.tmp / "queries-prepared.txt"}
    mixes["mixed"].write_text(QUERIES)
    mixes["prepared"].write_text(QUERIES_PREPARED)

    kn = knot(bench, zone_file)
    lb = lbcdn_dns(bench, zone_file)
    subjects = [("knot", kn), ("lbcdn", lb)]
    print(f"  knot :{kn.port}  lbcdn :{lb.port}  (servers on cpu {bench.server_cpu}, dnsperf "
          f"on cpu {bench.client_cpu}, -q 256 -l {bench.duration_s:g}s x{bench.rounds})")

    results: dict[str, object] = {}
    passed = True
    for mix, queries in mixes.items():
        results[mix] = _measure(bench, mix, queries, subjects, TARGET_RATIO, do=False)
        passed = passed and bool(results[mix]["pass"])  # type: ignore[index]
    bench.stop(lb)  # its last log line: fast-path counters for the whole run
    stats = lb.log_tail(1)
    print(f"  lbcdn fast path over the whole run: {stats}")
    bench.stop(kn)

    kn = knot(bench, zone_file, signed=True)
    lb = lbcdn_dns(bench, zone_file, signed=True)
    print(f"  signed: knot :{kn.port}  lbcdn :{lb.port}  (DO bit on every query)")
    results["signed"] = _measure(bench, "signed", mixes["mixed"], [("knot", kn), ("lbcdn", lb)],
                                 SIGNED_TARGET_RATIO, do=True)
    passed = passed and bool(results["signed"]["pass"])  # type: ignore[index]
    bench.stop(lb)
    signed_stats = lb.log_tail(1)
    print(f"  lbcdn fast path over the signed run: {signed_stats}")
    bench.results["dns"] = results | {"lbcdn_fastpath": stats,
                                      "lbcdn_fastpath_signed": signed_stats, "pass": passed}


def _measure(bench: Bench, mix: str, queries: Path, subjects: list[tuple[str, Server]],
             target: float, *, do: bool) -> dict[str, object]:
    """Rounds of both servers on one query file, the half-rate run, the verdicts; the
    results entry of the mix."""
    lb = dict(subjects)["lbcdn"]
    runs: dict[str, list[PerfResult]] = {name: [] for name, _ in subjects}
    for r in range(bench.rounds):
        for name, server in subjects:
            if bench.warmup_s > 0:
                dnsperf(bench, server.port, queries, bench.warmup_s, do=do)
            cpu0 = cpu_seconds(server.pid)
            res = dnsperf(bench, server.port, queries, bench.duration_s, do=do)
            res.cpu_us_per_query = ((cpu_seconds(server.pid) - cpu0)
                                    / max(res.completed, 1) * 1e6)
            runs[name].append(res)
            print(f"  {mix} round {r + 1}: {name:<5} {res.qps:>10.0f} qps  "
                  f"avg {res.avg_latency_ms:.2f} ms  lost {res.lost}/{res.sent}  "
                  f"cpu {res.cpu_us_per_query:.2f} us/query")
        # The two runs of one round are seconds apart: on a shared machine their ratio
        # drifts less than the ratio of two medians taken from different rounds.
        kr, lr = runs["knot"][-1], runs["lbcdn"][-1]
        print(f"  {mix} round {r + 1}: lbcdn/knot {lr.qps / max(kr.qps, 1):.2f}x qps, "
              f"{_cpu_ratio(kr, lr):.2f}x by cpu per query")
    best = {name: _median(rs) for name, rs in runs.items()}
    k, l = best["knot"], best["lbcdn"]
    if k.qps <= 0:
        raise BenchError("knot answered nothing")
    half = l.qps / 2
    calm = dnsperf(bench, lb.port, queries, bench.duration_s, max_qps=half, do=do)
    print()
    print(table(["server", "qps", "avg ms", "lost", "vs knot"],
                [[n, f"{x.qps:.0f}", f"{x.avg_latency_ms:.2f}", str(x.lost),
                  f"{x.qps / k.qps:.2f}x"] for n, x in best.items()]))
    ratio = l.qps / k.qps
    ok = ratio >= target and calm.lost == 0
    print()
    print(f"  {verdict(ratio >= target)}  {mix}: qps lbcdn/knot = {ratio:.2f}x "
          f"(target >= {target:.1f}x)")
    print(f"  {verdict(calm.lost == 0)}  {mix}: lbcdn at half its peak ({half:.0f} qps "
          f"asked, {calm.qps:.0f} answered): lost {calm.lost} of {calm.sent} (target 0)")
    cpu_ratio = statistics.median(_cpu_ratio(a, b) for a, b in zip(runs["knot"],
                                                                    runs["lbcdn"]))
    print(f"  note  {mix}: knot cpu per query / lbcdn cpu per query = {cpu_ratio:.2f}x "
          f"(median of rounds; the qps ratio two idle cores would give)")
    print()
    return {
        name: {"qps": x.qps, "avg_latency_ms": x.avg_latency_ms, "lost": x.lost,
               "all_qps": [y.qps for y in runs[name]],
               "all_cpu_us_per_query": [y.cpu_us_per_query for y in runs[name]]}
        for name, x in best.items()
    } | {"ratio": ratio, "round_ratios": [b.qps / max(a.qps, 1) for a, b in
                                           zip(runs["knot"], runs["lbcdn"])],
         "cpu_ratio": cpu_ratio, "half_rate_qps": half, "half_rate_lost": calm.lost,
         "pass": ok}


def _median(rs: list[PerfResult]) -> PerfResult:
    return median_by(rs, lambda r: r.qps)


def _cpu_ratio(knot: PerfResult, lbcdn: PerfResult) -> float:
    """knot's CPU per query over lbcdn's: above 1 when lbcdn spends less per answer."""
    return knot.cpu_us_per_query / lbcdn.cpu_us_per_query if lbcdn.cpu_us_per_query else 0.0
