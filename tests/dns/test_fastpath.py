"""The prepared-answer fast path, pure: a fake engine that counts its calls."""

from __future__ import annotations

import time

import dns.edns
import dns.message
import dns.rdatatype
import pytest

from lbcdn.dns.fastpath import FastPath, Prepared, question_end
from tests.dns.test_server import StandInEngine


class FakeEngine:
    """Answers with the query's header flipped to a response and a marker of how many times
    it was asked (and which rotation, when `rotations` > 1); keys by the lower-cased question
    (like a real engine would)."""

    def __init__(self) -> None:
        self.version = 1
        self.calls = 0
        self.cacheable = True
        self.replay = True
        self.rotations = 1
        self.bump_while_answering = False

    def cacheable_key(self, query: bytes) -> bytes | None:
        end = question_end(query)
        if not self.cacheable or end < 0:
            return None
        return query[2:3] + query[12:end].lower()

    def prepare(self, query: bytes, *, tcp: bool, max_udp: int = 512,
                client: str = "") -> Prepared | None:
        self.calls += 1
        if self.bump_while_answering:
            self.version += 1
        if len(query) < 12 or query[2] & 0x80:
            return None
        end = question_end(query)
        if end < 0:
            return Prepared((query[:2] + b"\x81\x01" + b"\x00" * 8,), False)  # FORMERR
        base = f"{'T' if tcp else 'U'}{self.calls}v{self.version}"
        markers = [base] if self.rotations == 1 else [f"{base}r{k}" for k in range(self.rotations)]
        # QR AA + RD copied; one answer pointing at the question name; a TXT with the marker
        header = query[:2] + bytes((0x84 | (query[2] & 0x01), 0)) + b"\x00\x01\x00\x01\x00\x00\x00\x00"
        answers = []
        for m in markers:
            rr = (b"\xc0\x0c\x00\x10\x00\x01\x00\x00\x00\x3c" + (len(m) + 1).to_bytes(2, "big")
                  + bytes([len(m)]) + m.encode())
            answers.append(header + query[12:end] + rr)
        return Prepared(tuple(answers), self.replay)


def q(name: str, rdtype: str = "A", qid: int = 1, **kw: object) -> bytes:
    m = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    m.id = qid
    return m.to_wire()


def marker(answer: bytes | None) -> str:
    assert answer is not None
    return dns.message.from_wire(answer).answer[0][0].strings[0].decode()


def test_question_end() -> None:
    wire = q("www.example.com")
    assert question_end(wire) == 12 + len(b"\x03www\x07example\x03com\x00") + 4
    assert question_end(wire[:-1]) == -1
    assert question_end(b"\x00" * 12) == -1  # no question
    assert question_end(wire[:12] + b"\xc0\x0c\x00\x01\x00\x01") == -1


def test_hit_replays_bytes_with_the_new_id() -> None:
    e = FakeEngine()
    fp = FastPath(e)
    first = fp.answer_udp(q("www.example.com", qid=1))
    second = fp.answer_udp(q("www.example.com", qid=0xBEEF))
    assert e.calls == 1
    assert second is not None and first is not None
    assert second[:2] == b"\xbe\xef" and second[2:] == first[2:]
    assert fp.lookups == 2 and fp.misses == 1


def test_case_variant_is_a_keyed_hit_with_the_clients_case() -> None:
    e = FakeEngine()
    fp = FastPath(e)
    fp.answer_udp(q("www.example.com"))
    out = fp.answer_udp(q("WWW.Example.COM", qid=7))
    assert e.calls == 1 and fp.keyed_hits == 1
    r = dns.message.from_wire(out)  # type: ignore[arg-type]
    assert r.id == 7 and r.question[0].name.to_text() == "WWW.Example.COM."
    assert r.answer[0].name.to_text() == "WWW.Example.COM."  # the pointer follows
    fp.answer_udp(q("WWW.Example.COM", qid=8))  # now an exact hit
    assert fp.misses == 2 and e.calls == 1


def test_flags_in_the_key_are_not_mixed_up() -> None:
    e = FakeEngine()
    fp = FastPath(e)
    with_rd = fp.answer_udp(q("www.example.com"))
    without_rd = fp.answer_udp(q("www.example.com", flags=0))
    assert e.calls == 2
    assert with_rd is not None and without_rd is not None
    assert with_rd[2] & 1 and not without_rd[2] & 1


def test_version_bump_flushes_before_the_next_lookup() -> None:
    e = FakeEngine()
    fp = FastPath(e)
    assert marker(fp.answer_udp(q("a.example"))) == "U1v1"
    e.version = 2
    assert marker(fp.answer_udp(q("a.example"))) == "U2v2"
    assert marker(fp.answer_udp(q("a.example"))) == "U2v2"
    assert fp.flushes == 1


def test_an_answer_built_while_the_version_moved_is_not_kept() -> None:
    e = FakeEngine()
    e.bump_while_answering = True
    fp = FastPath(e)
    fp.answer_udp(q("a.example"))
    fp.answer_udp(q("a.example"))
    assert e.calls == 2


def test_uncacheable_and_silent_answers_are_computed_every_time() -> None:
    e = FakeEngine()
    e.cacheable = False
    fp = FastPath(e)
    assert marker(fp.answer_udp(q("a.example"))) == "U1v1"
    assert marker(fp.answer_udp(q("a.example"))) == "U2v1"
    assert fp.uncacheable == 2
    e.cacheable = True
    response = bytearray(q("a.example"))
    response[2] |= 0x80
    assert fp.answer_udp(bytes(response)) is None
    assert fp.answer_udp(bytes(response)) is None
    assert e.calls == 4


def test_answers_not_to_replay_are_computed_every_time() -> None:
    e = FakeEngine()
    e.replay = False
    fp = FastPath(e)
    assert [marker(fp.answer_udp(q("a.example"))) for _ in range(2)] == ["U1v1", "U2v1"]
    assert fp.uncacheable == 2 and fp.entries() == 0


def test_rotations_are_sent_in_turn() -> None:
    e = FakeEngine()
    e.rotations = 3
    fp = FastPath(e)
    got = [marker(fp.answer_udp(q("rr.example", qid=i))) for i in range(7)]
    assert got == ["U1v1r0", "U1v1r1", "U1v1r2"] * 2 + ["U1v1r0"]
    assert e.calls == 1 and fp.misses == 1 and fp.lookups == 7
    out = fp.answer_udp(q("rr.example", qid=0x1234))
    assert out is not None and out[:2] == b"\x12\x34"


def test_the_turn_is_shared_by_every_query_keyed_alike() -> None:
    """Another spelling, or another EDNS option (a fresh DNS COOKIE per query), continues the
    rotation where the last query left it, in the client's own case."""
    e = FakeEngine()
    e.rotations = 3
    fp = FastPath(e)
    assert marker(fp.answer_udp(q("rr.example"))) == "U1v1r0"
    outs = [fp.answer_udp(q("RR.Example", qid=9)) for _ in range(2)]
    assert [marker(o) for o in outs] == ["U1v1r1", "U1v1r2"]
    assert marker(fp.answer_udp(q("rr.example"))) == "U1v1r0"
    assert e.calls == 1 and fp.keyed_hits == 1
    r = dns.message.from_wire(outs[1])  # type: ignore[arg-type]
    assert r.id == 9 and r.answer[0].name.to_text() == "RR.Example."
    # the fake keys by question only, as the real engine ignores EDNS options
    cookies = [q("rr.example", use_edns=0, options=[dns.edns.GenericOption(10, bytes([i]) * 8)])
               for i in range(3)]
    assert [marker(fp.answer_udp(c)) for c in cookies] == ["U1v1r1", "U1v1r2", "U1v1r0"]


def test_a_version_bump_ends_a_cycle_at_once() -> None:
    e = FakeEngine()
    e.rotations = 3
    fp = FastPath(e)
    assert marker(fp.answer_udp(q("rr.example"))) == "U1v1r0"
    e.version = 2
    e.rotations = 2
    assert [marker(fp.answer_udp(q("rr.example"))) for _ in range(3)] == [
        "U2v2r0", "U2v2r1", "U2v2r0"]


def test_udp_and_tcp_answers_are_kept_apart() -> None:
    e = FakeEngine()
    fp = FastPath(e)
    assert marker(fp.answer_udp(q("a.example"))) == "U1v1"
    assert marker(fp.answer_tcp(q("a.example"))) == "T2v1"
    assert marker(fp.answer_tcp(q("a.example"))) == "T2v1"
    assert marker(fp.answer_udp(q("a.example"))) == "U1v1"


@pytest.mark.parametrize("rotations", [1, 2])
def test_tables_stay_bounded(rotations: int) -> None:
    e = FakeEngine()
    e.rotations = rotations
    fp = FastPath(e, max_entries=10)
    for i in range(100):
        fp.answer_udp(q(f"n{i}.example"))
        assert fp.entries() <= 20
    fp.answer_udp(q("n99.example"))
    assert e.calls == 100  # the newest survived the last clear


def test_rotations_count_as_answers_toward_the_bound() -> None:
    """Spellings of one rotating name are many: each kept cycle counts all its answers."""
    e = FakeEngine()
    e.rotations = 4
    fp = FastPath(e, max_entries=10)
    for i in range(64):
        name = "".join(c.upper() if i >> k & 1 else c for k, c in enumerate("rotate"))
        assert marker(fp.answer_udp(q(f"{name}.example"))) == f"U1v1r{i % 4}"
        assert fp.entries() <= 10 + 4  # the cycles, and the one keyed entry
    assert e.calls == 1 and fp.keyed_hits == 63


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FastPath(FakeEngine(), max_entries=0)


def test_hit_is_much_cheaper_than_a_dnslib_miss() -> None:
    """Measures us/query for hit and miss (printed with -s); the hit path must be at least 10x
    cheaper than building the answer with dnslib, or the fast path is not doing its job."""
    engine = StandInEngine()
    fp = FastPath(engine)
    wire = q("www.example.com")
    fp.answer_udp(wire)
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        fp.answer_udp(wire)
    hit_us = (time.perf_counter() - t0) / n * 1e6
    names = [q(f"n{i}.example.com") for i in range(500)]
    t0 = time.perf_counter()
    for w in names:
        fp.answer_udp(w)
    miss_us = (time.perf_counter() - t0) / len(names) * 1e6
    print(f"fast path: hit {hit_us:.2f} us/query, miss (dnslib stand-in) {miss_us:.1f} us/query")
    assert hit_us * 10 < miss_us
