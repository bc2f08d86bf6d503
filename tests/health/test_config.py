"""The pool policy config through the real reflective loader: defaults as ALB, each check's
message and YAML path, and inheritance by a schema class with required fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from lbcdn.configkit.reflect import Loader
from lbcdn.configkit.fields import REQUIRED, doc
from lbcdn.health.config import (BalanceConfig, HealthCheckConfig, OutlierConfig,
                                 PoolPolicyConfig, RetryConfig, StickyConfig)


def load(data: object, tp: Any = PoolPolicyConfig) -> tuple[Any, list[str]]:
    ld = Loader({"PORT": "8081"})
    value = ld.value(tp, data, "pools.web")
    return value, [f"{p}: {m}" for p, m in ld.problems]


def test_grpc_checks_take_grpc_codes() -> None:
    cfg, problems = load({"health": {"protocol": "grpc", "service": "app"}})
    assert problems == [] and cfg.health.success_codes() == "0"
    _, problems = load({"health": {"protocol": "grpc", "matcher": "200"}})
    assert problems and "matcher" in problems[0] and "gRPC status code" in problems[0]
    _, problems = load({"health": {"protocol": "grpc", "matcher": "0-99"}})
    assert problems == []


def test_defaults_are_alb_target_group_defaults() -> None:
    cfg, problems = load({})
    assert problems == []
    h = cfg.health
    assert (h.protocol, h.port, h.path, h.method, h.host) == ("http", None, "/", "GET", None)
    assert (h.timeout_s, h.interval_s, h.healthy_threshold, h.unhealthy_threshold) == (
        5.0, 30.0, 5, 2)
    assert h.matcher is None and h.success_codes() == "200" and h.search_string is None
    assert cfg.deregistration_delay_s == 300.0 and cfg.fail_open is True
    assert cfg.slow_start_s == 0.0
    assert cfg.balance == BalanceConfig() and cfg.balance.algorithm == "round_robin"
    assert cfg.balance.sticky is None
    assert cfg.retries == RetryConfig(max=1, budget_percent=20.0)
    assert cfg.outlier == OutlierConfig()


def test_full_section() -> None:
    cfg, problems = load({
        "health": {"protocol": "https", "port": "${PORT}", "path": "/healthz?full=1",
                   "method": "HEAD", "host": "app.internal", "timeout_s": 0.2,
                   "interval_s": 0.5, "healthy_threshold": 3, "unhealthy_threshold": 1,
                   "matcher": "200-299,301", "search_string": "ok", "jitter": 0},
        "outlier": {"enabled": True, "consecutive_5xx": 3, "base_ejection_s": 1},
        "balance": {"algorithm": "consistent_hash", "hash_key": "header:X-User",
                    "sticky": {"cookie_name": "S", "duration_s": 60}},
        "retries": {"max": 2, "budget_percent": 10, "buffer_body_max_bytes": 0},
        "slow_start_s": 30, "deregistration_delay_s": 0, "fail_open": False,
        "max_connections_per_target": 100, "queue_limit": 0,
    })
    assert problems == []
    assert cfg.health.port == 8081 and cfg.health.interval_s == 0.5
    assert cfg.balance.sticky == StickyConfig(cookie_name="S", duration_s=60.0)
    assert cfg.outlier.consecutive_5xx == 3 and cfg.outlier.enabled
    assert cfg.max_connections_per_target == 100 and not cfg.fail_open


@pytest.mark.parametrize("data, expected", [
    ({"health": {"timeout_s": 30}}, "pools.web.health.timeout_s: must be less than interval_s (30)"),
    ({"health": {"timeout_s": 1, "interval_s": 1}},
     "pools.web.health.timeout_s: must be less than interval_s (1)"),
    ({"health": {"healthy_threshold": 11}}, "pools.web.health.healthy_threshold: must be <= 10; got 11"),
    ({"health": {"unhealthy_threshold": 0}}, "pools.web.health.unhealthy_threshold: must be >= 1; got 0"),
    ({"health": {"matcher": "200-1xx"}}, "pools.web.health.matcher: '200-1xx': '1xx' is not a 3-digit HTTP status code"),
    ({"health": {"path": "health"}}, 'pools.web.health.path: must start with "/" and hold no spaces or control characters'),
    ({"health": {"protocol": "udp"}}, 'pools.web.health.protocol: must be one of "http", "https", "tcp", "grpc"; got "udp"'),
    ({"health": {"protocol": "tcp", "search_string": "x"}}, "pools.web.health.search_string: needs protocol http or https"),
    ({"health": {"search_string": ""}}, "pools.web.health.search_string: must be 1-255 bytes"),
    ({"health": {"host": "a b"}}, "pools.web.health.host: must be a non-empty host name without spaces"),
    ({"health": {"jitter": 0.9}}, "pools.web.health.jitter: must be <= 0.5; got 0.9"),
    ({"health": {"intervall_s": 1}}, "pools.web.health.intervall_s: unknown key (did you mean 'interval_s'? allowed: enabled, healthy_threshold, host, interval_s, jitter, matcher, method, path, port, protocol, reuse_connection, search_string, service, timeout_s, unhealthy_threshold)"),
    ({"balance": {"algorithm": "fastest"}}, 'pools.web.balance.algorithm: must be one of "round_robin", "least_outstanding_requests", "weighted_random", "weighted_round_robin", "random_two_choices", "consistent_hash"; got "fastest"'),
    ({"balance": {"hash_key": "ip"}}, "pools.web.balance.hash_key: must be client_ip, path, header:NAME or cookie:NAME; got 'ip'"),
    ({"balance": {"hash_key": "header:"}}, "pools.web.balance.hash_key: header name must not be empty"),
    ({"balance": {"hash_key": "cookie:a;b"}}, "pools.web.balance.hash_key: 'a;b' is not a valid cookie name"),
    ({"balance": {"sticky": {"cookie_name": "a b"}}}, "pools.web.balance.sticky.cookie_name: 'a b' is not a valid cookie name"),
    ({"balance": {"sticky": {"duration_s": 0}}}, "pools.web.balance.sticky.duration_s: must be >= 1; got 0"),
    ({"outlier": {"base_ejection_s": 60, "max_ejection_s": 30}}, "pools.web.outlier.max_ejection_s: must be at least base_ejection_s (60)"),
    ({"retries": {"budget_percent": 101}}, "pools.web.retries.budget_percent: must be <= 100; got 101"),
    ({"deregistration_delay_s": -1}, "pools.web.deregistration_delay_s: must be >= 0; got -1"),
    ({"slow_start_s": 901}, "pools.web.slow_start_s: must be <= 900; got 901"),
    ({"max_connections_per_target": 0}, "pools.web.max_connections_per_target: must be >= 1; got 0"),
])
def test_errors_name_the_yaml_path(data: object, expected: str) -> None:
    value, problems = load(data)
    assert problems == [expected]


def test_sticky_null_is_off_and_empty_mapping_is_defaults() -> None:
    assert load({"balance": {"sticky": None}})[0].balance.sticky is None
    assert load({"balance": {"sticky": {}}})[0].balance.sticky == StickyConfig()


def test_sub_second_interval_allowed() -> None:
    cfg, problems = load({"interval_s": 0.05, "timeout_s": 0.02}, HealthCheckConfig)
    assert problems == [] and cfg.interval_s == 0.05


@dataclass(frozen=True)
class _Pool(PoolPolicyConfig):
    # what the schema's PoolConfig does: its required fields stay positional and first
    name: str = doc("name", REQUIRED)


def test_a_schema_class_can_inherit_the_policy_fields() -> None:
    pool, problems = load({"name": "web", "fail_open": False, "health": {"interval_s": 10}}, _Pool)
    assert problems == []
    assert pool.name == "web" and not pool.fail_open and pool.health.interval_s == 10
    assert _Pool("x").deregistration_delay_s == 300.0
