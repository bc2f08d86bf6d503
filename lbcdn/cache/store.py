"""The memory tier and the streaming fill.

MemoryStore: stored responses by (primary key, variant key), LRU, bounded in bytes.
- A lookup costs two dict reads (the primary's Vary names, then the variant) and one
  move_to_end; the variant key is computed only when the stored response has a Vary.
- Objects whose charge exceeds `max_object_bytes` (or the whole budget) are refused: the
  caller passes them through or puts them on disk.
- Putting a response whose Vary differs from the one stored for its primary key drops the
  older variants: they were selected by header fields the origin no longer varies on.
- Indexes for invalidation are kept beside the LRU: (host, path) -> primary keys and
  tag -> primary keys; eviction keeps them exact.
- No I/O, no clock of its own; one instance per data-plane worker.

Fill: one origin response being received. The body accumulates as chunks while readers
(the first client, collapsed waiters that joined, a cache writer) follow along, each at its own
position; listeners are called on new data, on the end and on failure, so the network code can
write as soon as bytes exist instead of when the fill ends. When the body outgrows what may be
stored, the fill stops keeping what every reader has already taken (a pass-through for its
readers; late joiners are then refused).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

from lbcdn.cache.directives import Headers
from lbcdn.cache.entry import CachedResponse
from lbcdn.cache.key import variant_key

__all__ = ["CachedResponse", "Fill", "FillInfo", "FillReader", "MemoryStore", "Miss"]


class Miss:
    """Why a lookup found nothing (Cache-Status fwd=uri-miss / vary-miss)."""
    URI = "uri-miss"
    VARY = "vary-miss"


class MemoryStore:
    def __init__(self, max_bytes: int, max_object_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_object_bytes = max_object_bytes
        self.bytes = 0
        self.evictions = 0
        self._lru: OrderedDict[tuple[bytes, bytes], CachedResponse] = OrderedDict()
        self._vary: dict[bytes, tuple[bytes, ...]] = {}
        self._variants: dict[bytes, set[bytes]] = {}
        self._paths: dict[tuple[bytes, bytes], set[bytes]] = {}
        self._tags: dict[bytes, set[bytes]] = {}
        # Bumped by every change to what is stored (put, delete, purge, clear, and so every
        # eviction): a reader that remembers an entry with the generation it saw may use it
        # again while the generation is the same, without a lookup.
        self.generation = 0
        # Called with each entry evicted for space (not when deleted or replaced): the
        # daemon may demote it to the disk tier, and counts it.
        self.on_evict: Callable[[CachedResponse], None] | None = None

    def __len__(self) -> int:
        return len(self._lru)

    # -- reading ---------------------------------------------------------------------------

    def lookup(self, primary: bytes, headers: Headers) -> CachedResponse | str:
        """The variant of `primary` selected by the request `headers`, or a Miss reason."""
        vary = self._vary.get(primary)
        if vary is None:
            return Miss.URI
        variant = variant_key(vary, headers) if vary else b""
        if variant is None:
            return Miss.VARY
        entry = self._lru.get((primary, variant))
        if entry is None:
            return Miss.VARY
        self._lru.move_to_end((primary, variant))
        return entry

    def get(self, primary: bytes, variant: bytes) -> CachedResponse | None:
        entry = self._lru.get((primary, variant))
        if entry is not None:
            self._lru.move_to_end((primary, variant))
        return entry

    def variants(self, primary: bytes) -> list[CachedResponse]:
        return [self._lru[(primary, v)] for v in self._variants.get(primary, ())]

    def entries(self) -> Iterable[CachedResponse]:
        return list(self._lru.values())

    # -- writing ---------------------------------------------------------------------------

    def fits(self, charge: int) -> bool:
        return charge <= min(self.max_object_bytes, self.max_bytes)

    def put(self, entry: CachedResponse) -> bool:
        """Store (or replace) an entry; False when it is too large for this tier."""
        if not self.fits(entry.charge):
            return False
        self.generation += 1
        primary = entry.key
        if self._vary.get(primary, entry.vary) != entry.vary:
            self.delete(primary)
        old = self._lru.pop((primary, entry.variant), None)
        if old is not None:
            self._unindex(old)
        self._lru[(primary, entry.variant)] = entry
        self.bytes += entry.charge
        self._vary[primary] = entry.vary
        self._variants.setdefault(primary, set()).add(entry.variant)
        self._paths.setdefault((entry.host, entry.path), set()).add(primary)
        for tag in entry.tags:
            self._tags.setdefault(tag, set()).add(primary)
        while self.bytes > self.max_bytes:
            (_, victim) = self._lru.popitem(last=False)
            self._unindex(victim)
            self.evictions += 1
            if self.on_evict is not None:
                self.on_evict(victim)
        return True

    def _unindex(self, entry: CachedResponse) -> None:
        self.bytes -= entry.charge
        primary = entry.key
        variants = self._variants.get(primary)
        if variants is not None:
            variants.discard(entry.variant)
            if variants:
                return
            del self._variants[primary]
        self._vary.pop(primary, None)
        keys = self._paths.get((entry.host, entry.path))
        if keys is not None:
            keys.discard(primary)
            if not keys:
                del self._paths[(entry.host, entry.path)]
        for tag in entry.tags:
            tagged = self._tags.get(tag)
            if tagged is not None:
                tagged.discard(primary)
                if not tagged:
                    del self._tags[tag]

    def delete(self, primary: bytes) -> int:
        """Remove every variant of `primary`; returns how many."""
        self.generation += 1
        n = 0
        for variant in list(self._variants.get(primary, ())):
            entry = self._lru.pop((primary, variant))
            self._unindex(entry)
            n += 1
        return n

    def _soft(self, primary: bytes) -> int:
        self.generation += 1
        n = 0
        for variant in list(self._variants.get(primary, ())):
            entry = self._lru[(primary, variant)]
            # Same charge, so the byte count is unchanged; LRU position kept.
            self._lru[(primary, variant)] = entry.purged()
            n += 1
        return n

    def _purge(self, primaries: Iterable[bytes], soft: bool) -> int:
        n = 0
        for primary in list(primaries):
            n += self._soft(primary) if soft else self.delete(primary)
        return n

    # -- invalidation ----------------------------------------------------------------------

    def purge_uri(self, host: bytes, path: bytes, soft: bool = False) -> int:
        """Every entry for this host and path, whatever its query and headers (RFC 9111 4.4
        allows invalidating more than the exact URI)."""
        return self._purge(self._paths.get((host, path), ()), soft)

    def purge_matching(self, match: Callable[[bytes, bytes, bytes], bool],
                       soft: bool = False) -> int:
        """Entries whose (host, path, query) `match` accepts (invalidation.Invalidation)."""
        chosen = [e.key for e in self._lru.values() if match(e.host, e.path, e.query)]
        return self._purge(dict.fromkeys(chosen), soft)

    def purge_tags(self, tags: Iterable[bytes], soft: bool = False) -> int:
        primaries: dict[bytes, None] = {}
        for tag in tags:
            primaries.update(dict.fromkeys(self._tags.get(tag, ())))
        return self._purge(primaries, soft)

    def clear(self) -> None:
        self.generation += 1
        self._lru.clear()
        self._vary.clear()
        self._variants.clear()
        self._paths.clear()
        self._tags.clear()
        self.bytes = 0


# -- streaming fill ----------------------------------------------------------------------------

Listener = Callable[["Fill"], None]


class FillInfo:
    """What a reader of a fill needs beyond the bytes: which variant it is (a collapsed waiter
    whose Vary-selected variant differs must not follow it) and the head to serve."""
    __slots__ = ("vary", "variant", "head", "length", "age")

    def __init__(self, vary: tuple[bytes, ...], variant: bytes | None, head: bytes,
                 length: int | None, age: float | None) -> None:
        self.vary = vary
        self.variant = variant    # None: `Vary: *`, matches no request
        self.head = head          # status line + served header lines (no framing, no CRLF)
        self.length = length      # Content-Length when known in advance
        self.age = age            # the origin's Age, when it sent one


class Fill:
    """An origin response body in progress, readable while it is written."""

    def __init__(self, status: int, headers: Headers, *, expected_bytes: int | None,
                 max_bytes: int) -> None:
        self.status = status
        self.headers = list(headers)
        self.expected_bytes = expected_bytes
        self.max_bytes = max_bytes
        self.chunks: list[bytes] = []
        self.base = 0            # index (in chunks ever received) of self.chunks[0]
        self.size = 0            # bytes received
        self.done = False
        self.error: str | None = None
        self.storable = expected_bytes is None or expected_bytes <= max_bytes
        self._listeners: list[Listener] = []
        self._readers: list[FillReader] = []
        self.info: FillInfo | None = None   # set by the network code that starts the fill

    @property
    def readers(self) -> int:
        return len(self._readers)

    @property
    def finished(self) -> bool:
        return self.done or self.error is not None

    @property
    def complete_body(self) -> tuple[bytes, ...] | None:
        """All chunks, when the fill ended well and kept them all (ready to store)."""
        if self.done and self.storable and self.base == 0:
            return tuple(self.chunks)
        return None

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unlisten(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener(self)

    def reader_possible(self) -> bool:
        """Can a new reader still start from the first byte?"""
        return self.base == 0 and self.error is None

    def reader(self) -> FillReader | None:
        """A reader from the first byte; None when the start has already been dropped."""
        if not self.reader_possible():
            return None
        r = FillReader(self)
        self._readers.append(r)
        return r

    def close_reader(self, reader: FillReader) -> None:
        if reader in self._readers:
            self._readers.remove(reader)
            self._trim()

    def append(self, chunk: bytes) -> None:
        if self.finished or not chunk:
            return
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self.storable and self.size > self.max_bytes:
            self.storable = False
        self._trim()
        self._notify()

    def finish(self) -> None:
        if self.finished:
            return
        if self.expected_bytes is not None and self.size != self.expected_bytes:
            self.fail("body shorter than Content-Length")
            return
        self.done = True
        self._notify()

    def fail(self, reason: str) -> None:
        """The origin failed mid-body: nothing is stored, readers end their responses."""
        if self.finished:
            return
        self.error = reason
        self.storable = False
        self._notify()

    def _trim(self) -> None:
        if self.storable:
            return
        low = min((r.index for r in self._readers), default=self.base + len(self.chunks))
        drop = low - self.base
        if drop > 0:
            del self.chunks[:drop]
            self.base = low

    def lag_bytes(self) -> int:
        """Bytes held for the slowest reader: the upstream should pause reading above a
        high-water mark (only grows unbounded for a storable object, which max_bytes caps)."""
        return sum(len(c) for c in self.chunks) if not self.storable else 0


class FillReader:
    """One reader's position in a Fill."""

    def __init__(self, fill: Fill) -> None:
        self.fill = fill
        self.index = fill.base   # next chunk (absolute index) to take

    def take(self) -> list[bytes]:
        """Chunks received since the last take (possibly none)."""
        f = self.fill
        start = self.index - f.base
        out = f.chunks[start:]
        self.index = f.base + len(f.chunks)
        if not f.storable:
            f._trim()
        return out

    @property
    def at_end(self) -> bool:
        f = self.fill
        return f.finished and self.index == f.base + len(f.chunks)
