"""Parsing the header fields the cache decides from: Cache-Control, CDN-Cache-Control, dates,
Age, lists and entity-tags. Bytes in, plain values out; no policy here.

Rules (RFC 9111 / 9110 / 9213 / 8941):
- Directive names are case-insensitive and lower-cased; values may be tokens or quoted strings
  (a quoted `max-age="60"` is accepted, as RFC 9111 5.2 asks of recipients).
- A directive given twice: the first occurrence counts (RFC 9111 4.2.1 allows first-wins).
- delta-seconds that are not plain digits are invalid: freshness from an invalid value is 0,
  i.e. the response is stale (4.2.1 encourages treating invalid freshness as stale); values
  beyond 2^31 are 2^31 (1.2.2).
- CDN-Cache-Control is a Structured Field Dictionary (RFC 8941); one that fails to parse, or is
  empty, is ignored as if absent (RFC 9213 2.1), and then Cache-Control and Expires apply.
- HTTP-dates in all three historic formats are parsed; anything else is None (the caller decides:
  an invalid Expires means "already expired", RFC 9111 5.3).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Mapping, Sequence
from email.utils import parsedate_tz

Headers = Sequence[tuple[bytes, bytes]]

DELTA_MAX = 2147483648  # RFC 9111 1.2.2


def get_all(headers: Headers, name: bytes) -> list[bytes]:
    """Every field line value of `name` (lower-case), in order."""
    return [v for n, v in headers if n.lower() == name]


def get_first(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n.lower() == name:
            return v
    return None


def split_list(values: Iterable[bytes]) -> list[bytes]:
    """A comma-separated list over several field lines, members stripped, empties dropped.
    Commas inside quoted strings do not split."""
    out: list[bytes] = []
    for value in values:
        out += [m.strip() for m in _split_quoted(value, b",") if m.strip()]
    return out


def _split_quoted(value: bytes, sep: bytes) -> list[bytes]:
    if b'"' not in value:
        return value.split(sep)
    parts: list[bytes] = []
    start = 0
    quoted = False
    i = 0
    while i < len(value):
        c = value[i:i + 1]
        if quoted and c == b"\\":
            i += 2
            continue
        if c == b'"':
            quoted = not quoted
        elif c == sep and not quoted:
            parts.append(value[start:i])
            start = i + 1
        i += 1
    parts.append(value[start:])
    return parts


def unquote(value: bytes) -> bytes:
    if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
        return re.sub(rb"\\(.)", rb"\1", value[1:-1])
    return value


class Directives:
    """Parsed cache directives: name -> raw argument (None when given without one)."""

    __slots__ = ("items",)

    def __init__(self, items: Mapping[bytes, bytes | None] | None = None) -> None:
        self.items: Mapping[bytes, bytes | None] = items or {}

    def __contains__(self, name: bytes) -> bool:
        return name in self.items

    def __bool__(self) -> bool:
        return bool(self.items)

    def __repr__(self) -> str:
        return f"Directives({dict(self.items)!r})"

    def seconds(self, name: bytes) -> int | None:
        """delta-seconds of `name`: None when absent, -1 when present but invalid."""
        if name not in self.items:
            return None
        return parse_delta(self.items[name])

    def fields(self, name: bytes) -> frozenset[bytes] | None:
        """Field names qualifying `no-cache` / `private`: None when the directive is absent,
        empty when it is unqualified (applies to the whole response)."""
        if name not in self.items:
            return None
        arg = self.items[name]
        if arg is None:
            return frozenset()
        return frozenset(f.strip().lower() for f in arg.split(b",") if f.strip())


def parse_delta(arg: bytes | None) -> int:
    """delta-seconds -> int; -1 for an invalid or missing argument."""
    if arg is None or not arg.isdigit():
        return -1
    return min(int(arg), DELTA_MAX)


def parse_cache_control(values: Iterable[bytes]) -> Directives:
    items: dict[bytes, bytes | None] = {}
    for member in split_list(values):
        name, eq, arg = member.partition(b"=")
        name = name.strip().lower()
        if not name or name in items:
            continue
        items[name] = unquote(arg.strip()) if eq else None
    return Directives(items)


# -- CDN-Cache-Control: an RFC 8941 Dictionary ------------------------------------------------

_SF_KEY = re.compile(rb"[a-z*][a-z0-9_\-.*]*")
_SF_TOKEN = re.compile(rb"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_SF_NUMBER = re.compile(rb"-?[0-9]{1,15}(\.[0-9]{1,3})?")


class _SFError(ValueError):
    pass


class _SFParser:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.i = 0

    def ws(self) -> None:
        while self.i < len(self.data) and self.data[self.i] in b" \t":
            self.i += 1

    def peek(self) -> bytes:
        return self.data[self.i:self.i + 1]

    def bare_item(self) -> bytes | bool:
        c = self.peek()
        if c == b'"':
            return self.string()
        if c == b"?":
            v = self.data[self.i + 1:self.i + 2]
            if v not in (b"0", b"1"):
                raise _SFError("bad boolean")
            self.i += 2
            return v == b"1"
        if c == b":":
            end = self.data.find(b":", self.i + 1)
            if end < 0:
                raise _SFError("bad byte sequence")
            out = self.data[self.i:end + 1]
            self.i = end + 1
            return out
        m = _SF_NUMBER.match(self.data, self.i) if c in b"-0123456789" and c else None
        if m:
            self.i = m.end()
            return m.group()
        m = _SF_TOKEN.match(self.data, self.i)
        if m:
            self.i = m.end()
            return m.group()
        raise _SFError("bad item")

    def string(self) -> bytes:
        out = bytearray()
        self.i += 1
        while self.i < len(self.data):
            c = self.data[self.i]
            self.i += 1
            if c == 0x5C:
                if self.i >= len(self.data) or self.data[self.i] not in b'"\\':
                    raise _SFError("bad escape")
                out.append(self.data[self.i])
                self.i += 1
            elif c == 0x22:
                return bytes(out)
            elif c < 0x20 or c > 0x7E:
                raise _SFError("bad string character")
            else:
                out.append(c)
        raise _SFError("unterminated string")

    def params(self) -> None:
        while self.peek() == b";":
            self.i += 1
            self.ws()
            if not _SF_KEY.match(self.data, self.i):
                raise _SFError("bad parameter key")
            self.key()
            if self.peek() == b"=":
                self.i += 1
                self.bare_item()

    def key(self) -> bytes:
        m = _SF_KEY.match(self.data, self.i)
        if not m:
            raise _SFError("bad key")
        self.i = m.end()
        return m.group()

    def member_value(self) -> bytes | None:
        """The value as a Cache-Control-style argument: None for boolean true, digits for an
        integer, the text of a string/token, field names joined by commas for an inner list."""
        if self.peek() == b"(":
            self.i += 1
            names: list[bytes] = []
            while True:
                while self.peek() == b" ":
                    self.i += 1
                if self.peek() == b")":
                    self.i += 1
                    break
                item = self.bare_item()
                self.params()
                if isinstance(item, bool):
                    raise _SFError("boolean in a list of field names")
                names.append(item)
                if self.peek() not in (b" ", b")"):
                    raise _SFError("bad inner list")
            self.params()
            return b", ".join(names)
        item = self.bare_item()
        self.params()
        if item is True:
            return None
        if item is False:
            raise _SFError("false directive")  # handled by the caller: dropped
        return item


def parse_cdn_cache_control(values: Sequence[bytes]) -> Directives | None:
    """A targeted field -> Directives, or None when it is absent, invalid or empty (then the
    cache falls back to Cache-Control and Expires, RFC 9213 2.1)."""
    if not values:
        return None
    p = _SFParser(b",".join(values))
    items: dict[bytes, bytes | None] = {}
    try:
        p.ws()
        while p.i < len(p.data):
            name = p.key()
            value: bytes | None = None
            drop = False
            if p.peek() == b"=":
                p.i += 1
                try:
                    value = p.member_value()
                except _SFError as e:
                    if str(e) != "false directive":
                        raise
                    drop = True  # `no-store=?0` turns the directive off
            else:
                p.params()
            # RFC 8941: a later duplicate key overwrites the earlier one.
            if drop:
                items.pop(name, None)
            else:
                items[name] = value
            p.ws()
            if p.i >= len(p.data):
                break
            if p.peek() != b",":
                raise _SFError("expected a comma")
            p.i += 1
            p.ws()
            if p.i >= len(p.data):
                raise _SFError("trailing comma")
    except _SFError:
        return None
    for k, v in list(items.items()):
        # Integers keep the delta-seconds syntax; decimals and negatives are invalid there.
        if v is not None and v[:1] == b"-":
            items[k] = b"invalid"
    return Directives(items) if items else None


# -- dates, Age, entity-tags -----------------------------------------------------------------

def parse_http_date(value: bytes | None) -> float | None:
    """IMF-fixdate, RFC 850 or asctime -> POSIX seconds; None when it is not a date."""
    if value is None:
        return None
    try:
        text = value.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    # parsedate_tz is lenient about much, but a bare number ("0", "-1") is never a date.
    if not text or text.lstrip("-").isdigit():
        return None
    parts = parsedate_tz(text)
    if parts is None:
        return None
    try:
        stamp = calendar.timegm(parts[:9])
    except (OverflowError, ValueError):
        return None
    return float(stamp - (parts[9] or 0))


def parse_age(headers: Headers) -> int:
    """The Age value, 0 when absent or invalid; the first member of a list counts."""
    values = get_all(headers, b"age")
    if not values:
        return 0
    first = values[0].split(b",")[0].strip()
    if not first.isdigit():
        return 0
    return min(int(first), DELTA_MAX)


def parse_etag(value: bytes | None) -> bytes | None:
    """A syntactically valid entity-tag (`"x"` or `W/"x"`), else None."""
    if value is None:
        return None
    value = value.strip()
    body = value[2:] if value[:2] == b"W/" else value
    if len(body) >= 2 and body[:1] == b'"' and body[-1:] == b'"' and b'"' not in body[1:-1]:
        return value
    return None


def etag_list(values: Iterable[bytes]) -> list[bytes] | None:
    """If-Match / If-None-Match members; ["*"] for any; None when the field is absent."""
    values = list(values)
    if not values:
        return None
    members = split_list(values)
    if members == [b"*"]:
        return [b"*"]
    return [m for m in members if parse_etag(m) is not None]


def opaque(tag: bytes) -> bytes:
    return tag[2:] if tag[:2] == b"W/" else tag


def strong_match(a: bytes, b: bytes) -> bool:
    """RFC 9110 8.8.3.2: both strong and identical."""
    return a == b and a[:2] != b"W/"


def weak_match(a: bytes, b: bytes) -> bool:
    return opaque(a) == opaque(b)
