"""The `s3` benchmark scenario's setup: every server it starts answers every request of its wrk
scripts (presigned GETs and PUTs) with a 2xx, through a short real wrk run."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import scenario_s3  # noqa: E402
from harness import Bench, http_get  # noqa: E402


@pytest.fixture
def bench() -> Iterator[Bench]:
    cpus = sorted(os.sched_getaffinity(0))
    b = Bench(duration_s=1, warmup_s=0, connections=scenario_s3.CLIENTS, rounds=1,
              server_cpu=str(cpus[0]), client_cpu=str(cpus[-1]), lbcdn_cmd=[],
              stand_in=False)
    try:
        yield b
    finally:
        b.close()


@pytest.mark.slow
@pytest.mark.parametrize("start", [scenario_s3.start_lbcdn, scenario_s3.start_moto,
                                   scenario_s3.start_nginx], ids=["lbcdn", "moto", "nginx"])
def test_wrk_scripts_get_2xx(bench: Bench, start: scenario_s3.Starter) -> None:
    server = start(bench)
    scripts = scenario_s3.scripts_for(bench, server.name, server)
    for op in scenario_s3.OPS:
        res, server_us, client_share = scenario_s3.measure(bench, server, scripts[op])
        assert res.requests > 0 and res.errors == 0, res.raw
        assert server_us > 0 and client_share > 0
    if server.name == "lbcdn-s3":
        # the signatures are checked: a request without one is refused
        assert http_get(server.port, f"/{scenario_s3.BUCKET}/{scenario_s3.get_key(0)}") == 403


def test_lua_script_quotes_paths(tmp_path: Path) -> None:
    script = scenario_s3.lua_script(tmp_path / "put.lua", "PUT", ['/b/k?x="1"\\'])
    text = script.read_text()
    assert '"/b/k?x=\\"1\\"\\\\"' in text
    assert 'wrk.format("PUT", paths[i], nil, body)' in text
