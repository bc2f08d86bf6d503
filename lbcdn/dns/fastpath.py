"""Prepared DNS answers: replay the engine's output for a repeated question without dnslib.

Job: sit between the UDP/TCP servers and the answer engine. A hot name is answered with one
dict lookup and one bytes concatenation; the engine (dnslib parse + build, ~40 us) runs only on
a miss, and again for everything after a zone or health change.

Rules:
- Only answers the engine calls cacheable (`cacheable_key(query)` is not None) are stored, and
  only for the engine `version` they were built under: any version bump empties both levels
  before the next lookup, so a change is visible on the very next query.
- Level 1 ("exact") is keyed by the query minus its 2-byte id, and stores the answer minus its
  id. Same bytes after the id means the same question, flags and EDNS, so the replay is the
  engine's own answer with the id patched: nothing to interpret, nothing to get wrong.
- Level 2 ("keyed") is keyed by the engine's `cacheable_key`, which treats queries that differ
  only in the case of the name (or anything else the engine says does not matter) as one. A hit
  there patches the id and copies the query's question bytes over the stored question (same
  length, equal ignoring ASCII case, checked), so the client sees its own spelling of the name;
  compressed owner names in the answer point at that question and follow its case. The result
  is then stored in level 1 under this query's exact bytes.
- UDP and TCP answers differ (size cap, TC) so each transport has its own pair of tables.
- Bounded without per-hit bookkeeping: a table that reaches `max_entries` is cleared whole on
  the next insert (an LRU would cost a move-to-end on every hit). A flood of random names then
  costs at most one rebuild of each hot name per `max_entries` misses, and memory stays bounded.
- No I/O, no clock: the servers own sockets; this only maps bytes to bytes.
"""

from __future__ import annotations

from typing import Protocol


class AnswerEngine(Protocol):
    """What the fast path needs from lbcdn.dns.engine.Engine."""

    def answer(self, query: bytes, *, tcp: bool, max_udp: int = 512) -> bytes | None: ...

    def cacheable_key(self, query: bytes) -> bytes | None: ...

    @property
    def version(self) -> int: ...


def question_end(message: bytes) -> int:
    """Offset just past the first question (name + type + class), or -1 when the message has no
    readable uncompressed question there."""
    if len(message) < 12 or message[4:6] == b"\x00\x00":
        return -1
    i = 12
    n = len(message)
    while i < n:
        length = message[i]
        if length == 0:
            end = i + 5
            return end if end <= n else -1
        if length & 0xC0:  # a pointer or an extended label: not what a question holds
            return -1
        i += length + 1
    return -1


class _Tables:
    __slots__ = ("exact", "keyed")

    def __init__(self) -> None:
        self.exact: dict[bytes, bytes] = {}
        # engine key -> (answer minus id, end of its question section)
        self.keyed: dict[bytes, tuple[bytes, int]] = {}

    def clear(self) -> None:
        self.exact.clear()
        self.keyed.clear()


class FastPath:
    """Prepared answers in front of an engine. Loop thread only (plain dicts, no locks)."""

    def __init__(self, engine: AnswerEngine, *, max_entries: int = 100_000,
                 max_udp: int = 1232) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.engine = engine
        self.max_entries = max_entries
        self.max_udp = max_udp
        self._udp = _Tables()
        self._tcp = _Tables()
        self._version = engine.version
        # Counters for metrics: read by whoever exports them. hits = lookups - misses.
        self.lookups = 0
        self.misses = 0        # not in level 1 (level-2 hits are counted in keyed_hits)
        self.keyed_hits = 0
        self.uncacheable = 0   # engine said compute every time (or stay silent)
        self.flushes = 0

    def answer_udp(self, query: bytes) -> bytes | None:
        """The answer to send for one UDP query, or None for silence."""
        if self.engine.version != self._version:
            self._flush()
        self.lookups += 1
        tail = self._udp.exact.get(query[2:])
        if tail is not None:
            return query[:2] + tail
        return self._miss(query, self._udp, False)

    def answer_tcp(self, query: bytes) -> bytes | None:
        """The answer to one query received over TCP (no size cap), or None for silence."""
        if self.engine.version != self._version:
            self._flush()
        self.lookups += 1
        tail = self._tcp.exact.get(query[2:])
        if tail is not None:
            return query[:2] + tail
        return self._miss(query, self._tcp, True)

    def entries(self) -> int:
        return (len(self._udp.exact) + len(self._udp.keyed) + len(self._tcp.exact)
                + len(self._tcp.keyed))

    def _flush(self) -> None:
        self._version = self.engine.version
        self._udp.clear()
        self._tcp.clear()
        self.flushes += 1

    def _miss(self, query: bytes, tables: _Tables, tcp: bool) -> bytes | None:
        self.misses += 1
        engine = self.engine
        key = engine.cacheable_key(query)
        if key is None:
            self.uncacheable += 1
            return engine.answer(query, tcp=tcp, max_udp=self.max_udp)
        entry = tables.keyed.get(key)
        if entry is not None:
            tail, qend = entry
            out = self._replay(query, tail, qend)
            if out is not None:
                self.keyed_hits += 1
                self._store_exact(tables, query, out)
                return out
        out = engine.answer(query, tcp=tcp, max_udp=self.max_udp)
        if out is None or len(out) < 12 or engine.version != self._version:
            # A version that moved while answering means this answer may already be stale:
            # serve it once, keep nothing.
            return out
        self._store_exact(tables, query, out)
        qend = question_end(out)
        if qend > 0:
            if len(tables.keyed) >= self.max_entries:
                tables.keyed.clear()
            tables.keyed[key] = (out[2:], qend)
        return out

    @staticmethod
    def _replay(query: bytes, tail: bytes, qend: int) -> bytes | None:
        # tail is the answer minus its id: its question occupies tail[10:qend-2].
        if len(query) < qend or query[12:qend].lower() != tail[10:qend - 2].lower():
            return None
        return query[:2] + tail[:10] + query[12:qend] + tail[qend - 2:]

    def _store_exact(self, tables: _Tables, query: bytes, out: bytes) -> None:
        if len(tables.exact) >= self.max_entries:
            tables.exact.clear()
        tables.exact[query[2:]] = out[2:]
