"""Fan-out of state-changing admin calls to peer replicas: two daemons on 127.0.0.1 and
127.0.0.2 sharing an admin port; a DNS change batch sent to one reaches the other."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import dns.message
import dns.query
import dns.rdatatype

from tests.e2e.harness import free_port, proxy_config, running_daemon

TOKEN = "peer-token"


def replica(address: str, admin: int, peers: dict[str, Any]) -> dict[str, Any]:
    config = proxy_config(free_port(), admin={"address": address, "port": admin,
                                              "token": TOKEN, "peers": peers})
    config["dns"] = {"listeners": [{"address": "127.0.0.1", "port": free_port()}],
                     "zones": [{"name": "example.test", "records": [
                         {"name": "api", "type": "A", "values": ["192.0.2.1"]}]}]}
    return config


def api_address(config: dict[str, Any]) -> list[str]:
    q = dns.message.make_query("api.example.test.", dns.rdatatype.A)
    msg = dns.query.udp(q, "127.0.0.1", port=config["dns"]["listeners"][0]["port"], timeout=3)
    return [r.address for rrset in msg.answer for r in rrset]


async def test_a_change_reaches_every_replica() -> None:
    port = free_port()
    peers = {"addresses": ["127.0.0.1", "127.0.0.2", "127.0.0.3"], "timeout_s": 1}
    a, b = replica("127.0.0.1", port, peers), replica("127.0.0.2", port, peers)
    async with running_daemon(a), running_daemon(b):
        change = {"changes": [{"action": "UPSERT", "record": {
            "name": "api", "type": "A", "values": ["192.0.2.9"]}}]}
        async with aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            async with session.post(
                    f"http://127.0.0.1:{port}/api/dns/zones/example.test/changes",
                    json=change) as resp:
                assert resp.status == 200, await resp.text()
                # 127.0.0.2 took it; nothing answers on 127.0.0.3
                assert resp.headers["X-Lbcdn-Peers"] == "ok=1 failed=1"
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, api_address, a) == ["192.0.2.9"]
            assert await loop.run_in_executor(None, api_address, b) == ["192.0.2.9"]
            # a refused batch is not sent on
            bad = {"changes": [{"action": "DELETE", "record": {
                "name": "api", "type": "A", "values": ["192.0.2.250"]}}]}
            async with session.post(
                    f"http://127.0.0.1:{port}/api/dns/zones/example.test/changes",
                    json=bad) as resp:
                assert resp.status == 400 and "X-Lbcdn-Peers" not in resp.headers
