"""The first bytes of a connection to a listener with `proxy_protocol`: the PROXY header a load
balancer in front sends, read before anything else (before TLS on an HTTPS listener).

The gate reads the header (lbcdn.http.proxyproto), then hands the transport on, with the bytes
after the header, to what the listener would have given it otherwise: a TlsGate on an HTTPS
listener, else a ClientConnection; either way the connection's client address is the header's.
Listeners without `proxy_protocol` never make a gate: their connections pay nothing for it.

Rules:
- From a trusted address: a valid header is required (unless `required: false`, when a
  connection without one is served with its own address); a bad one is refused.
- From elsewhere: a connection starting with a PROXY header is refused (a client must not be able
  to claim another's address); one without is served as a direct client.
- Refused means closed without a word (the bytes are not HTTP, nothing would read an answer),
  and one daemon-log line (rate-limited) saying who and why.
- The header must be whole within the listener's `header_timeout_s`; then the connection closes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import TYPE_CHECKING, Final, cast

from lbcdn.edge.connection import ClientConnection
from lbcdn.edge.tls_gate import Gate, TlsGate
from lbcdn.http.proxyproto import ProxyError, ProxyHeader, may_be_header, parse
from lbcdn.logs import LogLimiter, held_note

if TYPE_CHECKING:
    from lbcdn.edge.config import ProxyProtocolConfig
    from lbcdn.edge.listener import Listener

log = logging.getLogger("lbcdn.edge")

_LOG_LIMIT: Final = LogLimiter()

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def proxy_settings(config: ProxyProtocolConfig | None
                   ) -> tuple[tuple[Network, ...], bool] | None:
    """What a listener's gates need of its `proxy_protocol`: the trusted networks and whether
    they must send a header; None when no header is read."""
    if config is None or not config.accept:
        return None
    return (tuple(ipaddress.ip_network(cidr, strict=False) for cidr in config.trusted),
            config.required)


def is_trusted(ip: str, networks: tuple[Network, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped   # a dual-stack socket's view of an IPv4 peer
    return any(addr in net for net in networks)


class ProxyGate(Gate):
    def __init__(self, listener: Listener, networks: tuple[Network, ...],
                 required: bool) -> None:
        super().__init__(listener)
        self.networks = networks
        self.required = required
        self.peer: tuple[str, int] = ("", 0)
        self.trusted = False
        self.data = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.listener.gates.add(self)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = (peer[0], peer[1])
        self.trusted = is_trusted(self.peer[0], self.networks)
        self.timer = asyncio.get_running_loop().call_later(
            self.listener.limits.header_timeout_s, self._too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()

    def eof_received(self) -> bool | None:
        return None   # gone before its header was whole: close

    def data_received(self, data: bytes) -> None:
        self.data += data
        if not self.trusted:
            if may_be_header(self.data):
                if len(self.data) < 6:
                    return   # too short to tell yet
                self._refuse("untrusted", "PROXY header from an untrusted address")
                return
            self._hand_on(0, None)
            return
        try:
            header = parse(self.data)
        except ProxyError as exc:
            if may_be_header(self.data):
                self._refuse("bad", str(exc))
            elif self.required:
                self._refuse("missing", str(exc))
            else:
                self._hand_on(0, None)
            return
        if header is not None:
            self._hand_on(header.length, header)

    def _hand_on(self, taken: int, header: ProxyHeader | None) -> None:
        transport = self.transport
        assert transport is not None
        self._done()
        rest = self.data[taken:]
        self.data = b""
        client = header.source if header is not None else None
        listener = self.listener
        if listener.tls is not None:
            gate = TlsGate(listener, listener.tls, client)
            transport.set_protocol(gate)
            gate.connection_made(transport)
            if rest:
                gate.data_received(rest)
            return
        conn = ClientConnection(listener)
        listener.connections.add(conn)
        transport.set_protocol(cast(asyncio.BaseProtocol, conn))
        conn.connection_made(transport)
        if client is not None:
            conn.set_client(client[0], client[1])
        if rest:
            conn.data_received(rest)

    def _too_slow(self) -> None:
        self.timer = None
        self._refuse("slow", "no whole PROXY header within header_timeout_s" if self.trusted
                     else "nothing received within header_timeout_s")

    def _refuse(self, kind: str, why: str) -> None:
        """Close, with a daemon-log line per listener and `kind` (a fixed few) at most every
        few seconds."""
        held = _LOG_LIMIT.allow(f"{self.listener.name} proxy {kind}", time.monotonic())
        if held is not None:
            log.warning("listener %s: connection from %s closed: %s%s", self.listener.name,
                        self.peer[0], why, held_note(held))
        self.listener.metrics.proxy_refused()
        self.abort()

