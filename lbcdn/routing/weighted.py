"""Weighted forward to several pools (ALB's forward to weighted target groups), with optional
stickiness (ALB's target group stickiness): which pool a request goes to.

Rules:
- New clients are spread by weight with smooth weighted round robin (nginx's): over any run of
  sum(weights) picks each pool gets exactly its weight, interleaved, so a 90/10 split is 90/10
  after a hundred requests, not only on average. Each worker spreads its own share.
- Weights change at run time (`set_weights`, from a reload or the admin API); the next pick
  uses them. A weight of 0 sends no new clients, and no sticky ones either: setting a canary
  to 0 takes everyone off it at once, as a rollback should.
- Stickiness: the response carries a cookie naming the pool picked (by a digest of its name,
  so it reveals nothing and survives reloads and restarts; one cookie per route). A request
  whose cookie names a pool of this route with a weight above 0 goes there; otherwise it is
  spread and re-pinned. Every answer refreshes the cookie, so the duration counts from the
  client's last request. A client can choose among the route's pools by editing its cookie;
  that is all it can do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from lbcdn.balancer.consistent_hash import cookie_value
from lbcdn.balancer.sticky import target_token
from lbcdn.routing.config import ForwardAction


def cookie_name(route: str) -> bytes:
    """The stickiness cookie of a route: one per route, as ALB's AWSALBTG is per group."""
    digest = hashlib.blake2b(route.encode(), digest_size=4, person=b"lbcdn-route").hexdigest()
    return b"lbcdn-tg-" + digest.encode()


class WeightedForward:
    """The pools of one route's forward action, their weights, and the spreading state."""

    __slots__ = ("route", "pools", "weights", "_current", "_tokens", "cookie", "duration_s")

    def __init__(self, route: str, action: ForwardAction) -> None:
        self.route = route
        self.pools: tuple[str, ...] = tuple(p.pool for p in action.pools)
        self.weights: list[int] = [p.weight for p in action.pools]
        self._current = [0] * len(self.pools)
        self._tokens = {target_token(name): i for i, name in enumerate(self.pools)}
        sticky = action.stickiness
        self.cookie = cookie_name(route) if sticky is not None else None
        self.duration_s = sticky.duration_s if sticky is not None else 0

    def set_weights(self, weights: dict[str, int]) -> None:
        """New weights by pool name (pools not named keep theirs); ValueError names a pool of
        another route, a weight outside 0-999, or a sum of 0."""
        new = list(self.weights)
        for name, weight in weights.items():
            if name not in self.pools:
                raise ValueError(f"pool {name!r} is not one of route {self.route!r}'s "
                                 f"({', '.join(self.pools)})")
            if isinstance(weight, bool) or not isinstance(weight, int) or \
                    not 0 <= weight <= 999:
                raise ValueError(f"weight of {name!r} must be an integer 0-999")
            new[self.pools.index(name)] = weight
        if not sum(new):
            raise ValueError("at least one weight must be above 0")
        self.weights = new
        self._current = [0] * len(self.pools)

    def describe(self) -> dict[str, object]:
        return {"route": self.route, "sticky": self.cookie is not None,
                "pools": [{"pool": p, "weight": w} for p, w in zip(self.pools, self.weights)]}

    def _spread(self) -> int:
        weights = self.weights
        current = self._current
        total = 0
        best = -1
        for i, weight in enumerate(weights):
            if weight:
                current[i] += weight
                total += weight
                if best < 0 or current[i] > current[best]:
                    best = i
        current[best] -= total
        return best

    def pick(self, headers: Sequence[tuple[bytes, bytes]]) -> tuple[str, bytes | None]:
        """(pool name, Set-Cookie value or None) for a request with these headers."""
        if self.cookie is None:
            return self.pools[self._spread()], None
        token = cookie_value(headers, self.cookie)
        index = self._tokens.get(token) if token is not None else None
        if index is None or not self.weights[index]:
            index = self._spread()
            token = target_token(self.pools[index])
        return self.pools[index], b"%s=%s; Max-Age=%d; Path=/; HttpOnly" % (
            self.cookie, token, self.duration_s)
