"""Weighted round robin over a pool's targets.

Smooth weighted round robin (the nginx scheme) spreads a heavy target's turns between the others'
instead of sending its whole share in a row. A pick is O(n) in the number of targets with a weight,
which is fine at the sizes of this issue; the pools issue brings O(log n) policies. Targets with
weight 0 are never picked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar


class Weighted(Protocol):
    @property
    def weight(self) -> int: ...


T = TypeVar("T", bound=Weighted)


class RoundRobin(Generic[T]):
    def __init__(self, targets: Sequence[T]) -> None:
        self._targets = [t for t in targets if t.weight > 0]
        self._current = [0] * len(self._targets)
        self._total = sum(t.weight for t in self._targets)
        self._uniform = len({t.weight for t in self._targets}) <= 1
        self._next = 0

    def pick(self) -> T | None:
        targets = self._targets
        if not targets:
            return None
        if self._uniform:
            i = self._next
            self._next = (i + 1) % len(targets)
            return targets[i]
        best = 0
        current = self._current
        for i, t in enumerate(targets):
            current[i] += t.weight
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return targets[best]
