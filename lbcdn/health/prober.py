"""Active health checks: one probe (async, on a raw asyncio.Protocol) and the scheduler that
probes many targets on jittered intervals and feeds their state machines.

Job: `probe(spec)` opens a fresh connection (TLS for https, certificates not verified, as ALB
does not), sends one request, and reports an Outcome: the status must be in the matcher, the
optional search string must appear in the first 5120 bytes of the body, and all of it must
happen within the timeout. `HealthChecker` keeps one `TargetHealth` per key, probes each key on
its own `Check` and pushes results to the state machine and to callbacks. Keys are any hashable
(a pool target, a Route 53 health-check id), so pools and DNS share the checker.

Rules:
- A probe costs one connect, one write and a parse with httptools, no task of its own beyond the
  one the scheduler spawns; the connection is closed with an RST (SO_LINGER 0, as HAProxy does)
  so 1,000 probes a second leave no TIME_WAIT sockets behind.
- Scheduling: a target's first check comes at a random point within min(interval, 1 s) of its
  registration, then every interval stretched or shrunk by up to `jitter` (seeded rng
  injectable), counted from the start of the previous check so slow answers do not drift it.
- Targets that the state machine says are not probed (draining, unused, maintenance) keep their
  timer but skip the check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Generic, Literal, TypeVar

import httptools

from lbcdn.health.config import HealthCheckConfig
from lbcdn.health.matcher import SEARCH_WINDOW_BYTES, Matcher, parse_matcher
from lbcdn.health.state import Outcome, TargetHealth, Thresholds, Transition
from lbcdn.tasks import spawn

log = logging.getLogger("lbcdn.health")

USER_AGENT = b"lbcdn-health-checker/1.0"
FIRST_CHECK_SPREAD_S = 1.0
_LINGER_RST = struct.pack("ii", 1, 0)
_MATCH_200 = parse_matcher("200")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class ProbeSpec:
    """What to probe and what passes."""
    protocol: Literal["http", "https", "tcp"]
    address: str
    port: int
    path: str = "/"
    method: str = "GET"
    host_header: str | None = None   # default: address:port, as ALB sends
    timeout_s: float = 5.0
    matcher: Matcher = _MATCH_200
    search_string: bytes | None = None

    @cached_property
    def request(self) -> bytes:
        host = self.host_header or _host_port(self.address, self.port)
        return (f"{self.method} {self.path} HTTP/1.1\r\nHost: {host}\r\n".encode("latin-1")
                + b"User-Agent: " + USER_AGENT + b"\r\nAccept: */*\r\nConnection: close\r\n\r\n")

    @cached_property
    def server_hostname(self) -> str | None:
        """SNI name for https: the Host header's name unless it is an address."""
        if self.protocol != "https":
            return None
        host = self.host_header or self.address
        if host.startswith("["):
            return ""
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return name
        return ""  # no SNI for an address


@dataclass(frozen=True)
class ProbeResult:
    outcome: Outcome
    status: int | None = None
    latency_s: float = 0.0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.PASS


_tls_context: ssl.SSLContext | None = None


def tls_context() -> ssl.SSLContext:
    """Shared client context: health checks do not verify certificates (ALB does not)."""
    global _tls_context
    if _tls_context is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _tls_context = ctx
    return _tls_context


class _ProbeProtocol(asyncio.Protocol):
    """Sends the request and decides as soon as enough of the answer has arrived."""

    __slots__ = ("spec", "done", "transport", "parser", "status", "body", "head_done",
                 "connected")

    def __init__(self, spec: ProbeSpec, done: asyncio.Future[tuple[Outcome, int | None, str]]
                 ) -> None:
        self.spec = spec
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.status: int | None = None
        self.body = bytearray()
        self.head_done = False
        self.connected = False

    def finish(self, outcome: Outcome, detail: str = "") -> None:
        if not self.done.done():
            self.done.set_result((outcome, self.status, detail))
        self.close()

    def close(self) -> None:
        transport = self.transport
        if transport is not None:
            self.transport = None
            transport.abort()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.connected = True
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            except OSError:
                pass  # not fatal: the socket only lingers in TIME_WAIT
        if self.done.done():  # timed out while the handshake completed
            self.close()
            return
        if self.spec.protocol == "tcp":
            self.finish(Outcome.PASS)
            return
        self.parser = httptools.HttpResponseParser(self)
        transport.write(self.spec.request)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None or self.done.done():
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.finish(Outcome.BAD_RESPONSE, f"malformed response: {e}")

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.done.done():
            return
        if self.head_done:
            # a body delimited by the end of the connection, or cut short: judge what came
            self._judge_body()
            return
        why = f": {exc}" if exc else ""
        self.done.set_result((Outcome.CONNECT_FAILED, self.status,
                              f"connection closed before a complete response{why}"))

    # -- httptools callbacks -------------------------------------------------------------

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.status = status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.status = None  # an interim answer: wait for the final one
            return
        self.head_done = True
        spec = self.spec
        if status not in spec.matcher.codes:
            self.finish(Outcome.CODE_MISMATCH,
                        f"Health checks failed with these codes: [{status}]")
        elif spec.search_string is None or spec.method == "HEAD":
            self.finish(Outcome.PASS)

    def on_body(self, data: bytes) -> None:
        if self.done.done():
            return
        self.body += data
        if len(self.body) >= SEARCH_WINDOW_BYTES:
            self._judge_body()

    def on_message_complete(self) -> None:
        if self.head_done and not self.done.done():
            self._judge_body()

    def _judge_body(self) -> None:
        needle = self.spec.search_string
        if needle is None or needle in self.body[:SEARCH_WINDOW_BYTES]:
            self.finish(Outcome.PASS)
        else:
            self.finish(Outcome.STRING_MISMATCH,
                        "search string not found in the first 5120 bytes of the body")


async def probe(spec: ProbeSpec) -> ProbeResult:
    """Check one target once. Never raises (but for cancellation)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    done: asyncio.Future[tuple[Outcome, int | None, str]] = loop.create_future()
    proto = _ProbeProtocol(spec, done)
    tls = tls_context() if spec.protocol == "https" else None
    try:
        async with asyncio.timeout(spec.timeout_s):
            await loop.create_connection(lambda: proto, spec.address, spec.port, ssl=tls,
                                         server_hostname=spec.server_hostname)
            outcome, status, detail = await done
    except TimeoutError:
        what = "complete answer" if proto.connected else "connection"
        outcome, status, detail = (Outcome.TIMEOUT, proto.status,
                                   f"no {what} within {spec.timeout_s:g} s")
    except ssl.SSLError as e:
        outcome, status, detail = Outcome.CONNECT_FAILED, None, f"TLS handshake failed: {e}"
    except OSError as e:
        outcome, status, detail = (Outcome.CONNECT_FAILED, None,
                                   f"connect failed: {e.strerror or e}")
    except asyncio.CancelledError:
        proto.close()
        raise
    except Exception as e:  # a bug of ours must not take the checker down
        log.exception("health probe of %s:%s failed", spec.address, spec.port)
        outcome, status, detail = Outcome.INTERNAL_ERROR, None, f"internal error: {e!r}"
    finally:
        proto.close()
        if not done.done():
            done.cancel()
    return ProbeResult(outcome, status, loop.time() - start, detail)


@dataclass(frozen=True)
class Check:
    """One target's health check: the probe, how often, and the thresholds."""
    spec: ProbeSpec
    interval_s: float = 30.0
    thresholds: Thresholds = field(default_factory=Thresholds)
    jitter: float = 0.1
    enabled: bool = True

    def __post_init__(self) -> None:
        if not self.spec.timeout_s < self.interval_s:
            raise ValueError("the timeout must be less than the interval")

    @classmethod
    def for_target(cls, cfg: HealthCheckConfig, host: str, port: int) -> Check:
        """A pool target's check from its pool's `health:` section."""
        spec = ProbeSpec(
            protocol=cfg.protocol, address=host, port=cfg.port or port, path=cfg.path,
            method=cfg.method, host_header=cfg.host or _host_port(host, port),
            timeout_s=cfg.timeout_s, matcher=parse_matcher(cfg.matcher),
            search_string=None if cfg.search_string is None else cfg.search_string.encode())
        return cls(spec, cfg.interval_s,
                   Thresholds(cfg.healthy_threshold, cfg.unhealthy_threshold),
                   cfg.jitter, cfg.enabled)

    @classmethod
    def route53(cls, *, protocol: Literal["http", "https", "tcp"], address: str, port: int,
                path: str = "/", fqdn: str | None = None, search_string: str | None = None,
                request_interval_s: float = 30.0, failure_threshold: int = 3,
                timeout_s: float = 4.0, jitter: float = 0.1) -> Check:
        """A Route 53 style check: 2xx and 3xx pass, the same threshold both ways."""
        spec = ProbeSpec(
            protocol=protocol, address=address, port=port, path=path,
            host_header=fqdn or None, timeout_s=timeout_s, matcher=parse_matcher("200-399"),
            search_string=None if search_string is None else search_string.encode())
        return cls(spec, request_interval_s,
                   Thresholds(failure_threshold, failure_threshold, initial_healthy=1), jitter)


K = TypeVar("K", bound=Hashable)


class _Entry(Generic[K]):
    __slots__ = ("key", "check", "health", "timer", "task", "next_at")

    def __init__(self, key: K, check: Check, health: TargetHealth) -> None:
        self.key = key
        self.check = check
        self.health = health
        self.timer: asyncio.Handle | None = None
        self.task: asyncio.Task[None] | None = None
        self.next_at = 0.0


class HealthChecker(Generic[K]):
    """Probes registered keys on their own schedules and keeps their TargetHealth.

    `on_result(key, result, transition)` runs after every check (transition None when the
    state did not change); `clock` gives `now` for the state machines (default: loop.time);
    `probe_fn` replaces the network probe (tests, or a DNS-side wrapper)."""

    def __init__(self, *, on_result: Callable[[K, ProbeResult, Transition | None], None]
                 | None = None, rng: random.Random | None = None,
                 clock: Callable[[], float] | None = None,
                 probe_fn: Callable[[ProbeSpec], Awaitable[ProbeResult]] | None = None,
                 deregistration_delay_s: float = 300.0, name: str = "health") -> None:
        self._entries: dict[K, _Entry[K]] = {}
        self._on_result = on_result
        self._rng = rng or random.Random()
        self._clock = clock
        self._probe = probe_fn
        self._delay = deregistration_delay_s
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self.checks_run = 0

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        assert self._loop is not None
        return self._loop.time()

    # -- registry ------------------------------------------------------------------------

    def add_target(self, key: K, check: Check, health: TargetHealth | None = None
                   ) -> TargetHealth:
        """Start checking `key` (replacing its check if already known; its health is kept)."""
        old = self._entries.get(key)
        if old is not None:
            self._cancel(old)
            health = health or old.health
        if health is None:
            now = self._clock() if self._clock is not None else (
                self._loop.time() if self._loop is not None else 0.0)
            health = TargetHealth(check.thresholds, now, checks_enabled=check.enabled,
                                  deregistration_delay_s=self._delay)
        entry = _Entry(key, check, health)
        self._entries[key] = entry
        if self._loop is not None:
            self._schedule_first(entry)
        return health

    def remove_target(self, key: K) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._cancel(entry)

    def state_of(self, key: K) -> TargetHealth:
        return self._entries[key].health

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[K]:
        return list(self._entries)

    def check_soon(self, key: K) -> None:
        """Probe `key` now (e.g. after maintenance ends) instead of at its next turn."""
        entry = self._entries[key]
        if self._loop is not None and entry.task is None:
            if entry.timer is not None:
                entry.timer.cancel()
            entry.next_at = self._loop.time()
            entry.timer = self._loop.call_soon(self._fire, entry)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for entry in self._entries.values():
            self._schedule_first(entry)

    async def stop(self) -> None:
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        for entry in self._entries.values():
            self._cancel(entry)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._loop = None

    # -- scheduling ----------------------------------------------------------------------

    def _cancel(self, entry: _Entry[K]) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if entry.task is not None:
            entry.task.cancel()
            entry.task = None

    def _schedule_first(self, entry: _Entry[K]) -> None:
        assert self._loop is not None
        spread = min(entry.check.interval_s, FIRST_CHECK_SPREAD_S)
        entry.next_at = self._loop.time() + self._rng.random() * spread
        entry.timer = self._loop.call_at(entry.next_at, self._fire, entry)

    def _schedule_next(self, entry: _Entry[K]) -> None:
        loop = self._loop
        if loop is None or self._entries.get(entry.key) is not entry:
            return
        check = entry.check
        j = check.jitter
        step = check.interval_s * (1.0 + self._rng.uniform(-j, j)) if j else check.interval_s
        entry.next_at = max(entry.next_at + step, loop.time())
        entry.timer = loop.call_at(entry.next_at, self._fire, entry)

    def _fire(self, entry: _Entry[K]) -> None:
        entry.timer = None
        if not entry.health.probed:
            self._schedule_next(entry)
            return
        entry.task = spawn(self._run(entry), f"{self._name}-check")

    async def _run(self, entry: _Entry[K]) -> None:
        try:
            if self._probe is not None:
                result = await self._probe(entry.check.spec)
            else:
                result = await probe(entry.check.spec)
        finally:
            entry.task = None
        self.checks_run += 1
        if self._entries.get(entry.key) is not entry:
            return  # removed or replaced while probing
        transition = entry.health.observe(result.outcome, self._now(), result.detail)
        if transition is not None:
            log.info("%s %s: %s -> %s (%s) %s", self._name, entry.key, transition.old,
                     transition.new, transition.reason or "-", result.detail)
        if self._on_result is not None:
            try:
                self._on_result(entry.key, result, transition)
            except Exception:
                log.exception("health result callback failed for %s", entry.key)
        self._schedule_next(entry)
