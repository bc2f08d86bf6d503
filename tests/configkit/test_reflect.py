"""The generic loader on a toy schema: a new dataclass needs no loader change."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from lbcdn.configkit.reflect import INVALID, VALIDATORS, Loader, describe, join
from lbcdn.configkit.fields import REQUIRED, doc


@dataclass(frozen=True)
class Inner:
    size_bytes: int = doc("size", 10, lo=1, hi=100)


@dataclass(frozen=True)
class Toy:
    name: str = doc("name", REQUIRED)
    ratio: float = doc("ratio", 0.5, lo=0, hi=1)
    on: bool = doc("on", False)
    mode: Literal["a", "b"] = doc("mode", "a")
    note: str | None = doc("note", None)
    tags: tuple[str, ...] = doc("tags", default_factory=tuple)
    inners: dict[str, Inner] = doc("inners", default_factory=dict)
    inner: Inner = doc("inner", default_factory=Inner)
    limit: int | None = doc("limit", None, lo=0)


def load(data: object, env: dict[str, str] | None = None) -> tuple[Any, list[str]]:
    ld = Loader(env or {})
    value = ld.value(Toy, data, "")
    return value, [f"{p}: {m}" for p, m in ld.problems]


def test_defaults_and_values() -> None:
    toy, problems = load({"name": "x", "ratio": 1, "on": True, "mode": "b", "note": None,
                          "tags": ["t"], "inners": {"k": {"size_bytes": 5}}, "limit": 0})
    assert problems == []
    assert toy == Toy(name="x", ratio=1.0, on=True, mode="b", tags=("t",),
                      inners={"k": Inner(5)}, limit=0)
    assert isinstance(toy.ratio, float)
    assert load({"name": "x"})[0] == Toy(name="x")


@pytest.mark.parametrize("data, expected", [
    ({}, "name: missing (required)"),
    ({"name": 5}, "name: expected a string, got an integer (quote it)"),
    ({"name": "x", "ratio": True}, "ratio: expected a number, got a boolean"),
    ({"name": "x", "ratio": "0.5"}, 'ratio: expected a number, got a string ("0.5")'),
    ({"name": "x", "ratio": 2}, "ratio: must be <= 1; got 2"),
    ({"name": "x", "ratio": float("nan")}, "ratio: must be a finite number"),
    ({"name": "x", "on": 1}, "on: expected true or false, got an integer"),
    ({"name": "x", "mode": "c"}, 'mode: must be one of "a", "b"; got "c"'),
    ({"name": "x", "tags": "t"}, 'tags: expected a list, got a string ("t")'),
    ({"name": "x", "tags": ["a", 1]}, "tags[1]: expected a string, got an integer (quote it)"),
    ({"name": "x", "inners": []}, "inners: expected a mapping, got a list"),
    ({"name": "x", "inners": {"k": {"size_bytes": 0}}}, "inners.k.size_bytes: must be >= 1; got 0"),
    ({"name": "x", "inners": {"a b": {"size_byte": 1}}},
     'inners["a b"].size_byte: unknown key (did you mean \'size_bytes\'? allowed: size_bytes)'),
    ({"name": "x", "inner": {"size_bytes": 1.5}}, "inner.size_bytes: expected an integer, got a number"),
    ({"name": "x", "inner": {"size_bytes": True}}, "inner.size_bytes: expected an integer, got a boolean"),
    ({"name": "x", "inner": None}, "inner: expected a mapping, got null"),
    ({"name": "x", "limit": -1}, "limit: must be >= 0; got -1"),
    ({"name": "x", 3: 1}, "[3]: keys must be strings"),
])
def test_errors(data: object, expected: str) -> None:
    value, problems = load(data)
    assert value is INVALID
    assert problems == [expected]


def test_collects_all_errors_across_siblings() -> None:
    _, problems = load({"ratio": 5, "tags": [1, "ok", 2], "bogus": 1})
    assert problems == [
        "bogus: unknown key (allowed: inner, inners, limit, mode, name, note, on, ratio, tags)",
        "name: missing (required)",
        "ratio: must be <= 1; got 5",
        "tags[0]: expected a string, got an integer (quote it)",
        "tags[2]: expected a string, got an integer (quote it)",
    ]


def test_env_in_strings_and_scalars() -> None:
    env = {"N": "from-env", "R": "0.25", "ON": "true", "L": "7", "M": "b"}
    toy, problems = load({"name": "${N}", "ratio": "${R}", "on": "${ON}", "limit": "${L}",
                          "mode": "${M}", "tags": ["$${N}"]}, env)
    assert problems == []
    assert (toy.name, toy.ratio, toy.on, toy.limit, toy.mode, toy.tags) == (
        "from-env", 0.25, True, 7, "b", ("${N}",))


def test_env_scalar_still_type_checked_and_bounded() -> None:
    assert load({"name": "x", "limit": "${L}"}, {"L": "many"})[1] == [
        'limit: expected an integer, got a string ("many")']
    assert load({"name": "x", "limit": "${L}"}, {"L": "-3"})[1] == ["limit: must be >= 0; got -3"]
    assert load({"name": "${NOPE}"})[1] == [
        "name: environment variable NOPE is not set (use ${NOPE:-default} to give a default)"]


def test_validators_see_loaded_fields() -> None:
    seen: list[dict[str, Any]] = []

    def check(ld: Loader, values: Any, path: str) -> None:
        seen.append(dict(values))
        if values.get("size_bytes") == 13:
            ld.error(join(path, "size_bytes"), "unlucky")

    VALIDATORS[Inner] = [check]
    try:
        _, problems = load({"name": "x", "inner": {"size_bytes": 13}})
    finally:
        del VALIDATORS[Inner]
    assert problems == ["inner.size_bytes: unlucky"]
    assert seen == [{"size_bytes": 13}]


def test_unsupported_type_is_a_programming_error() -> None:
    @dataclass(frozen=True)
    class Bad:
        x: set[int] = field(default_factory=set)

    with pytest.raises(TypeError):
        Loader({}).value(Bad, {"x": [1]}, "")


def test_join_and_describe() -> None:
    assert join("", "a") == "a"
    assert join("a", "b-c_1") == "a.b-c_1"
    assert join("a", "b.c") == 'a["b.c"]'
    assert describe(None) == "null"
    assert describe({}) == "a mapping"
