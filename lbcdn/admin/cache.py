"""Admin API for the edge cache: CloudFront-style invalidations.

POST /api/cache/invalidations  {"paths": ["/index.html", "/images/*"], "tags": ["blue"],
                                "mode": "hard" | "soft", "hosts": ["example.com"],
                                "caller_reference": "deploy-42"}
  -> 201 the invalidation (`id`, `status`, `purged`, ...); 400 {"error"} for a bad path or tag.
GET  /api/cache/invalidations        -> {"invalidations": [...]} newest first
GET  /api/cache/invalidations/{id}   -> one invalidation; 404 when unknown

Rules: the registry (ids, statuses, idempotent caller references) lives in the process that
serves the admin API (the control process with workers); applying an invalidation is the
daemon's job (`CacheInvalidator.invalidate_cache`: its own stores in one process, a JSON op to
every worker with `--workers N`), and it is `Completed` once every process applied it, before
the answer - so a purge is effective for every worker when the caller hears back.
"""

from __future__ import annotations

import time
from typing import Final, Protocol, runtime_checkable

from aiohttp import web

from lbcdn.admin.keys import STATE_KEY
from lbcdn.cache.invalidation import Invalidation, InvalidationError, Registry


@runtime_checkable
class CacheInvalidator(Protocol):
    async def invalidate_cache(self, inv: Invalidation) -> int:
        """Apply `inv` to every data-plane process's stores; the objects affected."""
        ...


REGISTRY_KEY: Final = web.AppKey("lbcdn_cache_invalidations", Registry)


def _invalidator(request: web.Request) -> CacheInvalidator:
    state = request.app[STATE_KEY]
    if not isinstance(state, CacheInvalidator):
        raise web.HTTPNotFound(reason="this daemon has no edge cache")
    return state


def _strings(body: dict[str, object], key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidationError(f"{key} must be a list of strings")
    return value


async def _create(request: web.Request) -> web.Response:
    invalidator = _invalidator(request)
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "body must be JSON"}, status=400)
    if not isinstance(body, dict):
        return web.json_response({"error": "body must be a JSON object"}, status=400)
    registry = request.app[REGISTRY_KEY]
    try:
        mode = body.get("mode", "hard")
        if mode not in ("hard", "soft"):
            raise InvalidationError('mode must be "hard" or "soft"')
        ref = body.get("caller_reference")
        if ref is not None and not isinstance(ref, str):
            raise InvalidationError("caller_reference must be a string")
        known = registry.list()
        inv = registry.create(_strings(body, "paths"), _strings(body, "tags"),
                              soft=mode == "soft", hosts=_strings(body, "hosts"),
                              caller_reference=ref, now=time.time())
    except InvalidationError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    if any(inv is k for k in known):
        return web.json_response(inv.describe(), status=200)  # the same caller_reference
    purged = await invalidator.invalidate_cache(inv)
    inv = registry.complete(inv.id, time.time(), purged)
    return web.json_response(inv.describe(), status=201)


async def _list(request: web.Request) -> web.Response:
    _invalidator(request)
    return web.json_response({"invalidations": [
        i.describe() for i in request.app[REGISTRY_KEY].list()]})


async def _get(request: web.Request) -> web.Response:
    _invalidator(request)
    inv = request.app[REGISTRY_KEY].get(request.match_info["id"])
    if inv is None:
        raise web.HTTPNotFound(reason="no such invalidation")
    return web.json_response(inv.describe())


def add_routes(app: web.Application, registry: Registry | None = None) -> None:
    """Register the cache routes on the admin app (a registry may be passed to keep the
    history across admin restarts)."""
    app[REGISTRY_KEY] = registry if registry is not None else Registry()
    app.router.add_post("/api/cache/invalidations", _create)
    app.router.add_get("/api/cache/invalidations", _list)
    app.router.add_get("/api/cache/invalidations/{id}", _get)
