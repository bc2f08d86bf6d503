"""gRPC behind lbcdn: gRPC health checks of real grpcio servers decide the targets' states (in
one process and with `--workers 2`, where checks run in the control process), and grpcio
clients call grpcio servers through the daemon (needs the viewer side's HTTP/2)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.h2_backend import grpc_server
from tests.e2e.harness import HOST, DaemonProcess, admin_port, listener_port, proxy_config, \
    running_daemon, until

TOKEN = "s3cret"


def grpc_pool_config(*ports: int, **health: Any) -> dict[str, Any]:
    cfg = proxy_config(*ports)
    cfg["pools"]["app"].update({
        "protocol": "h2c",
        "health": {"protocol": "grpc", "interval_s": 0.2, "timeout_s": 0.15, "jitter": 0,
                   "healthy_threshold": 2, "unhealthy_threshold": 2, **health}})
    cfg["admin"]["token"] = TOKEN
    return cfg


async def states(cfg: dict[str, Any]) -> dict[int, tuple[str, str | None]]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
        async with s.get(f"http://{HOST}:{admin_port(cfg)}/api/pools/app/targets") as r:
            body = await r.json()
    return {t["port"]: (t["state"], t["reason"]) for t in body["targets"]}


@contextlib.asynccontextmanager
async def daemon(cfg: dict[str, Any], workers: int, tmp_path: Path) -> AsyncIterator[None]:
    if workers == 1:
        async with running_daemon(cfg):
            yield
        return
    proc = await asyncio.to_thread(DaemonProcess, cfg, tmp_path, ["--workers", str(workers)])
    try:
        yield
    finally:
        await asyncio.to_thread(proc.stop)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
async def test_grpc_health_checks_decide_target_states(workers: int, tmp_path: Path) -> None:
    with grpc_server("SERVING") as (up, up_servicer), \
            grpc_server("NOT_SERVING") as (down, down_servicer):
        cfg = grpc_pool_config(up, down)
        async with daemon(cfg, workers, tmp_path):
            async def settled() -> bool:
                s = await states(cfg)
                return s.get(up, ("",))[0] == "healthy" and \
                    s.get(down, ("",))[0] == "unhealthy"
            await until(settled, timeout_s=15, what="SERVING healthy, NOT_SERVING unhealthy")
            assert (await states(cfg))[down][1] == "Target.ResponseCodeMismatch"
            # the servers change their minds, and the checks follow
            from grpc_health.v1 import health_pb2
            status = health_pb2.HealthCheckResponse.ServingStatus
            up_servicer.set("", status.Value("NOT_SERVING"))
            down_servicer.set("", status.Value("SERVING"))

            async def flipped() -> bool:
                s = await states(cfg)
                return s.get(up, ("",))[0] == "unhealthy" and \
                    s.get(down, ("",))[0] == "healthy"
            await until(flipped, timeout_s=15, what="the states follow the servers")


async def test_grpc_health_check_of_a_named_service() -> None:
    with grpc_server("SERVING") as (port, servicer):
        from grpc_health.v1 import health_pb2
        servicer.set("app", health_pb2.HealthCheckResponse.ServingStatus.Value("NOT_SERVING"))
        cfg = grpc_pool_config(port, service="app")
        async with running_daemon(cfg):
            async def unhealthy() -> bool:
                return (await states(cfg)).get(port, ("",))[0] == "unhealthy"
            await until(unhealthy, timeout_s=15, what="service app NOT_SERVING: unhealthy")


@pytest.mark.slow
async def test_grpcio_client_calls_a_grpcio_server_through_lbcdn() -> None:
    """A unary call and a server-streaming call end to end (grpcio client -> lbcdn with
    prior-knowledge HTTP/2 on its listener -> h2c pool -> grpcio server), with their
    statuses; and lbcdn's own failure as UNAVAILABLE."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc_server("SERVING") as (port, servicer):
        cfg = grpc_pool_config(port)
        cfg["listeners"][0]["http_versions"] = ["h2", "http1.1"]
        async with running_daemon(cfg):
            target = f"{HOST}:{listener_port(cfg)}"

            def calls() -> tuple[int, int, list[int], grpc.StatusCode]:
                with grpc.insecure_channel(target) as channel:
                    stub = health_pb2_grpc.HealthStub(channel)
                    ok = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
                    try:
                        stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
                        missing = grpc.StatusCode.OK
                    except grpc.RpcError as e:
                        missing = e.code()
                    watched = []
                    for reply in stub.Watch(health_pb2.HealthCheckRequest(service=""),
                                            timeout=2):
                        watched.append(reply.status)
                        if len(watched) == 2:
                            break
                        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
                    return ok, len(watched), watched, missing

            ok, n, watched, missing = await asyncio.to_thread(calls)
    assert ok == health_pb2.HealthCheckResponse.SERVING
    assert missing == grpc.StatusCode.NOT_FOUND
    assert n == 2 and watched == [health_pb2.HealthCheckResponse.SERVING,
                                  health_pb2.HealthCheckResponse.NOT_SERVING]


@pytest.mark.slow
async def test_grpcio_client_gets_unavailable_when_no_target_answers() -> None:
    """lbcdn's own failure reaches a grpcio client as a gRPC status, not an HTML page."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.e2e.harness import free_port
    cfg = grpc_pool_config(free_port(), enabled=False)
    cfg["listeners"][0]["http_versions"] = ["h2", "http1.1"]
    async with running_daemon(cfg):
        def call() -> tuple[grpc.StatusCode, str]:
            with grpc.insecure_channel(f"{HOST}:{listener_port(cfg)}") as channel:
                try:
                    health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=5)
                except grpc.RpcError as e:
                    return e.code(), e.details()
            return grpc.StatusCode.OK, ""
        code, details = await asyncio.to_thread(call)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert details == "upstream connection failed"
