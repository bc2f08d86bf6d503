"""Passive health (outlier detection): eject a target that keeps failing real requests.

Pure, with `now` passed in. Per target, consecutive 5xx answers and consecutive connection
failures (resets before a response head; failed connects too when they do not eject at once,
below) are counted separately (a success resets both); reaching `consecutive_5xx` or
`consecutive_connect_failures` ejects the target for base_ejection_s x (its ejection count),
capped at max_ejection_s. The count falls by one for every base_ejection_s the target then
stays clean, so a target that failed once long ago is not punished forever (Envoy's scheme).
At most max_ejection_percent of the pool is ejected at once, but at least one target may be
ejected, and never the last one that is not ejected: the balancer then has someone to send to.

A failed connect is different: nothing reached the target, and it says the target cannot take
requests now (refused, unreachable, timed out, TLS failed), not that it is statistically worse.
So, unless `connect_failure_ejection_s` is 0, the first one ejects the target at once, even with
outlier detection off and without the share cap, for connect_failure_ejection_s x 2^(ejections
- 1) up to max_ejection_s (the same ejection count and decay); failed connects while it is out
(requests that were already connecting) do not lengthen it. When it ends, real traffic tries
the target again; the caller retries a failed connect on another target, so the try costs the
client nothing but the connect. The routing still falls back to ejected targets when every
serving one is out (lbcdn.health.state.routable).

A stalled target (stopped, deadlocked: its kernel still accepts, nobody answers) holds what it
was sent until the response timeout, and round robin keeps sending it every n-th request until
the health checks notice. `stalled()` says when to stop that sooner: a request has waited
`stalled_after_s` for its response head, the target has answered nobody for as long, and another
target has answered since that request was sent (so a pool whose requests are all slow is left
alone; every client may be waiting on the stalled target by then, so "recently" would not do).
Such a target is ejected as by outlier detection (base_ejection_s x count, within the share
cap), even when `enabled` is false. The requests it holds are not retried: it may still act on
them. A target that turns healthy again (active checks) is reinstated: `reinstate()`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from lbcdn.health.config import OutlierConfig


class Result(enum.StrEnum):
    SUCCESS = "success"
    HTTP_5XX = "5xx"
    CONNECT_FAILURE = "connect_failure"  # the connect failed: the request was not sent
    RESET = "reset"  # the connection broke before a response head (counted as connect failures)
    STALLED = "stalled"  # see `stalled()`


@dataclass(frozen=True)
class Ejection:
    until: float
    count: int       # how many times this target has been ejected (the multiplier)
    cause: Result    # HTTP_5XX, CONNECT_FAILURE (consecutive resets eject as it) or STALLED


class _Track:
    __slots__ = ("c5xx", "cconn", "count", "until", "clean_since")

    def __init__(self) -> None:
        self.c5xx = 0
        self.cconn = 0
        self.count = 0
        self.until: float | None = None
        self.clean_since = 0.0


K = TypeVar("K", bound=Hashable)


class OutlierDetector(Generic[K]):
    def __init__(self, config: OutlierConfig) -> None:
        self.config = config
        self._tracks: dict[K, _Track] = {}

    def add(self, key: K) -> None:
        self._tracks.setdefault(key, _Track())

    def remove(self, key: K) -> None:
        self._tracks.pop(key, None)

    def reinstate(self, key: K) -> None:
        """The target passed its health checks again: end its ejection and forget the count
        (passive health only decides until active checks have a say)."""
        t = self._tracks.get(key)
        if t is not None:
            t.until = None
            t.count = t.c5xx = t.cconn = 0

    def _expire(self, t: _Track, now: float) -> None:
        if t.until is not None and now >= t.until:
            t.clean_since = t.until
            t.until = None
        if t.until is None and t.count:
            base = self.config.base_ejection_s
            steps = math.floor((now - t.clean_since) / base)
            if steps > 0:
                t.count = max(0, t.count - steps)
                t.clean_since += steps * base

    def is_ejected(self, key: K, now: float) -> bool:
        t = self._tracks.get(key)
        if t is None:
            return False
        self._expire(t, now)
        return t.until is not None

    def ejected(self, now: float) -> list[K]:
        return [k for k in self._tracks if self.is_ejected(k, now)]

    def max_ejected(self) -> int:
        n = len(self._tracks)
        if n <= 1:
            return 0
        return min(n - 1, max(1, math.floor(n * self.config.max_ejection_percent / 100)))

    def record(self, key: K, result: Result, now: float) -> Ejection | None:
        """One request's outcome on `key`; an Ejection when this one ejects the target."""
        cfg = self.config
        t = self._tracks.get(key)
        if t is None:
            return None
        if result is Result.CONNECT_FAILURE and cfg.connect_failure_ejection_s > 0:
            return self._connect_failed(t, now)
        self._expire(t, now)
        if result is Result.STALLED:
            return self._eject(t, now, result)
        if not cfg.enabled:
            return None
        if result is Result.SUCCESS:
            t.c5xx = t.cconn = 0
            return None
        if result is Result.HTTP_5XX:
            t.c5xx += 1
            tripped = cfg.consecutive_5xx > 0 and t.c5xx >= cfg.consecutive_5xx
        else:
            t.cconn += 1
            tripped = (cfg.consecutive_connect_failures > 0
                       and t.cconn >= cfg.consecutive_connect_failures)
        if not tripped:
            return None
        return self._eject(t, now, Result.HTTP_5XX if result is Result.HTTP_5XX
                           else Result.CONNECT_FAILURE)

    def _eject(self, t: _Track, now: float, cause: Result) -> Ejection | None:
        if t.until is not None:
            return None
        if len(self.ejected(now)) >= self.max_ejected():
            return None  # the cap: keep counting, eject when room frees up
        cfg = self.config
        t.count += 1
        t.c5xx = t.cconn = 0
        t.until = now + min(cfg.base_ejection_s * t.count, cfg.max_ejection_s)
        return Ejection(t.until, t.count, cause)

    def _connect_failed(self, t: _Track, now: float) -> Ejection | None:
        self._expire(t, now)
        if t.until is not None:
            return None  # already out: attempts that were connecting when it failed
        cfg = self.config
        t.count += 1
        t.c5xx = t.cconn = 0
        # the exponent is capped only so that a target failing for weeks cannot overflow
        backoff = cfg.connect_failure_ejection_s * 2.0 ** min(t.count - 1, 40)
        t.until = now + min(backoff, cfg.max_ejection_s)
        return Ejection(t.until, t.count, Result.CONNECT_FAILURE)


def stalled(waiting_s: float, silent_s: float, others_silent_s: float, after_s: float) -> bool:
    """Is a target stalled? `waiting_s`: how long its oldest request has waited for a response
    head; `silent_s`: since its last response head; `others_silent_s`: since the last response
    head of any other target of the pool; `after_s`: the threshold (0: never)."""
    return (after_s > 0 and waiting_s >= after_s and silent_s >= after_s
            and others_silent_s < waiting_s)
