"""What load-aware policies read from a target (lbcdn.upstream.pool.Target provides it)."""

from __future__ import annotations

from typing import Protocol, TypeVar


class Loaded(Protocol):
    @property
    def weight(self) -> int: ...
    @property
    def in_flight(self) -> int: ...


T = TypeVar("T", bound=Loaded)
