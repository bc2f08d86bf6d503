"""Scenario `reload`: no request lost while lbcdn reloads its configuration (issue 7).

lbcdn (--workers 1) proxies to a `lbcdn demo-backend` and answers `/fixed` itself with a fixed
response "version N". A small asyncio client, pinned to --client-cpu, sends RATE req/s for
--duration seconds (at least MIN_DURATION_S) at fixed times - not as fast as it can, so that a
stall shows up as late or failed requests rather than as a lower rate. The requests alternate
between kept-alive connections and a new connection each, and between `/fixed` and a proxied
path. Meanwhile lbcdn is sent SIGHUP RELOADS times, each after the config file was replaced
(atomically) with one whose fixed response says the next version, and slow upstream requests
(`/delay/4000`, started every 2 s) are in flight across every reload.

Counted per request: ok (200 and the expected body), failed (another status, a timeout, a
refused connection, a malformed answer) and reset (the connection was reset or closed before the
whole response). A kept-alive connection that the server closed while it was idle (EOF already
received) is not reused - any HTTP client does that - and is only counted for information; one
closed just as a request is sent is a reset, however likely the race.
Target (issue 7): zero failed and zero reset, every slow request ok, and the last fixed response
says the last version (so the reloads really happened).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import Bench, Server, free_port, http_get, need_tools, table, verdict

RATE = 500                # requests per second, all kinds together
WORKERS = 1               # lbcdn serve --workers
RELOADS = 5
MIN_DURATION_S = 6.0      # room for 5 reloads with a slow request in flight across each
SLOW_MS = 4000
SLOW_EVERY_S = 2.0        # < SLOW_MS: a slow request is always in flight
REQUEST_TIMEOUT_S = 5.0
SLOW_TIMEOUT_S = SLOW_MS / 1000 + 10.0
FINAL_CHECK_S = 5.0       # how long the last version may take to show after the last SIGHUP


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)  # (kind, outcome) flattened below
    versions: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    late_max_ms: float = 0.0  # worst start delay behind schedule (a stalled client loop)
    idle_closed: int = 0      # kept connections the server closed while idle (not reused)
    server_close: int = 0     # responses with Connection: close on a kept connection
    kept_opened: int = 0      # connections opened for the keep-alive requests

    def add(self, kind: str, outcome: str, detail: str = "") -> None:
        self.counts[f"{kind}:{outcome}"] += 1
        self.counts[outcome] += 1
        if outcome != "ok" and outcome not in self.examples:
            self.examples[outcome] = f"{kind}: {detail}"

    def get(self, kind: str, outcome: str) -> int:
        return self.counts[f"{kind}:{outcome}"]


class Failed(Exception):
    """An answer that came but is wrong (status, body, framing)."""


def run(bench: Bench) -> None:
    need_tools("taskset")
    if bench.stand_in:
        print("  (no nginx stand-in here: the scenario is about lbcdn's own reload; lbcdn runs)")
    duration = max(bench.duration_s, MIN_DURATION_S)
    backend_port = free_port()
    backend = bench.start("demo-backend", [*bench.lbcdn_cmd, "demo-backend", "--port",
                                           str(backend_port), "--name", "demo", "--log-level",
                                           "warning"], backend_port, path="/")
    d = bench.tmp / "lbcdn"
    d.mkdir(mode=0o755)
    port = free_port()
    cfg = d / "lbcdn.yaml"
    _write_config(cfg, port, backend.port, 0)
    bench.check_lbcdn_config(cfg)
    lbcdn = bench.start("lbcdn", bench.lbcdn_serve_cmd(cfg, workers=WORKERS, log_level="info"),
                        port, path="/fixed")
    for _ in range(20):  # warm the upstream pool and code paths
        http_get(port, "/proxied")
    print(f"  demo backend :{backend.port}  lbcdn :{port} (--workers {WORKERS}, server cpu "
          f"{bench.server_cpu}); client on cpu {bench.client_cpu}: {RATE} req/s for "
          f"{duration:g}s, {RELOADS} SIGHUP reloads, /delay/{SLOW_MS} every {SLOW_EVERY_S:g}s")

    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(c) for c in _cpus(bench.client_cpu)})
    try:
        tally, reload_at, final = asyncio.run(_load(lbcdn, cfg, backend.port, duration))
    finally:
        os.sched_setaffinity(0, saved)

    failed_reloads = [ln for ln in lbcdn.log_tail(400).splitlines() if "reload failed" in ln]
    _report(bench, tally, reload_at, final, failed_reloads)


def _cpus(spec: str) -> list[str]:
    out: list[str] = []
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out += [str(i) for i in range(int(lo), int(hi) + 1)]
        else:
            out.append(part)
    return out


def _write_config(path: Path, port: int, backend_port: int, version: int) -> None:
    text = f"""# generated by benchmarks/scenario_reload.py (version {version})
listeners:
  - name: bench
    address: 127.0.0.1
    port: {port}
pools:
  demo:
    targets: ["127.0.0.1:{backend_port}"]
routes:
  - name: fixed
    match: {{path: /fixed}}
    fixed_response: {{status: 200, content_type: text/plain, body: "version {version}\\n"}}
  - name: all
    forward: demo
admin:
  port: 0
logging:
  level: info
  access_log:
    enabled: false
"""
    # lbcdn must never read a half-written file: write aside, then rename over.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the load

async def _load(lbcdn: Server, cfg: Path, backend_port: int,
                duration: float) -> tuple[Tally, list[float], str]:
    tally = Tally()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    tasks: set[asyncio.Task[None]] = set()
    port = lbcdn.port
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    step = (duration - 2.0) / RELOADS
    reload_times = [1.0 + i * step for i in range(RELOADS)]
    reload_at: list[float] = []

    def launch(coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def reloader() -> None:
        for i, at in enumerate(reload_times, start=1):
            await asyncio.sleep(max(0.0, t0 + at - loop.time()))
            _write_config(cfg, port, backend_port, i)
            os.kill(lbcdn.pid, signal.SIGHUP)
            reload_at.append(loop.time() - t0)

    async def slow() -> None:
        k = 0
        while k * SLOW_EVERY_S <= reload_times[-1]:
            await asyncio.sleep(max(0.0, t0 + k * SLOW_EVERY_S - loop.time()))
            launch(_one(tally, port, "slow", f"/delay/{SLOW_MS}", None, SLOW_TIMEOUT_S))
            k += 1

    async def steady() -> None:
        total = int(RATE * duration)
        for j in range(total):
            at = t0 + j / RATE
            now = loop.time()
            if at > now:
                await asyncio.sleep(at - now)
            else:
                tally.late_max_ms = max(tally.late_max_ms, (now - at) * 1000)
            kind = "keep-alive" if j % 2 == 0 else "new-conn"
            path = "/fixed" if (j // 2) % 2 == 0 else f"/proxied/{j}"
            launch(_one(tally, port, kind, path, idle if kind == "keep-alive" else None,
                        REQUEST_TIMEOUT_S))

    await asyncio.gather(reloader(), slow(), steady())
    deadline = loop.time() + SLOW_TIMEOUT_S + 5
    while tasks and loop.time() < deadline:
        await asyncio.wait(set(tasks), timeout=max(0.1, deadline - loop.time()))
    for task in list(tasks):  # cannot happen with the timeouts above; never hang anyway
        task.cancel()
        tally.add("left", "failed", "still running at the end")
    for _, w in idle:
        w.close()

    # The last reload must have taken effect: poll until /fixed says so (or give up).
    final = ""
    until = loop.time() + FINAL_CHECK_S
    while loop.time() < until:
        try:
            _, body, _ = await asyncio.wait_for(_fetch(port, "/fixed", None), REQUEST_TIMEOUT_S)
            final = body.decode(errors="replace").strip()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, Failed) as e:
            final = f"error: {e!r}"
        if final == f"version {RELOADS}":
            break
        await asyncio.sleep(0.1)
    return tally, reload_at, final


async def _one(tally: Tally, port: int, kind: str, path: str,
               idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None,
               timeout: float) -> None:
    try:
        status, body, _ = await asyncio.wait_for(_fetch(port, path, idle, tally), timeout)
        if status != 200:
            raise Failed(f"status {status} for {path}")
        if path == "/fixed":
            text = body.decode(errors="replace").strip()
            if not re.fullmatch(r"version \d+", text):
                raise Failed(f"unexpected body {text[:60]!r}")
            tally.versions[text] += 1
        tally.add(kind, "ok")
    except Failed as e:
        tally.add(kind, "failed", str(e))
    except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as e:
        tally.add(kind, "reset", f"{path}: {e!r}")
    except asyncio.TimeoutError:
        tally.add(kind, "failed", f"{path}: no answer in {timeout:g}s")
    except OSError as e:  # refused and the like
        tally.add(kind, "failed", f"{path}: {e!r}")


async def _fetch(port: int, path: str,
                 idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None,
                 tally: Tally | None = None) -> tuple[int, bytes, bool]:
    """One GET; with `idle`, on a kept connection taken from (and given back to) that list."""
    conn = None
    while idle:
        reader, writer = idle.pop()
        if reader.at_eof() or writer.is_closing():
            writer.close()  # the server closed it while idle: no client would send on it
            if tally is not None:
                tally.idle_closed += 1
            continue
        conn = reader, writer
        break
    if conn is None:
        conn = await asyncio.open_connection("127.0.0.1", port)
        if idle is not None and tally is not None:
            tally.kept_opened += 1
    reader, writer = conn
    keep = idle is not None
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n"
                     f"{'' if keep else 'Connection: close'}\r\n\r\n".encode())
        await writer.drain()
        status, body, close = await _read_response(reader)
    except BaseException:
        writer.close()
        raise
    if keep and not close and idle is not None:
        idle.append((reader, writer))
    else:
        if keep and tally is not None:
            tally.server_close += 1
        writer.close()
    return status, body, close


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    if not m:
        raise Failed(f"bad status line {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    close = "close" in headers.get("connection", "").lower()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        raise Failed("response without Content-Length or chunked framing")
    return int(m.group(1)), body, close


# --------------------------------------------------------------------------- report

def _report(bench: Bench, tally: Tally, reload_at: list[float], final: str,
            failed_reloads: list[str]) -> None:
    kinds = ("keep-alive", "new-conn", "slow")
    rows = []
    for kind in kinds:
        sent = sum(tally.get(kind, o) for o in ("ok", "failed", "reset"))
        rows.append([kind, str(sent), str(tally.get(kind, "ok")), str(tally.get(kind, "failed")),
                     str(tally.get(kind, "reset"))])
    c = tally.counts
    rows.append(["all", str(c["ok"] + c["failed"] + c["reset"]), str(c["ok"]), str(c["failed"]),
                 str(c["reset"])])
    print(f"  reloads sent at t = {', '.join(f'{t:.1f}s' for t in reload_at)}")
    print()
    print(table(["requests", "sent", "ok", "failed", "reset"], rows))
    print()
    versions = ", ".join(f"{v.split()[1]}: {n}" for v, n in sorted(tally.versions.items()))
    print(f"  /fixed answers by version: {versions}")
    print(f"  keep-alive requests used {tally.kept_opened} connections; closed by lbcdn while "
          f"idle: {tally.idle_closed}, "
          f"with Connection: close: {tally.server_close}; client at most "
          f"{tally.late_max_ms:.0f} ms behind schedule")
    for outcome, example in tally.examples.items():
        print(f"  first {outcome}: {example}")
    for line in failed_reloads[:3]:
        print(f"  lbcdn log: {line}")
    slow_ok = tally.get("slow", "ok") > 0 and tally.get("slow", "failed") == 0 \
        and tally.get("slow", "reset") == 0
    clean = c["failed"] == 0 and c["reset"] == 0
    applied = final == f"version {RELOADS}" and not failed_reloads
    print()
    print(f"  {verdict(clean)}  failed {c['failed']}, reset {c['reset']} of "
          f"{c['ok'] + c['failed'] + c['reset']} requests (target 0 and 0)")
    print(f"  {verdict(slow_ok)}  slow /delay/{SLOW_MS} requests across the reloads: "
          f"{tally.get('slow', 'ok')} ok")
    print(f"  {verdict(applied)}  the reloads took effect: {RELOADS - len(failed_reloads)} of "
          f"{RELOADS} without 'reload failed' in lbcdn's log; /fixed now says {final!r} "
          f"(expected 'version {RELOADS}')")
    bench.results["reload"] = {
        "requests": {kind: {o: tally.get(kind, o) for o in ("ok", "failed", "reset")}
                     for kind in kinds},
        "failed": c["failed"], "reset": c["reset"], "reload_at_s": reload_at,
        "versions": dict(tally.versions), "final": final, "idle_closed": tally.idle_closed,
        "kept_opened": tally.kept_opened,
        "late_max_ms": tally.late_max_ms, "pass": clean and slow_ok and applied,
    }
