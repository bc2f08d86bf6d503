"""RFC 1035 master files (zone files) -> records.

dnslib has a zone parser, but it misses TTL units on records, class-before-TTL order,
relative `$ORIGIN`, and lets bad values through to fail at pack time; this reader uses the
shared tokenizer and rdata checks instead (rdata.py).

Rules:
- Directives: `$ORIGIN` (relative to the current origin), `$TTL` (with units); `$INCLUDE`
  and `$GENERATE` are rejected with a clear message rather than half-supported.
- Owner: a name, `@`, or nothing (a line starting with a blank reuses the previous owner).
  TTL and class may come in either order; only class IN is served.
- TTL when a record has none: `$TTL`, else the last explicit TTL (RFC 1035), else the
  zone's default.
- Every problem is collected with its line number; nothing is half loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from dnslib import RD

from lbcdn.dns.names import BadName, Name, parse_name
from lbcdn.dns.rdata import (TYPES, BadRdata, Line, logical_lines, looks_like_ttl, parse_rdata,
                             parse_ttl)


@dataclass(frozen=True, slots=True)
class Record:
    name: Name
    rtype: int
    ttl: int
    rd: RD
    line: int


class MasterFileError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def parse_master(text: str, origin: Name, default_ttl: int) -> list[Record]:
    """Parse a whole master file; raises MasterFileError listing every problem."""
    records: list[Record] = []
    problems: list[str] = []
    current_origin = origin
    dollar_ttl: int | None = None
    last_ttl: int | None = None
    owner: Name | None = None
    try:
        lines = list(logical_lines(text))
    except BadRdata as e:
        raise MasterFileError([str(e)]) from None
    for line in lines:
        try:
            first = line.tokens[0].text
            if not line.indented and first.startswith("$"):
                directive = first.upper()
                args = line.tokens[1:]
                if directive == "$ORIGIN" and len(args) == 1:
                    current_origin = parse_name(args[0].text, current_origin)
                elif directive == "$TTL" and len(args) == 1:
                    dollar_ttl = parse_ttl(args[0].text)
                elif directive in ("$ORIGIN", "$TTL"):
                    raise BadRdata(f"{directive} takes one argument")
                else:
                    raise BadRdata(f"{first} is not supported (only $ORIGIN and $TTL)")
                continue
            rec, owner, explicit_ttl = _record(line, current_origin, owner,
                                               dollar_ttl, last_ttl, default_ttl)
            if explicit_ttl:
                last_ttl = rec.ttl
            records.append(rec)
        except (BadRdata, BadName) as e:
            problems.append(f"line {line.number}: {e}")
    if problems:
        raise MasterFileError(problems)
    return records


def _record(line: Line, origin: Name, previous: Name | None, dollar_ttl: int | None,
            last_ttl: int | None, default_ttl: int) -> tuple[Record, Name, bool]:
    tokens = list(line.tokens)
    if line.indented:
        if previous is None:
            raise BadRdata("no owner name (the first record must name one)")
        owner = previous
    else:
        owner = parse_name(tokens.pop(0).text, origin)
    ttl: int | None = None
    rtype: int | None = None
    # [TTL] [class] type, or [class] [TTL] type.
    while tokens:
        word = tokens[0].text
        if ttl is None and looks_like_ttl(word) and not tokens[0].quoted:
            ttl = parse_ttl(word)
        elif word.upper() in ("IN", "CH", "HS", "CS") and not tokens[0].quoted:
            if word.upper() != "IN":
                raise BadRdata(f"class {word} is not served (only IN)")
        else:
            rtype = TYPES.get(word.upper())
            if rtype is None:
                raise BadRdata(f"unknown or unserved type {word!r} (types: {', '.join(TYPES)})")
            tokens.pop(0)
            break
        tokens.pop(0)
    if rtype is None:
        raise BadRdata("record without a type")
    explicit = ttl is not None
    if ttl is None:
        ttl = dollar_ttl if dollar_ttl is not None else (
            last_ttl if last_ttl is not None else default_ttl)
    rd = parse_rdata(rtype, tokens, origin)
    return Record(owner, rtype, ttl, rd, line.number), owner, explicit
