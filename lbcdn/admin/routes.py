"""Admin API for routes' weighted forwards: shift a canary without a reload.

GET /api/routes/{route}/weights   -> {"route", "sticky", "pools": [{"pool", "weight"}]}
PUT /api/routes/{route}/weights   {"weights": {"blue": 80, "green": 20}} (pools not named keep
                                  theirs) -> 200 the same view

Rules: the next request spreads by the new weights (in every worker: the control process sends
them over), requests in flight and open connections are untouched, sticky clients stay on their
pool unless its weight became 0. Weights set here last until the next reload or restart, which
go back to the configuration's. Errors are JSON {"error"}: 400 (bad body or weights), 404 (no
such route, or not a weighted forward).
"""

from __future__ import annotations

import json
from typing import Protocol, runtime_checkable

from aiohttp import web

from lbcdn.admin.keys import STATE_KEY
from lbcdn.routing.weighted import WeightedForward


@runtime_checkable
class WeightsProvider(Protocol):
    def weighted_forward(self, route: str) -> WeightedForward | None:
        """The live weighted forward of a route (None: no such route, or no weights)."""
        ...

    def set_weights(self, route: str, weights: dict[str, int]) -> None:
        """Apply new weights everywhere; ValueError says what is wrong with them."""
        ...


def _forward(request: web.Request) -> tuple[WeightsProvider, WeightedForward] | web.Response:
    """The state and the route's weighted forward, or the 404 to answer."""
    state = request.app[STATE_KEY]
    route = request.match_info["route"]
    if isinstance(state, WeightsProvider):
        forward = state.weighted_forward(route)
        if forward is not None:
            return state, forward
    return web.json_response({"error": f"route {route!r} has no weighted forward"}, status=404)


async def _get(request: web.Request) -> web.Response:
    found = _forward(request)
    if isinstance(found, web.Response):
        return found
    return web.json_response(found[1].describe())


async def _put(request: web.Request) -> web.Response:
    found = _forward(request)
    if isinstance(found, web.Response):
        return found
    state, forward = found
    try:
        body = await request.json(loads=json.loads)
    except ValueError:
        body = None
    weights = body.get("weights") if isinstance(body, dict) else None
    if not isinstance(weights, dict) or not weights:
        return web.json_response({"error": 'the body must be {"weights": {POOL: WEIGHT}}'},
                                 status=400)
    try:
        state.set_weights(forward.route, weights)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(forward.describe())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/routes/{route}/weights", _get)
    app.router.add_put("/api/routes/{route}/weights", _put)
