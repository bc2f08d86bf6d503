"""Bounded tables of remembered results for the hot paths: a dict emptied whole when full.

Used where a pure result is looked up far more often than it is made (parsed request and
response heads, status lines, route candidates per Host, prepared DNS answers). An LRU would
cost a move on every hit; emptying the table when it is full costs nothing per hit, keeps
memory bounded, and under a flood of distinct keys makes each hot key be worked out again at
most once per `limit` insertions.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(table: dict[K, V], key: K, value: V, limit: int) -> V:
    """table[key] = value, emptying the table first when it already holds `limit` entries;
    returns value."""
    if len(table) >= limit:
        table.clear()
    table[key] = value
    return value
