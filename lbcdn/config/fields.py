"""Field helpers for the configuration dataclasses (lbcdn.config.schema and the per-component
config modules): a documented field with optional numeric bounds, and the REQUIRED marker.
Kept apart from schema.py so component config modules can use them while schema.py imports
those modules."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def doc(text: str, default: Any = None, *, lo: float | None = None, hi: float | None = None,
        **kw: Any) -> Any:
    """A dataclass field with documentation and optional numeric bounds (inclusive)."""
    meta: dict[str, Any] = {"doc": text}
    if lo is not None:
        meta["min"] = lo
    if hi is not None:
        meta["max"] = hi
    if "default_factory" in kw:
        return field(default_factory=kw["default_factory"], metadata=meta)
    if default is REQUIRED:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
