"""The Date header value (RFC 9110 6.6.1), formatted at most once a second."""

from __future__ import annotations

import time
from email.utils import formatdate

_second = -1
_value = b""


def http_date() -> bytes:
    """IMF-fixdate of now, e.g. b"Wed, 25 Nov 2026 13:28:54 GMT"."""
    global _second, _value
    now = int(time.time())
    if now != _second:
        _second = now
        _value = http_date_at(now)
    return _value


def http_date_at(when: float) -> bytes:
    """IMF-fixdate of `when` (seconds since the epoch)."""
    return formatdate(when, usegmt=True).encode()
