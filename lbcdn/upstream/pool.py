"""A backend pool at run time (data plane): its targets, the balancer, keep-alive connections per
target, outlier ejection, the retry budget, per-target limits and the wait queue.

Rules:
- The data plane never decides a target's health: the control plane (lbcdn.upstream.targets,
  in this process or the control process) publishes a snapshot of every target with its state,
  weight and reason, and `apply()` takes it in. Until the first snapshot, targets are `initial`
  (or `unavailable` when checks are off), so a fresh pool fails open to them as ALB does.
- What the pool balances over is `lbcdn.balancer.plan.plan(...)`: rebuilt after a snapshot, an
  ejection or its end, and at slow-start steps; never per request.
- A target whose deregistration ended (`unused` after `draining`, or gone from the snapshot)
  has its busy connections cut: requests still in flight when the delay runs out end then, as
  on ALB (lbcdn.upstream.connection's `cut`; the client gets a 502 or a cut response).
- Idle connections are kept per target, newest first (LIFO keeps a few connections hot and lets
  the rest time out), at most `max_idle_per_target` of them, each for at most `idle_timeout_s`.
  A connection leaves the idle list the moment it is taken or closed. A target that stops taking
  traffic (draining, unused, removed) loses its idle connections at once; busy ones close when
  their exchange ends.
- `max_connections_per_target` caps requests in flight per target; when every routable target is
  at the cap a request waits in a bounded FIFO (`queue_limit`, at most `connect_timeout_s`) and
  beyond it gets 503 at once.
- Per-request work is a few integer updates on the Target; metrics and rates are read from them
  at scrape or status time.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

from lbcdn.balancer.consistent_hash import HashKey, cookie_value
from lbcdn.balancer.plan import plan
from lbcdn.balancer.base import Policy
from lbcdn.balancer.policy import build_policy
from lbcdn.balancer.retry import RetryBudget
from lbcdn.balancer.sticky import StickySessions, target_token
from lbcdn.http.proxyproto import build as proxy_header
from lbcdn.upstream.config import PoolConfig, TargetConfig
from lbcdn.health.outlier import Ejection, OutlierDetector, Result, stalled
from lbcdn.health.state import Reason, State, TargetHealth, Thresholds
from lbcdn.metrics import PoolMetrics, pool_metrics, target_metrics, TargetMetrics
from lbcdn.tls import client_context
from lbcdn.upstream.connection import ConnectionHome, UpstreamConnection
from lbcdn.upstream.h2connection import H2Connection, client_ssl
from lbcdn import writebatch

# what `choose` answers when every routable target is at max_connections_per_target
BUSY: Final = "busy"
# recent request rate, error rate and latency are measured over windows of this length
STATS_WINDOW_S: Final = 10.0
# the states in which a target takes new requests (and keeps idle connections)
SERVING: Final = frozenset({State.HEALTHY, State.UNAVAILABLE, State.INITIAL, State.UNHEALTHY})


def target_key(host: str, port: int) -> str:
    h = f"[{host}]" if ":" in host else host
    return f"{h}:{port}"


class Target:
    __slots__ = ("host", "port", "weight", "key", "key_bytes", "idle", "in_flight", "open",
                 "health", "serving", "requests", "errors", "latency_sum", "latency_n",
                 "metrics", "_mark", "recent", "answered_at")

    def __init__(self, host: str, port: int, weight: int = 1, *,
                 health: TargetHealth | None = None, pool: str = "") -> None:
        self.host = host
        self.port = port
        self.weight = weight
        self.key = target_key(host, port)
        self.key_bytes = self.key.encode()
        self.idle: list[UpstreamConnection] = []
        self.in_flight = 0
        self.open = 0
        self.health = health or TargetHealth(Thresholds(), 0.0, checks_enabled=False)
        # takes new requests in its pool: a SERVING state, and not removed from the pool (the
        # pool keeps it up to date, so releasing a connection does not ask every time)
        self.serving = self.health.state in SERVING
        # cumulative since the target appeared; `recent` is derived from them per window
        self.requests = 0
        self.errors = 0          # 5xx answers and failed attempts
        self.latency_sum = 0.0   # time to response head, seconds
        self.latency_n = 0
        self.metrics: TargetMetrics = target_metrics(pool, self.key)
        self._mark = (time.monotonic(), 0, 0, 0.0, 0)
        self.recent: dict[str, float | None] | None = None
        # its last response head (time.monotonic()); from its start, so a new target is not
        # taken for stalled before it had a chance to answer
        self.answered_at = self._mark[0]

    @classmethod
    def from_config(cls, config: TargetConfig, health: TargetHealth | None = None,
                    pool: str = "") -> Target:
        return cls(config.host, config.port, config.weight, health=health, pool=pool)

    @property
    def state(self) -> State:
        return self.health.state

    def stats(self, now: float | None = None) -> dict[str, float | None]:
        """Request rate, error rate and mean latency over the last complete window (or the
        current one while the first is still running)."""
        now = time.monotonic() if now is None else now
        t0, r0, e0, s0, n0 = self._mark
        reqs, errs = self.requests - r0, self.errors - e0
        lat_n = self.latency_n - n0
        current: dict[str, float | None] = {
            "requests_per_s": reqs / max(now - t0, 1e-3),
            "error_rate": errs / reqs if reqs else 0.0,
            "latency_s": (self.latency_sum - s0) / lat_n if lat_n else None}
        if now - t0 >= STATS_WINDOW_S:
            self.recent = current
            self._mark = (now, self.requests, self.errors, self.latency_sum, self.latency_n)
        return current if self.recent is None else self.recent

    def describe(self, ejected: bool = False) -> dict[str, object]:
        h = self.health
        stats = self.stats()
        return {"target": self.key, "host": self.host, "port": self.port,
                "weight": self.weight, "state": str(h.state),
                "reason": None if h.reason is None else str(h.reason),
                "classic": h.classic, "ejected": ejected, "in_flight": self.in_flight,
                "open_connections": self.open, "idle_connections": len(self.idle),
                "requests": self.requests, "errors": self.errors,
                "error_rate": stats["error_rate"], "latency_s": stats["latency_s"],
                "requests_per_s": stats["requests_per_s"]}


class ConnectError(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind  # connect_refused | connect_timeout | tls_handshake


class _Waiter:
    __slots__ = ("callback", "timer", "done")

    def __init__(self, callback: Callable[[bool], bool]) -> None:
        self.callback = callback   # (True: a slot is free, False: timed out) -> taken?
        self.timer: asyncio.TimerHandle | None = None
        self.done = False


class Pool(ConnectionHome):
    def __init__(self, config: PoolConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.response_timeout_s = config.response_timeout_s
        self.name = config.name
        self.host_header = config.host_header.encode()
        self.ssl = client_context(config.tls) if config.tls is not None else None
        # HTTP/2 targets: their connections by target key (each carries many exchanges)
        self.h2 = config.protocol != "http1.1"
        if self.ssl is not None and config.protocol == "h2":
            self.ssl = client_ssl(self.ssl)
        self.h2_links: dict[str, list[H2Connection]] = {}
        self._h2_connecting: dict[str, asyncio.Future[H2Connection]] = {}
        self._rng = rng or random.Random()
        checks = config.health.enabled
        self.targets: list[Target] = [
            Target.from_config(t, TargetHealth(Thresholds(), 0.0, checks_enabled=checks),
                               config.name)
            for t in config.targets]
        self.by_key: dict[str, Target] = {t.key: t for t in self.targets}
        balance = config.balance
        self.hash_key = (HashKey.parse(balance.hash_key)
                         if balance.algorithm == "consistent_hash" else None)
        self.outlier: OutlierDetector[str] = OutlierDetector(config.outlier)
        # every outcome feeds outlier detection when it is on; failed connects always do
        # (they eject at once unless outlier.connect_failure_ejection_s is 0)
        self.outlier_enabled = config.outlier.enabled
        for t in self.targets:
            self.outlier.add(t.key)
        r = config.retries
        self.budget = RetryBudget(r.budget_percent, r.budget_window_s, r.budget_min_retries)
        self.limit = config.max_connections_per_target
        self.max_idle = config.max_idle_per_target
        # a connection opened with a PROXY header carries one client's address: never reused
        self.proxy_protocol = config.proxy_protocol or ""
        self.queue: collections.deque[_Waiter] = collections.deque()
        self.routable: tuple[Target, ...] = ()
        self.failed_open = False
        self.policy: Policy[Target] = build_policy(balance, [])
        self.sticky: StickySessions[Target] | None = None
        self._refresh: asyncio.TimerHandle | None = None
        # called with a target key when a draining target has nothing in flight any more
        self.on_drained: Callable[[str], None] | None = None
        # called with (target key, ejection) when outlier detection ejects a target
        self.on_ejected: Callable[[str, Ejection], None] | None = None
        self.metrics: PoolMetrics = pool_metrics(config.name)
        # read at scrape time: moving a gauge on every request would cost more than the request
        self.metrics.idle.set_function(self.idle_count)
        self.metrics.active.set_function(lambda: len(self.connections) - self.idle_count())
        self.connections: set[UpstreamConnection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._stall_check: asyncio.TimerHandle | None = None
        self.closed = False
        self.replan()

    # -- what to balance over -------------------------------------------------------------
    def _now(self) -> float:
        return time.monotonic()  # the loop's clock, readable outside a running loop

    def replan(self) -> None:
        """Rebuild the policy from the targets' states, ejections and slow start."""
        now = self._now()
        ejected = set(self.outlier.ejected(now))
        balance = self.config.balance
        p = plan(self.targets, health_of=lambda t: t.health, now=now,
                 fail_open=self.config.fail_open, slow_start_s=self.config.slow_start_s,
                 ejected=(lambda t: t.key in ejected) if ejected else None,
                 ramp=balance.algorithm != "consistent_hash")
        self.routable = p.targets
        self.failed_open = p.failed_open
        self.policy = build_policy(balance, p.targets, weights=p.weights, rng=self._rng,
                                   after=self.policy)
        if balance.sticky is not None:
            self.sticky = StickySessions(p.targets, self.policy,
                                         cookie_name=balance.sticky.cookie_name,
                                         duration_s=balance.sticky.duration_s)
        next_at = p.refresh_at
        if ejected:
            ends = [self.outlier_until(k) for k in ejected]
            soonest = min((e for e in ends if e is not None), default=None)
            if soonest is not None:
                next_at = soonest if next_at is None else min(next_at, soonest)
        self._schedule_refresh(next_at, now)

    def outlier_until(self, key: str) -> float | None:
        track = self.outlier._tracks.get(key)
        return None if track is None else track.until

    def _schedule_refresh(self, at: float | None, now: float) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None
        if at is None or self.closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # built outside the loop (tests, config checks): the next change replans
        self._refresh = loop.call_later(max(0.01, at - now), self._refreshed)

    def _refreshed(self) -> None:
        self._refresh = None
        self.replan()

    def choose(self, head_headers: Sequence[tuple[bytes, bytes]], path: bytes,
               client_ip: bytes, exclude: Sequence[Target] = ()
               ) -> tuple[Target, bytes | None] | str | None:
        """Pick a target for a request: (target, Set-Cookie value or None), BUSY when every
        candidate is at its connection limit, None when no target may take traffic."""
        key: bytes | None = None
        hk = self.hash_key
        if hk is not None:
            key = hk.extract(client_ip=client_ip, path=path, headers=head_headers)
        cookie: bytes | None = None
        target: Target | None
        sticky = self.sticky
        if sticky is not None and not exclude:
            pinned = sticky.pick(cookie_value(head_headers, sticky.cookie_name), key)
            if pinned is None:
                return None
            target = pinned.target
            cookie = sticky.set_cookie(pinned.cookie)
        else:
            target = self.policy.pick(key)
            if target is None:
                return None
        if exclude and target in exclude:
            target = self._other(exclude)
            if target is None:
                return None
        limit = self.limit
        if limit is not None and target.in_flight >= limit:
            other = self._under_limit(exclude)
            if other is None:
                return BUSY
            target, cookie = other, (None if sticky is None else
                                     sticky.set_cookie(_token(other)))
        return target, cookie

    def _other(self, exclude: Sequence[Target]) -> Target | None:
        """A retry's target: another routable one, least loaded first (only on retries)."""
        others = [t for t in self.routable if t not in exclude and t.weight > 0]
        if not others:
            return None
        least = min(t.in_flight for t in others)
        return self._rng.choice([t for t in others if t.in_flight == least])

    def has_other(self, exclude: Sequence[Target]) -> bool:
        """Is there a routable target outside `exclude` (somewhere to retry)?"""
        return any(t.weight > 0 and t not in exclude for t in self.routable)

    def _under_limit(self, exclude: Sequence[Target]) -> Target | None:
        # O(n), but only when the policy's pick is saturated
        limit = self.limit
        assert limit is not None
        best: Target | None = None
        for t in self.routable:
            if t.weight > 0 and t.in_flight < limit and t not in exclude:
                if best is None or t.in_flight < best.in_flight:
                    best = t
        return best

    # -- the wait queue -------------------------------------------------------------------
    def enqueue(self, callback: Callable[[bool], bool]) -> bool:
        """Wait for a free slot; False (answer 503) when the queue is full."""
        if len(self.queue) >= self.config.queue_limit:
            return False
        waiter = _Waiter(callback)
        loop = asyncio.get_running_loop()
        waiter.timer = loop.call_later(self.config.connect_timeout_s, self._queue_timeout,
                                       waiter)
        self.queue.append(waiter)
        return True

    def _queue_timeout(self, waiter: _Waiter) -> None:
        if waiter.done:
            return
        waiter.done = True
        try:
            self.queue.remove(waiter)
        except ValueError:
            pass
        waiter.callback(False)

    def _wake(self) -> None:
        while self.queue:
            waiter = self.queue.popleft()
            if waiter.done:
                continue
            waiter.done = True
            if waiter.timer is not None:
                waiter.timer.cancel()
            if waiter.callback(True):
                return

    # -- request accounting ---------------------------------------------------------------
    def started(self, target: Target) -> None:
        target.in_flight += 1
        if self.policy.counts_requests:
            self.policy.started(target)
        if self._stall_check is None and self.config.outlier.stalled_after_s > 0:
            self._schedule_stall_check()

    # -- stalled targets (lbcdn.health.outlier.stalled) -----------------------------------
    def _schedule_stall_check(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # outside the loop (tests, tools): nothing is really in flight
        every = min(1.0, self.config.outlier.stalled_after_s / 2)
        self._stall_check = loop.call_later(every, self.check_stalls)

    def check_stalls(self) -> None:
        """Eject the targets that stalled; runs while exchanges are in flight, every second
        at most (O(connections))."""
        self._stall_check = None
        if self.closed:
            return
        after = self.config.outlier.stalled_after_s
        loop_now = asyncio.get_running_loop().time()
        oldest: dict[Target, float] = {}
        for conn in self.connections:
            since = conn.waiting_since()
            if since is not None and since < oldest.get(conn.target, math.inf):
                oldest[conn.target] = since
        if not oldest:
            return  # nothing in flight: the next request starts the checks again
        now = self._now()
        for target, since in oldest.items():
            others = max((t.answered_at for t in self.routable if t is not target),
                         default=-math.inf)
            if stalled(loop_now - since, now - target.answered_at, now - others, after):
                self._record(target, Result.STALLED, now)
        self._schedule_stall_check()

    def finished(self, target: Target, status: int, upstream_time: float | None,
                 failure: Result | None = None) -> None:
        """One attempt on `target` ended: with an HTTP status (the client's, 0 or 499 when
        it left) and time to the response head, or with `failure` (no usable response)."""
        target.in_flight -= 1
        if self.policy.counts_requests:
            self.policy.finished(target)
        target.requests += 1
        if failure is not None or status >= 500:
            target.errors += 1
        if upstream_time is not None:
            target.latency_sum += upstream_time
            target.latency_n += 1
        target.metrics.observe(upstream_time)
        if self.outlier_enabled or failure is Result.CONNECT_FAILURE:
            result = failure or (Result.HTTP_5XX if status >= 500 else
                                 Result.SUCCESS if status else None)
            if result is not None:
                self._record(target, result, self._now())
        if target.in_flight <= 0 and not target.serving and \
                target.health.state is State.DRAINING:
            self._close_idle(target)
            if self.on_drained is not None:
                self.on_drained(target.key)
        if self.queue:
            self._wake()

    def _record(self, target: Target, result: Result, now: float) -> None:
        ejection = self.outlier.record(target.key, result, now)
        if ejection is not None:
            if self.on_ejected is not None:
                self.on_ejected(target.key, ejection)
            self.replan()

    # -- the control plane's snapshot -----------------------------------------------------
    def apply(self, snapshot: Sequence[dict[str, Any]]) -> None:
        """Take in the control plane's view: every target with host, port, weight, state
        and reason. Targets not named are gone: their idle connections close now."""
        now = self._now()
        old = self.by_key
        targets: list[Target] = []
        by_key: dict[str, Target] = {}
        drained: list[str] = []
        ended: list[Target] = []   # deregistration over: what is still in flight is cut
        for entry in snapshot:
            key = target_key(entry["host"], int(entry["port"]))
            t = old.get(key)
            if t is None:
                t = Target(entry["host"], int(entry["port"]), int(entry["weight"]),
                           pool=self.name)
                self.outlier.add(key)
            t.weight = int(entry["weight"])
            h = t.health
            state = State(entry["state"])
            changed = h.state is not state
            if changed:
                h.state = state
                h.since = now
                if state is State.HEALTHY:
                    self.outlier.reinstate(key)  # a passing check outranks passive health
            reason = entry.get("reason")
            h.reason = None if reason is None else Reason(reason)
            t.serving = state in SERVING
            if not t.serving:
                self._close_idle(t)
                if state is State.DRAINING and t.in_flight <= 0:
                    drained.append(key)
                elif changed and h.reason is Reason.NOT_REGISTERED:
                    ended.append(t)
            targets.append(t)
            by_key[key] = t
        for key, t in old.items():
            if by_key.get(key) is not t:
                t.serving = False  # gone (forgotten once its draining ended)
                self.outlier.remove(key)
                self._close_idle(t)
                ended.append(t)
        self.targets, self.by_key = targets, by_key
        if ended:
            for conn in list(self.connections):
                if conn.target in ended and not conn.in_idle:
                    conn.cut()
        self.replan()
        if self.on_drained is not None:
            for key in drained:
                self.on_drained(key)

    def _close_idle(self, target: Target) -> None:
        for link in self.h2_links.pop(target.key, []):
            link.going_away = True   # takes no new stream; closes when its last one ends
            if link.active <= 0:
                link.close()
        while target.idle:
            conn = target.idle.pop()
            conn.in_idle = False
            conn.close()

    # -- connections ----------------------------------------------------------------------
    def update_gauges(self) -> None:
        idle = self.idle_count()
        self.metrics.idle.set(idle)
        self.metrics.active.set(len(self.connections) - idle)

    def idle_count(self) -> int:
        return sum(len(t.idle) for t in self.targets)

    def pick(self) -> Target | None:
        """The policy's pick, ignoring limits and stickiness (tests, tools)."""
        return self.policy.pick(None)

    def take_idle(self, target: Target, checked: bool = False) -> UpstreamConnection | None:
        """The newest idle connection to `target`. `checked`: for a request that cannot be
        retried (not idempotent), skip the ones the backend has already closed although the
        loop has not told us yet (a killed backend's), at the cost of a poll(2) each.
        An HTTP/2 pool: a new stream on a connection to `target` that takes one more."""
        if self.h2:
            for link in self.h2_links.get(target.key, ()):
                if link.capacity() > 0:
                    return link.new_stream()
            return None
        idle = target.idle
        while idle:
            conn = idle.pop()
            conn.in_idle = False
            if conn.closed:
                continue
            if checked and conn.peer_closed():
                conn.abort()
                continue
            return conn
        return None

    async def connect(self, target: Target,
                      client: tuple[str, int] | None = None) -> UpstreamConnection:
        """A new connection to `target`; with `proxy_protocol`, opened by a PROXY header for
        `client` (None: lbcdn's own request)."""
        if self.h2:
            return await self._h2_connect(target)
        loop = asyncio.get_running_loop()
        conn = UpstreamConnection(self, target)
        # the loop takes any object with the protocol methods; the stubs want the base class
        protocol = cast(asyncio.Protocol, conn)
        try:
            if self.proxy_protocol:
                await asyncio.wait_for(self._connect_proxied(target, client, protocol),
                                       self.config.connect_timeout_s)
            else:
                await asyncio.wait_for(
                    loop.create_connection(lambda: protocol,
                                           target.host, target.port, ssl=self.ssl,
                                           server_hostname=self._server_name(target)),
                    self.config.connect_timeout_s)
        except asyncio.TimeoutError:
            raise ConnectError("connect_timeout") from None
        except ssl.SSLError:
            raise ConnectError("tls_handshake") from None
        except OSError:
            raise ConnectError("connect_refused") from None
        if conn.closed:
            # the backend's kernel completed the handshake and the connection died before we
            # resumed (a backend killed with connections in its accept backlog resets them):
            # nothing was sent on it, so to the caller it is a refused connect. Handed out, it
            # would carry a request nobody answers and no connection_lost is left to come.
            raise ConnectError("connect_refused")
        return conn

    async def _connect_proxied(self, target: Target, client: tuple[str, int] | None,
                               protocol: asyncio.Protocol) -> None:
        """Connect, write the PROXY header, then hand the socket to the loop (and TLS): the
        header goes before anything of TLS."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
            peer = sock.getpeername()
            await loop.sock_sendall(sock, proxy_header(
                self.proxy_protocol, client, (peer[0], peer[1])))
            await loop.create_connection(lambda: protocol, sock=sock, ssl=self.ssl,
                                         server_hostname=self._server_name(target))
        except BaseException:
            sock.close()
            raise

    async def _h2_connect(self, target: Target) -> UpstreamConnection:
        """A stream on a new HTTP/2 connection to `target`; requests that come while it is
        being made wait for it and share it, as far as its stream limit goes."""
        pending = self._h2_connecting.get(target.key)
        if pending is not None:
            try:
                link = await asyncio.shield(pending)
            except ConnectError:
                raise
            if link.capacity() > 0:
                return link.new_stream()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[H2Connection] = loop.create_future()
        self._h2_connecting[target.key] = future
        link = H2Connection(self, target, self.ssl is not None)
        try:
            try:
                transport, _ = await asyncio.wait_for(
                    loop.create_connection(lambda: link, target.host, target.port,
                                           ssl=self.ssl,
                                           server_hostname=self._server_name(target)),
                    self.config.connect_timeout_s)
            except asyncio.TimeoutError:
                raise ConnectError("connect_timeout") from None
            except ssl.SSLError:
                raise ConnectError("tls_handshake") from None
            except OSError:
                raise ConnectError("connect_refused") from None
            if self.ssl is not None and \
                    transport.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
                transport.abort()
                raise ConnectError("tls_handshake")  # the target does not speak h2
            if link.closed:
                raise ConnectError("connect_refused")
        except ConnectError as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the waiters (if any) get it too
            raise
        finally:
            if self._h2_connecting.get(target.key) is future:
                del self._h2_connecting[target.key]
        self.h2_links.setdefault(target.key, []).append(link)
        future.set_result(link)
        return link.new_stream()

    def h2_lost(self, link: H2Connection) -> None:
        links = self.h2_links.get(link.target.key)
        if links is not None and link in links:
            links.remove(link)

    def _server_name(self, target: Target) -> str | None:
        tls = self.config.tls
        if tls is None:
            return None
        if tls.server_name:
            return tls.server_name
        if self.config.host_header not in ("preserve", "target"):
            return self.config.host_header
        return target.host

    def connection_opened(self, conn: UpstreamConnection) -> None:
        assert conn.transport is not None
        sock = conn.transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections.add(conn)
        conn.target.open += 1

    def connection_closed(self, conn: UpstreamConnection) -> None:
        if conn not in self.connections:
            return  # the connection never completed its handshake with us
        self.connections.discard(conn)
        conn.target.open -= 1
        if conn.in_idle:
            conn.target.idle.remove(conn)
            conn.in_idle = False

    def release(self, conn: UpstreamConnection) -> None:
        """An exchange finished cleanly on `conn`: keep it for reuse, or close it."""
        if conn.multiplexed:
            conn.close()  # a stream is not reused; its connection carries on
            return
        target = conn.target
        idle = target.idle
        if (self.closed or conn.closed or len(idle) >= self.max_idle
                or not target.serving or self.proxy_protocol):
            conn.close()
            return
        conn.idle_since = writebatch.now()
        conn.in_idle = True
        idle.append(conn)
        if self._sweeper is None:
            self._schedule_sweep()

    def _schedule_sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(min(1.0, self.config.idle_timeout_s), self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        limit = time.monotonic() - self.config.idle_timeout_s
        any_idle = False
        for target in self.targets:
            # oldest first: the list is used as a stack, so expired ones sit at the bottom
            while target.idle and target.idle[0].idle_since <= limit:
                conn = target.idle.pop(0)
                conn.in_idle = False
                conn.close()
            any_idle = any_idle or bool(target.idle)
        if any_idle and not self.closed:
            self._schedule_sweep()

    def close(self) -> None:
        """Stop keeping connections: close the idle ones now; busy ones close when done."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._refresh is not None:
            self._refresh.cancel()
            self._refresh = None
        if self._stall_check is not None:
            self._stall_check.cancel()
            self._stall_check = None
        for waiter in list(self.queue):
            self._queue_timeout(waiter)
        for target in self.targets:
            self._close_idle(target)

    def details(self) -> dict[str, Any]:
        """Everything the targets API and the status page show from the data plane."""
        now = self._now()
        return {
            "name": self.name,
            "algorithm": self.config.balance.algorithm,
            "failed_open": self.failed_open,
            "queued": len(self.queue),
            "targets": [t.describe(self.outlier.is_ejected(t.key, now)) for t in self.targets],
        }


def _token(target: Target) -> bytes:
    return target_token(target.key)
