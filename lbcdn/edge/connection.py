"""The client side of the listener: one asyncio.Protocol per accepted connection.

Its job is the bytes: parse requests with httptools, enforce the head limits and timeouts, keep
pipelined requests in order, and apply back-pressure. What to do with a request is the
`Exchange`'s job (lbcdn.edge.exchange); this module never looks at routes or backends.

Rules:
- Requests are answered strictly in arrival order. Only the first exchange in `exchanges` is
  active; later (pipelined) ones wait, their bodies buffered, and reading pauses once more than a
  few are waiting or their buffered bodies pass a bound.
- A request that breaks a limit or the framing rules gets its 4xx after the responses to the
  requests before it, and the connection closes; nothing after it is parsed.
- Upgrades: after a request whose Upgrade `check_request` keeps, parsing stops (what follows is
  the tunnel's, once the backend switches). One it declines (h2c) is served as a plain request:
  llhttp stops after its head all the same, so a new parser reads its body through a made-up
  head with the same framing (`_body_framing`), and then the requests that follow.
- One deadline per connection, whose meaning follows the state: header timeout while a head is
  arriving (not extended by trickled bytes), body timeout between body reads, idle timeout between
  requests and while the client is not reading our response.
- Known heads: a read that is exactly one complete bodiless request head, arriving between
  requests, is looked up in the listener's `known_heads` before it is parsed. The validated
  `RequestHead` is a pure function of those bytes and of the listener's config, so when the same
  bytes were parsed and accepted before (keep-alive clients repeat their heads byte for byte),
  that result is used as is and the parser is not fed: it stays between messages, where the
  bytes would have left it. Only heads that parsed cleanly, alone, with no body and no upgrade are
  remembered; the table is bounded and emptied when the listener's config changes. A known head
  on a connection with nothing in progress may be answered by the edge cache directly
  (`cache_hit.answer_known`: a plain fresh hit, no Exchange at all).
- Responses: exchanges hand over a head object and the body's bytes (lbcdn.edge.stream); this
  adapter frames them. A body of known length goes with its Content-Length (in the head's
  HTTP/1.1 form already), one of unknown length chunked, or close-delimited for an HTTP/1.0
  client (the connection then closes after it); HEAD, 1xx, 204 and 304 answers carry none.
  Trailers go after the last chunk, when the response is chunked and the request said it takes
  them (TE: trailers); otherwise they are dropped. The Connection field follows keep-alive:
  `close` when the connection closes after the response, `keep-alive` to an HTTP/1.0 client
  that keeps it; a head with nothing to add is written as the bytes it already is.
"""

from __future__ import annotations

import asyncio
from typing import Final, TYPE_CHECKING

import httptools

from lbcdn.edge.cache_hit import NO_PLAN, KnownHead, answer_known
from lbcdn.edge.exchange import SENDING, SWITCHING, Exchange
from lbcdn.edge.h2connection import PREFACE, H2Connection
from lbcdn.edge.stream import PAUSE_BODY, PAUSE_PIPELINE, ClientStream
from lbcdn.http.errors import HttpError
from lbcdn.http.head import Head, HeadLimits, RequestHead, check_request, is_token
from lbcdn.timers import Deadline
from lbcdn import writebatch
from lbcdn.writebatch import Writer

if TYPE_CHECKING:
    from lbcdn.edge.config import ListenerConfig
    from lbcdn.edge.listener import Listener

MAX_PIPELINED: Final = 16
MAX_BUFFERED_BODY: Final = 256 * 1024
KNOWN_HEAD_MAX_BYTES: Final = 2048   # longer heads (big cookies) are parsed every time
_END: Final = b"\r\n\r\n"
_CHUNKED: Final = b"Transfer-Encoding: chunked\r\n"
_CLOSE: Final = b"Connection: close\r\n"
_KEEP_ALIVE: Final = b"Connection: keep-alive\r\n"
_UPGRADE: Final = b"Connection: upgrade\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"


def _version(version: str) -> bytes:
    """The version a request is served as; llhttp (lenient on versions) passes any X.Y."""
    if version == "1.0":
        return b"1.0"
    if version[:1] == "1":
        return b"1.1"  # 1.1, or a later 1.x served as the highest we implement (RFC 9110 2.5)
    if version[:1] > "1":
        raise HttpError(505, "HTTP version not supported")
    raise HttpError(400, "unsupported HTTP version")  # HTTP/0.9 simple requests


def _body_framing(head: RequestHead) -> bytes:
    """A made-up request head with the body framing of `head`, fed to llhttp when it stopped
    after `head` for an Upgrade lbcdn declined: it skipped the body as the new protocol's, and
    now reads it as it would have, then goes on to the next request."""
    framing = b"Transfer-Encoding: chunked" if head.chunked else \
        b"Content-Length: %d" % (head.content_length or 0)
    return b"PUT / HTTP/1.1\r\n%s\r\n%s\r\n" % (
        framing, b"" if head.keep_alive else b"Connection: close\r\n")


def _version_missing(head: bytes) -> bool:
    """Whether `head`, the start of a request head, is exactly a request line without a version
    (`GET /x`, HTTP/0.9). llhttp only says so when a byte after the line arrives (its version
    then reads 0.9), and a 0.9 client sends none."""
    return head.endswith(b"\n") and len(head.split(None, 2)) == 2


def _takes_trailers(head: RequestHead) -> bool:
    """Whether a request's TE field says its client takes trailer fields (RFC 9110 10.1.4)."""
    for name, value in head.headers:
        if name.lower() == b"te":
            for coding in value.lower().split(b","):
                if coding.partition(b";")[0].strip() == b"trailers":
                    return True
    return False


class Limits(HeadLimits):
    """The listener settings a connection reads on every request and header, copied out of
    its config (a dataclass, whose attributes are dict lookups) into native attributes: the
    head limits (checked by HeadLimits, as the control listeners' are) and the timeouts. A
    connection keeps the limits of the config it was opened under."""
    __slots__ = ("header_timeout_s", "idle_timeout_s", "body_timeout_s")

    def __init__(self, config: ListenerConfig) -> None:
        super().__init__(config.max_request_line_bytes, config.max_header_bytes,
                         config.max_headers_total_bytes, config.max_header_count)
        self.header_timeout_s = config.header_timeout_s
        self.idle_timeout_s = config.idle_timeout_s
        self.body_timeout_s = config.body_timeout_s


# An asyncio protocol by its methods, not by subclassing asyncio.Protocol: a non-compiled base
# would make mypyc build a non-native class (attribute access through a dict). The HTTP/1.1
# adapter: the exchanges it carries see only its ClientStream side.
class ClientConnection(ClientStream, Writer):
    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.limits = listener.limits
        self.loop = listener.loop
        self.transport = None
        self._pending: list[bytes] | None = None
        self.client_ip = ""
        self.client_ip_bytes = b""
        self.client_port = 0
        self.protocol = ""
        self.parser = self._new_parser()
        self.deadline = Deadline(self.loop, self._timed_out)
        # in arrival order; a list, not a deque: compiled code has list operations built in,
        # and it holds at most MAX_PIPELINED + 1
        self.exchanges: list[Exchange] = []
        self.parsing: Exchange | None = None   # whose body the parser is reading
        self.closed = False
        self.draining = False
        self.write_paused = False
        self.tunnel: Exchange | None = None
        self.eof = False
        self.gauge = listener.metrics
        self._pause = 0
        self._in_head = False
        self._head_started = 0.0
        self._head_raw = 0
        self._url: list[bytes] = []
        self._url_len = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._headers_len = 0
        self._error: HttpError | None = None
        self._stopped = False   # parsing ended after an error or an upgrade
        self.buffered_body = 0
        self.bytes_in = 0
        self._begun = 0        # messages begun during the current feed
        self._learn: RequestHead | None = None   # head to remember once this feed ends well
        # a head whose Upgrade was declined, and when it began: llhttp stops after it as if the
        # protocol switched, and its request begins when parsing resumes (`_body_framing`)
        self._declined: tuple[RequestHead, float] | None = None
        # the response being written: its bytes so far, whether its body is chunked, and
        # the trailer lines to send after its last chunk
        self._sent = 0
        self._chunked = False
        self._trailers = b""
        self._keep = False
        # HTTP/2 bytes read before `connection_made` (TLS delivers the first records before
        # the handshake's waiter gives us the transport)
        self._early_h2: bytes | None = None

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        # llhttp refuses versions it does not know (1.2, 3.0) as malformed; `_version` decides
        parser.set_dangerous_leniencies(lenient_version=True)
        return parser

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = transport  # type: ignore[assignment]
        # TCP_NODELAY: set by the loop on every TCP connection (asyncio since 3.7, uvloop),
        # not again here: through uvloop that cost a socket object and a syscall per connection
        peer = transport.get_extra_info("peername")
        if peer:
            self.set_client(peer[0], peer[1])
        self.listener.connection_made(self)
        self.deadline.set(self.limits.idle_timeout_s)
        if self._early_h2 is not None:
            self.become_h2(self._early_h2)

    def set_client(self, ip: str, port: int) -> None:
        """The client's address: the peer's, or the one a PROXY header gave (proxy_gate)."""
        self.client_ip, self.client_port = ip, port
        self.client_ip_bytes = ip.encode()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.deadline.cancel()
        self.listener.connection_lost(self)
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.client_lost()
        while self.exchanges:
            self.exchanges.pop(0).client_lost()

    def data_received(self, data: bytes) -> None:
        known = None
        if data.endswith(_END) and not self._in_head and self.parsing is None and \
                self.tunnel is None and not self._stopped:
            known = self.listener.known_heads.get(data)
            if known is not None and known.plan is not NO_PLAN and not self.exchanges and \
                    not self.draining and not self.write_paused:
                answer = answer_known(self, known)
                if answer is not None:
                    if isinstance(answer, bytes):
                        self.write(answer)
                    else:
                        self.writelines(answer)
                    self.bytes_in += len(data)
                    self.deadline.set(self.limits.idle_timeout_s)
                    return
        owner = writebatch.begin()
        try:
            self._received(data, known)
        finally:
            if owner:
                writebatch.end()

    def _received(self, data: bytes, known: KnownHead | None) -> None:
        if self.bytes_in == 0 and (self._early_h2 is not None or (
                data[:3] == b"PRI" and self.listener.h2 and
                PREFACE.startswith(data[:len(PREFACE)]))):
            # HTTP/2 from the first byte: h2c with prior knowledge (RFC 9113 3.3), or after
            # TLS ALPN h2; bytes that come before the transport is ours wait for it
            if self.transport is None:
                self._early_h2 = (self._early_h2 or b"") + data
            else:
                self.become_h2(data)
            return
        self.bytes_in += len(data)
        if known is not None:
            self._begin(known.head, writebatch.now())
            self.on_message_complete()
            return
        if self.tunnel is not None:
            self.deadline.set(self.limits.idle_timeout_s)  # ALB's idle timeout applies
            self.tunnel.client_tunnel_data(data)
            return
        if self._stopped:
            if self.exchanges and self.exchanges[-1].state == SWITCHING:
                self.exchanges[-1].client_tunnel_data(data)
            return
        between = not self._in_head and self.parsing is None
        self._begun = 0
        fed = data
        while True:
            try:
                self.parser.feed_data(fed)
            except httptools.HttpParserUpgrade as exc:
                rest = fed[exc.args[0]:]
                declined = self._declined
                if declined is not None:
                    # llhttp stopped after a head whose Upgrade lbcdn declined: a new parser
                    # reads that request's body (it may have closed, on Connection: close),
                    # then what follows
                    self.parser = self._new_parser()
                    fed = _body_framing(declined[0]) + rest
                    continue
                self._stopped = True
                self._learn = None
                ex = self.exchanges[-1] if self.exchanges else None
                if ex is not None and ex.state == SWITCHING and rest:
                    ex.client_tunnel_data(rest)
                return
            except httptools.HttpParserError as exc:
                err = self._error
                if err is None:
                    if self._unknown_method(exc, data, between):
                        err = HttpError(501, "method not implemented")
                    else:
                        detail = str(exc).strip() or "malformed request"
                        err = HttpError(400, f"malformed request ({detail})")
                self._stopped = True
                self._learn = None
                self.fail(err)
                return
            break
        learn = self._learn
        if learn is not None:
            self._learn = None
            if between and self._begun == 1 and not self._in_head and self.parsing is None \
                    and len(data) <= KNOWN_HEAD_MAX_BYTES and data.endswith(_END):
                self.listener.remember_head(data, KnownHead(learn))
        if self._in_head:
            self._head_raw += len(data)
            err = self.limits.head_error(self._head_raw)
            if err is not None:
                self._stopped = True
                self.fail(err)
            elif self.parser.get_http_version() == "0.9" or \
                    (between and self._begun == 1 and _version_missing(data)):
                # a request line without a version: an HTTP/0.9 request has no headers, so
                # there is nothing to wait for
                self._stopped = True
                self.fail(HttpError(400, "unsupported HTTP version"))
        elif self.parsing is not None and self._pause == 0:
            self.deadline.set(self.limits.body_timeout_s)

    def _unknown_method(self, exc: httptools.HttpParserError, data: bytes,
                        between: bool) -> bool:
        """Whether llhttp refused a request only for a method it does not know, though a
        well-formed one: methods are extensible tokens, and one a server does not implement
        gets 501 (RFC 9110 9.1, 15.6.2); a method that is no token stays a 400."""
        if isinstance(exc, httptools.HttpParserInvalidMethodError):
            # llhttp stops inside the method, at the start of the request, and says not
            # where: known when the request is the first one begun in this read
            if not between or self._begun != 1:
                return False
            method, sp, _ = data.lstrip(b"\r\n").partition(b" ")
            return bool(sp) and is_token(method)
        # an RTSP method (DESCRIBE, SETUP...) that llhttp knows, on an HTTP/x.y line
        return str(exc) == "Invalid method for HTTP/x.x request"

    def become_h2(self, data: bytes) -> None:
        """Hand the connection to the HTTP/2 adapter, `data` its first bytes (a client that
        spoke HTTP/2 from the start: prior knowledge, or TLS ALPN `h2`)."""
        transport = self.transport
        assert transport is not None
        self._early_h2 = None
        self.closed = True
        self.deadline.cancel()
        self.listener.connection_lost(self)
        h2conn = H2Connection(self.listener)
        transport.set_protocol(h2conn)  # type: ignore[arg-type]
        h2conn.connection_made(transport)
        # the address a PROXY header gave (proxy_gate), not the balancer's
        h2conn.client_ip, h2conn.client_port = self.client_ip, self.client_port
        h2conn.client_ip_bytes = self.client_ip_bytes
        if data:
            h2conn.data_received(data)

    def eof_received(self) -> bool | None:
        # A client that half-closes after its requests still gets the answers (keep the
        # transport open for writing); a tunnel passes the half-close on to the backend.
        self.eof = True
        if self.tunnel is not None:
            self.tunnel.client_eof()
            return True
        if self.exchanges:
            return True
        return None

    def pause_writing(self) -> None:
        self.write_paused = True
        target = self.tunnel or (self.exchanges[0] if self.exchanges else None)
        if target is not None:
            target.client_paused(True)
        self.deadline.set(self.limits.idle_timeout_s)

    def resume_writing(self) -> None:
        self.write_paused = False
        target = self.tunnel or (self.exchanges[0] if self.exchanges else None)
        if target is not None:
            target.client_paused(False)
        self.deadline.clear()

    # -- httptools callbacks --------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._begun += 1
        self._in_head = True
        self._head_raw = 0
        self._url = []
        self._url_len = 0
        self._headers = []
        self._headers_len = 0
        self._head_started = writebatch.now()
        self.deadline.set(self.limits.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._url_len += len(url)
        err = self.limits.url_error(self._url_len)
        if err is not None:
            self._error = err
            raise err

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 4
        self._headers_len += size
        self._headers.append((name, value))
        err = self.limits.header_error(size, self._headers_len, len(self._headers))
        if err is not None:
            self._error = err
            raise err

    def on_headers_complete(self) -> None:
        self._in_head = False
        declined = self._declined
        if declined is not None:
            # the made-up head that carries a declined upgrade's body framing: the request is
            # the one whose head came before it
            self._declined = None
            self._begin(declined[0], declined[1])
            return
        parser = self.parser
        try:
            head = check_request(
                parser.get_method(), b"".join(self._url),
                _version(parser.get_http_version()),
                self._headers, parser.should_keep_alive(), parser.should_upgrade(),
                self.listener.header_kinds)
        except HttpError as err:
            self._error = err
            raise
        if head.upgrade is None and parser.should_upgrade():  # declined: begun on resuming
            self._declined = (head, self._head_started)
            return
        if head.upgrade is None and not head.has_body:
            self._learn = head
        self._begin(head, self._head_started)

    def _begin(self, head: RequestHead, started: float) -> None:
        ex = Exchange(self, head, started)
        self.parsing = ex
        self.exchanges.append(ex)
        self.deadline.clear()
        if len(self.exchanges) == 1:
            ex.start()
        elif len(self.exchanges) > MAX_PIPELINED:
            self.pause(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is not None:
            ex.request_body(body)

    def on_message_complete(self) -> None:
        ex, self.parsing = self.parsing, None
        if ex is not None:
            ex.request_done()
        if not self.exchanges and not self.closed:
            self.deadline.set(self.limits.idle_timeout_s)

    # -- ClientStream: used by exchanges ---------------------------------------------------
    def _request(self) -> RequestHead | None:
        """The head of the request being answered (None for a known head's answer)."""
        return self.exchanges[0].head if self.exchanges else None

    def _head(self, head: Head, body: bool, keep_alive: bool) -> bytes:
        """`head` as it goes out, its framing and Connection field decided (see the module
        docstring); whether the connection stays open after it goes to `self._keep`."""
        exchanges = self.exchanges
        version = exchanges[0].head.version if exchanges else b"1.1"
        framing = b""
        chunked = body and head.length is None
        if chunked:
            if version == b"1.1":
                framing = _CHUNKED
            else:
                chunked = False
                keep_alive = False  # close-delimited, the only framing 1.0 knows
        if head.status == 101:
            connection = _UPGRADE
        elif not keep_alive or self.draining:
            keep_alive = False
            connection = _CLOSE
        elif version == b"1.0":
            connection = _KEEP_ALIVE
        else:
            connection = b""
        self._chunked = chunked
        self._keep = keep_alive
        whole = head.whole
        if not whole or head.extra or framing or connection:
            whole = b"".join((head.wire(), head.extra, framing, connection, b"\r\n"))
        self._sent = len(whole)
        return whole

    def start_response(self, head: Head, body: bool, keep_alive: bool) -> bool:
        self.write(self._head(head, body, keep_alive))
        return self._keep

    def interim(self, head: Head) -> None:
        request = self._request()
        if request is not None and request.version == b"1.1":  # 1.0 knows no 1xx (RFC 9110 15.2)
            self.write(head.whole or head.wire() + b"\r\n")

    def send_body(self, data: bytes) -> None:
        if self._chunked:
            size = b"%x\r\n" % len(data)
            self._sent += len(size) + len(data) + 2
            self.writelines([size, data, b"\r\n"])
        else:
            self._sent += len(data)
            self.write(data)

    def send_body_parts(self, parts: list[bytes]) -> None:
        if self._chunked:
            out: list[bytes] = []
            for data in parts:
                out += (b"%x\r\n" % len(data), data, b"\r\n")
            parts = out
        for data in parts:
            self._sent += len(data)
        self.writelines(parts)

    def send_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        request = self._request()
        if not self._chunked or request is None or not _takes_trailers(request):
            return  # no place for them (RFC 9110 6.5.1: trailers may be dropped)
        parts = [self._trailers]
        for name, value in fields:
            parts += (name, b": ", value, b"\r\n")
        self._trailers = b"".join(parts)

    def end_response(self) -> None:
        if self._chunked:
            self._chunked = False
            last = b"0\r\n%s\r\n" % self._trailers if self._trailers else _LAST_CHUNK
            self._trailers = b""
            self._sent += len(last)
            self.write(last)

    def respond(self, head: Head, body: tuple[bytes, ...], keep_alive: bool) -> bool:
        data = self._head(head, bool(body), keep_alive)
        if not body:
            self.write(data)
        elif self._chunked:
            self.write(data)
            self.send_body_parts(list(body))
            self.end_response()
        else:
            parts = [data]
            for part in body:
                self._sent += len(part)
                parts.append(part)
            self.writelines(parts)
        return self._keep

    def response_bytes(self) -> int:
        return self._sent

    def checkpoint(self) -> tuple[list[bytes], int] | None:
        return self.mark()

    def take_back(self, mark: tuple[list[bytes], int] | None) -> bool:
        if not self.rewind(mark):
            return False
        self._sent = 0
        self._chunked = False
        self._trailers = b""
        return True

    def is_closed(self) -> bool:
        return self.closed

    def body_buffered(self, size: int) -> None:
        self.buffered_body += size
        if self.buffered_body > MAX_BUFFERED_BODY:
            self.pause(PAUSE_BODY)

    def body_unbuffered(self, size: int) -> None:
        self.buffered_body -= size
        if self.buffered_body <= 0:
            self.buffered_body = 0
            self.resume(PAUSE_BODY)

    def request_stopped(self, ex: object) -> bool:
        self.parsing = None
        return not self.exchanges or self.exchanges[0] is ex

    def become_tunnel(self, ex: object) -> None:
        # the connection now belongs to the tunnel: out of the request queue
        assert isinstance(ex, Exchange)
        if self.exchanges and self.exchanges[0] is ex:
            self.exchanges.pop(0)
        self.tunnel = ex
        self.deadline.set(self.limits.idle_timeout_s)

    def tunnel_active(self) -> None:
        self.deadline.set(self.limits.idle_timeout_s)

    def pause(self, reason: int) -> None:
        if self._pause == 0 and self.transport is not None and not self.closed:
            self.transport.pause_reading()
            self.deadline.clear()
        self._pause |= reason

    def resume(self, reason: int) -> None:
        if not self._pause & reason:
            return
        self._pause &= ~reason
        if self._pause == 0 and self.transport is not None and not self.closed:
            self.transport.resume_reading()
            if self.parsing is not None:
                self.deadline.set(self.limits.body_timeout_s)

    def end(self, keep_alive: bool) -> None:
        self.exchanges.pop(0)
        if not keep_alive or self.draining or (self.eof and not self.exchanges):
            self.close()
            return
        if self._pause:
            self.resume(PAUSE_PIPELINE)
        if self.exchanges:
            self.exchanges[0].start()
        elif self._in_head:
            pass  # the next head is arriving; its header deadline is already set
        elif self._stopped:
            self.close()
        else:
            self.deadline.set(self.limits.idle_timeout_s)

    def fail(self, err: HttpError) -> None:
        """A framing or limit error: answer it in order, then close."""
        parsing = self.parsing
        if parsing is not None:
            # the error is inside the body of a request already under way
            self.parsing = None
            parsing.request_broken(err)
            return
        ex = Exchange.for_error(self, err, self._head_started)
        self.exchanges.append(ex)
        if len(self.exchanges) == 1:
            ex.start()

    def close(self) -> None:
        if not self.closed:
            self.flush()
            self.closed = True
            self.deadline.cancel()
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self._pending = None
        if self.transport is not None:
            self.transport.abort()
        self.closed = True
        self.deadline.cancel()

    def drain(self) -> None:
        """Shutdown: finish what is in progress, then close; close idle connections now."""
        self.draining = True
        if not self.exchanges and not self._in_head and self.tunnel is None:
            self.close()

    def idle_since(self, before: float) -> bool:
        """Whether this connection has waited for a request (between requests, or before its
        first byte) since the loop time `before` or earlier: it may be closed to make room."""
        at = self.deadline.at
        return at is not None and not self.exchanges and not self._in_head and \
            self.parsing is None and self.tunnel is None and not self.write_paused and \
            not self.closed and at - self.limits.idle_timeout_s <= before

    def _timed_out(self) -> None:
        if self.closed:
            return
        if self._in_head:
            self._stopped = True
            self.fail(HttpError(408, "timed out reading the request head"))
        elif self.parsing is not None and self.exchanges and \
                self.exchanges[0] is self.parsing and self.parsing.state < SENDING:
            self._stopped = True
            self.fail(HttpError(408, "timed out reading the request body"))
        else:
            # idle keep-alive, a client that stopped reading, or a stalled body mid-response
            self.abort()
