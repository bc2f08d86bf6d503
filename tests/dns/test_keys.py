"""DNSSEC keys: DNSKEY/DS/key tag as dnspython computes them, the key file (0600, reloaded
as it was, with the last served serial), algorithm changes, rollover steps in order only,
and when a scheduled rollover takes them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from lbcdn.dns.keys import (DnssecKeyError, ds_rdata, generate, key_path, key_rows,
                            load, load_or_create, roll, rollover_step, saved_serial)
from lbcdn.dns.names import parse_name

ORIGIN = parse_name("example.com.")


@pytest.mark.parametrize("algorithm", [13, 15])
def test_tag_and_ds_match_dnspython(algorithm: int) -> None:
    key = generate(algorithm, time.time())
    rd = dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.DNSKEY, key.dnskey, 0,
                             len(key.dnskey))
    assert key.tag == dns.dnssec.key_id(rd)
    expect = dns.dnssec.make_ds(dns.name.from_text("example.com."), rd, "SHA256")
    assert ds_rdata(ORIGIN, key.dnskey, algorithm) == expect.to_wire()
    shown = key_rows(ORIGIN, [key])[0]
    assert shown["ds"] == f"example.com. IN DS {expect.to_text().upper()}".replace(
        "EXAMPLE", "example")


def test_file_is_private_and_reloaded(tmp_path: Path) -> None:
    keys = load_or_create(str(tmp_path), ORIGIN, 13)
    path = key_path(str(tmp_path), ORIGIN)
    assert os.stat(path).st_mode & 0o777 == 0o600
    again = load_or_create(str(tmp_path), ORIGIN, 13)
    assert [k.dnskey for k in again] == [k.dnskey for k in keys]
    # another algorithm: a new key (the DS must change at the parent)
    ed = load_or_create(str(tmp_path), ORIGIN, 15)
    assert [k.algorithm for k in ed] == [15] and load(str(tmp_path), ORIGIN)[0].dnskey == \
        ed[0].dnskey


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    path = key_path(str(tmp_path), ORIGIN)
    os.makedirs(os.path.dirname(path))
    Path(path).write_text("{not json")
    with pytest.raises(DnssecKeyError, match="unreadable DNSSEC key file"):
        load_or_create(str(tmp_path), ORIGIN, 13)


def test_rollover_steps_in_order(tmp_path: Path) -> None:
    keys = load_or_create(str(tmp_path), ORIGIN, 13)
    path = key_path(str(tmp_path), ORIGIN)
    with pytest.raises(DnssecKeyError, match="no rollover in progress"):
        roll(path, keys, "finish", 13, time.time())
    both = roll(path, keys, "start", 13, time.time())
    assert len(both) == 2 and both[0].dnskey == keys[0].dnskey
    assert len(load(str(tmp_path), ORIGIN)) == 2   # saved before it is used
    with pytest.raises(DnssecKeyError, match="already in progress"):
        roll(path, both, "start", 13, time.time())
    done = roll(path, both, "finish", 13, time.time())
    assert [k.dnskey for k in done] == [both[1].dnskey]
    with pytest.raises(DnssecKeyError, match="unknown rollover step"):
        roll(path, done, "sideways", 13, time.time())


def test_serial_is_kept_with_the_keys(tmp_path: Path) -> None:
    keys = load_or_create(str(tmp_path), ORIGIN, 13)
    path = key_path(str(tmp_path), ORIGIN)
    assert saved_serial(str(tmp_path), ORIGIN) is None
    both = roll(path, keys, "start", 13, time.time(), serial=2024010107)
    assert saved_serial(str(tmp_path), ORIGIN) == 2024010107
    assert [k.dnskey for k in load(str(tmp_path), ORIGIN)] == [k.dnskey for k in both]
    load_or_create(str(tmp_path), ORIGIN, 15)   # a new algorithm keeps the serial going
    assert saved_serial(str(tmp_path), ORIGIN) == 2024010107


def test_scheduled_steps_follow_the_keys_ages() -> None:
    old = generate(13, 1000)
    assert rollover_step([old], 1000 + 99, 100, 30) is None
    assert rollover_step([old], 1000 + 100, 100, 30) == "start"
    new = generate(13, 1100)
    assert rollover_step([old, new], 1100 + 29, 100, 30) is None
    assert rollover_step([old, new], 1100 + 30, 100, 30) == "finish"
    assert rollover_step([new], 1100 + 30, 100, 30) is None
