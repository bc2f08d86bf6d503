"""What is written down about every finished request: route metrics and the access log line,
and the request id that ties a log line to what the backend saw.

Used by the exchange (lbcdn.edge.exchange) and by the cache hits answered without one
(lbcdn.edge.cache_hit.answer_known), so a request is recorded the same way either way.
"""

from __future__ import annotations

import os
import time
from typing import Final, TYPE_CHECKING

from lbcdn import writebatch

if TYPE_CHECKING:
    from lbcdn.edge.stream import ClientStream
    from lbcdn.http.head import RequestHead
    from lbcdn.metrics import RouteMetrics
    from lbcdn.upstream.pool import Target

_ID_PREFIX: Final = os.urandom(4).hex().encode()   # per process: workers' ids differ
_ID_BLOCK: Final = 4096
_ID_TAILS: Final = tuple(b"%03x" % i for i in range(_ID_BLOCK))


class _Ids:
    """Ids are the process prefix, a block number and a place in the block, all hex: one bytes
    concatenation per id, and a formatted prefix once per 4,096 ids."""

    def __init__(self) -> None:
        self.block = -1
        self.lead = b""
        self.used = _ID_BLOCK


_ids: Final = _Ids()


def new_request_id() -> bytes:
    """A 20-hex-digit id, unique in this process and (with the random prefix) across them."""
    ids = _ids
    n = ids.used
    if n == _ID_BLOCK:
        ids.block += 1
        ids.lead = b"%s%09x" % (_ID_PREFIX, ids.block)
        n = 0
    ids.used = n + 1
    return ids.lead + _ID_TAILS[n]


def record(conn: ClientStream, head: RequestHead, metrics: RouteMetrics, status: int,
           started: float, bytes_in: int, bytes_out: int, target: Target | None = None,
           upstream_time: float | None = None, request_id: bytes | None = None) -> None:
    """Route metrics and the access log line of one finished request (request_id None: make
    one only if the line is written)."""
    elapsed = writebatch.now() - started
    metrics.observe(status, elapsed, bytes_in, bytes_out)
    listener = conn.listener
    if not listener.access_log.enabled:
        return
    listener.access_log.log({
        "time": time.time(), "listener": listener.name,
        "client": conn.client_ip, "method": head.method.decode("latin-1"),
        "path": head.target.decode("latin-1"), "status": status,
        "bytes_in": bytes_in, "bytes_out": bytes_out,
        "route": metrics.route, "target": target.key if target is not None else None,
        "upstream_time_s": None if upstream_time is None else round(upstream_time, 6),
        "total_time_s": round(elapsed, 6),
        "request_id": (request_id or new_request_id()).decode("latin-1"),
        "user_agent": head.user_agent.decode("latin-1"),
    })
