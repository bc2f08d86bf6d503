"""What is written down about every finished request: route metrics and the access log line
(with the request id from lbcdn.http.request_id that ties it to what the backend saw).

Used by the exchange (lbcdn.edge.exchange) and by the cache hits answered without one
(lbcdn.edge.cache_hit.answer_known), so a request is recorded the same way either way.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from lbcdn import writebatch
from lbcdn.http.request_id import new_request_id

if TYPE_CHECKING:
    from lbcdn.edge.stream import ClientStream
    from lbcdn.http.head import RequestHead
    from lbcdn.metrics import RouteMetrics
    from lbcdn.upstream.pool import Target

def record(conn: ClientStream, head: RequestHead, metrics: RouteMetrics, status: int,
           started: float, bytes_in: int, bytes_out: int, target: Target | None = None,
           upstream_time: float | None = None, request_id: bytes | None = None) -> None:
    """Route metrics and the access log line of one finished request (request_id None: make
    one only if the line is written)."""
    elapsed = writebatch.now() - started
    if conn.protocol == "HTTP/2.0":
        metrics.observe_h2(status, elapsed, bytes_in, bytes_out)
    else:
        metrics.observe(status, elapsed, bytes_in, bytes_out)
    listener = conn.listener
    if not listener.access_log.enabled:
        return
    listener.access_log.log({
        "time": time.time(), "listener": listener.name,
        "client": conn.client_ip, "method": head.method.decode("latin-1"),
        "protocol": conn.protocol or "HTTP/" + head.version.decode("latin-1"),
        "path": head.target.decode("latin-1"), "status": status,
        "bytes_in": bytes_in, "bytes_out": bytes_out,
        "route": metrics.route, "target": target.key if target is not None else None,
        "upstream_time_s": None if upstream_time is None else round(upstream_time, 6),
        "total_time_s": round(elapsed, 6),
        "request_id": (request_id or new_request_id()).decode("latin-1"),
        "user_agent": head.user_agent.decode("latin-1"),
    })
