"""Consistent hash: the same key sticks, shares follow weights, and changing the targets moves
only the keys it must (measured), the same ring in every process; hash key extraction."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from lbcdn.balancer.consistent_hash import MAX_POINTS, ConsistentHash, HashKey, cookie_value


@dataclass(eq=False)
class T:
    key: str
    weight: int = 1
    in_flight: int = 0


KEYS = [f"user-{i}".encode() for i in range(20000)]


def owners(ch: ConsistentHash[T]) -> dict[bytes, str]:
    return {k: ch.pick(k).key for k in KEYS}  # type: ignore[union-attr]


def test_same_key_same_target_and_rebuild_is_identical() -> None:
    ts = [T(f"10.0.0.{i}:80") for i in range(5)]
    a, b = ConsistentHash(ts), ConsistentHash(list(reversed(ts)))
    assert owners(a) == owners(b)


def test_removing_a_target_moves_only_its_keys() -> None:
    ts = [T(f"10.0.0.{i}:80") for i in range(10)]
    before = owners(ConsistentHash(ts))
    after = owners(ConsistentHash(ts[:3] + ts[4:]))
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(before[k] == ts[3].key for k in moved)        # nobody else's key moved
    assert len(moved) == sum(1 for v in before.values() if v == ts[3].key)
    assert 0.06 < len(moved) / len(KEYS) < 0.14               # about 1/10


def test_adding_a_target_moves_keys_only_to_it() -> None:
    ts = [T(f"10.0.0.{i}:80") for i in range(10)]
    before = owners(ConsistentHash(ts))
    after = owners(ConsistentHash(ts + [T("10.0.0.99:80")]))
    moved = [k for k in KEYS if before[k] != after[k]]
    assert {after[k] for k in moved} == {"10.0.0.99:80"}
    assert 0.05 < len(moved) / len(KEYS) < 0.14               # about 1/11


def test_shares_follow_weights() -> None:
    ts = [T("a:1", 1), T("b:1", 3), T("off:1", 0)]
    counts = Counter(owners(ConsistentHash(ts)).values())
    assert "off:1" not in counts
    assert 0.18 < counts["a:1"] / len(KEYS) < 0.32


def test_no_key_falls_back_to_rotation_and_empty_is_none() -> None:
    ts = [T("a:1"), T("b:1")]
    ch = ConsistentHash(ts)
    assert [ch.pick(None).key for _ in range(4)] == ["a:1", "b:1", "a:1", "b:1"]  # type: ignore[union-attr]
    assert ConsistentHash([]).pick(b"x") is None


def test_ring_is_capped_keeping_weights() -> None:
    ts = [T(f"t{i}", 1 + i % 2) for i in range(20)]  # 30 x 100 points wanted
    ch = ConsistentHash(ts, max_points=600)
    assert len(ch._hashes) == 600
    assert Counter(ch._owners)[1] == 2 * Counter(ch._owners)[0] == 40
    assert MAX_POINTS == 1 << 18


HEADERS = [(b"Host", b"x"), (b"X-User", b"alice"),
           (b"Cookie", b"a=1; sess=\"abc\"; b=2"), (b"cookie", b"late=3")]


@pytest.mark.parametrize("spec, expected", [
    ("client_ip", b"192.0.2.1"), ("path", b"/cart"), ("header:x-user", b"alice"),
    ("header:X-USER", b"alice"), ("header:X-Other", None), ("cookie:sess", b"abc"),
    ("cookie:late", b"3"), ("cookie:nope", None),
])
def test_hash_key_extract(spec: str, expected: bytes | None) -> None:
    key = HashKey.parse(spec)
    assert key.extract(client_ip=b"192.0.2.1", path=b"/cart", headers=HEADERS) == expected


def test_hash_key_parse_errors_and_cookie_helper() -> None:
    for bad in ("ip", "header:", "cookie:"):
        with pytest.raises(ValueError):
            HashKey.parse(bad)
    assert cookie_value([(b"Cookie", b"x")], b"x") is None
