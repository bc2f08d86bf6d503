"""Rendezvous hashing of cache keys over a parent tier's peers."""

from __future__ import annotations

from collections import Counter

from lbcdn.cache.tier import owner

PEERS = (b"10.0.0.1:8080", b"10.0.0.2:8080", b"10.0.0.3:8080")
KEYS = [f"GET|example.com|/obj/{i}".encode() for i in range(6000)]


def test_no_peers_no_owner() -> None:
    assert owner((), b"k") is None


def test_order_of_peers_does_not_matter() -> None:
    for key in KEYS[:200]:
        assert owner(PEERS, key) == owner(tuple(reversed(PEERS)), key)


def test_keys_spread_about_evenly() -> None:
    counts = Counter(owner(PEERS, k) for k in KEYS)
    assert set(counts) == set(PEERS)
    for n in counts.values():
        assert abs(n - len(KEYS) / 3) < len(KEYS) * 0.05


def test_adding_a_peer_moves_about_one_nth_of_the_keys_all_to_it() -> None:
    grown = PEERS + (b"10.0.0.4:8080",)
    moved = [k for k in KEYS if owner(PEERS, k) != owner(grown, k)]
    assert all(owner(grown, k) == b"10.0.0.4:8080" for k in moved)
    assert abs(len(moved) - len(KEYS) / 4) < len(KEYS) * 0.04


def test_removing_a_peer_moves_only_its_keys() -> None:
    shrunk = PEERS[:2]
    for k in KEYS:
        before = owner(PEERS, k)
        if before != PEERS[2]:
            assert owner(shrunk, k) == before
