"""Random policies: weighted random, and the power of two random choices.

WeightedRandom draws a point in [0, sum(weights)) and finds its target by bisection over the
cumulative weights: O(log n), O(1) with equal weights. RandomTwoChoices draws two targets that
way (distinct ones when there are two or more) and takes the one with fewer requests in flight
per unit of weight, read live from `in_flight`: nearly as good as least-outstanding at O(log n)
and with no shared state to update (the Envoy and HAProxy default for least-request).
"""

from __future__ import annotations

import itertools
import random
from bisect import bisect_right
from collections.abc import Sequence

from lbcdn.balancer.base import Policy

from lbcdn.balancer.loaded import Loaded, T




class WeightedRandom(Policy[T]):
    def __init__(self, targets: Sequence[T], weights: Sequence[float] | None = None, *,
                 rng: random.Random | None = None) -> None:
        ws = [t.weight for t in targets] if weights is None else list(weights)
        pairs = [(t, w) for t, w in zip(targets, ws) if w > 0]
        self._targets = [t for t, _ in pairs]
        self._weights = [float(w) for _, w in pairs]
        self._cumulative = list(itertools.accumulate(self._weights))
        self._total = self._cumulative[-1] if pairs else 0.0
        self._uniform = len(set(self._weights)) <= 1
        self._rng = rng or random.Random()

    def _index(self) -> int:
        n = len(self._targets)
        if self._uniform:
            return int(self._rng.random() * n)
        i = bisect_right(self._cumulative, self._rng.random() * self._total)
        return min(i, n - 1)  # guards the float edge where the draw equals the total

    def pick(self, key: bytes | None = None) -> T | None:
        if not self._targets:
            return None
        return self._targets[self._index()]



class RandomTwoChoices(WeightedRandom[T]):
    def pick(self, key: bytes | None = None) -> T | None:
        targets = self._targets
        n = len(targets)
        if n <= 1:
            return targets[0] if targets else None
        a = self._index()
        if self._uniform:
            b = int(self._rng.random() * (n - 1))
            b += b >= a
        else:
            b = self._index()
            if b == a:
                b = self._index()  # one redraw: a heavy target may still meet itself
        ta, tb = targets[a], targets[b]
        wa, wb = self._weights[a], self._weights[b]
        # fewer in flight per weight wins; cross-multiplied to avoid dividing
        return tb if tb.in_flight * wa < ta.in_flight * wb else ta
