"""Route 53-style change batches: CREATE / UPSERT / DELETE of record sets, all or nothing,
and how accepted changes outlive a restart.

Rules:
- CREATE fails when the record set (owner, type, set identifier) exists; UPSERT creates or
  replaces; DELETE must match the existing set exactly (TTL, values, policy fields, alias).
  Changes apply in order to a copy of the zone; the copy must pass the zone's checks; only
  then is it returned, with the serial bumped. Any failure raises ChangeError listing every
  problem with the index of the change, and the zone is untouched.
- The SOA is the zone's own: changes cannot touch it.
- Persistence keeps an overlay per zone, not a log: the latest state of every record set the
  API touched (its record, or a tombstone for a delete) and the last serial. Its size is
  bounded by the number of sets touched, and replaying it on top of a changed config still
  makes sense: tombstones delete what exists, records are upserted. An entry that no longer
  applies is reported and dropped, never fatal.
- Files: `<state_dir>/dns-zone-<zone>.json`, written atomically (temp file, fsync, rename,
  fsync of the directory). A file that cannot be read is renamed aside (`.corrupt`) and
  reported, so the next save does not destroy the evidence.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, Literal, Protocol

from lbcdn.atomicfile import write_atomic
from lbcdn.configkit.errors import ConfigError
from lbcdn.dns.config import AliasConfig, RecordSetConfig, load_record_set
from lbcdn.dns.names import BadName, Name, is_subdomain, parse_name, to_text
from lbcdn.dns.rdata import TYPES
from lbcdn.dns.zone import AliasDirectory, Zone, ZoneError, record_set_from_spec

Action = Literal["CREATE", "UPSERT", "DELETE"]
ACTIONS = ("CREATE", "UPSERT", "DELETE")
FORMAT = 1


class ChangeError(ValueError):
    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class Change:
    action: Action
    record: RecordSetConfig


def parse_changes(data: object) -> list[Change]:
    """An admin API body -> changes. Shape: `{"changes": [{"action": "UPSERT", "record":
    {...record set as in the config...}}, ...]}` (or the bare list). Raises ChangeError."""
    items = data.get("changes") if isinstance(data, Mapping) else data
    if isinstance(data, Mapping) and set(data) - {"changes"}:
        raise ChangeError([f"unknown key(s): {', '.join(sorted(set(data) - {'changes'}))}"])
    if not isinstance(items, list) or not items:
        raise ChangeError(["changes: expected a non-empty list"])
    out: list[Change] = []
    problems: list[str] = []
    for i, item in enumerate(items):
        where = f"changes[{i}]"
        if not isinstance(item, Mapping) or set(item) != {"action", "record"}:
            problems.append(f"{where}: expected {{action, record}}")
            continue
        action = item["action"]
        if action not in ACTIONS:
            problems.append(f"{where}.action: must be one of {', '.join(ACTIONS)}")
            continue
        try:
            out.append(Change(action, load_record_set(item["record"], f"{where}.record")))
        except ConfigError as e:
            problems.extend(e.lines())
    if problems:
        raise ChangeError(problems)
    return out


def apply_batch(zone: Zone, changes: Sequence[Change], *, aliases: AliasDirectory | None,
                now: float) -> Zone:
    """The zone after the batch (a new object), or ChangeError; `zone` is never modified."""
    z = zone.copy()
    problems: list[str] = []
    for i, ch in enumerate(changes):
        where = f"changes[{i}] ({ch.action} {ch.record.name} {ch.record.type})"
        if ch.record.type == "SOA":
            problems.append(f"{where}: the SOA is managed by the zone")
            continue
        try:
            rs = record_set_from_spec(ch.record, z.origin, z.default_ttl, aliases)
        except ZoneError as e:
            problems.extend(f"{where}: {p}" for p in e.problems)
            continue
        if not is_subdomain(rs.name, z.origin):
            problems.append(f"{where}: {to_text(rs.name)} is outside the zone {z.name}")
            continue
        existing = z.find(*rs.ident)
        if ch.action == "CREATE":
            if existing is not None and not existing.generated:
                problems.append(f"{where}: already exists (use UPSERT to replace it)")
                continue
            z.put(rs)
        elif ch.action == "UPSERT":
            z.put(rs)
        else:
            if existing is None:
                problems.append(f"{where}: no such record set")
            elif not existing.same_as(rs):
                problems.append(f"{where}: does not match the existing record set exactly "
                                "(TTL, values and policy fields must all be given as they are)")
            else:
                z.remove(*rs.ident)
    if problems:
        raise ChangeError(problems)
    z.finish()
    problems = z.problems()
    if problems:
        raise ChangeError(problems)
    z.bump_serial(now)
    return z


# -- the overlay -------------------------------------------------------------------------


@dataclass(frozen=True)
class Overlay:
    serial: int
    # "owner|TYPE|set identifier" -> the record in config shape, or None for a deletion
    entries: Mapping[str, Mapping[str, Any] | None]


def record_data(spec: RecordSetConfig) -> dict[str, Any]:
    """A record set in its config/JSON shape, defaults left out."""
    out: dict[str, Any] = {}
    for f in fields(spec):
        value = getattr(spec, f.name)
        if f.name in ("name", "type") or value not in (None, (), "simple"):
            if isinstance(value, AliasConfig):
                value = {k: v for k, v in
                         (("listener", value.listener), ("pool", value.pool),
                          ("evaluate_target_health", value.evaluate_target_health))
                         if v is not None}
            elif is_dataclass(value) and not isinstance(value, type):
                value = {k: v for k, v in asdict(value).items() if v is not None}
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
    return out


def _entry_key(name: Name, rtype: str, set_identifier: str | None) -> str:
    return f"{to_text(name)}|{rtype}|{set_identifier or ''}"


def update_overlay(overlay: Overlay, changes: Sequence[Change], zone: Zone) -> Overlay:
    """The overlay after an applied batch; `zone` is the zone after it (for names, serial)."""
    entries = dict(overlay.entries)
    for ch in changes:
        name = parse_name(ch.record.name, zone.origin)
        key = _entry_key(name, ch.record.type, ch.record.set_identifier)
        if ch.action == "DELETE":
            entries[key] = None
        else:
            data = record_data(ch.record)
            data["name"] = to_text(name)  # absolute: the entry must not depend on context
            entries[key] = data
    return Overlay(zone.serial, entries)


def replay(zone: Zone, overlay: Overlay, *, aliases: AliasDirectory | None,
           now: float) -> tuple[Zone, Overlay, list[str]]:
    """Re-apply a saved overlay at start: (zone, the entries that applied, problems).
    Tombstones go first so a saved "replace A with CNAME" still works."""
    problems: list[str] = []
    kept: dict[str, Mapping[str, Any] | None] = {}
    z = zone.copy()
    for key, data in overlay.entries.items():
        if data is not None:
            continue
        try:
            owner, rtype, sid = key.split("|", 2)
            z.remove(parse_name(owner), TYPES[rtype], sid or None)
            kept[key] = None
        except (ValueError, KeyError, BadName):
            problems.append(f"saved deletion {key!r} is unreadable; dropped")
    z.finish()
    upserts: list[tuple[str, Change]] = []
    for key, data in overlay.entries.items():
        if data is None:
            continue
        try:
            upserts.append((key, Change("UPSERT", load_record_set(data, key))))
        except ValueError as e:
            problems.append(f"saved record {key!r} is invalid ({e}); dropped")
    try:
        z = apply_batch(z, [c for _, c in upserts], aliases=aliases, now=now)
        kept.update((k, overlay.entries[k]) for k, _ in upserts)
    except ChangeError:
        for key, change in upserts:  # find the entries that no longer fit, keep the rest
            try:
                z = apply_batch(z, [change], aliases=aliases, now=now)
                kept[key] = overlay.entries[key]
            except ChangeError as e:
                problems.append(f"saved record {key!r} no longer applies ({e}); dropped")
    z.finish()
    if overlay.serial > z.serial:
        z.set_serial(overlay.serial)
    if overlay.entries:
        z.bump_serial(now)  # secondaries must see the restored content as new
    return z, Overlay(z.serial, kept), problems


# -- storage -----------------------------------------------------------------------------


class ChangeStore(Protocol):
    def load(self, zone: str) -> Overlay | None: ...

    def save(self, zone: str, overlay: Overlay) -> None: ...


class MemoryStore:
    """A ChangeStore in a dict (tests, and `state_dir` unset)."""

    def __init__(self) -> None:
        self.saved: dict[str, Overlay] = {}

    def load(self, zone: str) -> Overlay | None:
        return self.saved.get(zone)

    def save(self, zone: str, overlay: Overlay) -> None:
        self.saved[zone] = overlay


_UNSAFE = re.compile(r"[^a-z0-9._-]")


class JsonChangeStore:
    """One JSON file per zone in `state_dir`, replaced atomically on every save."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir

    def path(self, zone: str) -> str:
        stem = zone.rstrip(".").lower() or "root"
        stem = _UNSAFE.sub(lambda m: f"%{ord(m.group()):02x}", stem)
        return os.path.join(self.state_dir, f"dns-zone-{stem}.json")

    def load(self, zone: str) -> Overlay | None:
        path = self.path(zone)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError("unknown format")
            serial = data["serial"]
            entries = data["entries"]
            if not isinstance(serial, int) or not isinstance(entries, dict):
                raise ValueError("bad fields")
            return Overlay(serial, entries)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as e:
            aside = path + ".corrupt"
            try:
                os.replace(path, aside)
            except OSError:
                aside = path
            raise ChangeError([f"{path}: unreadable saved changes ({e}); kept as {aside}"]) \
                from None

    def save(self, zone: str, overlay: Overlay) -> None:
        path = self.path(zone)
        body = json.dumps({"format": FORMAT, "zone": zone, "serial": overlay.serial,
                           "entries": overlay.entries}, indent=1, sort_keys=True)
        write_atomic(path, body, prefix=".dns-zone-")
