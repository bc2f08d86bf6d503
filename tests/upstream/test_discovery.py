"""Discovery from DNS: a fake resolver, and one real lookup of localhost."""

from __future__ import annotations

import asyncio

from lbcdn.upstream.discovery import Discovery, DiscoveryConfig, Found, resolve


async def test_localhost_resolves_through_the_system() -> None:
    found = await resolve(DiscoveryConfig(dns_name="localhost", port=8080))
    assert ("127.0.0.1", 8080, 1) in found


async def test_failures_keep_the_last_answer_and_empties_need_confirming() -> None:
    answers: list[object] = [[("10.0.0.1", 0, 1)], OSError("servfail"), [], []]
    seen: list[Found] = []

    async def resolver(name: str, port: int, srv: bool) -> list[tuple[str, int, int]]:
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        assert isinstance(a, list)
        return a

    d = Discovery(DiscoveryConfig(dns_name="x", port=80, weight=3, empty_after=2),
                  seen.append, resolver=resolver)
    await d.refresh()
    assert seen == [frozenset({("10.0.0.1", 80, 3)})]
    await d.refresh()
    assert d.last_error is not None and len(seen) == 1   # a failed lookup changes nothing
    await d.refresh()
    assert len(seen) == 1                                 # one empty answer: not yet
    await d.refresh()
    assert seen[-1] == frozenset()                        # the second one empties the pool


async def test_srv_answers_keep_their_ports_and_weights() -> None:
    async def resolver(name: str, port: int, srv: bool) -> list[tuple[str, int, int]]:
        assert srv
        return [("a.svc", 8001, 5), ("b.svc", 8002, 1)]

    found = await resolve(DiscoveryConfig(dns_name="_http._tcp.svc", srv=True), resolver)
    assert found == {("a.svc", 8001, 5), ("b.svc", 8002, 1)}


async def test_runs_on_its_interval_and_stops() -> None:
    calls = 0

    async def resolver(name: str, port: int, srv: bool) -> list[tuple[str, int, int]]:
        nonlocal calls
        calls += 1
        return [("10.0.0.1", 0, 1)]

    d = Discovery(DiscoveryConfig(dns_name="x", port=80, interval_s=0.05), lambda f: None,
                  resolver=resolver)
    d.start()
    await asyncio.sleep(0.18)
    await d.stop()
    n = calls
    assert 3 <= n <= 5
    await asyncio.sleep(0.1)
    assert calls == n


async def test_srv_and_addresses_from_named_dns_servers() -> None:
    """Real lookups through aiodns, against lbcdn's own DNS server on a free port."""
    from lbcdn.config.load import parse_config
    from lbcdn.dns.runtime import DnsRuntime
    from lbcdn.upstream.discovery import DiscoveryConfig, resolve
    from tests.e2e.harness import free_port
    dns_port = free_port()
    cfg = parse_config({
        "listeners": [{"name": "web", "address": "127.0.0.1", "port": free_port()}],
        "dns": {"listeners": [{"address": "127.0.0.1", "port": dns_port}],
                "zones": [{"name": "example.test", "records": [
                    {"name": "_http._tcp.app", "type": "SRV",
                     "values": ["10 5 8080 a.example.test.", "10 7 8081 b.example.test.",
                                "20 1 9999 c.example.test."]},
                    {"name": "a", "type": "A", "values": ["127.0.0.1"]},
                    {"name": "b", "type": "A", "values": ["127.0.0.2"]},
                    {"name": "app", "type": "A", "values": ["127.0.0.3", "127.0.0.4"]}]}]}})
    assert cfg.dns is not None
    runtime = DnsRuntime(cfg.dns, cfg.listeners, cfg.pools)
    await runtime.start()
    try:
        servers = (f"127.0.0.1:{dns_port}",)
        srv = DiscoveryConfig(dns_name="_http._tcp.app.example.test", srv=True,
                              nameservers=servers)
        # the lowest priority only, addresses from the additional section, SRV weights
        assert await resolve(srv) == {("127.0.0.1", 8080, 5), ("127.0.0.2", 8081, 7)}
        plain = DiscoveryConfig(dns_name="app.example.test", port=9000, nameservers=servers)
        assert await resolve(plain) == {("127.0.0.3", 9000, 1), ("127.0.0.4", 9000, 1)}
        gone = DiscoveryConfig(dns_name="nothing.example.test", port=9000,
                               nameservers=servers)
        assert await resolve(gone) == frozenset()
    finally:
        await runtime.stop()
