"""Request collapsing with a fake clock, and the asyncio adapter on a real loop."""

from __future__ import annotations

import asyncio

from lbcdn.cache.collapse import Collapser, Lead, Result, Reuse, Signal, Waiter, wait
from lbcdn.cache.config import CachePolicyConfig
from lbcdn.cache.entry import build
from lbcdn.cache.store import Fill


def fill(max_bytes: int = 100) -> Fill:
    return Fill(200, [], expected_bytes=None, max_bytes=max_bytes)


def test_first_leads_others_wait_and_follow_the_fill() -> None:
    c = Collapser()
    got: list[Result] = []
    lead = c.join(b"k", 0.0, 5.0, got.append)
    assert isinstance(lead, Lead)
    waiters = [c.join(b"k", 0.1, 5.0, got.append) for _ in range(3)]
    assert all(isinstance(w, Waiter) for w in waiters) and c.waiting(b"k") == 3
    other = c.join(b"other", 0.1, 5.0, got.append)
    assert isinstance(other, Lead)
    f = fill()
    c.publish(lead, f)
    assert got == [f, f, f] and c.collapsed == 3
    # While the body streams, newcomers follow the same fill from byte 0.
    f.append(b"abc")
    assert c.join(b"k", 0.2, 5.0, got.append) is f and c.collapsed == 4
    f.finish()
    # Once the fill ends the key is free: the next miss (if the store lacks it) leads.
    assert isinstance(c.join(b"k", 0.3, 5.0, got.append), Lead)


def test_release_sends_waiters_alone() -> None:
    c = Collapser()
    got: list[Result] = []
    lead = c.join(b"k", 0.0, 5.0, got.append)
    assert isinstance(lead, Lead)
    c.join(b"k", 0.0, 5.0, got.append)
    c.release(lead)
    assert got == [Signal.GO_ALONE] and len(c) == 0
    c.release(lead)               # twice: harmless
    c.publish(lead, fill())       # a stale token: ignored
    assert len(c) == 0


def test_a_revalidation_settles_its_waiters_with_the_entry() -> None:
    """An expired or purged key: the leader revalidates, the waiters answer from its outcome
    (the freshened entry, or the stale one when the origin failed) without a fetch of their
    own; the key is then free."""
    entry = build(key=b"k", variant=b"", host=b"h", path=b"/", query=b"", status=200,
                  headers=[(b"Cache-Control", b"max-age=60")], chunks=(b"x",),
                  request_time=0.0, response_time=0.0, policy=CachePolicyConfig(), now=0.0)
    for reuse in (Reuse(entry), Reuse(entry, failed=True, fwd_status=503)):
        c = Collapser()
        got: list[Result] = []
        lead = c.join(b"k", 0.0, 5.0, got.append)
        assert isinstance(lead, Lead)
        for _ in range(3):
            c.join(b"k", 0.1, 5.0, got.append)
        c.settle(lead, reuse)
        assert got == [reuse] * 3 and c.collapsed == 3 and len(c) == 0
        assert c.expire(100) == 0   # settled waiters do not time out later
        c.settle(lead, reuse)       # a stale token: ignored
        assert got == [reuse] * 3
        assert isinstance(c.join(b"k", 0.2, 5.0, got.append), Lead)


def test_lock_timeout() -> None:
    c = Collapser()
    got: list[Result] = []
    lead = c.join(b"k", 0.0, 5.0, got.append)
    w1 = c.join(b"k", 1.0, 5.0, got.append)
    w2 = c.join(b"k", 2.0, 5.0, got.append)
    assert isinstance(w1, Waiter) and isinstance(w2, Waiter)
    assert c.next_deadline() == 6.0
    assert c.expire(5.9) == 0
    assert c.expire(6.0) == 1 and got == [Signal.TIMEOUT]
    c.cancel(w2)
    assert c.next_deadline() is None and c.expire(100) == 0 and c.timeouts == 1
    # A leader older than the lock timeout no longer blocks: the next request leads.
    assert isinstance(lead, Lead)
    w3 = c.join(b"k", 4.5, 5.0, got.append)
    assert isinstance(w3, Waiter)
    new = c.join(b"k", 5.01 + 1, 5.0, got.append)
    assert isinstance(new, Lead) and new.token != lead.token
    assert got[-1] is Signal.GO_ALONE      # w3 was told to go alone
    c.publish(lead, fill())                # the old leader's late publish changes nothing
    assert c.waiting(b"k") == 0


def test_fill_past_its_start_is_not_joined() -> None:
    c = Collapser()
    lead = c.join(b"k", 0.0, 5.0, lambda r: None)
    assert isinstance(lead, Lead)
    f = fill(max_bytes=1)
    c.publish(lead, f)
    r = f.reader()
    assert r is not None
    f.append(b"too big to keep")
    r.take()
    assert not f.reader_possible()
    assert isinstance(c.join(b"k", 0.1, 5.0, lambda r: None), Lead)


def test_published_finished_fill_frees_the_key() -> None:
    c = Collapser()
    lead = c.join(b"k", 0.0, 5.0, lambda r: None)
    assert isinstance(lead, Lead)
    f = fill()
    f.finish()
    c.publish(lead, f)
    assert len(c) == 0


async def test_thousand_concurrent_misses_make_one_fetch() -> None:
    c = Collapser()
    fetches = 0
    bodies: list[bytes] = []

    async def request() -> None:
        nonlocal fetches
        joined = await wait(c, b"cold", 5.0)
        if isinstance(joined, Lead):
            fetches += 1
            await asyncio.sleep(0.01)      # the origin takes a while
            f = fill(max_bytes=1 << 20)
            c.publish(joined, f)
            f.append(b"body")
            f.finish()
            joined = f
        assert isinstance(joined, Fill)
        r = joined.reader()
        assert r is not None
        got: list[bytes] = []
        while True:
            got += r.take()
            if r.at_end:
                break
            await asyncio.sleep(0)
        bodies.append(b"".join(got))

    await asyncio.wait_for(asyncio.gather(*(request() for _ in range(1000))), 10)
    assert fetches == 1 and bodies == [b"body"] * 1000 and c.collapsed == 999


async def test_async_wait_times_out_and_cancels() -> None:
    c = Collapser()
    lead = await wait(c, b"k", 5.0)
    assert isinstance(lead, Lead)
    assert await asyncio.wait_for(wait(c, b"k", 0.05), 2) is Signal.TIMEOUT
    task = asyncio.ensure_future(wait(c, b"k", 5.0))
    await asyncio.sleep(0.01)
    assert c.waiting(b"k") == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert c.waiting(b"k") == 0
