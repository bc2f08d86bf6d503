"""Retries: whether a failed attempt may be tried again, and the budget that bounds them.

Pure. The rules (issue 3, after ALB, Envoy and nginx's proxy_next_upstream):
- a failed connect (refused, unreachable, timed out, TLS failed) sent nothing: retried for any
  method, on every other target if need be, outside `max` and the budget (FREE): no target can
  do the work twice, so there is nothing for a budget to bound, and a target that refuses must
  cost clients nothing (issue 13). The caller bounds it by the targets not yet tried;
- a reset or a 502-class failure (the upstream closed or answered garbage) is retried only for
  idempotent methods, only when no response byte reached the client, and only when the request
  body (if any) can be replayed: it was buffered whole, within buffer_body_max_bytes;
- response timeouts are not retried: the upstream may still be working on it, and retrying
  slow requests is how an overload spreads; nor are requests cut at the end of a target's
  deregistration delay (ALB answers them 502 too);
- those (BUDGETED) are at most `max` a request, and the pool's RetryBudget must allow each one.

RetryBudget keeps counts of first attempts and retries in a sliding window of 10 buckets and
allows a retry while retries stay within `percent` of requests (or under `min_retries`, so a
quiet pool can still retry at all). O(1) a call; `request` (once per request) only adds to the
newest bucket until that bucket's time is up.
"""

from __future__ import annotations

import enum
import math
from typing import Final

IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class Failure(enum.StrEnum):
    CONNECT = "connect"        # refused or timed out connecting: nothing was sent
    RESET = "reset"            # connection reset or closed before the response head
    BAD_GATEWAY = "bad_gateway"  # a malformed response head
    TIMEOUT = "timeout"        # no response head in time
    CUT = "cut"                # the edge closed it: the target's deregistration delay ran out


class Retry(enum.Enum):
    NO = 0
    FREE = 1      # nothing was sent: retry without asking the budget
    BUDGETED = 2  # the target may have acted on it: only if the budget allows


def decide_retry(method: bytes, failure: Failure, *, response_started: bool,
                 body_replayable: bool, retries_done: int, max_retries: int) -> Retry:
    """May this failed attempt be tried again on another target, and does that need the
    budget? `retries_done` counts the budgeted retries of this request so far."""
    if response_started:
        return Retry.NO
    if failure is Failure.CONNECT:
        return Retry.FREE
    if retries_done >= max_retries or failure is Failure.TIMEOUT or failure is Failure.CUT:
        return Retry.NO
    return Retry.BUDGETED if method in IDEMPOTENT and body_replayable else Retry.NO


class RetryBudget:
    BUCKETS = 10

    def __init__(self, percent: float = 20.0, window_s: float = 10.0,
                 min_retries: int = 3) -> None:
        self.percent = percent
        self.min_retries = min_retries
        self._width = window_s / self.BUCKETS
        self._requests = [0] * self.BUCKETS
        self._retries = [0] * self.BUCKETS
        self._epoch: int | None = None  # index of the newest bucket, in bucket widths
        self._bucket = 0                # its slot in the lists
        self._bucket_end = -math.inf    # when the newest bucket's time is up
        self._total_requests = 0
        self._total_retries = 0

    def _advance(self, now: float) -> int:
        if now < self._bucket_end:
            return self._bucket
        epoch = math.floor(now / self._width)
        last = self._epoch
        if last is None:
            self._epoch = epoch
        elif epoch > last:
            # clear the buckets that fell out of the window (all of them after a long pause)
            for e in range(last + 1, min(epoch, last + self.BUCKETS) + 1):
                b = e % self.BUCKETS
                self._total_requests -= self._requests[b]
                self._total_retries -= self._retries[b]
                self._requests[b] = self._retries[b] = 0
            self._epoch = epoch
        newest = self._epoch or 0
        self._bucket = newest % self.BUCKETS
        self._bucket_end = (newest + 1) * self._width
        return self._bucket

    def request(self, now: float) -> None:
        """A first attempt was sent."""
        b = self._bucket if now < self._bucket_end else self._advance(now)
        self._requests[b] += 1
        self._total_requests += 1

    def allowed(self, now: float) -> int:
        self._advance(now)
        return max(self.min_retries, int(self._total_requests * self.percent / 100))

    def try_retry(self, now: float) -> bool:
        """Take one retry from the budget; False when it is spent."""
        b = self._advance(now)
        if self._total_retries >= max(self.min_retries,
                                      int(self._total_requests * self.percent / 100)):
            return False
        self._retries[b] += 1
        self._total_retries += 1
        return True
