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


def fit_caps(wanted: Mapping[str, tuple[int, int]], limit: int,
             refusing_max: int) -> dict[str, int]:
    """`wanted`: listener -> (connection cap, descriptors one connection may hold); a listener
    also holds up to min(refusing_max, its cap) connections it is refusing. The caps as they
    are when all those descriptors fit in `limit` less the reserve; else the largest lowered
    first: each cap is min(its own, a common ceiling), the highest ceiling that fits (each cap
    at least 1). So a listener with a large cap (the edge's) does not starve one with a small
    cap (the admin API's) in the same process."""
    budget = max(limit - max(RESERVE_MIN, int(limit * RESERVE_SHARE)), 0)

    def capped(ceiling: int) -> dict[str, int]:
        return {name: max(1, min(cap, ceiling)) for name, (cap, _) in wanted.items()}

    def fits(caps: Mapping[str, int]) -> bool:
        return sum((cap + min(refusing_max, cap)) * wanted[name][1]
                   for name, cap in caps.items()) <= budget

    low, high = 1, max((cap for cap, _ in wanted.values()), default=1)
    if fits(capped(high)):
        return capped(high)
    while high - low > 1:   # fits(capped(low)) or low is 1; not fits(capped(high))
        mid = (low + high) // 2
        if fits(capped(mid)):
            low = mid
        else:
            high = mid
    return capped(low)
