"""Configuration of a pool's health, balancing, draining, retries and limits.

Job: the frozen dataclasses for the keys a pool gains with issue 3 (`health`, `outlier`,
`balance`, `retries`, `slow_start_s`, `deregistration_delay_s`, `fail_open`,
`max_connections_per_target`, `queue_limit`), documented where they are declared, and the
cross-field checks the reflective loader (lbcdn.configkit.reflect) runs on them.

Rules: defaults are those of an ALB target group (health checks every 30 s, 5 s timeout,
healthy after 5 passes, unhealthy after 2 failures, matcher 200, deregistration delay 300 s,
fail open when every target is unhealthy). `PoolPolicyConfig` is keyword-only so
lbcdn.upstream.config's `PoolConfig` can inherit it and keep its own required fields first.
Importing this module registers its validators.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lbcdn.configkit import names
from lbcdn.configkit.reflect import VALIDATORS, Loader, join
from lbcdn.configkit.fields import doc
from lbcdn.health.matcher import parse_matcher

Algorithm = Literal["round_robin", "least_outstanding_requests", "weighted_random",
                    "weighted_round_robin", "random_two_choices", "consistent_hash"]


@dataclass(frozen=True)
class HealthCheckConfig:
    enabled: bool = doc(
        "Run active health checks. When false every registered target takes traffic and shows "
        "as `unavailable` (Target.HealthCheckDisabled).", True)
    protocol: Literal["http", "https", "tcp", "grpc"] = doc(
        "`http` or `https` (a request whose status must match `matcher`; certificates are not "
        "verified, as ALB does not), `tcp` (a connection that opens passes), or `grpc` (a "
        "`grpc.health.v1.Health/Check` call over HTTP/2: h2 with TLS when the pool's "
        "`protocol` is h2, else h2c; its grpc-status must match `matcher` and, when OK, the "
        "answer must be SERVING).", "http")
    service: str = doc(
        "grpc checks: the service name asked about (\"\": the server as a whole).", "")
    port: int | None = doc("Port to probe; default: the target's traffic port.", None,
                           lo=1, hi=65535)
    path: str = doc("Request path (with an optional query) of http/https checks.", "/")
    method: Literal["GET", "HEAD"] = doc("Request method of http/https checks.", "GET")
    host: str | None = doc(
        "Host header of http/https checks; default: the target's `host:port`.", None)
    timeout_s: float = doc(
        "A check that has not passed within this time fails with Target.Timeout; must be "
        "less than interval_s.", 5.0, lo=0.001, hi=120)
    interval_s: float = doc(
        "Time between two checks of one target (sub-second values are allowed for tests and "
        "labs).", 30.0, lo=0.01, hi=300)
    healthy_threshold: int = doc(
        "Consecutive passing checks that make an unhealthy target healthy (a new target "
        "needs one).", 5, lo=1, hi=10)
    unhealthy_threshold: int = doc(
        "Consecutive failing checks that make a target unhealthy.", 2, lo=1, hi=10)
    matcher: str | None = doc(
        "Status codes that pass: `200`, `200,202`, `200-299`, or a mix such as "
        "`200,301-302`; for grpc checks gRPC status codes 0-99 (`0`, `0-99`, `0,12`). "
        "Unset: `200`, or `0` (OK) for grpc.", None)
    search_string: str | None = doc(
        "When set, an http/https check passes only if this text appears in the first 5120 "
        "bytes of the response body (as Route 53's string matching).", None)
    reuse_connection: bool = doc(
        "http checks keep one connection per target open between checks (as Envoy does, the "
        "default) instead of opening a new one each time (as ALB does). Trade-off: a backend "
        "that stops accepting new connections (full accept queue, listener closed) stays "
        "healthy on its kept one; set false to test the accept path on every check, at about "
        "2.5x the CPU (1,000 targets at 1 s: ~5% of a core kept, ~13% new, on the 2-core dev "
        "box).", True)
    jitter: float = doc(
        "Each interval is stretched or shrunk at random by up to this fraction, and first "
        "checks are spread over one interval, so targets are not probed in lockstep.",
        0.1, lo=0, hi=0.5)

    def success_codes(self) -> str:
        """The matcher in effect: the given one, else `200` (`0` for grpc checks)."""
        return self.matcher or ("0" if self.protocol == "grpc" else "200")


@dataclass(frozen=True)
class OutlierConfig:
    enabled: bool = doc("Eject targets on passive failures seen in real traffic.", False)
    consecutive_5xx: int = doc(
        "Consecutive 5xx responses that eject a target; 0 ignores 5xx.", 5, lo=0, hi=1000)
    consecutive_connect_failures: int = doc(
        "Consecutive connections that broke before a response head (reset, closed) that "
        "eject a target; 0 ignores them. Failed connects eject sooner: "
        "connect_failure_ejection_s.", 5, lo=0, hi=1000)
    connect_failure_ejection_s: float = doc(
        "A failed connect (refused, unreachable, timed out, TLS handshake failed: the request "
        "was not sent, and is retried on another target) ejects its target at once, also when "
        "`enabled` is false and regardless of max_ejection_percent, for this long x 2^(times "
        "ejected - 1), at most max_ejection_s; then real traffic tries it again. 0 turns this "
        "off.", 1.0, lo=0, hi=3600)
    stalled_after_s: float = doc(
        "A target that has kept a request waiting this long for its response head, and has "
        "answered nobody for as long while another target answered since that request was "
        "sent, is ejected as by outlier "
        "detection (also when `enabled` is false): new requests go elsewhere; those it holds "
        "wait for response_timeout_s. 0 turns this off.", 10.0, lo=0, hi=3600)
    base_ejection_s: float = doc(
        "An ejection lasts this long times the number of times the target has been ejected "
        "(the count falls by one for every base_ejection_s it stays clean).", 30.0,
        lo=0.001, hi=86400)
    max_ejection_s: float = doc("Longest single ejection.", 300.0, lo=0.001, hi=86400)
    max_ejection_percent: float = doc(
        "Most of a pool's targets ejected at once, in percent (at least one target may be "
        "ejected, never the last one left).", 10.0, lo=0, hi=100)


@dataclass(frozen=True)
class StickyConfig:
    cookie_name: str = doc("Name of the load-balancer cookie that pins a client to a target.",
                           "LBCDN")
    duration_s: float = doc("Lifetime of the cookie (ALB: 1 s to 7 days).", 86400.0,
                            lo=1, hi=604800)


@dataclass(frozen=True)
class BalanceConfig:
    algorithm: Algorithm = doc(
        "How a target is picked: `round_robin` (smooth, weighted), `weighted_round_robin` "
        "(the same), `least_outstanding_requests` (fewest in flight per weight), "
        "`weighted_random`, `random_two_choices` (the less loaded of two random picks), "
        "`consistent_hash` (on `hash_key`; few keys move when targets change).",
        "round_robin")
    hash_key: str = doc(
        "What consistent_hash hashes: `client_ip`, `path`, `header:NAME` or `cookie:NAME`. A "
        "request without that header or cookie is balanced round robin.", "client_ip")
    sticky: StickyConfig | None = doc(
        "Sticky sessions with a load-balancer cookie; a client whose target is gone or "
        "unhealthy is re-pinned to a healthy one. Unset: off.", None)
    vnodes: int = doc(
        "consistent_hash: ring points per unit of weight (fewer for very large pools keeps "
        "the ring under 2^20 points).", 100, lo=1, hi=1000)


@dataclass(frozen=True)
class RetryConfig:
    max: int = doc(
        "Retries of one request on another target after it was sent: idempotent methods, "
        "after a reset or 502-class failure before any response byte reached the client. A "
        "failed connect (nothing was sent) is retried for any method on every other target, "
        "outside `max` and the budget.", 1, lo=0, hi=5)
    budget_percent: float = doc(
        "Retries of sent requests may add at most this share of requests over "
        "`budget_window_s`, so retries cannot multiply an outage.", 20.0, lo=0, hi=100)
    budget_window_s: float = doc("Sliding window of the retry budget.", 10.0, lo=0.1, hi=600)
    budget_min_retries: int = doc(
        "Retries always allowed per window, so a quiet pool can still retry.", 3,
        lo=0, hi=100000)
    buffer_body_max_bytes: int = doc(
        "A request body is kept for a replay only up to this size; a larger body is never "
        "retried once sent.", 65536, lo=0, hi=1 << 26)


@dataclass(frozen=True, kw_only=True)
class PoolPolicyConfig:
    health: HealthCheckConfig = doc("Active health checks.", default_factory=HealthCheckConfig)
    outlier: OutlierConfig = doc("Passive health (outlier detection).",
                                 default_factory=OutlierConfig)
    balance: BalanceConfig = doc("Balancing algorithm and sticky sessions.",
                                 default_factory=BalanceConfig)
    retries: RetryConfig = doc(
        "Retries on another target and the retry budget.", default_factory=RetryConfig)
    slow_start_s: float = doc(
        "A new or recovered target's share rises linearly over this window (only while some "
        "other healthy target is not in slow start); 0 disables.", 0.0, lo=0, hi=900)
    deregistration_delay_s: float = doc(
        "A deregistered target drains this long at most: no new requests, in-flight ones "
        "may finish; it becomes unused as soon as nothing is in flight, and when the "
        "delay runs out the requests still in flight are cut (as on ALB).", 300.0, lo=0, hi=3600)
    fail_open: bool = doc(
        "When no target is healthy, route to every registered target (as ALB); `false` "
        "answers 503 instead.", True)
    max_connections_per_target: int | None = doc(
        "Most concurrent requests one target gets; unset: no limit.", None, lo=1, hi=1000000)
    queue_limit: int = doc(
        "Requests that may wait for a free target when every target is at "
        "`max_connections_per_target`; beyond it 503 at once.", 100, lo=0, hi=1000000)


_CTL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
_HASH_KEY = re.compile(r"(client_ip|path|header:(?P<header>.*)|cookie:(?P<cookie>.*))")
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _check_health(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    timeout, interval = v.get("timeout_s"), v.get("interval_s")
    if timeout is not None and interval is not None and timeout >= interval:
        ld.error(join(path, "timeout_s"), f"must be less than interval_s ({interval:g})")
    if v.get("matcher") is not None:
        try:
            parse_matcher(v["matcher"], grpc=v.get("protocol") == "grpc")
        except ValueError as e:
            ld.error(join(path, "matcher"), str(e))
    p = v.get("path")
    if p is not None and (not p.startswith("/") or _CTL_OR_SPACE.search(p)):
        ld.error(join(path, "path"), 'must start with "/" and hold no spaces or control '
                                     "characters")
    host = v.get("host")
    if host is not None and (not host or _CTL_OR_SPACE.search(host)):
        ld.error(join(path, "host"), "must be a non-empty host name without spaces")
    needle = v.get("search_string")
    if needle is not None:
        if v.get("protocol") in ("tcp", "grpc"):
            ld.error(join(path, "search_string"), "needs protocol http or https")
        elif not 1 <= len(needle.encode()) <= 255:
            ld.error(join(path, "search_string"), "must be 1-255 bytes")


def _check_balance(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    key = v.get("hash_key")
    if key is None:
        return
    m = _HASH_KEY.fullmatch(key)
    if m is None:
        ld.error(join(path, "hash_key"),
                 f"must be client_ip, path, header:NAME or cookie:NAME; got {key!r}")
    elif m["header"] is not None:
        problem = names.header_token_problem(m["header"])
        if problem:
            ld.error(join(path, "hash_key"), f"header name {problem}")
    elif m["cookie"] is not None and not _COOKIE_NAME.fullmatch(m["cookie"]):
        ld.error(join(path, "hash_key"), f"{m['cookie']!r} is not a valid cookie name")


def _check_sticky(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    name = v.get("cookie_name")
    if name is not None and not _COOKIE_NAME.fullmatch(name):
        ld.error(join(path, "cookie_name"), f"{name!r} is not a valid cookie name")


def _check_outlier(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    base, cap = v.get("base_ejection_s"), v.get("max_ejection_s")
    if base is not None and cap is not None and cap < base:
        ld.error(join(path, "max_ejection_s"), f"must be at least base_ejection_s ({base:g})")


VALIDATORS.setdefault(HealthCheckConfig, []).append(_check_health)
VALIDATORS.setdefault(BalanceConfig, []).append(_check_balance)
VALIDATORS.setdefault(StickyConfig, []).append(_check_sticky)
VALIDATORS.setdefault(OutlierConfig, []).append(_check_outlier)
