"""What every side of the edge shares: the client side of one exchange, as the exchange sees it.

The bottom of the edge's import order (listener -> connection -> exchange -> cache pieces ->
this module; tests/edge/test_imports.py keeps it so): it imports nothing of lbcdn.edge.

A protocol adapter (the HTTP/1.1 `ClientConnection` today, an HTTP/2 stream next) implements
`ClientStream`; the exchange writes its response through it and never sees the connection:
- a response goes out as its head (`start_response`), body bytes (`send_body`,
  `send_body_parts`) and its end (`end`), or whole at once (`respond`, `respond_parts`); `abort` ends the
  stream at once, which is how a failure after the head can only be signalled. Heads and bodies
  are in HTTP/1.1 form (a head is its serialized lines; a body chunked when the head says so),
  the form stored entries and remembered upstream heads already have; an adapter for another
  protocol reframes them;
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
    from lbcdn.http.head import ResponseHead

# reasons reading from the client is paused; reading resumes when none is left
PAUSE_UPSTREAM: Final = 1        # the upstream cannot take the request body as fast as it comes
PAUSE_PIPELINE: Final = 2        # too many pipelined requests waiting
PAUSE_BODY: Final = 4            # request bodies buffered while no upstream connection is attached


@mypyc_attr(allow_interpreted_subclasses=True)
class ClientStream:
    """The client side of an exchange (see the module docstring). Attributes every adapter
    sets: `listener`, `client_ip` (str), `client_ip_bytes` and `client_port`, `draining`
    (shutting down: the response ends the stream)."""
    listener: Listener
    client_ip: str
    client_ip_bytes: bytes
    client_port: int
    draining: bool

    # -- the response ---------------------------------------------------------------------
    def start_response(self, head: bytes) -> None:
        raise NotImplementedError

    def send_body(self, data: bytes) -> None:
        raise NotImplementedError

    def send_body_parts(self, parts: list[bytes]) -> None:
        raise NotImplementedError

    def respond(self, data: bytes) -> None:
        """A whole response (head and body) at once."""
        raise NotImplementedError

    def respond_parts(self, parts: list[bytes]) -> None:
        raise NotImplementedError

    def checkpoint(self) -> tuple[list[bytes], int] | None:
        """Where the response's next bytes land, for `take_back`; None once they leave."""
        raise NotImplementedError

    def take_back(self, mark: tuple[list[bytes], int] | None) -> bool:
        """Drop what was sent since `mark` if none of it left yet (a 502 for a backend whose
        good head and broken body came in one read)."""
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
