"""Markdown reference tables rendered from the config schema's own metadata.

Job: one table per config dataclass (`key | type | default | meaning`) built from the field
type hints, defaults, `doc(...)` texts and `min`/`max` bounds, so the configuration reference
(docs/reference/configuration.md) cannot drift from the code.
`python -m lbcdn.config.reference docs/reference/configuration.md` reports tables that differ
from the schema; with `--write` it rewrites them in place. tests/test_docs.py
fails when they differ.

Rules:
- Pure text in, text out; nothing here reads the YAML loader's state except RENAMES and the
  keys its shape hooks accept (ACTION_KEYS, SHAPE_KEYS).
- A table is the block of `|` lines right after its `<!-- schema: ID -->` marker. Every
  reachable class is rendered: what a table says is the field's own `doc(...)` text, so a
  better explanation goes there, never into the page.
- A table ID is the class name, or `component.ClassName` when two reachable classes share a
  name (the pool's and DNS's HealthCheckConfig).
- Links point at the section heading of the nested class: the heading is the class's YAML path
  in backticks (`pools.NAME.health`), and the anchor is its slug (GitHub's and MkDocs' agree
  on these).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from lbcdn.config.load import ACTION_KEYS  # also registers the YAML renames and shape hooks
from lbcdn.config.schema import Config
from lbcdn.configkit.fields import REQUIRED, bounds
from lbcdn.configkit.reflect import RENAMES
from lbcdn.routing.config import RouteConfig
from lbcdn.upstream.config import TargetConfig

MARK = re.compile(r"<!-- schema: ([\w.]+) -->")
_ACRONYMS = {"dns": "DNS", "soa": "SOA", "tls": "TLS", "tsig": "TSIG"}
# A class reached by several paths is documented under the one that reads best.
_PREFERRED_PATH = {"BehaviorConfig": "cache.distributions.NAME.behaviors[]"}
# A union field written as one of several keys, each holding one member of the union (in
# order): a route's action is `forward`, `redirect` or `fixed_response` (lbcdn.config.load).
ALTERNATIVE_KEYS: dict[tuple[type, str], tuple[str, ...]] = {(RouteConfig, "action"): ACTION_KEYS}
# YAML keys a shape hook accepts besides the fields: key -> (type cell, meaning).
SHAPE_KEYS: dict[type, dict[str, tuple[str, str]]] = {
    TargetConfig: {"address": ("string", "`host:port` (IPv6 as `[::1]:9002`), instead of "
                                         "`host` and `port` (not together with them).")},
}


def reachable(root: type = Config) -> list[type]:
    """Every dataclass reachable from `root` through field types, in discovery order."""
    return list(section_paths(root))


def section_paths(root: type = Config) -> dict[type, str]:
    """Dataclass -> the YAML path of its section (`pools.NAME.health`), first path found."""
    paths: dict[type, str] = {root: ""}

    def visit(tp: Any, path: str) -> None:
        origin = get_origin(tp)
        if origin is tuple:
            visit(get_args(tp)[0], f"{path}[]")
        elif origin is dict:
            visit(get_args(tp)[1], f"{path}.NAME")
        elif origin in (Union, types.UnionType):
            for arg in get_args(tp):
                visit(arg, path)
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp) and tp not in paths:
            paths[tp] = _PREFERRED_PATH.get(tp.__name__, path)
            walk(tp, paths[tp])

    def walk(cls: type, path: str) -> None:
        for name, hint in get_type_hints(cls).items():
            prefix = f"{path}." if path else ""
            keys = ALTERNATIVE_KEYS.get((cls, name))
            if keys is not None:
                for key, member in zip(keys, get_args(hint), strict=True):
                    visit(member, prefix + key)
                continue
            visit(hint, prefix + RENAMES.get(cls, {}).get(name, name))

    walk(root, "")
    return paths


def table_ids(classes: list[type]) -> dict[type, str]:
    counts: dict[str, int] = {}
    for cls in classes:
        counts[cls.__name__] = counts.get(cls.__name__, 0) + 1
    return {cls: (cls.__name__ if counts[cls.__name__] == 1
                  else f"{cls.__module__.split('.')[1]}.{cls.__name__}") for cls in classes}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but `-` and `_` dropped."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchor(cls: type, paths: dict[type, str]) -> str:
    return "#" + slug(f"`{paths[cls]}`")


def _words(cls: type) -> str:
    name = cls.__name__.removesuffix("Config")
    words = [w.lower() for w in re.findall(r"[A-Z][a-z0-9]*", name)]
    return " ".join(_ACRONYMS.get(w, w) for w in words)


def _scalar_yaml(value: Any) -> str:
    """`value` as YAML that loads back to it, as short as possible."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        try:
            plain = value != "" and yaml.safe_load(value) == value and value.strip() == value
        except yaml.YAMLError:
            plain = False
        return value if plain else json.dumps(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_scalar_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_scalar_yaml(v)}" for k, v in value.items()) + "}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Only default instances appear as defaults; `{}` is how YAML writes one.
        return "{}"
    raise TypeError(f"cannot render default {value!r}")


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return ""


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def type_cell(tp: Any, paths: dict[type, str], plural: bool = False) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return " or ".join(type_cell(a, paths, plural) for a in args)
    if origin is Literal:
        return " \\| ".join(f"`{_scalar_yaml(v)}`" for v in get_args(tp))
    if origin is tuple:
        return "list of " + type_cell(get_args(tp)[0], paths, plural=True)
    if origin is dict:
        return "mapping of name to " + type_cell(get_args(tp)[1], paths)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"[{_words(tp)}{'s' if plural else ''}]({anchor(tp, paths)})"
    simple = {str: "string", int: "int", float: "number", bool: "bool"}
    if tp in simple:
        return simple[tp] + ("s" if plural else "")
    raise TypeError(f"cannot render type {tp!r}")


def default_cell(f: dataclasses.Field[Any]) -> str:
    if f.default is REQUIRED or (f.default is dataclasses.MISSING
                                 and f.default_factory is dataclasses.MISSING):
        return "required"
    if f.default is not dataclasses.MISSING:
        value = f.default
    else:
        assert callable(f.default_factory)  # narrows the MISSING sentinel away for mypy
        value = f.default_factory()
    if value is None:
        return "unset"
    cell = f"`{_scalar_yaml(value)}`"
    if f.name.endswith("_bytes") and isinstance(value, int) and _size(value):
        cell += f" ({_size(value)})"
    return cell


def row(cls: type, f: dataclasses.Field[Any], hint: Any, paths: dict[type, str]) -> str:
    key = RENAMES.get(cls, {}).get(f.name, f.name)
    kind = type_cell(hint, paths)
    lo, hi = bounds(f)
    if lo is not None and hi is not None:
        kind += f", {_fmt(lo)}–{_fmt(hi)}"
    elif lo is not None:
        kind += f", ≥ {_fmt(lo)}"
    elif hi is not None:
        kind += f", ≤ {_fmt(hi)}"
    meaning = f.metadata["doc"].replace("|", "\\|")
    return f"| `{key}` | {kind} | {default_cell(f)} | {meaning} |"


def alternative_rows(cls: type, f: dataclasses.Field[Any], hint: Any,
                     paths: dict[type, str]) -> list[str]:
    """One row per key of a field written as one of several keys (a route's action)."""
    keys = ALTERNATIVE_KEYS[(cls, f.name)]
    choice = ", ".join(f"`{k}`" for k in keys)
    meaning = f.metadata["doc"].replace("|", "\\|")
    return [f"| `{key}` | {type_cell(member, paths)} | — | {meaning} Exactly one of {choice}. |"
            for key, member in zip(keys, get_args(hint), strict=True)]


def render_table(cls: type, paths: dict[type, str] | None = None) -> str:
    """The markdown table of one dataclass (header included, no marker, no trailing newline)."""
    paths = section_paths() if paths is None else paths
    hints = get_type_hints(cls)
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if (cls, f.name) in ALTERNATIVE_KEYS:
            lines += alternative_rows(cls, f, hints[f.name], paths)
        else:
            lines.append(row(cls, f, hints[f.name], paths))
    lines += [f"| `{key}` | {kind} | — | {meaning} |"
              for key, (kind, meaning) in SHAPE_KEYS.get(cls, {}).items()]
    return "\n".join(lines)


def generated_tables(root: type = Config) -> dict[str, str]:
    """Table ID -> rendered table, for every reachable class."""
    paths = section_paths(root)
    ids = table_ids(list(paths))
    return {ids[cls]: render_table(cls, paths) for cls in paths}


def readme_tables(text: str) -> dict[str, str]:
    """Table ID -> the `|` lines right after its marker, as written in `text`."""
    out: dict[str, str] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        mark = MARK.search(line)
        if mark:
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out[mark.group(1)] = "\n".join(lines[i + 1:j])
    return out


def update(text: str, tables: dict[str, str]) -> str:
    """`text` with the table after each marker in `tables` replaced by the rendered one."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    i = 0
    while i < len(lines):
        out.append(lines[i])
        mark = MARK.search(lines[i])
        i += 1
        if mark and mark.group(1) in tables:
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            out.append(tables[mark.group(1)] + "\n")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lbcdn.config.reference",
        description="check (or --write) the generated config tables of a markdown file")
    parser.add_argument("file", type=Path)
    parser.add_argument("--write", action="store_true", help="rewrite the tables in place")
    args = parser.parse_args(argv)
    text = args.file.read_text(encoding="utf-8")
    tables = generated_tables()
    have = readme_tables(text)
    stale = sorted(k for k, v in tables.items() if have.get(k) != v)
    missing = sorted(k for k in stale if k not in have)
    if args.write:
        args.file.write_text(update(text, tables), encoding="utf-8")
        for k in missing:
            print(f"no `<!-- schema: {k} -->` marker; add one where its table belongs")
        return 1 if missing else 0
    for k in stale:
        print(f"{args.file}: table {k} {'missing' if k in missing else 'differs from the schema'}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
