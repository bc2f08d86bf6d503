"""The edge cache's Prometheus metrics (to move into lbcdn/metrics.py when the lead integrates).

Rules: declared once on lbcdn.metrics.REGISTRY; the data plane holds one bound `CacheMetrics`
per process (children bound at construction, so a hit costs one `inc()`); the tier gauges are
set when a store changes, never read through callbacks (those do not work in prometheus-client's
multiprocess mode, which the workers use).
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

from lbcdn.metrics import DURATION_BUCKETS, REGISTRY

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
    """Bound children, so the data plane never looks a label up per request."""

    def __init__(self) -> None:
        self.results = {r: CACHE_REQUESTS.labels(r) for r in RESULTS}
        self.hit = self.results["hit"]
        self.revalidations = {o: CACHE_REVALIDATIONS.labels(o)
                              for o in ("not_modified", "modified", "error")}
        self.collapsed_shared = CACHE_COLLAPSED.labels("shared")
        self.collapsed_alone = CACHE_COLLAPSED.labels("alone")
        self.evictions = {t: CACHE_EVICTIONS.labels(t) for t in ("memory", "disk")}
        self.bytes = {t: CACHE_BYTES.labels(t) for t in ("memory", "disk")}
        self.objects = {t: CACHE_OBJECTS.labels(t) for t in ("memory", "disk")}
        self.purged = {m: CACHE_PURGED.labels(m) for m in ("hard", "soft")}
        self._origins: dict[str, Histogram] = {}

    def origin_time(self, origin: str, seconds: float) -> None:
        child = self._origins.get(origin)
        if child is None:
            child = self._origins[origin] = CACHE_ORIGIN_DURATION.labels(origin)
        child.observe(seconds)

    def tier(self, tier: str, nbytes: int, objects: int) -> None:
        self.bytes[tier].set(nbytes)
        self.objects[tier].set(objects)
