"""HTTP/2 through real clients over TLS (ALPN h2): httpx with `http2=True` and headless
Chromium (driven through the DevTools protocol), against the demo configuration
(config/default.yaml, its ports moved) with its listener made HTTPS and the status page
reachable through it: proxied requests, cache hits, fixed responses, the bucket website, a POST
with a body, and what the browser says it spoke (`nextHopProtocol`)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import trustme
import yaml

from tests.e2e.harness import HOST, DaemonProcess, until
from tests.e2e.test_default_config import DEFAULT, REPO, rewrite_ports

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Demo:
    def __init__(self, daemon: DaemonProcess, port: int, ca_file: Path) -> None:
        self.daemon, self.port, self.ca_file = daemon, port, ca_file

    def url(self, path: str) -> str:
        return f"https://{HOST}:{self.port}{path}"


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "workers-2"])
def demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Demo]:
    """The demo configuration, its listener HTTPS (a test CA's certificate for 127.0.0.1 and
    the demo's names), and a route sending status.localhost to the admin's status page."""
    tmp = tmp_path_factory.mktemp("h2-clients")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "site.localhost", "status.localhost")
    crt, key, ca_file = tmp / "c.pem", tmp / "k.pem", tmp / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(crt))
    cert.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    ports: dict[int, int] = {}
    config: dict[str, Any] = rewrite_ports(yaml.safe_load(DEFAULT.read_text()), ports)
    config["buckets"]["root"] = str(tmp / "buckets")
    shutil.copytree(REPO / "config" / "demo-site", tmp / "buckets" / "site",
                    copy_function=shutil.copy)
    config["listeners"][0]["tls"] = {"certificates": [{"cert_file": str(crt),
                                                       "key_file": str(key)}]}
    config["pools"]["admin"] = {"targets": [f"{HOST}:{config['admin']['port']}"],
                                "health": {"enabled": False}}
    config["routes"].insert(0, {"name": "status", "match": {"host": ["status.localhost"]},
                                "forward": "admin"})
    config["logging"] = {"level": "warning", "access_log": {"enabled": False}}
    daemon = DaemonProcess(config, tmp, extra_args=["--workers", str(request.param)])
    try:
        yield Demo(daemon, int(config["listeners"][0]["port"]), ca_file)
    finally:
        assert daemon.stop() == 0, daemon.stderr()


async def test_httpx_http2(demo: Demo) -> None:
    trust = ssl.create_default_context(cafile=demo.ca_file)
    async with httpx.AsyncClient(http2=True, verify=trust, timeout=10) as client:
        # proxied to the demo backends
        resp = await client.get(demo.url("/anything?x=1"))
        assert (resp.http_version, resp.status_code) == ("HTTP/2", 200)
        assert resp.headers["x-backend"] in ("app-1", "app-2")
        # a fixed response
        resp = await client.get(demo.url("/hello"))
        assert (resp.http_version, resp.text) == ("HTTP/2", "hello from lbcdn\n")
        # the bucket website through the edge cache: a miss, then a hit
        site = {"host": "site.localhost"}
        first = await client.get(demo.url("/"), headers=site)
        second = await client.get(demo.url("/"), headers=site)
        assert first.http_version == second.http_version == "HTTP/2"
        assert "<h1>Served by lbcdn's bucket origin</h1>" in second.text
        assert second.text == first.text
        assert "lbcdn; hit" in second.headers["cache-status"], second.headers
        missing = await client.get(demo.url("/nothing-here"), headers=site)
        # (403, as S3 answers a missing key to who may not list the bucket)
        assert missing.status_code == 403 and missing.http_version == "HTTP/2"
        # a POST with a body larger than the initial windows, several streams at once
        body = bytes(range(256)) * 1024
        posts = await asyncio.gather(*(client.post(demo.url("/sink"), content=body)
                                       for _ in range(4)))
        for resp in posts:
            assert (resp.http_version, resp.status_code) == ("HTTP/2", 200)
            assert resp.json() == {"body_bytes": len(body),
                                   "sha256": hashlib.sha256(body).hexdigest()}


@contextlib.asynccontextmanager
async def devtools(profile: Path) -> AsyncIterator[str]:
    """Headless Chromium with its DevTools protocol on a port it picks; yields the page's
    websocket URL."""
    assert CHROMIUM is not None, "install the Debian package chromium (make test does)"
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={profile}", "--ignore-certificate-errors",
        # the demo's names are this machine, whatever the resolver says of *.localhost
        "--host-resolver-rules=MAP *.localhost 127.0.0.1", "--remote-debugging-port=0",
        "about:blank", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        active = profile / "DevToolsActivePort"
        await until(lambda: active.exists() and active.read_text().count("\n") >= 1, 30,
                    what="Chromium's DevTools port")
        port = int(active.read_text().split()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{HOST}:{port}/json/list") as resp:
                pages = [t for t in await resp.json() if t["type"] == "page"]
        yield pages[0]["webSocketDebuggerUrl"]
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def load(ws_url: str, url: str) -> dict[str, Any]:
    """Navigate to `url`, wait for its load event, return what the page says of itself."""
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
        calls = 0

        async def call(method: str, **params: Any) -> dict[str, Any]:
            nonlocal calls
            calls += 1
            await ws.send_json({"id": calls, "method": method, "params": params})
            while True:
                msg = json.loads((await ws.receive(timeout=30)).data)
                if msg.get("id") == calls:
                    assert "error" not in msg, msg
                    return dict(msg["result"])
        await call("Page.enable")
        await call("Page.navigate", url=url)
        while True:
            msg = json.loads((await ws.receive(timeout=30)).data)
            if msg.get("method") == "Page.loadEventFired":
                break
        result = await call("Runtime.evaluate", returnByValue=True, expression=(
            "JSON.stringify({title: document.title, text: document.body.innerText,"
            " entries: performance.getEntries().filter(e => e.nextHopProtocol)"
            ".map(e => [e.name, e.nextHopProtocol])})"))
        return dict(json.loads(result["result"]["value"]))


@pytest.mark.slow
async def test_chromium_loads_the_demo_site_and_the_status_page_over_h2(
        demo: Demo, tmp_path: Path) -> None:
    async with devtools(tmp_path / "profile") as ws_url:
        site = await load(ws_url, f"https://site.localhost:{demo.port}/")
        assert "Served by lbcdn's bucket origin" in site["text"], site
        # the page and its stylesheet, each over h2
        names = {name.rsplit("/", 1)[-1] for name, _ in site["entries"]}
        assert {"", "style.css"} <= names, site
        assert {proto for _, proto in site["entries"]} == {"h2"}, site
        status = await load(ws_url, f"https://status.localhost:{demo.port}/")
        assert status["title"] == "lbcdn status", status
        assert status["entries"] and {p for _, p in status["entries"]} == {"h2"}, status
