"""The generic, type-driven half of the config loader: parsed YAML + a dataclass type -> value.

Job: walk parsed YAML alongside the type hints of the schema dataclasses and build the frozen
config objects, collecting every problem as (YAML path, message) instead of stopping at the
first. Adding a dataclass or a field to the schema needs no change here.

Rules:
- Supported types: str, int, float, bool, Literal[...], `X | None`, tuple[X, ...],
  dict[str, X] and nested dataclasses. Anything else is a programming error (TypeError).
- Strict: unknown keys, missing required keys and wrong types are errors; bool is not an int;
  an int is accepted for a float; `metadata["min"]` / `["max"]` bounds are enforced, and a
  duration (`*_s`) without a max is capped at fields.MAX_DURATION_S (one year).
- Every string value goes through environment interpolation (see env.py). A number or bool
  written as a `${VAR}` string is converted after interpolation, so `port: ${PORT}` works.
- Special YAML shapes are handled by hooks that the shape-specific module registers
  (load.py): a type hook replaces the generic handling of a type, a field hook that of one
  field, a rename maps a field to a different YAML key, and validators check a dataclass's
  loaded field values (including cross-field rules) before it is built.
- A value that failed is the INVALID sentinel; containers holding one are INVALID too, but
  their siblings are still loaded so their errors are reported as well.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
import types
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from lbcdn.configkit.env import EnvError, interpolate
from lbcdn.configkit.fields import bounds


class _Invalid:
    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()

TypeHook = Callable[["Loader", object, str], Any]
FieldHook = Callable[["Loader", object, str], Any]
# Validators receive the successfully loaded (or defaulted) field values by field name;
# a field that failed to load is absent, so a validator checks only what it can.
Validator = Callable[["Loader", Mapping[str, Any], str], None]

TYPE_HOOKS: dict[type, TypeHook] = {}
FIELD_HOOKS: dict[tuple[type, str], FieldHook] = {}
RENAMES: dict[type, dict[str, str]] = {}
VALIDATORS: dict[type, list[Validator]] = {}

_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def join(path: str, key: object) -> str:
    """YAML path of `key` inside the mapping at `path`: `pools.web`, `pools["a b"]`."""
    if isinstance(key, str) and _SIMPLE_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    text = json.dumps(key) if isinstance(key, str) else repr(key)
    return f"{path}[{text}]"


def index(path: str, i: int) -> str:
    return f"{path}[{i}]"


def describe(value: object) -> str:
    """How a YAML value is named in messages ("got a list")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return f"a string ({json.dumps(value)})" if len(value) <= 40 else "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def field_default(f: dataclasses.Field[Any]) -> Any:
    """The field's default value, or INVALID when the field is required."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return INVALID


def _fmt_num(x: float) -> str:
    if isinstance(x, float):
        return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)
    return str(x)


class Loader:
    """One load: the environment to interpolate from and the problems found so far."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[tuple[str, str]] = []
        # For a list or mapping that failed as a whole: its items that did load, as
        # (path, value) pairs by the container's path, so cross-checks still see them.
        self.partial: dict[str, list[tuple[str, Any]]] = {}
        # Facts shape hooks record for validators (e.g. every pool name, valid or not).
        self.notes: dict[str, Any] = {}

    def error(self, path: str, message: str) -> Any:
        """Record a problem; returns INVALID so callers can `return self.error(...)`."""
        self.problems.append((path, message))
        return INVALID

    # -- scalars -------------------------------------------------------------------------

    def interpolate(self, text: str, path: str) -> Any:
        try:
            return interpolate(text, self.env)
        except EnvError as e:
            return self.error(path, str(e))

    def string(self, data: object, path: str) -> Any:
        if not isinstance(data, str):
            hint = " (quote it)" if isinstance(data, (int, float)) else ""
            return self.error(path, f"expected a string, got {describe(data)}{hint}")
        return self.interpolate(data, path)

    def _env_scalar(self, data: object, path: str) -> object:
        # Only strings carrying a reference are converted, so `port: "80"` stays an error.
        if isinstance(data, str) and "${" in data:
            text = self.interpolate(data, path)
            if text is INVALID:
                return INVALID
            text = text.strip()
            if re.fullmatch(r"[+-]?[0-9]+", text):
                return int(text)
            if text.lower() in ("true", "false"):
                return text.lower() == "true"
            try:
                return float(text)
            except ValueError:
                return text
        return data

    def integer(self, data: object, path: str) -> Any:
        data = self._env_scalar(data, path)
        if data is INVALID:
            return INVALID
        if isinstance(data, bool) or not isinstance(data, int):
            return self.error(path, f"expected an integer, got {describe(data)}")
        return data

    def number(self, data: object, path: str) -> Any:
        data = self._env_scalar(data, path)
        if data is INVALID:
            return INVALID
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            return self.error(path, f"expected a number, got {describe(data)}")
        if not math.isfinite(data):
            return self.error(path, "must be a finite number")
        return float(data)

    def boolean(self, data: object, path: str) -> Any:
        data = self._env_scalar(data, path)
        if data is INVALID:
            return INVALID
        if not isinstance(data, bool):
            return self.error(path, f"expected true or false, got {describe(data)}")
        return data

    def literal(self, choices: tuple[Any, ...], data: object, path: str) -> Any:
        if isinstance(data, str):
            data = self.interpolate(data, path)
            if data is INVALID:
                return INVALID
        for choice in choices:
            # bool/int equality (True == 1) must not let the wrong type through.
            if type(choice) is type(data) and choice == data:
                return choice
        allowed = ", ".join(json.dumps(c) for c in choices)
        return self.error(path, f"must be one of {allowed}; got {json.dumps(data, default=str)}")

    # -- dispatch ------------------------------------------------------------------------

    def value(self, tp: Any, data: object, path: str) -> Any:
        """Load `data` as type `tp`; INVALID (with problems recorded) when it does not fit."""
        hook = TYPE_HOOKS.get(tp) if isinstance(tp, type) else None
        if hook is not None:
            return hook(self, data, path)
        if tp is str:
            return self.string(data, path)
        if tp is bool:
            return self.boolean(data, path)
        if tp is int:
            return self.integer(data, path)
        if tp is float:
            return self.number(data, path)
        origin = get_origin(tp)
        args = get_args(tp)
        if origin is Literal:
            return self.literal(args, data, path)
        if origin is Union or origin is types.UnionType:
            rest = [a for a in args if a is not type(None)]
            if len(rest) == 1 and len(args) == 2:
                return None if data is None else self.value(rest[0], data, path)
            raise TypeError(f"{path}: no generic loader for union {tp!r}; register a hook")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return self.sequence(args[0], data, path)
        if origin is dict and len(args) == 2 and args[0] is str:
            return self.mapping(args[1], data, path)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self.dataclass(tp, data, path)
        raise TypeError(f"{path}: no config loader for type {tp!r}")

    def sequence(self, item_tp: Any, data: object, path: str) -> Any:
        if not isinstance(data, list):
            return self.error(path, f"expected a list, got {describe(data)}")
        items = [(index(path, i), self.value(item_tp, item, index(path, i)))
                 for i, item in enumerate(data)]
        if any(x is INVALID for _, x in items):
            self.partial[path] = [(p, x) for p, x in items if x is not INVALID]
            return INVALID
        return tuple(x for _, x in items)

    def mapping(self, value_tp: Any, data: object, path: str) -> Any:
        if not isinstance(data, Mapping):
            return self.error(path, f"expected a mapping, got {describe(data)}")
        out: dict[str, Any] = {}
        ok = True
        for key, item in data.items():
            if not isinstance(key, str):
                ok = self.error(join(path, key), "keys must be strings") is not INVALID
                continue
            out[key] = self.value(value_tp, item, join(path, key))
            ok = ok and out[key] is not INVALID
        if not ok:
            self.partial[path] = [(join(path, k), x) for k, x in out.items() if x is not INVALID]
        return out if ok else INVALID

    def dataclass(self, cls: type, data: object, path: str, *,
                  given: Mapping[str, Any] | None = None,
                  extra_keys: tuple[str, ...] = ()) -> Any:
        """Build dataclass `cls` from a YAML mapping.

        `given`: field values a hook already decided (they are not read from YAML).
        `extra_keys`: YAML keys a hook consumed itself; accepted and ignored here, and listed
        among the allowed keys in messages.
        """
        if not isinstance(data, Mapping):
            return self.error(path, f"expected a mapping, got {describe(data)}")
        given = given or {}
        renames = RENAMES.get(cls, {})
        fields = {renames.get(f.name, f.name): f for f in dataclasses.fields(cls)
                  if f.name not in given}
        allowed = sorted([*fields, *extra_keys])
        complete = all(v is not INVALID for v in given.values())
        for key in data:
            if not isinstance(key, str):
                complete = self.error(join(path, key), "keys must be strings") is not INVALID
            elif key not in fields and key not in extra_keys:
                near = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                self.error(join(path, key), f"unknown key ({hint}allowed: {', '.join(allowed)})")
                complete = False
        values: dict[str, Any] = {}
        values.update((k, v) for k, v in given.items() if v is not INVALID)
        for key, f in fields.items():
            sub = join(path, key)
            if key in data:
                hook = FIELD_HOOKS.get((cls, f.name))
                v = (hook(self, data[key], sub) if hook is not None
                     else self.value(hints(cls)[f.name], data[key], sub))
                if v is not INVALID:
                    v = self.check_bounds(f, v, sub)
            else:
                v = field_default(f)
                if v is INVALID:
                    self.error(sub, "missing (required)")
            if v is INVALID:
                complete = False
            else:
                values[f.name] = v
        for validator in VALIDATORS.get(cls, ()):
            validator(self, values, path)
        if not complete:
            return INVALID
        try:
            return cls(**values)
        except (TypeError, ValueError) as e:
            # A schema class that validates itself in __post_init__ reports here.
            return self.error(path, str(e))

    def check_bounds(self, f: dataclasses.Field[Any], v: Any, path: str) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return v
        lo, hi = bounds(f)
        if lo is not None and v < lo:
            return self.error(path, f"must be >= {_fmt_num(lo)}; got {_fmt_num(v)}")
        if hi is not None and v > hi:
            return self.error(path, f"must be <= {_fmt_num(hi)}; got {_fmt_num(v)}")
        return v
