"""Scenario `idle`: the memory cost of idle keep-alive client connections.

Opens N (default 10,000) connections to lbcdn's listener; each sends one request, reads the
whole response and then stays open and idle. lbcdn's RSS (VmRSS of the process and any
children, from /proc) is read before and after. Target (issue 2): 10,000 idle connections add
<= 100 MiB. lbcdn's idle timeout is set to an hour in the generated config so the connections
outlive the measurement; the file descriptor limit is raised before lbcdn starts (it inherits it).
"""

from __future__ import annotations

import asyncio
import time

from harness import Bench, BenchError, http_get, open_fds, raise_nofile, rss_kib, verdict

TARGET_MIB = 100.0
OPEN_CONCURRENCY = 200  # connections being set up at once (listen backlog is 1024)
OPEN_DEADLINE_S = 120.0
SETTLE_S = 2.0


def run(bench: Bench, count: int = 10_000) -> None:
    limit = raise_nofile(max(65536, 2 * count + 1024))
    if limit < count + 512:
        raise BenchError(f"RLIMIT_NOFILE is {limit}: too low for {count} connections")
    backend = bench.nginx_backend()
    lbcdn = bench.lbcdn(backend.port, idle_timeout_s=3600)

    # Warm up the code paths (and the upstream pool) so the baseline is not a cold process.
    for _ in range(50):
        http_get(lbcdn.port, "/1k.bin")
    time.sleep(SETTLE_S)
    before_kib, before_fds = rss_kib(lbcdn.pid), open_fds(lbcdn.pid)

    opened, failed, after_kib, after_fds = asyncio.run(
        _hold_idle(bench, lbcdn.port, lbcdn.pid, count))

    added_mib = (after_kib - before_kib) / 1024
    print(f"  {lbcdn.name} pid {lbcdn.pid}: {opened} connections open and idle, {failed} failed; "
          f"fds {before_fds} -> {after_fds}")
    print(f"  RSS before {before_kib / 1024:.1f} MiB, after {after_kib / 1024:.1f} MiB: "
          f"+{added_mib:.1f} MiB for {opened} idle connections "
          f"({(after_kib - before_kib) * 1024 / max(opened, 1):.0f} bytes each)")
    ok = failed == 0 and opened == count
    print(f"  {verdict(ok and added_mib <= TARGET_MIB)}  {count} idle connections add "
          f"{added_mib:.1f} MiB (target <= {TARGET_MIB:g} MiB"
          f"{'; not all connections were served' if not ok else ''})")
    bench.results["idle"] = {
        "server": lbcdn.name, "connections": opened, "failed": failed,
        "rss_before_kib": before_kib, "rss_after_kib": after_kib, "added_mib": added_mib,
        "pass": ok and added_mib <= TARGET_MIB,
    }


async def _hold_idle(bench: Bench, port: int, pid: int,
                     count: int) -> tuple[int, int, int, int]:
    sem = asyncio.Semaphore(OPEN_CONCURRENCY)
    writers: list[asyncio.StreamWriter] = []
    served: list[asyncio.StreamReader] = []
    failures: list[str] = []
    request = b"GET /1k.bin HTTP/1.1\r\nHost: bench\r\n\r\n"

    async def one() -> None:
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 30)
                writers.append(writer)
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                    raise OSError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await asyncio.wait_for(reader.readexactly(length), 30)
                served.append(reader)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                failures.append(f"{type(e).__name__}: {e}")

    try:
        started = time.monotonic()
        tasks = [asyncio.ensure_future(one()) for _ in range(count)]
        done, pending = await asyncio.wait(tasks, timeout=OPEN_DEADLINE_S)
        for t in pending:
            t.cancel()
        if pending:
            failures.append(f"{len(pending)} connections not set up within {OPEN_DEADLINE_S}s")
        print(f"  opened {count} connections in {time.monotonic() - started:.1f}s")
        await asyncio.sleep(SETTLE_S)
        after_kib, after_fds = rss_kib(pid), open_fds(pid)
        # A connection the server closed has seen EOF by now.
        still_open = sum(1 for r in served if not r.at_eof())
        if still_open < len(served):
            failures.append(f"{len(served) - still_open} served connections were closed by "
                            f"the server while idle")
        if failures:
            print(f"  first failure: {failures[0]}")
        return still_open, len(failures), after_kib, after_fds
    finally:
        for w in writers:
            w.close()
