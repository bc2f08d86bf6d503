"""Invalidations reach every worker: `lbcdn serve --workers 2`, each worker with its memory copy
of the shared store (lbcdn.cache.shared), the admin API in the control process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.cache_origin import Answer, scripted_origin
from tests.e2e.harness import HOST, DaemonProcess, RawClient, admin_port, free_port, \
    listener_port, wait_for_port
from tests.e2e.test_cache import cdn_config


async def fetch_many(port: int, n: int, path: str = "/page") -> list[bytes]:
    bodies = []
    for _ in range(n):  # a new connection each time: the kernel spreads them over the workers
        c = await RawClient.open(port)
        try:
            r = await c.request("GET", path)
            assert r.status == 200, r
            bodies.append(r.body)
        finally:
            await c.close()
    return bodies


@pytest.mark.slow
async def test_invalidation_is_effective_in_every_worker(tmp_path: Path) -> None:
    async with scripted_origin() as origin:
        origin.set("/page", Answer(headers=[("Cache-Control", "max-age=600")], body=b"v1"))
        config = cdn_config(origin.port, admin={"address": HOST, "port": free_port(),
                                                "token": "tok"})
        daemon = DaemonProcess(config, tmp_path, ["--workers", "2"])
        try:
            await asyncio.to_thread(wait_for_port, admin_port(config))
            port = listener_port(config)
            assert set(await fetch_many(port, 30)) == {b"v1"}
            assert origin.hits["/page"] == 1  # one fill: the workers share it
            origin.set("/page", Answer(headers=[("Cache-Control", "max-age=600")], body=b"v2"))
            url = f"http://{HOST}:{admin_port(config)}/api/cache/invalidations"
            async with aiohttp.ClientSession(headers={"Authorization": "Bearer tok"}) as s:
                async with s.post(url, json={"paths": ["/page"]}) as resp:
                    assert resp.status == 201
                    inv = await resp.json()
            assert inv["status"] == "Completed" and inv["purged"] == 1
            assert set(await fetch_many(port, 30)) == {b"v2"}
            assert origin.hits["/page"] == 2
        finally:
            daemon.stop()
