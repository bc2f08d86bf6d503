"""Scenario `bucket`: the bucket origin's large-object throughput.

GET: one 256 MiB object, served by nginx (1 worker, sendfile on) and by lbcdn's bucket origin
(`python -m lbcdn.bucket`, one process, anonymous public-read GET), the very same file (a hard
link, so both read the same page cache). Each server is pinned to the server CPU, curl to the
client CPU; downloads alternate between the two, the median MB/s of each counts. Target (issue
4): lbcdn >= 0.8x nginx.

PUT: the same 256 MiB through boto3 with default settings: one put_object (a single signed PUT
whose payload is hashed while it streams) and upload_file (multipart, boto3's default transfer
config). Reported in MB/s; no target.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from harness import Bench, BenchError, free_port, need_tools, verdict

SIZE = 256 << 20
TARGET = 0.8
ACCESS = ("AKIDBENCH", "bench-secret-key")


def _write_object(path: str) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(SIZE >> 20):
            f.write(block[i % 7:] + block[:i % 7])


def _download_mbps(bench: Bench, url: str) -> float:
    cmd = ["taskset", "-c", bench.client_cpu, "curl", "-sS", "-f", "-o", "/dev/null",
           "-w", "%{size_download} %{time_total}", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise BenchError(f"curl {url} failed: {out.stderr}")
    size, secs = out.stdout.split()
    if int(size) != SIZE:
        raise BenchError(f"curl {url}: got {size} bytes, expected {SIZE}")
    return SIZE / float(secs) / 1e6


def run(bench: Bench) -> None:
    need_tools("nginx", "curl", "taskset")
    www = bench.tmp / "bucket-www"
    root = bench.tmp / "bucket-root"
    (root / "bench").mkdir(parents=True)
    www.mkdir(mode=0o755)
    obj = www / "obj.bin"
    _write_object(str(obj))
    os.chmod(obj, 0o644)
    os.link(obj, root / "bench" / "obj.bin")
    (www / "ready.txt").write_bytes(b"ok\n")
    (root / "bench" / "ready.txt").write_bytes(b"ok\n")

    nginx_port = free_port()
    nginx = bench._nginx("nginx-static", bench._dir("nginx-static"), f"""
    sendfile on;
    server {{
        listen 127.0.0.1:{nginx_port};
        root {www};
        location / {{ }}
    }}""", nginx_port, path="/ready.txt")

    port = free_port()
    cfg = bench.tmp / "bucket.yaml"
    cfg.write_text(f"""buckets:
  root: {root}
  port: {port}
  users:
    bench: {{access_key_id: {ACCESS[0]}, secret_access_key: {ACCESS[1]}, admin: true}}
  buckets:
    bench: {{public_read: true}}
""")
    lbcdn = bench.start("lbcdn-bucket", [sys.executable, "-m", "lbcdn.bucket", str(cfg)], port,
                        path="/bench/ready.txt")
    nginx_url = f"http://127.0.0.1:{nginx_port}/obj.bin"
    lbcdn_url = f"http://127.0.0.1:{port}/bench/obj.bin"
    # the first request computes the hand-dropped file's ETag once; warm both page caches
    _download_mbps(bench, lbcdn_url)
    _download_mbps(bench, nginx_url)

    runs: dict[str, list[float]] = {"nginx": [], "lbcdn": []}
    deadline = time.monotonic() + max(bench.duration_s, 4) * 2 * bench.rounds
    rounds = 0
    while rounds < 3 * bench.rounds or (time.monotonic() < deadline and rounds < 20):
        runs["nginx"].append(_download_mbps(bench, nginx_url))
        runs["lbcdn"].append(_download_mbps(bench, lbcdn_url))
        rounds += 1
    med = {k: statistics.median(v) for k, v in runs.items()}
    ratio = med["lbcdn"] / med["nginx"]
    print(f"  GET 256 MiB, {rounds} downloads each (servers on cpu {bench.server_cpu}, curl on "
          f"cpu {bench.client_cpu}):")
    print(f"    nginx (sendfile)     {med['nginx']:8.0f} MB/s")
    print(f"    lbcdn bucket origin  {med['lbcdn']:8.0f} MB/s   {ratio:.2f}x nginx")
    print(f"  {verdict(ratio >= TARGET)}  GET throughput {ratio:.2f}x nginx (target >= "
          f"{TARGET:g}x)")

    put = _put_mbps(port, obj)
    print(f"  PUT 256 MiB via boto3: put_object {put['put_object']:.0f} MB/s, "
          f"upload_file (multipart) {put['upload_file']:.0f} MB/s")
    bench.results["bucket"] = {"get_mbps": med, "get_ratio": ratio,
                               "get_pass": ratio >= TARGET, "put_mbps": put,
                               "rss_kib_after": _rss(lbcdn.pid)}


def _rss(pid: int) -> int:
    from harness import rss_kib
    return rss_kib(pid)


def _put_mbps(port: int, obj: object) -> dict[str, float]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}",
                      aws_access_key_id=ACCESS[0], aws_secret_access_key=ACCESS[1],
                      region_name="us-east-1")
    out: dict[str, float] = {}
    t = time.monotonic()
    with open(str(obj), "rb") as f:
        s3.put_object(Bucket="bench", Key="put.bin", Body=f)
    out["put_object"] = SIZE / (time.monotonic() - t) / 1e6
    t = time.monotonic()
    s3.upload_file(str(obj), "bench", "upload.bin")
    out["upload_file"] = SIZE / (time.monotonic() - t) / 1e6
    return out
