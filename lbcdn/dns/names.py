"""Domain names: text <-> the internal form, and the tests the zone model needs.

Internal form: `Name`, a tuple of lower-cased label bytes, leftmost label first, root = ().
Lower-casing once at the edge makes every comparison and dict lookup case-insensitive in the
way DNS means it (ASCII only, RFC 4343), so nothing else has to think about case. The case a
client used is kept by the engine from the query bytes, never from a Name.

Rules: presentation format as in RFC 1035 section 5.1 (`\\.` and `\\DDD` escapes, `@` for the
origin, a trailing dot for absolute names); a label is at most 63 bytes and a name at most
255 bytes in wire form; errors are `BadName` (a ValueError) with a message meant for a user.
"""

from __future__ import annotations

import ipaddress

Name = tuple[bytes, ...]

ROOT: Name = ()
MAX_LABEL = 63
MAX_WIRE = 255


class BadName(ValueError):
    pass


def _unescape_labels(text: str) -> list[bytearray]:
    labels: list[bytearray] = [bytearray()]
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 >= n:
                raise BadName(f"{text!r}: dangling backslash")
            if text[i + 1:i + 4].isdigit() and len(text[i + 1:i + 4]) == 3:
                value = int(text[i + 1:i + 4])
                if value > 255:
                    raise BadName(f"{text!r}: escape \\{text[i + 1:i + 4]} is above 255")
                labels[-1].append(value)
                i += 4
                continue
            ch = text[i + 1]
            if ord(ch) > 127:
                raise BadName(f"{text!r}: only ASCII may follow a backslash")
            labels[-1].append(ord(ch))
            i += 2
            continue
        if c == ".":
            labels.append(bytearray())
        elif ord(c) > 127:
            raise BadName(f"{text!r}: non-ASCII character {c!r} (use the xn-- form)")
        elif c.isspace():
            raise BadName(f"{text!r}: spaces are not allowed in names")
        else:
            labels[-1].append(ord(c))
        i += 1
    return labels


def parse_name(text: str, origin: Name | None = None) -> Name:
    """Presentation-format name -> Name. Relative names (no trailing dot) and `@` need
    `origin`; without one, a relative name is taken as absolute."""
    if text == "@":
        if origin is None:
            raise BadName("@ needs an origin")
        return origin
    if text == ".":
        return ROOT
    if not text:
        raise BadName("empty name")
    labels = _unescape_labels(text)
    absolute = not labels[-1] and len(labels) > 1
    if absolute:
        labels.pop()
    if any(not label for label in labels):
        raise BadName(f"{text!r}: empty label")
    name = tuple(bytes(label).lower() for label in labels)
    if not absolute and origin is not None:
        name = name + origin
    check_name(name, text)
    return name


def check_name(name: Name, shown: str | None = None) -> None:
    for label in name:
        if len(label) > MAX_LABEL:
            raise BadName(f"{shown or to_text(name)!r}: label longer than {MAX_LABEL} bytes")
    if wire_length(name) > MAX_WIRE:
        raise BadName(f"{shown or to_text(name)[:40]!r}: name longer than {MAX_WIRE} bytes")


def wire_length(name: Name) -> int:
    return sum(len(label) + 1 for label in name) + 1


_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*")


def label_text(label: bytes) -> str:
    if all(b in _PLAIN for b in label):
        return label.decode("ascii")
    out = []
    for b in label:
        if b in _PLAIN:
            out.append(chr(b))
        elif 0x21 <= b <= 0x7E:
            out.append("\\" + chr(b))
        else:
            out.append(f"\\{b:03d}")
    return "".join(out)


def to_text(name: Name) -> str:
    """Absolute presentation form with a trailing dot; the root is `.`."""
    if not name:
        return "."
    return ".".join(label_text(label) for label in name) + "."


def to_wire(name: Name) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in name) + b"\x00"


def is_subdomain(name: Name, parent: Name) -> bool:
    """True when `name` is `parent` or below it."""
    k = len(parent)
    return k == 0 or (len(name) >= k and name[-k:] == parent)


def relative_text(name: Name, origin: Name) -> str:
    """`@` for the origin, a relative name below it, else the absolute name."""
    if name == origin:
        return "@"
    if is_subdomain(name, origin) and origin:
        return ".".join(label_text(label) for label in name[:-len(origin)])
    return to_text(name)


def is_wildcard(name: Name) -> bool:
    return bool(name) and name[0] == b"*"


def reverse_name(address: str) -> Name:
    """The in-addr.arpa / ip6.arpa name of an IPv4 or IPv6 address (ValueError if neither)."""
    ip = ipaddress.ip_address(address)
    return parse_name(ip.reverse_pointer + ".")
