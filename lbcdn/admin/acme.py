"""Admin API for ACME certificates (lbcdn.acme.manager).

GET  /api/acme/certificates -> {"certificates": [{id, names, directory, challenge, listeners,
     issuer, not_before, not_after, next_renewal, issuing, failures, last_error}]} (times: Unix
     seconds); 404 when no listener asks for an ACME certificate.
POST /api/acme/certificates/{name}/renew -> 202 {"renewing": id}: renew now (by id or by any
     of its names), whatever its age; 404 for a certificate not managed here.
"""

from __future__ import annotations

from aiohttp import web

from lbcdn.acme.manager import AcmeManager
from lbcdn.admin.keys import acme_of


def _manager(request: web.Request) -> AcmeManager:
    manager = acme_of(request)
    if manager is None:
        raise web.HTTPNotFound(reason="no ACME certificates are configured")
    return manager


async def _list(request: web.Request) -> web.Response:
    return web.json_response({"certificates": _manager(request).describe()})


async def _renew(request: web.Request) -> web.Response:
    manager = _manager(request)
    name = request.match_info["name"]
    job = manager.find(name)
    if job is None:
        return web.json_response({"error": f"no ACME certificate {name!r} is managed here"},
                                 status=404)
    manager.force_renew(job)
    return web.json_response({"renewing": job.wanted.cid}, status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/acme/certificates", _list)
    app.router.add_post("/api/acme/certificates/{name}/renew", _renew)
