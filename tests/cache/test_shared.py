"""The machine cache's pieces: workers' lookups by file name (no index), the control process's
DiskStore adopting what they wrote, and the lead state machine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from lbcdn.cache.config import StorageConfig
from lbcdn.cache.disk import DiskStore
from lbcdn.cache.shared import ALONE, FAILED, LEAD, STORED, LeadClient, Leads, SharedStore, \
    limits
from tests.cache.test_store import entry, h

EN = h(("Accept-Language", "en"))
DE = h(("Accept-Language", "de"))


def store(root: Path, max_object: int = 1 << 20) -> SharedStore:
    (root / "tmp").mkdir(exist_ok=True)
    return SharedStore(str(root), max_object, False)


def test_lookup_by_name_without_an_index(tmp_path: Path) -> None:
    writer, reader = store(tmp_path), store(tmp_path)
    plain = entry("/a", b"plain")
    en = entry("/v", b"english", vary="Accept-Language", req=EN)
    de = entry("/v", b"deutsch", vary="Accept-Language", req=DE)
    for e in (plain, en, de):
        assert writer.put(e) is not None
    got = reader.lookup(plain.key, [])
    assert got is not None and got.body == b"plain"
    got = reader.lookup(en.key, EN)
    assert got is not None and got.body == b"english"
    got = reader.lookup(en.key, DE)
    assert got is not None and got.body == b"deutsch"
    assert reader.lookup(en.key, h(("Accept-Language", "fr"))) is None
    assert reader.lookup(b"h|/nothing", []) is None
    assert not list((tmp_path / "tmp").iterdir())   # written by rename


def test_too_large_and_damaged_files_are_not_served(tmp_path: Path) -> None:
    s = store(tmp_path, max_object=1500)
    assert s.put(entry("/big", b"x" * 2000)) is None
    e = entry("/a", b"hello")
    name = s.put(e)
    assert name is not None
    path = tmp_path / name[:2] / f"{name}.lbc"
    data = bytearray(path.read_bytes())
    data[-40] ^= 1
    path.write_bytes(bytes(data))
    assert s.lookup(e.key, []) is None and not path.exists()


def test_the_manager_adopts_evicts_and_purges_what_workers_wrote(tmp_path: Path) -> None:
    worker = store(tmp_path)
    names = [worker.put(entry(f"/{i}", b"x" * 100)) for i in range(3)]
    assert None not in names
    manager = DiskStore(str(tmp_path), 1 << 20, 1 << 20, fsync=False)
    assert len(manager) == 3   # a start indexes what is there
    size = manager.bytes // 3
    manager.max_bytes = 3 * size
    more = worker.put(entry("/3", b"x" * 100))
    assert more is not None and manager.adopt(more)
    assert len(manager) == 3 and manager.evictions == 1
    assert worker.lookup(entry("/0").key, []) is None   # the oldest is gone for everyone
    assert not manager.adopt("0" * 64)   # a file that is gone is not indexed
    assert manager.purge_uri(b"h", b"/3") == 1
    assert worker.lookup(entry("/3").key, []) is None


def test_eviction_spares_a_file_rewritten_since_it_was_indexed(tmp_path: Path) -> None:
    worker = store(tmp_path)
    manager = DiskStore(str(tmp_path), 1 << 20, 1 << 20, fsync=False)
    old = worker.put(entry("/a", b"old"))
    assert old is not None and manager.adopt(old)
    manager.max_bytes = manager.bytes
    assert worker.put(entry("/a", b"new")) == old   # refreshed; its report still on its way
    other = worker.put(entry("/b", b"b"))
    assert other is not None and manager.adopt(other)   # evicts /a's indexed file
    got = worker.lookup(entry("/a").key, [])
    assert got is not None and got.body == b"new"
    assert manager.adopt(old)   # the report arrives: indexed (and /b evicted for it)
    assert len(manager) == 1 and worker.lookup(entry("/b").key, []) is None


def test_vary_file_follows_the_variants(tmp_path: Path) -> None:
    worker = store(tmp_path)
    manager = DiskStore(str(tmp_path), 1 << 20, 1 << 20, fsync=False)
    en = entry("/v", b"english", vary="Accept-Language", req=EN)
    name = worker.put(en)
    assert name is not None and manager.adopt(name)
    assert len(list(tmp_path.rglob("*.vary"))) == 1
    assert manager.delete(en.key) == 1
    assert not list(tmp_path.rglob("*.vary"))
    # a response that varies on something else replaces the variants, keeps its .vary file
    assert manager.put(en)
    enc = entry("/v", b"gzip", vary="Accept-Encoding", req=h(("Accept-Encoding", "gzip")))
    name = worker.put(enc)
    assert name is not None and manager.adopt(name)
    got = worker.lookup(enc.key, h(("Accept-Encoding", "gzip")))
    assert got is not None and got.body == b"gzip" and len(manager) == 1
    # an orphaned .vary file (a crash between writes) is removed at start
    orphan = worker.put(entry("/w", b"w", vary="Accept-Language", req=EN))
    assert orphan is not None
    (tmp_path / orphan[:2] / f"{orphan}.lbc").unlink()
    DiskStore(str(tmp_path), 1 << 20, 1 << 20, fsync=False)
    assert len(list(tmp_path.rglob("*.vary"))) == 1


def test_limits() -> None:
    assert limits(StorageConfig(memory_max_bytes=100, max_object_bytes=10)) == (100, 10)
    assert limits(StorageConfig(disk_path="/d", disk_max_bytes=50,
                                disk_max_object_bytes=80)) == (50, 50)


def test_one_lead_per_key_and_its_waiters() -> None:
    leads = Leads()
    assert leads.lead("k", 0, 1, 0.0, 5.0)
    assert not leads.lead("k", 1, 7, 0.1, 5.0)
    assert not leads.lead("k", 1, 8, 0.2, 5.0)
    assert leads.lead("other", 1, 9, 0.2, 5.0)
    assert leads.done("k", 1) == []           # only the leader ends its lead
    assert leads.done("k", 0) == [(1, 7), (1, 8)]
    assert leads.lead("k", 1, 10, 0.3, 5.0)   # free again
    assert len(leads) == 2


def test_a_lead_past_its_lock_timeout_passes_on() -> None:
    leads = Leads()
    assert leads.lead("k", 0, 1, 0.0, 1.0)
    assert not leads.lead("k", 1, 2, 0.5, 1.0)
    assert leads.lead("k", 1, 3, 1.5, 1.0)    # the newcomer leads; the waiter stays
    assert leads.done("k", 0) == []
    assert leads.done("k", 1) == [(1, 2)]


def test_leads_past_their_lock_timeout_expire() -> None:
    leads = Leads()
    assert leads.lead("old", 0, 1, 0.0, 1.0)
    assert not leads.lead("old", 1, 2, 0.5, 1.0)
    assert leads.lead("new", 1, 3, 0.9, 1.0)
    assert leads.expire(1.5) == [(1, 2)]
    assert len(leads) == 1 and leads.done("new", 1) == []


def test_a_dead_worker_releases_its_leads_and_waits() -> None:
    leads = Leads()
    assert leads.lead("a", 0, 1, 0.0, 5.0)
    assert not leads.lead("a", 1, 2, 0.0, 5.0)
    assert leads.lead("b", 1, 3, 0.0, 5.0)
    assert not leads.lead("b", 0, 4, 0.0, 5.0)
    assert leads.gone(0) == [(1, 2)]           # a's waiter goes alone; 0's wait on b dropped
    assert leads.done("b", 1) == []
    assert len(leads) == 0


async def test_lead_client_messages() -> None:
    sent: list[dict[str, Any]] = []
    client = LeadClient(sent.append)
    first = asyncio.ensure_future(client.lead(b"k\xff", 5.0))
    await asyncio.sleep(0)
    assert sent[-1] == {"op": "cache-lead", "id": 1, "key": "k\xff", "timeout_s": 5.0}
    client.answered(1, LEAD, None)
    assert await first == (LEAD, None)
    waiting = asyncio.ensure_future(client.lead(b"k", 5.0))
    await asyncio.sleep(0)
    client.answered(2, FAILED, 503)
    assert await waiting == (FAILED, 503)
    assert await client.lead(b"k", 0.01) == (ALONE, None)   # the lock timeout
    client.done(b"k", STORED, "n")
    assert sent[-1] == {"op": "cache-done", "key": "k", "outcome": STORED, "name": "n",
                        "status": None}
