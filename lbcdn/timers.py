"""A cheap re-armable deadline for protocol objects.

Data-plane connections move their deadline on every read; cancelling and re-creating a loop
TimerHandle each time would cost more than the read. `Deadline.set` only stores a number; the one
loop timer fires at the old deadline, sees the deadline moved and re-schedules itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    __slots__ = ("_loop", "_time", "_callback", "_handle", "_when", "at")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._time = loop.time   # bound once: set() runs a few times per request
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._when = 0.0
        self.at: float | None = None

    def set(self, delay: float) -> None:
        at = self._time() + delay
        self.at = at
        if self._handle is None:
            self._when = at
            self._handle = self._loop.call_at(at, self._fire)
        elif at < self._when:
            self._handle.cancel()
            self._when = at
            self._handle = self._loop.call_at(at, self._fire)

    def clear(self) -> None:
        self.at = None

    def cancel(self) -> None:
        self.at = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        at = self.at
        if at is None:
            return
        if self._time() < at:
            self._when = at
            self._handle = self._loop.call_at(at, self._fire)
            return
        self.at = None
        self._callback()
