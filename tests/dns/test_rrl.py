"""Response rate limiting: pure, with a fake clock."""

from __future__ import annotations

import dns.flags
import dns.message
import pytest

from lbcdn.dns.rrl import RateLimiter, Verdict, truncated_response


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **kw: object) -> RateLimiter:
    args: dict[str, object] = {"responses_per_s": 5, "burst": 5, "slip": 2, "clock": clock}
    args.update(kw)
    return RateLimiter(**args)  # type: ignore[arg-type]


def test_burst_then_drop_and_slip_alternate() -> None:
    c = Clock()
    rl = limiter(c)
    got = [rl.check("192.0.2.1") for _ in range(9)]
    assert got == [Verdict.ANSWER] * 5 + [Verdict.DROP, Verdict.SLIP, Verdict.DROP, Verdict.SLIP]
    assert rl.dropped == 2 and rl.slipped == 2


def test_tokens_refill_with_time_up_to_the_burst() -> None:
    c = Clock()
    rl = limiter(c)
    for _ in range(5):
        rl.check("192.0.2.1")
    assert rl.check("192.0.2.1") is not Verdict.ANSWER
    c.now += 0.2  # one token at 5/s
    assert rl.check("192.0.2.1") is Verdict.ANSWER
    assert rl.check("192.0.2.1") is not Verdict.ANSWER
    c.now += 3600  # a long pause banks no more than the burst
    assert [rl.check("192.0.2.1") for _ in range(6)].count(Verdict.ANSWER) == 5


def test_a_clock_going_backwards_adds_nothing() -> None:
    c = Clock()
    rl = limiter(c, burst=1)
    assert rl.check("192.0.2.1") is Verdict.ANSWER
    c.now -= 10
    assert rl.check("192.0.2.1") is not Verdict.ANSWER


@pytest.mark.parametrize("slip,expected", [
    (0, [Verdict.DROP] * 4),
    (1, [Verdict.SLIP] * 4),
    (3, [Verdict.DROP, Verdict.DROP, Verdict.SLIP, Verdict.DROP]),
])
def test_slip_ratio(slip: int, expected: list[Verdict]) -> None:
    rl = limiter(Clock(), burst=1, slip=slip)
    rl.check("192.0.2.1")
    assert [rl.check("192.0.2.1") for _ in range(4)] == expected


def test_clients_share_a_bucket_per_v4_24_and_v6_56() -> None:
    rl = limiter(Clock(), burst=1)
    assert rl.check("192.0.2.1") is Verdict.ANSWER
    assert rl.check("192.0.2.200") is not Verdict.ANSWER  # same /24
    assert rl.check("192.0.3.1") is Verdict.ANSWER
    assert rl.check("::ffff:192.0.3.7") is not Verdict.ANSWER  # v4-mapped is the v4 client
    assert rl.check("2001:db8:0:100::1") is Verdict.ANSWER
    assert rl.check("2001:db8:0:1ff:ffff::9") is not Verdict.ANSWER  # same /56
    assert rl.check("2001:db8:0:200::1") is Verdict.ANSWER  # next /56
    assert rl.check("fe80::1%eth0") is Verdict.ANSWER


def test_prefix_lengths_are_configurable() -> None:
    rl = limiter(Clock(), burst=1, ipv4_prefix=32)
    assert rl.check("192.0.2.1") is Verdict.ANSWER
    assert rl.check("192.0.2.2") is Verdict.ANSWER


def test_memory_is_bounded_and_full_buckets_go_first() -> None:
    c = Clock()
    rl = limiter(c, burst=2, max_tracked=3)
    rl.check("10.0.1.1")
    rl.check("10.0.1.1")  # empty: it remembers something a fresh bucket would not
    rl.check("10.0.2.1")
    rl.check("10.0.3.1")
    c.now += 0.3  # at 5/s: 10.0.2 and 10.0.3 are full again, 10.0.1 holds 1.5 tokens
    rl.check("10.0.4.1")  # table full: only the refilled buckets are forgotten
    assert rl.tracked() == 2
    assert rl.check("10.0.1.1") is Verdict.ANSWER
    assert rl.check("10.0.1.1") is not Verdict.ANSWER
    for i in range(100):  # nothing refills: the table is cleared rather than grow
        rl.check(f"10.{i}.9.9")
    assert rl.tracked() <= 3


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        limiter(Clock(), responses_per_s=0)
    with pytest.raises(ValueError):
        limiter(Clock(), slip=-1)
    with pytest.raises(ValueError):
        limiter(Clock(), ipv6_prefix=129)


def test_truncated_response_keeps_id_question_rd_and_sets_tc() -> None:
    q = dns.message.make_query("WwW.example.com", "AAAA", use_edns=0)
    wire = truncated_response(q.to_wire())
    assert wire is not None
    r = dns.message.from_wire(wire)
    assert r.id == q.id
    assert r.flags & dns.flags.QR and r.flags & dns.flags.TC and r.flags & dns.flags.RD
    assert not r.flags & dns.flags.AA
    assert r.question[0].name.to_text() == "WwW.example.com."
    assert not r.answer and not r.authority and r.edns < 0


@pytest.mark.parametrize("bad", [b"", b"\x00" * 12, b"\x00\x00\x80\x00" + b"\x00" * 13,
                                 b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab",
                                 b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c"
                                 b"\x00\x01\x00\x01"])
def test_truncated_response_of_junk_is_none(bad: bytes) -> None:
    assert truncated_response(bad) is None
