"""ALB listener rules end to end, through real sockets: header, query, method and source-IP
conditions (with X-Forwarded-For hops); weighted forward measured over 10,000 requests, its
stickiness across reloads and weights shifted through the admin API under load, with one
process and with two workers; path and Host rewrites; basic auth."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import yaml

from tests.e2e.harness import (HOST, BackendProcess, DaemonProcess, admin_port, demo_backend,
                               free_port, listener_port, proxy_config, raw_client,
                               running_daemon, until)
from tests.e2e.load import run_load

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def two_pool_config(blue: int, green: int, routes: list[dict[str, Any]]) -> dict[str, Any]:
    config = proxy_config(blue, admin={"token": TOKEN})
    config["pools"] = {name: {"targets": [f"{HOST}:{port}"], "health": {"enabled": False}}
                       for name, port in (("blue", blue), ("green", green))}
    config["routes"] = routes
    config["default_route"] = {"fixed_response": {"status": 404}}
    return config


def canary(blue: int, green: int, sticky_s: int | None = None) -> dict[str, Any]:
    forward: dict[str, Any] = {"pools": [{"pool": "blue", "weight": blue},
                                         {"pool": "green", "weight": green}]}
    if sticky_s is not None:
        forward["stickiness"] = {"duration_s": sticky_s}
    return {"name": "canary", "forward": forward}


@pytest.fixture
def backends() -> Any:
    blue, green = BackendProcess("blue"), BackendProcess("green")
    try:
        yield blue.port, green.port
    finally:
        blue.stop()
        green.stop()


async def admin(session: aiohttp.ClientSession, config: dict[str, Any], method: str,
                path: str, body: object = None) -> tuple[int, Any]:
    url = f"http://{HOST}:{admin_port(config)}{path}"
    async with session.request(method, url, json=body, headers=AUTH) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text.startswith("{") else text


def pool_requests(metrics: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for m in re.finditer(r'^lbcdn_route_pool_requests_total\{([^}]*)\} ([0-9.e+]+)$', metrics,
                         re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("route") == "canary":
            out[labels["pool"]] += int(float(m.group(2)))
    return out


WORKERS = [pytest.param([], id="one-process"), pytest.param(["--workers", "2"], id="workers-2")]


@pytest.mark.slow
@pytest.mark.parametrize("args", WORKERS)
async def test_a_90_10_split_over_10000_requests_and_the_metrics_show_it(
        tmp_path: Path, backends: tuple[int, int], args: list[str]) -> None:
    config = two_pool_config(*backends, [canary(90, 10)])
    daemon = DaemonProcess(config, tmp_path, extra_args=args)
    try:
        result = await run_load(listener_port(config), count=10_000, connections=8)
        assert result.errors == 0, result
        assert result.statuses == {200: 10_000}
        share = result.bodies[b"green"] / 10_000
        assert 0.08 <= share <= 0.12, result          # +-2 points around 10 %
        assert result.bodies[b"blue"] + result.bodies[b"green"] == 10_000
        async with aiohttp.ClientSession() as session:
            async def counted() -> bool:
                _, text = await admin(session, config, "GET", "/metrics")
                return sum(pool_requests(text).values()) == 10_000
            await until(counted, what="the per-pool metrics of all 10,000 requests")
            _, text = await admin(session, config, "GET", "/metrics")
            split = pool_requests(text)
            assert split["green"] == result.bodies[b"green"]
            assert split["blue"] == result.bodies[b"blue"]
    finally:
        daemon.stop()


async def get_pool(port: int, cookie: str | None = None) -> tuple[str, str | None]:
    """One request as a fresh client (a new connection, so every worker may take it): the
    pool that answered and the stickiness cookie set (name=value)."""
    async with raw_client(port) as c:
        headers = [("Cookie", cookie)] if cookie else []
        resp = await c.request("GET", "/", headers=headers)
        assert resp.status == 200, resp
        set_cookie = resp.header("Set-Cookie")
        return resp.header("X-Backend") or "-", set_cookie.split(";")[0] if set_cookie else None


@pytest.mark.slow
@pytest.mark.parametrize("args", WORKERS)
async def test_stickiness_holds_across_reloads_and_a_zero_weight_moves_clients(
        tmp_path: Path, backends: tuple[int, int], args: list[str]) -> None:
    config = two_pool_config(*backends, [canary(50, 50, sticky_s=3600)])
    daemon = DaemonProcess(config, tmp_path, extra_args=args)
    port = listener_port(config)
    try:
        clients = [await get_pool(port) for _ in range(20)]
        assert {pool for pool, _ in clients} == {"blue", "green"}
        assert all(cookie is not None for _, cookie in clients)
        async with aiohttp.ClientSession() as session:
            # a reload that sends every new client to blue keeps the pinned ones where they were
            daemon.path.write_text(yaml.safe_dump(
                two_pool_config(*backends, [canary(999, 1, sticky_s=3600)]) | {
                    "listeners": config["listeners"], "admin": config["admin"]}))
            assert (await admin(session, config, "POST", "/api/reload"))[0] == 200
            for pool, cookie in clients:
                for _ in range(3):
                    assert (await get_pool(port, cookie))[0] == pool
            news = Counter([(await get_pool(port))[0] for _ in range(20)])
            assert news["blue"] >= 18, news
            # rolling the canary back through the admin API takes its pinned clients off it
            status, body = await admin(session, config, "PUT", "/api/routes/canary/weights",
                                       {"weights": {"green": 0}})
            assert status == 200, body
            assert body["pools"] == [{"pool": "blue", "weight": 999},
                                     {"pool": "green", "weight": 0}]

            async def all_blue() -> bool:
                return all([(await get_pool(port, cookie))[0] == "blue"
                            for _, cookie in clients])
            await until(all_blue, what="every client moved to blue")
    finally:
        daemon.stop()


@pytest.mark.slow
@pytest.mark.parametrize("args", WORKERS)
async def test_weights_shift_through_the_admin_api_under_load_without_a_failed_request(
        tmp_path: Path, backends: tuple[int, int], args: list[str]) -> None:
    config = two_pool_config(*backends, [canary(100, 0)])
    daemon = DaemonProcess(config, tmp_path, extra_args=args)
    port = listener_port(config)
    try:
        async with aiohttp.ClientSession() as session:
            load = asyncio.ensure_future(run_load(port, duration_s=3.0, connections=8))
            for green in (10, 50, 90):
                await asyncio.sleep(0.6)
                status, body = await admin(session, config, "PUT",
                                           "/api/routes/canary/weights",
                                           {"weights": {"blue": 100 - green, "green": green}})
                assert status == 200, body
            status, body = await admin(session, config, "PUT", "/api/routes/canary/weights",
                                       {"weights": {"blue": 0, "green": 100}})
            assert status == 200, body
            result = await load
            assert result.errors == 0 and set(result.statuses) == {200}, result
            assert result.bodies[b"green"] > 0 and result.bodies[b"blue"] > 0, result
            after = await run_load(port, count=200, connections=4)
            assert after.bodies == {b"green": 200}, after
            # bad weights are refused and change nothing
            for bad, error in (({"red": 1}, "not one of route 'canary''s (blue, green)"),
                               ({"green": 0}, "at least one weight must be above 0"),
                               ({"green": "x"}, "must be an integer 0-999")):
                status, body = await admin(session, config, "PUT",
                                           "/api/routes/canary/weights", {"weights": bad})
                assert status == 400 and error in body["error"], body
            status, body = await admin(session, config, "GET", "/api/routes/nope/weights")
            assert status == 404 and "no weighted forward" in body["error"]
            status, body = await admin(session, config, "GET", "/api/routes/canary/weights")
            assert body == {"route": "canary", "sticky": False,
                            "pools": [{"pool": "blue", "weight": 0},
                                      {"pool": "green", "weight": 100}]}
    finally:
        daemon.stop()


# -- conditions, rewrites, basic auth: one process, in the test's loop ----------------------

def rule(name: str, **match: Any) -> dict[str, Any]:
    return {"name": name, "match": match,
            "fixed_response": {"status": 200, "body": name}}


async def route_of(port: int, target: str = "/", method: str = "GET",
                   headers: list[tuple[str, str]] | None = None,
                   source: str | None = None) -> str:
    async with raw_client(port, source=source) as c:
        resp = await c.request(method, target, headers=headers)
        return resp.body.decode() if resp.status == 200 else str(resp.status)


async def test_conditions_choose_the_route() -> None:
    config = proxy_config(free_port())
    config["routes"] = [
        rule("header", http_header={"name": "X-Canary", "values": ["beta-*", "yes"]}),
        rule("query", query_string=[{"key": "v*", "value": "2"}]),
        rule("delete", method="DELETE"),
        rule("local2", source_ip="127.0.0.2/32"),
        rule("v6", source_ip="::1/128"),
    ]
    config["default_route"] = {"fixed_response": {"status": 200, "body": "default"}}
    port = listener_port(config)
    async with running_daemon(config):
        assert await route_of(port, headers=[("x-canary", "BETA-7")]) == "header"
        assert await route_of(port, headers=[("X-Canary", "no")]) == "default"
        assert await route_of(port, "/?a=1&version=2") == "query"
        assert await route_of(port, "/?version=3") == "default"
        assert await route_of(port, method="DELETE") == "delete"
        assert await route_of(port, method="PUT") == "default"
        assert await route_of(port, source="127.0.0.2") == "local2"
        assert await route_of(port, source="127.0.0.3") == "default"


async def test_source_ip_uses_x_forwarded_for_hops_when_the_listener_trusts_its_proxy() -> None:
    config = proxy_config(free_port())
    config["listeners"][0]["trusted_proxy_hops"] = 2
    config["routes"] = [rule("office", source_ip=["203.0.113.0/24", "2001:db8::/32"])]
    config["default_route"] = {"fixed_response": {"status": 200, "body": "default"}}
    port = listener_port(config)
    async with running_daemon(config):
        # client, then the two trusted proxies' entries: the farther one added the client's
        xff = [("X-Forwarded-For", "10.9.9.9, 203.0.113.7"), ("X-Forwarded-For", "10.0.0.1")]
        assert await route_of(port, headers=xff) == "office"
        v6 = [("X-Forwarded-For", "2001:db8::5, 10.0.0.1")]
        assert await route_of(port, headers=v6) == "office"
        spoofed = [("X-Forwarded-For", "203.0.113.7, 198.51.100.1, 10.0.0.1")]
        assert await route_of(port, headers=spoofed) == "default"
        assert await route_of(port, headers=[("X-Forwarded-For", "203.0.113.7")]) == "default"
        assert await route_of(port) == "default"


async def test_rewrites_change_what_the_pool_is_sent_not_the_access_log(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    async with demo_backend("app") as backend:
        config = proxy_config(backend)
        config["logging"]["access_log"] = {"enabled": True, "path": str(log_path)}
        config["routes"] = [{"name": "shop", "match": {"path_prefix": "/shop/"}, "forward": {
            "pool": "app", "rewrite": {
                "path_prefix": "/shop", "path_regex": "^/item/([0-9]+)$",
                "path_replacement": "/items/$1", "host_regex": r"^(\w+)\.example\.com$",
                "host_replacement": "$1.internal"}}}]
        port = listener_port(config)
        async with running_daemon(config):
            async with raw_client(port) as c:
                resp = await c.request("GET", "/shop/item/42?color=red", host="www.example.com")
                echo = json.loads(resp.body)
                assert (echo["path"], echo["query"]) == ("/items/42", "color=red")
                assert dict(echo["headers"])["Host"] == "www.internal"
                resp = await c.request("GET", "/shop/cart", host="www.example.com:8080")
                echo = json.loads(resp.body)
                assert echo["path"] == "/cart"
                assert dict(echo["headers"])["Host"] == "www.internal"
        lines = [json.loads(line) for line in log_path.read_text().splitlines()]
        assert [line["path"] for line in lines] == ["/shop/item/42?color=red", "/shop/cart"]


def basic(userpass: str) -> list[tuple[str, str]]:
    return [("Authorization", "Basic " + base64.b64encode(userpass.encode()).decode())]


async def test_basic_auth_asks_checks_and_remembers() -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    async with demo_backend("app") as backend:
        config = proxy_config(backend)
        config["routes"] = [{"name": "admin", "match": {"path_prefix": "/admin"},
                             "basic_auth": {"realm": "ops", "users": {"ops": hashed}},
                             "forward": "app"}]
        port = listener_port(config)
        async with running_daemon(config):
            async with raw_client(port) as c:
                resp = await c.request("GET", "/admin")
                assert resp.status == 401
                assert resp.header("WWW-Authenticate") == 'Basic realm="ops", charset="UTF-8"'
                assert (await c.request("GET", "/admin", headers=basic("ops:nope"))).status == 401
                for _ in range(3):   # the first is checked with bcrypt, the others remembered
                    resp = await c.request("GET", "/admin", headers=basic("ops:pw"))
                    assert resp.status == 200 and resp.header("X-Backend") == "app"
                # with a body, which waits while bcrypt works
                resp = await c.request("POST", "/admin/x", headers=basic("ops:pw"),
                                       body=b"hello")
                assert resp.status == 200 and json.loads(resp.body)["body_bytes"] == 5
                assert (await c.request("GET", "/other")).status == 200   # other routes: open


def cached(backend: int, routes: list[dict[str, Any]]) -> dict[str, Any]:
    config = proxy_config(backend, cache={
        "origins": {"o": {"pool": "app"}},
        "distributions": {"site": {"default_behavior": {"path_pattern": "*", "origin": "o"}}}})
    config["routes"] = routes
    return config


CACHEABLE = "/headers/set?Cache-Control=max-age%3D60"


async def test_cache_hits_answered_from_known_heads_still_honour_source_ip_rules() -> None:
    """The edge cache answers a repeated head without routing it again (lbcdn.edge.cache_hit);
    the same head bytes from another client address may belong to another route."""
    async with demo_backend("app") as backend:
        config = cached(backend, [rule("office", source_ip="127.0.0.2/32"),
                                  {"name": "cdn", "cache": "site"}])
        port = listener_port(config)
        async with running_daemon(config):
            async with raw_client(port) as c:
                for _ in range(3):
                    resp = await c.request("GET", CACHEABLE)
                    assert resp.status == 200 and resp.header("X-Backend") == "app"
            assert await route_of(port, CACHEABLE, source="127.0.0.2") == "office"
