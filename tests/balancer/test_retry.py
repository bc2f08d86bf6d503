"""Retry decisions and the sliding-window retry budget, with a fake clock."""

from __future__ import annotations

import pytest

from lbcdn.balancer.retry import Failure, Retry, RetryBudget, decide_retry


NO, FREE, BUDGETED = Retry.NO, Retry.FREE, Retry.BUDGETED


@pytest.mark.parametrize("method, failure, started, replayable, done, expected", [
    (b"POST", Failure.CONNECT, False, False, 0, FREE),     # nothing was sent
    (b"POST", Failure.RESET, False, True, 0, NO),          # not idempotent
    (b"GET", Failure.RESET, False, True, 0, BUDGETED),
    (b"PUT", Failure.BAD_GATEWAY, False, True, 0, BUDGETED),
    (b"PUT", Failure.BAD_GATEWAY, False, False, 0, NO),    # body not buffered
    (b"GET", Failure.RESET, True, True, 0, NO),            # a byte reached the client
    (b"GET", Failure.TIMEOUT, False, True, 0, NO),         # never retry timeouts
    (b"GET", Failure.CUT, False, True, 0, NO),             # nor cuts at a deregistration
    (b"GET", Failure.RESET, False, True, 1, NO),           # max reached
    (b"GET", Failure.CONNECT, False, True, 1, FREE),       # connects do not count to max
    (b"POST", Failure.CONNECT, False, True, 5, FREE),
    (b"GET", Failure.CONNECT, True, True, 0, NO),
])
def test_decide_retry(method: bytes, failure: Failure, started: bool, replayable: bool,
                      done: int, expected: Retry) -> None:
    assert decide_retry(method, failure, response_started=started, body_replayable=replayable,
                        retries_done=done, max_retries=1) is expected


def test_budget_is_twenty_percent_of_requests() -> None:
    b = RetryBudget(percent=20, window_s=10, min_retries=0)
    for i in range(100):
        b.request(i * 0.01)
    granted = sum(b.try_retry(1.0) for _ in range(50))
    assert granted == 20
    assert b.allowed(1.0) == 20


def test_min_retries_for_quiet_pools() -> None:
    b = RetryBudget(percent=20, window_s=10, min_retries=3)
    b.request(0.0)
    assert [b.try_retry(0.1) for _ in range(4)] == [True, True, True, False]


def test_window_slides() -> None:
    b = RetryBudget(percent=50, window_s=10, min_retries=0)
    for _ in range(10):
        b.request(0.5)
    assert sum(b.try_retry(0.5) for _ in range(10)) == 5
    assert not b.try_retry(9.9)          # still inside the window
    for _ in range(10):
        b.request(5.5)
    assert sum(b.try_retry(10.5) for _ in range(10)) == 5  # 0.5's requests and retries left
    assert b.allowed(10.5) == 5
    assert b.allowed(100.0) == 0          # a long pause empties everything
    assert not b.try_retry(100.0)


def test_requests_land_in_the_bucket_of_their_time() -> None:
    b = RetryBudget(percent=100, window_s=10, min_retries=0)
    b.request(0.999)   # bucket [0, 1)
    b.request(1.0)     # bucket [1, 2): the newest bucket's time is up
    b.request(1.5)
    assert b.allowed(1.9) == 3
    assert b.allowed(10.5) == 2   # [0, 1) fell out of the window
    assert b.allowed(11.0) == 0
