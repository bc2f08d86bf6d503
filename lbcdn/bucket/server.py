"""BucketServer: the bucket origin's listeners (S3 API, and optionally a website port).

Job: build the runtime from a BucketsConfig, prepare the directory layout (blocking work in a
thread), and serve two aiohttp apps: the S3 API port (which also serves a bucket's website when
the Host names a website host) and the optional website-only port. The daemon starts it
after its pools and stops it before them; `ports` tells which ports were bound (port 0 picks
free ones).

Rules: start() either binds everything or, on failure, closes what it bound and re-raises;
stop() stops accepting, lets in-flight requests run up to `drain_timeout_s`, then closes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web

from lbcdn.bucket.config import BucketsConfig
from lbcdn.bucket.runtime import BucketRuntime
from lbcdn.bucket.s3api import S3Api
from lbcdn.bucket.website import Website

log = logging.getLogger("lbcdn.bucket.server")


def _bound_port(runner: web.AppRunner) -> int:
    for addr in runner.addresses:
        if isinstance(addr, tuple):
            return int(addr[1])
    raise RuntimeError("no bound address")


class BucketServer:
    def __init__(self, config: BucketsConfig, runtime: BucketRuntime | None = None) -> None:
        self.config = config
        self.runtime = runtime or BucketRuntime.build(config)
        self.api = S3Api(self.runtime)
        self.website = Website(self.runtime)
        self._runners: list[web.AppRunner] = []
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
        app = web.Application(client_max_size=1 << 20, handler_args={"max_field_size": 16384})
        app.router.add_route("*", "/{tail:.*}", handler)
        return app

    async def _serve(self, app: web.Application, address: str, port: int) -> int:
        runner = web.AppRunner(app, handle_signals=False, access_log=None,
                               shutdown_timeout=self.config.drain_timeout_s)
        await runner.setup()
        self._runners.append(runner)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(1024)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        site = web.SockSite(runner, sock)
        await site.start()
        return _bound_port(runner)

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self.runtime.prepare)
            cfg = self.config
            self.port = await self._serve(self._app(self._s3_handler), cfg.address, cfg.port)
            log.info("S3 API on %s:%d (root %s)", cfg.address, self.port, cfg.root)
            if cfg.website_port is not None:
                self.website_port = await self._serve(self._app(self.website.handle),
                                                      cfg.website_address, cfg.website_port)
                log.info("bucket websites on %s:%d", cfg.website_address, self.website_port)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        runners, self._runners = self._runners, []
        for runner in reversed(runners):
            await runner.cleanup()
