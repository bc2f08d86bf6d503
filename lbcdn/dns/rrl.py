"""Response rate limiting (RRL) for UDP answers, per client network prefix.

Job: decide, for one UDP query from one address, whether to answer it, drop it, or "slip" it
(answer with an empty truncated response, TC=1, so a real client retries over TCP while a
spoofed-source reflection attack gains nothing). Like Knot's `rate-limit` / `rate-limit-slip`
and BIND's `responses-per-second` / `slip`, simplified to one bucket per client prefix.

Rules:
- Pure: the caller passes the address; time comes from the injected clock. No sockets.
- Clients are grouped by prefix: IPv4 /24, IPv6 /56 (configurable), so one host cannot dodge the
  limit by cycling through addresses of its own network.
- Token bucket per prefix: `responses_per_s` tokens per second, at most `burst` banked. An answer
  costs one token; with no token the answer is dropped, except that every `slip`-th dropped
  answer is sent truncated instead (slip 0: never; slip 1: every one).
- Memory is bounded: at most `max_tracked` prefixes; when full, buckets that have refilled
  completely (they behave exactly like a fresh one) are forgotten first, then the whole table.
- TCP is never limited (a TCP client has proven its address).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from enum import Enum


class Verdict(Enum):
    ANSWER = "answer"
    DROP = "drop"
    SLIP = "slip"


class _Bucket:
    __slots__ = ("tokens", "last", "dropped")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last
        self.dropped = 0


class RateLimiter:
    def __init__(self, *, responses_per_s: float, clock: Callable[[], float],
                 burst: float | None = None, slip: int = 2, ipv4_prefix: int = 24,
                 ipv6_prefix: int = 56, max_tracked: int = 100_000) -> None:
        if responses_per_s <= 0:
            raise ValueError("responses_per_s must be > 0")
        if slip < 0:
            raise ValueError("slip must be >= 0")
        if not 0 <= ipv4_prefix <= 32 or not 0 <= ipv6_prefix <= 128:
            raise ValueError("prefix length out of range")
        self.rate = float(responses_per_s)
        self.burst = float(burst) if burst is not None else self.rate
        if self.burst < 1:
            raise ValueError("burst must be >= 1")
        self.slip = slip
        self.clock = clock
        self.ipv4_prefix = ipv4_prefix
        self.ipv6_prefix = ipv6_prefix
        self.max_tracked = max_tracked
        self._buckets: dict[bytes, _Bucket] = {}
        self.dropped = 0
        self.slipped = 0

    def prefix(self, address: str) -> bytes:
        """The bucket key of a client address: its network prefix, packed."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return address.encode()
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if isinstance(ip, ipaddress.IPv4Address):
            bits, plen = int(ip), self.ipv4_prefix
            return b"4" + ((bits >> (32 - plen)) << (32 - plen)).to_bytes(4, "big")
        bits, plen = int(ip), self.ipv6_prefix
        return b"6" + ((bits >> (128 - plen)) << (128 - plen)).to_bytes(16, "big")

    def check(self, address: str) -> Verdict:
        now = self.clock()
        key = self.prefix(address)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_tracked:
                self._evict(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            elapsed = now - bucket.last
            if elapsed > 0:
                bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.last = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return Verdict.ANSWER
        bucket.dropped += 1
        if self.slip and bucket.dropped % self.slip == 0:
            self.slipped += 1
            return Verdict.SLIP
        self.dropped += 1
        return Verdict.DROP

    def tracked(self) -> int:
        return len(self._buckets)

    def _evict(self, now: float) -> None:
        full = [k for k, b in self._buckets.items()
                if b.tokens + (now - b.last) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_tracked:
            self._buckets.clear()


def truncated_response(query: bytes) -> bytes | None:
    """The slip answer to a standard query: its header and question only, QR and TC set, no
    records. None when the query is not a plain one-question query (then it is just dropped)."""
    if len(query) < 17 or query[2] & 0x80 or (query[2] >> 3) & 0x0F != 0:
        return None
    if query[4:6] != b"\x00\x01":
        return None
    i = 12
    n = len(query)
    while i < n:
        length = query[i]
        if length == 0:
            end = i + 5
            if end > n:
                return None
            # QR=1, keep opcode and RD, set TC; clear AA/Z/AD/CD and rcode NOERROR.
            flags1 = 0x80 | (query[2] & 0x79) | 0x02
            header = query[:2] + bytes((flags1, 0)) + b"\x00\x01\x00\x00\x00\x00\x00\x00"
            return header + query[12:end]
        if length & 0xC0:
            return None
        i += length + 1
    return None
