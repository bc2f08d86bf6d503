"""Passive health (outlier detection): eject a target that keeps failing real requests.

Pure, with `now` passed in. Per target, consecutive 5xx answers and consecutive connect failures
are counted separately (a success resets both); reaching `consecutive_5xx` or
`consecutive_connect_failures` ejects the target for base_ejection_s x (its ejection count),
capped at max_ejection_s. The count falls by one for every base_ejection_s the target then
stays clean, so a target that failed once long ago is not punished forever (Envoy's scheme).
At most max_ejection_percent of the pool is ejected at once, but at least one target may be
ejected, and never the last one that is not ejected: the balancer then has someone to send to.
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
    CONNECT_FAILURE = "connect_failure"


@dataclass(frozen=True)
class Ejection:
    until: float
    count: int       # how many times this target has been ejected (the multiplier)
    cause: Result


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
        if t is None or not cfg.enabled:
            return None
        self._expire(t, now)
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
        if not tripped or t.until is not None:
            return None
        if len(self.ejected(now)) >= self.max_ejected():
            return None  # the cap: keep counting, eject when room frees up
        t.count += 1
        t.c5xx = t.cconn = 0
        t.until = now + min(cfg.base_ejection_s * t.count, cfg.max_ejection_s)
        return Ejection(t.until, t.count, result)
