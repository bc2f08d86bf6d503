"""Fan-out of state-changing admin calls to the other replicas (Kubernetes: a headless Service).

When `admin.peers` is configured, every state-changing /api/ call (cache invalidations, target
changes, DNS change batches — everything but /api/reload, which each replica does from its own
file) is applied here first, then sent to every peer with the same method, path, body and
token. A peer applies it locally only: the call it receives carries `X-Lbcdn-Fanout: 1`, so
nothing loops. The answer is this replica's, with `X-Lbcdn-Peers: ok=N failed=M` saying how the
fan-out went (failed peers are also logged); a peer being down does not fail the call here.
Peers are the addresses of `dns_name` (re-resolved on every call) plus `addresses`, without
this replica's own admin address.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from lbcdn.config.schema import AdminConfig

log = logging.getLogger("lbcdn.admin.peers")

FANOUT_HEADER = "X-Lbcdn-Fanout"
_NOT_FANNED = ("/api/reload",)


async def peer_addresses(config: AdminConfig) -> list[str]:
    peers = config.peers
    assert peers is not None
    found: list[str] = list(peers.addresses)
    if peers.dns_name:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                peers.dns_name, peers.port, type=socket.SOCK_STREAM)
            found += [str(info[4][0]) for info in infos]
        except OSError as exc:
            log.warning("peers: cannot resolve %s: %s", peers.dns_name, exc)
    own = {config.address}
    return [a for a in dict.fromkeys(found) if a not in own]


def fanout_middleware(config: AdminConfig) -> Middleware:
    assert config.peers is not None
    port = config.peers.port or config.port
    timeout = aiohttp.ClientTimeout(total=config.peers.timeout_s)

    async def send(session: aiohttp.ClientSession, address: str, request: web.Request,
                   body: bytes) -> bool:
        host = f"[{address}]" if ":" in address else address
        headers = {FANOUT_HEADER: "1"}
        for name in ("Authorization", "Content-Type"):
            if name in request.headers:
                headers[name] = request.headers[name]
        try:
            async with session.request(request.method, f"http://{host}:{port}{request.path_qs}",
                                       data=body, headers=headers) as resp:
                if resp.status < 300:
                    return True
                log.warning("peer %s answered %d to %s %s", address, resp.status,
                            request.method, request.path)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.warning("peer %s unreachable for %s %s: %s", address, request.method,
                        request.path, exc)
        return False

    @web.middleware
    async def fanout(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.method in ("GET", "HEAD", "OPTIONS") or not request.path.startswith("/api/")
                or request.path in _NOT_FANNED or FANOUT_HEADER in request.headers):
            return await handler(request)
        body = await request.read()
        response = await handler(request)
        if response.status >= 300:
            return response  # refused here: the peers would refuse it too
        addresses = await peer_addresses(config)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            results = await asyncio.gather(*(send(session, a, request, body)
                                             for a in addresses))
        ok = sum(results)
        response.headers["X-Lbcdn-Peers"] = f"ok={ok} failed={len(results) - ok}"
        return response

    return fanout
