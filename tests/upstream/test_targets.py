"""The pools' control plane with a fake probe and a fake resolver: target sets, API changes
kept in the state directory, draining, discovery."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from lbcdn.config.load import parse_config
from lbcdn.health.prober import ProbeResult, ProbeSpec
from lbcdn.health.state import Outcome
from lbcdn.upstream.config import PoolConfig
from lbcdn.upstream.targets import TargetError, TargetsControl

FAILING: set[int] = set()


async def probe(spec: ProbeSpec) -> ProbeResult:
    if spec.port in FAILING:
        return ProbeResult(Outcome.CODE_MISMATCH, 500)
    return ProbeResult(Outcome.PASS, 200)


def pools(**pool: Any) -> dict[str, PoolConfig]:
    body = {"targets": ["127.0.0.1:1001", "127.0.0.1:1002"],
            "health": {"interval_s": 0.02, "timeout_s": 0.01, "jitter": 0},
            "deregistration_delay_s": 5, **pool}
    return parse_config({"listeners": [{"name": "w", "port": 8080}], "pools": {"app": body}}).pools


class Published:
    def __init__(self) -> None:
        self.last: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, pool: str, snapshot: list[dict[str, Any]]) -> None:
        self.last[pool] = snapshot

    def states(self, pool: str = "app") -> dict[int, str]:
        return {row["port"]: row["state"] for row in self.last[pool]}


async def until(cond: Any, timeout_s: float = 3.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.005)


@pytest.fixture(autouse=True)
def _clear() -> None:
    FAILING.clear()


async def test_targets_become_healthy_and_unhealthy() -> None:
    FAILING.add(1002)
    pub = Published()
    control = TargetsControl(pub, probe_fn=probe)
    await control.start(pools())
    try:
        assert pub.states() == {1001: "initial", 1002: "initial"}
        await until(lambda: pub.states() == {1001: "healthy", 1002: "unhealthy"})
        row = control.describe_pool("app")["targets"][1]
        assert row["reason"] == "Target.ResponseCodeMismatch"
    finally:
        await control.stop()


async def test_target_healthy_and_generation_follow_every_state_change() -> None:
    """What DNS reads (lbcdn.dns.runtime.PoolHealth): the balancer's view, and a counter that
    moves with it."""
    FAILING.add(1002)
    control = TargetsControl(Published(), probe_fn=probe)
    await control.start(pools())
    try:
        started = control.generation
        await until(lambda: control.target_healthy("app", "127.0.0.1:1002") is False
                    and control.target_healthy("app", "127.0.0.1:1001") is True)
        assert control.generation > started
        seen = control.generation
        FAILING.clear()
        await until(lambda: control.target_healthy("app", "127.0.0.1:1002") is True)
        assert control.generation > seen
        assert control.target_healthy("app", "127.0.0.1:9") is None
        assert control.target_healthy("nope", "127.0.0.1:1001") is None
        seen = control.generation
        control.pool("app").set_maintenance("127.0.0.1:1001", True)  # no traffic: no DNS
        assert control.target_healthy("app", "127.0.0.1:1001") is False
        assert control.generation > seen
    finally:
        await control.stop()


async def test_api_changes_persist_and_apply_over_the_config(tmp_path: Path) -> None:
    pub = Published()
    control = TargetsControl(pub, state_dir=str(tmp_path), probe_fn=probe)
    await control.start(pools())
    pool = control.pool("app")
    pool.register("127.0.0.1", 1003, 5)
    pool.set_weight("127.0.0.1:1001", 7)
    pool.deregister("127.0.0.1:1002")
    pool.set_maintenance("127.0.0.1:1003", True)
    assert pub.states()[1002] == "draining"
    pool.drained("127.0.0.1:1002")
    assert pub.states()[1002] == "unused"
    assert pub.states()[1003] == "unused"
    with pytest.raises(TargetError) as err:
        pool.set_weight("127.0.0.1:9", 1)
    assert err.value.status == 404
    await control.stop()
    assert (tmp_path / "targets.json").exists()

    pub2 = Published()
    again = TargetsControl(pub2, state_dir=str(tmp_path), probe_fn=probe)
    await again.start(pools())
    try:
        rows = {r["port"]: r for r in pub2.last["app"]}
        assert set(rows) == {1001, 1003}
        assert rows[1001]["weight"] == 7 and rows[1003]["weight"] == 5
        assert rows[1003]["reason"] == "Target.InMaintenance"
    finally:
        await again.stop()


async def test_draining_waits_for_every_data_plane() -> None:
    pub = Published()
    control = TargetsControl(pub, probe_fn=probe, data_planes=lambda: 2)
    await control.start(pools())
    try:
        pool = control.pool("app")
        pool.deregister("127.0.0.1:1001")
        pool.drained("127.0.0.1:1001", 0)
        pool.drained("127.0.0.1:1001", 0)
        assert pub.states()[1001] == "draining"
        pool.drained("127.0.0.1:1001", 1)
        assert pub.states()[1001] == "unused"
    finally:
        await control.stop()


async def test_draining_ends_at_the_deregistration_delay() -> None:
    pub = Published()
    control = TargetsControl(pub, probe_fn=probe)
    await control.start(pools(deregistration_delay_s=0.05))
    try:
        control.pool("app").deregister("127.0.0.1:1001")
        assert pub.states()[1001] == "draining"
        await until(lambda: pub.states()[1001] == "unused")
    finally:
        await control.stop()


async def test_discovery_adds_and_drains_targets() -> None:
    answer = [("10.1.0.1", 0, 1), ("10.1.0.2", 0, 1)]

    async def resolver(name: str, port: int, srv: bool) -> list[tuple[str, int, int]]:
        assert name == "app.internal" and port == 8000 and not srv
        return list(answer)

    pub = Published()
    control = TargetsControl(pub, probe_fn=probe, resolver=resolver)
    cfg = parse_config({"listeners": [{"name": "w", "port": 8080}], "pools": {"app": {
        "discovery": {"dns_name": "app.internal", "port": 8000, "interval_s": 0.05},
        "health": {"interval_s": 0.02, "timeout_s": 0.01, "jitter": 0}}}})
    await control.start(cfg.pools)
    try:
        def hosts() -> dict[str, str]:
            return {r["host"]: r["state"] for r in pub.last.get("app", [])}
        await until(lambda: hosts() == {"10.1.0.1": "healthy", "10.1.0.2": "healthy"})
        answer.pop()
        await until(lambda: hosts().get("10.1.0.2") == "draining")
        control.pool("app").drained("10.1.0.2:8000")
        await until(lambda: hosts() == {"10.1.0.1": "healthy"})  # forgotten once unused
    finally:
        await control.stop()


async def test_reload_keeps_health_and_drains_removed_targets() -> None:
    pub = Published()
    control = TargetsControl(pub, probe_fn=probe)
    await control.start(pools())
    try:
        await until(lambda: set(pub.states().values()) == {"healthy"})
        await control.apply(pools(targets=["127.0.0.1:1001"]))
        assert pub.states() == {1001: "healthy", 1002: "draining"}
        control.drained("app", "127.0.0.1:1002")
        assert pub.states() == {1001: "healthy"}
    finally:
        await control.stop()
