"""Request ids: the token that ties an access-log line to what the backend saw (X-Request-Id).

Here, below the edge, because every listener makes them: the edge's exchanges and hits, and
the aiohttp listeners' own error answers (lbcdn.aiolistener).
"""

from __future__ import annotations

import os
from typing import Final

_ID_PREFIX: Final = os.urandom(4).hex().encode()   # per process: workers' ids differ
_ID_BLOCK: Final = 4096
_ID_TAILS: Final = tuple(b"%03x" % i for i in range(_ID_BLOCK))


class _Ids:
    """Ids are the process prefix, a block number and a place in the block, all hex: one bytes
    concatenation per id, and a formatted prefix once per 4,096 ids."""

    def __init__(self) -> None:
        self.block = -1
        self.lead = b""
        self.used = _ID_BLOCK


_ids: Final = _Ids()


def new_request_id() -> bytes:
    """A 20-hex-digit id, unique in this process and (with the random prefix) across them."""
    ids = _ids
    n = ids.used
    if n == _ID_BLOCK:
        ids.block += 1
        ids.lead = b"%s%09x" % (_ID_PREFIX, ids.block)
        n = 0
    ids.used = n + 1
    return ids.lead + _ID_TAILS[n]
