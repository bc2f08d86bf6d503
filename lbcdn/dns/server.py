"""The authoritative DNS server's sockets: UDP and TCP on one address and port.

Job: move bytes between clients and the answer engine (through the prepared-answer fast path),
and hand zone-transfer traffic to transfer.py. All answering decisions live elsewhere.

Rules:
- UDP: one datagram in, at most one out. The engine (or the fast path replaying it) decides;
  None means silence (responses, unreadable headers). Optional response rate limiting
  (rrl.py) applies to answers, not to silence. Any exception while handling one packet is
  counted and logged (sparsely) and never reaches the loop: a bad packet cannot stop the
  server. Datagrams are read and answered in batches (udpbatch.py: recvmmsg/sendmmsg) when
  the loop reports the socket readable, at most UDP_ROUNDS batches before the loop runs
  other work (TCP, timers) again; a datagram over UDP_MAX_QUERY bytes is dropped.
- TCP (RFC 1035 4.2.2, RFC 7766): 2-byte length prefix, any number of queries per connection,
  answered in order. A connection with no complete query for `tcp_idle_timeout_s` is closed, as
  is one that sends a zero-length message. Messages are at most 65535 bytes by framing. When the
  client stops reading, we stop reading from it (flow control), so pipelining cannot grow our
  buffers without bound. At most `tcp_max_connections` at once; more are closed on accept.
- AXFR/IXFR only over TCP, by transfer.py with the `allow_transfer` CIDR list, the
  `secondaries` that must sign and the TSIG keys. NOTIFY (opcode 4) on either transport goes
  to transfer.py too.
- Port 0 is allowed (tests): UDP binds first, TCP then takes the same port number.
- start() binds everything or nothing; stop() closes listeners, then open TCP connections.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from dnslib import RR

from lbcdn.dns import tsig
from lbcdn.dns.config import DnsConfig, key_name
from lbcdn.dns.fastpath import FastPath, Prepared
from lbcdn.dns.rrl import RateLimiter, Verdict, truncated_response
from lbcdn.dns.transfer import (
    Notifier,
    Secondary,
    client_allowed,
    is_transfer_query,
    notify_response,
    parse_networks,
    transfer_response,
)
from lbcdn.dns.udpbatch import DatagramBatch, datagram_batch

log = logging.getLogger("lbcdn.dns.server")

_OPCODE_NOTIFY_BITS = 4 << 3
UDP_BATCH = 64          # datagrams per recvmmsg/sendmmsg
UDP_ROUNDS = 4          # batches per readiness before other work gets the loop
UDP_MAX_QUERY = 4096    # longer datagrams are dropped: no query is that long


class ServerEngine(Protocol):
    """What the server needs from lbcdn.dns.engine.Engine (answering and transfers)."""

    def answer(self, query: bytes, *, tcp: bool, max_udp: int = 512,
               client: str = "") -> bytes | None: ...

    def prepare(self, query: bytes, *, tcp: bool, max_udp: int = 512,
                client: str = "") -> Prepared | None: ...

    def cacheable_key(self, query: bytes) -> bytes | None: ...

    @property
    def version(self) -> int: ...

    def zone_for(self, name: str) -> Any: ...

    def axfr_records(self, zone_name: str) -> list[RR]: ...


@dataclass
class DnsStats:
    """Plain counters for the metrics exporter (the fast path counts lookups and misses)."""
    udp_errors: int = 0
    udp_send_failures: int = 0   # answers the kernel would not send (see udpbatch.py)
    udp_rrl_dropped: int = 0
    udp_rrl_slipped: int = 0
    tcp_connections: int = 0
    tcp_open: int = 0
    tcp_refused_busy: int = 0
    tcp_queries: int = 0
    tcp_idle_closed: int = 0
    tcp_errors: int = 0
    transfers: int = 0
    transfers_refused: int = 0
    notify_received: int = 0


class _Udp:
    """One UDP socket's datagrams, answered in batches whenever the loop finds it readable."""

    def __init__(self, server: DnsServer, io: DatagramBatch) -> None:
        self.server = server
        self.io = io
        self.answer = server.fastpath.answer_udp
        self.rrl = server.rate_limiter

    def readable(self) -> None:
        io = self.io
        for _ in range(UDP_ROUNDS):
            if io.exchange(self.datagram) < io.batch:
                break
        self.server.stats.udp_send_failures = io.send_failures

    def datagram(self, data: bytes, i: int) -> bytes | None:
        try:
            if len(data) > 2 and data[2] & 0x78:  # any opcode but QUERY: not the hot path
                out = self.server.other_opcode(data, self.io.peer(i))
            else:
                out = self.answer(data, self.io, i)
            if out is None or self.rrl is None:
                return out
            verdict = self.rrl.check(self.io.peer(i))
            if verdict is Verdict.ANSWER:
                return out
            if verdict is Verdict.DROP:
                self.server.stats.udp_rrl_dropped += 1
                return None
            self.server.stats.udp_rrl_slipped += 1
            return truncated_response(data)
        except Exception:
            self.server.count_error("udp")
            return None


class _Tcp(asyncio.Protocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.last_activity = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        server = self.server
        if len(server.tcp_conns) >= server.tcp_max_connections:
            server.stats.tcp_refused_busy += 1
            self.transport.abort()
            return
        server.tcp_conns.add(self)
        server.stats.tcp_connections += 1
        server.stats.tcp_open = len(server.tcp_conns)
        peer = self.transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        self.last_activity = server.clock()
        self.timer = asyncio.get_running_loop().call_later(server.tcp_idle_timeout_s,
                                                          self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.server.tcp_conns.discard(self)
        self.server.stats.tcp_open = len(self.server.tcp_conns)

    def _check_idle(self) -> None:
        # One timer per connection, re-armed lazily: activity only stamps a time.
        self.timer = None
        if self.transport is None or self.transport.is_closing():
            return
        idle = self.server.clock() - self.last_activity
        remaining = self.server.tcp_idle_timeout_s - idle
        if remaining <= 0:
            self.server.stats.tcp_idle_closed += 1
            self.transport.close()
            return
        self.timer = asyncio.get_running_loop().call_later(remaining, self._check_idle)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        buf = self.buf
        buf += data
        while len(buf) >= 2:
            n = (buf[0] << 8) | buf[1]
            if n == 0:
                transport.close()
                return
            if len(buf) < n + 2:
                break
            msg = bytes(buf[2:n + 2])
            del buf[:n + 2]
            self.last_activity = self.server.clock()
            try:
                replies = self.server.handle_tcp(msg, self.peer)
            except Exception:
                self.server.count_error("tcp")
                transport.close()
                return
            for reply in replies:
                transport.write(len(reply).to_bytes(2, "big") + reply)
            if transport.is_closing():
                return


class DnsServer:
    """UDP + TCP DNS listener on one address/port in front of an engine."""

    def __init__(self, engine: ServerEngine, *, address: str = "127.0.0.1", port: int = 53,
                 max_udp: int = 1232, tcp_idle_timeout_s: float = 10.0,
                 tcp_max_connections: int = 1024, allow_transfer: Sequence[str] = (),
                 rate_limiter: RateLimiter | None = None, fastpath_entries: int = 100_000,
                 notifier: Notifier | None = None, reuse_port: bool = False,
                 udp_rcvbuf_bytes: int = 4 << 20,
                 udp_io: Callable[..., DatagramBatch] = datagram_batch,
                 clock: Callable[[], float] = time.monotonic,
                 tsig_keys: tsig.Keyring | None = None,
                 secondaries: Sequence[Secondary] = ()) -> None:
        self.engine = engine
        self.address = address
        self.port = port
        self.tcp_idle_timeout_s = tcp_idle_timeout_s
        self.tcp_max_connections = tcp_max_connections
        self.allow_transfer = parse_networks(allow_transfer)
        self.tsig_keys: tsig.Keyring = tsig_keys or {}
        self.secondaries = tuple(secondaries)
        self.rate_limiter = rate_limiter
        self.fastpath = FastPath(engine, max_entries=fastpath_entries, max_udp=max_udp)
        self.notifier = notifier
        self.reuse_port = reuse_port
        self.udp_rcvbuf_bytes = udp_rcvbuf_bytes
        self.max_udp = max_udp
        self.udp_io = udp_io  # how datagrams are read and sent (udpbatch.py)
        self.clock = clock
        self.stats = DnsStats()
        self.tcp_conns: set[_Tcp] = set()
        self._udp_sock: socket.socket | None = None
        self._tcp_server: asyncio.AbstractServer | None = None
        self._udp_port = 0
        self._tcp_port = 0

    @property
    def udp_port(self) -> int:
        return self._udp_port

    @property
    def tcp_port(self) -> int:
        return self._tcp_port

    # ---- lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        family = (socket.AF_INET6 if ipaddress.ip_address(self.address).version == 6
                  else socket.AF_INET)
        attempts = 20 if self.port == 0 else 1
        for attempt in range(attempts):
            udp_sock = self._udp_socket(family)
            try:
                port = int(udp_sock.getsockname()[1])
                tcp_sock = self._tcp_socket(family, port)
            except OSError as e:
                udp_sock.close()
                if e.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                    continue  # port 0: UDP got a port whose TCP twin is taken; pick again
                raise
            break
        try:
            udp = _Udp(self, self.udp_io(udp_sock, batch=UDP_BATCH, max_datagram=UDP_MAX_QUERY,
                                         max_reply=max(512, self.max_udp)))
            loop.add_reader(udp_sock.fileno(), udp.readable)
            self._udp_sock = udp_sock
            self._tcp_server = await loop.create_server(lambda: _Tcp(self), sock=tcp_sock,
                                                        backlog=1024)
            self._udp_port = self._tcp_port = port
            if self.notifier is not None:
                await self.notifier.start()
        except BaseException:
            await self.stop()
            udp_sock.close()
            tcp_sock.close()
            raise
        log.info("DNS listening on %s port %d (UDP and TCP)", self.address, port)

    async def stop(self) -> None:
        if self.notifier is not None:
            await self.notifier.stop()
        if self._udp_sock is not None:
            asyncio.get_running_loop().remove_reader(self._udp_sock.fileno())
            self._udp_sock.close()
            self._udp_sock = None
        if self._tcp_server is not None:
            self._tcp_server.close()
            for conn in list(self.tcp_conns):
                if conn.transport is not None:
                    conn.transport.close()
            await self._tcp_server.wait_closed()
            self._tcp_server = None
        # let the closes run their connection_lost callbacks
        await asyncio.sleep(0)

    def _udp_socket(self, family: socket.AddressFamily) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:  # bursts at line rate outrun one Python thread for a moment; queue them
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.udp_rcvbuf_bytes)
            except OSError:
                pass
            sock.bind((self.address, self.port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _tcp_socket(self, family: socket.AddressFamily, port: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.address, port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    # ---- handling (called by the protocols)

    def other_opcode(self, data: bytes, peer: str = "") -> bytes | None:
        if data[2] & 0x78 == _OPCODE_NOTIFY_BITS:
            self.stats.notify_received += 1
            return notify_response(data, self.engine, keys=self.tsig_keys, client=peer)
        return self.fastpath.answer_udp(data)  # the engine answers NOTIMP (or stays silent)

    def handle_tcp(self, msg: bytes, peer: str) -> list[bytes]:
        self.stats.tcp_queries += 1
        if is_transfer_query(msg):
            replies = transfer_response(msg, peer, self.engine, self.allow_transfer,
                                        keys=self.tsig_keys, secondaries=self.secondaries)
            if len(replies) == 1 and len(replies[0]) >= 4 and replies[0][3] & 0x0F:
                self.stats.transfers_refused += 1
            else:
                self.stats.transfers += 1
            return replies
        if len(msg) > 2 and msg[2] & 0x78 == _OPCODE_NOTIFY_BITS:
            self.stats.notify_received += 1
            out = notify_response(msg, self.engine, keys=self.tsig_keys, client=peer)
        else:
            out = self.fastpath.answer_tcp(msg, peer)
        return [] if out is None else [out]

    def count_error(self, where: str) -> None:
        if where == "udp":
            self.stats.udp_errors += 1
            n = self.stats.udp_errors
        else:
            self.stats.tcp_errors += 1
            n = self.stats.tcp_errors
        if n & (n - 1) == 0:  # 1st, 2nd, 4th, 8th...: visible, but a flood cannot fill the log
            log.exception("DNS %s handling failed (%d so far)", where, n)


def parse_host_port(text: str, default_port: int = 53) -> tuple[str, int]:
    """`host:port`, `host`, `[v6]:port` or a bare IPv6 address -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"no host in {text!r}")
    n = int(port) if port else default_port
    if not 0 < n < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, n


def servers_from_config(cfg: DnsConfig, engine: ServerEngine, *,
                        clock: Callable[[], float] = time.monotonic,
                        tsig_keys: tsig.Keyring | None = None) -> list[DnsServer]:
    """One DnsServer per configured listener, sharing one rate limiter; the first one owns
    the NOTIFY sender (so each change is announced once). `tsig_keys`: tsig.build_keys of
    `cfg.tsig_keys` (secrets may live in files)."""
    keys = tsig_keys or {}
    secondaries: list[Secondary] = [(parse_networks([s.address])[0], key_name(s.tsig_key))
                                    for s in cfg.secondaries]
    targets = [parse_host_port(n) for n in cfg.notify]
    # a NOTIFY target inside a secondary's address is signed with that secondary's key
    signers = {(host, port): keys[name] for host, port in targets
               for net, name in reversed(secondaries)
               if name in keys and client_allowed(host, [net])}
    rl = cfg.rate_limit
    limiter = (RateLimiter(responses_per_s=rl.responses_per_s, burst=rl.burst, slip=rl.slip,
                           ipv4_prefix=rl.ipv4_prefix, ipv6_prefix=rl.ipv6_prefix,
                           max_tracked=rl.max_tracked, clock=clock)
               if rl.enabled else None)
    notifier = (Notifier(engine, [z.name for z in cfg.zones], targets, keys=signers)
                if cfg.notify else None)
    servers: list[DnsServer] = []
    for i, lc in enumerate(cfg.listeners):
        servers.append(DnsServer(
            engine, address=lc.address, port=lc.port, max_udp=cfg.max_udp_payload_bytes,
            tcp_idle_timeout_s=lc.tcp_idle_timeout_s, allow_transfer=cfg.allow_transfer,
            rate_limiter=limiter, notifier=notifier if i == 0 else None, clock=clock,
            tsig_keys=keys, secondaries=secondaries))
    return servers
