"""tasks.spawn: the task runs, is strongly referenced until it ends (asyncio keeps only weak
references), its exception is logged with the task's name, cancellation is not an error."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref

import pytest

from lbcdn import tasks


async def test_spawn_runs_and_returns_the_task_with_its_name() -> None:
    async def work() -> int:
        await asyncio.sleep(0)
        return 42

    task = tasks.spawn(work(), "answer")
    assert task.get_name() == "answer"
    async with asyncio.timeout(2):
        assert await task == 42


async def test_a_live_task_is_kept_and_dropped_when_done() -> None:
    gate = asyncio.Event()
    finished = asyncio.Event()

    async def work() -> None:
        await gate.wait()
        finished.set()

    ref = weakref.ref(tasks.spawn(work(), "kept"))
    gc.collect()
    task = ref()
    assert task is not None and task in tasks._live
    del task
    gc.collect()
    assert ref() is not None  # nobody but tasks holds it, and it survives
    gate.set()
    async with asyncio.timeout(2):
        await finished.wait()
    await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert all(t.get_name() != "kept" for t in tasks._live)


async def test_exception_is_logged_with_the_task_name(caplog: pytest.LogCaptureFixture) -> None:
    async def fail() -> None:
        raise ValueError("broken on purpose")

    caplog.set_level(logging.ERROR, logger="lbcdn.tasks")
    task = tasks.spawn(fail(), "failing-task")
    async with asyncio.timeout(2):
        with pytest.raises(ValueError):
            await task
    await asyncio.sleep(0)
    records = [r for r in caplog.records if r.name == "lbcdn.tasks"]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert "failing-task" in records[0].getMessage()
    assert records[0].exc_info is not None and records[0].exc_info[0] is ValueError
    assert task not in tasks._live


async def test_exception_is_logged_even_when_nobody_awaits(
        caplog: pytest.LogCaptureFixture) -> None:
    async def fail() -> None:
        raise RuntimeError("unobserved")

    caplog.set_level(logging.ERROR, logger="lbcdn.tasks")
    tasks.spawn(fail(), "fire-and-forget")
    for _ in range(5):
        await asyncio.sleep(0)
    messages = [r.getMessage() for r in caplog.records if r.name == "lbcdn.tasks"]
    assert messages == ["task fire-and-forget failed"]


async def test_cancelled_task_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def forever() -> None:
        await asyncio.sleep(3600)

    caplog.set_level(logging.DEBUG, logger="lbcdn.tasks")
    task = tasks.spawn(forever(), "cancelled-task")
    await asyncio.sleep(0)
    task.cancel()
    async with asyncio.timeout(2):
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.sleep(0)
    assert [r for r in caplog.records if r.name == "lbcdn.tasks"] == []
    assert task not in tasks._live


async def test_successful_task_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def ok() -> None:
        return None

    caplog.set_level(logging.DEBUG, logger="lbcdn.tasks")
    task = tasks.spawn(ok(), "fine")
    async with asyncio.timeout(2):
        await task
    await asyncio.sleep(0)
    assert [r for r in caplog.records if r.name == "lbcdn.tasks"] == []
    assert task not in tasks._live


def test_spawn_outside_a_loop_raises_and_leaves_nothing_behind() -> None:
    async def never() -> None:
        pass

    coro = never()
    before = len(tasks._live)
    with pytest.raises(RuntimeError):
        tasks.spawn(coro, "no-loop")
    coro.close()
    assert len(tasks._live) == before
