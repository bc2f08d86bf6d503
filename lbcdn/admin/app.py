"""The admin HTTP API (aiohttp): health, Prometheus metrics and the JSON API under /api/.

Rules of this module:
- /healthz and /metrics are open: probes and scrapers carry no credentials, and neither can
  change anything.
- Everything under /api/ goes through one auth middleware when a token is configured, so an
  endpoint added later under /api/ is protected without doing anything. The check looks at both
  the request path and the route it resolved to, so no spelling of a URL reaches an /api/
  handler unchecked, and unknown /api/ paths answer 401 rather than revealing what exists.
  A missing or wrong token is 401 with `WWW-Authenticate: Bearer` (RFC 6750; a wrong one adds
  error="invalid_token"); 403 only answers state changes when no token is configured at all.
- Every error is JSON `{"error": "..."}`, including aiohttp's own 404/405 and crashes (500,
  details only in the daemon log).
- aiohttp is used here on purpose (DESIGN.md): the admin API is not a hot path.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from lbcdn.admin import acme, cache, dns, routes, status, targets
from lbcdn.aiolistener import AppListener, serve_app
from lbcdn.admin.keys import STATE_KEY
from lbcdn.admin.peers import fanout_middleware
from lbcdn.admin.state import AdminState
from lbcdn.config.schema import AdminConfig
from lbcdn.configkit.limits import HttpLimitsConfig
from lbcdn.configkit.errors import ConfigError
from lbcdn.metrics import render_metrics

log = logging.getLogger("lbcdn.admin")

_API_PREFIX: Final = "/api/"


def _dumps(data: object) -> str:
    # default=str: a runtime view holding an enum or a Path should still render, not 500.
    return json.dumps(data, default=str)


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The one shape of every admin API error."""
    return web.json_response({"error": message}, status=status, headers=headers)


def _is_api(request: web.Request) -> bool:
    path = request.path
    if path == "/api" or path.startswith(_API_PREFIX):
        return True
    # The resolved route too: a handler registered under /api/ is protected however the URL
    # that reached it was spelled.
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical.startswith(_API_PREFIX)


def _auth_middleware(token: str) -> Middleware:
    expected = token.encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _is_api(request):
            return await handler(request)
        header = request.headers.get("Authorization")
        scheme, _, credentials = (header or "").partition(" ")
        if header is None or scheme.lower() != "bearer" or not credentials.strip():
            return json_error(401, "authorization required: send 'Authorization: Bearer <token>'",
                              {"WWW-Authenticate": 'Bearer realm="lbcdn-admin"'})
        # Constant-time compare so response timing does not leak how much of a guess matched.
        # A wrong token is 401 with error="invalid_token" (RFC 6750 section 3.1), not 403:
        # 403 is kept for what no token could allow (see _no_token_read_only).
        if not hmac.compare_digest(credentials.strip().encode(), expected):
            return json_error(401, "invalid token",
                              {"WWW-Authenticate": 'Bearer realm="lbcdn-admin", '
                                                   'error="invalid_token"'})
        return await handler(request)

    return auth


@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # Keep headers such as Allow (405); drop the text/plain Content-Type.
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in
                   ("content-type", "content-length")}
        return json_error(exc.status, (exc.reason or "error").lower(), headers)
    except Exception:
        log.exception("admin API %s %s failed", request.method, request.path)
        return json_error(500, "internal error")


async def _healthz(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    headers = {"Cache-Control": "no-store"}
    if state.draining:
        return web.json_response({"status": "draining"}, status=503, headers=headers)
    return web.json_response({"status": "ok"}, headers=headers)


async def _metrics(request: web.Request) -> web.Response:
    # Rendered on the loop: a few hundred series take about a millisecond, cheaper than the
    # hop to an executor thread (and the accumulators in lbcdn.metrics are loop-thread only).
    body, content_type = render_metrics()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _runtime(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].describe(), dumps=_dumps)


async def _reload(request: web.Request) -> web.Response:
    try:
        await request.app[STATE_KEY].reload()
    except ConfigError as exc:
        return web.json_response({"error": "invalid configuration; nothing changed",
                                  "problems": exc.lines()}, status=400)
    except Exception as exc:
        log.error("reload failed: %s", exc)
        return json_error(409, f"reload failed; nothing changed: {exc}")
    return web.json_response({"status": "reloaded"})


@web.middleware
async def _no_token_read_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Without a token, the API may be read but not used to change anything."""
    if _is_api(request) and request.method not in ("GET", "HEAD", "OPTIONS"):
        return json_error(403, "state-changing API calls need admin.token to be configured")
    return await handler(request)


def create_admin_app(state: AdminState, token: str | None,
                     config: AdminConfig | None = None) -> web.Application:
    """Build the admin application. `token` None leaves /api/ open (for loopback-only setups);
    an empty token is refused, as it most likely is an unset environment variable."""
    if token is not None and not token.strip():
        raise ValueError("admin token is empty; unset it to disable /api/ auth")
    middlewares: list[Middleware] = [_errors_middleware]
    if token is not None:
        middlewares.append(_auth_middleware(token.strip()))
    else:
        middlewares.append(_no_token_read_only)
    if config is not None and config.peers is not None:
        middlewares.append(fanout_middleware(config))
    app = web.Application(middlewares=middlewares)
    app[STATE_KEY] = state
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/api/runtime", _runtime)
    app.router.add_post("/api/reload", _reload)
    dns.add_routes(app)
    acme.add_routes(app)
    cache.add_routes(app)
    targets.add_routes(app)
    routes.add_routes(app)
    status.add_routes(app)
    return app


async def start_admin(app: web.Application, address: str, port: int,
                      limits: HttpLimitsConfig | None = None,
                      max_connections: int | None = None) -> AppListener:
    """Listen on address:port (0 picks a free port; `.port` tells which), with `limits`
    (default: admin.limits' defaults) and a connection cap (default: theirs)."""
    limits = limits or HttpLimitsConfig()
    # shutdown_timeout: admin requests are short; a stuck client must not hold shutdown for
    # aiohttp's default 60 s. Errors the listener answers itself are JSON, as the API's.
    return await serve_app(app, "admin", address, port, limits,
                           max_connections or limits.max_connections,
                           shutdown_timeout_s=2.0, json_errors=True)
