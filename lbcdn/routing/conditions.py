"""Route conditions beyond Host and path: HTTP headers, query string, method and source IP.

Job: decide, without I/O, whether one request meets a route's extra conditions. Compiled once
per route (`Conditions.compile`), asked per request with the request's `RequestFacts`.

Rules (as ALB's listener rules):
- All conditions a route gives must hold; within one condition any listed value may match.
- `http_header`: the name is case-insensitive; values are case-insensitive (ASCII letters)
  globs: `*` any run of bytes, `?` exactly one, `\\*` and `\\?` the characters themselves. A
  header sent several times matches when any of its values does. A missing header never
  matches (not even `*`).
- `query_string`: `{key, value}` pairs, globs as above, case-insensitive, compared with the
  percent-decoded parameters (`a%20b` is `a b`; `+` stays `+`, as ALB). No key: any parameter
  with a matching value. A parameter without `=` has the empty value.
- `method`: exact, case-sensitive (`get` is not `GET`).
- `source_ip`: CIDR ranges, IPv4 and IPv6; an IPv4-mapped IPv6 client (`::ffff:10.0.0.1`)
  is the IPv4 address. The client is the connection's peer; with `hops` > 0 (the listener
  sits behind that many trusted proxies) it is the X-Forwarded-For entry `hops` places from
  the right, the one the farthest trusted proxy added. A request with fewer entries did not
  come through the proxies, and meets no `source_ip` condition.

Why it is cheap: what depends on the request alone (its header map, query pairs, client
address) is worked out once per request and only when a condition asks for it; the values of a
condition are one regex, so a condition costs one dict lookup plus one match.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from urllib.parse import unquote_to_bytes

from lbcdn.memo import remember
from lbcdn.routing.config import MatchConfig


def glob_source(pattern: str) -> bytes:
    """An ALB wildcard pattern -> regex source: `*` any run, `?` one byte, `\\*`/`\\?` literal."""
    out: list[bytes] = []
    escaped = False
    for ch in pattern:
        if escaped:
            out.append(re.escape(ch.encode()))
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "*":
            out.append(b".*")
        elif ch == "?":
            out.append(b".")
        else:
            out.append(re.escape(ch.encode()))
    if escaped:
        out.append(re.escape(b"\\"))
    return b"".join(out)


def _globs(patterns: Sequence[str]) -> re.Pattern[bytes]:
    """Any of `patterns`, case-insensitive, to be used with fullmatch."""
    return re.compile(b"|".join(b"(?:" + glob_source(p) + b")" for p in patterns),
                      re.IGNORECASE | re.DOTALL)


_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


# parsed client addresses: keep-alive clients and proxies repeat theirs (bounded, lbcdn.memo)
_PARSED: dict[bytes, tuple[int, int] | None] = {}
PARSED_MAX = 4096


def parse_ip(text: bytes) -> tuple[int, int] | None:
    """(version, address as int) of an IP literal, IPv4-mapped IPv6 as IPv4; None if not one.
    (socket.inet_pton: ipaddress.ip_address costs microseconds, this a fraction of one.)"""
    if text in _PARSED:
        return _PARSED[text]
    return remember(_PARSED, text, _parse_ip(text), PARSED_MAX)


def _parse_ip(text: bytes) -> tuple[int, int] | None:
    try:
        literal = text.strip().decode("ascii")
        if ":" not in literal:
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, literal), "big")
        packed = socket.inet_pton(socket.AF_INET6, literal)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if packed[:12] == _V4_MAPPED:
        return 4, int.from_bytes(packed[12:], "big")
    return 6, int.from_bytes(packed, "big")


def source_address(client: bytes, xff: list[bytes] | None, hops: int) -> tuple[int, int] | None:
    """The address `source_ip` conditions compare: see the module docstring."""
    if hops <= 0:
        return parse_ip(client)
    entries: list[bytes] = []
    for value in xff or ():
        entries += value.split(b",")
    if len(entries) < hops:
        return None
    return parse_ip(entries[-hops])


class RequestFacts:
    """What conditions read of one request; derived parts are made on first use."""

    __slots__ = ("method", "headers", "query", "client", "xff", "hops", "_by_name", "_pairs",
                 "_source", "_source_done")

    def __init__(self, method: bytes, headers: list[tuple[bytes, bytes]], query: bytes | None,
                 client: bytes, xff: list[bytes] | None, hops: int) -> None:
        self.method = method
        self.headers = headers
        self.query = query
        self.client = client
        self.xff = xff
        self.hops = hops
        self._by_name: dict[bytes, list[bytes]] | None = None
        self._pairs: list[tuple[bytes, bytes]] | None = None
        self._source: tuple[int, int] | None = None
        self._source_done = False

    def header_values(self, name: bytes) -> list[bytes] | None:
        """Values of header `name` (lower-case), in order; None when absent."""
        by_name = self._by_name
        if by_name is None:
            by_name = self._by_name = {}
            for key, value in self.headers:
                lower = key.lower()
                value = value.rstrip()   # trailing OWS: the parser leaves it (leading, not)
                found = by_name.get(lower)
                if found is None:
                    by_name[lower] = [value]
                else:
                    found.append(value)
        return by_name.get(name)

    def query_pairs(self) -> list[tuple[bytes, bytes]]:
        pairs = self._pairs
        if pairs is None:
            pairs = self._pairs = []
            if self.query:
                for part in self.query.split(b"&"):
                    if part:
                        if b"%" in part:   # rarely: decoding costs more than the rest
                            key, _, value = part.partition(b"=")
                            pairs.append((unquote_to_bytes(key), unquote_to_bytes(value)))
                        else:
                            key, _, value = part.partition(b"=")
                            pairs.append((key, value))
        return pairs

    def source(self) -> tuple[int, int] | None:
        if not self._source_done:
            self._source = source_address(self.client, self.xff, self.hops)
            self._source_done = True
        return self._source


class Conditions:
    """One route's header, query, method and source-IP conditions, compiled."""

    __slots__ = ("methods", "headers", "query", "networks")

    def __init__(self, match: MatchConfig) -> None:
        self.methods: frozenset[bytes] | None = (
            frozenset(m.encode() for m in match.methods) if match.methods else None)
        self.headers: list[tuple[bytes, re.Pattern[bytes]]] = [
            (h.name.lower().encode(), _globs(h.values)) for h in match.http_headers]
        # (key pattern or None, value pattern) per listed pair
        self.query: list[tuple[re.Pattern[bytes] | None, re.Pattern[bytes]]] = [
            (_globs([q.key]) if q.key is not None else None, _globs([q.value]))
            for q in match.query_string]
        # (version, network address, mask) per range
        self.networks: list[tuple[int, int, int]] = []
        for text in match.source_ips:
            net = ipaddress.ip_network(text, strict=False)
            self.networks.append((net.version, int(net.network_address), int(net.netmask)))

    @staticmethod
    def compile(match: MatchConfig) -> Conditions | None:
        """The route's extra conditions, or None when it has only host and path ones."""
        if match.methods or match.http_headers or match.query_string or match.source_ips:
            return Conditions(match)
        return None

    def holds(self, facts: RequestFacts) -> bool:
        if self.methods is not None and facts.method not in self.methods:
            return False
        if self.networks and not self._source_holds(facts):
            return False
        for name, pattern in self.headers:
            values = facts.header_values(name)
            if values is None:
                return False
            for value in values:
                if pattern.fullmatch(value) is not None:
                    break
            else:
                return False
        if self.query and not self._query_holds(facts):
            return False
        return True

    def _source_holds(self, facts: RequestFacts) -> bool:
        source = facts.source()
        if source is None:
            return False
        version, address = source
        for net_version, network, mask in self.networks:
            if version == net_version and address & mask == network:
                return True
        return False

    def _query_holds(self, facts: RequestFacts) -> bool:
        for key, value in facts.query_pairs():
            for key_pattern, value_pattern in self.query:
                if (key_pattern is None or key_pattern.fullmatch(key) is not None) and \
                        value_pattern.fullmatch(value) is not None:
                    return True
        return False
