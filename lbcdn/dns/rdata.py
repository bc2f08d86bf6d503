"""Record data in presentation format (what zone files and the `values:` of a record set
hold) -> dnslib RD objects, for the ten types lbcdn serves.

Rules:
- One tokenizer for master files and config values: blanks separate tokens, `"..."` is one
  token (blanks kept), `;` starts a comment outside quotes, `(` `)` group lines (the master
  file reader uses that), backslash escapes (`\\"`, `\\DDD`) are decoded only where the field
  is a character-string or a name.
- Every field is checked here (an address is an address, numbers are in range, a TXT string
  is at most 255 bytes), because dnslib accepts many wrong values and fails later, or never.
- Names inside rdata are lower-cased: DNS compares them without case, and one spelling keeps
  record equality (DELETE must match exactly) simple.
- Errors are `BadRdata` (a ValueError) with a message meant for a user.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from dnslib import AAAA, CAA, CNAME, MX, NS, PTR, QTYPE, RD, SOA, SRV, TXT, A, DNSBuffer, DNSLabel

from lbcdn.dns.names import BadName, Name, parse_name

TYPES: dict[str, int] = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16,
                         "AAAA": 28, "SRV": 33, "CAA": 257}
TYPE_NAMES: dict[int, str] = {v: k for k, v in TYPES.items()}


class BadRdata(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Token:
    text: str          # escapes still in place
    quoted: bool
    line: int = 1


@dataclass(frozen=True, slots=True)
class Line:
    """One logical line of a master file (parentheses joined)."""
    indented: bool     # began with a blank: the owner is the previous one
    tokens: tuple[Token, ...]
    number: int        # where it started


def logical_lines(text: str) -> Iterator[Line]:
    """Master-file text -> logical lines; raises BadRdata on an open quote or parenthesis."""
    tokens: list[Token] = []
    indented = False
    start = 1
    depth = 0
    line = 1
    i = 0
    n = len(text)
    at_line_start = True
    while i < n:
        c = text[i]
        if at_line_start:
            at_line_start = False
            if depth == 0:  # inside parentheses a new line continues the record
                if tokens:
                    yield Line(indented, tuple(tokens), start)
                tokens = []
                indented = c in " \t"
                start = line
        if c == "\n":
            line += 1
            at_line_start = True
            i += 1
        elif c in " \t\r":
            i += 1
        elif c == ";":
            while i < n and text[i] != "\n":
                i += 1
        elif c == "(":
            depth += 1
            i += 1
        elif c == ")":
            if depth == 0:
                raise BadRdata(f"line {line}: ')' without '('")
            depth -= 1
            i += 1
        elif c == '"':
            j = i + 1
            buf = []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    buf.append(text[j:j + 2])
                    j += 2
                    continue
                if text[j] == "\n":
                    line += 1
                buf.append(text[j])
                j += 1
            if j >= n:
                raise BadRdata(f"line {line}: unterminated quoted string")
            tokens.append(Token("".join(buf), True, line))
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in ' \t\r\n;()"':
                j += 2 if text[j] == "\\" and j + 1 < n else 1
            tokens.append(Token(text[i:j], False, line))
            i = j
    if depth:
        raise BadRdata(f"line {start}: '(' without ')'")
    if tokens:
        yield Line(indented, tuple(tokens), start)


def tokenize(text: str) -> tuple[Token, ...]:
    """A one-line value (`10 mail.example.com.`, `"v=spf1 -all" "x"`) -> tokens."""
    out: list[Token] = []
    for line in logical_lines(text.replace("\n", " ")):
        out.extend(line.tokens)
    return tuple(out)


def charstring(token: Token) -> bytes:
    """Decode a character-string token (escapes resolved); at most 255 bytes."""
    text = token.text
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            digits = text[i + 1:i + 4]
            if len(digits) == 3 and digits.isdigit():
                if int(digits) > 255:
                    raise BadRdata(f"escape \\{digits} is above 255")
                out.append(int(digits))
                i += 4
                continue
            out.extend(text[i + 1].encode("utf-8"))
            i += 2
            continue
        out.extend(c.encode("utf-8"))
        i += 1
    if len(out) > 255:
        raise BadRdata(f"a character-string is at most 255 bytes; this one has {len(out)} "
                       "(split it into several quoted strings)")
    return bytes(out)


_TTL_PART = re.compile(r"(\d+)([smhdw]?)", re.I)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_TTL = 2**31 - 1


def parse_ttl(text: str) -> int:
    """`300`, `1h`, `1h30m`, `2w` -> seconds (RFC 2181: at most 2^31 - 1)."""
    if not text or not text[0].isdigit():
        raise BadRdata(f"not a TTL: {text!r}")
    pos = 0
    total = 0
    while pos < len(text):
        m = _TTL_PART.match(text, pos)
        if not m:
            raise BadRdata(f"not a TTL: {text!r}")
        total += int(m.group(1)) * _UNITS[m.group(2).lower()]
        pos = m.end()
    if total > MAX_TTL:
        raise BadRdata(f"TTL {text!r} is above {MAX_TTL}")
    return total


def looks_like_ttl(text: str) -> bool:
    return bool(text) and text[0].isdigit() and re.fullmatch(r"(\d+[smhdwSMHDW]?)+", text) is not None


def _int(token: Token, what: str, hi: int) -> int:
    if not token.text.isdigit() or token.quoted:
        raise BadRdata(f"{what} must be a number 0-{hi}; got {token.text!r}")
    value = int(token.text)
    if value > hi:
        raise BadRdata(f"{what} must be 0-{hi}; got {value}")
    return value


def _name(token: Token, origin: Name) -> Name:
    try:
        return parse_name(token.text, origin)
    except BadName as e:
        raise BadRdata(str(e)) from None


def label(name: Name) -> DNSLabel:
    return DNSLabel(name)


def _count(tokens: Sequence[Token], rtype: str, n: int, shape: str) -> None:
    if len(tokens) != n:
        raise BadRdata(f"{rtype} needs {shape}; got {len(tokens)} field(s)")


def parse_rdata(rtype: int, tokens: Sequence[Token], origin: Name) -> RD:
    """Tokens of one record's data -> a checked dnslib RD (relative names use `origin`)."""
    t = TYPE_NAMES.get(rtype)
    if t is None:
        raise BadRdata(f"type {QTYPE.get(rtype)} is not served (types: {', '.join(TYPES)})")
    if not tokens:
        raise BadRdata(f"{t} record without data")
    if t == "A":
        _count(tokens, t, 1, "one IPv4 address")
        try:
            v4 = ipaddress.IPv4Address(tokens[0].text)
        except ValueError:
            raise BadRdata(f"not an IPv4 address: {tokens[0].text!r}") from None
        return A(tuple(v4.packed))
    if t == "AAAA":
        _count(tokens, t, 1, "one IPv6 address")
        try:
            v6 = ipaddress.IPv6Address(tokens[0].text)
        except ValueError:
            raise BadRdata(f"not an IPv6 address: {tokens[0].text!r}") from None
        return AAAA(tuple(v6.packed))
    if t in ("CNAME", "NS", "PTR"):
        _count(tokens, t, 1, "one name")
        cls = {"CNAME": CNAME, "NS": NS, "PTR": PTR}[t]
        rd: RD = cls(label(_name(tokens[0], origin)))
        return rd
    if t == "MX":
        _count(tokens, t, 2, "a preference and a name")
        return MX(label(_name(tokens[1], origin)), _int(tokens[0], "MX preference", 65535))
    if t == "TXT":
        return TXT([charstring(tok) for tok in tokens])
    if t == "SRV":
        _count(tokens, t, 4, "priority, weight, port and target")
        return SRV(_int(tokens[0], "SRV priority", 65535), _int(tokens[1], "SRV weight", 65535),
                   _int(tokens[2], "SRV port", 65535), label(_name(tokens[3], origin)))
    if t == "CAA":
        _count(tokens, t, 3, "flags, tag and value")
        flags = _int(tokens[0], "CAA flags", 255)
        tag = tokens[1].text
        if not re.fullmatch(r"[A-Za-z0-9]{1,15}", tag):
            raise BadRdata(f"CAA tag must be 1-15 letters or digits; got {tag!r}")
        value = charstring(tokens[2])
        if any(b < 0x20 or b > 0x7E for b in value):
            raise BadRdata("CAA value must be printable ASCII")
        return CAA(flags, tag.lower(), value.decode("ascii"))
    # SOA
    _count(tokens, t, 7, "mname, rname, serial, refresh, retry, expire and minimum")
    serial = _int(tokens[2], "SOA serial", 2**32 - 1)
    times = [serial] + [parse_ttl(tok.text) for tok in tokens[3:]]
    return SOA(label(_name(tokens[0], origin)), label(_name(tokens[1], origin)), times)


def parse_rdata_text(rtype: int, text: str, origin: Name) -> RD:
    try:
        return parse_rdata(rtype, tokenize(text), origin)
    except BadRdata:
        raise
    except ValueError as e:  # a BadName from tokens, or dnslib refusing a value
        raise BadRdata(str(e)) from None


def parse_type(text: str) -> int:
    rtype = TYPES.get(text.upper())
    if rtype is None:
        raise BadRdata(f"unknown or unserved type {text!r} (types: {', '.join(TYPES)})")
    return rtype


def rdata_wire(rd: RD) -> bytes:
    """The record data in wire form, uncompressed enough to compare records by."""
    buf = DNSBuffer()
    rd.pack(buf)
    return bytes(buf.data)


def rdata_text(rd: RD) -> str:
    return str(rd.toZone())


def address_of(rd: RD) -> str | None:
    """The address in an A or AAAA rdata, as text."""
    if isinstance(rd, AAAA):
        return str(ipaddress.IPv6Address(bytes(rd.data)))
    if isinstance(rd, A):
        return str(ipaddress.IPv4Address(bytes(rd.data)))
    return None


def target_of(rd: RD) -> Name | None:
    """The name an NS, CNAME, PTR, MX or SRV record points at (lower-cased)."""
    if isinstance(rd, (CNAME, MX)):  # NS and PTR are CNAME subclasses in dnslib
        return tuple(x.lower() for x in rd.label.label)
    if isinstance(rd, SRV):
        return tuple(x.lower() for x in rd.target.label)
    return None
