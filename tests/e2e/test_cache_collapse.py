"""Request collapsing against a real `lbcdn serve` (one worker, then two): 200 concurrent
requests for a cold key, an expired entry, a soft-purged one, and one that stale-if-error is
serving make one origin request - the others wait for it and answer from it (nginx's
proxy_cache_lock with proxy_cache_use_stale updating). With `--workers 2` the workers share one
cache (lbcdn.cache.shared), so that is one origin request machine-wide too."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.cache_origin import Answer, Origin, scripted_origin
from tests.e2e.harness import HOST, DaemonProcess, RawClient, admin_port, free_port, \
    listener_port, wait_for_port
from tests.e2e.test_cache import cdn_config

CONCURRENT = 200
TOKEN = "tok"


async def burst(port: int, path: str, n: int = CONCURRENT) -> list[tuple[int, bytes, str]]:
    """`n` requests for `path` sent at once, each on its own connection (connected first, so
    they are spread over the workers and all in flight together): (status, body,
    Cache-Status) of each."""
    clients = await asyncio.gather(*(RawClient.open(port) for _ in range(n)))
    try:
        answers = await asyncio.wait_for(asyncio.gather(
            *(c.request("GET", path) for c in clients)), 30)
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    return [(r.status, r.body, r.header("Cache-Status") or "") for r in answers]


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    async with scripted_origin() as o:
        yield o


async def serve(origin: Origin, tmp: Path, workers: int) -> tuple[DaemonProcess, dict[str, Any]]:
    config = cdn_config(origin.port, storage={"disk_path": str(tmp / "disk")},
                        admin={"address": HOST, "port": free_port(), "token": TOKEN})
    daemon = await asyncio.to_thread(DaemonProcess, config, tmp, ["--workers", str(workers)])
    await asyncio.to_thread(wait_for_port, admin_port(config))
    return daemon, config


def revalidating(body: bytes, delay_s: float) -> Any:
    """Answers with `body` (max-age=1, an ETag); a conditional request gets a 304 after
    `delay_s`, so every request of a burst arrives while it is in flight."""
    def answer(method: str, headers: list[tuple[str, str]]) -> Answer:
        cc = [("Cache-Control", "max-age=1"), ("ETag", '"v1"')]
        if any(n.lower() == "if-none-match" for n, _ in headers):
            return Answer(304, cc, b"", delay_s=delay_s)
        return Answer(200, cc, body, delay_s=delay_s)
    return answer


def statuses(answers: list[tuple[int, bytes, str]]) -> Counter[str]:
    """Cache-Status members after ours, without the ttl: `fwd=stale; collapsed`."""
    return Counter("; ".join(m for m in s.split("; ")[1:] if not m.startswith("ttl="))
                   for _, _, s in answers)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
async def test_one_origin_request_per_key_at_a_time(origin: Origin, tmp_path: Path,
                                                    workers: int) -> None:
    daemon, config = await serve(origin, tmp_path, workers)
    port = listener_port(config)
    try:
        # cold keys from an origin that answers at once (the disk tier is looked up in a
        # thread: a fill could end and be stored meanwhile)
        for i in range(5):
            origin.set(f"/cold{i}", Answer(headers=[("Cache-Control", "max-age=600")]))
            answers = await burst(port, f"/cold{i}")
            assert {(s, b) for s, b, _ in answers} == {(200, b"hello")}, statuses(answers)
            assert origin.hits[f"/cold{i}"] == 1, statuses(answers)

        # expired: one revalidation (a 304 after 0.5 s) answers everyone
        origin.set("/exp", revalidating(b"v1", 0.5))
        await burst(port, "/exp", 20)
        filled = origin.hits["/exp"]
        assert filled == 1   # one fill, whichever worker each connection went to
        await asyncio.sleep(1.2)
        answers = await burst(port, "/exp")
        assert {(s, b) for s, b, _ in answers} == {(200, b"v1")}, statuses(answers)
        assert origin.hits["/exp"] - filled == 1, statuses(answers)
        assert statuses(answers)["fwd=stale; stored"] == origin.hits["/exp"] - filled

        # soft-purged: the same, though the entry is not expired
        origin.set("/soft", revalidating(b"s1", 0.5))
        origin.requests.clear()
        await burst(port, "/soft", 20)
        filled = origin.hits["/soft"]
        assert filled == 1
        url = f"http://{HOST}:{admin_port(config)}/api/cache/invalidations"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
            async with s.post(url, json={"paths": ["/soft"], "mode": "soft"}) as resp:
                assert resp.status == 201, await resp.text()
        answers = await burst(port, "/soft")
        assert {(s, b) for s, b, _ in answers} == {(200, b"s1")}, statuses(answers)
        assert origin.hits["/soft"] - filled == 1, statuses(answers)
        assert all("if-none-match" in {n.lower() for n, _ in h}
                   for _, h in origin.requests[-(origin.hits["/soft"] - filled):])

        # stale-if-error serving: the failing origin is asked once, everyone gets the stale copy
        origin.set("/sie", Answer(headers=[("Cache-Control", "max-age=1, stale-if-error=60")],
                                  body=b"kept"))
        await burst(port, "/sie", 20)
        filled = origin.hits["/sie"]
        assert filled == 1
        await asyncio.sleep(1.2)
        origin.set("/sie", Answer(503, [], b"down", delay_s=1.5))  # outlasts the burst
        answers = await burst(port, "/sie")
        assert {(s, b) for s, b, _ in answers} == {(200, b"kept")}, statuses(answers)
        assert origin.hits["/sie"] - filled == 1, statuses(answers)
        assert statuses(answers)["hit; fwd=stale; fwd-status=503; collapsed"] >= \
            CONCURRENT - 2 * workers
    finally:
        daemon.stop()
