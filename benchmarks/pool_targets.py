"""Many health-check targets in one process, for scenario `pools`.

    python benchmarks/pool_targets.py --count 1000 --ports-file FILE

Listens on COUNT ports of 127.0.0.1 (each picked free by the kernel, so there is no race with
other programs), writes them to FILE as one JSON list once every socket listens, and answers
every HTTP/1.1 request with `200 ok` (2 bytes of body) until SIGTERM/SIGINT. A request with
`Connection: close` is answered and the connection closed (ALB-style checks); any other request
keeps the connection open (checks with `reuse_connection: true`).

Rules: 127.0.0.1 only; no request body is expected (checks are GET/HEAD); uvloop when the venv has
it, plain asyncio otherwise. Its CPU is not what the scenario measures: it is pinned away from
the daemon under test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from pathlib import Path
from typing import cast

_KEEP = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
_CLOSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


class _Target(asyncio.Protocol):
    def __init__(self) -> None:
        self._buf = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buf += data
        # A kept connection may carry several checks; answer each complete head in order.
        while (end := self._buf.find(b"\r\n\r\n")) >= 0:
            head, self._buf = self._buf[:end], self._buf[end + 4:]
            if b"connection: close" in head.lower():
                self._transport.write(_CLOSE)
                self._transport.close()
                return
            self._transport.write(_KEEP)


async def serve(count: int, ports_file: Path) -> None:
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(_Target, "127.0.0.1", 0, backlog=1024)
               for _ in range(count)]
    ports = [int(s.sockets[0].getsockname()[1]) for s in servers]
    # Written whole, then renamed: the reader never sees half a list.
    tmp = ports_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(ports))
    os.replace(tmp, ports_file)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--ports-file", type=Path, required=True)
    args = p.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.count, args.ports_file))
    else:
        uvloop.run(serve(args.count, args.ports_file))


if __name__ == "__main__":
    main()
