"""Admin API for pools and their targets (ELB target groups' RegisterTargets and friends).

GET    /api/pools                                 -> {"pools": [{name, algorithm, targets,
                                                      states: {state: count}, ...}]}
GET    /api/pools/{pool}/targets                  -> {"pool", "targets": [{target, state,
                                                      reason, classic, weight, in_flight,
                                                      latency_s, error_rate, ...}]}
POST   /api/pools/{pool}/targets                  {"host", "port", "weight"?} or
                                                  {"address": "host:port", "weight"?}
                                                  -> 201 {"target"}: registered (initial)
DELETE /api/pools/{pool}/targets/{target}         -> 202: deregistered, draining
PATCH  /api/pools/{pool}/targets/{target}         {"weight": N} and/or {"maintenance": bool}
                                                  -> 200 the target

Rules: changes apply at once (the control plane publishes to the data plane) and persist in
`admin.state_dir`. Errors are JSON {"error"} with 400 (bad body), 404 (unknown pool or target).
Authentication is the app's: everything here is under /api/. The daemon offers the targets
through `lbcdn.admin.keys.TargetsProvider`; a daemon without one answers 503.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from lbcdn.admin.keys import control_of
from lbcdn.configkit.names import split_host_port
from lbcdn.upstream.targets import TargetError


def _error(exc: TargetError) -> web.Response:
    return web.json_response({"error": str(exc)}, status=exc.status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json(loads=json.loads)
    except ValueError:
        raise TargetError(400, "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise TargetError(400, "the body must be a JSON object")
    return data


def _int(data: dict[str, Any], key: str, default: int | None = None) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TargetError(400, f"{key} must be an integer")
    return value


async def list_pools(request: web.Request) -> web.Response:
    try:
        control = control_of(request)
    except TargetError as exc:
        return _error(exc)
    out = []
    for pool in control.describe():
        states: dict[str, int] = {}
        for t in pool["targets"]:
            states[t["state"]] = states.get(t["state"], 0) + 1
        out.append({"name": pool["name"], "algorithm": pool["algorithm"],
                    "fail_open": pool["fail_open"], "targets": len(pool["targets"]),
                    "states": states, "health_check": pool["health_check"],
                    "discovery": pool["discovery"]})
    return web.json_response({"pools": out})


async def list_targets(request: web.Request) -> web.Response:
    try:
        pool = control_of(request).describe_pool(request.match_info["pool"])
    except TargetError as exc:
        return _error(exc)
    return web.json_response({"pool": pool["name"], "targets": pool["targets"]})


async def register(request: web.Request) -> web.Response:
    try:
        control = control_of(request)
        pool = control.pool(request.match_info["pool"])
        data = await _body(request)
        if "address" in data:
            hp = split_host_port(str(data["address"]))
            if hp is None:
                raise TargetError(400, 'address must be "host:port"')
            host, port = hp[0], hp[1]
        else:
            given = data.get("host")
            if not isinstance(given, str) or not given:
                raise TargetError(400, "host (a string) and port are required")
            host, port = given, _int(data, "port")
        key = pool.register(host.strip("[]"), port, _int(data, "weight", 1))
    except TargetError as exc:
        return _error(exc)
    return web.json_response({"target": key, "pool": pool.name}, status=201)


async def deregister(request: web.Request) -> web.Response:
    try:
        pool = control_of(request).pool(request.match_info["pool"])
        pool.deregister(request.match_info["target"])
    except TargetError as exc:
        return _error(exc)
    return web.json_response({"target": request.match_info["target"],
                              "state": str(pool.checker.state_of(
                                  request.match_info["target"]).state)
                              if request.match_info["target"] in pool.targets else "unused"},
                             status=202)


async def modify(request: web.Request) -> web.Response:
    try:
        control = control_of(request)
        pool = control.pool(request.match_info["pool"])
        key = request.match_info["target"]
        data = await _body(request)
        unknown = set(data) - {"weight", "maintenance"}
        if unknown or not data:
            raise TargetError(400, "give weight and/or maintenance")
        if "weight" in data:
            pool.set_weight(key, _int(data, "weight"))
        if "maintenance" in data:
            if not isinstance(data["maintenance"], bool):
                raise TargetError(400, "maintenance must be true or false")
            pool.set_maintenance(key, data["maintenance"])
        row = next(t for t in control.describe_pool(pool.name)["targets"]
                   if t["target"] == key)
    except TargetError as exc:
        return _error(exc)
    return web.json_response(row)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/pools", list_pools)
    app.router.add_get("/api/pools/{pool}/targets", list_targets)
    app.router.add_post("/api/pools/{pool}/targets", register)
    app.router.add_delete("/api/pools/{pool}/targets/{target}", deregister)
    app.router.add_patch("/api/pools/{pool}/targets/{target}", modify)
