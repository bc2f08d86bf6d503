"""Cache poisoning end to end: what the viewer sends outside the cache key never reaches the
origin on a cache route, so no answer built from it is served to others (issue 13).

A real daemon (one process, and `--workers 2`, where every worker fills its own cache) in front
of an origin on 127.0.0.1 that reflects the request it received into its body. Attackers send
the unkeyed header on several connections (so that, with workers, every worker's first fill is
theirs), then clean clients on new connections must get answers without the poison, and the
origin must never have seen it. A plain forward route still forwards everything, as ALB does."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cache_origin import Answer, Origin, scripted_origin
from tests.e2e.harness import DaemonProcess, RawClient, RawResponse, listener_port, \
    running_daemon
from tests.e2e.test_cache import cdn_config

MARK = "poisoned-by-attacker"
POISON = [
    ("X-Forwarded-Host", f"{MARK}.example"),
    ("X-Host", f"{MARK}.example"),
    ("X-Original-URL", f"/{MARK}"),
    ("X-Rewrite-URL", f"/{MARK}"),
    ("X-Forwarded-Server", f"{MARK}.example"),
    ("X-Forwarded-Scheme", f"nothttps-{MARK}"),
    ("Forwarded", f"for=1.2.3.4;host={MARK}.example;proto=http"),
    ("X-HTTP-Method-Override", f"DELETE-{MARK}"),
    ("User-Agent", f"{MARK}/1.0"),
    ("Accept-Language", f"{MARK}"),
]
ATTACKS = 8
CLEAN = 8
WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "workers-2"])


def reflect(method: str, headers: list[tuple[str, str]]) -> Answer:
    """The origin's answer: the request it received, cacheable for ten minutes."""
    return Answer(headers=[("Cache-Control", "max-age=600"), ("Content-Type", "text/plain"),
                           ("Vary", "X-Poison")],
                  body=json.dumps([method, headers]).encode())


def config(origin: Origin, **over: Any) -> dict[str, Any]:
    """Everything through the cache with the default policy (nothing but the URL path in the
    key), except /keyed/* (a policy keying on a header, a cookie and a query parameter) and
    /raw/* (a policy that leaves compression to the origin) and /plain/* (a route without
    cache: the plain proxy)."""
    cfg = cdn_config(origin.port, policy={
        "query_strings": {"behavior": "none"},
        "allowed_methods": ["GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"]},
        behaviors=[{"path_pattern": "/keyed/*", "origin": "o", "policy": "keyed"},
                   {"path_pattern": "/raw/*", "origin": "o", "policy": "raw"}], **over)
    cfg["cache"]["policies"]["keyed"] = {
        "query_strings": {"behavior": "allow", "names": ["v"]}, "headers": ["X-Device"],
        "cookies": ["lang"]}
    cfg["cache"]["policies"]["raw"] = {"compress": False}
    cfg["routes"].insert(0, {"name": "plain", "forward": "app",
                             "match": {"path_prefix": "/plain/"}})
    return cfg


@contextlib.asynccontextmanager
async def edge(cfg: dict[str, Any], workers: int, tmp: Path) -> AsyncIterator[int]:
    daemon = await asyncio.to_thread(DaemonProcess, cfg, tmp, ["--workers", str(workers)])
    try:
        yield listener_port(cfg)
    finally:
        await asyncio.to_thread(daemon.stop)


async def get(port: int, target: str, headers: list[tuple[str, str]] | None = None,
              method: str = "GET", body: bytes = b"") -> RawResponse:
    c = await RawClient.open(port)  # a new connection each time: spread over the workers
    try:
        r = await c.request(method, target, headers=headers, body=body)
        assert r.status in (200, 201), r
        return r
    finally:
        await c.close()


def received(origin: Origin, path: str) -> list[dict[str, str]]:
    """The headers of every request the origin got for `path` (lower-case names)."""
    return [{n.lower(): v for n, v in headers} for line, headers in origin.requests
            if line.split(" ")[1].split("?")[0] == path]


async def attack_then_clean(port: int, target: str, headers: list[tuple[str, str]]
                            ) -> list[bytes]:
    for _ in range(ATTACKS):
        await get(port, target, headers)
    return [(await get(port, target)).body for _ in range(CLEAN)]


@pytest.mark.slow
@WORKERS
async def test_nothing_outside_the_key_reaches_the_origin_or_poisons_the_cache(
        tmp_path: Path, workers: int) -> None:
    async with scripted_origin() as origin:
        async with edge(config(origin), workers, tmp_path) as port:
            await unkeyed_headers(origin, port, workers)
            await header_in_vary_outside_the_key(origin, port)
            await cookies(origin, port, workers)
            await query_strings(origin, port)
            await accept_encoding(origin, port)
            await pass_through_and_plain_route(origin, port)


async def unkeyed_headers(origin: Origin, port: int, workers: int) -> None:
    failures = []
    for i, (name, value) in enumerate(POISON):
        path = f"/page{i}"
        origin.set(path, reflect)
        clean = await attack_then_clean(port, path, [(name, value)])
        poisoned = sum(MARK.encode() in b for b in clean)
        seen = received(origin, path)
        assert 1 <= len(seen) <= workers, name  # one fill per worker's cache
        if poisoned or any(name.lower() in h for h in seen):
            failures.append(f"{name}: {poisoned} of {CLEAN} clean clients poisoned")
    assert failures == []


async def header_in_vary_outside_the_key(origin: Origin, port: int) -> None:
    """Vary still selects among stored answers by the client's value, but the origin never
    sees the header: no answer carries it, whoever asks."""
    origin.set("/vary", reflect)
    clean = await attack_then_clean(port, "/vary", [("X-Poison", MARK)])
    assert all(MARK.encode() not in b for b in clean)
    assert all("x-poison" not in h for h in received(origin, "/vary"))


async def cookies(origin: Origin, port: int, workers: int) -> None:
    """Not keyed: not forwarded. Keyed: only the keyed cookie is forwarded, and it splits
    the cache."""
    origin.set("/c", reflect)
    origin.set("/keyed/c", reflect)
    clean = await attack_then_clean(port, "/c", [("Cookie", f"session={MARK}")])
    assert all(MARK.encode() not in b for b in clean)
    assert all("cookie" not in h for h in received(origin, "/c"))
    for _ in range(ATTACKS):
        fr = await get(port, "/keyed/c", [("Cookie", f"session={MARK}; lang=fr")])
        assert b"lang=fr" in fr.body and MARK.encode() not in fr.body
    de = await get(port, "/keyed/c", [("Cookie", "lang=de")])
    assert b"lang=de" in de.body
    assert {h.get("cookie") for h in received(origin, "/keyed/c")} == {"lang=fr", "lang=de"}
    for _ in range(CLEAN):
        again = await get(port, "/keyed/c", [("Cookie", "lang=fr; other=1")])
        assert b"lang=fr" in again.body and MARK.encode() not in again.body
    assert len(received(origin, "/keyed/c")) <= 2 * workers


async def query_strings(origin: Origin, port: int) -> None:
    """Not keyed: not forwarded. Keyed: only the keyed parameters are forwarded."""
    origin.set("/q", reflect)
    origin.set("/keyed/q", reflect)
    for _ in range(ATTACKS):
        await get(port, f"/q?x={MARK}")
    clean = [(await get(port, "/q")).body for _ in range(CLEAN)]
    assert all(MARK.encode() not in b for b in clean)
    for _ in range(ATTACKS):
        await get(port, f"/keyed/q?x={MARK}&v=1")
    await get(port, "/keyed/q?v=2")
    targets = {line.split(" ")[1] for line, _ in origin.requests if "/q" in line}
    assert targets == {"/q", "/keyed/q?v=1", "/keyed/q?v=2"}


async def accept_encoding(origin: Origin, port: int) -> None:
    """Without `compress` the origin gets the one coding the cache keys the variant under: a
    client that also accepts deflate cannot make a deflate body the `gzip` variant."""
    def encoded(method: str, headers: list[tuple[str, str]]) -> Answer:
        accept = dict((n.lower(), v) for n, v in headers).get("accept-encoding", "")
        coding = next((c for c in ("deflate", "gzip") if c in accept), None)
        return Answer(headers=[("Cache-Control", "max-age=600"), ("Vary", "Accept-Encoding")]
                      + ([("Content-Encoding", coding)] if coding else []),
                      body=(coding or "identity").encode())
    origin.set("/raw/t", encoded)
    for _ in range(ATTACKS):
        await get(port, "/raw/t", [("Accept-Encoding", "gzip, deflate")])
    for _ in range(CLEAN):
        r = await get(port, "/raw/t", [("Accept-Encoding", "gzip")])
        assert r.header("Content-Encoding") == "gzip" and r.body == b"gzip"
    assert {h.get("accept-encoding") for h in received(origin, "/raw/t")} == {"gzip"}


async def pass_through_and_plain_route(origin: Origin, port: int) -> None:
    """A request with a body on a cache route is never stored: its origin gets what describes
    the body and the conditionals, still nothing unkeyed. A route without cache forwards
    everything, as ALB does."""
    origin.set("/form", Answer(201, [], b"created"))
    origin.set("/plain/x", reflect)
    sent = [("Content-Type", "application/json"), ("If-Match", '"v1"'),
            ("Cookie", f"session={MARK}"), *POISON]
    r = await get(port, f"/form?x={MARK}", sent, method="POST", body=b'{"a": 1}')
    assert r.status == 201 and "fwd=bypass" in (r.header("Cache-Status") or "")
    (form,) = received(origin, "/form")
    assert form["content-type"] == "application/json" and form["if-match"] == '"v1"'
    assert form["content-length"] == "8"
    assert MARK not in json.dumps(form) and MARK not in origin.requests[-1][0]
    await get(port, f"/plain/x?x={MARK}", sent)
    (plain,) = received(origin, "/plain/x")
    for name, value in sent:
        assert plain[name.lower()] == value, name
    assert origin.requests[-1][0] == f"GET /plain/x?x={MARK} HTTP/1.1"


@pytest.mark.parametrize("mode, expected", [
    ("append", "10.0.0.9, 127.0.0.1"), ("preserve", "10.0.0.9"), ("remove", None)])
async def test_cache_fills_send_x_forwarded_for_per_the_listener_mode(
        mode: str, expected: str | None) -> None:
    async with scripted_origin() as origin:
        origin.set("/x", reflect)
        cfg = config(origin)
        cfg["listeners"][0]["x_forwarded_for"] = mode
        async with running_daemon(cfg):
            await get(listener_port(cfg), "/x", [("X-Forwarded-For", "10.0.0.9")])
        (fill,) = received(origin, "/x")
        assert fill.get("x-forwarded-for") == expected
        assert fill["via"] == "1.1 lbcdn" and fill["x-forwarded-proto"] == "http"
