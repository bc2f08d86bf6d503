"""Sticky sessions with a load-balancer cookie (ALB's duration-based stickiness).

The cookie's value names a target by a digest of its key: stable across workers and restarts,
and it does not reveal backend addresses. A request whose cookie names a target that can take
traffic goes there; otherwise (no cookie, unknown or gone target, unhealthy, draining) the inner
policy picks, and the cookie is re-pinned to that pick. Every answer refreshes the cookie, so the
duration counts from the client's last request (as ALB does). O(1) plus the inner pick.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Keyed(Protocol):
    @property
    def key(self) -> str: ...


T = TypeVar("T", bound=Keyed)
T_co = TypeVar("T_co", covariant=True)


class Inner(Protocol[T_co]):
    def pick(self, key: bytes | None = None) -> T_co | None: ...


def target_token(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=8, person=b"lbcdn-sticky").hexdigest().encode()


@dataclass(frozen=True)
class StickyPick(Generic[T]):
    target: T
    cookie: bytes          # the cookie value to set on the response
    repinned: bool         # the request had no valid pin; a new one was chosen


class StickySessions(Generic[T]):
    """`targets`: those that may take traffic now; `inner`: the pool's policy over them."""

    def __init__(self, targets: Sequence[T], inner: Inner[T], *, cookie_name: str,
                 duration_s: float) -> None:
        self._by_token = {target_token(t.key): t for t in targets}
        self._token = {id(t): tok for tok, t in self._by_token.items()}
        self._inner = inner
        self.cookie_name = cookie_name.encode()
        self.duration_s = duration_s

    def pick(self, cookie: bytes | None, key: bytes | None = None) -> StickyPick[T] | None:
        if cookie is not None:
            pinned = self._by_token.get(cookie)
            if pinned is not None:
                return StickyPick(pinned, cookie, False)
        picked = self._inner.pick(key)
        if picked is None:
            return None
        token = self._token.get(id(picked))
        if token is None:  # the inner policy was built over other targets: pin by key
            token = target_token(picked.key)
        return StickyPick(picked, token, True)

    def set_cookie(self, value: bytes) -> bytes:
        """The Set-Cookie header value for `value`."""
        return b"%s=%s; Max-Age=%d; Path=/; HttpOnly" % (self.cookie_name, value,
                                                        int(self.duration_s))
