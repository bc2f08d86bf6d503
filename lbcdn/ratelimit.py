"""Rate limits: a token bucket per key, in a table every worker process of the daemon shares.

The decision is pure (`take`: a bucket's tokens and time stamp, the time now, the rate and the
burst -> allowed or not, and the bucket after). The table is where the buckets live.

Why a shared-memory table with a lock, not a process owning the buckets: a bucket owner would
cost every limited request a round trip to another process (a socket write, a wake-up, a read:
tens of microseconds and a second process on the critical path), where taking a token from a
memory-mapped table costs two uncontended fcntl calls (lock, unlock: a couple of microseconds;
measured in docs/guides/edge.md). So `--workers 4` limits exactly like `--workers 1`, at the
price of a system call pair per limited request only (routes without a limit pay nothing).

The table: one file mapped by every worker (under the directory `lbcdn serve --workers N` makes
and names in LBCDN_SHARED_DIR; one process maps an unnamed temporary file), made of sets of
WAYS slots; a slot is (key hash: u64, tokens: f64, stamp: f64), 24 bytes. A key hashes (blake2b,
the same in every process, unlike hash()) to one set; within it, its slot, else an empty one,
else the least recently used (oldest stamp) is taken over: memory stays `max_keys * 24` bytes
however many keys clients invent, and an evicted key merely starts again with a full bucket.
A set is locked with an fcntl record lock on its own byte of the file (exclusive, per process,
released by the kernel if a worker dies), so workers touching other sets never wait.
Stamps are time.monotonic(): CLOCK_MONOTONIC is one clock for every process of the machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import struct
import tempfile
from typing import Final

WAYS: Final = 8
_SLOT: Final = struct.Struct("<Qdd")
SLOT_BYTES: Final = _SLOT.size   # 24
_SET_BYTES: Final = SLOT_BYTES * WAYS
_SET: Final = struct.Struct("<" + "Qdd" * WAYS)
_KEY: Final = struct.Struct("<Q")
ENV: Final = "LBCDN_SHARED_DIR"


def take(tokens: float, stamp: float, now: float, rate: float,
         burst: float) -> tuple[bool, float]:
    """Token bucket: refill since `stamp` at `rate` per second up to `burst`, then take one
    token if there is one. -> (allowed, tokens left)."""
    tokens = min(burst, tokens + max(0.0, now - stamp) * rate)
    if tokens >= 1.0:
        return True, tokens - 1.0
    return False, tokens


def retry_after_s(tokens: float, rate: float) -> int:
    """Whole seconds until a refused key has a token again (Retry-After: at least 1)."""
    return max(1, math.ceil((1.0 - tokens) / rate))


def reset_s(tokens: float, rate: float, burst: float) -> int:
    """Whole seconds until the bucket is full again (the RateLimit field's `t`)."""
    return max(0, math.ceil((burst - tokens) / rate))


def key_hash(key: bytes) -> int:
    """A non-zero 64-bit hash of `key`, the same in every process (0 marks an empty slot)."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") or 1


class BucketTable:
    """Buckets of one rate limit, shared by the processes that open the same `path`."""

    def __init__(self, max_keys: int, rate: float, burst: int, path: str | None = None) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.sets = max(1, -(-max_keys // WAYS))
        size = self.sets * _SET_BYTES
        if path is None:
            # one process: an unnamed file, so the locking code is the same one
            self._fd = tempfile.TemporaryFile()
            fd = self._fd.fileno()
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            self._fd = os.fdopen(fd, "r+b")
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)   # every opener asks for the same size: a race is harmless
        self.fd = fd
        self.map = mmap.mmap(fd, size)

    def close(self) -> None:
        self.map.close()
        self._fd.close()

    def hit(self, key: bytes, now: float) -> tuple[bool, float]:
        """Take a token for `key` at `now`: (allowed, tokens left)."""
        h = key_hash(key)
        index = h % self.sets
        base = index * _SET_BYTES
        data = self.map
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, index)
        try:
            # a known key is found by its bytes (a search in C, not a loop of unpacks); a
            # match must start a slot, not sit across two
            packed = _KEY.pack(h)
            end = base + _SET_BYTES
            at = data.find(packed, base, end)
            while at >= 0 and (at - base) % SLOT_BYTES:
                at = data.find(packed, at + 1, end)
            if at >= 0:
                _, tokens, stamp = _SLOT.unpack_from(data, at)
                allowed, left = take(tokens, stamp, now, self.rate, self.burst)
                _SLOT.pack_into(data, at, h, left, max(now, stamp))
                return allowed, left
            # a new key (or one evicted): an empty slot, else the least recently used one
            slots = _SET.unpack_from(data, base)
            victim = 0
            oldest = math.inf
            for way in range(0, 3 * WAYS, 3):
                if slots[way] == 0:
                    victim = way
                    break
                if slots[way + 2] < oldest:
                    victim, oldest = way, slots[way + 2]
            allowed, left = take(self.burst, now, now, self.rate, self.burst)
            _SLOT.pack_into(data, base + victim * 8, h, left, now)
            return allowed, left
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, index)

    def keys(self) -> int:
        """Slots in use (for tests and the status page)."""
        return sum(1 for i in range(self.sets * WAYS)
                   if _SLOT.unpack_from(self.map, i * SLOT_BYTES)[0] != 0)
