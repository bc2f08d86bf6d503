"""Small MaxMind-format (.mmdb) location databases for tests, written with mmdb-writer (the
format MaxMind's reader reads: GeoLite2-City-shaped records)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mmdb_writer
import netaddr


def city(continent: str, country: str, subdivision: str | None = None,
         coordinates: tuple[float, float] | None = None) -> dict[str, Any]:
    """A GeoLite2-City-shaped record."""
    record: dict[str, Any] = {"continent": {"code": continent},
                              "country": {"iso_code": country}}
    if subdivision is not None:
        record["subdivisions"] = [{"iso_code": subdivision}]
    if coordinates is not None:
        record["location"] = {"latitude": coordinates[0], "longitude": coordinates[1]}
    return record


def write_geo_db(path: Path, networks: dict[str, dict[str, Any]]) -> Path:
    """A database mapping each CIDR block (IPv4 or IPv6) to its record."""
    writer = mmdb_writer.MMDBWriter(ip_version=6, ipv4_compatible=True,
                                    database_type="GeoLite2-City")
    for cidr, record in networks.items():
        writer.insert_network(netaddr.IPSet([cidr]), record)
    writer.to_db_file(str(path))
    return path
