"""Weighted round robin over a pool's targets.

Smooth weighted round robin (the nginx scheme) spreads a heavy target's turns between the others'
instead of sending its whole share in a row; it is O(n) a pick, so it serves pools of up to
SMOOTH_MAX targets. Larger pools with unequal weights use earliest-deadline-first scheduling on a
heap (each target's next turn is due every 1/weight; Envoy's weighted round robin does the same):
O(log n) a pick, the same shares over every cycle of sum(weights) picks. Equal weights rotate in
O(1). Targets with weight 0 are never picked. `weights` overrides the targets' own (slow start
passes ramped, possibly fractional, weights).

A pool builds a new policy whenever its routable targets or their weights change (a health
transition, every slow-start step); `after`, the policy it replaces, lets the rotation go on
where it was rather than start again at the first target: plain rotation resumes after the
target picked last, and smooth weighted round robin keeps each surviving target's running
credit. Without that, every rebuild would hand the first target an extra turn.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Final, Protocol, TypeVar

from lbcdn.balancer.base import Policy


class Weighted(Protocol):
    @property
    def weight(self) -> int: ...


T = TypeVar("T", bound=Weighted)

SMOOTH_MAX: Final = 64


class RoundRobin(Policy[T]):
    def __init__(self, targets: Sequence[T], weights: Sequence[float] | None = None,
                 after: RoundRobin[T] | None = None) -> None:
        ws = [t.weight for t in targets] if weights is None else list(weights)
        pairs = [(t, w) for t, w in zip(targets, ws) if w > 0]
        self._targets = [t for t, _ in pairs]
        self._weights = [w for _, w in pairs]
        self._current = [0.0] * len(pairs)
        self._total = sum(self._weights)
        self._uniform = len(set(self._weights)) <= 1
        self._next = 0
        if after is not None and after._targets and self._targets:
            self._resume(after)
        # EDF: (deadline, index); a target's k-th turn in a cycle is due at (k + 1) / weight
        self._heap: list[tuple[float, int]] | None = None
        if not self._uniform and len(pairs) > SMOOTH_MAX:
            self._heap = [(1.0 / w, i) for i, w in enumerate(self._weights)]
            heapq.heapify(self._heap)

    def _resume(self, after: RoundRobin[T]) -> None:
        old = after._targets
        last = old[(after._next - 1) % len(old)]
        for i, t in enumerate(self._targets):
            if t is last:
                self._next = (i + 1) % len(self._targets)
                break
        else:
            self._next = after._next % len(self._targets)
        credit = {id(t): c for t, c in zip(old, after._current)}
        self._current = [credit.get(id(t), 0.0) for t in self._targets]

    def pick(self, key: bytes | None = None) -> T | None:
        targets = self._targets
        if not targets:
            return None
        if self._uniform:
            i = self._next
            self._next = (i + 1) % len(targets)
            return targets[i]
        heap = self._heap
        if heap is not None:
            due, i = heap[0]
            heapq.heapreplace(heap, (due + 1.0 / self._weights[i], i))
            return targets[i]
        best = 0
        current = self._current
        for i, w in enumerate(self._weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return targets[best]



WeightedRoundRobin = RoundRobin
