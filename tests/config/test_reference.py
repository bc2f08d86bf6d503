"""The markdown reference renderer: cells, anchors, table IDs and in-place updates."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest
import yaml

from lbcdn.config import reference
from lbcdn.configkit.fields import REQUIRED, doc
from lbcdn.config.schema import Config


@dataclasses.dataclass(frozen=True)
class _Inner:
    x: int = doc("An x.", 1)


@dataclasses.dataclass(frozen=True)
class _Sample:
    name: str = doc("Required | piped.", REQUIRED)
    size_bytes: int = doc("A size.", 5 << 20, lo=0)
    ratio: float = doc("A ratio.", 0.5, lo=0, hi=1)
    mode: Literal["a", "1.2"] = doc("A mode.", "1.2")
    tags: tuple[str, ...] = doc("Tags.", default_factory=lambda: ("GET", "HEAD"))
    inner: _Inner = doc("Nested.", default_factory=_Inner)
    things: dict[str, _Inner] = doc("By name.", default_factory=dict)
    maybe: int | None = doc("Optional.", None, hi=9)


PATHS: dict[type, str] = {_Sample: "sample", _Inner: "sample.inner"}


@pytest.mark.parametrize("value", ["1.2", "", "#{host}", "200", "yes", "a b", " x", "/",
                                   "index.html", 30.0, 0.1, True, ("GET", "HEAD"),
                                   {"default": "x"}])
def test_scalar_yaml_loads_back(value: object) -> None:
    text = reference._scalar_yaml(value)
    loaded = yaml.safe_load(text)
    assert (tuple(loaded) if isinstance(value, tuple) else loaded) == value


def test_rows() -> None:
    lines = reference.render_table(_Sample, PATHS).splitlines()
    assert lines[:2] == ["| key | type | default | meaning |", "|---|---|---|---|"]
    rows = dict(zip([f.name for f in dataclasses.fields(_Sample)], lines[2:]))
    assert rows["name"] == "| `name` | string | required | Required \\| piped. |"
    assert rows["size_bytes"] == "| `size_bytes` | int, ≥ 0 | `5242880` (5 MiB) | A size. |"
    assert rows["ratio"] == "| `ratio` | number, 0–1 | `0.5` | A ratio. |"
    assert rows["mode"] == '| `mode` | `a` \\| `"1.2"` | `"1.2"` | A mode. |'
    assert rows["tags"] == "| `tags` | list of strings | `[GET, HEAD]` | Tags. |"
    assert rows["inner"] == "| `inner` | [inner](#sampleinner) | `{}` | Nested. |"
    assert rows["things"] == ("| `things` | mapping of name to [inner](#sampleinner) | `{}` | "
                              "By name. |")
    assert rows["maybe"] == "| `maybe` | int, ≤ 9 | unset | Optional. |"


def test_slug_is_githubs() -> None:
    assert reference.slug("`pools.NAME.health`") == "poolsnamehealth"
    assert reference.slug("`dns.zones[].records[]`") == "dnszonesrecords"
    assert reference.slug("Health checks and balancing") == "health-checks-and-balancing"
    assert reference.slug("`cache.policies.NAME.query_strings`") == "cachepoliciesnamequery_strings"


def test_twin_class_names_get_component_ids() -> None:
    ids = reference.table_ids(reference.reachable(Config))
    names = sorted(i for i in ids.values() if i.endswith("HealthCheckConfig"))
    assert names == ["dns.HealthCheckConfig", "health.HealthCheckConfig"]
    assert ids[Config] == "Config"


def test_update_replaces_only_marked_tables() -> None:
    text = ("intro\n<!-- schema: A -->\n| old |\n| rows |\n\nafter\n"
            "<!-- schema: B -->\n| keep |\n")
    out = reference.update(text, {"A": "| new |"})
    assert out == "intro\n<!-- schema: A -->\n| new |\n\nafter\n<!-- schema: B -->\n| keep |\n"
    assert reference.readme_tables(out) == {"A": "| new |", "B": "| keep |"}


def test_main_reports_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "R.md"
    readme.write_text("<!-- schema: StickyConfig -->\n| stale |\n", encoding="utf-8")
    assert reference.main([str(readme)]) == 1
    assert "table StickyConfig differs from the schema" in capsys.readouterr().out
    assert reference.main([str(readme), "--write"]) == 1   # other markers are missing
    assert reference.readme_tables(readme.read_text())["StickyConfig"] == \
        reference.generated_tables()["StickyConfig"]
