"""Invalidations: CloudFront's path syntax, ids and statuses, hard and soft purge, purge by tag.

Rules:
- A path starts with `/`; `*` may appear only as its last character and matches any run of
  characters (including `/` and the query): `/images/*`, `/*`, `/index.html*`. No spaces or
  control characters (percent-encode them, as in a request). At most MAX_PATHS per
  invalidation, like CloudFront.
- Matching is against the request path as stored (case-sensitive, not decoded), followed by
  `?query` when the cache key kept a query. So `/a.js` invalidates the query-less object, and
  `/a.js*` every query variant too (CloudFront's documented advice).
- Tags are Surrogate-Key / Cache-Tag values (parsed when stored, see entry.parse_tags).
- Hard purge removes objects; soft purge marks them stale, so they are revalidated before use
  and can still stand in with stale-if-error while the origin is down.
- Ids look like CloudFront's (`I` + 13 upper-case letters and digits) from an injected random
  source; statuses are `InProgress` then `Completed`. A repeated `caller_reference` with the
  same request returns the first invalidation (CloudFront's idempotency); with a different
  request it is an error.
- The registry is control-plane state: the control process creates invalidations and publishes
  them; every worker applies each one to its stores (`apply`) and reports the count.
"""

from __future__ import annotations

import random
import re
import string
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Literal, Protocol

MAX_PATHS = 3000
MAX_HISTORY = 1000
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f]")
_ID_ALPHABET = string.ascii_uppercase + string.digits

Status = Literal["InProgress", "Completed"]
Matcher = Callable[[bytes, bytes, bytes], bool]


class InvalidationError(ValueError):
    pass


def check_path(path: str) -> str | None:
    """What is wrong with an invalidation path, or None."""
    if not path.startswith("/"):
        return f"{path!r}: must start with /"
    if "*" in path[:-1]:
        return f"{path!r}: * is allowed only at the end"
    if _BAD_CHARS.search(path):
        return f"{path!r}: spaces and control characters must be percent-encoded"
    return None


def check_tag(tag: str) -> str | None:
    if not tag or _BAD_CHARS.search(tag) or "," in tag:
        return f"{tag!r}: a tag is a non-empty word without spaces or commas"
    return None


def path_matcher(paths: Iterable[str], hosts: Iterable[bytes] = ()) -> Matcher:
    """A (host, path, query) predicate for these paths; `hosts` limits it (empty: any)."""
    exact: set[bytes] = set()
    prefixes: list[bytes] = []
    for p in paths:
        raw = p.encode("utf-8")
        if raw.endswith(b"*"):
            prefixes.append(raw[:-1])
        else:
            exact.add(raw)
    only = frozenset(h.lower() for h in hosts)
    prefix_tuple = tuple(prefixes)

    def match(host: bytes, path: bytes, query: bytes) -> bool:
        if only and host not in only:
            return False
        uri = path + b"?" + query if query else path
        return uri in exact or (bool(prefix_tuple) and uri.startswith(prefix_tuple))
    return match


class Purgeable(Protocol):
    """A store an invalidation applies to (store.MemoryStore, disk.DiskStore)."""
    def purge_matching(self, match: Matcher, soft: bool = False) -> int: ...
    def purge_tags(self, tags: Iterable[bytes], soft: bool = False) -> int: ...


@dataclass(frozen=True, slots=True)
class Invalidation:
    id: str
    paths: tuple[str, ...]
    tags: tuple[str, ...]
    soft: bool
    hosts: tuple[str, ...]
    caller_reference: str | None
    created_at: float
    status: Status = "InProgress"
    completed_at: float | None = None
    purged: int = 0

    def matcher(self) -> Matcher:
        return path_matcher(self.paths, (h.encode() for h in self.hosts))

    def describe(self) -> dict[str, object]:
        """The admin API's JSON shape."""
        return {"id": self.id, "status": self.status, "paths": list(self.paths),
                "tags": list(self.tags), "mode": "soft" if self.soft else "hard",
                "hosts": list(self.hosts), "caller_reference": self.caller_reference,
                "created_at": self.created_at, "completed_at": self.completed_at,
                "purged": self.purged}


def apply(inv: Invalidation, stores: Iterable[Purgeable]) -> int:
    """Purge what `inv` names from every store; returns the objects affected."""
    n = 0
    match = inv.matcher() if inv.paths else None
    tags = [t.encode() for t in inv.tags]
    for store in stores:
        if match is not None:
            n += store.purge_matching(match, inv.soft)
        if tags:
            n += store.purge_tags(tags, inv.soft)
    return n


class Registry:
    """Invalidations by id, newest last, bounded history."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._items: OrderedDict[str, Invalidation] = OrderedDict()
        self._by_ref: dict[str, str] = {}

    def _new_id(self) -> str:
        while True:
            candidate = "I" + "".join(self._rng.choice(_ID_ALPHABET) for _ in range(13))
            if candidate not in self._items:
                return candidate

    def create(self, paths: Iterable[str] = (), tags: Iterable[str] = (), *, soft: bool = False,
               hosts: Iterable[str] = (), caller_reference: str | None = None,
               now: float) -> Invalidation:
        paths, tags, hosts = tuple(paths), tuple(tags), tuple(h.lower() for h in hosts)
        problems = [p for p in map(check_path, paths) if p] + [p for p in map(check_tag, tags)
                                                              if p]
        if not paths and not tags:
            problems.append("give at least one path or tag")
        if len(paths) > MAX_PATHS:
            problems.append(f"at most {MAX_PATHS} paths per invalidation")
        if problems:
            raise InvalidationError("; ".join(problems))
        if caller_reference is not None and caller_reference in self._by_ref:
            first = self._items.get(self._by_ref[caller_reference])
            if first is not None:
                if (first.paths, first.tags, first.soft, first.hosts) != (paths, tags, soft,
                                                                          hosts):
                    raise InvalidationError(
                        f"caller_reference {caller_reference!r} was used for another request")
                return first
        inv = Invalidation(self._new_id(), paths, tags, soft, hosts, caller_reference, now)
        self._items[inv.id] = inv
        if caller_reference is not None:
            self._by_ref[caller_reference] = inv.id
        while len(self._items) > MAX_HISTORY:
            _, old = self._items.popitem(last=False)
            if old.caller_reference is not None:
                self._by_ref.pop(old.caller_reference, None)
        return inv

    def complete(self, inv_id: str, now: float, purged: int) -> Invalidation:
        inv = replace(self._items[inv_id], status="Completed", completed_at=now,
                      purged=purged)
        self._items[inv_id] = inv
        return inv

    def get(self, inv_id: str) -> Invalidation | None:
        return self._items.get(inv_id)

    def list(self) -> list[Invalidation]:
        return list(reversed(self._items.values()))
