"""The limits an HTTP listener puts on its clients, under one set of names and defaults.

The edge's listeners (`listeners[]`) and the control process's aiohttp listeners (the admin API,
`admin.limits`; the S3 API and website ports, `buckets.limits`) read the same keys: each field
below is made by `limit_field(name)`, so a name, its default, bounds and meaning are written
once. The control listeners add `max_connections` (see lbcdn.aiolistener).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from lbcdn.configkit.fields import doc

# name -> (meaning, default, min, max)
_FIELDS: Final[dict[str, tuple[str, float, float, float | None]]] = {
    "header_timeout_s": ("Time allowed to receive a whole request head, counted from its "
                         "first byte; then 408.", 10.0, 0.001, None),
    "idle_timeout_s": ("Idle keep-alive time between requests (and before the first) before "
                       "the connection is closed (ELB: 60 s).", 60.0, 0.001, None),
    "body_timeout_s": ("Longest pause while reading a request body; then 408 (or a close).",
                       60.0, 0.001, None),
    "max_request_line_bytes": ("Longest request line; longer gets 414.", 8192, 64, 1 << 20),
    "max_header_bytes": ("Longest single header line; longer gets 431.", 8192, 64, 1 << 20),
    "max_headers_total_bytes": ("Largest request head in all; larger gets 431.", 32768, 256,
                                1 << 22),
    "max_header_count": ("Most header fields in one request; more gets 431.", 100, 1, 10000),
}


def limit_field(name: str) -> Any:
    """The documented, bounded dataclass field of limit `name` (a key of the edge's listener)."""
    text, default, lo, hi = _FIELDS[name]
    return doc(text, default if name.endswith("_s") else int(default), lo=lo, hi=hi)


@dataclass(frozen=True)
class HttpLimitsConfig:
    """Limits of the control process's listeners (admin API, S3 API, bucket websites): the
    edge listener's own keys and defaults, plus a connection cap."""
    header_timeout_s: float = limit_field("header_timeout_s")
    idle_timeout_s: float = limit_field("idle_timeout_s")
    body_timeout_s: float = limit_field("body_timeout_s")
    max_request_line_bytes: int = limit_field("max_request_line_bytes")
    max_header_bytes: int = limit_field("max_header_bytes")
    max_headers_total_bytes: int = limit_field("max_headers_total_bytes")
    max_header_count: int = limit_field("max_header_count")
    max_connections: int = doc(
        "Most connections open at once on each of these listeners; more are answered 503 "
        "with Retry-After and closed. Lowered at start when the file descriptor limit "
        "cannot hold them all.", 1024, lo=1, hi=1_000_000)
