"""Weighted forward: exact smooth spreading, weight changes, zero weights, stickiness by
cookie (per route, survives a rebuild from the same config, refreshed on every answer)."""

from __future__ import annotations

from collections import Counter

import pytest

from lbcdn.routing.config import ForwardAction, PoolWeight, Stickiness
from lbcdn.routing.weighted import WeightedForward, cookie_name


def action(sticky: int | None = None, **weights: int) -> ForwardAction:
    return ForwardAction(pools=tuple(PoolWeight(p, w) for p, w in weights.items()),
                         stickiness=Stickiness(sticky) if sticky else None)


def spread(wf: WeightedForward, n: int) -> Counter[str]:
    return Counter(wf.pick([])[0] for _ in range(n))


def test_split_is_exact_over_each_round_and_interleaved() -> None:
    wf = WeightedForward("r", action(blue=90, green=10))
    assert spread(wf, 100) == {"blue": 90, "green": 10}
    picks = [wf.pick([])[0] for _ in range(20)]
    assert picks.count("green") == 2 and picks[:9].count("green") <= 1  # not bunched


def test_zero_weight_gets_nothing_and_new_weights_apply_at_once() -> None:
    wf = WeightedForward("r", action(blue=1, green=0))
    assert spread(wf, 10) == {"blue": 10}
    wf.set_weights({"green": 3})
    assert spread(wf, 40) == {"blue": 10, "green": 30}


@pytest.mark.parametrize("weights, message", [
    ({"red": 1}, "pool 'red' is not one of route 'r''s (blue, green)"),
    ({"blue": 1000}, "weight of 'blue' must be an integer 0-999"),
    ({"blue": True}, "weight of 'blue' must be an integer 0-999"),
    ({"blue": 0, "green": 0}, "at least one weight must be above 0"),
])
def test_bad_weights_are_refused_and_change_nothing(weights: dict[str, int],
                                                   message: str) -> None:
    wf = WeightedForward("r", action(blue=1, green=1))
    with pytest.raises(ValueError) as exc:
        wf.set_weights(weights)
    assert str(exc.value) == message
    assert wf.weights == [1, 1]


def cookie_of(set_cookie: bytes | None) -> tuple[bytes, bytes]:
    assert set_cookie is not None
    name, _, rest = set_cookie.partition(b"=")
    return name, rest.split(b";")[0]


def test_stickiness_pins_a_client_to_its_first_pool() -> None:
    wf = WeightedForward("canary", action(3600, blue=1, green=1))
    pool, set_cookie = wf.pick([])
    assert set_cookie is not None and b"Max-Age=3600; Path=/; HttpOnly" in set_cookie
    name, value = cookie_of(set_cookie)
    assert name == cookie_name("canary")
    header = [(b"Cookie", b"a=b; " + name + b"=" + value)]
    for _ in range(10):
        again, refreshed = wf.pick(header)
        assert again == pool and refreshed == set_cookie   # refreshed on every answer


def test_the_pin_survives_a_rebuild_and_weight_changes_but_not_a_zero_weight() -> None:
    first = WeightedForward("canary", action(60, blue=50, green=50))
    picks = {}
    while len(picks) < 2:
        pool, set_cookie = first.pick([])
        picks[pool] = cookie_of(set_cookie)
    reloaded = WeightedForward("canary", action(60, blue=99, green=1))   # a reload
    name, green = picks["green"]
    assert reloaded.pick([(b"Cookie", name + b"=" + green)])[0] == "green"
    reloaded.set_weights({"green": 0})    # rollback: sticky clients leave too
    pool, set_cookie = reloaded.pick([(b"Cookie", name + b"=" + green)])
    assert pool == "blue" and cookie_of(set_cookie)[1] == picks["blue"][1]


def test_unknown_cookie_values_and_other_routes_cookies_are_spread() -> None:
    wf = WeightedForward("a", action(60, blue=1, green=0))
    assert wf.pick([(b"Cookie", cookie_name("a") + b"=bogus")])[0] == "blue"
    assert cookie_name("a") != cookie_name("b")


def test_without_stickiness_no_cookie() -> None:
    assert WeightedForward("r", action(blue=1)).pick([])[1] is None
