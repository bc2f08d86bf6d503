"""The prober against real local servers that can be told to pass, fail, hang, answer 500,
close, talk garbage, go away and come back; and the checker counting thresholds exactly."""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lbcdn.health.config import HealthCheckConfig
from lbcdn.health.matcher import parse_matcher
from lbcdn.health.prober import (Check, ConnectionSlot, HealthChecker, ProbeResult, ProbeSpec,
                                 probe, start_probe)
from lbcdn.health.state import Outcome, Reason, State, Thresholds, Transition


class Backend:
    """A scriptable HTTP backend on 127.0.0.1. `mode` decides each answer."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.mode = "ok"
        self.hits = 0
        self.heads: list[bytes] = []
        self.port = 0
        self.tls = tls
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port,
                                                 ssl=self.tls, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        await self.server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        self.connections += 1
        try:
            while self.mode == "keep":  # answer on one connection until the client leaves
                head = await reader.readuntil(b"\r\n\r\n")
                self.hits += 1
                self.heads.append(head)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nkept")
                await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            self.hits += 1
            self.heads.append(head)
            mode = self.mode
            if mode == "hang":
                await asyncio.sleep(30)
            elif mode == "close":
                pass
            elif mode == "garbage":
                writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            elif mode.startswith("status:"):
                writer.write(f"HTTP/1.1 {mode[7:]} X\r\ncontent-length: 0\r\n\r\n".encode())
            elif mode.startswith("body:"):
                body = mode[5:].encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(body), body))
            elif mode == "big":  # the needle sits after byte 5120
                body = b"x" * 6000 + b"needle" + b"y" * 4000
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            elif mode == "chunked":
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                             b"3\r\nnee\r\n3\r\ndle\r\n0\r\n\r\n")
            elif mode == "eof":
                writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nthe needle, then EOF")
            elif mode == "interim":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            elif mode == "slowbody":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                await writer.drain()
                await asyncio.sleep(30)
            elif mode == "slowhead":
                writer.write(b"HTTP/1.1 200 OK\r\n")
                await writer.drain()
                await asyncio.sleep(30)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nall good")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writers.discard(writer)
            writer.transport.abort()


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    b = Backend()
    await b.start()
    yield b
    await b.stop()


def spec(port: int, **kw: object) -> ProbeSpec:
    args: dict[str, object] = {"protocol": "http", "address": "127.0.0.1", "port": port,
                               "timeout_s": 2.0}
    args.update(kw)
    return ProbeSpec(**args)  # type: ignore[arg-type]


async def free_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


@pytest.mark.parametrize("mode, kw, outcome, status", [
    ("ok", {}, Outcome.PASS, 200),
    ("status:500", {}, Outcome.CODE_MISMATCH, 500),
    ("status:202", {"matcher": parse_matcher("200,202")}, Outcome.PASS, 202),
    ("status:302", {"matcher": parse_matcher("200-299")}, Outcome.CODE_MISMATCH, 302),
    ("close", {}, Outcome.CONNECT_FAILED, None),
    ("garbage", {}, Outcome.BAD_RESPONSE, None),
    ("body:service ok", {"search_string": b"ok"}, Outcome.PASS, 200),
    ("body:service down", {"search_string": b"ok"}, Outcome.STRING_MISMATCH, 200),
    ("big", {"search_string": b"needle"}, Outcome.STRING_MISMATCH, 200),
    ("big", {"search_string": b"xxx"}, Outcome.PASS, 200),
    ("chunked", {"search_string": b"needle"}, Outcome.PASS, 200),
    ("eof", {"search_string": b"needle"}, Outcome.PASS, 200),
    ("interim", {}, Outcome.PASS, 200),
    ("status:500", {"search_string": b"ok"}, Outcome.CODE_MISMATCH, 500),
])
async def test_probe_outcomes(backend: Backend, mode: str, kw: dict[str, object],
                              outcome: Outcome, status: int | None) -> None:
    backend.mode = mode
    result = await probe(spec(backend.port, **kw))
    assert (result.outcome, result.status) == (outcome, status), result.detail
    assert backend.hits == 1


async def test_probe_request_head(backend: Backend) -> None:
    await probe(spec(backend.port, path="/healthz?x=1", method="HEAD"))
    await probe(spec(backend.port, host_header="app.example"))
    head = backend.heads[0].decode()
    assert head.startswith("HEAD /healthz?x=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{backend.port}\r\n" in head
    assert "User-Agent: lbcdn-health-checker/1.0\r\n" in head
    assert "Connection: close\r\n" in head
    assert "Host: app.example\r\n" in backend.heads[1].decode()


async def test_code_mismatch_detail_as_alb(backend: Backend) -> None:
    backend.mode = "status:503"
    r = await probe(spec(backend.port))
    assert r.detail == "Health checks failed with these codes: [503]"


@pytest.mark.parametrize("mode, what", [("hang", "complete answer"),
                                        ("slowhead", "complete answer")])
async def test_probe_timeout(backend: Backend, mode: str, what: str) -> None:
    backend.mode = mode
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r = await probe(spec(backend.port, timeout_s=0.2))
    assert r.outcome is Outcome.TIMEOUT and r.detail == f"no {what} within 0.2 s"
    assert 0.15 <= loop.time() - t0 < 1.0


async def test_probe_refused_and_tcp() -> None:
    port = await free_port()
    assert (await probe(spec(port))).outcome is Outcome.CONNECT_FAILED
    assert (await probe(spec(port, protocol="tcp"))).outcome is Outcome.CONNECT_FAILED
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
    try:
        r = await probe(spec(port, protocol="tcp"))
        assert r.ok and r.status is None and r.latency_s < 1.0
    finally:
        server.close()
        await server.wait_closed()


async def test_probe_https_self_signed(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    b = Backend(tls=ctx)
    await b.start()
    try:
        r = await probe(spec(b.port, protocol="https", host_header="app.example"))
        assert r.outcome is Outcome.PASS, r.detail
        b.mode = "status:500"
        assert (await probe(spec(b.port, protocol="https"))).outcome is Outcome.CODE_MISMATCH
        # plain http against a TLS port is not a passing check
        assert not (await probe(spec(b.port, timeout_s=0.5))).ok
    finally:
        await b.stop()
    assert ProbeSpec("https", "10.0.0.1", 443, host_header="app.example:8443").server_hostname \
        == "app.example"
    assert ProbeSpec("https", "10.0.0.1", 443).server_hostname == ""


async def check(s: ProbeSpec, slot: ConnectionSlot) -> ProbeResult:
    done: asyncio.Future[ProbeResult] = asyncio.get_running_loop().create_future()
    start_probe(s, done.set_result, slot)
    return await done


async def test_keep_alive_reuses_one_connection(backend: Backend) -> None:
    backend.mode = "keep"
    slot = ConnectionSlot()
    s = spec(backend.port, keep_alive=True)
    assert b"Connection: close" not in s.request
    for _ in range(5):
        assert (await check(s, slot)).ok
    assert backend.hits == 5 and backend.connections == 1
    slot.close()


async def test_keep_alive_after_the_backend_closed_the_idle_connection(backend: Backend) -> None:
    slot = ConnectionSlot()
    s = spec(backend.port, keep_alive=True)
    for _ in range(3):  # "ok" answers keep-alive, then the backend aborts the connection
        assert (await check(s, slot)).ok
        await asyncio.sleep(0.05)
        assert slot.sock is None  # the idle watcher saw the close and dropped it
    assert backend.connections == 3


async def test_keep_alive_race_is_retried_on_a_new_connection(backend: Backend) -> None:
    backend.mode = "keep"
    slot = ConnectionSlot()
    s = spec(backend.port, keep_alive=True)
    assert (await check(s, slot)).ok
    assert slot.sock is not None
    for w in list(backend.writers):
        w.transport.abort()  # the backend drops the idle connection ...
    time.sleep(0.05)          # ... and (blocking the loop) the idle watcher cannot notice
    assert (await check(s, slot)).ok  # sent on the dead one, retried on a new one
    assert backend.connections == 2 and backend.hits == 2
    slot.close()


async def test_checker_closes_kept_connections(backend: Backend) -> None:
    backend.mode = "keep"
    checker: HealthChecker[str] = HealthChecker(rng=random.Random(5))
    cfg = HealthCheckConfig(reuse_connection=True, interval_s=0.05, timeout_s=0.04, jitter=0)
    checker.add_target("a", Check.for_target(cfg, "127.0.0.1", backend.port))
    await checker.start()
    await asyncio.sleep(1.3)
    assert backend.hits >= 3 and backend.connections == 1
    await checker.stop()
    await asyncio.sleep(0.05)
    assert not backend.writers  # our side closed it


def test_check_from_config_and_route53() -> None:
    cfg = HealthCheckConfig(port=9000, path="/h", matcher="200-299", search_string="ok",
                            interval_s=10, timeout_s=2, healthy_threshold=3,
                            unhealthy_threshold=4)
    c = Check.for_target(cfg, "10.0.0.5", 8080)
    assert (c.spec.address, c.spec.port, c.spec.path, c.spec.host_header) == (
        "10.0.0.5", 9000, "/h", "10.0.0.5:8080")
    assert c.spec.search_string == b"ok" and 204 in c.spec.matcher
    assert c.thresholds == Thresholds(3, 4) and c.interval_s == 10 and not c.spec.keep_alive
    assert Check.for_target(HealthCheckConfig(reuse_connection=True), "h", 1).spec.keep_alive
    r53 = Check.route53(protocol="http", address="192.0.2.1", port=80, fqdn="www.example",
                        request_interval_s=10, failure_threshold=2)
    assert 301 in r53.spec.matcher and 404 not in r53.spec.matcher
    assert r53.thresholds == Thresholds(2, 2, 1) and r53.spec.host_header == "www.example"
    with pytest.raises(ValueError):
        Check(ProbeSpec("tcp", "h", 1, timeout_s=5), interval_s=5)


# -- the checker ---------------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.items: list[tuple[str, ProbeResult, Transition | None, State]] = []
        self.checker: HealthChecker[str] | None = None
        self.changed = asyncio.Event()

    def __call__(self, key: str, result: ProbeResult, tr: Transition | None) -> None:
        assert self.checker is not None
        self.items.append((key, result, tr, self.checker.state_of(key).state))
        self.changed.set()

    async def wait_for(self, pred: object, timeout: float = 5.0) -> None:
        async def loop() -> None:
            while not pred():  # type: ignore[operator]
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(loop(), timeout)


async def test_checker_counts_thresholds_exactly(backend: Backend) -> None:
    rec = Recorder()
    checker: HealthChecker[str] = HealthChecker(on_result=rec, rng=random.Random(1))
    rec.checker = checker
    check = Check(spec(backend.port, timeout_s=0.14), interval_s=0.15,
                  thresholds=Thresholds(healthy=3, unhealthy=2), jitter=0)
    checker.add_target("a", check)
    assert checker.state_of("a").state is State.INITIAL
    await checker.start()
    try:
        # initial -> healthy on the very first pass
        await rec.wait_for(lambda: len(rec.items) >= 1)
        assert rec.items[0][2] is not None and rec.items[0][3] is State.HEALTHY

        def run(mode: str, outcome: Outcome, n_after: int) -> int:
            """Index of the first result with `outcome` after switching to `mode`."""
            return next(i for i, it in enumerate(rec.items) if i >= n_after
                        and it[1].outcome is outcome)

        for mode, outcome, threshold, after, reason in [
            ("status:500", Outcome.CODE_MISMATCH, 2, State.UNHEALTHY,
             Reason.RESPONSE_CODE_MISMATCH),
            ("ok", Outcome.PASS, 3, State.HEALTHY, None),
        ]:
            n = len(rec.items)
            backend.mode = mode
            await rec.wait_for(lambda: any(it[1].outcome is outcome for it in rec.items[n:])
                               and rec.items[-1][3] is after and len(rec.items) > n + threshold)
            first = run(mode, outcome, n)
            states = [it[3] for it in rec.items[first:first + threshold]]
            transitions = [it[2] for it in rec.items[first:first + threshold]]
            assert states[:-1] == [rec.items[first - 1][3]] * (threshold - 1)
            assert states[-1] is after
            assert transitions[:-1] == [None] * (threshold - 1)
            assert transitions[-1] is not None and transitions[-1].reason == reason

        # the backend goes away: refused connections -> FailedHealthChecks
        n = len(rec.items)
        await backend.stop()
        await rec.wait_for(lambda: rec.items[-1][3] is State.UNHEALTHY and len(rec.items) > n)
        assert checker.state_of("a").reason is Reason.FAILED_HEALTH_CHECKS
        # and comes back on the same port
        await backend.start()
        await rec.wait_for(lambda: rec.items[-1][3] is State.HEALTHY)
        assert checker.state_of("a").classic == "InService"
    finally:
        await checker.stop()


async def test_checker_timeout_reason(backend: Backend) -> None:
    rec = Recorder()
    checker: HealthChecker[str] = HealthChecker(on_result=rec, rng=random.Random(2))
    rec.checker = checker
    backend.mode = "hang"
    checker.add_target("a", Check(spec(backend.port, timeout_s=0.1), interval_s=0.15,
                                  thresholds=Thresholds(unhealthy=2), jitter=0))
    await checker.start()
    try:
        await rec.wait_for(lambda: len(rec.items) >= 2)
        assert [it[1].outcome for it in rec.items[:2]] == [Outcome.TIMEOUT] * 2
        assert [it[3] for it in rec.items[:2]] == [State.INITIAL, State.UNHEALTHY]
        assert checker.state_of("a").reason is Reason.TIMEOUT
    finally:
        await checker.stop()


async def test_jittered_schedule_with_seeded_rng() -> None:
    times: dict[str, list[float]] = {}
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    # the spec's address carries the key; the times are those scheduled (timer lateness on a
    # busy machine is not the checker's doing)
    async def fake_probe(s: ProbeSpec) -> ProbeResult:
        times.setdefault(s.address, []).append(checker.next_check_at(s.address) - t0)
        return ProbeResult(Outcome.PASS)

    checker: HealthChecker[str] = HealthChecker(rng=random.Random(7), probe_fn=fake_probe)
    interval, jitter = 0.2, 0.2
    for i in range(40):
        checker.add_target(f"t{i}", Check(ProbeSpec("tcp", f"t{i}", 1, timeout_s=0.1),
                                          interval_s=interval, jitter=jitter))
    await checker.start()
    await asyncio.sleep(0.75)
    await checker.stop()
    firsts = sorted(ts[0] for ts in times.values())
    assert len(firsts) == 40
    assert firsts[-1] - firsts[0] > interval / 2    # spread over the first interval
    assert len({round(t, 3) for t in firsts}) > 30   # not in lockstep
    gaps = [b - a for ts in times.values() for a, b in zip(ts, ts[1:])]
    assert gaps and all(interval * (1 - jitter) - 1e-9 <= g <= interval * (1 + jitter) + 1e-9
                        for g in gaps), gaps
    assert len({round(g, 3) for g in gaps}) > 10    # the intervals themselves vary


async def test_unprobed_and_removed_targets_are_not_checked(backend: Backend) -> None:
    checker: HealthChecker[str] = HealthChecker(rng=random.Random(3))
    check = Check(spec(backend.port, timeout_s=0.05), interval_s=0.06, jitter=0)
    h = checker.add_target("a", check)
    await checker.start()
    try:
        await asyncio.sleep(0.3)
        assert backend.hits >= 2 and h.state is State.HEALTHY
        h.set_maintenance(True, 1.0)
        await asyncio.sleep(0.1)  # a check already in flight may still land
        hits = backend.hits
        await asyncio.sleep(0.3)
        assert backend.hits == hits
        h.set_maintenance(False, 2.0)
        checker.check_soon("a")
        await asyncio.sleep(0.2)
        assert backend.hits > hits and h.state is State.HEALTHY
        checker.remove_target("a")
        assert "a" not in checker
        await asyncio.sleep(0.1)
        hits = backend.hits
        await asyncio.sleep(0.3)
        assert backend.hits == hits
    finally:
        await checker.stop()


async def test_stop_cancels_probes_in_flight(backend: Backend) -> None:
    backend.mode = "hang"
    checker: HealthChecker[str] = HealthChecker(rng=random.Random(4))
    checker.add_target("a", Check(spec(backend.port, timeout_s=5), interval_s=10))
    await checker.start()
    await asyncio.sleep(1.1)  # the first check comes within min(interval, 1 s)
    assert backend.hits == 1
    await asyncio.wait_for(checker.stop(), 1.0)
    left = [t for t in asyncio.all_tasks() if t.get_name() == "health-check"]
    assert left == []


def test_raw_probe_under_uvloop() -> None:
    """The daemon runs uvloop, whose transports and fd watchers differ from asyncio's."""
    import uvloop

    async def main() -> None:
        b = Backend()
        await b.start()
        try:
            assert (await probe(spec(b.port))).ok
            b.mode = "status:500"
            assert (await probe(spec(b.port))).outcome is Outcome.CODE_MISMATCH
            b.mode = "hang"
            assert (await probe(spec(b.port, timeout_s=0.1))).outcome is Outcome.TIMEOUT
            b.mode = "keep"
            slot = ConnectionSlot()
            for _ in range(3):
                assert (await check(spec(b.port, keep_alive=True), slot)).ok
            assert b.connections == 4
            slot.close()
        finally:
            await b.stop()
        port = await free_port()
        assert (await probe(spec(port, protocol="tcp"))).outcome is Outcome.CONNECT_FAILED

    uvloop.run(asyncio.wait_for(main(), 10))


def test_ipv6_literal_spec() -> None:
    # (no IPv6 socket: tests stay on 127.0.0.1, and some CI containers have no ::1)
    s = ProbeSpec("http", "::1", 80)
    assert s.family == socket.AF_INET6 and s.request.split(b"\r\n")[1] == b"Host: [::1]:80"
    assert ProbeSpec("http", "backend.internal", 80).family is None  # resolved by asyncio


async def test_keep_alive_big_answer_is_not_kept(backend: Backend) -> None:
    backend.mode = "body:" + "x" * 100000
    slot = ConnectionSlot()
    r = await check(spec(backend.port, keep_alive=True, search_string=b"xxx"), slot)
    assert r.ok and slot.sock is None


async def test_keep_alive_verdict_stands_when_the_rest_is_late(backend: Backend) -> None:
    backend.mode = "slowbody"  # head, then the body never completes
    r = await check(spec(backend.port, keep_alive=True, timeout_s=0.2), ConnectionSlot())
    assert r.outcome is Outcome.PASS and r.status == 200
