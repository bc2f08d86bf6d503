"""Pools as ELB target groups, end to end: a running daemon, real backends on 127.0.0.1 that can
be told to fail, the admin API over HTTP. Health checks run at 0.1-0.2 s intervals without
jitter, so thresholds can be counted exactly."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lbcdn.daemon import Daemon
from tests.e2e.harness import HOST, RawClient, RawResponse, admin_port, free_port, \
    listener_port, proxy_config, running_daemon, until
from tests.e2e.pools_backend import PoolBackend, pool_backends

TOKEN = "s3cret"


def pool_config(*backends: PoolBackend, **pool: Any) -> dict[str, Any]:
    health = {"path": "/health", "interval_s": 0.2, "timeout_s": 0.1, "jitter": 0,
              "healthy_threshold": 3, "unhealthy_threshold": 2, **pool.pop("health", {})}
    cfg = proxy_config(*(b.port for b in backends))
    cfg["pools"]["app"].update({"health": health, "deregistration_delay_s": 5, **pool})
    cfg["admin"]["token"] = TOKEN
    return cfg


async def get(port: int, path: str = "/", method: str = "GET", body: bytes = b"",
              headers: list[tuple[str, str]] | None = None) -> RawResponse:
    c = await RawClient.open(port)
    try:
        return await c.request(method, path, body=body, headers=headers, timeout_s=5)
    finally:
        await c.close()


async def api(cfg: dict[str, Any], method: str, path: str, body: Any = None
              ) -> tuple[int, Any]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
        async with s.request(method, f"http://{HOST}:{admin_port(cfg)}{path}",
                             json=body) as r:
            return r.status, await r.json()


async def targets(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    status, body = await api(cfg, "GET", "/api/pools/app/targets")
    assert status == 200, body
    return {t["target"]: t for t in body["targets"]}


def key(b: PoolBackend) -> str:
    return f"{HOST}:{b.port}"


async def state_is(cfg: dict[str, Any], b: PoolBackend, state: str) -> None:
    async def check() -> bool:
        row = (await targets(cfg)).get(key(b))
        return row is not None and row["state"] == state
    await until(check)


@contextlib.asynccontextmanager
async def healthy_and_unhealthy() -> AsyncIterator[tuple[PoolBackend, PoolBackend,
                                                          dict[str, Any]]]:
    """A running daemon whose pool has `a`, healthy, and `b`, failing its checks (500)."""
    async with pool_backends("a", "b") as (a, b):
        b.health_status = 500
        cfg = pool_config(a, b)
        async with running_daemon(cfg):
            await state_is(cfg, a, "healthy")
            await state_is(cfg, b, "unhealthy")
            yield a, b, cfg


async def test_thresholds_are_counted_exactly() -> None:
    async with pool_backends("a") as (a,):
        cfg = pool_config(a)
        async with running_daemon(cfg):
            assert (await targets(cfg))[key(a)]["state"] == "initial"
            await state_is(cfg, a, "healthy")
            assert a.hits["/health"] == 1  # a new target: healthy after its first pass
            a.health_status = 500
            before = a.hits["/health"]
            await state_is(cfg, a, "unhealthy")
            assert a.hits["/health"] - before == 2  # unhealthy_threshold
            t = (await targets(cfg))[key(a)]
            assert t["reason"] == "Target.ResponseCodeMismatch"
            assert t["classic"] == "OutOfService"
            a.health_status = 200
            before = a.hits["/health"]
            await state_is(cfg, a, "healthy")
            assert a.hits["/health"] - before == 3  # healthy_threshold


async def test_traffic_only_after_a_passing_check_and_fail_open() -> None:
    async with pool_backends("a", "b") as (a, b):
        b.health_status = 503
        cfg = pool_config(a, b)
        async with running_daemon(cfg):
            await state_is(cfg, a, "healthy")
            for _ in range(6):
                assert (await get(listener_port(cfg))).body == b"a"
            assert b.requests() == 0  # never passed a check: no traffic
            a.health_status = 503
            await state_is(cfg, a, "unhealthy")
            await state_is(cfg, b, "unhealthy")
            bodies = {(await get(listener_port(cfg))).body for _ in range(6)}
            assert bodies == {b"a", b"b"}  # every target unhealthy: fail open to all


async def test_no_fail_open_answers_503() -> None:
    async with pool_backends("a") as (a,):
        a.health_status = 500
        cfg = pool_config(a, fail_open=False)
        async with running_daemon(cfg):
            await state_is(cfg, a, "unhealthy")
            resp = await get(listener_port(cfg))
            assert resp.status == 503
            assert a.requests() == 0


async def test_register_weight_maintenance_deregister_with_draining(tmp_path: Path) -> None:
    async with pool_backends("a", "c") as (a, c):
        cfg = pool_config(a, health={"interval_s": 0.1, "timeout_s": 0.05})
        cfg["admin"]["state_dir"] = str(tmp_path)
        async with running_daemon(cfg):
            await state_is(cfg, a, "healthy")
            status, body = await api(cfg, "POST", "/api/pools/app/targets",
                                     {"address": key(c), "weight": 2})
            assert status == 201 and body["target"] == key(c)
            await state_is(cfg, c, "healthy")
            bodies = [(await get(listener_port(cfg))).body for _ in range(9)]
            assert bodies.count(b"c") == 6 and bodies.count(b"a") == 3  # weight 2 : 1
            status, row = await api(cfg, "PATCH", f"/api/pools/app/targets/{key(c)}",
                                    {"maintenance": True})
            assert status == 200 and row["state"] == "unused"
            assert row["reason"] == "Target.InMaintenance"
            hits = c.requests()
            for _ in range(4):
                assert (await get(listener_port(cfg))).body == b"a"
            assert c.requests() == hits
            await api(cfg, "PATCH", f"/api/pools/app/targets/{key(c)}", {"maintenance": False})
            await state_is(cfg, c, "healthy")
            # a slow request in flight on c, an idle keep-alive connection to c
            a.slow_s = c.slow_s = 0.6
            await api(cfg, "PATCH", f"/api/pools/app/targets/{key(a)}", {"weight": 0})
            assert (await get(listener_port(cfg))).body == b"c"
            slow = asyncio.ensure_future(get(listener_port(cfg), "/slow"))
            await until(lambda: c.hits["/slow"] == 1)
            open_before = c.open
            status, _ = await api(cfg, "DELETE", f"/api/pools/app/targets/{key(c)}")
            assert status == 202
            row = (await targets(cfg))[key(c)]
            assert row["state"] == "draining"
            assert row["reason"] == "Target.DeregistrationInProgress"
            assert row["in_flight"] == 1
            await until(lambda: c.open < open_before)  # idle one closed
            resp = await slow
            assert resp.status == 200 and resp.body == b"c"  # the in-flight one completed
            await state_is(cfg, c, "unused")  # early: nothing in flight, long before 5 s
            hits = c.requests()
            await api(cfg, "PATCH", f"/api/pools/app/targets/{key(a)}", {"weight": 1})
            for _ in range(3):
                assert (await get(listener_port(cfg))).body == b"a"
            assert c.requests() == hits
            await api(cfg, "POST", "/api/pools/app/targets", {"host": HOST, "port": c.port})
            await api(cfg, "PATCH", f"/api/pools/app/targets/{key(a)}", {"weight": 3})
        # a restart keeps the API's changes (c registered, a's weight)
        async with running_daemon(cfg):
            rows = await targets(cfg)
            assert set(rows) == {key(a), key(c)}
            assert rows[key(a)]["weight"] == 3 and rows[key(c)]["weight"] == 1


async def test_targets_api_needs_the_token_and_checks_input() -> None:
    async with pool_backends("a") as (a,):
        cfg = pool_config(a)
        async with running_daemon(cfg):
            async with aiohttp.ClientSession() as s:
                url = f"http://{HOST}:{admin_port(cfg)}/api/pools/app/targets"
                async with s.post(url, json={"address": "127.0.0.1:1"}) as r:
                    assert r.status == 401
            assert (await api(cfg, "POST", "/api/pools/nope/targets",
                              {"address": "127.0.0.1:1"}))[0] == 404
            assert (await api(cfg, "POST", "/api/pools/app/targets", {"host": "x"}))[0] == 400
            assert (await api(cfg, "DELETE", "/api/pools/app/targets/1.2.3.4:5"))[0] == 404
            status, body = await api(cfg, "GET", "/api/pools")
            assert status == 200 and body["pools"][0]["name"] == "app"


async def test_connect_failure_is_retried_on_another_target() -> None:
    async with pool_backends("a") as (a,):
        dead = free_port()
        cfg = pool_config(a, health={"enabled": False}, retries={"budget_min_retries": 10})
        cfg["pools"]["app"]["targets"].append(f"{HOST}:{dead}")
        async with running_daemon(cfg):
            for _ in range(6):
                resp = await get(listener_port(cfg), "/", method="POST", body=b"x")
                assert resp.status == 200 and resp.body == b"a"


async def test_failed_connects_are_retried_on_each_target_once_then_502() -> None:
    """Free retries of failed connects end with the pool's targets: every target refusing is
    one 502 after one connect to each, not a loop."""
    cfg = pool_config(health={"enabled": False})
    cfg["pools"]["app"]["targets"] = [f"{HOST}:{free_port()}" for _ in range(3)]
    async with running_daemon(cfg) as daemon:
        resp = await get(listener_port(cfg), "/", method="POST", body=b"x")
        assert resp.status == 502
        assert [t.errors for t in daemon.pools["app"].targets] == [1, 1, 1]


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """A port whose listener never accepts and whose accept queue is full: the kernel drops
    new SYNs, so a connect times out (a stalled backend under load)."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind((HOST, 0))
        listener.listen(0)  # room for one queued connection
        filler.connect(listener.getsockname())
        yield int(listener.getsockname()[1])


async def test_a_connect_timeout_is_retried_and_ejects_the_target() -> None:
    async with pool_backends("a") as (a,):
        with full_backlog() as stalled:
            cfg = pool_config(a, health={"enabled": False}, connect_timeout_s=0.3)
            cfg["pools"]["app"]["targets"].append(f"{HOST}:{stalled}")
            async with running_daemon(cfg) as daemon:
                for _ in range(6):
                    resp = await get(listener_port(cfg), "/", method="POST", body=b"x")
                    assert (resp.status, resp.body) == (200, b"a")
                # one connect timed out; the target was out for the rest
                assert daemon.pools["app"].by_key[f"{HOST}:{stalled}"].errors == 1


async def test_reset_retries_idempotent_but_never_duplicates_a_post() -> None:
    async with pool_backends("a", "b") as (a, b):
        cfg = pool_config(a, b, health={"enabled": False})
        async with running_daemon(cfg):
            resp = await get(listener_port(cfg), "/boom", method="POST", body=b"once")
            assert resp.status == 502
            assert a.methods[("POST", "/boom")] + b.methods[("POST", "/boom")] == 1
            resp = await get(listener_port(cfg), "/boom")
            # both reset: tried on one, retried once on the other (retries.max 1)
            assert resp.status == 502
            assert a.methods[("GET", "/boom")] == 1 and b.methods[("GET", "/boom")] == 1


async def test_retry_budget_bounds_retries() -> None:
    async with pool_backends("a", "b") as (a, b):
        cfg = pool_config(a, b, health={"enabled": False},
                          retries={"budget_percent": 0, "budget_min_retries": 2})
        async with running_daemon(cfg):
            for _ in range(5):
                await get(listener_port(cfg), "/boom")
            assert a.hits["/boom"] + b.hits["/boom"] == 5 + 2


async def test_outlier_detection_ejects_a_failing_target() -> None:
    async with pool_backends("a", "b") as (a, b):
        cfg = pool_config(a, b, health={"enabled": False},
                          outlier={"enabled": True, "consecutive_5xx": 2,
                                   "max_ejection_percent": 50, "base_ejection_s": 30})
        async with running_daemon(cfg) as daemon:
            # `b` answers 500 on /fail; a answers 500 on /fail too, so use per-backend paths
            b_fail = 0
            for _ in range(4):
                resp = await get(listener_port(cfg), "/fail")
                b_fail += resp.status == 500
            pool = daemon.pools["app"]
            ejected = pool.outlier.ejected(time.monotonic())
            assert len(ejected) == 1  # the cap: half of two targets
            samples = await scrape(cfg)
            assert samples[("lbcdn_outlier_ejections_total", frozenset(
                {"pool": "app", "target": ejected[0], "cause": "5xx"}.items()))] == 1.0
            keep = ({key(a), key(b)} - set(ejected)).pop()
            for _ in range(4):
                resp = await get(listener_port(cfg), "/")
                assert resp.body == (b"a" if keep == key(a) else b"b")


@pytest.mark.parametrize("algorithm", ["round_robin", "least_outstanding_requests",
                                       "weighted_random", "weighted_round_robin",
                                       "random_two_choices", "consistent_hash"])
async def test_every_algorithm_is_selectable(algorithm: str) -> None:
    async with pool_backends("a", "b") as (a, b):
        cfg = pool_config(a, b, health={"enabled": False},
                          balance={"algorithm": algorithm, "hash_key": "header:X-User"})
        async with running_daemon(cfg):
            seen = [(await get(listener_port(cfg), headers=[("X-User", f"u{i % 2}")])).body
                    for i in range(20)]
            assert set(seen) <= {b"a", b"b"}
            if algorithm == "consistent_hash":
                assert len({seen[i] for i in range(0, 20, 2)}) == 1  # one user, one target
            elif algorithm != "random_two_choices":
                assert set(seen) == {b"a", b"b"}


async def test_sticky_cookie_pins_and_repins() -> None:
    async with pool_backends("a", "b") as (a, b):
        cfg = pool_config(a, b, balance={"sticky": {"cookie_name": "LB", "duration_s": 60}})
        async with running_daemon(cfg):
            await state_is(cfg, a, "healthy")
            await state_is(cfg, b, "healthy")
            first = await get(listener_port(cfg))
            cookie = first.header("Set-Cookie")
            assert cookie is not None and cookie.startswith("LB=") and "Max-Age=60" in cookie
            value = cookie.split(";")[0]
            for _ in range(5):
                resp = await get(listener_port(cfg), headers=[("Cookie", value)])
                assert resp.body == first.body
            pinned = a if first.body == b"a" else b
            pinned.health_status = 500
            await state_is(cfg, pinned, "unhealthy")
            resp = await get(listener_port(cfg), headers=[("Cookie", value)])
            assert resp.body != first.body  # re-pinned to a healthy one
            assert resp.header("Set-Cookie") != cookie


async def test_max_connections_and_queue_limit_answer_503_quickly() -> None:
    async with pool_backends("a") as (a,):
        a.slow_s = 1.0
        cfg = pool_config(a, health={"enabled": False}, max_connections_per_target=1,
                          queue_limit=1)
        async with running_daemon(cfg) as d:
            slow = asyncio.ensure_future(get(listener_port(cfg), "/slow"))
            await until(lambda: a.hits["/slow"] == 1)
            queued = asyncio.ensure_future(get(listener_port(cfg), "/"))
            await until(lambda: len(d.pools["app"].queue) == 1)
            started = time.monotonic()
            resp = await get(listener_port(cfg), "/")
            assert resp.status == 503 and time.monotonic() - started < 0.5
            assert (await slow).status == 200
            assert (await queued).status == 200  # waited for the slot, then served
            assert a.open <= 1 or a.hits["/"] == 1


@pytest.mark.slow
async def test_slow_start_ramps_a_new_targets_share() -> None:
    async with pool_backends("a", "b") as (a, b):
        cfg = pool_config(a, slow_start_s=2, health={"interval_s": 0.1, "timeout_s": 0.05})
        async with running_daemon(cfg):
            await state_is(cfg, a, "healthy")
            await asyncio.sleep(2.1)  # `a` out of its own slow start: it anchors the ramp
            await api(cfg, "POST", "/api/pools/app/targets", {"address": key(b)})
            await state_is(cfg, b, "healthy")
            early = [(await get(listener_port(cfg))).body for _ in range(40)]
            await asyncio.sleep(2.1)
            late = [(await get(listener_port(cfg))).body for _ in range(40)]
            assert early.count(b"b") <= 10  # ~10-20% of its weight at first
            assert 16 <= late.count(b"b") <= 24  # a full share once the window passed


async def test_discovery_follows_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    async with pool_backends("a", "b") as (a, b):
        cfg = pool_config(a, health={"interval_s": 0.1, "timeout_s": 0.05})
        del cfg["pools"]["app"]["targets"]
        cfg["pools"]["app"]["discovery"] = {"dns_name": "localhost", "port": a.port,
                                            "interval_s": 0.1}
        async with running_daemon(cfg) as daemon:
            await state_is(cfg, a, "healthy")  # real resolution of localhost
            assert (await get(listener_port(cfg))).body == b"a"
            answer = [(HOST, b.port, 1)]

            async def fake(name: str, port: int, srv: bool) -> list[tuple[str, int, int]]:
                return list(answer)
            assert daemon.targets is not None
            discovery = daemon.targets.pools["app"].discovery
            assert discovery is not None
            discovery.resolver = fake
            await state_is(cfg, b, "healthy")

            async def a_gone() -> bool:
                return key(a) not in await targets(cfg)
            await until(a_gone)  # drained (nothing in flight) and forgotten
            for _ in range(3):
                assert (await get(listener_port(cfg))).body == b"b"


async def test_metrics_show_health_retries_and_targets() -> None:
    async with pool_backends("a") as (a,):
        cfg = pool_config(a)
        async with running_daemon(cfg):
            await state_is(cfg, a, "healthy")
            await get(listener_port(cfg))
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://{HOST}:{admin_port(cfg)}/metrics") as r:
                    text = await r.text()
            assert f'lbcdn_target_health{{pool="app",state="healthy",target="{key(a)}"}} 1.0' \
                in text
            assert 'lbcdn_health_checks_total{outcome="pass",pool="app"}' in text
            assert f'lbcdn_target_requests_total{{pool="app",target="{key(a)}"}}' in text
            assert "lbcdn_health_check_duration_seconds_bucket" in text


# What README's admin API section documents for /api/runtime's pools and targets.
RUNTIME_POOL_KEYS = {"name", "algorithm", "failed_open", "queued", "targets"}
RUNTIME_TARGET_KEYS = {"target", "host", "port", "weight", "state", "reason", "classic",
                       "ejected", "in_flight", "open_connections", "idle_connections", "requests",
                       "errors", "error_rate", "latency_s", "requests_per_s"}


def check_runtime_pools(pools: list[dict[str, Any]], a: PoolBackend, b: PoolBackend,
                        requests: int) -> None:
    """/api/runtime's pools after `requests` requests to healthy `a` (`b` is unhealthy)."""
    [pool] = pools
    assert set(pool) == RUNTIME_POOL_KEYS
    assert (pool["name"], pool["algorithm"], pool["failed_open"], pool["queued"]) == \
        ("app", "round_robin", False, 0)
    rows = {t["target"]: t for t in pool["targets"]}
    assert set(rows) == {key(a), key(b)}
    for row in rows.values():
        assert set(row) == RUNTIME_TARGET_KEYS
    ra, rb = rows[key(a)], rows[key(b)]
    assert (ra["host"], ra["port"], ra["weight"]) == (HOST, a.port, 1)
    assert (ra["state"], ra["reason"], ra["classic"], ra["ejected"]) == \
        ("healthy", None, "InService", False)
    assert (ra["requests"], ra["errors"], ra["error_rate"], ra["in_flight"]) == \
        (requests, 0, 0.0, 0)
    assert ra["latency_s"] is not None and 0 < ra["latency_s"] < 1
    assert ra["requests_per_s"] > 0
    assert ra["open_connections"] >= 1 and ra["idle_connections"] >= 1
    assert (rb["state"], rb["reason"], rb["classic"]) == \
        ("unhealthy", "Target.ResponseCodeMismatch", "OutOfService")
    assert (rb["requests"], rb["latency_s"], rb["open_connections"]) == (0, None, 0)


async def test_runtime_shows_pools_as_documented() -> None:
    async with healthy_and_unhealthy() as (a, b, cfg):
        for _ in range(5):
            assert (await get(listener_port(cfg))).body == b"a"
        status, view = await api(cfg, "GET", "/api/runtime")
        assert status == 200
        check_runtime_pools(view["pools"], a, b, 5)
        row = (await targets(cfg))[key(a)]
        assert (row["requests"], row["errors"]) == (5, 0)
        assert row["latency_s"] is not None and row["open_connections"] >= 1


async def scrape(cfg: dict[str, Any]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics parsed with prometheus-client's parser: (sample name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{HOST}:{admin_port(cfg)}/metrics") as r:
            assert r.status == 200
            text = await r.text()
    return {(smp.name, frozenset(smp.labels.items())): smp.value
            for family in text_string_to_metric_families(text) for smp in family.samples}


def check_pool_metrics_from_start(samples: dict[tuple[str, frozenset[tuple[str, str]]], float],
                                  target: str, pool: str = "app") -> None:
    """A pool without health checks, before any traffic: its target is `unavailable`, and
    the ejection and retry counters are there at 0."""
    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))
    for state in ("initial", "healthy", "unhealthy", "draining", "unused", "unavailable"):
        assert value("lbcdn_target_health", pool=pool, target=target, state=state) == \
            (1.0 if state == "unavailable" else 0.0), state
    for cause in ("5xx", "connect_failure"):
        assert value("lbcdn_outlier_ejections_total", pool=pool, target=target,
                     cause=cause) == 0.0
    for outcome in ("retried", "budget_exhausted"):
        assert value("lbcdn_upstream_retries_total", pool=pool, outcome=outcome) == 0.0


async def test_metrics_unchecked_targets_are_unavailable_and_counters_start_at_zero() -> None:
    async with pool_backends("a") as (a,):
        cfg = pool_config(a, health={"enabled": False})
        # a pool name of its own: this process's metrics registry outlives earlier tests
        cfg["pools"] = {"fresh": cfg["pools"]["app"]}
        cfg["default_route"] = {"forward": "fresh"}
        async with running_daemon(cfg):
            status, body = await api(cfg, "GET", "/api/pools/fresh/targets")
            assert status == 200 and body["targets"][0]["state"] == "unavailable"
            check_pool_metrics_from_start(await scrape(cfg), key(a), "fresh")
            # a registered target too
            status, _ = await api(cfg, "POST", "/api/pools/fresh/targets",
                                  {"address": f"{HOST}:1"})
            assert status == 201
            samples = await scrape(cfg)
            assert samples[("lbcdn_target_health", frozenset(
                {"pool": "fresh", "target": f"{HOST}:1", "state": "unavailable"}.items()))] \
                == 1.0
