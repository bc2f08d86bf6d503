"""One request from the edge cache to an origin, as the owner of an upstream connection:
connect attempts, the one retry of a pooled connection the origin had closed, and origin-group
failover (on a connection failure, or a status the group fails over on). Reports to a
FetchReceiver (a MissJob, or a slice fetch)."""

from __future__ import annotations

from time import monotonic
from typing import TYPE_CHECKING

from lbcdn.cache.headers import parse_fwd
from lbcdn.cache.runtime import Attempt, CacheRuntime, OriginEndpoint
from lbcdn.http.head import ResponseHead, origin_request
from lbcdn.tasks import spawn
from lbcdn.upstream.connection import UpstreamConnection, UpstreamOwner
from lbcdn.upstream.pool import ConnectError, Pool, Target

if TYPE_CHECKING:
    from lbcdn.edge.exchange import Exchange


class FetchReceiver:
    """What an OriginFetch reports to: a MissJob, or a slice fetch (lbcdn.edge.slice_flow)."""

    def fetch_head(self, resp: ResponseHead, headers: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def fetch_body(self, data: bytes) -> None:
        raise NotImplementedError

    def fetch_done(self) -> None:
        raise NotImplementedError

    def fetch_failed(self, kind: str) -> None:
        raise NotImplementedError


class OriginFetch(UpstreamOwner):
    """One request to an origin (with connect attempts and origin-group failover), as the
    owner of an upstream connection. Reports to a MissJob."""

    upstream: UpstreamConnection | None = None
    target: Target | None = None
    pool: Pool | None = None
    got_head = False
    finished = False
    reused = False
    retried = False
    paused = False

    def __init__(self, rt: CacheRuntime, plan: tuple[Attempt, ...], ex: Exchange, path: bytes,
                 query: bytes | None, lines: list[bytes], extra: list[tuple[bytes, bytes]],
                 job: FetchReceiver) -> None:
        self.rt = rt
        self.plan = plan
        self.step = 0
        self.ex = ex
        self.listener = ex.listener
        self.job = job
        head = ex.head
        self.method = b"GET" if head.method == b"HEAD" else head.method
        self.target_bytes = path + (b"?" + query if query else b"")
        self.request_id = ex.request_id
        self.lines = lines
        self.extra = extra

    def start(self) -> None:
        self._try()

    def _request(self, e: OriginEndpoint) -> bytes:
        head = self.ex.head
        listener = self.listener
        host = e.host_header if e.host_header is not None else head.host
        target = e.origin_path + self.target_bytes
        extra = self.extra
        if e.s3 is not None:  # signed per attempt: the signature carries its time
            extra = extra + e.s3.fields(self.method, target, self.rt.clock())
        if e.marker is not None:  # a parent replica: it must not ask another parent
            extra = extra + [(e.marker, b"1")]
        return b"".join(origin_request(
            self.method, target, host, self.lines, extra, head,
            listener.config.x_forwarded_for, self.ex.conn.client_ip_bytes,
            listener.forwarded_headers, listener.id_header)) + self.request_id + b"\r\n\r\n"

    def _try(self) -> None:
        attempt = self.plan[self.step]
        e = attempt.endpoint
        pool = e.pool if e.pool is not None else self.listener.pools.get(e.pool_name or "")
        if pool is None:
            self._failed("no_target")
            return
        target = pool.pick()
        if target is None:
            pool.metrics.error("no_target")
            self._failed("no_target")
            return
        self.pool, self.target = pool, target
        conn = pool.take_idle(target)
        if conn is not None:
            self.reused = True
            self._send(conn)
        else:
            self.reused = False
            spawn(self._connect(pool, target, e.connect_attempts), "cache-origin-connect")

    async def _connect(self, pool: Pool, target: Target, attempts: int) -> None:
        kind = "connect_refused"
        for _ in range(attempts):
            if self.finished:
                return
            try:
                conn = await pool.connect(target)
            except ConnectError as exc:
                kind = exc.kind
                continue
            if self.finished:
                pool.release(conn)
                return
            self._send(conn)
            return
        pool.metrics.error(kind)  # type: ignore[arg-type]
        self._failed(kind)

    def _send(self, conn: UpstreamConnection) -> None:
        e = self.plan[self.step].endpoint
        self.upstream = conn
        self.sent_at = monotonic()
        conn.begin(self, False)
        conn.write(self._request(e))
        conn.flush()

    def _failed(self, kind: str) -> None:
        if self.finished:
            return
        if not self.got_head and self.step + 1 < len(self.plan) and \
                self.ex.head.method in (b"GET", b"HEAD", b"OPTIONS"):
            self.step += 1  # origin group: the secondary on a connection failure
            self._try()
            return
        self.finished = True
        self.job.fetch_failed(kind)

    # -- UpstreamOwner -----------------------------------------------------------------------
    def upstream_interim(self, head: ResponseHead) -> None:
        pass

    def upstream_head(self, resp: ResponseHead) -> None:
        elapsed = monotonic() - self.sent_at
        attempt = self.plan[self.step]
        self.rt.metrics.origin_time(attempt.endpoint.id, elapsed)
        self.ex.origin_answered(elapsed)
        if resp.status in attempt.failover_statuses and self.step + 1 < len(self.plan):
            self.abort_connection()
            self.step += 1
            self._try()
            return
        self.got_head = True
        # `fwd` keeps Content-Length; the fill frames the body itself
        self.job.fetch_head(resp, [(n, v) for n, v in parse_fwd(resp.fwd)
                                   if n.lower() != b"content-length"])

    def upstream_body(self, data: bytes) -> None:
        if not self.finished:
            self.job.fetch_body(data)

    def upstream_done(self) -> None:
        self.upstream = None
        if not self.finished:
            self.finished = True
            self.job.fetch_done()

    def upstream_upgraded(self, head: ResponseHead, rest: bytes) -> None:
        self.abort_connection()
        self._failed("malformed_response")

    def upstream_failed(self, kind: str) -> None:
        upstream, self.upstream = self.upstream, None
        if self.finished:
            return
        if (kind == "reset" and self.reused and not self.retried and not self.got_head
                and upstream is not None and not upstream.got_bytes
                and self.pool is not None and self.target is not None):
            # a pooled connection the origin had closed: one fresh try, as the exchange does
            self.retried = True
            self.reused = False
            spawn(self._connect(self.pool, self.target, 1), "cache-origin-retry")
            return
        if self.pool is not None and kind in ("reset", "response_timeout",
                                              "malformed_response"):
            self.pool.metrics.error(kind)  # type: ignore[arg-type]
        if self.got_head:
            self.finished = True
            self.job.fetch_failed(kind)
            return
        self._failed(kind)

    def upstream_paused(self, paused: bool) -> None:
        pass  # we send no request body

    def upstream_reusable(self) -> bool:
        return True

    # -- control from the job ----------------------------------------------------------------
    def abort_connection(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.owner = None
            upstream.abort()

    def abort(self) -> None:
        self.finished = True
        self.abort_connection()

    def discard(self) -> None:
        """A 304: nothing more to read; the connection finishes by itself."""
        self.finished = True

    def pause(self, paused: bool) -> None:
        upstream = self.upstream
        if upstream is None or paused == self.paused:
            return
        self.paused = paused
        if paused:
            upstream.pause_reading()
        else:
            upstream.resume_reading()
