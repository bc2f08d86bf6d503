"""Locating a DNS client: CIDR collections with their ECS scope, a MaxMind-format database."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbcdn.dns.locate import (CidrCollection, Client, GeoDatabase, GeoPlace, client_of,
                              client_of_ecs, place_of)
from tests.dns.geodb import city, write_geo_db


def v4(text: str) -> Client:
    addr, _, plen = text.partition("/")
    return Client(4, int(ipaddress.IPv4Address(addr)), int(plen or 32))


COLLECTION = CidrCollection("offices", {
    "berlin": ["10.0.0.0/8", "2001:db8::/32"],
    "munich": ["10.1.0.0/16"],
    "lab": ["10.1.2.0/28"],
})


@pytest.mark.parametrize(("client", "location", "scope"), [
    # the /8 holds a more specific block at 10.1/16: the answer holds for 10.2/15 only
    ("10.2.3.0/24", "berlin", 15),
    ("10.200.0.0/24", "berlin", 9),          # 10.128/9 holds no other block
    ("10.1.9.0/24", "munich", 21),           # 10.1.2.0/28 is in 10.1.0/20, not in 10.1.8/21
    ("10.1.2.0/24", "lab", 28),              # padded address in the /28: its length
    ("10.1.2.16/28", "munich", 28),          # the /28 beside the lab one
    ("192.0.2.0/24", None, 1),               # no block: 10/8 shares no first bit with 192
    ("11.0.0.0/8", None, 8),                 # 10/8 and 11/8 differ in the 8th bit
])
def test_longest_block_wins_and_scope_excludes_other_blocks(client: str, location: str | None,
                                                            scope: int) -> None:
    assert COLLECTION.locate(v4(client)) == (location, scope)


def test_scope_is_the_matched_block_when_nothing_is_nested() -> None:
    coll = CidrCollection("c", {"eu": ["198.51.100.0/24"], "us": ["203.0.113.0/24"]})
    assert coll.locate(v4("198.51.100.7")) == ("eu", 24)
    assert coll.locate(v4("198.51.100.0/24")) == ("eu", 24)


def test_other_family_blocks_do_not_count() -> None:
    assert COLLECTION.locate(Client(6, int(ipaddress.IPv6Address("2001:db8:5::")), 48)) \
        == ("berlin", 32)
    only_v6 = CidrCollection("c", {"x": ["2001:db8::/32"]})
    assert only_v6.locate(v4("10.0.0.1")) == (None, 0)


def test_client_of_source_and_ecs() -> None:
    assert client_of("127.0.0.2") == Client(4, 0x7F000002, 32)
    assert client_of("::ffff:192.0.2.1") == Client(4, 0xC0000201, 32)
    assert client_of("2001:db8::1") == Client(6, int(ipaddress.IPv6Address("2001:db8::1")), 128)
    assert client_of("") is None
    # family 1, source /24, scope 0, three address bytes
    assert client_of_ecs(bytes([0, 1, 24, 0, 198, 51, 100])) == v4("198.51.100.0/24")
    assert client_of_ecs(bytes([0, 2, 32, 0, 0x20, 0x01, 0x0d, 0xb8])) \
        == Client(6, int(ipaddress.IPv6Address("2001:db8::")), 32)
    assert client_of_ecs(bytes([0, 1, 0, 0])) == Client(4, 0, 0)


def test_place_of_reads_city_and_country_records() -> None:
    assert place_of(city("EU", "DE", "BY", (48.1, 11.6))) == GeoPlace("EU", "DE", "BY",
                                                                     (48.1, 11.6))
    assert place_of({"country": {"iso_code": "fr"}}) == GeoPlace(None, "FR", None, None)
    assert place_of(None) is None
    assert place_of({"continent": "EU", "subdivisions": []}) == GeoPlace(None, None, None, None)


def test_geo_database_lookup_with_prefix(tmp_path: Path) -> None:
    path = write_geo_db(tmp_path / "geo.mmdb", {
        "198.51.100.0/24": city("EU", "DE", "BY", (48.1, 11.6)),
        "2001:db8::/32": city("NA", "US", "CA", (37.4, -122.1)),
    })
    db = GeoDatabase(str(path))
    try:
        assert db.locate(v4("198.51.100.9")) == (GeoPlace("EU", "DE", "BY", (48.1, 11.6)), 24)
        assert db.locate(v4("198.51.100.0/24"))[1] == 24
        place, scope = db.locate(Client(6, int(ipaddress.IPv6Address("2001:db8:1::")), 48))
        assert place is not None and place.country == "US" and scope == 32
        place, scope = db.locate(v4("203.0.113.1"))
        assert place is None and 0 < scope <= 32   # not in the database: its empty network
    finally:
        db.close()


def test_geo_database_that_is_not_one(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"not a database")
    with pytest.raises(ValueError):
        GeoDatabase(str(bad))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=30),
       st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_scope_holds_for_every_address_in_it(blocks: list[tuple[int, int]], address: int,
                                             prefix: int) -> None:
    """The longest match, and a scope that is the shortest prefix of the client's address
    inside which no block can change the answer (checked against the definition)."""
    nets = {ipaddress.IPv4Network((a >> (32 - n) << (32 - n) if n else 0, n)) for a, n in blocks}
    coll = CidrCollection("c", {f"l{i}": [str(net)] for i, net in enumerate(sorted(nets))})
    addr = address >> (32 - prefix) << (32 - prefix) if prefix else 0
    location, scope = coll.locate(Client(4, addr, prefix))
    ip = ipaddress.IPv4Address(addr)
    holding = [n for n in nets if ip in n]
    want = max(holding, key=lambda n: n.prefixlen) if holding else None
    assert location == (None if want is None else
                        next(k for k, v in coll.locations.items() if v == (str(want),)))
    area = ipaddress.IPv4Network((addr >> (32 - scope) << (32 - scope) if scope else 0, scope))
    # no other block starts inside the scope's network: every address there matches alike
    assert all(n.prefixlen <= scope or not n.subnet_of(area) for n in nets if n != want) \
        or scope == 32
    # and one bit less would take one in (or drop the matched block)
    if 0 < scope < 32:
        wider = area.supernet()
        assert (want is not None and want.prefixlen == scope) or any(
            n.subnet_of(wider) and n.prefixlen > scope - 1 for n in nets if n != want)
