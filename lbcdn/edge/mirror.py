"""Request mirroring (a route's `mirror`, Envoy's request_mirror_policies): a copy of a forwarded
request, head and body, sent to a target of another pool; its answer is read and thrown away.

A copy must never slow or fail the real request, so it is fire-and-forget and bounded:
- its own connection (not the pool's idle ones), with `Connection: close` added, closed by
  lbcdn as soon as the answer begins; the pool's `connect_timeout_s` + `response_timeout_s`
  bound its life;
- at most `max_in_flight` copies per pool and worker: more are dropped, not queued;
- body bytes the copy cannot take (not connected yet, or its write buffer full) past
  MAX_BUFFER_BYTES drop it: the real request's body never waits for it;
- the real request's events reach it as plain calls that only append or write.
Counted in `lbcdn_mirror_requests_total{pool, outcome}`: sent (answered), dropped (cap, buffer,
the real request broke), failed (connect, reset, timeout).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

from lbcdn.metrics import mirror_outcome
from lbcdn.tasks import spawn

if TYPE_CHECKING:
    from lbcdn.routing.config import MirrorConfig
    from lbcdn.upstream.pool import Pool, Target

MAX_BUFFER_BYTES: Final = 1024 * 1024

_in_flight: Final[dict[str, int]] = {}   # pool name -> copies under way in this worker
_RNG: Final = random.Random()


def chosen(config: MirrorConfig, rng: random.Random) -> bool:
    """Whether this request is one of the `percent` copied."""
    return config.percent >= 100.0 or rng.random() * 100.0 < config.percent


class Mirror(asyncio.Protocol):
    def __init__(self, pool: Pool, chunked: bool) -> None:
        self.pool = pool
        self.chunked = chunked
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] | None = []   # written once connected; None: ended
        self.pending_bytes = 0
        self.timer: asyncio.TimerHandle | None = None

    def begin(self, head_for: Callable[[Target], bytes]) -> None:
        target = self.pool.pick()
        if target is None:
            self._end("failed")
            return
        config = self.pool.config
        self.timer = asyncio.get_running_loop().call_later(
            config.connect_timeout_s + config.response_timeout_s, self._timed_out)
        self._write(head_for(target))
        spawn(self._connect(target.host, target.port), "mirror-connect")

    async def _connect(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: self, host, port, ssl=self.pool.ssl)
        except (OSError, asyncio.CancelledError, ValueError):
            self._end("failed")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr = self.transport = cast(asyncio.Transport, transport)
        pending = self.pending
        if pending is None:
            tr.abort()
            return
        tr.writelines(pending)
        self.pending = []
        self.pending_bytes = 0

    def data_received(self, data: bytes) -> None:
        # the answer is not looked at: that it began is enough, and the connection's place
        # under max_in_flight is given back at once (not when the target gets round to closing)
        self._end("sent")

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._end("failed")   # closed before any answer

    # -- the real request's events ----------------------------------------------------------
    def body(self, data: bytes) -> None:
        if self.chunked:
            self._write(b"%x\r\n" % len(data) + data + b"\r\n")
        else:
            self._write(data)

    def done(self) -> None:
        if self.chunked:
            self._write(b"0\r\n\r\n")

    def drop(self) -> None:
        """The real request broke off: the copy would be incomplete."""
        self._end("dropped")

    def _write(self, data: bytes) -> None:
        pending = self.pending
        if pending is None:
            return
        transport = self.transport
        if transport is not None:
            if transport.get_write_buffer_size() + len(data) > MAX_BUFFER_BYTES:
                self._end("dropped")
                return
            transport.write(data)
            return
        self.pending_bytes += len(data)
        if self.pending_bytes > MAX_BUFFER_BYTES:
            self._end("dropped")
            return
        pending.append(data)

    def _timed_out(self) -> None:
        self.timer = None
        self._end("failed")

    def _end(self, outcome: str) -> None:
        if self.pending is None:
            return
        self.pending = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.abort()
        name = self.pool.name
        _in_flight[name] -= 1
        mirror_outcome(name, outcome)


def start(config: MirrorConfig, pool: Pool, head_for: Callable[[Target], bytes],
          chunked: bool) -> Mirror | None:
    """A copy of a request, when this one is chosen and the pool's cap allows (else None);
    `head_for(target)`: its head as sent to that target, ending the connection after it."""
    if not chosen(config, _RNG):
        return None
    name = pool.name
    under_way = _in_flight.get(name, 0)
    if under_way >= config.max_in_flight:
        mirror_outcome(name, "dropped")
        return None
    _in_flight[name] = under_way + 1
    mirror = Mirror(pool, chunked)
    mirror.begin(head_for)
    return mirror
