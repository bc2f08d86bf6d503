"""Prepared DNS answers: replay the engine's output for a repeated question without dnslib.

Job: sit between the UDP/TCP servers and the answer engine. A hot name is answered with one
dict lookup and one bytes concatenation; the engine (dnslib parse + build, ~40 us) runs only on
a miss, and again for everything after a zone or health change.

Rules:
- Only answers the engine prepares as replayable (`prepare(query).replay`, under a
  `cacheable_key(query)` that is not None) are stored, and only for the engine `version` they
  were built under: any version bump empties every table before the next lookup, so a change
  is visible on the very next query.
- An answer that rotates (a simple set with several values) comes prepared as its N rotations;
  they are stored together and sent in turn, one per query. The turn belongs to the engine's
  key, so every query keyed alike shares it: other ids, other spellings, and other EDNS
  options (a resolver sending a fresh DNS COOKIE each time still sees the next rotation).
- Level 1 ("exact") is keyed by the query minus its 2-byte id, and stores the answer minus its
  id (or, in its own table, the cycle of rotations minus their ids; only a query missing the
  fixed table looks there, so a fixed answer's hit costs what it did). Same bytes after the id
  means the same question, flags and EDNS, so the replay is the engine's own answer with the
  id patched: nothing to interpret, nothing to get wrong.
- Level 2 ("keyed") is keyed by the engine's `cacheable_key`, which treats queries that differ
  only in the case of the name (or anything else the engine says does not matter) as one. A hit
  there patches the id and copies the query's question bytes over the stored question (same
  length, equal ignoring ASCII case, checked), so the client sees its own spelling of the name;
  compressed owner names in the answer point at that question and follow its case. The result
  is then stored in level 1 under this query's exact bytes.
- UDP and TCP answers differ (size cap, TC) so each transport has its own tables.
- Bounded without per-hit bookkeeping: a table that would hold more than `max_entries`
  answers is cleared whole on the next insert (an LRU would cost a move-to-end on every hit).
  Answers, not entries, are counted: a rotating entry holds N of them, and the spellings of
  one name are many. A flood of random names then costs at most one rebuild of each hot name
  per `max_entries` misses, and memory stays bounded.
- The client's address reaches the engine on a miss only (`peers.peer(i)` for UDP is asked
  then, never on a hit): answers that depend on it (client-dependent routing) come prepared
  as not replayable, so they are computed per query and never stored here.
- No I/O, no clock: the servers own sockets; this only maps bytes to bytes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from lbcdn.memo import remember


@dataclass(frozen=True, slots=True)
class Prepared:
    """The engine's answers to one query under its current version."""
    answers: tuple[bytes, ...]  # rotation k at index k, sent in turn; one when fixed
    replay: bool                # False: answers[0] was made for this query alone; keep nothing


class AnswerEngine(Protocol):
    """What the fast path needs from lbcdn.dns.engine.Engine."""

    def prepare(self, query: bytes, *, tcp: bool, max_udp: int = 512,
                client: str = "") -> Prepared | None: ...

    def cacheable_key(self, query: bytes) -> bytes | None: ...

    @property
    def version(self) -> int: ...


class Peers(Protocol):
    """Where the datagrams of a batch came from (lbcdn.dns.udpbatch.DatagramBatch)."""

    def peer(self, i: int) -> str: ...


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
    __slots__ = ("exact", "cycles", "keyed", "in_cycles", "in_keyed")

    def __init__(self) -> None:
        self.exact: dict[bytes, bytes] = {}
        # query minus id -> (its rotations minus their ids, the key's turns: 0, 1, 2, ...)
        self.cycles: dict[bytes, tuple[tuple[bytes, ...], Iterator[int]]] = {}
        # engine key -> (answers minus id, end of their question section, turns)
        self.keyed: dict[bytes, tuple[tuple[bytes, ...], int, Iterator[int]]] = {}
        self.in_cycles = 0   # answers held by `cycles`
        self.in_keyed = 0    # answers held by `keyed`

    def clear(self) -> None:
        self.exact.clear()
        self.cycles.clear()
        self.keyed.clear()
        self.in_cycles = self.in_keyed = 0

    def held(self) -> int:
        return len(self.exact) + self.in_cycles + self.in_keyed


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

    def answer_udp(self, query: bytes, peers: Peers | None = None, i: int = 0) -> bytes | None:
        """The answer to send for one UDP query (datagram `i` of `peers`' batch), or None for
        silence."""
        if self.engine.version != self._version:
            self._flush()
        self.lookups += 1
        tail = self._udp.exact.get(query[2:])
        if tail is not None:
            return query[:2] + tail
        return self._miss(query, self._udp, False, peers, i)

    def answer_tcp(self, query: bytes, client: str = "") -> bytes | None:
        """The answer to one query received over TCP (no size cap), or None for silence."""
        if self.engine.version != self._version:
            self._flush()
        self.lookups += 1
        tail = self._tcp.exact.get(query[2:])
        if tail is not None:
            return query[:2] + tail
        return self._miss(query, self._tcp, True, None, 0, client)

    def entries(self) -> int:
        """Answers held, in every table."""
        return self._udp.held() + self._tcp.held()

    def _flush(self) -> None:
        self._version = self.engine.version
        self._udp.clear()
        self._tcp.clear()
        self.flushes += 1

    def _miss(self, query: bytes, tables: _Tables, tcp: bool, peers: Peers | None, i: int,
              client: str = "") -> bytes | None:
        cycle = tables.cycles.get(query[2:])
        if cycle is not None:
            tails, turns = cycle
            return query[:2] + tails[next(turns) % len(tails)]
        self.misses += 1
        engine = self.engine
        key = engine.cacheable_key(query)
        if key is not None:
            entry = tables.keyed.get(key)
            if entry is not None:
                stored, qend, turns = entry
                replayed = self._replay(query, stored, qend)
                if replayed is not None:
                    self.keyed_hits += 1
                    return self._store_exact(tables, query, replayed, turns)
        if peers is not None:
            client = peers.peer(i)
        prepared = engine.prepare(query, tcp=tcp, max_udp=self.max_udp, client=client)
        if prepared is None:
            return None
        out = prepared.answers[0]
        if key is None or not prepared.replay:
            self.uncacheable += 1
            return out
        if len(out) < 12 or engine.version != self._version:
            # A version that moved while answering means this answer may already be stale:
            # serve it once, keep nothing.
            return out
        tails = tuple(a[2:] for a in prepared.answers)
        turns = itertools.count()
        qend = question_end(out)
        if qend > 0:
            if tables.in_keyed + len(tails) > self.max_entries:
                tables.keyed.clear()
                tables.in_keyed = 0
            tables.keyed[key] = (tails, qend, turns)
            tables.in_keyed += len(tails)
        return self._store_exact(tables, query, tails, turns)

    @staticmethod
    def _replay(query: bytes, tails: tuple[bytes, ...], qend: int) -> tuple[bytes, ...] | None:
        # Each tail is an answer minus its id: its question occupies tail[10:qend-2].
        first = tails[0]
        if len(query) < qend or query[12:qend].lower() != first[10:qend - 2].lower():
            return None
        question = query[12:qend]
        return tuple(t[:10] + question + t[qend - 2:] for t in tails)

    def _store_exact(self, tables: _Tables, query: bytes, tails: tuple[bytes, ...],
                     turns: Iterator[int]) -> bytes:
        """Keep `tails` for this exact query; return the answer to send now (the first, or
        the rotation whose turn it is)."""
        if len(tails) == 1:
            return query[:2] + remember(tables.exact, query[2:], tails[0], self.max_entries)
        if tables.in_cycles + len(tails) > self.max_entries:
            tables.cycles.clear()
            tables.in_cycles = 0
        tables.cycles[query[2:]] = (tails, turns)
        tables.in_cycles += len(tails)
        return query[:2] + tails[next(turns) % len(tails)]
