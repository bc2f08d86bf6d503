"""A real Knot DNS as a TSIG-signing secondary of the daemon (RFC 8945), in one process and
with `--workers 2`.

Two knotd instances follow the daemon's zone: one signs its requests with the key the daemon
requires of 127.0.0.1 (`dns.secondaries`), the other with a wrong secret under the same key
name. The first copies the zone (SOA queries, AXFR/IXFR, all signed and checked by Knot) and,
after a change made through the admin API, hears the daemon's signed NOTIFY (Knot's ACL
accepts only that key) and copies the change; the second is refused (BADSIG), never serves
the zone, and the refusal is in the daemon's log."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from pathlib import Path

import aiohttp
import dns.message
import dns.rcode
import pytest

from tests.dns.test_knot_differential import ask, free_port, knot_log, knotd, wait_for
from tests.e2e.harness import HOST, DaemonProcess, admin_port, proxy_config

WORKERS = [pytest.param([], id="one-process"), pytest.param(["--workers", "2"], id="workers-2")]
TOKEN = "s3cret"
SECRET = base64.b64encode(bytes(range(100, 132))).decode()
WRONG = base64.b64encode(bytes(range(200, 232))).decode()


def knot_follows(lbcdn_port: int, secret: str) -> tuple[str, str]:
    """knotd's zone and extra config: a secondary of lbcdn signing with knot-key."""
    zones = """  - domain: example.test
    master: lbcdn
    acl: notify_from_lbcdn
"""
    extra = f"""key:
  - id: knot-key
    algorithm: hmac-sha256
    secret: {secret}
remote:
  - id: lbcdn
    address: {HOST}@{lbcdn_port}
    key: knot-key
acl:
  - id: notify_from_lbcdn
    address: {HOST}
    key: knot-key
    action: notify
"""
    return zones, extra


@pytest.mark.slow
@pytest.mark.parametrize("workers", WORKERS)
async def test_knot_transfers_with_the_right_key_and_is_refused_with_a_wrong_one(
        tmp_path: Path, workers: list[str]) -> None:
    good_port, bad_port = free_port(), free_port()
    cfg = proxy_config(9, admin={"token": TOKEN})
    dns_port = free_port()
    cfg["dns"] = {
        "listeners": [{"address": HOST, "port": dns_port}],
        "tsig_keys": [{"name": "knot-key", "secret": "${H18A_KNOT_SECRET}"}],
        "secondaries": [{"address": HOST, "tsig_key": "knot-key"}],
        "notify": [f"{HOST}:{good_port}"],
        "zones": [{"name": "example.test", "records": [
            {"name": "www", "type": "A", "values": ["192.0.2.1"]},
            # big enough for an AXFR of several messages: Knot checks the chained MACs
            *({"name": f"t{i}", "type": "TXT", "values": [f'"{"x" * 200}"']}
              for i in range(150))]}]}
    (tmp_path / "lbcdn").mkdir()
    daemon = await asyncio.to_thread(DaemonProcess, cfg, tmp_path / "lbcdn", workers,
                                     {"H18A_KNOT_SECRET": SECRET})
    try:
        with knotd(tmp_path / "good", *knot_follows(dns_port, SECRET), port=good_port), \
                knotd(tmp_path / "bad", *knot_follows(dns_port, WRONG), port=bad_port):
            r = await wait_for(good_port, "www.example.test", "A", lambda r: bool(r.answer),
                               tmp_path / "good", timeout_s=15)
            assert [rr.address for rr in r.answer[0]] == ["192.0.2.1"]
            assert re.search(r"AXFR, incoming, .* finished, .* [2-9] messages",
                             knot_log(tmp_path / "good"))

            async with aiohttp.ClientSession(
                    headers={"Authorization": f"Bearer {TOKEN}"}) as s:
                url = f"http://{HOST}:{admin_port(cfg)}/api/dns/zones/example.test/changes"
                change = {"action": "CREATE", "record": {"name": "new", "type": "A",
                                                         "values": ["192.0.2.99"]}}
                async with s.post(url, json={"changes": [change]}) as resp:
                    assert resp.status == 200, await resp.text()
            r = await wait_for(good_port, "new.example.test", "A", lambda r: bool(r.answer),
                               tmp_path / "good", timeout_s=15)
            assert r.answer[0][0].address == "192.0.2.99"
            good_log = knot_log(tmp_path / "good")
            assert "notify, incoming" in good_log, good_log  # the signed NOTIFY was accepted

            deadline = time.monotonic() + 15
            refusal = "transfer from 127.0.0.1 refused: TSIG BADSIG (key knot-key)"
            while refusal not in daemon.stderr():
                assert time.monotonic() < deadline, daemon.stderr()[-3000:]
                await asyncio.sleep(0.1)
            r = await ask(bad_port, "www.example.test", "A")
            assert r.rcode() == dns.rcode.SERVFAIL and not r.answer  # Knot has no zone
            assert "failed to verify TSIG" in knot_log(tmp_path / "bad")
    finally:
        await asyncio.to_thread(daemon.stop)
