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
GET  /api/dns/zones/{zone}/dnssec -> {"zone", "keys": [{key_tag, algorithm, flags, created,
     dnskey, ds}]}: what to give the registrar (lbcdn.dns.keys.describe); 404 for a zone not
     served or not signed.
POST /api/dns/zones/{zone}/dnssec/rollover {"step": "start" | "finish"} -> 200 as the GET;
     409 {"error"} for a step out of order, 400 for a bad body. `start` adds a key that
     double-signs; `finish` drops the old one (see docs/guides/dns.md for the waits).
GET    /api/dns/cidr-collections -> {"collections": [{name, locations: [{name, cidrs}]}]}
PUT    /api/dns/cidr-collections/{name}  {"locations": [{"name", "cidrs": [...]}]} -> 200 the
       collection, created or replaced whole; 400 {"error", "problems"} for bad blocks or a
       location that record sets still use.
DELETE /api/dns/cidr-collections/{name} -> 200; 404 unknown; 400 while record sets use it.
Collection changes are visible at once and last until the next restart or reload (the
configuration's `dns.cidr_collections` is what a start reads).
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from lbcdn.admin.keys import STATE_KEY
from lbcdn.admin.state import AdminState
from lbcdn.configkit.errors import ConfigError
from lbcdn.dns.changes import ChangeError, parse_changes
from lbcdn.dns.config import load_cidr_collection
from lbcdn.dns.dnssec import Signer
from lbcdn.dns.engine import Engine
from lbcdn.dns.keys import DnssecKeyError, describe
from lbcdn.dns.locate import CidrCollection
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


def _signer(request: web.Request) -> tuple[Engine, Signer] | web.Response:
    """The zone's engine and signer, or the 404 to answer."""
    engine = _engine(request)
    zone_name = request.match_info["zone"]
    try:
        signer = engine.signer(zone_name)
    except (KeyError, ValueError):
        return web.json_response({"error": f"zone {zone_name!r} is not served here"},
                                 status=404)
    if signer is None:
        return web.json_response({"error": f"zone {zone_name!r} is not signed "
                                           "(dnssec.enabled is false)"}, status=404)
    return engine, signer


async def _dnssec(request: web.Request) -> web.Response:
    found = _signer(request)
    if isinstance(found, web.Response):
        return found
    signer = found[1]
    return web.json_response(describe(signer.origin, signer.keys))


async def _rollover(request: web.Request) -> web.Response:
    found = _signer(request)
    if isinstance(found, web.Response):
        return found
    engine, signer = found
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return web.json_response({"error": "the body must be JSON"}, status=400)
    step = body.get("step") if isinstance(body, dict) else None
    if step not in ("start", "finish"):
        return web.json_response({"error": 'expected {"step": "start"} or {"step": '
                                           '"finish"}'}, status=400)
    try:
        engine.roll_keys(request.match_info["zone"], step, time.time())
    except DnssecKeyError as exc:
        return web.json_response({"error": str(exc)}, status=409)
    except OSError as exc:
        return web.json_response({"error": f"cannot save the keys: {exc}"}, status=500)
    return web.json_response(describe(signer.origin, signer.keys))


def _collection_view(c: CidrCollection) -> dict[str, object]:
    return {"name": c.name, "locations": [{"name": loc, "cidrs": list(cidrs)}
                                          for loc, cidrs in c.locations.items()]}


async def _collections(request: web.Request) -> web.Response:
    engine = _engine(request)
    return web.json_response({"collections": [_collection_view(c)
                                              for c in engine.cidr_collections]})


async def _put_collection(request: web.Request) -> web.Response:
    engine = _engine(request)
    name = request.match_info["name"]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return web.json_response({"error": "the body must be JSON"}, status=400)
    if not isinstance(body, dict):
        return web.json_response({"error": "the body must be a JSON object"}, status=400)
    try:
        cfg = load_cidr_collection({**body, "name": name}, f"collection {name}")
        collection = CidrCollection(name, {loc.name: loc.cidrs for loc in cfg.locations})
        engine.set_cidr_collection(name, collection)
    except ConfigError as exc:
        return web.json_response({"error": "collection refused; nothing changed",
                                  "problems": exc.lines()}, status=400)
    except ChangeError as exc:
        return web.json_response({"error": "collection refused; nothing changed",
                                  "problems": exc.problems}, status=400)
    return web.json_response(_collection_view(collection))


async def _delete_collection(request: web.Request) -> web.Response:
    engine = _engine(request)
    name = request.match_info["name"]
    if all(c.name != name for c in engine.cidr_collections):
        return web.json_response({"error": f"no CIDR collection {name!r}"}, status=404)
    try:
        engine.set_cidr_collection(name, None)
    except ChangeError as exc:
        return web.json_response({"error": "collection in use; nothing changed",
                                  "problems": exc.problems}, status=400)
    return web.json_response({"deleted": name})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/dns/cidr-collections", _collections)
    app.router.add_put("/api/dns/cidr-collections/{name}", _put_collection)
    app.router.add_delete("/api/dns/cidr-collections/{name}", _delete_collection)
    app.router.add_get("/api/dns/zones", _zones)
    app.router.add_get("/api/dns/zones/{zone}/records", _records)
    app.router.add_post("/api/dns/zones/{zone}/changes", _changes)
    app.router.add_get("/api/dns/zones/{zone}/dnssec", _dnssec)
    app.router.add_post("/api/dns/zones/{zone}/dnssec/rollover", _rollover)
