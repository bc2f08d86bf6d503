"""Coalesce the writes one read causes into one send per socket.

A proxied response usually arrives in one read: head and body. Written as they are produced, that
is two or three send() calls to the client; each costs as much as parsing the whole response.
While a batch is open (`with batch():` around a data_received), `Writer.write` only queues, and
closing the batch sends each touched socket's bytes with one writelines(). The event loop runs one
callback at a time, so one module-level batch is all that is needed.

The batch also carries the event's clock: `now()` inside a batch is the monotonic time at which
it opened, so the several timestamps one read leads to (request start, upstream send and
response times, the idle connection's age) cost one clock read. Outside a batch it reads the
clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from mypy_extensions import mypyc_attr, trait


# interpreted subclasses allowed: lbcdn.upstream.h2connection.H2Stream is one (through
# UpstreamConnection)
@trait
@mypyc_attr(allow_interpreted_subclasses=True)
class Writer:
    """Mixin for a protocol object: `write()` to its transport, batched when a batch is open.
    The class using it sets `transport`, `closed` and `_pending` (None) in its __init__. A
    trait, so that a class can have it beside a base class (compiled code allows one base)."""
    transport: asyncio.Transport | None
    closed: bool
    _pending: list[bytes] | None

    def write(self, data: bytes) -> None:
        write_to(self, data)

    def writelines(self, parts: list[bytes]) -> None:
        writelines_to(self, parts)

    def mark(self) -> tuple[list[bytes], int] | None:
        """Where the next write will land, for `rewind`; None when it goes out at once."""
        if not _state.open:
            return None
        if self._pending is None:
            self._pending = []
            _state.touched.append(self)
        return self._pending, len(self._pending)

    def rewind(self, mark: tuple[list[bytes], int] | None) -> bool:
        """Drop what was written since `mark`, if none of it was sent yet."""
        if mark is None or mark[0] is not self._pending:
            return False
        del mark[0][mark[1]:]
        return True

    def flush(self) -> None:
        flush_to(self)


class _Batch:
    """The one batch: an object's attributes, not module globals, so compiled code reads them
    directly instead of through the module's dict."""

    def __init__(self) -> None:
        self.open = False
        self.touched: list[Writer] = []
        self.now = 0.0   # time.monotonic() when the open batch opened


# parts of a batch up to this many bytes in all are joined and written as one buffer
JOIN_MAX: Final = 16384

_state: Final = _Batch()
_monotonic: Final = time.monotonic   # a C static, not a lookup on the time module


def begin() -> bool:
    """Open a batch; returns False when one is already open (the caller must not end it)."""
    if _state.open:
        return False
    _state.open = True
    _state.now = _monotonic()
    return True


def now() -> float:
    """time.monotonic(), read once per event (see the module's docstring)."""
    return _state.now if _state.open else _monotonic()


def end() -> None:
    _state.open = False
    touched = _state.touched
    while touched:
        touched.pop().flush()


@contextmanager
def batch() -> Iterator[None]:
    owner = begin()
    try:
        yield
    finally:
        if owner:
            end()


def write_to(w: Writer, data: bytes) -> None:
    if _state.open:
        pending = w._pending
        if pending is None:
            w._pending = [data]
            _state.touched.append(w)
        else:
            pending.append(data)
    elif w.transport is not None and not w.closed:
        w.transport.write(data)


def writelines_to(w: Writer, parts: list[bytes]) -> None:
    if _state.open:
        pending = w._pending
        if pending is None:
            w._pending = list(parts)
            _state.touched.append(w)
        else:
            pending.extend(parts)
    elif w.transport is not None and not w.closed:
        w.transport.writelines(parts)


def flush_to(w: Writer) -> None:
    pending, w._pending = w._pending, None
    if pending and w.transport is not None and not w.closed:
        if len(pending) == 1:
            w.transport.write(pending[0])
            return
        size = 0
        for part in pending:
            size += len(part)
        if size <= JOIN_MAX:
            # one buffer: over TLS one record (a TLS transport seals each part of
            # writelines on its own, so a head and its body went as two records)
            w.transport.write(b"".join(pending))
        else:
            w.transport.writelines(pending)
