"""The status page's HTML: states, reasons and numbers, escaped, self-refreshing, no assets."""

from __future__ import annotations

from lbcdn.admin.status import render


def test_render_shows_every_target_escaped() -> None:
    html = render([{"name": "app<1>", "algorithm": "round_robin", "fail_open": True,
                    "health_check": {"enabled": True, "protocol": "http", "path": "/h",
                                     "interval_s": 5},
                    "targets": [
                        {"target": "10.0.0.1:80", "state": "healthy", "classic": "InService",
                         "reason": None, "weight": 2, "in_flight": 3, "latency_s": 0.0123,
                         "error_rate": 0.5, "requests": 10},
                        {"target": "10.0.0.2:80", "state": "unhealthy",
                         "classic": "OutOfService", "reason": "Target.Timeout", "weight": 1,
                         "in_flight": 0, "latency_s": None, "error_rate": 0.0,
                         "requests": 0}]}])
    assert "app&lt;1&gt;" in html and "app<1>" not in html
    assert 'data-state="healthy"' in html and "InService" in html
    assert "Target.Timeout" in html and "OutOfService" in html
    assert "12.3 ms" in html and "50.0%" in html
    assert 'http-equiv="refresh"' in html
    assert "<script" not in html and "src=" not in html and "href=" not in html


def test_render_without_pools() -> None:
    assert "No pools are configured." in render([])


def test_render_shows_which_health_each_record_set_follows() -> None:
    pool_check = {"source": "pool", "id": "pool/app/10.0.0.1:80", "pool": "app",
                  "target": "10.0.0.1:80", "healthy": False}
    html = render([], [{"zone": "example.com.", "records": [
        {"name": "www.example.com.", "type": "A", "set_identifier": None, "policy": "simple",
         "failover": None, "health": None,
         "values": [{"value": "10.0.0.1", "health": pool_check},
                    {"value": "10.0.0.2", "health": {**pool_check, "id": "pool/app/10.0.0.2:80",
                                                     "target": "10.0.0.2:80",
                                                     "healthy": True}}]},
        {"name": "svc.example.com.", "type": "A", "set_identifier": "<p>",
         "policy": "failover", "failover": "PRIMARY",
         "health": {"source": "route53_check", "id": "ext", "healthy": True},
         "values": [{"value": "192.0.2.1", "health": None}]}]}])
    assert 'data-zone="example.com."' in html
    assert 'data-health="pool/app/10.0.0.1:80" data-healthy="false"' in html
    assert 'data-health="pool/app/10.0.0.2:80" data-healthy="true"' in html
    assert "pool app, target 10.0.0.1:80" in html
    assert 'data-health="ext" data-healthy="true"' in html and "Route 53 check ext" in html
    assert "svc.example.com. A (&lt;p&gt;)" in html and "PRIMARY" in html


def test_render_zone_without_health() -> None:
    html = render([], [{"zone": "example.com.", "records": []}])
    assert "none follows a health state" in html
