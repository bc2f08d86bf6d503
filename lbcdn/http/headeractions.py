"""Header actions of a route: set, add and remove fields of a request or a response, with
`#{...}` variables in values (ALB's and CloudFront's response headers policies).

Pure: a route's actions are compiled once (HeaderActions, which raises ValueError naming what is
wrong; the config loader runs the same checks) and applied to a head's forwarded lines (`fwd`
of lbcdn.http.head's RequestHead and ResponseHead), giving new ones: heads are shared between
requests and never modified.

Rules:
- names are compared case-insensitively; `remove` drops every field of a name, `set` drops
  them and adds one, `add` appends one, `default` adds one only when the message has none of
  that name (CloudFront's `override: false`); they apply in that order;
- framing and hop-by-hop fields (Content-Length, Transfer-Encoding, Connection, Host...) are
  lbcdn's to write, so no action may name them: a wrong one would desynchronize the stream;
- variables: #{client_ip}, #{request_id}, #{host} (the request's Host, lower case, without port), #{scheme}
  (`http` or `https`); a value renders to bytes with no CR, LF or NUL (a client-controlled Host
  cannot smuggle a line: the parser refused such bytes already, and rendering checks again).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

VARIABLES: Final = ("client_ip", "request_id", "host", "scheme")
_VARIABLE_RE: Final = re.compile(r"#\{([^}]*)\}")
_TOKEN_RE: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE_RE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# fields whose bytes frame the message or belong to one connection (RFC 9110 7.6.1, RFC 9112)
RESERVED: Final = frozenset({
    "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
    "trailer", "proxy-connection", "host"})

# request fields the proxy writes itself (lbcdn.http.head.origin_request): an action on them
# would send them twice
REQUEST_RESERVED: Final = frozenset({
    "via", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-port", "x-request-id"})

# A template: literal bytes and variable indices (into VARIABLES), in order.
Template = tuple[bytes | int, ...]
# Variable values in VARIABLES order.
Values = tuple[bytes, bytes, bytes, bytes]


def check_name(name: str, request: bool = False) -> str:
    """`name` if it may be acted on (in a request: `request`), else ValueError saying why."""
    if not _TOKEN_RE.match(name):
        raise ValueError(f"{name!r} is not a header field name")
    if name.lower() in RESERVED:
        raise ValueError(f"{name!r} is written by lbcdn itself (framing or hop-by-hop)")
    if request and name.lower() in REQUEST_RESERVED:
        raise ValueError(f"{name!r} is written by lbcdn itself on forwarded requests (see the "
                         f"listener's x_forwarded_for and request_id_header)")
    return name


def compile_template(text: str) -> Template:
    """A header value with `#{variable}`s -> its template; ValueError for an unknown variable
    or a character a field value cannot hold."""
    if _BAD_VALUE_RE.search(text):
        raise ValueError(f"{text!r}: control characters are not allowed in a header value")
    pieces: list[bytes | int] = []
    at = 0
    for m in _VARIABLE_RE.finditer(text):
        if m.group(1) not in VARIABLES:
            raise ValueError(f"unknown variable #{{{m.group(1)}}} (known: "
                             f"{', '.join('#{' + v + '}' for v in VARIABLES)})")
        if m.start() > at:
            pieces.append(text[at:m.start()].encode("utf-8"))
        pieces.append(VARIABLES.index(m.group(1)))
        at = m.end()
    if at < len(text):
        pieces.append(text[at:].encode("utf-8"))
    return tuple(pieces)


def render(template: Template, values: Values) -> bytes:
    out = b"".join(p if isinstance(p, bytes) else values[p] for p in template)
    # a variable's bytes come from the client (Host) or the connection: never a line break
    return out.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")


class HeaderActions:
    """One side's compiled actions; `apply(fwd, values)` -> new forwarded pieces."""

    __slots__ = ("remove", "set", "add", "default", "_drop")

    def __init__(self, remove: Iterable[str] = (), set: Mapping[str, str] | None = None,
                 add: Mapping[str, str] | None = None,
                 default: Mapping[str, str] | None = None, *, request: bool = False) -> None:
        def lines(given: Mapping[str, str] | None) -> tuple[tuple[bytes, bytes, Template], ...]:
            return tuple((check_name(n, request).lower().encode(), n.encode(),
                          compile_template(v)) for n, v in (given or {}).items())
        self.remove = frozenset(check_name(n, request).lower().encode() for n in remove)
        self.set = lines(set)
        self.add = lines(add)
        self.default = lines(default)
        # names whose fields go before anything is added back
        self._drop = self.remove | {lower for lower, _, _ in self.set}

    def __bool__(self) -> bool:
        return bool(self.remove or self.set or self.add or self.default)

    def apply(self, fwd: list[bytes], values: Values) -> list[bytes]:
        return rewrite(fwd, self._drop,
                       [(name, render(t, values)) for _, name, t in self.set + self.add],
                       [(name, render(t, values)) for _, name, t in self.default])

    def lines(self, values: Values) -> bytes:
        """The fields these actions add to a response lbcdn writes itself (a local answer),
        which has no origin fields to replace."""
        return b"".join(b"%s: %s\r\n" % (name, render(template, values))
                        for _, name, template in self.set + self.add + self.default)


def rewrite(fwd: list[bytes], drop: frozenset[bytes], add: list[tuple[bytes, bytes]],
            defaults: list[tuple[bytes, bytes]]) -> list[bytes]:
    """Forwarded pieces `fwd` (any split of whole `name: value CRLF` lines: a request's
    are four pieces a field, a response's one block) without the fields named in `drop` (lower
    case), then `add`, then each of `defaults` whose name is in neither what is left nor
    `drop`; as four pieces a field."""
    out: list[bytes] = []
    present: set[bytes] = set()
    for line in b"".join(fwd).split(b"\r\n"):
        if not line:
            continue
        name, _, value = line.partition(b":")
        lower = name.lower()
        if lower in drop:
            continue
        present.add(lower)
        out += (name, b": ", value.strip(b" \t"), b"\r\n")
    for name, value in add:
        out += (name, b": ", value, b"\r\n")
    for name, value in defaults:
        lower = name.lower()
        if lower not in present and lower not in drop:
            out += (name, b": ", value, b"\r\n")
    return out
