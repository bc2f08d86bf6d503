"""Backends that speak HTTP/2 (prior knowledge, h2c) on 127.0.0.1, for the tests of pools with
`protocol: h2c`:
- `h2_echo_backend()`: a small server on python-hyper's h2 in this event loop. Each response
  says (as JSON) what the request was (pseudo-headers, fields, body), waits `delay_s` first so
  that concurrent requests overlap, and ends with a trailer `x-echo-trailer: done`. It counts
  its connections and the most streams it had open at once. `/trailers-only` is answered as
  a gRPC error in one HEADERS frame (grpc-status 12), `/bytes/N` with N bytes of `x`;
- `grpc_server(status)`: a real grpcio server (threads) with the standard health servicer
  answering `status` for the service "" (and "app").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings

from tests.e2e.harness import HOST


@dataclass
class EchoStats:
    connections: int = 0
    open_streams: int = 0
    most_streams: int = 0
    requests: int = 0
    max_concurrent_streams: int = 100
    delay_s: float = 0.2
    seen: list[dict[str, Any]] = field(default_factory=list)
    unsent: int = 0   # response bytes waiting for the client's (lbcdn's) windows


class _EchoProtocol(asyncio.Protocol):
    def __init__(self, stats: EchoStats) -> None:
        self.stats = stats
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8"))
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, dict[str, Any]] = {}
        self.sending: dict[int, memoryview] = {}   # response bodies waiting for the windows

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.stats.connections += 1
        self.conn.initiate_connection()
        self.conn.update_settings(
            {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.stats.max_concurrent_streams})
        self._flush()

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.stats.open_streams += 1
                self.stats.most_streams = max(self.stats.most_streams, self.stats.open_streams)
                self.requests[event.stream_id] = {"headers": list(event.headers), "body": ""}
            elif isinstance(event, h2.events.DataReceived):
                self.requests[event.stream_id]["body"] += event.data.decode()
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self._answer(event.stream_id)
            elif isinstance(event, h2.events.WindowUpdated):
                for sid in list(self.sending):
                    self._send(sid)
        self._flush()

    def _answer(self, sid: int) -> None:
        asyncio.get_running_loop().call_later(self.stats.delay_s, self._respond, sid)

    def _respond(self, sid: int) -> None:
        req = self.requests.pop(sid)
        self.stats.requests += 1
        if (":path", "/trailers-only") in req["headers"]:
            self.conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc"),
                                         ("grpc-status", "12"), ("grpc-message", "nope")],
                                   end_stream=True)
            self.stats.open_streams -= 1
            self._flush()
            return
        self.stats.seen.append(req)
        path = dict(req["headers"])[":path"]
        body = (b"x" * int(path[7:]) if path.startswith("/bytes/") else
                json.dumps(req).encode())
        self.conn.send_headers(sid, [(":status", "200"), ("content-type", "application/json"),
                                     ("x-echo", "yes")])
        self.sending[sid] = memoryview(body)   # sliced per frame without copying the rest
        self._send(sid)

    def _send(self, sid: int) -> None:
        """What the flow-control windows allow of the body; the trailer after the last."""
        body = self.sending[sid]
        while body:
            room = min(self.conn.local_flow_control_window(sid),
                       self.conn.max_outbound_frame_size)
            if room <= 0:
                break
            self.conn.send_data(sid, bytes(body[:room]))
            body = body[room:]
        self.sending[sid] = body
        self.stats.unsent = sum(map(len, self.sending.values()))
        if not body:
            del self.sending[sid]
            self.conn.send_headers(sid, [("x-echo-trailer", "done")], end_stream=True)
            self.stats.open_streams -= 1
        self._flush()

    def _flush(self) -> None:
        if self.transport is not None:
            self.transport.write(self.conn.data_to_send())


@contextlib.asynccontextmanager
async def h2_echo_backend(**settings: Any) -> AsyncIterator[tuple[int, EchoStats]]:
    stats = EchoStats(**settings)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _EchoProtocol(stats), HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1], stats
    finally:
        server.close()


@contextlib.contextmanager
def grpc_server(status: str = "SERVING", tls: tuple[bytes, bytes] | None = None
                ) -> Iterator[tuple[int, Any]]:
    """A grpcio server on 127.0.0.1 with the health servicer; yields (port, servicer).
    `tls`: (key PEM, certificate chain PEM) to serve h2 over TLS instead of h2c."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    code = health_pb2.HealthCheckResponse.ServingStatus.Value(status)
    servicer.set("", code)
    servicer.set("app", code)
    if tls is None:
        port = server.add_insecure_port(f"{HOST}:0")
    else:
        port = server.add_secure_port(f"{HOST}:0", grpc.ssl_server_credentials([tls]))
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(None)
