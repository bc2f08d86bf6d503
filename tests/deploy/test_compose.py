"""docker-compose.yml: Compose itself accepts it (`docker-compose config`, Debian's
docker-compose, which validates offline against the Compose schema: no Docker engine runs
here), its services are lbcdn and the two apps, the lbcdn config it mounts passes
`lbcdn check-config`, the pool's targets are the app services on the port they listen on, the
published ports are the config's, the demo site and zone are there and well formed, and the
mounted config really proxies to two demo backends named like the apps (run on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from dnslib import QTYPE, ZoneParser

import lbcdn
from tests.deploy.helpers import DEPLOY, REPO, check_config, commented_block
from tests.e2e.harness import HOST, demo_backend, free_port, running_daemon

COMPOSE = REPO / "docker-compose.yml"
APPS = ("app-1", "app-2")


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())  # resolves the `<<: *anchor` merges
    assert isinstance(data, dict)
    return data


def services() -> dict[str, Any]:
    return dict(compose()["services"])


def mounts(service: str) -> dict[str, tuple[Path, str]]:
    """Container path -> (host path, options) of a service's bind mounts."""
    out = {}
    for volume in services()[service]["volumes"]:
        source, target, *opts = volume.split(":")
        if source.startswith("."):
            out[target] = ((REPO / source).resolve(), ",".join(opts))
    return out


def lbcdn_config_path() -> Path:
    path, opts = mounts("lbcdn")["/etc/lbcdn/config.yaml"]
    assert opts == "ro"
    return path


def lbcdn_config() -> dict[str, Any]:
    data = yaml.safe_load(lbcdn_config_path().read_text())
    assert isinstance(data, dict)
    return data


def arg(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def duration_s(text: str) -> float:
    m = re.fullmatch(r"(\d+)s", text)
    assert m, f"expected a duration like 40s, got {text!r}"
    return float(m.group(1))


# -- Compose's own validation ------------------------------------------------------------


def docker_compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose (Debian package) is needed: make test installs it"
    return subprocess.run([exe, "-f", str(path), "config", "-q"], capture_output=True,
                          text=True, timeout=60, cwd=path.parent)


def test_docker_compose_accepts_the_file() -> None:
    result = docker_compose_config(COMPOSE)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("mutate,message", [
    (lambda s: s["lbcdn"].__setitem__("ports", {"http": 8080}), "should be an array"),
    (lambda s: s["app-1"].__setitem__("stop_grace_period", 40), "should be a string"),
    (lambda s: s["app-2"].__setitem__("helthcheck", {}), "helthcheck"),
], ids=["ports-mapping", "grace-int", "misspelt-key"])
def test_docker_compose_rejects_a_broken_file(tmp_path: Path, mutate: Any,
                                              message: str) -> None:
    """The check above can fail: a copy with one mistake is refused, naming it."""
    data = compose()
    mutate(data["services"])
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(data))
    result = docker_compose_config(broken)
    assert result.returncode != 0
    assert message in result.stderr


# -- the services --------------------------------------------------------------------------


def test_services_are_lbcdn_and_two_apps_from_the_lbcdn_image() -> None:
    svcs = services()
    assert set(svcs) == {"lbcdn", *APPS}
    for name, svc in svcs.items():
        # Built here, never pulled: an `lbcdn` image on a public registry is not ours.
        assert svc["build"] == ".", name
        assert svc["image"] == f"lbcdn:{lbcdn.__version__}", name
        assert svc["read_only"] is True, name
    assert svcs["lbcdn"]["command"][:2] == ["serve", "--config"]
    assert svcs["lbcdn"]["command"][2] == "/etc/lbcdn/config.yaml"
    for app in APPS:
        command = svcs[app]["command"]
        assert command[0] == "demo-backend"
        assert arg(command, "--address") == "0.0.0.0"
        assert arg(command, "--name") == app
        port = arg(command, "--port")
        assert svcs[app]["expose"] == [port]
        assert f"127.0.0.1:{port}/" in " ".join(svcs[app]["healthcheck"]["test"])
        assert svcs["lbcdn"]["depends_on"][app] == {"condition": "service_healthy"}


def test_mounted_config_passes_check_config() -> None:
    result = check_config(lbcdn_config_path())
    assert result.returncode == 0, result.stderr


def test_pool_targets_are_the_app_services() -> None:
    svcs = services()
    expected = [f"{app}:{arg(svcs[app]['command'], '--port')}" for app in APPS]
    assert lbcdn_config()["pools"]["app"]["targets"] == expected
    discovery = commented_block(lbcdn_config_path().read_text(), "discovery")
    assert discovery["port"] == int(arg(svcs[APPS[0]]["command"], "--port"))


def test_published_ports_are_the_configs() -> None:
    cfg = lbcdn_config()
    ports = services()["lbcdn"]["ports"]
    [listener] = cfg["listeners"]
    assert listener["address"] == "0.0.0.0"
    assert f"{listener['port']}:{listener['port']}" in ports
    admin = cfg["admin"]
    assert admin["address"] == "0.0.0.0"  # else nothing published reaches it
    # The admin API has no token in this demo: published on the host's loopback only.
    assert f"127.0.0.1:{admin['port']}:{admin['port']}" in ports
    assert not [p for p in ports if p.endswith(f":{admin['port']}") and
                not p.startswith("127.0.0.1:")]
    dns = commented_block(lbcdn_config_path().read_text(), "dns")
    [dns_listener] = dns["listeners"]
    for proto in ("udp", "tcp"):
        assert f"{dns_listener['port']}:{dns_listener['port']}/{proto}" in ports


def test_stop_grace_period_covers_the_drain() -> None:
    svc = services()["lbcdn"]
    assert svc["stop_signal"] == "SIGTERM"
    drain_s = float(lbcdn_config()["shutdown"]["drain_timeout_s"])
    assert drain_s > 0
    assert duration_s(svc["stop_grace_period"]) > drain_s


# -- the demo site and zone ----------------------------------------------------------------


def test_demo_site_is_mounted_with_index_and_error_documents() -> None:
    site, opts = mounts("lbcdn")["/srv/lbcdn/site"]
    assert opts == "ro"
    assert site == (DEPLOY / "compose" / "site").resolve()
    for name in ("index.html", "error.html"):
        text = (site / name).read_text()
        assert text.startswith("<!doctype html>"), name
    bucket = commented_block(lbcdn_config_path().read_text(), "buckets")["site"]
    assert bucket["path"] == "/srv/lbcdn/site"
    assert bucket["website"] == {"index_document": "index.html",
                                 "error_document": "error.html"}


def test_demo_zone_is_mounted_and_parses() -> None:
    zones, opts = mounts("lbcdn")["/etc/lbcdn/zones"]
    assert opts == "ro"
    dns = commented_block(lbcdn_config_path().read_text(), "dns")
    [zone] = dns["zones"]
    # Relative to the config file's directory: /etc/lbcdn in the container, and the config
    # sits beside the zones directory in the repository too.
    assert lbcdn_config_path().parent / zone["file"] == zones / Path(zone["file"]).name
    text = (zones / Path(zone["file"]).name).read_text()
    records = list(ZoneParser(text))
    apex = [r for r in records if str(r.rname) == "example.test."]
    assert [QTYPE[r.rtype] for r in apex][:2] == ["SOA", "NS"]
    names = {str(r.rname) for r in records}
    assert {"www.example.test.", "app.example.test.", "ns1.example.test."} <= names
    # Documentation addresses only (RFC 5737 / RFC 3849).
    for r in records:
        if QTYPE[r.rtype] == "A":
            assert str(r.rdata).startswith("192.0.2."), r
        if QTYPE[r.rtype] == "AAAA":
            assert str(r.rdata).startswith("2001:db8:"), r


def test_dns_block_loads_and_builds_the_demo_zone() -> None:
    """`dns:` is not in `Config` yet, but its section loader and zone builder exist: the
    commented-out block is what they accept, and the zone builds from the mounted file."""
    from lbcdn.dns.config import load_dns_config
    from lbcdn.dns.zone import build_zones
    assert "dns" not in lbcdn_config()
    cfg = load_dns_config(commented_block(lbcdn_config_path().read_text(), "dns"))
    assert [(x.address, x.port) for x in cfg.listeners] == [("0.0.0.0", 5353)]
    [zone] = build_zones(cfg, now=time.time(), base_dir=str(lbcdn_config_path().parent))
    assert zone.name == "example.test."
    assert zone.serial == 2026112501  # the file's SOA, not a generated one


# -- the mounted config, run --------------------------------------------------------------


async def test_mounted_config_proxies_to_the_two_apps() -> None:
    """Run the compose config on 127.0.0.1: only the addresses change (compose's DNS names
    app-1 and app-2 become local ports of demo backends with those names)."""
    cfg = lbcdn_config()
    async with demo_backend("app-1") as port1, demo_backend("app-2") as port2:
        local = {"app-1": port1, "app-2": port2}
        targets = []
        for target in cfg["pools"]["app"]["targets"]:
            host, _ = target.rsplit(":", 1)
            targets.append(f"{HOST}:{local[host]}")
        cfg["pools"]["app"]["targets"] = targets
        web = free_port()
        cfg["listeners"][0].update(address=HOST, port=web)
        cfg["admin"].update(address=HOST, port=free_port())
        cfg["logging"] = {"level": "warning", "access_log": {"enabled": False}}
        cfg["shutdown"] = {"drain_timeout_s": 2}
        timeout = aiohttp.ClientTimeout(total=10)
        async with running_daemon(cfg), aiohttp.ClientSession(timeout=timeout) as http:
            async with http.get(f"http://{HOST}:{web}/hello") as r:
                assert r.status == 200
                assert await r.text() == "hello from lbcdn in compose\n"
            # The pool is health checked (the default): a target gets traffic once its first
            # check has passed, and the two first checks are jittered apart.
            admin = f"http://{HOST}:{cfg['admin']['port']}/api/pools/app/targets"
            deadline = time.monotonic() + 10
            states: list[str] = []
            while states != ["healthy", "healthy"] and time.monotonic() < deadline:
                async with http.get(admin) as r:
                    states = [t["state"] for t in (await r.json())["targets"]]
                await asyncio.sleep(0.05)
            assert states == ["healthy", "healthy"]
            seen = []
            for path in ("/api/x", "/api/y", "/", "/other"):
                async with http.get(f"http://{HOST}:{web}{path}") as r:
                    assert r.status == 200
                    body = await r.json()
                    assert body["path"] == path
                    seen.append(body["backend"])
            assert sorted(seen) == ["app-1", "app-1", "app-2", "app-2"]
