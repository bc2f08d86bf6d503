"""Admin API for DNS: Route 53-style change batches, applied atomically or not at all.

POST /api/dns/zones/{zone}/changes  {"changes": [{"action": "CREATE|UPSERT|DELETE",
                                                  "record": {...record set as in the config}}]}
-> 200 {"zone", "serial"} or 400 {"error", "problems": [...]}; 404 for a zone not served.
GET  /api/dns/zones -> the served zones with their serials.
GET  /api/dns/zones/{zone}/records -> {"zone", "serial", "records": [{name, type, ttl_s,
     policy, set_identifier, weight, failover, alias, health, values: [{value, health}],
     and cidr_routing / geolocation / geoproximity where the policy has them}]}:
     every record set and which health state it follows (lbcdn.dns.view); 404 for a zone
     not served.
Changes are visible in answers at once and kept in `dns.state_dir` across restarts.
"""

from __future__ import annotations

import json

from aiohttp import web

from lbcdn.admin.keys import STATE_KEY
from lbcdn.admin.state import AdminState
from lbcdn.dns.changes import ChangeError, parse_changes
from lbcdn.dns.engine import Engine
from lbcdn.dns.view import zone_records
from lbcdn.dns.zone import zone_origin


def _engine(request: web.Request) -> Engine:
    state: AdminState = request.app[STATE_KEY]
    engine = state.dns_engine()
    if engine is None:
        raise web.HTTPNotFound(reason="no DNS server is configured")
    return engine


async def _zones(request: web.Request) -> web.Response:
    engine = _engine(request)
    return web.json_response({"zones": [
        {"zone": z.name, "serial": z.serial} for z in engine.zones]})


async def _records(request: web.Request) -> web.Response:
    engine = _engine(request)
    zone_name = request.match_info["zone"]
    zone = engine.zone_for(zone_name)  # the zone holding the name: it must be the apex
    if zone is None or zone.origin != zone_origin(zone_name):
        return web.json_response({"error": f"zone {zone_name!r} is not served here"},
                                 status=404)
    return web.json_response({"zone": zone.name, "serial": zone.serial,
                              "records": zone_records(zone, engine.health)})


async def _changes(request: web.Request) -> web.Response:
    engine = _engine(request)
    zone_name = request.match_info["zone"]
    if engine.zone_for(zone_name) is None:
        return web.json_response({"error": f"zone {zone_name!r} is not served here"},
                                 status=404)
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return web.json_response({"error": "the body must be JSON"}, status=400)
    try:
        engine.apply_changes(zone_name, parse_changes(body))
    except ChangeError as exc:
        return web.json_response({"error": "change batch refused; nothing changed",
                                  "problems": exc.problems}, status=400)
    zone = engine.zone_for(zone_name)
    return web.json_response({"zone": zone_name,
                              "serial": zone.serial if zone is not None else None})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/dns/zones", _zones)
    app.router.add_get("/api/dns/zones/{zone}/records", _records)
    app.router.add_post("/api/dns/zones/{zone}/changes", _changes)
