"""Zero-copy file bodies: os.sendfile from the data file to the client socket.

Why not loop.sendfile: uvloop (the daemon's loop) does not implement it, and aiohttp's
fallback reads the file through Python. Here the socket's descriptor is duplicated (the
transport keeps owning the original; the event loop may watch the duplicate) and os.sendfile
runs on it without blocking; when the socket buffer is full we wait for it to become writable.
Rules: the caller has flushed the response head and writes nothing else meanwhile; a client
that goes away, or reads nothing for `stall_timeout_s`, raises ConnectionError.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

_MAX_CHUNK = 1 << 30


async def _writable(loop: asyncio.AbstractEventLoop, fd: int, timeout_s: float | None) -> None:
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_writer(fd, ready)
    try:
        await asyncio.wait_for(fut, timeout_s)
    except asyncio.TimeoutError:
        raise ConnectionResetError("client stopped reading") from None
    finally:
        loop.remove_writer(fd)


async def drain_transport(transport: Any) -> None:
    """Wait until the transport has handed everything it buffered to the kernel."""
    while transport.get_write_buffer_size() > 0:
        if transport.is_closing():
            raise ConnectionResetError("client went away")
        await asyncio.sleep(0.001)


async def sendfile(transport: Any, file_fd: int, offset: int, count: int,
                   stall_timeout_s: float | None = None) -> int:
    """Send `count` bytes of `file_fd` from `offset` on the transport's socket; returns the
    number sent (less only when the file shrank). A client that takes nothing for
    `stall_timeout_s` (None: no limit) is given up (ConnectionResetError)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        raise ConnectionResetError("no socket")
    await drain_transport(transport)
    loop = asyncio.get_running_loop()
    fd = os.dup(sock.fileno())
    sent = 0
    try:
        while sent < count:
            if transport.is_closing():
                raise ConnectionResetError("client went away")
            try:
                n = os.sendfile(fd, file_fd, offset + sent, min(count - sent, _MAX_CHUNK))
            except BlockingIOError:
                await _writable(loop, fd, stall_timeout_s)
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise
            if n == 0:
                break  # the file is shorter than announced
            sent += n
    finally:
        os.close(fd)
    return sent
