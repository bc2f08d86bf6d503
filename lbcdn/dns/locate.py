"""Where a DNS client is: its subnet, the CIDR collection location it falls in, and its place
in a MaxMind-format location database (pure but for reading that database).

Rules:
- A client is an address and a prefix length: an EDNS Client Subnet option's ADDRESS and
  SOURCE PREFIX-LENGTH (RFC 7871), or the query's source address at its full length. The
  address is the network address (bits past the prefix are zero).
- CIDR collections (Route 53 IP-based routing): each location lists blocks. The client's
  location is that of the longest block containing its address; none: no block does.
- Every lookup also says its scope (RFC 7871 7.2.1 SCOPE PREFIX-LENGTH): the shortest prefix
  of the client's address over which the result cannot change. For a collection that is the
  matched block's length, made longer when a more specific block of the collection lies
  inside it (or, with no match, anywhere near the client): every address sharing the scope
  prefix gets the same location. For a location database it is the length of the
  database's network holding the address. The scope may exceed the source prefix: the
  answer then depends on bits the client did not send (RFC 7871 allows it; resolvers cache
  such an answer for the source prefix only).
"""

from __future__ import annotations

import bisect
import ipaddress
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import maxminddb


class Client(NamedTuple):
    version: int   # 4 or 6
    address: int   # the network address as an integer
    prefix: int    # bits of it that are known


def client_of(text: str) -> Client | None:
    """The client behind a query's source address (text); None when it is not an address.
    IPv4-mapped IPv6 sources (a dual-stack socket) count as IPv4."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return Client(addr.version, int(addr), addr.max_prefixlen)


def client_of_ecs(option: bytes) -> Client:
    """The client an ECS option (well-formed: wire.ecs_ok) describes."""
    version = 4 if option[1] == 1 else 6
    size = 4 if version == 4 else 16
    address = int.from_bytes(option[4:].ljust(size, b"\0"), "big")
    return Client(version, address, option[2])


def _bits(version: int) -> int:
    return 32 if version == 4 else 128


class CidrCollection:
    """Named locations of CIDR blocks; a block belongs to one location."""

    def __init__(self, name: str, locations: Mapping[str, Sequence[str]]) -> None:
        self.name = name
        self.locations = {loc: tuple(blocks) for loc, blocks in locations.items()}
        blocks: dict[int, list[tuple[int, int, str]]] = {4: [], 6: []}
        for loc, texts in self.locations.items():
            for text in texts:
                net = ipaddress.ip_network(text, strict=False)
                blocks[net.version].append((int(net.network_address), net.prefixlen, loc))
        # Per IP version: one table per prefix length, longest first (the longest match is
        # the first hit), and every block sorted by network address (the scope's neighbours).
        self._tables: dict[int, list[tuple[int, int, dict[int, str]]]] = {}
        self._nets: dict[int, list[int]] = {}
        self._host_bits: dict[int, list[int]] = {}
        for version, found in blocks.items():
            bits = _bits(version)
            tables: dict[int, dict[int, str]] = {}
            for start, length, loc in found:
                tables.setdefault(length, {})[start >> (bits - length)] = loc
            self._tables[version] = [(length, bits - length, tables[length])
                                     for length in sorted(tables, reverse=True)]
            found.sort()
            self._nets[version] = [start for start, _, _ in found]
            self._host_bits[version] = [bits - length for _, length, _ in found]

    def locate(self, client: Client) -> tuple[str | None, int]:
        """(location or None, scope) for `client`; O(prefix lengths used + log blocks)."""
        version, addr = client.version, client.address
        bits = _bits(version)
        best_length, best = -1, ""
        for length, host_bits, table in self._tables[version]:
            loc = table.get(addr >> host_bits)
            if loc is not None:
                best_length, best = length, loc
                break
        # A block not holding the address lies inside the client's /p for every p up to the
        # bits they share, so the scope must be longer than that. Sorted by address, the
        # blocks sharing most with it are the nearest on each side that do not hold it (only
        # blocks starting at or below it can, at most one per prefix length).
        nets, host_bits_of = self._nets[version], self._host_bits[version]
        i = bisect.bisect_right(nets, addr)
        shared_most = bits - (nets[i] ^ addr).bit_length() if i < len(nets) else -1
        for j in range(i - 1, -1, -1):
            diff = addr ^ nets[j]
            if diff >> host_bits_of[j]:
                shared_most = max(shared_most, bits - diff.bit_length())
                break
        scope = min(max(best_length, shared_most + 1, 0), bits)
        return (best if best_length >= 0 else None), scope


class GeoPlace(NamedTuple):
    continent: str | None
    country: str | None
    subdivision: str | None             # the first (largest) subdivision's ISO code
    coordinates: tuple[float, float] | None   # (latitude, longitude)


def _code(record: Mapping[str, Any], key: str, field: str) -> str | None:
    part = record.get(key)
    value = part.get(field) if isinstance(part, Mapping) else None
    return value.upper() if isinstance(value, str) else None


def place_of(record: object) -> GeoPlace | None:
    """A GeoIP2/GeoLite2 City or Country record -> GeoPlace (None: not a mapping)."""
    if not isinstance(record, Mapping):
        return None
    subdivision = None
    subs = record.get("subdivisions")
    if isinstance(subs, Sequence) and subs and isinstance(subs[0], Mapping):
        code = subs[0].get("iso_code")
        subdivision = code.upper() if isinstance(code, str) else None
    coordinates = None
    loc = record.get("location")
    if isinstance(loc, Mapping):
        lat, lon = loc.get("latitude"), loc.get("longitude")
        if isinstance(lat, (int, float)) and isinstance(lon, (int, float)):
            coordinates = (float(lat), float(lon))
    return GeoPlace(_code(record, "continent", "code"), _code(record, "country", "iso_code"),
                    subdivision, coordinates)


class GeoDatabase:
    """A MaxMind-format (.mmdb) database, read with MaxMind's reader (memory-mapped).
    OSError when the file cannot be read, ValueError when it is not such a database."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._reader = maxminddb.open_database(path)
        except maxminddb.InvalidDatabaseError as e:
            raise ValueError(f"not a MaxMind DB file: {e}") from None

    def locate(self, client: Client) -> tuple[GeoPlace | None, int]:
        """(place or None, scope) for `client`."""
        addr = (ipaddress.IPv4Address(client.address) if client.version == 4
                else ipaddress.IPv6Address(client.address))
        try:
            record, length = self._reader.get_with_prefix_len(addr)
        except ValueError:   # an IPv6 address in an IPv4-only database
            return None, 0
        return place_of(record), length

    def close(self) -> None:
        self._reader.close()


def open_location_database(path: str | None, base_dir: str) -> GeoDatabase | None:
    """`dns.location_database` opened (relative to `base_dir`), None when unset; ValueError
    naming the key and the file when it cannot be read."""
    if path is None:
        return None
    full = os.path.join(base_dir, path)
    try:
        return GeoDatabase(full)
    except (OSError, ValueError) as e:
        raise ValueError(f"dns.location_database: cannot read {full}: {e}") from None
