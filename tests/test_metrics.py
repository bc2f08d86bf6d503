"""lbcdn.metrics: the batched fast path must expose exactly what prometheus-client's own
observe()/inc() would. The registry is module-level, so every test uses its own label values."""

from __future__ import annotations

import itertools

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from lbcdn import metrics
from lbcdn.metrics import (
    DURATION_BUCKETS,
    REGISTRY,
    flush,
    listener_metrics,
    pool_metrics,
    render_metrics,
    route_metrics,
)

_ids = itertools.count()


def uniq(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_route_observe_is_rendered_with_labels_and_values() -> None:
    listener, route = uniq("l"), uniq("r")
    rm = route_metrics(listener, route)
    rm.observe(200, 0.003, 100, 1000)
    rm.observe(204, 0.0002, 50, 10)
    rm.observe(404, 0.5, 1, 2)
    rm.observe(503, 0.01, 0, 0)

    body, content_type = render_metrics()
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}

    reqs = {(s.labels["status_class"], s.value) for s in families["lbcdn_http_requests"].samples
            if s.labels.get("route") == route and s.labels.get("listener") == listener
            and s.name == "lbcdn_http_requests_total"}
    assert reqs == {("2xx", 2.0), ("4xx", 1.0), ("5xx", 1.0)}

    dur = {s.name: s.value for s in families["lbcdn_http_request_duration_seconds"].samples
           if s.labels.get("route") == route and s.labels.get("le") in (None, "0.005")}
    assert dur["lbcdn_http_request_duration_seconds_count"] == 4
    assert dur["lbcdn_http_request_duration_seconds_sum"] == pytest.approx(0.5132)
    # 0.0002 and 0.003 are <= 0.005; 0.01 and 0.5 are not.
    assert dur["lbcdn_http_request_duration_seconds_bucket"] == 2

    assert sample("lbcdn_bytes_total", listener=listener, direction="in") == 151
    assert sample("lbcdn_bytes_total", listener=listener, direction="out") == 1012


def test_flush_moves_deltas_once() -> None:
    listener, route = uniq("l"), uniq("r")
    rm = route_metrics(listener, route)
    rm.observe(200, 0.001, 1, 1)
    flush()
    flush()
    render_metrics()
    assert sample("lbcdn_http_requests_total", listener=listener, route=route,
                  status_class="2xx") == 1
    rm.observe(200, 0.001, 1, 1)
    render_metrics()
    assert sample("lbcdn_http_requests_total", listener=listener, route=route,
                  status_class="2xx") == 2
    assert sample("lbcdn_http_request_duration_seconds_count", route=route) == 2


def test_status_classes_seen_only_are_exported() -> None:
    listener, route = uniq("l"), uniq("r")
    route_metrics(listener, route).observe(301, 0.001, 0, 0)
    flush()
    assert sample("lbcdn_http_requests_total", listener=listener, route=route,
                  status_class="3xx") == 1
    assert sample("lbcdn_http_requests_total", listener=listener, route=route,
                  status_class="2xx") is None


def test_two_listeners_share_the_route_histogram() -> None:
    route = uniq("r")
    route_metrics(uniq("l"), route).observe(200, 0.001, 0, 0)
    route_metrics(uniq("l"), route).observe(200, 0.002, 0, 0)
    flush()
    assert sample("lbcdn_http_request_duration_seconds_count", route=route) == 2


def test_batched_histogram_matches_prometheus_observe() -> None:
    # Values on, just below and just above every bucket bound, plus 0 and beyond the last.
    values = [0.0, 1e-6, 120.0]
    for b in DURATION_BUCKETS:
        values += [b, b * 0.999, b * 1.001]
    reference = Histogram("ref_seconds", "reference", buckets=DURATION_BUCKETS,
                          registry=CollectorRegistry())
    pool = uniq("p")
    pm = pool_metrics(pool)
    for v in values:
        reference.observe(v)
        pm.upstream_time(v)
    flush()
    ref = {s.labels.get("le"): s.value for s in list(reference.collect())[0].samples
           if s.name == "ref_seconds_bucket"}
    got = {s.labels["le"]: s.value for s in list(metrics.UPSTREAM_DURATION.collect())[0].samples
           if s.name == "lbcdn_upstream_duration_seconds_bucket" and s.labels["pool"] == pool}
    assert got == ref
    assert sample("lbcdn_upstream_duration_seconds_sum", pool=pool) == pytest.approx(sum(values))


def test_pool_errors_and_connection_gauges() -> None:
    pool = uniq("p")
    pm = pool_metrics(pool)
    assert pool_metrics(pool) is pm
    pm.error("connect_refused")
    pm.error("connect_refused")
    pm.error("no_target")
    assert sample("lbcdn_upstream_errors_total", pool=pool, kind="connect_refused") == 2
    assert sample("lbcdn_upstream_errors_total", pool=pool, kind="no_target") == 1
    with pytest.raises(ValueError):
        pm.error("typo")  # type: ignore[arg-type]

    pm.active.inc()
    pm.active.inc()
    pm.active.dec()
    pm.idle.inc()
    assert sample("lbcdn_upstream_connections", pool=pool, state="active") == 1
    assert sample("lbcdn_upstream_connections", pool=pool, state="idle") == 1


def test_listener_connection_gauge() -> None:
    listener = uniq("l")
    lm = listener_metrics(listener)
    assert listener_metrics(listener) is lm
    lm.connection_opened()
    lm.connection_opened()
    lm.connection_closed()
    assert sample("lbcdn_client_connections", listener=listener) == 1


def test_route_metrics_is_cached() -> None:
    assert route_metrics("a", "b") is route_metrics("a", "b")
    assert route_metrics("a", "b") is not route_metrics("a", "c")


def test_access_log_drop_counter_is_declared() -> None:
    body, _ = render_metrics()
    assert b"# TYPE lbcdn_access_log_dropped_total counter" in body


def test_health_check_metrics_are_accumulated_then_flushed() -> None:
    hm = metrics.health_check_metrics("hc-pool")
    assert metrics.health_check_metrics("hc-pool") is hm
    before = metrics.HEALTH_CHECKS.labels("hc-pool", "pass")._value.get()
    for _ in range(3):
        hm.observe("pass", 0.0003)
    hm.observe("timeout", 0.5)
    # nothing reaches prometheus-client until a flush
    assert metrics.HEALTH_CHECKS.labels("hc-pool", "pass")._value.get() == before
    metrics.flush()
    assert metrics.HEALTH_CHECKS.labels("hc-pool", "pass")._value.get() == before + 3
    assert metrics.HEALTH_CHECKS.labels("hc-pool", "timeout")._value.get() >= 1
    fam = {f.name: f for f in text_string_to_metric_families(
        metrics.render_metrics()[0].decode())}
    samples = {(s.name, s.labels.get("le")): s.value
               for s in fam["lbcdn_health_check_duration_seconds"].samples
               if s.labels.get("pool") == "hc-pool"}
    assert samples[("lbcdn_health_check_duration_seconds_count", None)] == 4
    assert samples[("lbcdn_health_check_duration_seconds_bucket", "0.0005")] == 3
    metrics.flush()  # a second flush adds nothing
    assert metrics.HEALTH_CHECKS.labels("hc-pool", "pass")._value.get() == before + 3


def test_cache_hits_are_counted_then_flushed_into_the_results_counter() -> None:
    from lbcdn.metrics import CacheMetrics
    cm = CacheMetrics()
    flush()
    before = sample("lbcdn_cache_requests_total", result="hit") or 0.0
    for _ in range(3):
        cm.count_hit()
    assert (sample("lbcdn_cache_requests_total", result="hit") or 0.0) == before
    render_metrics()
    flush()
    assert sample("lbcdn_cache_requests_total", result="hit") == before + 3


def test_target_health_series_removed_or_zeroed_with_workers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings
    from lbcdn.metrics import set_target_health
    pool = uniq("p")
    set_target_health(pool, "t:1", "healthy")
    assert sample("lbcdn_target_health", pool=pool, target="t:1", state="healthy") == 1
    set_target_health(pool, "t:1", None)
    assert sample("lbcdn_target_health", pool=pool, target="t:1", state="healthy") is None
    # with workers prometheus-client cannot remove a series: it is set to 0, without a warning
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent")
    set_target_health(pool, "t:2", "healthy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        set_target_health(pool, "t:2", None)
    assert sample("lbcdn_target_health", pool=pool, target="t:2", state="healthy") == 0


def test_http2_requests_are_counted_apart_and_in_the_total() -> None:
    listener, route = uniq("l"), uniq("r")
    rm = route_metrics(listener, route)
    rm.observe(200, 0.001, 1, 1)
    rm.observe_h2(200, 0.001, 1, 1)
    rm.observe_h2(404, 0.001, 1, 1)
    render_metrics()
    assert sample("lbcdn_http_requests_total", listener=listener, route=route,
                  status_class="2xx") == 2
    assert sample("lbcdn_http2_requests_total", listener=listener, route=route,
                  status_class="2xx") == 1
    assert sample("lbcdn_http2_requests_total", listener=listener, route=route,
                  status_class="4xx") == 1
    assert sample("lbcdn_http_request_duration_seconds_count", route=route) == 3
