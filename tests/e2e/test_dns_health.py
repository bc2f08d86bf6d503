"""DNS follows the pools' health: one health state for the load balancer and DNS, in one
process and with `--workers 2` (where the health checks and the DNS server run in the control
process).

A pool of two real backends on loopback addresses of their own (a DNS answer tells targets
apart by address) with fast health checks; a zone with an alias to the pool
(`evaluate_target_health`) and a failover pair whose PRIMARY follows one pool target. Stopping
that target takes it out of the alias answer and fails the pair over, as soon as the pool marks
it unhealthy; starting it again brings both back. The admin API and the status page show which
health state each record set follows."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.message
import dns.rdatatype
import pytest

from tests.e2e.harness import HOST, DaemonProcess, admin_port, free_port, proxy_config
from tests.e2e.pools_backend import PoolBackend

TOKEN = "s3cret"
INTERVAL_S, TIMEOUT_S, HEALTHY, UNHEALTHY = 0.2, 0.1, 2, 2
# the pool needs UNHEALTHY (or HEALTHY) checks, INTERVAL_S apart, to change its mind; DNS must
# follow within that plus a margin for a shared machine, not within a TTL or a poll period
FOLLOW_S = UNHEALTHY * INTERVAL_S + TIMEOUT_S + 2.0

WORKERS = [pytest.param([], id="one-process"), pytest.param(["--workers", "2"], id="workers-2")]


def key(b: PoolBackend) -> str:
    return f"{b.address}:{b.port}"


def dns_health_config(a: PoolBackend, b: PoolBackend) -> dict[str, Any]:
    cfg = proxy_config(admin={"token": TOKEN})
    cfg["pools"]["app"] = {
        "targets": [key(a), key(b)],
        "health": {"path": "/health", "interval_s": INTERVAL_S, "timeout_s": TIMEOUT_S,
                   "jitter": 0, "healthy_threshold": HEALTHY,
                   "unhealthy_threshold": UNHEALTHY}}
    failover = {"name": "svc", "type": "A", "policy": "failover", "ttl_s": 5}
    cfg["dns"] = {
        "listeners": [{"address": HOST, "port": free_port()}],
        "health_checks": [{"id": "ext", "host": b.address, "port": b.port,
                           "protocol": "tcp", "interval_s": 1, "timeout_s": 0.5}],
        "zones": [{"name": "example.test", "records": [
            {"name": "www", "type": "A", "ttl_s": 5,
             "alias": {"pool": "app", "evaluate_target_health": True}},
            {**failover, "set_identifier": "main", "failover": "PRIMARY",
             "health_check": f"pool/app/{key(a)}", "values": ["192.0.2.1"]},
            {**failover, "set_identifier": "backup", "failover": "SECONDARY",
             "values": ["192.0.2.2"]},
            {"name": "ext", "type": "A", "policy": "weighted", "set_identifier": "one",
             "weight": 1, "health_check": "ext", "values": ["192.0.2.9"]}]}]}
    return cfg


async def answer(cfg: dict[str, Any], name: str) -> list[str]:
    q = dns.message.make_query(f"{name}.example.test.", dns.rdatatype.A)
    r = await dns.asyncquery.udp(q, HOST, port=cfg["dns"]["listeners"][0]["port"], timeout=3)
    return sorted(rd.address for rrset in r.answer for rd in rrset)


async def api(cfg: dict[str, Any], path: str) -> Any:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
        async with s.get(f"http://{HOST}:{admin_port(cfg)}{path}") as r:
            assert r.status == 200, await r.text()
            return await r.json() if path.startswith("/api/") else await r.text()


async def states(cfg: dict[str, Any]) -> dict[str, str]:
    body = await api(cfg, "/api/pools/app/targets")
    return {t["target"]: t["state"] for t in body["targets"]}


async def until(cfg: dict[str, Any], www: list[str], svc: list[str], within_s: float) -> float:
    """Poll DNS until `www` and `svc` answer as given; the seconds it took."""
    started = time.monotonic()
    while True:
        seen = (await answer(cfg, "www"), await answer(cfg, "svc"))
        if seen == (sorted(www), svc):
            return time.monotonic() - started
        assert time.monotonic() - started < within_s, \
            f"DNS still answers {seen} after {within_s} s; pool: {await states(cfg)}"
        await asyncio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("workers", WORKERS)
async def test_dns_follows_pool_health(tmp_path: Path, workers: list[str]) -> None:
    a, b = PoolBackend("a", "127.0.0.2"), PoolBackend("b", "127.0.0.3")
    await a.start()
    await b.start()
    daemon: DaemonProcess | None = None
    try:
        cfg = dns_health_config(a, b)
        daemon = await asyncio.to_thread(DaemonProcess, cfg, tmp_path, workers)
        deadline = time.monotonic() + 10
        while await states(cfg) != {key(a): "healthy", key(b): "healthy"}:
            assert time.monotonic() < deadline, await states(cfg)
            await asyncio.sleep(0.05)
        assert await answer(cfg, "www") == [a.address, b.address]
        assert await answer(cfg, "svc") == ["192.0.2.1"]

        await a.stop()  # refused connections: the pool marks it unhealthy
        took = await until(cfg, [b.address], ["192.0.2.2"], FOLLOW_S)
        # the LB already says so: DNS read that state, not a state of its own
        assert (await states(cfg))[key(a)] == "unhealthy", took

        await a.start()  # the same port again
        await until(cfg, [a.address, b.address], ["192.0.2.1"], FOLLOW_S)
        assert (await states(cfg))[key(a)] == "healthy"
    finally:
        if daemon is not None:
            await asyncio.to_thread(daemon.stop)
        await a.stop()
        await b.stop()


def records_by_set(body: dict[str, Any]) -> dict[tuple[str, str, str | None], dict[str, Any]]:
    return {(r["name"], r["type"], r["set_identifier"]): r for r in body["records"]}


@pytest.mark.slow
@pytest.mark.parametrize("workers", WORKERS)
async def test_admin_api_and_status_page_show_the_health_each_record_set_follows(
        tmp_path: Path, workers: list[str]) -> None:
    a, b = PoolBackend("a", "127.0.0.2"), PoolBackend("b", "127.0.0.3")
    b.health_status = 500
    await a.start()
    await b.start()
    daemon: DaemonProcess | None = None
    try:
        cfg = dns_health_config(b, a)  # the PRIMARY follows b, which fails its checks
        daemon = await asyncio.to_thread(DaemonProcess, cfg, tmp_path, workers)
        await until(cfg, [a.address], ["192.0.2.2"], 10)

        body = await api(cfg, "/api/dns/zones/example.test/records")
        assert (body["zone"], type(body["serial"])) == ("example.test.", int)
        sets = records_by_set(body)
        www = sets[("www.example.test.", "A", None)]
        assert (www["health"], www["alias"]) == (
            None, {"listener": None, "pool": "app", "evaluate_target_health": True})
        assert www["values"] == [  # in the pool's order
            {"value": b.address, "health": {"source": "pool", "id": f"pool/app/{key(b)}",
                                            "pool": "app", "target": key(b),
                                            "healthy": False}},
            {"value": a.address, "health": {"source": "pool", "id": f"pool/app/{key(a)}",
                                            "pool": "app", "target": key(a),
                                            "healthy": True}}]
        main = sets[("svc.example.test.", "A", "main")]
        assert (main["policy"], main["failover"], main["ttl_s"]) == ("failover", "PRIMARY", 5)
        assert main["health"] == {"source": "pool", "id": f"pool/app/{key(b)}", "pool": "app",
                                  "target": key(b), "healthy": False}
        assert main["values"] == [{"value": "192.0.2.1", "health": None}]
        assert sets[("svc.example.test.", "A", "backup")]["health"] is None
        ext = sets[("ext.example.test.", "A", "one")]["health"]
        assert (ext["source"], ext["id"]) == ("route53_check", "ext")
        assert sets[("example.test.", "SOA", None)]["health"] is None

        page = await api(cfg, "/")
        assert f'data-health="pool/app/{key(a)}" data-healthy="true"' in page
        assert f'data-health="pool/app/{key(b)}" data-healthy="false"' in page
        assert 'data-health="ext"' in page
        assert "192.0.2.2" not in page  # the SECONDARY follows nothing: not listed
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
            url = f"http://{HOST}:{admin_port(cfg)}/api/dns/zones/www.example.test/records"
            async with s.get(url) as r:
                assert r.status == 404
    finally:
        if daemon is not None:
            await asyncio.to_thread(daemon.stop)
        await a.stop()
        await b.stop()
