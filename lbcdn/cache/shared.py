"""One cache per machine: the workers of `lbcdn serve --workers N` share one store, and one
origin request per key at a time machine-wide (nginx's shared cache zone with proxy_cache_lock).

How it is built:
- The shared store is a directory of entries in the disk tier's file format (lbcdn.cache.disk:
  checksummed, written to a temp file and renamed into place, so a reader never sees half a
  file): `storage.disk_path` when set, else a directory the control process makes on tmpfs
  (/dev/shm) and removes at stop, whose files the page cache keeps in memory.
- Workers find an entry from its file name alone (sha256 of primary and variant key, plus the
  primary's `.vary` file when it has a Vary): no index is pushed to them, so a worker that
  starts (or restarts) sees everything stored at once and no message can leave its view behind.
- The control process is the cache manager: a DiskStore over the directory that adopts each
  file a worker reports stored, evicts (max bytes, LRU by store order) and applies
  invalidations to the files.
- Each worker keeps its memory store as a hot copy (L1) in front: hits are answered from it as
  fast as in one process. An L1 miss, or an entry there that can no longer be used as it is,
  looks in the shared store (in a thread) before anything goes to the origin. When a worker
  stores a new response the control process tells the other workers to drop their copy of that
  key, so no worker keeps serving a version another one replaced.
- Collapsing across workers: the worker that leads a key in its own collapser asks the control
  process for the machine lead ({"op": "cache-lead"}). One worker leads a key at a time (cold
  fetches and revalidations alike); the others wait, at most the policy's lock timeout, and are
  told how the lead ended ({"op": "cache-led"}): `stored` (look in the shared store), `failed`
  (the origin failed: serve stale where stale-if-error allows) or `alone` (fetch yourself: the
  answer was not storable, the leader died or its lock timed out).
- A worker that dies releases its leads (waiters fetch for themselves); a file it was writing
  stays a temp file, never seen by readers, removed at the next start.

This module: the worker's side (SharedStore: reading and writing files, blocking, called
through a thread; LeadClient: the lead messages) and the control process's (Leads: the pure
state machine of who leads which key and who waits).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from lbcdn.cache.config import StorageConfig
from lbcdn.cache.directives import Headers
from lbcdn.cache.disk import CorruptFile, decode, encode, file_name, path_of, read_vary, \
    write_entry
from lbcdn.cache.entry import CachedResponse
from lbcdn.cache.key import variant_key

# how a machine lead ended, as a waiter is told
LEAD = "lead"        # you lead: fetch (the answer to the leader itself)
STORED = "stored"    # the leader stored an answer (or found one): look in the shared store
FAILED = "failed"    # the origin failed: a stale copy may stand in (stale-if-error)
ALONE = "alone"      # nothing to share (not storable, leader gone, lock timed out)


def limits(storage: StorageConfig) -> tuple[int, int]:
    """The shared store's (max bytes, max object bytes): the disk tier's with `disk_path`,
    else the memory tier's (tmpfs is memory)."""
    if storage.disk_path is not None:
        return storage.disk_max_bytes, min(storage.disk_max_object_bytes, storage.disk_max_bytes)
    return storage.memory_max_bytes, min(storage.max_object_bytes, storage.memory_max_bytes)


class SharedStore:
    """The workers' view of the shared directory: whole files by name, no index. `fsync`
    on a disk (as the disk tier), not on tmpfs."""

    def __init__(self, root: str, max_object_bytes: int, fsync: bool) -> None:
        self.root = root
        self.max_object_bytes = max_object_bytes
        self.fsync = fsync

    def put(self, entry: CachedResponse) -> str | None:
        """Write an entry; its file name, None when it is too large."""
        data = encode(entry)
        if len(data) > self.max_object_bytes:
            return None
        return write_entry(self.root, entry, data, self.fsync)

    def lookup(self, primary: bytes, headers: Headers) -> CachedResponse | None:
        entry = self._read(file_name(primary, b""))
        if entry is None:
            vary = read_vary(self.root, primary)
            variant = variant_key(vary, headers) if vary else None
            if variant is None:
                return None
            entry = self._read(file_name(primary, variant))
        if entry is None or entry.key != primary or \
                variant_key(entry.vary, headers) != entry.variant:
            return None
        return entry

    def _read(self, name: str) -> CachedResponse | None:
        path = path_of(self.root, name)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        try:
            return decode(data)
        except CorruptFile:
            # written by rename, so only a damaged disk gets here: never serve it
            try:
                os.unlink(path)
            except OSError:
                pass
            return None


Send = Callable[[dict[str, Any]], None]


class LeadClient:
    """A worker's side of the machine leads: asks the control process, awaits its answer."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self._ids = count(1)
        self._waiting: dict[int, asyncio.Future[tuple[str, int | None]]] = {}

    async def lead(self, key: bytes, timeout_s: float) -> tuple[str, int | None]:
        """LEAD when this worker now leads `key`; else how the other leader's lead ended
        (with the origin's error status for FAILED, when it answered), ALONE after
        `timeout_s` of waiting."""
        ident = next(self._ids)
        future: asyncio.Future[tuple[str, int | None]] = \
            asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        self.send({"op": "cache-lead", "id": ident, "key": key.decode("latin-1"),
                   "timeout_s": timeout_s})
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return ALONE, None
        finally:
            self._waiting.pop(ident, None)

    def answered(self, ident: int, result: str, status: int | None) -> None:
        future = self._waiting.get(ident)
        if future is not None and not future.done():
            future.set_result((result, status))

    def done(self, key: bytes, outcome: str, name: str | None = None,
             status: int | None = None) -> None:
        """This worker's lead of `key` (if it holds it) ended with `outcome` (`status`: the
        origin's error for FAILED); `name`: the file it stored (the control process indexes
        it and has the others drop `key`)."""
        self.send({"op": "cache-done", "key": key.decode("latin-1"), "outcome": outcome,
                   "name": name, "status": status})


class Shared:
    """What a worker's cache runtime holds of the machine cache."""
    __slots__ = ("store", "leads")

    def __init__(self, store: SharedStore, leads: LeadClient) -> None:
        self.store = store
        self.leads = leads


# -- the control process ---------------------------------------------------------------------

Waiting = tuple[int, int]   # (worker index, request id)


@dataclass(slots=True)
class _Held:
    worker: int
    started: float
    timeout_s: float
    waiters: list[Waiting] = field(default_factory=list)


class Leads:
    """Who leads which key, and who waits for it (pure: `now` is passed in)."""

    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    def lead(self, key: str, worker: int, ident: int, now: float, timeout_s: float) -> bool:
        """True: `worker` leads `key` now. False: it waits (answered by `done` or `gone`).
        A lead older than its lock timeout passes to the newcomer; its waiters stay."""
        held = self._held.get(key)
        if held is None or now - held.started > held.timeout_s:
            waiters = held.waiters if held is not None else []
            self._held[key] = _Held(worker, now, timeout_s, waiters)
            return True
        held.waiters.append((worker, ident))
        return False

    def done(self, key: str, worker: int) -> list[Waiting]:
        """`worker`'s lead of `key` ended: the waiters to tell (none unless it led)."""
        held = self._held.get(key)
        if held is None or held.worker != worker:
            return []
        del self._held[key]
        return held.waiters

    def expire(self, now: float) -> list[Waiting]:
        """Leads older than their lock timeout end (a leader that never said how its fetch
        ended must not hold a key for ever); their waiters, to tell to go alone (they have
        stopped waiting already, as their own timeout is the same)."""
        released: list[Waiting] = []
        for key, held in list(self._held.items()):
            if now - held.started > held.timeout_s:
                del self._held[key]
                released.extend(held.waiters)
        return released

    def gone(self, worker: int) -> list[Waiting]:
        """`worker` died: its leads end (their waiters go alone) and its waits are dropped."""
        released: list[Waiting] = []
        for key, held in list(self._held.items()):
            held.waiters = [w for w in held.waiters if w[0] != worker]
            if held.worker == worker:
                del self._held[key]
                released.extend(held.waiters)
        return released
