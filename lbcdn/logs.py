"""The daemon log (stderr) and the access log (one JSON line per request, off the event loop).

Rules of this module:
- `AccessLog.log()` runs on the event loop once per request, so it only appends the caller's
  dict to a deque (atomic under the GIL, no lock, no allocation of its own). A background thread
  encodes to JSON, formats the time and writes; a slow disk or a blocked stdout pipe therefore
  never stalls request handling.
- The queue is bounded: past `max_queue` pending lines new lines are dropped and counted
  (`lbcdn_access_log_dropped_total`), so a writer that cannot keep up costs log lines, not memory
  and not latency.
- The record dict belongs to the access log once passed to `log()`: the caller must not mutate
  it afterwards (it is encoded later, in another thread).
- Control messages (reopen, stop) travel through the same deque as the lines, so lines logged
  before `reopen()` land in the old file and lines logged after it in the new one.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import deque
from typing import IO, Final

from lbcdn.metrics import ACCESS_LOG_DROPPED

log: Final = logging.getLogger("lbcdn.logs")

_LEVELS: Final[dict[str, int]] = {
    "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _UTCFormatter(logging.Formatter):
    """`2024-05-01T12:00:00.123Z WARNING lbcdn.edge message`: UTC so lines from several hosts
    and containers sort together."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return format_time(record.created)

    def format(self, record: logging.LogRecord) -> str:
        # One record, one line, tracebacks included: log collectors split on newlines, and a
        # traceback torn into 20 "records" cannot be filtered by level or logger.
        return super().format(record).replace("\n", "\\n")


_handler: logging.Handler | None = None


def setup_logging(level: str) -> None:
    """Send every log record of the process (lbcdn's, aiohttp's, asyncio's) to stderr, one line
    each, at `level` (debug|info|warning|error). Calling it again replaces the previous setup."""
    global _handler
    try:
        lvl = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}") from None
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(_UTCFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(_handler)
    root.setLevel(lvl)


def format_time(t: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds: `2024-05-01T12:00:00.123Z`."""
    ms = int(t * 1000)
    secs, msec = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{msec:03d}Z"


class LogLimiter:
    """At most one daemon-log line per `interval_s` for each key (say, a listener and a kind of
    client error): a flood of bad requests costs a line every few seconds, not a line each, and
    the line let through says how many were left out before it. Keys are a small fixed set."""
    __slots__ = ("interval_s", "_next", "_held")

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str, now: float) -> int | None:
        """None: stay quiet (the event is counted); else log now, saying that this many were
        held back since the last line."""
        if now < self._next.get(key, 0.0):
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._next[key] = now + self.interval_s
        return self._held.pop(key, 0)


def held_note(held: int) -> str:
    """The suffix of a line that LogLimiter let through after holding others back."""
    return f" ({held} more since the last line)" if held else ""


class _Control:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_REOPEN: Final = _Control("reopen")
_STOP: Final = _Control("stop")

# How long the idle writer sleeps before checking the queue again even without a wake-up; only a
# safety net, wake-ups are not expected to be lost (see AccessLog.log).
_IDLE_WAIT_S: Final = 1.0


class AccessLog:
    """One JSON line per request to a file (appended) or to stdout.

    The data plane passes a dict with: time, client, method, path, status, bytes_in, bytes_out,
    route, target, upstream_time_s, total_time_s, request_id, listener, user_agent. `time` may
    be epoch seconds (a float, cheapest: formatted to ISO 8601 UTC with ms in the writer
    thread) or an already formatted string.

    Lifecycle: `start()` starts the writer thread (lines logged before it are kept, up to the
    bound); `stop()` writes everything still queued, closes the file and joins the thread; it
    blocks for as long as that takes, so call it once at shutdown. `reopen()` is for logrotate:
    after the file was renamed, the writer opens `path` anew.
    """

    def __init__(self, enabled: bool, path: str | None, max_queue: int = 100_000) -> None:
        self.enabled = enabled
        self.path = path
        self.max_queue = max_queue
        self.dropped = 0
        self._queue: deque[dict[str, object] | _Control] = deque()
        self._wake = threading.Event()
        # True while the writer is (about to be) waiting on _wake; see log() for why this is safe.
        self._sleeping = False
        self._worker: threading.Thread | None = None
        self._file: IO[str] | None = None
        self._failing = False

    def log(self, record: dict[str, object]) -> None:
        """Queue one access log line. Never blocks; drops (and counts) when the queue is full."""
        if not self.enabled:
            return
        queue = self._queue
        if len(queue) >= self.max_queue:
            self.dropped += 1
            ACCESS_LOG_DROPPED.inc()
            return
        queue.append(record)
        # Setting an Event takes a lock, so only wake the writer when it sleeps. The writer sets
        # _sleeping before its last look at the queue, so either it sees this record or this
        # line sees _sleeping and wakes it: no wake-up is lost.
        if self._sleeping:
            self._wake.set()

    def start(self) -> None:
        if not self.enabled or self._worker is not None:
            return
        self._open()
        self._worker = threading.Thread(target=self._run, name="lbcdn-access-log", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Write everything queued so far, close the output and end the writer thread."""
        thread = self._worker
        if thread is None:
            return
        self._queue.append(_STOP)
        self._wake.set()
        thread.join()
        self._worker = None
        # Nothing would ever drain the queue again; later log() calls become no-ops.
        self.enabled = False

    def reopen(self) -> None:
        """Reopen the output file (after logrotate renamed it); a no-op for stdout."""
        if self._worker is None:
            return
        self._queue.append(_REOPEN)
        self._wake.set()

    # -- writer thread -------------------------------------------------------------------------

    def _open(self) -> IO[str] | None:
        if self.path is not None:
            # Text append; each batch is one write() and one flush().
            self._file = open(self.path, "a", encoding="utf-8")
        return self._file

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _run(self) -> None:
        queue = self._queue
        lines: list[str] = []
        while True:
            if not queue:
                self._sleeping = True
                if not queue:
                    self._wake.wait(_IDLE_WAIT_S)
                self._sleeping = False
                self._wake.clear()
                continue
            control: _Control | None = None
            # Drain in one batch up to the next control message so a burst costs one write.
            while queue:
                item = queue.popleft()
                if isinstance(item, _Control):
                    control = item
                    break
                lines.append(self._encode(item))
            if lines:
                self._write(lines)
                lines.clear()
            if control is _REOPEN:
                self._reopen_file()
            elif control is _STOP:
                self._close()
                return

    def _encode(self, record: dict[str, object]) -> str:
        t = record.get("time")
        if isinstance(t, float | int) and not isinstance(t, bool):
            record["time"] = format_time(t)
        try:
            return json.dumps(record, separators=(",", ":"), default=str) + "\n"
        except (TypeError, ValueError) as exc:
            # A bad field (e.g. a dict key that is not a string) must cost one line, not the
            # writer thread.
            return json.dumps({"time": record.get("time"), "log_error": str(exc)}) + "\n"

    def _write(self, lines: list[str]) -> None:
        try:
            # stdout is looked up per batch, not kept: tests and embedders may swap sys.stdout.
            # A file that failed to open is retried here, never replaced by stdout.
            out = sys.stdout if self.path is None else (self._file or self._open())
            assert out is not None
            out.write("".join(lines))
            out.flush()
        except (OSError, ValueError) as exc:
            # Disk full, file gone, stdout closed: lose these lines, say so once in the daemon
            # log (not once per batch, which could be thousands a second), and keep going.
            if not self._failing:
                log.error("access log write failed, dropping lines until it works again: %s",
                          exc)
            self._failing = True
            self.dropped += len(lines)
            ACCESS_LOG_DROPPED.inc(len(lines))
        else:
            if self._failing:
                log.warning("access log writes work again")
            self._failing = False

    def _reopen_file(self) -> None:
        if self.path is None:
            return
        self._close()
        try:
            self._open()
        except OSError as exc:
            # _write() retries the open with each batch.
            log.error("access log reopen of %s failed: %s", self.path, exc)
