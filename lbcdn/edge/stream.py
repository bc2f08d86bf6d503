"""What every side of the edge shares: the client side of one exchange, as the exchange sees it.

The bottom of the edge's import order (listener -> connection -> exchange -> cache pieces ->
this module; tests/edge/test_imports.py keeps it so): it imports nothing of lbcdn.edge.

A protocol adapter (the HTTP/1.1 `ClientConnection` today, an HTTP/2 stream next) implements
`ClientStream`; the exchange writes its response through it and never sees the connection.
The response API knows no wire protocol:
- a response is a head (`start_response`: a `lbcdn.http.head.Head`, an object with status,
  reason, fields and the body's length when known), body bytes as they are (`send_body`,
  `send_body_parts`: never framed by the exchange), trailer fields (`send_trailers`) and its end
  (`end_response`); or all of it at once (`respond`). A 1xx goes out with `interim`. `abort`
  ends the stream at once, which is how a failure after the head can only be signalled;
- the adapter decides the framing for its protocol: the HTTP/1.1 adapter sends Content-Length
  when the head has a length, chunked (or close-delimited for an HTTP/1.0 client) when not,
  encodes the chunks and the terminating chunk, the trailers after it when the request allows
  (TE: trailers), and its Connection field. A head may carry its HTTP/1.1 form already
  (`Head.wire()`, as stored entries and backends' heads have it), which the HTTP/1.1 adapter
  writes as it is and another adapter never needs: it reads `Head.fields()`;
- `end(keep_alive)` says the exchange is over (its response sent and its request read): the
  stream carries the next request when `keep_alive`;
- the request comes the other way: the adapter delivers its head (by creating the exchange),
  body chunks, end, failure, and the client's own flow control (`Exchange.client_paused`);
- reading the request is paused and resumed for a reason (`pause`, `resume`, the PAUSE_*
  bits below): it resumes only when no reason is left.

A base class and not a typing.Protocol: compiled code calls a base class's methods through its
method table, a Protocol's by looking up their names (see lbcdn.http.response.ResponseSink).
"""

from __future__ import annotations

from typing import Final, TYPE_CHECKING

from mypy_extensions import mypyc_attr

if TYPE_CHECKING:
    from lbcdn.edge.listener import Listener
    from lbcdn.http.head import Head, ResponseHead

# reasons reading from the client is paused; reading resumes when none is left
PAUSE_UPSTREAM: Final = 1        # the upstream cannot take the request body as fast as it comes
PAUSE_PIPELINE: Final = 2        # too many pipelined requests waiting
PAUSE_BODY: Final = 4            # request bodies buffered while no upstream connection is attached


@mypyc_attr(allow_interpreted_subclasses=True)
class ClientStream:
    """The client side of an exchange (see the module docstring). Attributes every adapter
    sets: `listener`, `client_ip` (str), `client_ip_bytes` and `client_port`, `draining`
    (shutting down: the response ends the stream), `protocol` (the access log's: "HTTP/2.0",
    or "" for HTTP/1.x, whose request head says which)."""
    listener: Listener
    client_ip: str
    client_ip_bytes: bytes
    client_port: int
    draining: bool
    protocol: str

    # -- the response ---------------------------------------------------------------------
    def start_response(self, head: Head, body: bool, keep_alive: bool) -> bool:
        """Send `head`; `body`: body bytes follow (not for a HEAD request, nor a 204 or 304).
        `keep_alive`: the exchange would let the stream carry another request after this one.
        Returns whether the stream will (an HTTP/1.0 body of unknown length ends with the
        connection); `end` gets that answer."""
        raise NotImplementedError

    def interim(self, head: Head) -> None:
        """An informational (1xx) response before the final one."""
        raise NotImplementedError

    def send_body(self, data: bytes) -> None:
        """Body bytes of the response, as they are."""
        raise NotImplementedError

    def send_body_parts(self, parts: list[bytes]) -> None:
        raise NotImplementedError

    def send_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        """Trailer fields, after the last body bytes and before `end_response`; dropped when
        the response or the client cannot carry them."""
        raise NotImplementedError

    def end_response(self) -> None:
        """The response is complete (its body, when it had one, was all sent)."""
        raise NotImplementedError

    def respond(self, head: Head, body: tuple[bytes, ...], keep_alive: bool) -> bool:
        """A whole response at once: `start_response(head, bool(body) ...)`, the body parts,
        `end_response`. An empty `body`: none is sent."""
        raise NotImplementedError

    def response_bytes(self) -> int:
        """Bytes of the current response sent so far, its head and framing included (the
        access log's `bytes_out`)."""
        raise NotImplementedError

    def checkpoint(self) -> tuple[list[bytes], int] | None:
        """Where the response's next bytes land, for `take_back`; None once they leave."""
        raise NotImplementedError

    def take_back(self, mark: tuple[list[bytes], int] | None) -> bool:
        """Drop what was sent since `mark` if none of it left yet (a 502 for a backend whose
        good head and broken body came in one read); the response has not started then."""
        raise NotImplementedError

    def end(self, keep_alive: bool) -> None:
        """The active exchange wrote its whole response and read its whole request; the
        stream carries the next one when `keep_alive`."""
        raise NotImplementedError

    def close(self) -> None:
        """End the stream after what was sent (a tunnel whose backend side closed)."""
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def is_closed(self) -> bool:
        raise NotImplementedError

    # -- the request ----------------------------------------------------------------------
    def pause(self, reason: int) -> None:
        raise NotImplementedError

    def resume(self, reason: int) -> None:
        raise NotImplementedError

    def body_buffered(self, size: int) -> None:
        """`size` bytes of request body wait for an upstream (bounded: reading pauses)."""
        raise NotImplementedError

    def body_unbuffered(self, size: int) -> None:
        raise NotImplementedError

    def request_stopped(self, ex: object) -> bool:
        """No more of `ex`'s request will be read; True when `ex` is the one answering now
        (a later one answers its error in turn)."""
        raise NotImplementedError

    # -- an upgrade -----------------------------------------------------------------------
    def switch_accepted(self, resp: ResponseHead) -> bool:
        """Whether the backend's final answer `resp` to a request that asked to switch
        protocols may be passed on (else it is a bad response: 502). An adapter that made the
        handshake for its client checks it here (a WebSocket over HTTP/2: the client sent no
        key, and takes any 2xx for the switch); one whose client checks it (HTTP/1.1) takes
        any."""
        return True

    def become_tunnel(self, ex: object) -> None:
        """`ex`'s backend switched protocols: the stream's bytes are the tunnel's now."""
        raise NotImplementedError

    def tunnel_active(self) -> None:
        """Bytes went through the tunnel: its idle timeout starts again."""
        raise NotImplementedError


@mypyc_attr(allow_interpreted_subclasses=True)
class ExchangeTap:
    """What an exchange tells the cache side of it (Exchange.tap): its upstream's response head
    and end, and its client's flow control and departure."""

    def head(self, resp: ResponseHead) -> None:
        raise NotImplementedError

    def done(self) -> None:
        raise NotImplementedError

    def client_paused(self, paused: bool) -> None:
        raise NotImplementedError

    def client_lost(self) -> None:
        raise NotImplementedError
