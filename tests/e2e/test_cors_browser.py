"""CORS through a real browser: headless Chromium loads a page from one origin (a server on
another port) whose script fetches from lbcdn. The preflighted PUT succeeds where the route's
CORS block allows that origin and is blocked by the browser where it does not (and then never
reaches the backend); a simple GET from a refused origin is sent but its answer is hidden."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.e2e.harness import HOST, demo_backend, free_port, listener_port, proxy_config, \
    raw_client, running_daemon

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PAGE = """<!doctype html><html><head><title>cors</title></head><body><pre id="out"></pre>
<script>
const edge = "http://%(host)s:%(port)d";
async function attempt(name, path, init) {
  try {
    const r = await fetch(edge + path, init);
    const body = await r.json();
    return [name, "ok " + r.status + " " + body.method + " " + r.headers.get("X-Backend")];
  } catch (e) {
    return [name, "blocked"];
  }
}
Promise.all([
  attempt("put_allowed", "/ok/", {method: "PUT", headers: {"X-Token": "1"}, body: "x"}),
  attempt("put_refused", "/no/", {method: "PUT", headers: {"X-Token": "1"}, body: "x"}),
  attempt("get_refused", "/no/", {method: "GET"}),
]).then(results => {
  document.getElementById("out").textContent = JSON.stringify(Object.fromEntries(results));
});
</script></body></html>"""


@contextlib.asynccontextmanager
async def page_server(edge_port: int) -> AsyncIterator[str]:
    """Serves the page on its own port: its origin is not the edge's."""
    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE % {"host": HOST, "port": edge_port},
                            content_type="text/html")
    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, HOST, port)
    await site.start()
    try:
        yield f"http://{HOST}:{port}"
    finally:
        await runner.cleanup()


async def run_page(url: str, profile: Path) -> dict[str, str]:
    assert CHROMIUM is not None, "install the Debian package chromium (make test does)"
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={profile}",
        # run the page's script, fetches included, before the DOM is dumped
        "--virtual-time-budget=10000", "--dump-dom", url,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    m = re.search(r'<pre id="out">(.*?)</pre>', out.decode(), re.S)
    assert m is not None and m.group(1), out.decode()[:2000]
    return dict(json.loads(m.group(1).replace("&quot;", '"')))


@pytest.mark.slow
async def test_chromium_cross_origin_fetch(tmp_path: Path) -> None:
    async with demo_backend("app-1") as backend:
        edge = proxy_config(backend)
        port = listener_port(edge)
        async with page_server(port) as origin:
            edge["routes"] = [
                {"name": "ok", "match": {"path_prefix": "/ok/"}, "forward": "app",
                 "cors": {"allow_origins": [origin], "allow_methods": ["GET", "PUT"],
                          "allow_headers": ["X-Token"], "expose_headers": ["X-Backend"]}},
                {"name": "no", "match": {"path_prefix": "/no/"}, "forward": "app",
                 "cors": {"allow_origins": ["http://elsewhere.example"],
                          "allow_methods": ["GET", "PUT"], "allow_headers": ["X-Token"]}},
            ]
            async with running_daemon(edge):
                results = await run_page(origin + "/", tmp_path / "profile")
        async with raw_client(backend) as c:
            seen = json.loads((await c.request("GET", "/count")).body)["requests"]
    assert results == {"put_allowed": "ok 200 PUT app-1", "put_refused": "blocked",
                       "get_refused": "blocked"}, results
    # the allowed PUT, the refused GET (sent; its answer hidden), this /count: preflights
    # were answered at the edge, and the refused PUT was never sent
    assert seen == 3
