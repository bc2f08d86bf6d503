"""The first bytes of a connection to an HTTPS listener: the ClientHello, read before TLS starts.

Why: a refused handshake must reach the client as its TLS alert, which the loop's TLS transport
drops (see lbcdn.tls, "A refused handshake gets its alert"). The gate reads the ClientHello,
asks `lbcdn.tls.hello_verdict`, and either writes the alert and closes, or hands the
connection to the loop's TLS protocol with the bytes it read put back in front, which hands it
to the listener's ClientConnection once the handshake is done, as the loop's TLS server does.

Why not `loop.start_tls`: it is a coroutine, so every connection cost a task, two more futures
and three more loop callbacks, measured at about a tenth of the server CPU of a resumed
handshake. The gate makes the TLS protocol (uvloop's, or asyncio's on other loops) itself, with
the same arguments as start_tls and as the loop's TLS server (`call_connection_made`), and
learns the outcome from a callback on the handshake's waiter.

Rules:
- The ClientHello must arrive within the listener's `header_timeout_s`; the handshake after it
  has the loop's TLS handshake timeout, as before.
- The listener keeps its gates, so shutdown closes connections still shaking hands.
- A ClientHello offering ALPN `acme-tls/1` for a name with a TLS-ALPN-01 challenge up
  (lbcdn.acme.answers) is answered with that challenge's context (RFC 8737); read only while
  a challenge is up, so other handshakes pay nothing for it.
- On a listener with `tls.on_demand`, a ClientHello for a name no certificate answers waits
  (up to `wait_s`) while the daemon gets one (lbcdn.acme.manager.demand), then goes on.
"""

from __future__ import annotations

import asyncio
import ssl
from asyncio.sslproto import SSLProtocol
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from uvloop import Loop as UvLoop
from uvloop.loop import SSLProtocol as UvSSLProtocol  # type: ignore[attr-defined]

from lbcdn.acme import answers
from lbcdn.acme.plan import name_allowed
from lbcdn.edge.connection import ClientConnection
from lbcdn.tasks import spawn
from lbcdn.tls import NEED_MORE, PASS, alert_record, hello_sni_alpn, hello_verdict

if TYPE_CHECKING:
    from lbcdn.edge.listener import Listener
    from lbcdn.tls import ServerTls


class Gate(asyncio.Protocol):
    """A connection before it is a ClientConnection (its TLS handshake or PROXY header not
    done yet): in `listener.gates` until `_done`, cut by its `timer`."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def abort(self) -> None:
        self._done()
        if self.transport is not None:
            self.transport.abort()

    def _done(self) -> None:
        self.listener.gates.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class TlsGate(Gate):
    def __init__(self, listener: Listener, tls: ServerTls,
                 client: tuple[str, int] | None = None) -> None:
        super().__init__(listener)
        self.tls = tls
        self.client = client   # the address a PROXY header gave (lbcdn.edge.proxy_gate)
        self.hello = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.listener.gates.add(self)
        self.timer = asyncio.get_running_loop().call_later(
            self.listener.limits.header_timeout_s, self.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()

    def data_received(self, data: bytes) -> None:
        self.hello += data
        verdict, version = hello_verdict(self.hello, self.tls.policy)
        if verdict == NEED_MORE:
            return
        transport = self.transport
        assert transport is not None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if verdict != PASS:
            transport.write(alert_record(verdict, version))
            transport.close()
            return
        transport.pause_reading()
        context = self.tls.context
        on_demand = self.tls.config.on_demand
        if answers.ALPN or on_demand is not None:
            name, protocols = hello_sni_alpn(self.hello)
            challenge = answers.ALPN.get(name or "")
            if challenge is not None and answers.ACME_TLS_ALPN_BYTES in protocols:
                context = challenge
            elif on_demand is not None and name and not self.tls.has_name(name) and \
                    self.listener.acme_demand is not None and \
                    name_allowed(name, on_demand.allow):  # others: not worth asking about
                spawn(self._on_demand(transport, name, on_demand.wait_s), "tls-on-demand")
                return
        self._handshake(transport, context)

    async def _on_demand(self, transport: asyncio.Transport, name: str, wait_s: float) -> None:
        """Hold the handshake until a certificate for `name` is served, or refused."""
        assert self.listener.acme_demand is not None
        try:
            await asyncio.wait_for(self.listener.acme_demand(self.listener.name, name), wait_s)
        except asyncio.TimeoutError:
            pass
        if not transport.is_closing():
            self._handshake(transport, self.tls.context)

    def eof_received(self) -> bool | None:
        return None  # gone before its ClientHello was whole: close

    def _handshake(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        loop = self.listener.loop
        conn = ClientConnection(self.listener)
        waiter: asyncio.Future[None] = loop.create_future()
        kind: Any = UvSSLProtocol if isinstance(loop, UvLoop) else SSLProtocol
        # call_connection_made: the TLS protocol calls conn.connection_made with the TLS
        # transport when the handshake is done, before `waiter` says so
        tls = kind(loop, conn, context, waiter, server_side=True, call_connection_made=True)
        # The loop picks its read callbacks (plain or buffered) when reading starts: pausing
        # and resuming makes it read for the TLS protocol, a buffered one.
        transport.pause_reading()
        transport.set_protocol(tls)
        tls.connection_made(transport)   # starts the handshake (and its timeout)
        self._replay(tls)
        self.hello = b""
        waiter.add_done_callback(partial(self._shaken, transport, conn))
        if not transport.is_closing():
            transport.resume_reading()

    def _shaken(self, transport: asyncio.Transport, conn: ClientConnection,
                waiter: asyncio.Future[None]) -> None:
        """The handshake is done, or failed (refused by OpenSSL: no alert then; or the
        connection is gone, or too slow)."""
        self._done()
        if waiter.cancelled() or waiter.exception() is not None or conn.transport is None:
            transport.abort()
            return
        if self.client is not None:
            conn.set_client(self.client[0], self.client[1])
        ssl_object = conn.transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2" and \
                not conn.closed:   # (not handed over already by its first bytes)
            conn.become_h2(b"")

    def _replay(self, protocol: asyncio.BufferedProtocol) -> None:
        data = memoryview(self.hello)
        while data:
            buf = memoryview(protocol.get_buffer(len(data)))
            n = min(len(buf), len(data))
            buf[:n] = data[:n]
            protocol.buffer_updated(n)
            data = data[n:]
