"""Request collapsing: concurrent misses for one key make one origin request.

The bookkeeping is a small state machine keyed by the primary cache key:
- the first miss leads (`join` returns a Lead with a token) and fetches from the origin;
- later misses wait (a Waiter with a deadline and a callback);
- when the leader's response head arrives and it can be shared (storable), the leader
  `publish`es its Fill: every waiter's callback gets it at once, and requests arriving while
  the body still streams join the Fill directly (`join` returns the Fill) - so a large object
  streams to all of them as it arrives, not when it is complete;
- a leader that revalidated a stored response and got no new body (a 304, or an origin failure
  that stale-if-error covers) `settle`s with a Reuse: every waiter answers from the entry it
  carries (freshened, or stale in place of the failed origin) - so an expired or soft-purged
  key makes one origin request however many ask for it, as nginx's proxy_cache_lock with
  proxy_cache_use_stale updating does;
- when it cannot be shared (not storable, error, a Vary the waiter does not match), the leader
  `release`s: waiters get GO_ALONE and fetch for themselves, as with nginx's proxy_cache_lock;
- a waiter whose deadline passes (the lock timeout) gets TIMEOUT and fetches for itself; a
  leader older than the lock timeout no longer blocks new requests: the next one leads.

Pure apart from `wait`, the asyncio adapter: `now` is passed in, callbacks are plain calls,
`expire(now)` is driven by whoever owns the clock (a loop timer, or a test).
"""

from __future__ import annotations

import asyncio
import enum
import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count

from lbcdn.cache.entry import CachedResponse
from lbcdn.cache.store import Fill


class Signal(enum.Enum):
    GO_ALONE = "go-alone"     # the leader's response cannot be shared: fetch yourself
    TIMEOUT = "timeout"       # the lock timeout passed: fetch yourself


@dataclass(frozen=True, slots=True)
class Reuse:
    """A revalidation that brought no new body: `entry` freshened by a 304, or (`failed`) the
    stale entry, for waiters whose own request lets stale stand in for a failed origin
    (`fwd_status`: the origin's error status, None when there was no answer); or (`hit`) a
    fresh entry another worker stored (lbcdn.cache.shared), a plain hit for waiters."""
    entry: CachedResponse
    failed: bool = False
    fwd_status: int | None = None
    hit: bool = False


Result = Fill | Reuse | Signal
Callback = Callable[[Result], None]


@dataclass(frozen=True, slots=True)
class Lead:
    key: bytes
    token: int


@dataclass(eq=False, slots=True)
class Waiter:
    key: bytes
    deadline: float
    callback: Callback
    done: bool = False


@dataclass(slots=True)
class _Slot:
    token: int
    started: float
    timeout: float
    waiters: list[Waiter] = field(default_factory=list)
    fill: Fill | None = None


class Collapser:
    def __init__(self) -> None:
        self._slots: dict[bytes, _Slot] = {}
        self._deadlines: list[tuple[float, int, Waiter]] = []
        self._tokens = count(1)
        self._seq = count()
        self.collapsed = 0      # requests that were served by another request's fetch
        self.timeouts = 0

    def __len__(self) -> int:
        return len(self._slots)

    def waiting(self, key: bytes) -> int:
        slot = self._slots.get(key)
        return sum(not w.done for w in slot.waiters) if slot else 0

    def join(self, key: bytes, now: float, timeout_s: float,
             callback: Callback) -> Lead | Waiter | Fill:
        slot = self._slots.get(key)
        if slot is not None and slot.fill is not None:
            if slot.fill.reader_possible():
                self.collapsed += 1
                return slot.fill
            slot = None  # the fill is past the point where a newcomer can start
        if slot is None or now - slot.started > slot.timeout:
            if slot is not None:
                self._resolve(slot, Signal.GO_ALONE)
            token = next(self._tokens)
            self._slots[key] = _Slot(token, now, timeout_s)
            return Lead(key, token)
        waiter = Waiter(key, now + timeout_s, callback)
        slot.waiters.append(waiter)
        heapq.heappush(self._deadlines, (waiter.deadline, next(self._seq), waiter))
        return waiter

    def _current(self, lead: Lead) -> _Slot | None:
        slot = self._slots.get(lead.key)
        return slot if slot is not None and slot.token == lead.token else None

    def publish(self, lead: Lead, fill: Fill) -> None:
        """The leader's response is shareable: waiters follow `fill`; so do newcomers until
        it ends."""
        slot = self._current(lead)
        if slot is None:
            return
        slot.fill = fill
        self._resolve(slot, fill)
        if fill.finished:
            del self._slots[lead.key]
            return

        def ended(f: Fill) -> None:
            if f.finished:
                f.unlisten(ended)
                if self._slots.get(lead.key) is slot:
                    del self._slots[lead.key]
        fill.listen(ended)

    def settle(self, lead: Lead, reuse: Reuse) -> None:
        """The leader's revalidation ended without a new body: waiters answer from
        `reuse.entry`; newcomers find the entry in the store."""
        slot = self._current(lead)
        if slot is None:
            return
        del self._slots[lead.key]
        self._resolve(slot, reuse)

    def release(self, lead: Lead) -> None:
        """The leader's response cannot be shared (or it failed): waiters go alone."""
        slot = self._current(lead)
        if slot is None:
            return
        del self._slots[lead.key]
        self._resolve(slot, Signal.GO_ALONE)

    def _resolve(self, slot: _Slot, result: Result) -> None:
        waiters, slot.waiters = slot.waiters, []
        for w in waiters:
            if not w.done:
                w.done = True
                if not isinstance(result, Signal):
                    self.collapsed += 1
                w.callback(result)

    def cancel(self, waiter: Waiter) -> None:
        """The waiting client went away."""
        waiter.done = True

    def expire(self, now: float) -> int:
        """Time out waiters whose deadline has passed; returns how many."""
        n = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, w = heapq.heappop(self._deadlines)
            if not w.done:
                w.done = True
                n += 1
                self.timeouts += 1
                w.callback(Signal.TIMEOUT)
        return n

    def next_deadline(self) -> float | None:
        while self._deadlines and self._deadlines[0][2].done:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None


async def wait(collapser: Collapser, key: bytes, timeout_s: float) -> Lead | Result:
    """Join on the running loop's clock: a Lead (fetch, then publish or release), a Fill to
    follow, or a Signal (fetch alone). The lock timeout is a loop timer; cancelling the
    awaiting task cancels the wait."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Result] = loop.create_future()

    def deliver(result: Result) -> None:
        if not future.done():
            future.set_result(result)

    joined = collapser.join(key, loop.time(), timeout_s, deliver)
    if not isinstance(joined, Waiter):
        return joined
    timer = loop.call_at(joined.deadline, collapser.expire, joined.deadline)
    try:
        return await future
    finally:
        timer.cancel()
        collapser.cancel(joined)
