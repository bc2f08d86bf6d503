"""The status page at the admin listener's `/`: every pool and target at a glance.

Job: one self-contained HTML page (inline CSS, no scripts, no external assets) listing every pool
with its algorithm and health check, and every target with its state (and the Classic ELB word,
InService / OutOfService), reason code, weight, requests in flight, recent latency and error
rate; and, when DNS is served, every record set that follows a health state (a pool target's or
a Route 53 check's) with what it reads now; and the ACME certificates (names, issuer, expiry,
next renewal, last error). It refreshes itself every few seconds with a meta
refresh, so it works with scripts off.

Rules: the page is rendered from the same views as GET /api/pools/{pool}/targets (the control
plane's states joined with the data plane's live numbers) and GET /api/dns/zones/{zone}/records;
every value is HTML-escaped. It is read-only and outside /api/, like /healthz: it changes
nothing and shows no secrets.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

from aiohttp import web

from lbcdn.admin.keys import STATE_KEY, acme_of, control_of
from lbcdn.dns.view import zone_records
from lbcdn.upstream.targets import TargetError

REFRESH_S = 5

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.6em 0 .3em}
.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0002}
th,td{padding:.35em .6em;border-bottom:1px solid #e4e4e4;text-align:left;white-space:nowrap}
th{background:#f0f0f0;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.state{display:inline-block;padding:.05em .5em;border-radius:.8em;font-weight:600}
.healthy,.unavailable{background:#d7f5dd;color:#145c24}
.unhealthy{background:#fbd9d9;color:#8a1515}
.initial{background:#fdf0c9;color:#6b5200}
.draining{background:#dde8fb;color:#1b3f7a}
.unused{background:#e7e7e7;color:#555}
.classic{color:#666;font-size:.85em;margin-left:.4em}
"""


def _num(value: Any, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def _target_row(t: dict[str, Any]) -> str:
    state = escape(str(t["state"]))
    return (
        f'<tr class="target" data-target="{escape(str(t["target"]))}" data-state="{state}">'
        f'<td>{escape(str(t["target"]))}</td>'
        f'<td><span class="state {state}">{state}</span>'
        f'<span class="classic">{escape(str(t.get("classic", "")))}</span></td>'
        f'<td class="reason">{escape(str(t.get("reason") or ""))}</td>'
        f'<td class="num">{int(t.get("weight", 0))}</td>'
        f'<td class="num">{int(t.get("in_flight", 0))}</td>'
        f'<td class="num">{_num(t.get("latency_s") and t["latency_s"] * 1000, "{:.1f} ms")}</td>'
        f'<td class="num">{_num(t.get("error_rate"), "{:.1%}")}</td>'
        f'<td class="num">{int(t.get("requests", 0))}</td></tr>')


def _follows(health: dict[str, Any]) -> str:
    if health["source"] == "pool":
        return f'pool {escape(str(health["pool"]))}, target {escape(str(health["target"]))}'
    return f'Route 53 check {escape(str(health["id"]))}'


def _health_row(record: dict[str, Any], value: str, health: dict[str, Any]) -> str:
    sid = f' ({record["set_identifier"]})' if record["set_identifier"] else ""
    policy = record["failover"] or record["policy"]
    word = "healthy" if health["healthy"] else "unhealthy"
    return (
        f'<tr class="dns-health" data-health="{escape(str(health["id"]))}" '
        f'data-healthy="{"true" if health["healthy"] else "false"}">'
        f'<td>{escape(record["name"] + " " + record["type"] + sid)}</td>'
        f'<td>{escape(str(policy))}</td><td>{escape(value)}</td>'
        f'<td>{_follows(health)}</td>'
        f'<td><span class="state {word}">{word}</span></td></tr>')


def _dns_section(zones: list[dict[str, Any]]) -> list[str]:
    parts = []
    for zone in zones:
        rows = []
        for record in zone["records"]:
            if record["health"] is not None:
                values = ", ".join(v["value"] for v in record["values"])
                rows.append(_health_row(record, values, record["health"]))
            rows += [_health_row(record, v["value"], v["health"])
                     for v in record["values"] if v["health"] is not None]
        parts.append(
            f'<section class="zone" data-zone="{escape(zone["zone"])}">'
            f'<h2>DNS {escape(zone["zone"])}</h2><p class="meta">Record sets that follow a '
            "health state: left out of answers (or failed over) while it reads unhealthy; "
            "answered anyway when nothing else is healthy.</p>"
            "<table><thead><tr><th>record set</th><th>policy</th><th>values</th>"
            "<th>follows</th><th>now</th></tr></thead><tbody>")
        parts += rows or ['<tr><td colspan=5>none follows a health state</td></tr>']
        parts.append("</tbody></table></section>")
    return parts


def _when(t: float | None) -> str:
    return "–" if t is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t))


def _acme_section(certs: list[dict[str, Any]]) -> list[str]:
    if not certs:
        return []
    parts = ['<section class="acme"><h2>ACME certificates</h2><p class="meta">Renewed at two '
             "thirds of their lifetime; a failed renewal keeps the current certificate.</p>"
             "<table><thead><tr><th>names</th><th>challenge</th><th>issuer</th>"
             "<th>not after</th><th>next renewal</th><th>last error</th></tr></thead><tbody>"]
    for c in certs:
        state = "unhealthy" if c["last_error"] else "healthy"
        parts.append(
            f'<tr class="acme-cert" data-cert="{escape(str(c["id"]))}" data-state="{state}">'
            f'<td>{escape(", ".join(c["names"]))}</td><td>{escape(str(c["challenge"]))}</td>'
            f'<td>{escape(str(c["issuer"] or "none yet"))}</td><td>{_when(c["not_after"])}</td>'
            f'<td>{"issuing" if c["issuing"] else _when(c["next_renewal"])}</td>'
            f'<td class="reason">{escape(str(c["last_error"] or ""))}</td></tr>')
    parts.append("</tbody></table></section>")
    return parts


def render(pools: list[dict[str, Any]], zones: list[dict[str, Any]] | None = None,
           certs: list[dict[str, Any]] | None = None) -> str:
    """`zones`: [{"zone", "records": lbcdn.dns.view.zone_records(...)}] when DNS is served;
    `certs`: lbcdn.acme.manager.AcmeManager.describe() when ACME is."""
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{REFRESH_S}">',
        "<meta name=viewport content='width=device-width,initial-scale=1'>",
        f"<title>lbcdn status</title><style>{_CSS}</style></head><body>",
        "<h1>lbcdn</h1>",
        f'<p class="meta">Pools and targets; this page refreshes every {REFRESH_S} s.</p>',
    ]
    if not pools:
        parts.append("<p>No pools are configured.</p>")
    for pool in pools:
        hc = pool.get("health_check", {})
        check = (f'{escape(str(hc.get("protocol")))} {escape(str(hc.get("path")))} every '
                 f'{hc.get("interval_s")} s' if hc.get("enabled") else "health checks off")
        parts.append(
            f'<section class="pool" data-pool="{escape(pool["name"])}">'
            f'<h2>{escape(pool["name"])}</h2><p class="meta">{escape(pool["algorithm"])}; '
            f'{check}; {"fails open" if pool.get("fail_open") else "503 when none healthy"}'
            "</p><table><thead><tr><th>target</th><th>state</th><th>reason</th>"
            "<th>weight</th><th>in flight</th><th>latency</th><th>errors</th>"
            "<th>requests</th></tr></thead><tbody>")
        parts += [_target_row(t) for t in pool["targets"]]
        if not pool["targets"]:
            parts.append('<tr><td colspan=8>no targets</td></tr>')
        parts.append("</tbody></table></section>")
    parts += _dns_section(zones or [])
    parts += _acme_section(certs or [])
    parts.append("</body></html>")
    return "".join(parts)


async def status_page(request: web.Request) -> web.Response:
    try:
        pools = control_of(request).describe()
    except TargetError:
        pools = []
    engine = request.app[STATE_KEY].dns_engine()
    zones = [] if engine is None else [
        {"zone": zone.name, "records": zone_records(zone, engine.health, following_health=True)}
        for zone in engine.zones]
    acme = acme_of(request)
    certs = acme.describe() if acme is not None else []
    return web.Response(text=render(pools, zones, certs), content_type="text/html",
                        headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", status_page)
