"""The documentation: a README a newcomer reads in ten minutes, a site that builds with no broken
link, and a configuration reference in step with the schema.

- README.md stays under 15 KB, and its relative links lead to files (and headings) that exist.
- `mkdocs build --strict` of docs/ succeeds: mkdocs.yml makes broken links, missing anchors and
  nav entries without a page warnings, and strict mode fails on any warning.
- docs/reference/configuration.md holds, between `<!-- config-reference:start -->` and
  `<!-- config-reference:end -->`, one table per config dataclass, each introduced by
  `<!-- schema: ClassName -->` under a heading that is the class's YAML path. For every
  dataclass reachable from `Config` (the route action union included) this test checks that its
  table exists, has a row for every YAML key of the class and no row for a key the schema does
  not have, and that each row shows the field's default (or says "required") and its numeric
  bounds. Two classes with one name (the pool's and DNS's HealthCheckConfig) are told apart as
  `component.ClassName` (`health.HealthCheckConfig`, `dns.HealthCheckConfig`). Every table is
  what lbcdn.config.reference renders from the schema, none is written by hand.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest
import yaml

import lbcdn.config.load  # noqa: F401  (registers the YAML renames and shape hooks)
from lbcdn.config.schema import AccessLogConfig, Config
from lbcdn.configkit.fields import REQUIRED, bounds
from lbcdn.configkit.reflect import RENAMES
from lbcdn.routing.config import FixedResponseAction, ForwardAction, MatchConfig, RedirectAction, \
    RouteConfig
from lbcdn.upstream.config import TargetConfig

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
REFERENCE = REPO / "docs" / "reference" / "configuration.md"
README_MAX_BYTES = 15_000
START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"
_TABLE_MARK = re.compile(r"<!-- schema: ([\w.]+) -->")
_ROW = re.compile(r"^\|\s*`([A-Za-z0-9_]+)`\s*\|(.*)\|\s*$")

# YAML keys that are not dataclass fields, and fields that are not YAML keys.
# RouteConfig.action is written as one of three keys; a target may be `address: host:port`.
ACTION_KEYS = ("forward", "redirect", "fixed_response")
EXTRA_KEYS: dict[type, tuple[str, ...]] = {TargetConfig: ("address",)}


def reachable(root: type) -> list[type]:
    """Every dataclass reachable from `root` through field types, in discovery order."""
    seen: list[type] = []

    def visit(tp: Any) -> None:
        origin = get_origin(tp)
        if origin in (tuple, dict, Union, types.UnionType):
            for arg in get_args(tp):
                visit(arg)
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp) and tp not in seen:
            seen.append(tp)
            for hint in get_type_hints(tp).values():
                visit(hint)

    visit(root)
    return seen


CLASSES = reachable(Config)


def table_id(cls: type) -> str:
    twins = [c for c in CLASSES if c.__name__ == cls.__name__]
    return cls.__name__ if len(twins) == 1 else f"{cls.__module__.split('.')[1]}.{cls.__name__}"


def yaml_keys(cls: type) -> dict[str, dataclasses.Field[Any] | None]:
    """The YAML keys of `cls` -> the field each one sets (None for keys that are not fields)."""
    renames = RENAMES.get(cls, {})
    keys: dict[str, dataclasses.Field[Any] | None] = {}
    for f in dataclasses.fields(cls):
        if cls is RouteConfig and f.name == "action":
            keys.update((k, None) for k in ACTION_KEYS)
        else:
            keys[renames.get(f.name, f.name)] = f
    keys.update((k, None) for k in EXTRA_KEYS.get(cls, ()))
    return keys


def reference_tables(text: str) -> dict[str, dict[str, list[str]]]:
    """Class name -> {key: [type, default, meaning] cells} from the reference section."""
    assert text.count(START) == 1 and text.count(END) == 1, "reference markers missing"
    section = text[text.index(START) + len(START):text.index(END)]
    tables: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in section.splitlines():
        mark = _TABLE_MARK.search(line)
        if mark:
            assert mark.group(1) not in tables, f"two tables for {mark.group(1)}"
            current = tables[mark.group(1)] = {}
            continue
        row = _ROW.match(line.strip())
        if row and current is not None:
            key = row.group(1)
            assert key not in current, f"two rows for `{key}`"
            current[key] = [c.strip() for c in row.group(2).split(" | ")]
    return tables


@pytest.fixture(scope="module")
def tables() -> dict[str, dict[str, list[str]]]:
    return reference_tables(REFERENCE.read_text(encoding="utf-8"))


def test_reachable_classes_include_every_action() -> None:
    for cls in (ForwardAction, RedirectAction, FixedResponseAction,
                MatchConfig, TargetConfig, AccessLogConfig):
        assert cls in CLASSES


def test_every_config_class_has_a_table(tables: dict[str, dict[str, list[str]]]) -> None:
    names = {table_id(cls) for cls in CLASSES}
    assert len(names) == len(CLASSES), "two classes share a table id"
    assert sorted(names - set(tables)) == [], "config classes without a reference table"
    assert sorted(set(tables) - names) == [], "reference tables for classes not in the schema"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_table_rows_match_yaml_keys(cls: type,
                                    tables: dict[str, dict[str, list[str]]]) -> None:
    rows = tables.get(table_id(cls), {})
    keys = yaml_keys(cls)
    assert sorted(set(keys) - set(rows)) == [], f"keys of {cls.__name__} missing in the reference"
    assert sorted(set(rows) - set(keys)) == [], f"reference rows for keys {cls.__name__} lacks"


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_rows_show_defaults_and_bounds(cls: type,
                                       tables: dict[str, dict[str, list[str]]]) -> None:
    rows = tables.get(table_id(cls), {})
    for key, f in yaml_keys(cls).items():
        if f is None or key not in rows:
            continue
        assert len(rows[key]) == 3, f"{cls.__name__}.{key}: expected key | type | default | meaning"
        type_cell, default_cell, meaning = rows[key]
        assert meaning, f"{cls.__name__}.{key}: no meaning given"
        lo, hi = bounds(f)
        if lo is not None and hi is not None:
            assert f"{_fmt(lo)}–{_fmt(hi)}" in type_cell, f"{cls.__name__}.{key}: range"
        elif lo is not None:
            assert f"≥ {_fmt(lo)}" in type_cell, f"{cls.__name__}.{key}: lower bound"
        if f.default is REQUIRED or (f.default is dataclasses.MISSING
                                     and f.default_factory is dataclasses.MISSING):
            assert "required" in default_cell, f"{cls.__name__}.{key}: should say required"
        elif f.default is not dataclasses.MISSING and f.default is not None:
            code = re.search(r"`([^`]*)`", default_cell)
            assert code is not None, f"{cls.__name__}.{key}: default not shown"
            default = list(f.default) if isinstance(f.default, tuple) else f.default  # YAML list
            assert yaml.safe_load(code.group(1)) == default, \
                f"{cls.__name__}.{key}: reference default {code.group(1)} != {f.default!r}"


def test_generated_tables_match_the_schema() -> None:
    from lbcdn.config import reference
    rendered = reference.generated_tables()
    written = reference.readme_tables(REFERENCE.read_text(encoding="utf-8"))
    assert sorted(rendered) == sorted(written), "a table per reachable class, and no other"
    stale = sorted(k for k, v in rendered.items() if written.get(k) != v)
    assert stale == [], ("the configuration reference differs from the schema; run "
                         "`.venv/bin/python -m lbcdn.config.reference "
                         "docs/reference/configuration.md --write`")


def test_each_table_sits_under_its_yaml_path() -> None:
    """The heading over a table is the section's YAML path, which the tables' links point at."""
    from lbcdn.config import reference
    paths = reference.section_paths()
    ids = reference.table_ids(list(paths))
    heading = None
    under: dict[str, str | None] = {}
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        mark = _TABLE_MARK.search(line)
        if mark:
            under[mark.group(1)] = heading
    expected = {ids[cls]: (f"`{path}`" if path else "Top level") for cls, path in paths.items()}
    assert under == expected


def test_readme_is_short() -> None:
    size = len(README.read_bytes())
    assert size < README_MAX_BYTES, f"README.md is {size} bytes; move detail into docs/"


def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")


def test_readme_links_lead_somewhere() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text(encoding="utf-8"))
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert len(local) >= 10, "the README should point into docs/"
    broken = []
    for link in local:
        path, _, anchor = link.partition("#")
        target = REPO / path
        if not target.exists():
            broken.append(link)
        elif anchor:
            headings = re.findall(r"^#{1,6} (.+)$", target.read_text(encoding="utf-8"), re.M)
            if anchor not in {_slug(h) for h in headings}:
                broken.append(link)
    assert broken == []


def test_site_builds_strictly(tmp_path: Path) -> None:
    """`make docs`, into a temporary directory: any broken link or anchor fails the build."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                           "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "reference" / "configuration.html").exists()
