"""The status page at the admin listener's `/`, as a browser renders it: headless Chromium dumps
the DOM of a running daemon's page with one healthy and one unhealthy target."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import HOST, admin_port
from tests.e2e.test_pools import healthy_and_unhealthy, key

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


async def dump_dom(url: str, profile: Path) -> str:
    assert CHROMIUM is not None, "install the Debian package chromium (make test does)"
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={profile}", "--dump-dom", url,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode()


def row_of(dom: str, target: str) -> str:
    m = re.search(r'<tr class="target" data-target="%s"[^>]*>.*?</tr>' % re.escape(target), dom,
                  re.S)
    assert m is not None, dom[:2000]
    return m.group(0)


@pytest.mark.slow
async def test_status_page_in_chromium_shows_healthy_and_unhealthy(tmp_path: Path) -> None:
    async with healthy_and_unhealthy() as (a, b, cfg):
        dom = await dump_dom(f"http://{HOST}:{admin_port(cfg)}/", tmp_path / "profile")
    assert "<title>lbcdn status</title>" in dom
    assert 'data-pool="app"' in dom and "round_robin" in dom
    healthy, unhealthy = row_of(dom, key(a)), row_of(dom, key(b))
    assert 'data-state="healthy"' in healthy and "InService" in healthy
    assert 'data-state="unhealthy"' in unhealthy and "OutOfService" in unhealthy
    assert "Target.ResponseCodeMismatch" in unhealthy
    assert re.search(r'http-equiv="refresh" content="\d+"', dom)  # refreshes itself
    assert "http://" not in dom.replace(f"http://{HOST}", "")  # no external assets
