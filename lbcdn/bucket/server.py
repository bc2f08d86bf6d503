"""BucketServer: the bucket origin's listeners (S3 API, and optionally a website port).

Job: build the runtime from a BucketsConfig, prepare the directory layout (blocking work in a
thread), and serve two aiohttp apps: the S3 API port (which also serves a bucket's website when
the Host names a website host) and the optional website-only port. The daemon starts it
after its pools and stops it before them; `ports` tells which ports were bound (port 0 picks
free ones).

Rules: start() either binds everything or, on failure, closes what it bound and re-raises;
stop() stops accepting, lets in-flight requests run up to `drain_timeout_s`, then closes.
Both listeners have the edge's limits (`buckets.limits`, lbcdn.aiolistener). The lifecycle
pass (lifecycle.py) runs here, in a thread, every `buckets.lifecycle.interval_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from lbcdn.aiolistener import AppListener, serve_app
from lbcdn.bucket.config import BucketsConfig
from lbcdn.bucket.runtime import BucketRuntime
from lbcdn.bucket.s3api import S3Api
from lbcdn.bucket.website import Website

log = logging.getLogger("lbcdn.bucket.server")


class BucketServer:
    def __init__(self, config: BucketsConfig, runtime: BucketRuntime | None = None) -> None:
        self.config = config
        self.runtime = runtime or BucketRuntime.build(config)
        self.api = S3Api(self.runtime)
        self.website = Website(self.runtime)
        self._listeners: list[AppListener] = []
        self._lifecycle_task: asyncio.Task[None] | None = None
        self.port: int | None = None
        self.website_port: int | None = None

    @property
    def ports(self) -> dict[str, int]:
        out = {}
        if self.port is not None:
            out["s3"] = self.port
        if self.website_port is not None:
            out["website"] = self.website_port
        return out

    async def _s3_handler(self, request: web.Request) -> web.StreamResponse:
        bucket = self.runtime.website_bucket(request.headers.get("Host", ""))
        if bucket is not None:
            return await self.website.serve(request, bucket)
        return await self.api.handle(request)

    def _app(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
             ) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_route("*", "/{tail:.*}", handler, expect_handler=_expect)
        return app

    async def _serve(self, name: str, app: web.Application, address: str, port: int,
                     max_connections: int) -> int:
        listener = await serve_app(app, name, address, port, self.config.limits,
                                   max_connections,
                                   shutdown_timeout_s=self.config.drain_timeout_s)
        self._listeners.append(listener)
        return listener.port

    async def start(self, caps: Mapping[str, int] | None = None) -> None:
        """`caps`: the connection cap of the "s3" and "website" listeners, when not
        `limits.max_connections` (fitted to the descriptor limit by the caller)."""
        caps = caps or {}
        cfg = self.config
        default = cfg.limits.max_connections
        try:
            await asyncio.to_thread(self.runtime.prepare)
            self.port = await self._serve("S3 API", self._app(self._s3_handler), cfg.address,
                                          cfg.port, caps.get("s3", default))
            log.info("S3 API on %s:%d (root %s)", cfg.address, self.port, cfg.root)
            if cfg.website_port is not None:
                self.website_port = await self._serve(
                    "website", self._app(self.website.handle), cfg.website_address,
                    cfg.website_port, caps.get("website", default))
                log.info("bucket websites on %s:%d", cfg.website_address, self.website_port)
            self._lifecycle_task = asyncio.create_task(self._lifecycle_loop())
        except BaseException:
            await self.stop()
            raise

    async def _lifecycle_loop(self) -> None:
        """Apply lifecycle rules every `lifecycle.interval_s` (bounded work per pass)."""
        rt = self.runtime
        while True:
            await asyncio.sleep(self.config.lifecycle.interval_s)
            try:
                stats = await asyncio.to_thread(rt.lifecycle.run_pass, rt.clock())
            except Exception:
                log.exception("lifecycle pass failed")
                continue
            if stats.expired or stats.noncurrent_expired or stats.markers_removed or \
                    stats.uploads_aborted:
                log.info("lifecycle pass: %s", stats)

    async def stop(self) -> None:
        if self._lifecycle_task is not None:
            self._lifecycle_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lifecycle_task
            self._lifecycle_task = None
        listeners, self._listeners = self._listeners, []
        for listener in reversed(listeners):
            await listener.stop()


async def _expect(request: web.Request) -> None:
    """aiohttp answers `Expect: 100-continue` before the handler runs; S3 answers it only
    once the request is authorized (S3Api sends the 100 itself, before reading the body)."""
    expect = request.headers.get("Expect", "")
    if expect and expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
