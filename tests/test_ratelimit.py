"""Rate limits: the token bucket with a fake clock, and the shared table of buckets (bounded,
least recently used keys reused, one table for every process that maps its file)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from lbcdn.ratelimit import WAYS, BucketTable, reset_s, retry_after_s, take


def test_take_refills_up_to_the_burst() -> None:
    assert take(5.0, 0.0, 0.0, 10.0, 5.0) == (True, 4.0)
    assert take(0.0, 0.0, 0.05, 10.0, 5.0) == (False, 0.5)
    assert take(0.5, 0.05, 0.1, 10.0, 5.0) == (True, 0.0)
    assert take(0.0, 0.0, 100.0, 10.0, 5.0) == (True, 4.0)   # capped at the burst
    assert take(3.0, 5.0, 4.0, 10.0, 5.0) == (True, 2.0)     # a clock behind adds nothing


def test_a_flood_gets_the_burst_then_the_rate() -> None:
    """100/s with a burst of 20 under 1,000 requests a second for 3 s: 20 + 300 pass."""
    tokens, stamp, passed = 20.0, 0.0, 0
    for i in range(3000):
        now = i / 1000
        allowed, tokens = take(tokens, stamp, now, 100.0, 20.0)
        stamp = now
        passed += allowed
    assert 318 <= passed <= 321


def test_retry_after_and_reset() -> None:
    assert retry_after_s(0.0, 100.0) == 1          # never 0
    assert retry_after_s(0.2, 0.5) == 2
    assert reset_s(0.0, 0.5, 3.0) == 6
    assert reset_s(3.0, 0.5, 3.0) == 0


def test_table_counts_per_key() -> None:
    table = BucketTable(1000, rate=1.0, burst=2)
    assert [table.hit(b"a", 10.0)[0] for _ in range(3)] == [True, True, False]
    assert table.hit(b"b", 10.0)[0]
    assert table.hit(b"a", 11.0)[0]       # one token back after a second
    assert not table.hit(b"a", 11.0)[0]
    table.close()


def test_table_memory_is_bounded_and_evicts_the_least_recently_used() -> None:
    table = BucketTable(64, rate=1.0, burst=1)
    assert table.sets == 64 // WAYS
    for i in range(100_000):
        table.hit(b"key-%d" % i, float(i))
    assert table.keys() == 64
    assert table.map.size() == 64 * 24
    # a key that keeps coming stays while others churn through its set
    table = BucketTable(WAYS, rate=0.001, burst=1)   # one set: every key shares it
    assert table.hit(b"hot", 0.0) == (True, 0.0)
    for i in range(1, 100):
        table.hit(b"cold-%d" % i, float(i))
        assert not table.hit(b"hot", float(i) + 0.5)[0]   # still remembered: still empty


def _hammer(path: str, count: int, go: Any, out: Any) -> None:
    table = BucketTable(1000, rate=0.001, burst=15000, path=path)
    go.wait(30)   # both processes start taking at once
    out.put(sum(table.hit(b"shared", 1.0)[0] for _ in range(count)))


def test_processes_share_one_table(tmp_path: Path) -> None:
    """Two processes taking from one bucket at once never get more than it holds (without
    the lock, lost updates let through more)."""
    path = str(tmp_path / "buckets")
    out: Any = multiprocessing.Queue()
    go: Any = multiprocessing.Event()
    procs = [multiprocessing.Process(target=_hammer, args=(path, 10000, go, out))
             for _ in range(2)]
    for p in procs:
        p.start()
    go.set()
    passed = out.get(timeout=60) + out.get(timeout=60)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert passed == 15000


@pytest.mark.parametrize("max_keys", [64, 1_000_000])
def test_table_size(max_keys: int) -> None:
    table = BucketTable(max_keys, rate=1.0, burst=1)
    assert table.map.size() == -(-max_keys // WAYS) * WAYS * 24
    table.close()
