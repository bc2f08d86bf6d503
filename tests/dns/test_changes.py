"""Change batches: CREATE/UPSERT/DELETE rules, all-or-nothing, serials, persistence across a
reload (JSON store, atomic writes), replay on top of a changed config."""

from __future__ import annotations

import json
import os
import random
from typing import Any

import dns.message
import dns.rcode
import pytest

from lbcdn.dns.changes import (Change, ChangeError, JsonChangeStore, MemoryStore, Overlay,
                               parse_changes, record_data)
from lbcdn.dns.config import RecordSetConfig, load_dns_config, load_record_set
from lbcdn.dns.engine import Engine
from lbcdn.dns.zone import build_zones

NOW = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class AllHealthy:
    def is_healthy(self, check_id: str) -> bool:
        return True


def config(records: list[dict[str, Any]] | None = None, **zone: Any) -> Any:
    return load_dns_config({"zones": [
        {"name": "example.com", "soa": {"serial": 10},
         "records": records if records is not None else [
             {"name": "www", "type": "A", "values": ["192.0.2.1"]},
             {"name": "mail", "type": "MX", "values": ["10 mx"]}], **zone},
        {"name": "2.0.192.in-addr.arpa"}]})


def engine(store: Any = None, records: list[dict[str, Any]] | None = None,
           clock: Clock | None = None, **zone: Any) -> Engine:
    return Engine(build_zones(config(records, **zone), now=NOW), AllHealthy(), random.Random(1),
                  store=store, clock=clock or Clock())


def batch(*items: tuple[str, dict[str, Any]]) -> Any:
    return parse_changes({"changes": [{"action": a, "record": r} for a, r in items]})


def answers(e: Engine, name: str, rtype: str = "A") -> tuple[int, list[str]]:
    q = dns.message.make_query(name, rtype)
    r = dns.message.from_wire(e.answer(q.to_wire(), tcp=True) or b"")
    return r.rcode(), sorted(rd.to_text() for rrset in r.answer for rd in rrset)


def serial(e: Engine) -> int:
    z = e.zone_for("example.com")
    assert z is not None
    return z.serial


def test_create_upsert_delete_visible_at_once() -> None:
    e = engine()
    v = e.version
    e.apply_changes("example.com", batch(("CREATE", {"name": "api", "type": "A",
                                                     "values": ["192.0.2.9"]})))
    assert e.version != v
    assert answers(e, "api.example.com") == (dns.rcode.NOERROR, ["192.0.2.9"])
    e.apply_changes("example.com.", batch(("UPSERT", {"name": "api", "type": "A", "ttl_s": 60,
                                                      "values": ["192.0.2.10", "192.0.2.11"]})))
    assert answers(e, "api.example.com") == (dns.rcode.NOERROR, ["192.0.2.10", "192.0.2.11"])
    e.apply_changes("example.com", batch(("DELETE", {"name": "api.example.com.", "type": "A",
                                                     "ttl_s": 60,
                                                     "values": ["192.0.2.11", "192.0.2.10"]})))
    assert answers(e, "api.example.com")[0] == dns.rcode.NXDOMAIN


def test_serial_bumped_on_every_change() -> None:
    clock = Clock()
    e = engine(clock=clock)
    assert serial(e) == 10
    e.apply_changes("example.com", batch(("UPSERT", {"name": "a", "type": "A",
                                                     "values": ["192.0.2.1"]})))
    e.apply_changes("example.com", batch(("UPSERT", {"name": "b", "type": "A",
                                                     "values": ["192.0.2.1"]})))
    assert serial(e) == 12
    # A generated (clock) serial jumps to the clock when that is larger.
    cfg = load_dns_config({"zones": [{"name": "example.com"}]})
    e2 = Engine(build_zones(cfg, now=NOW), AllHealthy(), clock=clock)
    assert serial(e2) == int(NOW)
    clock.now += 100
    e2.apply_changes("example.com", batch(("UPSERT", {"name": "a", "type": "A",
                                                      "values": ["192.0.2.1"]})))
    assert serial(e2) == int(NOW) + 100


@pytest.mark.parametrize("items, message", [
    ((("CREATE", {"name": "www", "type": "A", "values": ["192.0.2.2"]}),), "already exists"),
    ((("DELETE", {"name": "www", "type": "A", "values": ["192.0.2.2"]}),), "match"),
    ((("DELETE", {"name": "www", "type": "A", "ttl_s": 30, "values": ["192.0.2.1"]}),),
     "match"),
    ((("DELETE", {"name": "nope", "type": "A", "values": ["192.0.2.2"]}),), "no such"),
    ((("CREATE", {"name": "www", "type": "CNAME", "values": ["mail"]}),), "CNAME"),
    ((("CREATE", {"name": "x.example.org.", "type": "A", "values": ["192.0.2.2"]}),),
     "outside"),
    ((("DELETE", {"name": "@", "type": "NS", "ttl_s": 172800,
                  "values": ["ns1.example.com."]}),), "NS"),
])
def test_bad_batches_change_nothing(items: Any, message: str) -> None:
    e = engine()
    good = ("UPSERT", {"name": "new", "type": "A", "values": ["192.0.2.50"]})
    v, s = e.version, serial(e)
    with pytest.raises(ChangeError) as info:
        e.apply_changes("example.com", batch(good, *items))
    assert message in str(info.value)
    assert e.version == v and serial(e) == s
    assert answers(e, "new.example.com")[0] == dns.rcode.NXDOMAIN  # the good one too
    assert answers(e, "www.example.com") == (dns.rcode.NOERROR, ["192.0.2.1"])


def test_replace_a_with_cname_in_one_batch() -> None:
    e = engine()
    e.apply_changes("example.com", batch(
        ("DELETE", {"name": "www", "type": "A", "values": ["192.0.2.1"]}),
        ("CREATE", {"name": "www", "type": "CNAME", "values": ["mail"]})))
    assert answers(e, "www.example.com", "CNAME")[1] == ["mail.example.com."]


def test_unknown_zone_and_soa_changes_refused() -> None:
    e = engine()
    with pytest.raises(ChangeError, match="not a served zone"):
        e.apply_changes("example.org", batch(("UPSERT", {"name": "a", "type": "A",
                                                         "values": ["192.0.2.1"]})))
    with pytest.raises(ChangeError, match="SOA"):
        e.apply_changes("example.com", [Change("UPSERT", RecordSetConfig(
            name="@", type="SOA", values=("a. b. 1 2 3 4 5",)))])


def test_parse_changes_errors_name_their_place() -> None:
    with pytest.raises(ChangeError) as info:
        parse_changes({"changes": [{"action": "CREATE", "record": {"name": "a", "type": "A",
                                                                   "values": ["nope"]}},
                                   {"action": "MERGE", "record": {}}]})
    text = str(info.value)
    assert "changes[0].record.values[0]" in text and "changes[1].action" in text
    with pytest.raises(ChangeError):
        parse_changes({"changes": []})
    with pytest.raises(ChangeError):
        parse_changes({"changes": [{"action": "CREATE"}], "extra": 1})
    # API data is literal: `$` is not environment interpolation.
    (c,) = parse_changes([{"action": "UPSERT", "record": {"name": "t", "type": "TXT",
                                                          "values": ['"${HOME} $$"']}}])
    assert c.record.values == ('"${HOME} $$"',)


def test_record_data_round_trips() -> None:
    spec = load_record_set({"name": "w", "type": "A", "values": ["192.0.2.1"],
                            "policy": "weighted", "set_identifier": "x", "weight": 5,
                            "health_check": "hc", "ttl_s": 30})
    assert load_record_set(json.loads(json.dumps(record_data(spec)))) == spec


def test_changes_survive_a_restart(tmp_path: Any) -> None:
    store = JsonChangeStore(str(tmp_path / "state"))
    e = engine(store)
    e.apply_changes("example.com", batch(
        ("CREATE", {"name": "api", "type": "A", "values": ["192.0.2.9"]}),
        ("DELETE", {"name": "mail", "type": "MX", "values": ["10 mx"]})))
    e.apply_changes("example.com", batch(("UPSERT", {"name": "api", "type": "TXT",
                                                     "values": ['"hi there"']})))
    saved_serial = serial(e)
    files = os.listdir(tmp_path / "state")
    assert files == ["dns-zone-example.com.json"]  # no temp files left behind
    again = engine(JsonChangeStore(str(tmp_path / "state")))
    assert again.restore_problems == []
    assert answers(again, "api.example.com") == (dns.rcode.NOERROR, ["192.0.2.9"])
    assert answers(again, "api.example.com", "TXT")[1] == ['"hi there"']
    assert answers(again, "mail.example.com", "MX") == (dns.rcode.NXDOMAIN, [])
    assert serial(again) > saved_serial  # secondaries see the restored zone as newer
    # The zone's other records are still there, and later changes keep the old ones.
    assert answers(again, "www.example.com")[1] == ["192.0.2.1"]
    again.apply_changes("example.com", batch(("UPSERT", {"name": "b", "type": "A",
                                                         "values": ["192.0.2.3"]})))
    third = engine(JsonChangeStore(str(tmp_path / "state")))
    assert answers(third, "api.example.com")[1] == ["192.0.2.9"]
    assert answers(third, "b.example.com")[1] == ["192.0.2.3"]


def test_failed_batch_is_not_saved(tmp_path: Any) -> None:
    store = JsonChangeStore(str(tmp_path))
    e = engine(store)
    with pytest.raises(ChangeError):
        e.apply_changes("example.com", batch(("CREATE", {"name": "www", "type": "A",
                                                         "values": ["192.0.2.5"]})))
    assert store.load("example.com.") is None


def test_save_failure_leaves_zone_unchanged() -> None:
    class Broken(MemoryStore):
        def save(self, zone: str, overlay: Overlay) -> None:
            raise OSError(28, "No space left on device")

    e = engine(Broken())
    v = e.version
    with pytest.raises(ChangeError, match="No space"):
        e.apply_changes("example.com", batch(("CREATE", {"name": "api", "type": "A",
                                                         "values": ["192.0.2.9"]})))
    assert e.version == v and answers(e, "api.example.com")[0] == dns.rcode.NXDOMAIN


def test_replay_on_a_changed_config_drops_what_no_longer_fits() -> None:
    store = MemoryStore()
    e = engine(store)
    e.apply_changes("example.com", batch(
        ("CREATE", {"name": "x", "type": "CNAME", "values": ["www"]}),
        ("CREATE", {"name": "ok", "type": "A", "values": ["192.0.2.8"]})))
    # The new config has an A record at x: the saved CNAME cannot come back.
    records = [{"name": "x", "type": "A", "values": ["192.0.2.7"]}]
    again = engine(store, records=records)
    assert any("x.example.com.|CNAME" in p for p in again.restore_problems)
    assert answers(again, "x.example.com")[1] == ["192.0.2.7"]
    assert answers(again, "ok.example.com")[1] == ["192.0.2.8"]


def test_corrupt_state_file_is_set_aside(tmp_path: Any) -> None:
    store = JsonChangeStore(str(tmp_path))
    path = store.path("example.com.")
    with open(path, "w") as f:
        f.write("{not json")
    e = engine(store)
    assert e.restore_problems and "unreadable" in e.restore_problems[0]
    assert os.path.exists(path + ".corrupt") and not os.path.exists(path)
    assert answers(e, "www.example.com")[1] == ["192.0.2.1"]


def test_generated_ptrs_follow_changes() -> None:
    e = engine(ptr_from_addresses=True)
    assert answers(e, "1.2.0.192.in-addr.arpa", "PTR")[1] == ["www.example.com."]
    rev = e.zone_for("2.0.192.in-addr.arpa")
    assert rev is not None
    before = rev.serial
    e.apply_changes("example.com", batch(("UPSERT", {"name": "www", "type": "A",
                                                     "values": ["192.0.2.2"]})))
    assert answers(e, "1.2.0.192.in-addr.arpa", "PTR")[0] == dns.rcode.NXDOMAIN
    assert answers(e, "2.2.0.192.in-addr.arpa", "PTR")[1] == ["www.example.com."]
    rev = e.zone_for("2.0.192.in-addr.arpa")
    assert rev is not None and rev.serial > before


def test_routing_fields_round_trip_through_the_saved_shape() -> None:
    for extra in ({"policy": "cidr", "cidr_routing": {"collection": "c", "location": "*"}},
                  {"policy": "geolocation", "geolocation": {"country": "US",
                                                            "subdivision": "CA"}},
                  {"policy": "geoproximity", "geoproximity": {"latitude": 1.5,
                                                              "longitude": -2.0, "bias": 10}}):
        rec = {"name": "a", "type": "A", "values": ["192.0.2.1"], "set_identifier": "x",
               **extra}
        assert record_data(load_record_set(rec)) == rec
