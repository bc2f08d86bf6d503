"""HeadGuard: the edge's request-head limits for a connection that another parser serves.

The control process's listeners are aiohttp servers (lbcdn.aiolistener). aiohttp bounds single
lines and the header count, but not a head in all, nor how long it may take to arrive. The guard
sees every byte of the connection before aiohttp does, follows the message boundaries with its
own llhttp parser (httptools, as the edge), and says what the edge would: 414 for a long
request line, 431 for a long header line, too many headers or too large a head, 400 for bytes
that are no HTTP/1.1, and which timeout applies now (head, body, or none between requests).

No I/O and no clock: the caller feeds bytes, asks `phase`, and arms its own timers.
An Upgrade (or CONNECT) request is served by aiohttp as a declined upgrade; the guard starts
over after its head, so a body sent with one is read as the next head (and most likely 400).
"""

from __future__ import annotations

from typing import Final

import httptools

from lbcdn.configkit.limits import HttpLimitsConfig
from lbcdn.http.errors import HttpError
from lbcdn.http.head import HeadLimits

IDLE: Final = 0   # between requests (or before the first byte)
HEAD: Final = 1   # a request head is arriving
BODY: Final = 2   # a request body is arriving


class HeadGuard:
    def __init__(self, limits: HttpLimitsConfig) -> None:
        self.limits = HeadLimits(limits.max_request_line_bytes, limits.max_header_bytes,
                                 limits.max_headers_total_bytes, limits.max_header_count)
        self.phase = IDLE
        self.heads = 0          # complete request heads seen
        self._parser = self._new_parser()
        self._head_bytes = 0
        self._url_len = 0
        self._headers_len = 0
        self._header_count = 0
        self._error: HttpError | None = None

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        parser.set_dangerous_leniencies(lenient_version=True)  # as the edge: versions are ours
        return parser

    def feed(self, data: bytes) -> HttpError | None:
        """Take the next bytes read; the error to answer (then close), or None."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._parser = self._new_parser()
            self.phase = IDLE
            return self.feed(data[exc.args[0]:]) if exc.args[0] < len(data) else None
        except httptools.HttpParserError as exc:
            return self._error or HttpError(
                400, f"malformed request ({str(exc).strip() or 'bad syntax'})")
        if self.phase == HEAD:
            # a line still arriving is not seen by the callbacks: count its bytes here
            self._head_bytes += len(data)
            return self.limits.head_error(self._head_bytes)
        return None

    # -- httptools callbacks --------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.phase = HEAD
        self._head_bytes = self._url_len = self._headers_len = self._header_count = 0

    def on_url(self, url: bytes) -> None:
        self._url_len += len(url)
        err = self.limits.url_error(self._url_len)
        if err is not None:
            self._error = err
            raise err

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 4
        self._headers_len += size
        self._header_count += 1
        err = self.limits.header_error(size, self._headers_len, self._header_count)
        if err is not None:
            self._error = err
            raise err

    def on_headers_complete(self) -> None:
        self.heads += 1
        self.phase = BODY

    def on_message_complete(self) -> None:
        self.phase = IDLE
