"""The HTTP/2 adapter (RFC 9113): one asyncio protocol per connection, one ClientStream per
request stream, over the same Exchange as HTTP/1.1 (lbcdn.edge.stream).

The framing, HPACK (RFC 7541), stream states, SETTINGS, PING and flow-control bookkeeping are
python-hyper's `h2` (a sans-IO state machine, chosen by measurement: docs/guides/edge.md,
"HTTP/2"); this module feeds it the bytes, turns its events into exchanges and writes what it
wants sent. Rules:
- A request's pseudo-header fields become the head the HTTP/1.1 parser would have made of the
  same request (`request_head`): `:authority` is Host, cookie fields are joined with "; ", and
  `check_request` validates it; so routing, the cache, policies and the access log see no
  difference. A body without content-length is re-chunked to the backend as HTTP/1.1's would be.
- Malformed requests (RFC 9113 8.2, 8.3: uppercase or connection-specific fields, `te` other
  than `trailers`, pseudo-header faults, an empty :path, a content-length the DATA disagrees
  with) are refused by `h2` as a connection error PROTOCOL_ERROR (RFC 9113 5.4.1 allows a
  stream error to be treated so); what `h2` lets through and our rules refuse (a relative
  :path, a bad content-length, a head past the listener's limits) gets its 4xx on its stream.
  Either way nothing is forwarded. Frame faults get `h2`'s codes (RFC 9113 5, 6), except
  where `h2` says PROTOCOL_ERROR for a fault with a code of its own (`rfc_error_code`).
- Abuse is bounded per connection (`Flood`): stream resets by the client (rapid reset,
  CVE-2023-44487), SETTINGS, PING and empty DATA frames, frames that serve nothing
  (PRIORITY, WINDOW_UPDATE, RST_STREAM, unknown types, anything on a closed stream:
  `FrameTally`) beyond what the requests and the response bytes earn; past the budget the connection gets GOAWAY
  ENHANCE_YOUR_CALM and closes. CONTINUATION floods are bounded by `h2` (64 frames), the
  decoded header list by SETTINGS_MAX_HEADER_LIST_SIZE, open streams by
  SETTINGS_MAX_CONCURRENT_STREAMS (one more is refused, REFUSED_STREAM, budgeted as resets).
- Flow control: a response's bytes go out as the client's windows allow; what waits is kept
  per stream and, past STREAM_BUFFER bytes, its exchange is told the client is not reading.
  Received DATA is acknowledged (WINDOW_UPDATE) as it is handed to the exchange, unless the
  exchange paused reading: then when it resumes, so a slow backend holds back the client.
- Drain (SIGTERM, a listener a reload removes): GOAWAY with the last stream id; streams under
  way finish, then the connection closes. On a listener a reload keeps, connections go on.
- WebSockets (RFC 8441): SETTINGS_ENABLE_CONNECT_PROTOCOL is offered; an extended CONNECT is the
  HTTP/1.1 opening handshake to the backend (`request_head` makes it, with a key of ours), the
  exchange's tunnel once the backend's 101 answers that key (`switch_accepted`): the viewer gets
  200 and the stream's DATA is the tunnel's both ways (`tunnel_data`), acknowledged as the
  backend takes it; END_STREAM is a half-close each way, RST_STREAM ends it.
"""

from __future__ import annotations

import asyncio
from typing import Final, Iterable, TYPE_CHECKING

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hpack import Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKError
from hpack.hpack import encode_integer
from hpack.table import HeaderTable
from hyperframe.exceptions import InvalidDataError
from hyperframe.frame import GoAwayFrame

from lbcdn import writebatch
from lbcdn.edge.exchange import Exchange
from lbcdn.edge.stream import ClientStream
from lbcdn.http.errors import HttpError
from lbcdn.http.head import Head, RequestHead, ResponseHead, check_request
from lbcdn.http.websocket import accepted, new_key
from lbcdn.timers import Deadline

if TYPE_CHECKING:
    from lbcdn.edge.listener import Listener

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_STREAMS: Final = 128            # SETTINGS_MAX_CONCURRENT_STREAMS
WINDOW: Final = 1024 * 1024         # initial stream window we offer (a fast client not stalled)
STREAM_BUFFER: Final = 256 * 1024   # response bytes waiting for a window before the exchange pauses
RESETS_PER_S: Final = 100.0         # client RST_STREAMs allowed per second ...
RESETS_BURST: Final = 100.0         # ... after a burst of this many
FEED_BYTES: Final = 8192            # bytes handed to `h2` in one turn of the loop (_feed)
CONTROL_PER_S: Final = 50.0         # SETTINGS, PING, empty DATA frames per second ...
CONTROL_BURST: Final = 100.0        # ... after a burst of this many
GOAWAY_LINGER_S: Final = 1.0        # reading after a GOAWAY for an error, so the peer gets it
IDLE_PER_S: Final = 100.0           # frames that serve nothing by themselves (FrameTally) per
IDLE_BURST: Final = 1000.0          # second, after a burst of this many, and besides ...
IDLE_PER_REQUEST: Final = 2.0       # ... this many for each request received ...
IDLE_PER_DATA: Final = 4.0          # ... and for each DATA frame sent (its WINDOW_UPDATEs)
# fields no HTTP/2 message may carry (RFC 9113 8.2.2): `h2` refuses them in requests; left out
# of the responses we send (`response_fields`), `te` too (it has no meaning in a response, and
# a value other than `trailers` is malformed)
_CONNECTION_FIELDS: Final = frozenset((b"connection", b"keep-alive", b"proxy-connection",
                                       b"transfer-encoding", b"upgrade", b"te"))
# a switched WebSocket's 200 leaves out the backend's accept too (RFC 8441 5: not used)
_TUNNEL_LEFT_OUT: Final = _CONNECTION_FIELDS | {b"sec-websocket-accept"}
# a WebSocket CONNECT stream's states (H2Stream.ws); 0 for any other stream
WS_SWITCHING: Final = 1   # the backend has not answered yet
WS_TUNNEL: Final = 2      # it switched: DATA both ways is the WebSocket's bytes
WS_REFUSED: Final = 3     # it answered otherwise: that answer is the stream's response


class Flood:
    """A token bucket: `hit(now)` spends one token, False when none is left (abuse)."""
    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def hit(self, now: float, cost: float = 1.0) -> bool:
        if self.tokens < self.burst:   # (tokens credited past the burst are kept)
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True

    def credit(self, tokens: float) -> None:
        """Tokens the peer earned by using the connection for something."""
        self.tokens += tokens


# frame types that ask nothing of us and that `h2` may not even report (a WINDOW_UPDATE or an
# RST_STREAM on a closed stream is dropped silently): PRIORITY, RST_STREAM, WINDOW_UPDATE, and
# types RFC 9113 does not define (ignored, 5.5)
_IDLE_TYPES: Final = bytes(1 if kind in (2, 3, 8) or kind > 9 else 0 for kind in range(256))


class FrameTally:
    """Walks the frame headers (RFC 9113 4.1) of a connection's bytes as they arrive, before
    `h2` parses them: how many frames serve nothing by themselves (`cost`: PRIORITY, RST_STREAM,
    WINDOW_UPDATE, unknown types) and how many DATA and HEADERS frames came (`carried`, for
    `H2Connection._answered`). So floods `h2` handles without a word are bounded as SETTINGS and
    PING floods are: PRIORITY (CVE-2019-9513), WINDOW_UPDATE or RST_STREAM on closed streams,
    DATA or HEADERS on reset streams, each answered by an RST_STREAM (CVE-2019-9514)."""
    __slots__ = ("skip", "head", "carried")

    def __init__(self) -> None:
        self.skip = len(PREFACE)   # bytes still to pass before the next frame header
        self.head = b""            # a frame header cut by the end of the last read
        self.carried = 0           # DATA and HEADERS frames in the last `cost`'s bytes

    def cost(self, data: bytes) -> int:
        if self.head:
            data = self.head + data
            self.head = b""
        end = len(data)
        pos = self.skip
        cost = carried = 0
        while pos + 9 <= end:
            kind = data[pos + 3]
            if kind <= 1:
                carried += 1
            else:
                cost += _IDLE_TYPES[kind]
            pos += 9 + int.from_bytes(data[pos:pos + 3], "big")
        if pos >= end:
            self.skip = pos - end
        else:
            self.skip = 0
            self.head = data[pos:]
        self.carried = carried
        return cost


# Response fields HPACK must keep out of every compression context (RFC 7541 7.1.3): sent as
# "never indexed" literals, so no intermediary re-encodes them into an indexed table
_SENSITIVE: Final = frozenset((b"set-cookie", b"cookie", b"authorization",
                               b"proxy-authorization"))


def _literal_prefixes() -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """For each name of HPACK's static table (RFC 7541 A), the start of a literal field
    without indexing (6.2.2) naming it by its index, and of a never-indexed one (6.2.3)."""
    plain: dict[bytes, bytes] = {}
    never: dict[bytes, bytes] = {}
    for index, (name, _) in enumerate(HeaderTable.STATIC_TABLE, 1):
        if name not in plain:
            code = encode_integer(index, 4)
            plain[name] = bytes(code)
            code[0] |= 0x10
            never[name] = bytes(code)
    return plain, never


_PLAIN_NAME, _NEVER_NAME = _literal_prefixes()
# the :status values the static table holds whole (indexes 8-14): one byte each (6.1)
_STATUS: Final = {value: bytes((0x80 | index,))
                  for index, (name, value) in enumerate(HeaderTable.STATIC_TABLE, 1)
                  if name == b":status"}


def _string(data: bytes) -> bytes:
    """An HPACK string literal (5.2), not Huffman coded."""
    size = len(data)
    return (bytes((size,)) if size < 127 else bytes(encode_integer(size, 7))) + data


class ResponseEncoder(Encoder):
    """HPACK for the field blocks we send, as nginx encodes its responses: every field a
    literal without indexing, its name by the static table's index where it has one, nothing
    Huffman coded. RFC 7541 lets an encoder leave the dynamic table empty; `hpack`'s own
    encoder searched and updated it field by field, and Huffman coded every value, the largest
    part of an HTTP/2 response's cpu (docs/guides/edge.md, "HTTP/2"). A head is some 20% more
    bytes than with indexing. A size the peer's SETTINGS_HEADER_TABLE_SIZE sets is still
    acknowledged at the start of the next block (4.2: a decoder may insist on it), by the
    base class's bookkeeping."""

    def encode(self, headers: Iterable[HeaderTuple | tuple[bytes | str, bytes | str]
                                       | tuple[bytes | str, bytes | str, bool | None]]
               | dict[bytes | str, bytes | str], huffman: bool = True) -> bytes:
        block: list[bytes] = []
        if self.header_table.resized:
            block.append(self._encode_table_size_change())
            self.header_table.resized = False
        if isinstance(headers, dict):
            headers = list(headers.items())
        for field in headers:
            name, value = field[0], field[1]
            if isinstance(name, str):
                name = name.encode()
            if isinstance(value, str):
                value = value.encode()
            if name == b":status":
                whole = _STATUS.get(value)
                if whole is not None:
                    block.append(whole)
                    continue
            if name in _SENSITIVE or isinstance(field, NeverIndexedHeaderTuple):
                block.append(_NEVER_NAME.get(name) or b"\x10" + _string(name))
            else:
                block.append(_PLAIN_NAME.get(name) or b"\x00" + _string(name))
            block.append(_string(value))
        return b"".join(block)


def request_head(fields: list[tuple[bytes, bytes]], end_stream: bool,
                 kinds: dict[bytes, int]) -> RequestHead:
    """The RequestHead of an HTTP/2 request (its decoded field block, `h2` having checked the
    pseudo-header rules), as the HTTP/1.1 parser makes it of the same request; HttpError
    names what is wrong.

    An extended CONNECT for a WebSocket (RFC 8441 4: `:protocol websocket`) is the GET with
    Upgrade that opens one over HTTP/1.1 (RFC 6455 4.1), with a fresh Sec-WebSocket-Key: the
    viewer sends none (RFC 8441 5), and the backend's 101 must answer it. Any other CONNECT
    is refused as HTTP/1.1's is (405 by check_request)."""
    method = path = authority = b""
    protocol: bytes | None = None
    headers: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    host: bytes | None = None
    lengths: set[bytes] = set()
    for name, value in fields:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":protocol":
                protocol = value
        elif name == b"cookie":
            cookies.append(value)   # one field per crumb is allowed (RFC 9113 8.2.3)
        elif name == b"host":
            host = value
        else:
            if name == b"content-length":
                lengths.add(value)
            headers.append((name, value))
    websocket = method == b"CONNECT" and protocol is not None
    if websocket:
        if protocol != b"websocket":
            raise HttpError(501, "unsupported :protocol (only websocket)")
        if lengths:
            raise HttpError(400, "content-length on a WebSocket CONNECT")
        method = b"GET"
        # not used over HTTP/2 (RFC 8441 5): a viewer's own is dropped, ours goes instead
        headers = [f for f in headers if f[0] != b"sec-websocket-key"]
        headers.append((b"sec-websocket-key", new_key()))
    if method != b"CONNECT" and not (path[:1] == b"/" or (path == b"*" and method == b"OPTIONS")):
        raise HttpError(400, "invalid :path (not absolute)")
    if len(lengths) > 1 or (lengths and not next(iter(lengths)).isdigit()):
        raise HttpError(400, "invalid content-length")
    # :authority is the Host (RFC 9113 8.3.1); `h2` checked that a Host beside it agrees
    headers.insert(0, (b"host", authority or host or b""))
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    head = check_request(method, path, b"1.1", headers, True, False, kinds)
    if websocket:
        head.upgrade = b"websocket"   # its stream's DATA is the tunnel's, not a body
    elif not end_stream and head.content_length is None:
        head.chunked = True   # a body of unknown length: re-chunked to the backend
    return head


def response_fields(out: list[tuple[bytes, bytes]], fields: list[tuple[bytes, bytes]],
                    left_out: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    """`out` (the pseudo-header fields) and then `fields` as HTTP/2 sends them: names lower case
    (RFC 9113 8.2.1), no connection-specific field (8.2.2, `left_out`) and no pseudo-header
    among them (8.3). `h2` does not check what we send (its outbound validation costs a
    response more than its framing): this is that check, for every field block we send."""
    for name, value in fields:
        name = name.lower()
        if name not in left_out and name[:1] != b":":
            out.append((name, value))
    return out


def rfc_error_code(exc: h2.exceptions.ProtocolError) -> h2.errors.ErrorCodes | None:
    """The code RFC 9113 gives a connection error that `h2` reports as PROTOCOL_ERROR; None
    when `h2`'s code is the right one."""
    cause = exc.__cause__
    if exc.error_code != h2.errors.ErrorCodes.PROTOCOL_ERROR:
        return None
    if isinstance(cause, HPACKError):
        # 4.3: a field block that cannot be decoded (the peer's HPACK state is lost)
        return h2.errors.ErrorCodes.COMPRESSION_ERROR
    if isinstance(cause, InvalidDataError) and str(cause).startswith("SETTINGS ack"):
        return h2.errors.ErrorCodes.FRAME_SIZE_ERROR   # 6.5: a SETTINGS ACK with a payload
    return None


class H2Stream(ClientStream):
    """One request stream: the exchange's ClientStream."""

    def __init__(self, conn: H2Connection, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.listener = conn.listener
        self.client_ip = conn.client_ip
        self.client_ip_bytes = conn.client_ip_bytes
        self.client_port = conn.client_port
        self.draining = False
        self.protocol = "HTTP/2.0"
        self.exchange: Exchange | None = None
        self.pending: list[bytes] = []   # response bytes waiting for a window
        self.pending_bytes = 0
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.ending = False              # end_response came; END_STREAM once `pending` is out
        self.finished = False            # END_STREAM sent
        self.request_ended = False
        self.unacked = 0                 # request bytes received, not yet acknowledged
        self.paused = 0
        self.client_paused = False
        self.sent = 0
        self.closed = False
        self.queued = False              # in the connection's `queued`
        self.ws = 0                      # WS_*: a WebSocket CONNECT's state
        self.ws_key = b""                # the Sec-WebSocket-Key the backend got for it
        self.idle: Deadline | None = None   # a tunnel's idle timeout, as HTTP/1.1's has

    # -- the response ---------------------------------------------------------------------
    def start_response(self, head: Head, body: bool, keep_alive: bool) -> bool:
        # a 101 comes only for a WebSocket CONNECT (switch_accepted): its success is a 200
        # whose stream stays open both ways (RFC 8441 5)
        switched = head.status == 101
        if self.ws == WS_SWITCHING and not switched:
            self.ws = WS_REFUSED
            if 200 <= head.status < 300:
                # answered by lbcdn (a fixed response, the cache), not by a backend that
                # switched (those are checked by switch_accepted): a 2xx would tell the viewer
                # the WebSocket is open. Its body is dropped (send_body after END_STREAM).
                self.conn.send_headers(self, [(b":status", b"501"),
                                              (b"content-type", b"text/plain")], True)
                return False
        status = b"200" if switched else b"%d" % head.status
        left_out = _TUNNEL_LEFT_OUT if switched else _CONNECTION_FIELDS
        fields = response_fields([(b":status", status)], head.fields(), left_out)
        if head.length is not None:
            fields.append((b"content-length", b"%d" % head.length))
        self.sent += sum(len(n) + len(v) for n, v in fields)
        self.conn.send_headers(self, fields, not body and not switched)
        return False  # a stream carries one request: `end` comes once both sides are done

    def interim(self, head: Head) -> None:
        fields = response_fields([(b":status", b"%d" % head.status)], head.fields(),
                                 _CONNECTION_FIELDS)
        self.conn.send_headers(self, fields, False)

    def send_body(self, data: bytes) -> None:
        if data and not self.finished:
            self.sent += len(data)
            self.pending.append(data)
            self.pending_bytes += len(data)
            self.conn.queue(self)

    def send_body_parts(self, parts: list[bytes]) -> None:
        for data in parts:
            self.send_body(data)

    def send_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.trailers = response_fields([], fields, _CONNECTION_FIELDS)

    def end_response(self) -> None:
        self.ending = True
        self.conn.queue(self)

    def respond(self, head: Head, body: tuple[bytes, ...], keep_alive: bool) -> bool:
        self.start_response(head, bool(body), keep_alive)
        if body:
            self.send_body_parts(list(body))
            self.end_response()
        return False

    def response_bytes(self) -> int:
        return self.sent

    def checkpoint(self) -> tuple[list[bytes], int] | None:
        return None   # frames leave as they are made: nothing to take back

    def take_back(self, mark: tuple[list[bytes], int] | None) -> bool:
        return False

    def end(self, keep_alive: bool) -> None:
        self.exchange = None
        self.conn.stream_done(self)

    def close(self) -> None:
        """The tunnel's backend side closed: END_STREAM after the bytes it sent (a TCP FIN,
        RFC 8441 5), and the tunnel is over (recorded as when the viewer goes)."""
        ex, self.exchange = self.exchange, None
        if self.idle is not None:
            self.idle.cancel()
        self.end_response()
        if ex is not None:
            ex.client_lost()

    def abort(self) -> None:
        self.exchange = None
        self.conn.reset(self, h2.errors.ErrorCodes.INTERNAL_ERROR)

    def is_closed(self) -> bool:
        return self.closed

    def exchange_live(self) -> bool:
        """Its exchange goes on (`start` may have ended it). A method, not `self.exchange is
        not None` at the call: compiled, that read would trust mypy's narrowing of the
        attribute from the assignment just before, and fail on None."""
        return self.exchange is not None

    # -- the request ----------------------------------------------------------------------
    def pause(self, reason: int) -> None:
        self.paused |= reason

    def resume(self, reason: int) -> None:
        self.paused &= ~reason
        if not self.paused and self.unacked:
            self.conn.acknowledge(self)

    def body_buffered(self, size: int) -> None:
        pass   # bounded by the stream's window: nothing more is sent until we acknowledge

    def body_unbuffered(self, size: int) -> None:
        pass

    def request_stopped(self, ex: object) -> bool:
        return True

    def switch_accepted(self, resp: ResponseHead) -> bool:
        # the viewer checks no accept over HTTP/2: we made the key, we check the answer. A
        # backend that ignored the Upgrade (a 200 of a plain GET) must not pass for one that
        # switched: over HTTP/2 any 2xx says it did (RFC 8441 5)
        if resp.status == 101:
            return self.ws == WS_SWITCHING and accepted(self.ws_key, resp.fields())
        return not 200 <= resp.status < 300

    def become_tunnel(self, ex: object) -> None:
        self.ws = WS_TUNNEL
        self.idle = Deadline(self.conn.loop, self._idle_timeout)
        self.tunnel_active()
        if self.request_ended:
            # the viewer half-closed before the switch: passed on once the exchange has
            # written what it held for the backend (it does so after this call)
            self.conn.loop.call_soon(self._viewer_eof)
        elif not self.paused:
            self.conn.acknowledge(self)   # what arrived meanwhile: the window opens now

    def tunnel_active(self) -> None:
        if self.idle is not None:
            self.idle.set(self.conn.limits.idle_timeout_s)

    def _idle_timeout(self) -> None:
        """No byte either way for the listener's idle timeout: the tunnel is cut, its stream
        cancelled, as an HTTP/1.1 tunnel's connection is closed."""
        ex, self.exchange = self.exchange, None
        if ex is not None and not self.closed:
            self.conn.reset(self, h2.errors.ErrorCodes.CANCEL)
            ex.client_lost()

    def tunnel_data(self, data: bytes, size: int) -> None:
        """DATA on a WebSocket CONNECT stream: the tunnel's bytes, held by the exchange until
        the backend switches (unacknowledged meanwhile: the stream's window bounds them),
        dropped after a refusal. Acknowledged as the backend takes them."""
        self.unacked += size
        ex = self.exchange
        if ex is None or self.ws == WS_REFUSED:
            self.conn.acknowledge(self)
            return
        ex.client_tunnel_data(data)
        if self.ws == WS_TUNNEL:
            self.tunnel_active()
            if not self.paused:
                self.conn.acknowledge(self)

    def tunnel_ended(self) -> None:
        """END_STREAM from the viewer on a WebSocket CONNECT stream: its half-close."""
        self.request_ended = True
        if self.ws == WS_TUNNEL:
            self._viewer_eof()

    def _viewer_eof(self) -> None:
        if self.exchange is not None:
            self.exchange.client_eof()


class H2Connection:
    """The connection: an asyncio protocol by its methods (as ClientConnection)."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.limits = listener.limits
        self.loop = listener.loop
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.client_ip_bytes = b""
        self.client_port = 0
        self.gauge = listener.metrics
        config = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                           validate_inbound_headers=True,
                                           normalize_inbound_headers=False,
                                           # the fields we send are made by start_response,
                                           # interim and send_trailers (`response_fields`)
                                           validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(config)
        self.h2.encoder = ResponseEncoder()
        self.streams: dict[int, H2Stream] = {}
        self.closed = False
        self.draining = False
        self.last_stream = 0   # after a GOAWAY: streams above this one are refused
        self.write_paused = False
        self.flush_queued = False
        self.queued: list[H2Stream] = []   # streams with body or END_STREAM to send (`queue`)
        self.stalled = False   # a response waits for the client's window: the idle timeout runs
        self.deadline = Deadline(self.loop, self._timed_out)
        now = self.loop.time()
        self.resets = Flood(RESETS_PER_S, RESETS_BURST, now)
        self.control = Flood(CONTROL_PER_S, CONTROL_BURST, now)
        self.idle = Flood(IDLE_PER_S, IDLE_BURST, now)
        self.tally = FrameTally()
        self.owed = 0   # DATA and HEADERS frames the tally saw and `h2` did not report yet

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # TCP_NODELAY: set by the loop on every TCP connection (asyncio since 3.7, uvloop),
        # not again here: through uvloop that cost a socket object and a syscall per connection
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip, self.client_port = peer[0], peer[1]
            self.client_ip_bytes = self.client_ip.encode()
        self.listener.connection_made(self)
        settings = {
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.limits.max_headers_total_bytes,
            h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,   # WebSockets (RFC 8441 3)
        }
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        self.h2.initiate_connection()
        # `h2` makes a stream past the limit a connection error; it is held to a looser limit
        # than the one just sent, so that such a stream is ours to refuse (`_request`)
        settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 2 * MAX_STREAMS
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        self.h2.increment_flow_control_window(WINDOW * 4)   # the connection's window
        self.flush()
        self.deadline.set(self.limits.idle_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.deadline.cancel()
        self.listener.connection_lost(self)
        self._streams_lost()

    def _streams_lost(self) -> None:
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.closed = True
            ex = stream.exchange
            if ex is not None:
                ex.client_lost()

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self.write_paused = True
        self.stalled = True   # the client does not read: the idle timeout runs
        self.deadline.set(self.limits.idle_timeout_s)
        for stream in self.streams.values():
            self._tell_paused(stream, True)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.stalled = False
        self.deadline.clear()
        for stream in list(self.streams.values()):
            self._tell_paused(stream, stream.pending_bytes > STREAM_BUFFER)

    def data_received(self, data: bytes) -> None:
        self._feed(data, 0)

    def _feed(self, data: bytes, start: int) -> None:
        """`data[start:]` to `h2`, FEED_BYTES of it in this turn of the loop: the rest waits
        for the next turn, reading paused. `h2` parses all it is given before we see an event,
        so a flood (a read of a thousand HEADERS and RST_STREAMs, or of small frames) is cut
        off after the slice that ran out its budget, not after all of it; and a read full of
        small frames does not hold the worker, other connections are served in between."""
        transport = self.transport
        if start and transport is not None and not transport.is_closing():
            transport.resume_reading()
        if self.closed:
            return
        end = start + FEED_BYTES
        piece = data[start:end] if start or end < len(data) else data
        owner = writebatch.begin()
        try:
            cost = self.tally.cost(piece)
            if cost and not self.idle.hit(self.loop.time(), cost):
                self.calm("too many frames that serve nothing")
            else:
                self._received(piece)
        finally:
            if owner:
                writebatch.end()
        if end < len(data) and not self.closed and transport is not None:
            transport.pause_reading()
            self.loop.call_soon(self._feed, data, end)

    def _received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            code = rfc_error_code(exc)
            if code is not None:
                self._replace_goaway(code)
            self._goaway_close()   # `h2` queued its GOAWAY
            return
        now = self.loop.time()
        if not self._answered(events, now):
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._request(event)
                if self.closed:   # refused one stream too many
                    return
            elif isinstance(event, h2.events.DataReceived):
                if not event.flow_controlled_length and event.stream_ended is None and \
                        not self.control.hit(now):
                    self.calm("too many empty DATA frames")   # each free to the client
                    return
                stream = self.streams.get(event.stream_id or 0)
                if stream is None or stream.exchange is None:
                    self.h2.acknowledge_received_data(event.flow_controlled_length,
                                                      event.stream_id or 0)
                elif stream.ws:
                    stream.tunnel_data(event.data or b"", event.flow_controlled_length)
                else:
                    stream.unacked += event.flow_controlled_length
                    stream.exchange.request_body(event.data or b"")
                    if not stream.paused:
                        self.acknowledge(stream)
            elif isinstance(event, h2.events.StreamEnded):
                stream = self.streams.get(event.stream_id or 0)
                if stream is not None and stream.ws:
                    stream.tunnel_ended()
                elif stream is not None:
                    stream.request_ended = True
                    if stream.exchange is not None:
                        stream.exchange.request_done()
            elif isinstance(event, h2.events.StreamReset):
                stream = self.streams.pop(event.stream_id or 0, None)
                if stream is not None:
                    stream.closed = True
                    ex, stream.exchange = stream.exchange, None
                    if ex is not None:
                        ex.client_lost()
                if not self.resets.hit(now):
                    self.calm("too many stream resets")
                    return
            elif isinstance(event, (h2.events.RemoteSettingsChanged, h2.events.PingReceived)):
                if not self.control.hit(now):
                    self.calm("too many SETTINGS or PING frames")
                    return
            elif isinstance(event, h2.events.WindowUpdated):
                for stream in list(self.streams.values()):
                    if stream.pending or stream.ending:
                        self.send_pending(stream)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.flush_now()
                self._close()
                return
            # TrailersReceived: request trailers are not forwarded (re-chunked bodies end bare)
            # PriorityUpdated: priorities are ignored (RFC 9113 5.3.2)
        self.flush()
        if self.streams:
            if not self.stalled:
                self.deadline.clear()
        elif not self.closed:
            self.deadline.set(self.limits.idle_timeout_s)

    def _answered(self, events: list[h2.events.Event], now: float) -> bool:
        """The idle-frame budget's accounts after `h2` parsed a piece: requests earn tokens,
        DATA and HEADERS frames that `h2` dropped without an event (on closed streams, each
        answered with an RST_STREAM) cost one each. False: the budget ran out (GOAWAY sent)."""
        requests = reported = 0
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                requests += 1
            elif isinstance(event, (h2.events.DataReceived, h2.events.TrailersReceived)):
                reported += 1
        if requests:
            self.idle.credit(IDLE_PER_REQUEST * requests)
        # frames come one after another: one may still be on its way, more were dropped
        owed = self.owed + self.tally.carried - requests - reported
        if owed > 1:
            if not self.idle.hit(now, owed - 1):
                self.calm("too many frames on closed streams")
                return False
            owed = 1
        self.owed = owed
        return True

    def _request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id or 0
        if self.draining and sid > self.last_stream:
            # begun after our GOAWAY: not processed, the client may retry it elsewhere
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if len(self.streams) >= MAX_STREAMS:
            # past SETTINGS_MAX_CONCURRENT_STREAMS (a client that did not wait for our SETTINGS,
            # or ignores them): refused, so it may be retried (RFC 9113 5.1.2); budgeted as
            # resets are, since each costs us a stream's parsing for nothing
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            if not self.resets.hit(self.loop.time()):
                self.calm("too many streams past the limit")
            return
        stream = H2Stream(self, sid)
        stream.draining = self.draining
        self.streams[sid] = stream
        end_stream = event.stream_ended is not None
        stream.request_ended = end_stream
        started = writebatch.now()
        try:
            head = request_head(list(event.headers or ()), end_stream,
                                self.listener.header_kinds)
            # the listener's head limits, as an HTTP/1.1 head of the same fields meets them
            total = 0
            for count, (name, value) in enumerate(head.headers, 1):
                size = len(name) + len(value) + 4
                total += size
                err = self.limits.header_error(size, total, count)
                if err is not None:
                    raise err
            err = self.limits.url_error(len(head.target))
            if err is not None:
                raise err
        except (HttpError, ValueError) as exc:
            error = exc if isinstance(exc, HttpError) else HttpError(400, "malformed request")
            ex = Exchange.for_error(stream, error, started)
            stream.exchange = ex
            ex.start()
            return
        if head.upgrade is not None:   # a WebSocket CONNECT (request_head)
            stream.ws = WS_SWITCHING
            for name, value in head.headers:
                if name == b"sec-websocket-key":
                    stream.ws_key = value
        ex = Exchange(stream, head, started)
        stream.exchange = ex
        ex.start()
        if end_stream and stream.exchange_live():
            ex.request_done()

    # -- what streams ask ------------------------------------------------------------------
    def send_headers(self, stream: H2Stream, fields: list[tuple[bytes, bytes]],
                     end_stream: bool) -> None:
        if stream.closed or self.closed:
            return
        self.h2.send_headers(stream.stream_id, fields, end_stream=end_stream)
        if end_stream:
            stream.ending = stream.finished = True
        self.flush()

    def queue(self, stream: H2Stream) -> None:
        """The stream has body bytes or its end to send: done at this turn's `flush`, so a
        response whose end comes in the same turn as its last bytes (a cache hit, a small
        proxied one) ends with END_STREAM on its last DATA frame, not on a frame of its own."""
        if not stream.queued:
            stream.queued = True
            self.queued.append(stream)
            self.flush()

    def send_pending(self, stream: H2Stream) -> None:
        """Send what the stream's window and the connection's allow; END_STREAM (or the
        trailers) once all of it left after end_response."""
        if stream.closed or self.closed:
            return
        sid = stream.stream_id
        h2c = self.h2
        sent = ended = False
        while stream.pending:
            window = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
            if window <= 0:
                break
            data = stream.pending[0]
            if len(data) > window:
                stream.pending[0] = data[window:]
                data = data[:window]
            else:
                stream.pending.pop(0)
            stream.pending_bytes -= len(data)
            ended = not stream.pending and stream.ending and not stream.trailers
            h2c.send_data(sid, data, end_stream=ended)
            self.idle.credit(IDLE_PER_DATA)
            sent = True
        if not stream.pending and stream.ending and not stream.finished:
            stream.finished = True
            if stream.trailers:
                h2c.send_headers(sid, stream.trailers, end_stream=True)
            elif not ended:
                h2c.end_stream(sid)
            stream.trailers = None
            if stream.exchange is None:   # its exchange ended while bytes waited
                self.stream_done(stream)
        self.flush()
        if stream.pending:
            if sent or not self.stalled:   # waiting for the client's window: the idle timeout
                self.stalled = True        # runs from the last bytes it let through
                self.deadline.set(self.limits.idle_timeout_s)
        elif self.stalled and not any(s.pending for s in self.streams.values()):
            self.stalled = False
            self.deadline.clear()
        self._tell_paused(stream, stream.pending_bytes > STREAM_BUFFER or self.write_paused)

    def _tell_paused(self, stream: H2Stream, paused: bool) -> None:
        if paused != stream.client_paused:
            stream.client_paused = paused
            if stream.exchange is not None:
                stream.exchange.client_paused(paused)

    def acknowledge(self, stream: H2Stream) -> None:
        size, stream.unacked = stream.unacked, 0
        if size and not self.closed:
            try:
                self.h2.acknowledge_received_data(size, stream.stream_id)
            except h2.exceptions.StreamClosedError:
                pass   # reset meanwhile: `h2` gave the connection's window back then
            self.flush()

    def stream_done(self, stream: H2Stream) -> None:
        """Its exchange is over; a request still arriving is not wanted (RFC 9113 8.1), once
        the response is out (until then its end waits in `queued` or for a window, and
        send_pending calls this again when it went)."""
        if not stream.request_ended and not stream.closed and \
                (stream.finished or not stream.ending):
            self.reset(stream, h2.errors.ErrorCodes.NO_ERROR)
        if stream.finished:
            self.streams.pop(stream.stream_id, None)
        self._maybe_close()

    def reset(self, stream: H2Stream, code: h2.errors.ErrorCodes) -> None:
        self.streams.pop(stream.stream_id, None)
        if not stream.closed and not self.closed:
            stream.closed = True
            try:
                self.h2.reset_stream(stream.stream_id, code)
            except h2.exceptions.StreamClosedError:
                pass
            self.flush()
        self._maybe_close()

    def calm(self, why: str) -> None:
        """The peer is abusive: GOAWAY ENHANCE_YOUR_CALM, and close."""
        self.h2.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
                                 additional_data=why.encode())
        self._goaway_close()

    def _replace_goaway(self, code: h2.errors.ErrorCodes) -> None:
        """`h2`'s GOAWAY, with `code` instead of its own (`rfc_error_code`). It is the last
        frame `h2` queued (17 bytes: no debug data)."""
        data = self.h2.data_to_send()
        if data[-14:-13] == b"\x07":
            data = data[:-17] + GoAwayFrame(
                0, last_stream_id=self.h2.highest_inbound_stream_id, error_code=code).serialize()
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def _goaway_close(self) -> None:
        """Send the GOAWAY `h2` queued and end the connection so that the client reads it:
        a close with its unread frames still arriving would reset the connection, and the
        GOAWAY with it. So: our side is shut, what arrives is read and dropped, for
        GOAWAY_LINGER_S at most."""
        self.flush_now()
        transport = self.transport
        if self.closed or transport is None:
            return
        self._streams_lost()
        self.closed = True
        self.deadline.cancel()
        if transport.can_write_eof():
            transport.write_eof()
            self.loop.call_later(GOAWAY_LINGER_S, transport.abort)
        else:
            transport.close()

    def flush(self) -> None:
        """Write what `h2` made, once this turn of the loop is over: the frames of every
        stream that answered meanwhile go in one write (one syscall, not one per frame)."""
        if not self.flush_queued:
            self.flush_queued = True
            self.loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        # (flush_queued stays set meanwhile: what send_pending makes goes in this write)
        queued, self.queued = self.queued, []
        for stream in queued:
            stream.queued = False
            self.send_pending(stream)
        self.flush_queued = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    # -- the connection's life --------------------------------------------------------------
    def _maybe_close(self) -> None:
        if self.draining and not self.streams:
            self._close()
        elif not self.streams and not self.closed:
            self.deadline.set(self.limits.idle_timeout_s)

    def _close(self) -> None:
        if not self.closed:
            self.flush_now()
            self.closed = True
            self.deadline.cancel()
            if self.transport is not None:
                self.transport.close()

    def close(self) -> None:
        self._close()

    def abort(self) -> None:
        self.closed = True
        self.deadline.cancel()
        if self.transport is not None:
            self.transport.abort()

    def drain(self) -> None:
        """Shutdown: GOAWAY naming the last stream begun; those finish, then close."""
        if self.draining or self.closed:
            return
        self.draining = True
        for stream in self.streams.values():
            stream.draining = True
        # GOAWAY written by us, not `h2.close_connection`: that closes `h2`'s connection state
        # machine, which then refuses every frame, the in-flight streams' included
        self.flush_now()
        self.last_stream = self.h2.highest_inbound_stream_id
        frame = GoAwayFrame(0, last_stream_id=self.last_stream, error_code=0)
        if self.transport is not None:
            self.transport.write(frame.serialize())
        self._maybe_close()

    def idle_since(self, before: float) -> bool:
        at = self.deadline.at
        return at is not None and not self.streams and not self.closed and \
            at - self.limits.idle_timeout_s <= before

    def _timed_out(self) -> None:
        if self.closed:
            return
        if self.stalled:
            # a client that left our response unread (a zero window) for the idle timeout: its
            # streams hold backends' connections
            self.abort()
        elif not self.streams:
            self.drain()
