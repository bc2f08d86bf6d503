"""Deadline: one loop timer per deadline; set() only stores when it moves later, re-arms when it
moves earlier; the callback runs once, at the latest deadline set, unless cleared or cancelled.
Mostly with a fake loop (exact times, no sleeping), plus one real-loop check."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from lbcdn.timers import Deadline


class FakeHandle:
    def __init__(self, loop: FakeLoop, when: float, callback: Callable[[], None]) -> None:
        self.loop = loop
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    def __init__(self) -> None:
        self.now = 100.0
        self.handles: list[FakeHandle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeHandle:
        handle = FakeHandle(self, when, callback)
        self.handles.append(handle)
        return handle

    def live(self) -> list[FakeHandle]:
        return [h for h in self.handles if not h.cancelled]

    def advance(self, seconds: float) -> None:
        """Move time on, running due timers in time order (as a loop would)."""
        target = self.now + seconds
        while True:
            due = sorted((h for h in self.live() if h.when <= target), key=lambda h: h.when)
            if not due:
                break
            handle = due[0]
            self.handles.remove(handle)
            self.now = max(self.now, handle.when)
            handle.callback()
        self.now = target


@pytest.fixture
def loop() -> FakeLoop:
    return FakeLoop()


def make(loop: FakeLoop) -> tuple[Deadline, list[float]]:
    fired: list[float] = []
    fake: Any = loop
    return Deadline(fake, lambda: fired.append(loop.now)), fired


def test_fires_once_at_the_deadline(loop: FakeLoop) -> None:
    d, fired = make(loop)
    d.set(5)
    assert d.at == 105.0
    loop.advance(4.99)
    assert fired == []
    loop.advance(0.01)
    assert fired == [105.0]
    assert d.at is None
    loop.advance(100)
    assert fired == [105.0]
    assert loop.live() == []


def test_moving_later_keeps_one_timer_and_fires_at_the_new_time(loop: FakeLoop) -> None:
    d, fired = make(loop)
    d.set(1)
    d.set(3)
    d.set(5)
    assert len(loop.live()) == 1  # no new timer per set()
    loop.advance(1)
    assert fired == []            # the old timer woke up, saw the move and re-armed
    assert len(loop.live()) == 1
    loop.advance(4)
    assert fired == [105.0]


def test_moving_later_many_times_fires_only_at_the_last(loop: FakeLoop) -> None:
    d, fired = make(loop)
    for _ in range(50):
        d.set(2)
        loop.advance(1)
    assert fired == []
    loop.advance(2)
    assert fired == [151.0]  # last set() at 149 + 2


def test_moving_earlier_rearms_the_timer(loop: FakeLoop) -> None:
    d, fired = make(loop)
    d.set(10)
    first = loop.live()[0]
    d.set(2)
    assert first.cancelled
    assert [h.when for h in loop.live()] == [102.0]
    loop.advance(2)
    assert fired == [102.0]


def test_clear_stops_the_callback_and_set_again_works(loop: FakeLoop) -> None:
    d, fired = make(loop)
    d.set(1)
    d.clear()
    assert d.at is None
    loop.advance(5)
    assert fired == []
    d.set(1)
    loop.advance(1)
    assert fired == [106.0]


def test_clear_then_set_later_than_the_pending_timer(loop: FakeLoop) -> None:
    d, fired = make(loop)
    d.set(1)
    d.clear()
    d.set(3)           # the old timer is still armed at 101 and must not fire the callback
    loop.advance(1)
    assert fired == []
    loop.advance(2)
    assert fired == [103.0]


def test_cancel_removes_the_loop_timer(loop: FakeLoop) -> None:
    d, fired = make(loop)
    d.set(1)
    d.cancel()
    assert loop.live() == []
    assert d.at is None
    loop.advance(5)
    assert fired == []


def test_cancel_is_idempotent_and_set_after_cancel_works(loop: FakeLoop) -> None:
    d, fired = make(loop)
    d.cancel()
    d.cancel()
    d.set(2)
    loop.advance(2)
    assert fired == [102.0]


def test_set_again_after_firing(loop: FakeLoop) -> None:
    d, fired = make(loop)
    d.set(1)
    loop.advance(1)
    d.set(1)
    loop.advance(1)
    assert fired == [101.0, 102.0]


def test_callback_may_set_the_deadline_again(loop: FakeLoop) -> None:
    fired: list[float] = []
    fake: Any = loop

    def callback() -> None:
        fired.append(loop.now)
        if len(fired) < 3:
            d.set(1)

    d = Deadline(fake, callback)
    d.set(1)
    loop.advance(10)
    assert fired == [101.0, 102.0, 103.0]


async def test_real_loop_fires_after_the_moved_deadline() -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    fired_at: list[float] = []

    def callback() -> None:
        fired_at.append(loop.time())
        done.set()

    d = Deadline(loop, callback)
    start = loop.time()
    d.set(0.02)
    d.set(0.06)
    async with asyncio.timeout(2):
        await done.wait()
    assert fired_at[0] - start >= 0.06
    assert len(fired_at) == 1


async def test_real_loop_cleared_deadline_never_fires() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    d = Deadline(loop, lambda: fired.append(loop.time()))
    d.set(0.01)
    d.clear()
    await asyncio.sleep(0.05)
    assert fired == []
    d.cancel()
