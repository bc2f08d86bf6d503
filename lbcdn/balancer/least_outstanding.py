"""Least outstanding requests: the target with the fewest requests in flight per unit of weight.

Equal weights (the usual case, and all ALB offers): targets sit in buckets by in-flight count,
each bucket an OrderedDict; a pick takes the first target of the lowest non-empty
bucket and moves it to the back, so equally loaded targets take turns; `started` / `finished`
move one target to the next bucket. All O(1).

Unequal weights: an indexed binary heap keyed by (in_flight / weight, last pick), with the same
turn-taking among equals; O(log n) an operation.

Counts start from each target's `in_flight` when the policy is built, so a rebuild (a health
change) keeps the picture of what is in flight.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from lbcdn.balancer.base import Policy
from lbcdn.balancer.loaded import Loaded, T


def least_outstanding(targets: Sequence[T], weights: Sequence[float] | None = None
                      ) -> LeastOutstanding[T]:
    """The structure that suits the weights: buckets when they are equal, else a heap."""
    ws = [t.weight for t in targets] if weights is None else list(weights)
    if len({w for w in ws if w > 0}) <= 1:
        return _Buckets(targets, weights)
    return _Heap(targets, weights)


class LeastOutstanding(Policy[T]):
    """Picks the least loaded target; build one with `least_outstanding(targets, weights)`."""

    counts_requests = True

    def outstanding(self, target: T) -> int:
        raise NotImplementedError


class _Buckets(LeastOutstanding[T]):
    def __init__(self, targets: Sequence[T], weights: Sequence[float] | None = None) -> None:
        ws = [t.weight for t in targets] if weights is None else list(weights)
        self._targets = [t for t, w in zip(targets, ws) if w > 0]
        self._index = {id(t): i for i, t in enumerate(self._targets)}
        self._count = [max(0, t.in_flight) for t in self._targets]
        # OrderedDict, not dict: deleting from a dict's front leaves dead slots that every
        # `next(iter())` would scan past until the next resize
        self._buckets: list[OrderedDict[int, None]] = [
            OrderedDict() for _ in range(max(self._count, default=0) + 1)]
        for i, c in enumerate(self._count):
            self._buckets[c][i] = None
        self._min = min(self._count, default=0)

    def pick(self, key: bytes | None = None) -> T | None:
        if not self._targets:
            return None
        bucket = self._buckets[self._min]
        i = next(iter(bucket))
        bucket.move_to_end(i)  # the next pick of this load takes another target
        return self._targets[i]

    def started(self, target: T) -> None:
        i = self._index.get(id(target))
        if i is None:
            return
        c = self._count[i]
        self._count[i] = c + 1
        buckets = self._buckets
        del buckets[c][i]
        if c + 1 == len(buckets):
            buckets.append(OrderedDict())
        buckets[c + 1][i] = None
        if c == self._min and not buckets[c]:
            self._min = c + 1

    def finished(self, target: T) -> None:
        i = self._index.get(id(target))
        if i is None or self._count[i] == 0:
            return
        c = self._count[i]
        self._count[i] = c - 1
        del self._buckets[c][i]
        self._buckets[c - 1][i] = None
        if c - 1 < self._min:
            self._min = c - 1

    def outstanding(self, target: T) -> int:
        return self._count[self._index[id(target)]]


class _Heap(LeastOutstanding[T]):
    def __init__(self, targets: Sequence[T], weights: Sequence[float] | None = None) -> None:
        ws = [t.weight for t in targets] if weights is None else list(weights)
        pairs = [(t, w) for t, w in zip(targets, ws) if w > 0]
        self._targets = [t for t, _ in pairs]
        self._inv = [1.0 / w for _, w in pairs]
        self._count = [max(0, t.in_flight) for t, _ in pairs]
        self._index = {id(t): i for i, t in enumerate(self._targets)}
        # each target's key is (load, last pick), kept as two lists of native numbers rather
        # than tuples (compared field by field in compiled code, not as objects); initial ties
        # break in target order
        self._load = [c * inv for c, inv in zip(self._count, self._inv)]
        self._seq = list(range(len(pairs)))
        self._clock = len(pairs)
        self._heap = sorted(range(len(pairs)), key=lambda i: (self._load[i], i))
        self._pos = [0] * len(pairs)
        for p, i in enumerate(self._heap):
            self._pos[i] = p

    def _up(self, p: int) -> None:
        # moves the hole up instead of swapping: one write per level
        heap, pos, load, seq = self._heap, self._pos, self._load, self._seq
        i = heap[p]
        li, si = load[i], seq[i]
        while p > 0:
            parent = (p - 1) >> 1
            j = heap[parent]
            lj = load[j]
            if not (li < lj or (li == lj and si < seq[j])):
                break
            heap[p] = j
            pos[j] = p
            p = parent
        heap[p] = i
        pos[i] = p

    def _down(self, p: int) -> None:
        heap, pos, load, seq = self._heap, self._pos, self._load, self._seq
        n = len(heap)
        i = heap[p]
        li, si = load[i], seq[i]
        while True:
            child = 2 * p + 1
            if child >= n:
                break
            c = heap[child]
            lc = load[c]
            if child + 1 < n:
                d = heap[child + 1]
                ld = load[d]
                if ld < lc or (ld == lc and seq[d] < seq[c]):
                    child += 1
                    c, lc = d, ld
            if not (lc < li or (lc == li and seq[c] < si)):
                break
            heap[p] = c
            pos[c] = p
            p = child
        heap[p] = i
        pos[i] = p

    def pick(self, key: bytes | None = None) -> T | None:
        if not self._heap:
            return None
        i = self._heap[0]
        self._seq[i] = self._clock  # behind its equals
        self._clock += 1
        self._down(0)
        return self._targets[i]

    def started(self, target: T) -> None:
        i = self._index.get(id(target))
        if i is not None:
            c = self._count[i] = self._count[i] + 1
            self._load[i] = c * self._inv[i]
            self._down(self._pos[i])

    def finished(self, target: T) -> None:
        i = self._index.get(id(target))
        if i is not None and self._count[i] > 0:
            c = self._count[i] = self._count[i] - 1
            self._load[i] = c * self._inv[i]
            self._up(self._pos[i])

    def outstanding(self, target: T) -> int:
        return self._count[self._index[id(target)]]
