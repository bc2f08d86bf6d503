"""Field helpers for the configuration dataclasses (lbcdn.config.schema and the per-component
config modules): a documented field with optional numeric bounds, and the REQUIRED marker.
Kept apart from schema.py so component config modules can use them while schema.py imports
those modules."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

# The longest duration (`*_s`, seconds) a field accepts unless it sets its own `hi`: one year.
# A longer timeout means "never" and breaks timers (`1e300` overflows the event loop's clock).
MAX_DURATION_S = 365 * 24 * 3600


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


def bounds(f: dataclasses.Field[Any]) -> tuple[float | None, float | None]:
    """A field's inclusive (min, max): its own, with MAX_DURATION_S as the max of a duration
    (a name ending in `_s`, but not a rate such as `_per_s`) that sets none."""
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if hi is None and f.name.endswith("_s") and not f.name.endswith("_per_s"):
        hi = MAX_DURATION_S
    return lo, hi


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
