"""RoundRobin: plain rotation for equal weights, smooth weighted round robin (nginx) otherwise,
weight 0 never picked, None when nothing can be picked."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from lbcdn.balancer.round_robin import RoundRobin


@dataclass(frozen=True)
class T:
    name: str
    weight: int = 1


def picks(rr: RoundRobin[T], n: int) -> list[str]:
    out = []
    for _ in range(n):
        t = rr.pick()
        assert t is not None
        out.append(t.name)
    return out


def test_empty_pool_picks_none() -> None:
    assert RoundRobin([]).pick() is None


def test_all_weights_zero_picks_none() -> None:
    rr = RoundRobin([T("a", 0), T("b", 0)])
    assert [rr.pick() for _ in range(3)] == [None, None, None]


def test_single_target_always_picked() -> None:
    rr = RoundRobin([T("a", 7)])
    assert picks(rr, 5) == ["a"] * 5


def test_equal_weights_rotate_in_order() -> None:
    rr = RoundRobin([T("a"), T("b"), T("c")])
    assert picks(rr, 7) == ["a", "b", "c", "a", "b", "c", "a"]


def test_equal_weights_above_one_rotate_in_order() -> None:
    rr = RoundRobin([T("a", 5), T("b", 5)])
    assert picks(rr, 4) == ["a", "b", "a", "b"]


def test_weight_zero_is_never_picked() -> None:
    rr = RoundRobin([T("a"), T("off", 0), T("b")])
    assert picks(rr, 6) == ["a", "b", "a", "b", "a", "b"]


def test_weight_zero_with_unequal_weights_is_never_picked() -> None:
    rr = RoundRobin([T("a", 3), T("off", 0), T("b", 1)])
    assert "off" not in picks(rr, 400)


def test_smooth_sequence_matches_nginx() -> None:
    # nginx's documented example: weights 5, 1, 1 give a a b a c a a (ties go to the first).
    rr = RoundRobin([T("a", 5), T("b", 1), T("c", 1)])
    assert picks(rr, 14) == ["a", "a", "b", "a", "c", "a", "a"] * 2


def test_two_to_one_interleaves() -> None:
    rr = RoundRobin([T("a", 2), T("b", 1)])
    assert picks(rr, 6) == ["a", "b", "a", "a", "b", "a"]


def test_shares_are_exact_per_cycle() -> None:
    weights = {"a": 3, "b": 2, "c": 1, "d": 4}
    rr = RoundRobin([T(n, w) for n, w in weights.items()])
    total = sum(weights.values())
    for _ in range(5):  # every full cycle of `total` picks holds each target weight times
        assert Counter(picks(rr, total)) == weights


def test_heavy_target_is_never_picked_more_than_needed_in_a_row() -> None:
    # smoothness: with 4:1:1 the heavy one is never picked 4 times in a row
    rr = RoundRobin([T("a", 4), T("b", 1), T("c", 1)])
    seq = "".join(picks(rr, 60))
    assert "aaaa" not in seq
    assert Counter(seq) == {"a": 40, "b": 10, "c": 10}


def test_pools_do_not_share_state() -> None:
    targets = [T("a"), T("b")]
    one, two = RoundRobin(targets), RoundRobin(targets)
    assert picks(one, 1) == ["a"]
    assert picks(two, 1) == ["a"]
    assert picks(one, 1) == ["b"]


def test_input_sequence_is_not_modified() -> None:
    targets = [T("a", 0), T("b")]
    RoundRobin(targets).pick()
    assert targets == [T("a", 0), T("b")]


def test_a_rebuilt_rotation_goes_on_after_the_last_pick() -> None:
    a, b, c = T("a"), T("b"), T("c")
    rr = RoundRobin([a, b, c])
    assert picks(rr, 2) == ["a", "b"]
    rr = RoundRobin([a, b, c], after=rr)       # e.g. a health transition elsewhere
    assert picks(rr, 4) == ["c", "a", "b", "c"]


def test_rebuilding_after_every_pick_still_rotates() -> None:
    # slow start and health checks rebuild often; each rebuild must not restart at "a"
    targets = [T("a"), T("b"), T("c")]
    rr = RoundRobin(targets)
    seen = []
    for _ in range(6):
        seen += picks(rr, 1)
        rr = RoundRobin(targets, after=rr)
    assert seen == ["a", "b", "c", "a", "b", "c"]


def test_a_rebuilt_rotation_without_the_last_pick_keeps_its_place() -> None:
    a, b, c = T("a"), T("b"), T("c")
    rr = RoundRobin([a, b, c])
    assert picks(rr, 2) == ["a", "b"]
    rr = RoundRobin([a, c], after=rr)           # b left the pool
    assert picks(rr, 3) == ["a", "c", "a"]


def test_smooth_weights_keep_their_credit_across_rebuilds() -> None:
    targets = [T("a", 5), T("b", 1), T("c", 1)]
    once = RoundRobin(targets)
    expected = picks(once, 14)
    rr = RoundRobin(targets)
    seen = []
    for _ in range(14):
        seen += picks(rr, 1)
        rr = RoundRobin(targets, after=rr)
    assert seen == expected
