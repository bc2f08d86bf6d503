"""Debian's `pebble` (a real RFC 8555 CA for tests) in a subprocess, and an lbcdn config whose
names it validates for real: its resolver is lbcdn's own DNS listener (`-dnsserver`), and it
checks HTTP-01 on lbcdn's plain listener and TLS-ALPN-01 on its TLS listener (`httpPort`,
`tlsPort`: ports picked at run time)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import trustme

from tests.e2e.harness import HOST, free_port, wait_for_port

ZONE = "example.test"


class Pebble:
    def __init__(self, tmp: Path, *, http_port: int, tls_port: int, dns_port: int,
                 validity_s: int | None = None, eab: dict[str, str] | None = None) -> None:
        if shutil.which("pebble") is None:
            raise RuntimeError("pebble is not installed (apt-get install pebble; Makefile "
                               "TEST_DEBS)")
        ca = trustme.CA()
        self.api_ca = tmp / "pebble-api-ca.pem"   # what lbcdn's `ca_bundle` trusts
        ca.cert_pem.write_to_path(str(self.api_ca))
        cert = ca.issue_cert(HOST, "localhost")
        crt, key = tmp / "pebble-api.crt", tmp / "pebble-api.key"
        cert.private_key_pem.write_to_path(str(key))
        cert.cert_chain_pems[0].write_to_path(str(crt))
        self.port = free_port()
        self.management_port = free_port()
        config: dict[str, Any] = {
            "listenAddress": f"{HOST}:{self.port}",
            "managementListenAddress": f"{HOST}:{self.management_port}",
            "certificate": str(crt), "privateKey": str(key),
            "httpPort": http_port, "tlsPort": tls_port, "ocspResponderURL": "",
            "externalAccountBindingRequired": eab is not None}
        if eab is not None:
            config["externalAccountMACKeys"] = eab
        if validity_s is not None:
            config["certificateValidityPeriod"] = validity_s
        path = tmp / "pebble.json"
        path.write_text(json.dumps({"pebble": config}))
        self.log = open(tmp / "pebble.log", "wb")
        self.proc = subprocess.Popen(
            ["pebble", "-config", str(path), "-dnsserver", f"{HOST}:{dns_port}"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_VA_ALWAYS_VALID": "0",
                 "PEBBLE_AUTHZREUSE": "0"})
        wait_for_port(self.port, proc=self.proc)
        wait_for_port(self.management_port, proc=self.proc)

    @property
    def directory(self) -> str:
        return f"https://{HOST}:{self.port}/dir"

    def root(self, tmp: Path) -> Path:
        """Pebble's issuing root (random per run), from its management endpoint."""
        ctx = ssl.create_default_context(cafile=str(self.api_ca))
        with urllib.request.urlopen(f"https://{HOST}:{self.management_port}/roots/0",
                                    context=ctx, timeout=10) as resp:
            pem = resp.read()
        path = tmp / "pebble-root.pem"
        path.write_bytes(pem)
        return path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def output(self) -> str:
        return (Path(self.log.name)).read_text(errors="replace")


def acme_config(pebble_directory: str, api_ca: Path, state_dir: Path, *, http_port: int,
                tls_port: int, dns_port: int, acme: list[dict[str, Any]]) -> dict[str, Any]:
    """lbcdn serving `example.test` (every name at 127.0.0.1) on its own DNS, a plain and a
    TLS listener, the latter asking for the `acme` certificates (directory and ca_bundle
    filled in where left out)."""
    entries = [{"directory": pebble_directory, "ca_bundle": str(api_ca), **a} for a in acme]
    return {
        "listeners": [
            {"name": "plain", "address": HOST, "port": http_port},
            {"name": "tls", "address": HOST, "port": tls_port, "tls": {"acme": entries}},
        ],
        # plain HTTP is redirected to HTTPS: HTTP-01 must be answered before any route
        "default_route": {"fixed_response": {"status": 200, "body": "hello from lbcdn\n"},
                          "viewer_protocol": "redirect-to-https"},
        "dns": {"listeners": [{"address": HOST, "port": dns_port}],
                "zones": [{"name": ZONE, "records": [
                    {"name": "@", "type": "A", "values": [HOST]},
                    {"name": "*", "type": "A", "values": [HOST]}]}]},
        "admin": {"address": HOST, "port": free_port(), "token": "t0k",
                  "state_dir": str(state_dir)},
        "logging": {"level": "info", "access_log": {"enabled": False}},
        "shutdown": {"drain_timeout_s": 2},
    }
