"""Which replica of a parent tier owns a cache key: rendezvous (highest random weight) hashing.

Every replica scores each peer against the key and the highest score owns it; all replicas
with the same peer list agree without talking to each other. When a peer joins or leaves, only
the keys it wins or owned move (about 1/N of them), unlike `hash % N`, which moves almost all.
Pure: peers and a key in, a peer out.
"""

from __future__ import annotations

from hashlib import blake2b


def score(peer: bytes, key: bytes) -> int:
    """The peer's weight for the key (64 bits; the peer name is the hash's key, so the key
    bytes are never concatenated into an ambiguous string)."""
    return int.from_bytes(blake2b(key, digest_size=8, key=peer[:64]).digest(), "big")


def owner(peers: tuple[bytes, ...], key: bytes) -> bytes | None:
    """The peer owning `key` (None: no peers). Ties (practically never) go to the greater
    name, so every replica still picks the same one."""
    best: bytes | None = None
    best_score = -1
    for peer in peers:
        s = score(peer, key)
        if s > best_score or (s == best_score and best is not None and peer > best):
            best, best_score = peer, s
    return best
