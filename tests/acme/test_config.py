"""`listeners[].tls.acme`: what the loader refuses, each error naming its YAML path."""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from typing import Any

import pytest

from lbcdn.config.load import load_config, parse_config
from lbcdn.configkit.errors import ConfigError

DIRECTORY = "https://ca.test/dir"


def config(acme: list[dict[str, Any]] | None, *, state_dir: str | None = "/tmp/x",
           zones: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    tls: dict[str, Any] = {} if acme is None else {"acme": acme}
    out: dict[str, Any] = {"listeners": [{"name": "tls", "port": 8443, "tls": tls}],
                           "admin": {"state_dir": state_dir} if state_dir else {}}
    if zones:
        out["dns"] = {"listeners": [{"port": 5300}],
                      "zones": [{"name": z, "records": []} for z in zones]}
    return out


def errors(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    return info.value.lines()


def test_a_valid_acme_listener_needs_no_certificate_files() -> None:
    loaded = parse_config(config([{"directory": DIRECTORY, "names": ["www.example.com"]}]),
                          env={})
    tls = loaded.listeners[0].tls
    assert tls is not None and tls.certificates == () and tls.acme[0].names == (
        "www.example.com",)
    parse_config(config([{"directory": DIRECTORY, "names": ["*.example.com"]}],
                        zones=["example.com"]), env={})


@pytest.mark.parametrize(("data", "expected"), [
    (config(None), "listeners[0].tls.certificates: needs at least one certificate (or an "
                   "`acme` entry, or `on_demand`)"),
    (config([{"directory": DIRECTORY, "names": ["a.example.com"]}], state_dir=None),
     "listeners[0].tls.acme: ACME needs `admin.state_dir` (where keys and certificates are "
     "kept)"),
    (config([{"directory": "ca.test/dir", "names": ["a.example.com"]}]),
     "listeners[0].tls.acme[0].directory: 'ca.test/dir' is not an http(s) URL"),
    (config([{"directory": DIRECTORY, "names": []}]),
     "listeners[0].tls.acme[0].names: needs at least one name"),
    (config([{"directory": DIRECTORY, "names": ["*.example.com"], "challenge": "http-01"}]),
     "listeners[0].tls.acme[0].names[0]: '*.example.com': a wildcard name needs the dns-01 "
     "challenge"),
    (config([{"directory": DIRECTORY, "names": ["*.example.com"]}]),
     "listeners[0].tls.acme[0]: '*.example.com': a wildcard name needs dns-01, and lbcdn's "
     "DNS serves no zone holding it"),
    (config([{"directory": DIRECTORY, "names": ["10.0.0.1"]}]),
     "listeners[0].tls.acme[0].names[0]: '10.0.0.1': a DNS name, at most one leading `*.` "
     "label"),
    (config([{"directory": DIRECTORY, "names": ["a.example.com"], "challenge": "dns-02"}]),
     "listeners[0].tls.acme[0].challenge"),
    (config([{"directory": DIRECTORY, "names": ["a.example.com"], "ca_bundle": "/nope"}]),
     "listeners[0].tls.acme[0].ca_bundle: cannot read '/nope'"),
    (config([{"directory": DIRECTORY, "names": ["a.example.com"], "extra": 1}]),
     "listeners[0].tls.acme[0]"),
])
def test_bad_acme_config(data: dict[str, Any], expected: str) -> None:
    found = errors(data)
    assert any(line.startswith(expected) or expected in line for line in found), found


def test_the_pebble_demo_config_matches_pebbles() -> None:
    """config/acme-pebble.yaml and config/pebble/pebble.json, the three-command demo of
    docs/guides/tls.md: pebble checks the ports lbcdn listens on and lbcdn asks its API."""
    root = Path(__file__).resolve().parents[2]
    os_cwd = Path.cwd()
    try:
        os.chdir(root)   # both files name paths from the repository's root, as `make run`
        loaded = load_config("config/acme-pebble.yaml")
        pebble = json.loads(Path("config/pebble/pebble.json").read_text())["pebble"]
        ctx = ssl.create_default_context(cafile="config/pebble/api-ca.pem")
        ctx.load_cert_chain(pebble["certificate"], pebble["privateKey"])
    finally:
        os.chdir(os_cwd)
    plain, tls = loaded.listeners
    assert plain.tls is None and tls.tls is not None
    assert (pebble["httpPort"], pebble["tlsPort"]) == (plain.port, tls.port)
    assert {a.directory for a in tls.tls.acme} == {f"https://{pebble['listenAddress']}/dir"}
    assert loaded.dns is not None and loaded.dns.listeners[0].port == 5300
    assert loaded.admin.state_dir is not None


def on_demand(**fields: Any) -> dict[str, Any]:
    data = config(None)
    data["listeners"][0]["tls"] = {"on_demand": {"directory": DIRECTORY, **fields}}
    return data


def test_on_demand_config() -> None:
    loaded = parse_config(on_demand(allow=["*.customers.example.com"],
                                    ask="http://127.0.0.1:9/ask"), env={})
    tls = loaded.listeners[0].tls
    assert tls is not None and tls.on_demand is not None
    assert tls.on_demand.max_per_minute == 10 and tls.on_demand.allow == (
        "*.customers.example.com",)
    assert errors(on_demand(allow=[])) == [
        "listeners[0].tls.on_demand.allow: needs at least one name or `*.` pattern"]
    assert errors(on_demand(allow=["*.*.x.com"], ask="ask.example.com")) == [
        "listeners[0].tls.on_demand.ask: 'ask.example.com' is not an http(s) URL",
        "listeners[0].tls.on_demand.allow[0]: '*.*.x.com': a DNS name, or `*.` and a DNS "
        "name"]
    data = on_demand(allow=["a.example.com"])
    data["admin"] = {}
    assert errors(data) == ["listeners[0].tls.on_demand: ACME needs `admin.state_dir` (where "
                            "keys and certificates are kept)"]
