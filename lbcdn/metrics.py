"""Every Prometheus metric lbcdn exports, declared in one place, and the cheap path to them.

Rules of this module:
- All metrics live on the module-level `REGISTRY`, never prometheus-client's global default, so a
  test process can build many daemons and nothing else in the process leaks into /metrics.
- The data plane never touches a prometheus-client object per request. `RouteMetrics.observe()`
  and `PoolMetrics.upstream_time()` add to plain Python ints and lists held by a pre-bound object
  (one per listener+route, one per pool), and `flush()` moves the accumulated deltas into the
  prometheus-client children in one go. prometheus-client takes a lock on every `inc()` and walks
  the bucket list on every `observe()` (~1.9 us for one request's four updates here, ~0.3 us for
  the local path); at the request rates in DESIGN.md that difference is several percent of a core.
  `render_metrics()` flushes first, so a scrape always sees everything observed before it.
- Loop thread only: the accumulators are not locked, which is only safe because every caller
  (listener, upstream pool, admin handler) runs on the one event loop thread of its process.
- Rare events (upstream errors, connection open/close, access-log drops) go straight to the
  prometheus-client children: they are not worth batching, and gauges must be live.

Multiprocess mode (issue 7, not built yet): prometheus-client picks its value storage when it is
first imported, from the PROMETHEUS_MULTIPROC_DIR environment variable. The worker launcher sets
that variable (one fresh directory per daemon run) before any worker imports this module; the
declarations below then write to per-process mmap files unchanged. Gauges already carry
`multiprocess_mode="livesum"` (ignored in single-process mode) so dead workers drop out of them.
Workers would call `flush()` from a ~1 s timer instead of at scrape time, and `render_metrics()`
in the control process would build a fresh `CollectorRegistry` with
`prometheus_client.multiprocess.MultiProcessCollector(registry)` when the variable is set, rather
than reading `REGISTRY` (and `mark_process_dead(pid)` is called when a worker exits).
"""

from __future__ import annotations

import os
from typing import Final, Literal

import prometheus_client
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

# The *_created series double the output size and Prometheus ignores them unless a feature flag
# is on; one daemon per process, so switching them off process-wide is ours to decide.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY: Final = CollectorRegistry()
# RSS, CPU, open fds: the first things looked at when a proxy misbehaves. Read at scrape time.
ProcessCollector(registry=REGISTRY)

# 100 us (a cache hit on loopback) .. 60 s (the default upstream response timeout); roughly
# 1-2.5-5 steps so p50/p99 estimates stay within a factor of ~2.5 anywhere in that range.
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
# With +Inf appended, _bucket(x) is the index in _BOUNDS of the first bucket with le >= x, the
# same bucket prometheus-client's own observe() would pick.
_BOUNDS: Final[tuple[float, ...]] = DURATION_BUCKETS + (float("inf"),)


def _bucket(seconds: float) -> int:
    """_bucket(seconds), as a compiled loop over unboxed floats: most requests
    end in the first few buckets, and calling into bisect cost more than the scan."""
    i = 0
    for bound in DURATION_BUCKETS:
        if seconds <= bound:
            return i
        i += 1
    return i

UpstreamErrorKind = Literal[
    "connect_refused", "connect_timeout", "tls_handshake", "reset", "response_timeout",
    "malformed_response", "no_target", "deregistered",
]
UPSTREAM_ERROR_KINDS: Final[tuple[str, ...]] = (
    "connect_refused", "connect_timeout", "tls_handshake", "reset", "response_timeout",
    "malformed_response", "no_target", "deregistered",
)

HTTP_REQUESTS: Final = Counter(
    "lbcdn_http_requests_total", "Requests answered, by listener, route and status class.",
    ["listener", "route", "status_class"], registry=REGISTRY)
# a series of its own, not a `protocol` label on the one above: an HTTP/1.1 request pays
# nothing for it (HTTP/1.1 is the difference), and the series above keeps its labels
HTTP2_REQUESTS: Final = Counter(
    "lbcdn_http2_requests_total", "HTTP/2 requests answered, by listener, route and status "
    "class (also counted in lbcdn_http_requests_total).",
    ["listener", "route", "status_class"], registry=REGISTRY)
HTTP_REQUEST_DURATION: Final = Histogram(
    "lbcdn_http_request_duration_seconds",
    "Time from the first byte of the request head to the last byte of the response.",
    ["route"], buckets=DURATION_BUCKETS, registry=REGISTRY)
UPSTREAM_DURATION: Final = Histogram(
    "lbcdn_upstream_duration_seconds",
    "Time from sending a request upstream to receiving the response head.",
    ["pool"], buckets=DURATION_BUCKETS, registry=REGISTRY)
UPSTREAM_ERRORS: Final = Counter(
    "lbcdn_upstream_errors_total", "Failed upstream exchanges, by pool and kind.",
    ["pool", "kind"], registry=REGISTRY)
CLIENT_CONNECTIONS: Final = Gauge(
    "lbcdn_client_connections", "Open client connections.", ["listener"],
    multiprocess_mode="livesum", registry=REGISTRY)
PROXY_REFUSED: Final = Counter(
    "lbcdn_proxy_protocol_refused_total", "Connections closed for their PROXY protocol header "
    "(bad, missing, too slow, or from an untrusted address).", ["listener"],
    registry=REGISTRY)
MIRROR_REQUESTS: Final = Counter(
    "lbcdn_mirror_requests", "Mirrored copies of requests by outcome: sent (answered), "
    "dropped (over max_in_flight or the buffer, or the request broke off), failed (connect, "
    "reset, timeout).", ["pool", "outcome"], registry=REGISTRY)
UPSTREAM_CONNECTIONS: Final = Gauge(
    "lbcdn_upstream_connections", "Open upstream connections: active (carrying a request) "
    "or idle (kept alive in the pool).", ["pool", "state"],
    multiprocess_mode="livesum", registry=REGISTRY)
BYTES: Final = Counter(
    "lbcdn_bytes_total", "Bytes received from (in) and sent to (out) clients, "
    "heads and bodies.", ["listener", "direction"], registry=REGISTRY)
ACCESS_LOG_DROPPED: Final = Counter(
    "lbcdn_access_log_dropped_total",
    "Access log lines dropped because the writer fell too far behind.", registry=REGISTRY)

# Objects holding deltas not yet moved into prometheus-client; each appears at most once.
_dirty: Final[list[RouteMetrics | PoolMetrics | TargetMetrics | HealthCheckMetrics
                   | CacheMetrics]] = []


def _status_class(index: int) -> str:
    return f"{index}xx"


def _add_to_histogram(child: Histogram, counts: list[int], total: float) -> None:
    """Add a batch of observations (per-bucket counts over _BOUNDS, and their sum) to a
    histogram child. prometheus-client only offers observe() one value at a time, so this uses
    its per-bucket value objects (`_buckets`, non-cumulative, and `_sum`), stable since 0.4;
    tests/test_metrics.py checks the result against observe() so a change there fails a test."""
    buckets = child._buckets
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)
            counts[i] = 0
    child._sum.inc(total)


class RouteMetrics:
    """Per-request metrics of one route on one listener. Get it from `route_metrics()`."""

    __slots__ = ("listener", "route", "_status", "_hist", "_seconds", "_bytes_in", "_bytes_out",
                 "_dirty", "_status_children", "_duration", "_bytes_in_child",
                 "_bytes_out_child", "_h2_status", "_h2_children")

    def __init__(self, listener: str, route: str) -> None:
        self.listener = listener
        self.route = route
        # Index = status // 100; 10 slots so a backend's odd "799" cannot raise IndexError.
        self._status = [0] * 10
        self._hist = [0] * len(_BOUNDS)
        self._seconds = 0.0
        self._bytes_in = 0
        self._bytes_out = 0
        self._dirty = False
        # Status-class children are bound on first use so /metrics shows only classes seen.
        self._status_children: list[Counter | None] = [None] * 10
        self._h2_status = [0] * 10   # the HTTP/2 requests among `_status`
        self._h2_children: list[Counter | None] = [None] * 10
        self._duration = HTTP_REQUEST_DURATION.labels(route)
        self._bytes_in_child = BYTES.labels(listener, "in")
        self._bytes_out_child = BYTES.labels(listener, "out")

    def observe(self, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
        """Record one finished request. Called once per request: keep it allocation-free."""
        self._status[status // 100 if 100 <= status < 1000 else 0] += 1
        self._hist[_bucket(seconds)] += 1
        self._seconds += seconds
        self._bytes_in += bytes_in
        self._bytes_out += bytes_out
        if not self._dirty:
            self._dirty = True
            _dirty.append(self)

    def observe_h2(self, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
        """`observe` for a request that came over HTTP/2."""
        self._h2_status[status // 100 if 100 <= status < 1000 else 0] += 1
        self.observe(status, seconds, bytes_in, bytes_out)

    def _flush(self) -> None:
        self._dirty = False
        h2_status = self._h2_status
        for i, n in enumerate(h2_status):
            if n:
                child = self._h2_children[i]
                if child is None:
                    child = HTTP2_REQUESTS.labels(self.listener, self.route, _status_class(i))
                    self._h2_children[i] = child
                child.inc(n)
                h2_status[i] = 0
        status = self._status
        for i, n in enumerate(status):
            if n:
                child = self._status_children[i]
                if child is None:
                    child = HTTP_REQUESTS.labels(self.listener, self.route, _status_class(i))
                    self._status_children[i] = child
                child.inc(n)
                status[i] = 0
        _add_to_histogram(self._duration, self._hist, self._seconds)
        self._seconds = 0.0
        if self._bytes_in:
            self._bytes_in_child.inc(self._bytes_in)
            self._bytes_in = 0
        if self._bytes_out:
            self._bytes_out_child.inc(self._bytes_out)
            self._bytes_out = 0


class PoolMetrics:
    """Metrics of one backend pool. Get it from `pool_metrics()`.

    `active` and `idle` are the live gauges of upstream connections in each state; the
    connection pool moves a connection between them with inc()/dec()."""

    __slots__ = ("pool", "_hist", "_seconds", "_dirty", "_duration", "_errors", "active", "idle")

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self._hist = [0] * len(_BOUNDS)
        self._seconds = 0.0
        self._dirty = False
        self._duration = UPSTREAM_DURATION.labels(pool)
        self._errors: dict[str, Counter] = {}
        self.active: Gauge = UPSTREAM_CONNECTIONS.labels(pool, "active")
        self.idle: Gauge = UPSTREAM_CONNECTIONS.labels(pool, "idle")
        # present (0) from the start: with workers, prometheus-client's multiprocess mode only
        # shows a series some process has touched
        for outcome in RETRY_OUTCOMES:
            UPSTREAM_RETRIES.labels(pool, outcome).inc(0)

    def upstream_time(self, seconds: float) -> None:
        """Record the time to the response head of one upstream exchange."""
        self._hist[_bucket(seconds)] += 1
        self._seconds += seconds
        if not self._dirty:
            self._dirty = True
            _dirty.append(self)

    def error(self, kind: UpstreamErrorKind) -> None:
        """Count one failed upstream exchange."""
        child = self._errors.get(kind)
        if child is None:
            if kind not in UPSTREAM_ERROR_KINDS:
                # A typo here would silently create a new series; fail loudly in tests instead.
                raise ValueError(f"unknown upstream error kind {kind!r}")
            child = self._errors[kind] = UPSTREAM_ERRORS.labels(self.pool, kind)
        child.inc()

    def _flush(self) -> None:
        self._dirty = False
        _add_to_histogram(self._duration, self._hist, self._seconds)
        self._seconds = 0.0


class ListenerMetrics:
    """Connection gauge of one listener. Get it from `listener_metrics()`."""

    __slots__ = ("listener", "connections")

    def __init__(self, listener: str) -> None:
        self.listener = listener
        self.connections: Gauge = CLIENT_CONNECTIONS.labels(listener)

    def connection_opened(self) -> None:
        self.connections.inc()

    def connection_closed(self) -> None:
        self.connections.dec()

    def proxy_refused(self) -> None:
        PROXY_REFUSED.labels(self.listener).inc()


_routes: Final[dict[tuple[str, str], RouteMetrics]] = {}
_pools: Final[dict[str, PoolMetrics]] = {}
_listeners: Final[dict[str, ListenerMetrics]] = {}


def route_metrics(listener: str, route: str) -> RouteMetrics:
    """The RouteMetrics of (listener, route); the same object on every call, so the data plane
    can look it up once per route when it builds its runtime and keep it."""
    key = (listener, route)
    rm = _routes.get(key)
    if rm is None:
        rm = _routes[key] = RouteMetrics(listener, route)
    return rm


def pool_metrics(pool: str) -> PoolMetrics:
    """The PoolMetrics of a pool; the same object on every call."""
    pm = _pools.get(pool)
    if pm is None:
        pm = _pools[pool] = PoolMetrics(pool)
    return pm


def mirror_outcome(pool: str, outcome: str) -> None:
    """One mirrored copy ended (lbcdn.edge.mirror): a few a second at most, counted directly."""
    MIRROR_REQUESTS.labels(pool, outcome).inc()


def listener_metrics(listener: str) -> ListenerMetrics:
    """The ListenerMetrics of a listener; the same object on every call."""
    lm = _listeners.get(listener)
    if lm is None:
        lm = _listeners[listener] = ListenerMetrics(listener)
    return lm


def flush() -> None:
    """Move every accumulated observation into the prometheus-client metrics."""
    while _dirty:
        _dirty.pop()._flush()


def render_metrics() -> tuple[bytes, str]:
    """The Prometheus text exposition of everything, and its Content-Type. With workers
    (PROMETHEUS_MULTIPROC_DIR set) the samples of every worker, aggregated."""
    flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        ProcessCollector(registry=registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# -- pools as target groups (issue 3): health, ejections, retries, per-target traffic ----------

TARGET_HEALTH: Final = Gauge(
    "lbcdn_target_health", "1 for the state each target is in now (initial, healthy, unhealthy, "
    "draining, unused, unavailable), 0 for the others.", ["pool", "target", "state"],
    multiprocess_mode="livemax", registry=REGISTRY)
HEALTH_CHECKS: Final = Counter(
    "lbcdn_health_checks_total", "Active health checks, by pool and outcome (pass, timeout, "
    "connect_failed, code_mismatch, string_mismatch, bad_response, internal_error).",
    ["pool", "outcome"], registry=REGISTRY)
HEALTH_CHECK_DURATION: Final = Histogram(
    "lbcdn_health_check_duration_seconds", "Time one active health check took.", ["pool"],
    buckets=DURATION_BUCKETS, registry=REGISTRY)
OUTLIER_EJECTIONS: Final = Counter(
    "lbcdn_outlier_ejections_total", "Targets ejected by outlier detection, by cause (5xx, "
    "connect_failure, stalled).", ["pool", "target", "cause"], registry=REGISTRY)
RATE_LIMITED: Final = Counter(
    "lbcdn_rate_limited_requests_total", "Requests refused with 429 by a route's rate limit.",
    ["route"], registry=REGISTRY)
UPSTREAM_RETRIES: Final = Counter(
    "lbcdn_upstream_retries_total", "Requests retried on another target (outcome retried), or "
    "not retried because the retry budget was spent (outcome budget_exhausted).",
    ["pool", "outcome"], registry=REGISTRY)
RETRY_OUTCOMES: Final = ("retried", "budget_exhausted")
EJECTION_CAUSES: Final = ("5xx", "connect_failure", "stalled")  # lbcdn.health.outlier.Result
TARGET_REQUESTS: Final = Counter(
    "lbcdn_target_requests_total", "Attempts sent to each target (retries count on the target "
    "they went to).", ["pool", "target"], registry=REGISTRY)
ROUTE_POOL_REQUESTS: Final = Counter(
    "lbcdn_route_pool_requests_total", "Requests a weighted forward sent to each of its pools "
    "(the canary split), by route and pool.", ["route", "pool"], registry=REGISTRY)
TARGET_DURATION: Final = Histogram(
    "lbcdn_target_duration_seconds", "Time from sending a request to a target to its response "
    "head.", ["pool", "target"], buckets=DURATION_BUCKETS, registry=REGISTRY)


class TargetMetrics:
    """Per-target request count and latency, accumulated like RouteMetrics. Get it from
    `target_metrics()`."""

    __slots__ = ("pool", "target", "_requests", "_hist", "_seconds", "_dirty", "_requests_child",
                 "_duration")

    def __init__(self, pool: str, target: str) -> None:
        self.pool = pool
        self.target = target
        self._requests = 0
        self._hist = [0] * len(_BOUNDS)
        self._seconds = 0.0
        self._dirty = False
        self._requests_child: Counter | None = None
        self._duration: Histogram | None = None

    def observe(self, upstream_seconds: float | None) -> None:
        """One attempt ended; `upstream_seconds` None when no response head came."""
        self._requests += 1
        if upstream_seconds is not None:
            self._hist[_bucket(upstream_seconds)] += 1
            self._seconds += upstream_seconds
        if not self._dirty:
            self._dirty = True
            _dirty.append(self)

    def _flush(self) -> None:
        self._dirty = False
        if self._requests_child is None:
            self._requests_child = TARGET_REQUESTS.labels(self.pool, self.target)
            self._duration = TARGET_DURATION.labels(self.pool, self.target)
        assert self._duration is not None
        self._requests_child.inc(self._requests)
        self._requests = 0
        _add_to_histogram(self._duration, self._hist, self._seconds)
        self._seconds = 0.0


_targets: Final[dict[tuple[str, str], TargetMetrics]] = {}


def target_metrics(pool: str, target: str) -> TargetMetrics:
    """The TargetMetrics of (pool, target); the same object on every call."""
    key = (pool, target)
    tm = _targets.get(key)
    if tm is None:
        tm = _targets[key] = TargetMetrics(pool, target)
        for cause in EJECTION_CAUSES:  # present (0) from the start, as the retries
            OUTLIER_EJECTIONS.labels(pool, target, cause).inc(0)
    return tm


class HealthCheckMetrics:
    """Active health check results and latency of one pool, accumulated like RouteMetrics (a
    pool of 1,000 targets at 1 s runs 1,000 checks a second). Get it from
    `health_check_metrics()`."""

    __slots__ = ("pool", "_outcomes", "_hist", "_seconds", "_dirty", "_children", "_duration")

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self._outcomes: dict[str, int] = {}
        self._hist = [0] * len(_BOUNDS)
        self._seconds = 0.0
        self._dirty = False
        self._children: dict[str, Counter] = {}
        self._duration: Histogram | None = None

    def observe(self, outcome: str, seconds: float) -> None:
        """One check ended with `outcome` (an Outcome's value) after `seconds`."""
        outcomes = self._outcomes
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        self._hist[_bucket(seconds)] += 1
        self._seconds += seconds
        if not self._dirty:
            self._dirty = True
            _dirty.append(self)

    def _flush(self) -> None:
        self._dirty = False
        for outcome, n in self._outcomes.items():
            child = self._children.get(outcome)
            if child is None:
                child = self._children[outcome] = HEALTH_CHECKS.labels(self.pool, outcome)
            child.inc(n)
        self._outcomes.clear()
        if self._duration is None:
            self._duration = HEALTH_CHECK_DURATION.labels(self.pool)
        _add_to_histogram(self._duration, self._hist, self._seconds)
        self._seconds = 0.0


_health_checks: Final[dict[str, HealthCheckMetrics]] = {}


def health_check_metrics(pool: str) -> HealthCheckMetrics:
    """The HealthCheckMetrics of a pool; the same object on every call."""
    hm = _health_checks.get(pool)
    if hm is None:
        hm = _health_checks[pool] = HealthCheckMetrics(pool)
    return hm


def set_target_health(pool: str, target: str, state: str | None) -> None:
    """Mark `state` as the target's one current state; None removes the target's series (with
    workers, where prometheus-client cannot remove series, it sets them all to 0)."""
    removable = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    for s in ("initial", "healthy", "unhealthy", "draining", "unused", "unavailable"):
        if state is None and removable:
            try:
                TARGET_HEALTH.remove(pool, target, s)
            except KeyError:
                pass
        else:
            TARGET_HEALTH.labels(pool, target, s).set(1 if s == state else 0)


# -- edge cache ---------------------------------------------------------------------------------
# The data plane holds one bound CacheMetrics per process (children bound at construction, so a
# hit costs one inc()); the tier gauges are set when a store changes, never read through
# callbacks (those do not work in the workers' multiprocess mode).

CACHE_REQUESTS: Final = Counter(
    "lbcdn_cache_requests_total",
    "Requests through the edge cache by result: hit, stale (served stale: max-stale, "
    "stale-while-revalidate or stale-if-error), refresh_hit (revalidated, 304), miss, bypass "
    "(not cacheable) and error.", ["result"], registry=REGISTRY)
CACHE_REVALIDATIONS: Final = Counter(
    "lbcdn_cache_revalidations_total",
    "Conditional requests sent to origins, by outcome (not_modified, modified, error).",
    ["outcome"], registry=REGISTRY)
CACHE_COLLAPSED: Final = Counter(
    "lbcdn_cache_collapsed_total",
    "Requests that waited for another request's origin fetch, by outcome (shared: served "
    "from it; alone: fetched themselves after a lock timeout or an unshareable response).",
    ["outcome"], registry=REGISTRY)
CACHE_EVICTIONS: Final = Counter(
    "lbcdn_cache_evictions_total", "Objects evicted for space, by tier.", ["tier"],
    registry=REGISTRY)
CACHE_BYTES: Final = Gauge(
    "lbcdn_cache_bytes", "Bytes charged to each tier (bodies, heads and overhead).", ["tier"],
    multiprocess_mode="livesum", registry=REGISTRY)
CACHE_OBJECTS: Final = Gauge(
    "lbcdn_cache_objects", "Objects (variants) in each tier.", ["tier"],
    multiprocess_mode="livesum", registry=REGISTRY)
CACHE_ORIGIN_DURATION: Final = Histogram(
    "lbcdn_cache_origin_fetch_seconds",
    "Time from sending a request to an origin to its response head, by origin id.",
    ["origin"], buckets=DURATION_BUCKETS, registry=REGISTRY)
CACHE_PURGED: Final = Counter(
    "lbcdn_cache_purged_total", "Objects removed or marked stale by invalidations, by mode.",
    ["mode"], registry=REGISTRY)

RESULTS: Final = ("hit", "stale", "refresh_hit", "miss", "bypass", "error")


class CacheMetrics:
    """Bound children, so the data plane never looks a label up per request. Fresh hits, the
    most frequent event of all, are counted in a plain int (`count_hit`) and moved into the
    counter by flush(), as RouteMetrics does."""

    def __init__(self) -> None:
        self.results = {r: CACHE_REQUESTS.labels(r) for r in RESULTS}
        self._hit = self.results["hit"]
        self._hits = 0
        self._dirty = False
        self.revalidations = {o: CACHE_REVALIDATIONS.labels(o)
                              for o in ("not_modified", "modified", "error")}
        self.collapsed_shared = CACHE_COLLAPSED.labels("shared")
        self.collapsed_alone = CACHE_COLLAPSED.labels("alone")
        self.evictions = {t: CACHE_EVICTIONS.labels(t) for t in ("memory", "disk")}
        self.bytes = {t: CACHE_BYTES.labels(t) for t in ("memory", "disk")}
        self.objects = {t: CACHE_OBJECTS.labels(t) for t in ("memory", "disk")}
        self.purged = {m: CACHE_PURGED.labels(m) for m in ("hard", "soft")}
        self._origins: dict[str, Histogram] = {}

    def count_hit(self) -> None:
        self._hits += 1
        if not self._dirty:
            self._dirty = True
            _dirty.append(self)

    def _flush(self) -> None:
        self._dirty = False
        if self._hits:
            self._hit.inc(self._hits)
            self._hits = 0

    def origin_time(self, origin: str, seconds: float) -> None:
        child = self._origins.get(origin)
        if child is None:
            child = self._origins[origin] = CACHE_ORIGIN_DURATION.labels(origin)
        child.observe(seconds)

    def tier(self, tier: str, nbytes: int, objects: int) -> None:
        self.bytes[tier].set(nbytes)
        self.objects[tier].set(objects)


# -- ACME certificates (issue 19): issuances, renewals failing, expiry -------------------------

ACME_ISSUANCES: Final = Counter(
    "lbcdn_acme_issuances_total", "ACME issuances and renewals, by certificate (its first "
    "name) and result (ok, error).", ["certificate", "result"], registry=REGISTRY)
ACME_FAILING: Final = Gauge(
    "lbcdn_acme_failing", "1 while the last issuance or renewal of a certificate failed (the "
    "old certificate, if any, is still served).", ["certificate"],
    multiprocess_mode="livemax", registry=REGISTRY)
ACME_NOT_AFTER: Final = Gauge(
    "lbcdn_acme_certificate_not_after_seconds", "Unix time at which the certificate "
    "served expires.", ["certificate"], multiprocess_mode="livemax", registry=REGISTRY)
