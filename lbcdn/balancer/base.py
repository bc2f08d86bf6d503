"""The base class of every pick policy; the rules every policy keeps are in
lbcdn.balancer.policy.

A base class rather than a Protocol: the pool calls `pick()` and reads `counts_requests` on every
request, and compiled code reaches a base class's methods and attributes through its tables but
a Protocol's by looking their names up.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Policy(Generic[T]):
    # whether started()/finished() must be called for every request (see lbcdn.balancer.policy)
    counts_requests = False

    def pick(self, key: bytes | None = None) -> T | None:
        raise NotImplementedError

    def started(self, target: T) -> None:
        pass

    def finished(self, target: T) -> None:
        pass
