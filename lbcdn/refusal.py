"""A connection over its listener's cap (`max_connections`): answered and closed at once.

Shared by the control process's aiohttp listeners (lbcdn.aiolistener) and the edge's
listeners (lbcdn.edge.listener): the refusal is written at once (503 with Retry-After), then the
client's bytes are read and dropped for REFUSAL_LINGER_S, so the answer is not lost to a reset
that unread request bytes would cause. Each lingering refusal holds a descriptor, so at most
min(REFUSING_MAX, cap) linger at once per listener; past that a new one is closed at once
(`answer` None). lbcdn.fdlimit counts those descriptors too.
"""

from __future__ import annotations

import asyncio
from typing import Final, cast

REFUSING_MAX: Final = 64        # refused connections lingering at once (each holds an fd)
REFUSAL_LINGER_S: Final = 1.0   # how long a refused connection's bytes are read and dropped
RETRY_AFTER_S: Final = 1
RETRY_AFTER: Final = b"Retry-After: %d\r\n" % RETRY_AFTER_S


class Refusal(asyncio.Protocol):
    """Writes `answer` and closes after REFUSAL_LINGER_S (or when the client does); with
    `answer` None, closes at once. Kept in `refusing` while it lingers."""

    def __init__(self, refusing: set[Refusal], loop: asyncio.AbstractEventLoop,
                 answer: bytes | None) -> None:
        self._refusing = refusing
        self._loop = loop
        self._answer = answer
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        if self._answer is None:
            transport.abort()
            return
        self._refusing.add(self)
        transport.write(self._answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = self._loop.call_later(REFUSAL_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool | None:
        return None   # the client is done: close

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._refusing.discard(self)
