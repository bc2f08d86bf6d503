"""Environment-variable interpolation in configuration strings (pure).

Rules:
- `${NAME}` is replaced by the variable's value; unset is an error (so a missing secret stops
  the daemon at load, not at the first request that needs it).
- `${NAME:-default}` uses `default` when NAME is unset or empty (the shell's and Compose's
  meaning of `:-`); the default is literal text up to the closing brace.
- `$$` is a literal `$`. Any other `$` is left as it is, so values such as regular
  expressions ending in `$` need no escaping.
- NAME is `[A-Za-z_][A-Za-z0-9_]*`; a malformed `${...}` is an error rather than silently kept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EnvError(ValueError):
    """An interpolation that cannot be done; the message names the variable."""


def has_reference(text: str) -> bool:
    """True when `text` contains anything interpolation would change."""
    return "$" in text


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Return `text` with `${NAME}`, `${NAME:-default}` and `$$` expanded from `env`."""
    if "$" not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        nxt = text[j + 1] if j + 1 < n else ""
        if nxt == "$":
            out.append("$")
            i = j + 2
            continue
        if nxt != "{":
            out.append("$")
            i = j + 1
            continue
        close = text.find("}", j + 2)
        if close < 0:
            raise EnvError(f"unterminated variable reference {text[j:]!r} (write $$ for a "
                           "literal $)")
        body = text[j + 2:close]
        name, sep, default = body.partition(":-")
        if not _NAME.fullmatch(name):
            raise EnvError(f"invalid variable reference ${{{body}}}: expected ${{NAME}} or "
                           "${NAME:-default} (write $$ for a literal $)")
        value = env.get(name)
        if sep:
            out.append(value if value else default)
        elif value is None:
            raise EnvError(f"environment variable {name} is not set (use ${{{name}:-default}} "
                           "to give a default)")
        else:
            out.append(value)
        i = close + 1
    return "".join(out)
