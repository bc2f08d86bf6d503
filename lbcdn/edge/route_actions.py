"""The edge side of a route's actions (lbcdn.routing.actions): ask for basic authentication,
pick the pool of a weighted forward, rewrite the request for the pool. The decisions are the
routing package's; this module applies them to an exchange.

Basic auth: a verdict the route already knows (the same Authorization value seen before) costs
a dict lookup; a new one is checked with bcrypt on a thread, and the exchange carries on when
it is done (the request body waits in its buffer meanwhile, as it does for a connect).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from lbcdn.http.errors import HttpError
from lbcdn.http.head import RequestHead
from lbcdn.metrics import ROUTE_POOL_REQUESTS
from lbcdn.routing.actions import RouteActions
from lbcdn.routing.basic_auth import BasicAuth
from lbcdn.routing.config import ForwardAction
from lbcdn.routing.rewrite import Rewriter
from lbcdn.tasks import spawn

if TYPE_CHECKING:
    from lbcdn.edge.exchange import Exchange


def _authorization(head: RequestHead) -> bytes | None:
    for name, value in head.headers:
        if name.lower() == b"authorization":
            return value
    return None


def _refuse(ex: Exchange, auth: BasicAuth) -> None:
    ex.respond_error(HttpError(401, "authentication required", close=False,
                               headers=b"WWW-Authenticate: " + auth.challenge + b"\r\n"))


def authorized(ex: Exchange, auth: BasicAuth) -> bool:
    """True: go on now. False: the exchange was answered (401), or will be resumed with
    `ex.authorized()` once bcrypt has spoken."""
    header = _authorization(ex.head)
    verdict = auth.known(header)
    if verdict is None and header is not None:
        spawn(_verify(ex, auth, header), "basic-auth")
        return False
    if not verdict:
        _refuse(ex, auth)
        return False
    return True


async def _verify(ex: Exchange, auth: BasicAuth, header: bytes) -> None:
    ok = await asyncio.get_running_loop().run_in_executor(None, auth.verify, header)
    if ex.is_finished() or ex.conn.is_closed():
        return
    if ok:
        ex.authorized()
    else:
        _refuse(ex, auth)


def rewritten(head: RequestHead, rewriter: Rewriter) -> RequestHead:
    """`head` as the pool gets it: new path (query kept) and Host."""
    path = rewriter.path(head.path)
    target = path + b"?" + head.query if head.query is not None else path
    return RequestHead(head.method, target, path, head.query, head.version, head.headers,
                       rewriter.host(head.host), head.content_length, head.chunked,
                       head.keep_alive, head.upgrade, head.expect_continue, head.fwd, head.xff,
                       head.via, head.request_id, head.user_agent)


def forward(ex: Exchange, action: ForwardAction, actions: RouteActions | None) -> None:
    """Forward to the action's pool, or the weighted pick, rewritten if the route says so."""
    name = action.pool
    if actions is not None:
        weighted = actions.weighted
        if weighted is not None:
            name, cookie = weighted.pick(ex.head.headers)
            if cookie is not None:
                ex.extra_headers += b"Set-Cookie: " + cookie + b"\r\n"
            ROUTE_POOL_REQUESTS.labels(weighted.route, name).inc()
        if actions.rewriter is not None:
            ex.client_head = ex.head   # the access log keeps what the client asked for
            ex.head = rewritten(ex.head, actions.rewriter)
    assert name is not None  # the loader gives `pool` or `pools`
    ex.forward(ex.listener.pools[name])
