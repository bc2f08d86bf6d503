"""File descriptors: the soft limit raised at start, and connection caps that fit under it.

Every connection costs a descriptor, and so does everything else the daemon does (an object
file read for an S3 GET, a health check, a DNS query, a worker's channel). When the
connections of the control process's listeners could take them all, a health check or an
`open()` fails instead, far from the cause; so their caps are fitted under the limit with a
reserve left for that work (`fit_caps`, pure).
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Mapping
from typing import Final

log = logging.getLogger("lbcdn.fdlimit")

RESERVE_MIN: Final = 256        # descriptors always left to the process's own work
RESERVE_SHARE: Final = 0.1      # ... or this share of the limit, when larger
_NR_OPEN: Final = 1 << 20       # the kernel's usual ceiling, when the hard limit is unlimited


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit (the soft default, often 1,024, is
    a leftover of select()); return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _NR_OPEN if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the file descriptor limit from %d to %d: %s",
                        soft, target, exc)
            return soft
        log.info("file descriptor limit raised from %d to %d", soft, target)
        return target
    return soft


def nofile() -> int:
    """The soft RLIMIT_NOFILE in force."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return _NR_OPEN if soft == resource.RLIM_INFINITY else soft


def fit_caps(wanted: Mapping[str, tuple[int, int]], limit: int) -> dict[str, int]:
    """`wanted`: name -> (connection cap, descriptors one connection may hold). The caps as
    they are when their descriptors fit in `limit` less the reserve; else all scaled down in
    the same proportion (each at least 1)."""
    reserve = max(RESERVE_MIN, int(limit * RESERVE_SHARE))
    budget = max(limit - reserve, 0)
    need = sum(cap * fds for cap, fds in wanted.values())
    if need <= budget:
        return {name: cap for name, (cap, _) in wanted.items()}
    scale = budget / need
    return {name: max(1, int(cap * scale)) for name, (cap, _) in wanted.items()}
