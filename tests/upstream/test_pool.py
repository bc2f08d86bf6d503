"""The runtime pool without sockets: snapshots in, picks out (limits, exclusions, stickiness,
ejections, draining callbacks)."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from typing import Any

import pytest

from lbcdn.config.load import parse_config
from lbcdn.upstream.config import PoolConfig
from lbcdn.health.outlier import Result
from lbcdn.upstream.connection import UpstreamConnection, UpstreamOwner
from lbcdn.upstream.pool import BUSY, ConnectError, Pool, Target


def pool_config(**pool: Any) -> PoolConfig:
    body = {"targets": ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], **pool}
    cfg = parse_config({"listeners": [{"name": "w", "port": 8080}], "pools": {"app": body}})
    return cfg.pools["app"]


def snap(*rows: tuple[str, str], weight: int = 1) -> list[dict[str, Any]]:
    out = []
    for host_port, state in rows:
        host, port = host_port.split(":")
        out.append({"host": host, "port": int(port), "weight": weight, "state": state,
                    "reason": None})
    return out


def pick(pool: Pool, exclude: list[Target] | None = None) -> Any:
    return pool.choose([], b"/", b"1.2.3.4", exclude or [])


def test_fresh_pool_fails_open_to_initial_targets() -> None:
    pool = Pool(pool_config())
    assert pool.failed_open and len(pool.routable) == 3


def test_snapshot_decides_what_is_routable() -> None:
    pool = Pool(pool_config())
    pool.apply(snap(("10.0.0.1:80", "healthy"), ("10.0.0.2:80", "initial"),
                    ("10.0.0.3:80", "draining")))
    assert [t.key for t in pool.routable] == ["10.0.0.1:80"]
    assert {pick(pool)[0].key for _ in range(5)} == {"10.0.0.1:80"}


def test_fail_open_off_means_none() -> None:
    pool = Pool(pool_config(fail_open=False))
    pool.apply(snap(("10.0.0.1:80", "unhealthy")))
    assert pick(pool) is None


def test_retry_excludes_the_failed_target() -> None:
    pool = Pool(pool_config(health={"enabled": False}), rng=random.Random(1))
    first = pick(pool)[0]
    for _ in range(10):
        assert pick(pool, [first])[0] is not first
    assert pool.has_other([first]) and not pool.has_other(list(pool.routable))


def test_connection_limit_moves_on_then_busy() -> None:
    pool = Pool(pool_config(health={"enabled": False}, max_connections_per_target=1))
    taken = []
    for _ in range(3):
        t, _ = pick(pool)
        pool.started(t)
        taken.append(t)
    assert len(set(taken)) == 3
    assert pick(pool) == BUSY
    pool.finished(taken[0], 200, 0.01)
    assert pick(pool)[0] is taken[0]


def test_sticky_cookie_is_set_and_followed() -> None:
    pool = Pool(pool_config(health={"enabled": False},
                            balance={"sticky": {"cookie_name": "LB", "duration_s": 10}}))
    t, cookie = pick(pool)
    assert cookie.startswith(b"LB=") and b"Max-Age=10" in cookie
    value = cookie.split(b";")[0]
    for _ in range(5):
        again = pool.choose([(b"Cookie", value)], b"/", b"ip")
        assert isinstance(again, tuple) and again[0] is t


def test_round_robin_goes_on_across_snapshots() -> None:
    # every snapshot rebuilds the policy; the rotation must not start over at the first target
    pool = Pool(pool_config(health={"enabled": False}))
    rows = [("10.0.0.1:80", "healthy"), ("10.0.0.2:80", "healthy"), ("10.0.0.3:80", "healthy")]
    seen = []
    for _ in range(6):
        pool.apply(snap(*rows))
        seen.append(pick(pool)[0].key)
    assert seen == ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"] * 2


def test_outlier_ejection_replans() -> None:
    pool = Pool(pool_config(health={"enabled": False},
                            outlier={"enabled": True, "consecutive_5xx": 2,
                                     "max_ejection_percent": 50}))
    bad = pool.targets[0]
    ejected: list[str] = []
    pool.on_ejected = lambda key, e: ejected.append(key)
    for _ in range(2):
        pool.started(bad)
        pool.finished(bad, 502, 0.01)
    assert ejected == [bad.key] and bad not in pool.routable
    assert bad.errors == 2 and bad.requests == 2


def test_connect_failures_count_separately() -> None:
    pool = Pool(pool_config(health={"enabled": False},
                            outlier={"enabled": True, "consecutive_connect_failures": 1,
                                     "max_ejection_percent": 50}))
    t = pool.targets[1]
    pool.started(t)
    pool.finished(t, 0, None, Result.CONNECT_FAILURE)
    assert t not in pool.routable


def test_a_failed_connect_ejects_at_once_with_outlier_detection_off() -> None:
    pool = Pool(pool_config(health={"enabled": False}))
    ejected: list[str] = []
    pool.on_ejected = lambda key, e: ejected.append(key)
    ok, dead = pool.targets[0], pool.targets[1]
    pool.started(ok)
    pool.finished(ok, 200, 0.01)
    pool.started(dead)
    pool.finished(dead, 0, None, Result.CONNECT_FAILURE)
    assert ejected == [dead.key] and dead not in pool.routable and len(pool.routable) == 2
    rows = {row["target"]: row["ejected"] for row in pool.details()["targets"]}
    assert rows == {ok.key: False, dead.key: True, pool.targets[2].key: False}
    # resets and 5xx eject only with outlier detection on
    for result in (Result.RESET, Result.RESET, Result.RESET, Result.RESET, Result.RESET):
        pool.started(ok)
        pool.finished(ok, 0, None, result)
    assert ejected == [dead.key]
    # every target refusing: the balancer still has them all (the failure is the answer)
    for t in pool.targets:
        pool.started(t)
        pool.finished(t, 0, None, Result.CONNECT_FAILURE)
    assert len(pool.routable) == 3


def test_a_passing_health_check_ends_an_ejection() -> None:
    pool = Pool(pool_config())
    rows = [("10.0.0.1:80", "healthy"), ("10.0.0.2:80", "healthy"), ("10.0.0.3:80", "healthy")]
    pool.apply(snap(*rows))
    dead = pool.by_key["10.0.0.2:80"]
    pool.started(dead)
    pool.finished(dead, 0, None, Result.CONNECT_FAILURE)
    assert dead not in pool.routable
    pool.apply(snap(rows[0], ("10.0.0.2:80", "unhealthy"), rows[2]))
    pool.apply(snap(*rows))
    assert dead in pool.routable


def test_failed_connects_eject_only_when_configured() -> None:
    pool = Pool(pool_config(health={"enabled": False},
                            outlier={"connect_failure_ejection_s": 0}))
    t = pool.targets[0]
    pool.started(t)
    pool.finished(t, 0, None, Result.CONNECT_FAILURE)
    assert t in pool.routable


def waiting(pool: Pool, target: Target, for_s: float | None) -> UpstreamConnection:
    """A connection to `target` whose backend has owed a response head for `for_s` seconds
    (None: an idle one)."""
    conn = UpstreamConnection(pool, target)
    if for_s is not None:
        conn.begin(UpstreamOwner(), False)   # the whole request is sent: the backend owes
        conn._deadline.at -= for_s           # ... since `for_s` ago
    return conn


async def test_a_stalled_target_is_ejected_while_the_others_answer() -> None:
    pool = Pool(pool_config(health={"enabled": False}, outlier={"stalled_after_s": 2}))
    ejected: list[tuple[str, str]] = []
    pool.on_ejected = lambda key, e: ejected.append((key, str(e.cause)))
    now = time.monotonic()
    a, b, c = pool.targets
    a.answered_at = c.answered_at = now
    b.answered_at = now - 5
    conns = [waiting(pool, a, 3), waiting(pool, b, 3), waiting(pool, b, None),
             waiting(pool, c, 1)]
    pool.connections = set(conns)
    pool.check_stalls()
    # a waits as long, but answered others meanwhile; c has not waited long enough
    assert ejected == [(b.key, "stalled")] and pool.routable == (a, c)
    for conn in conns:
        conn.abort()
    pool.close()


async def test_stall_checks_run_while_requests_are_in_flight() -> None:
    pool = Pool(pool_config(health={"enabled": False}))
    t = pool.targets[0]
    pool.started(t)
    assert pool._stall_check is not None
    pool.close()
    assert pool._stall_check is None
    off = Pool(pool_config(health={"enabled": False}, outlier={"stalled_after_s": 0}))
    off.started(off.targets[0])
    assert off._stall_check is None


class _Transport:
    """What a connection needs of its transport here: its socket (none) and close/abort."""

    def get_extra_info(self, name: str) -> Any:
        return None

    def close(self) -> None:
        pass

    abort = close


async def test_a_connection_that_dies_before_connect_returns_is_a_refused_connect(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed backend's kernel may complete our handshake from its accept backlog and reset
    the connection before `connect` resumes: handed out, that connection would carry a request
    nobody answers (its connection_lost has already run). It is a refused connect instead."""
    async def create_connection(self: Any, factory: Any, *args: Any, **kwargs: Any) -> Any:
        conn = factory()
        conn.connection_made(_Transport())
        conn.connection_lost(ConnectionResetError())
        return conn.transport, conn

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(type(loop), "create_connection", create_connection)
    pool = Pool(pool_config(health={"enabled": False}))
    target = pool.targets[0]
    with pytest.raises(ConnectError) as failed:
        await pool.connect(target)
    assert failed.value.kind == "connect_refused"
    assert (pool.connections, target.open) == (set(), 0)
    pool.close()


async def test_a_checked_take_skips_idle_connections_the_backend_already_closed() -> None:
    """A backend closes idle connections (killed, or its keep-alive timeout) while the loop
    is busy: the FIN is in our kernel before the loop delivers it. A request that cannot be
    retried (a POST) must not be written on such a connection; one that can may take it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    pool = Pool(pool_config(targets=[f"127.0.0.1:{port}"], health={"enabled": False}))
    target = pool.targets[0]
    conns = [await pool.connect(target) for _ in range(3)]
    accepted = [server.accept()[0] for _ in conns]
    for conn in conns:
        pool.release(conn)
    accepted[2].close()   # the newest idle connection: taken first
    accepted[1].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    accepted[1].close()   # reset
    time.sleep(0.1)       # the FIN and RST arrive; the loop does not run meanwhile
    assert pool.take_idle(target, checked=True) is conns[0]
    assert conns[1].closed and conns[2].closed and target.idle == []
    pool.release(conns[0])
    accepted[0].close()
    time.sleep(0.1)
    assert pool.take_idle(target) is conns[0]   # unchecked (a GET, retried if it dies)
    conns[0].abort()
    server.close()
    pool.close()


def test_draining_target_reports_drained_when_idle() -> None:
    pool = Pool(pool_config())
    drained: list[str] = []
    pool.on_drained = drained.append
    pool.apply(snap(("10.0.0.1:80", "healthy"), ("10.0.0.2:80", "healthy")))
    t = pool.by_key["10.0.0.2:80"]
    pool.started(t)
    pool.apply(snap(("10.0.0.1:80", "healthy"), ("10.0.0.2:80", "draining")))
    assert drained == [] and t not in pool.routable
    pool.finished(t, 200, 0.01)
    assert drained == ["10.0.0.2:80"]


def test_snapshot_adds_and_removes_targets() -> None:
    pool = Pool(pool_config())
    pool.apply(snap(("10.0.0.9:81", "healthy")))
    assert list(pool.by_key) == ["10.0.0.9:81"]
    assert [t.key for t in pool.routable] == ["10.0.0.9:81"]


def test_details_show_rates() -> None:
    pool = Pool(pool_config(health={"enabled": False}))
    t = pool.targets[0]
    for status in (200, 200, 500, 200):
        pool.started(t)
        pool.finished(t, status, 0.02)
    row = pool.details()["targets"][0]
    assert row["requests"] == 4 and row["error_rate"] == 0.25
    assert abs(row["latency_s"] - 0.02) < 1e-9


async def test_only_targets_that_take_traffic_keep_idle_connections() -> None:
    pool = Pool(pool_config())
    pool.apply(snap(("10.0.0.1:80", "healthy"), ("10.0.0.2:80", "unhealthy"),
                    ("10.0.0.3:80", "healthy")))
    a, b, c = (pool.by_key[f"10.0.0.{i}:80"] for i in (1, 2, 3))
    conns = {t.key: UpstreamConnection(pool, t) for t in (a, b, c)}  # never connected
    pool.apply(snap(("10.0.0.1:80", "draining"), ("10.0.0.2:80", "unhealthy")))  # 3 is gone
    for conn in conns.values():
        pool.release(conn)
    assert [k for k, conn in conns.items() if conn.closed] == ["10.0.0.1:80", "10.0.0.3:80"]
    assert pool.take_idle(b) is conns["10.0.0.2:80"] and not conns["10.0.0.2:80"].in_idle
    # a target that comes back is a new target: the old one's connections still close
    pool.apply(snap(("10.0.0.2:80", "healthy"), ("10.0.0.3:80", "healthy")))
    assert pool.by_key["10.0.0.3:80"] is not c
    late = UpstreamConnection(pool, c)
    pool.release(late)
    assert late.closed and pool.by_key["10.0.0.3:80"].idle == []


def test_least_outstanding_counts_requests_through_the_pool() -> None:
    pool = Pool(pool_config(health={"enabled": False},
                            balance={"algorithm": "least_outstanding_requests"}))
    busy = pick(pool)[0]
    pool.started(busy)
    assert all(pick(pool)[0] is not busy for _ in range(4))
    pool.finished(busy, 200, 0.01)
    for t in pool.targets:
        if t is not busy:
            pool.started(t)
    assert pick(pool)[0] is busy
