"""Consistent hashing on a ring with virtual nodes, and what a request's hash key is.

Each target owns `vnodes x weight` points on a 64-bit ring; a key goes to the owner of the first
point at or after the key's hash (a jump table on the top 16 bits, then bisection: O(log n)).
A target's points derive only from its own `key` (a generator seeded with it), so every worker
and every restart builds the same ring,
and adding or removing a target moves only the keys on its own arcs: about 1/n of them. The ring
is capped at MAX_POINTS (fewer points per target in very large pools: 26 each at 10,000
targets, so shares there vary by about +-20%); building the ring for 10,000 targets takes a
few hundred milliseconds, so a pool that large should rebuild it off the hot path.

A request without a hash key (no such header or cookie) is balanced round robin.
"""

from __future__ import annotations

import hashlib
import random
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol, TypeVar

from lbcdn.balancer.base import Policy

MAX_POINTS: Final = 1 << 18
JUMP_SIZE: Final = 1 << 16


class Keyed(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def weight(self) -> int: ...


T = TypeVar("T", bound=Keyed)


def hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class ConsistentHash(Policy[T]):
    def __init__(self, targets: Sequence[T], weights: Sequence[float] | None = None, *,
                 vnodes: int = 100, max_points: int = MAX_POINTS) -> None:
        ws = [t.weight for t in targets] if weights is None else list(weights)
        pairs = [(t, w) for t, w in zip(targets, ws) if w > 0]
        self._targets = [t for t, _ in pairs]
        wanted = sum(vnodes * w for _, w in pairs)
        scale = min(1.0, max_points / wanted) if wanted else 1.0
        # each point packed as (hash << 32 | owner) so one sort of plain ints orders the ring
        packed: list[int] = []
        for i, (t, w) in enumerate(pairs):
            bits = random.Random(t.key).getrandbits  # seeded from a str: sha512-based
            packed.extend((bits(64) << 32) | i for _ in range(max(1, round(vnodes * w * scale))))
        packed.sort()
        # an array of machine words: 8 bytes a point, cache-friendly to bisect
        self._hashes = array("Q", [p >> 32 for p in packed])
        self._owners = array("I", [p & 0xFFFFFFFF for p in packed])
        # _jump[b]: the first point whose top 16 bits are >= b, so a lookup bisects only the
        # few points of one 1/65536th of the ring (cheap at any ring size)
        jump = array("I", bytes(4 * (JUMP_SIZE + 1)))
        b = 0
        for idx, h in enumerate(self._hashes):
            top = h >> 48
            while b <= top:
                jump[b] = idx
                b += 1
        while b <= JUMP_SIZE:
            jump[b] = len(self._hashes)
            b += 1
        self._jump = jump
        self._next = 0

    def pick(self, key: bytes | None = None) -> T | None:
        targets = self._targets
        if not targets:
            return None
        if key is None:
            i = self._next
            self._next = (i + 1) % len(targets)
            return targets[i]
        h = hash64(key)
        top = h >> 48
        p = bisect_left(self._hashes, h, self._jump[top], self._jump[top + 1])
        return targets[self._owners[p if p < len(self._owners) else 0]]



@dataclass(frozen=True)
class HashKey:
    """A parsed `balance.hash_key`: client_ip, path, header:NAME or cookie:NAME."""
    kind: Literal["client_ip", "path", "header", "cookie"]
    name: bytes = b""  # lower-cased header name, or the cookie name as written

    @classmethod
    def parse(cls, text: str) -> HashKey:
        if text in ("client_ip", "path"):
            return cls(text)  # type: ignore[arg-type]
        kind, _, name = text.partition(":")
        if kind == "header" and name:
            return cls("header", name.lower().encode())
        if kind == "cookie" and name:
            return cls("cookie", name.encode())
        raise ValueError(f"hash_key must be client_ip, path, header:NAME or cookie:NAME; "
                         f"got {text!r}")

    def extract(self, *, client_ip: bytes, path: bytes,
                headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
        """The request's key, or None when its header or cookie is missing. `headers`:
        (name, value) pairs, names in any case."""
        if self.kind == "client_ip":
            return client_ip
        if self.kind == "path":
            return path
        if self.kind == "header":
            for name, value in headers:
                if name.lower() == self.name:
                    return value
            return None
        return cookie_value(headers, self.name)


def cookie_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of cookie `name` in the request's Cookie headers."""
    for hname, value in headers:
        if hname.lower() != b"cookie":
            continue
        for pair in value.split(b";"):
            k, eq, v = pair.strip().partition(b"=")
            if eq and k == name:
                return v.strip().strip(b'"')
    return None
