"""Sticky sessions: the cookie pins, survives rebuilds, re-pins when its target is gone."""

from __future__ import annotations

from dataclasses import dataclass

from lbcdn.balancer.round_robin import RoundRobin
from lbcdn.balancer.sticky import StickySessions, target_token


@dataclass(eq=False)
class T:
    key: str
    weight: int = 1
    in_flight: int = 0


def sticky(ts: list[T]) -> StickySessions[T]:
    return StickySessions(ts, RoundRobin(ts), cookie_name="LB", duration_s=3600)


def test_first_request_is_pinned_and_stays() -> None:
    ts = [T("a:1"), T("b:1"), T("c:1")]
    s = sticky(ts)
    first = s.pick(None)
    assert first is not None and first.repinned
    for _ in range(10):
        again = s.pick(first.cookie)
        assert again is not None and again.target is first.target and not again.repinned
        assert again.cookie == first.cookie


def test_cookie_does_not_reveal_the_address_and_survives_a_rebuild() -> None:
    ts = [T("10.0.0.1:80"), T("10.0.0.2:80")]
    p = sticky(ts).pick(None)
    assert p is not None and b"10.0.0" not in p.cookie
    rebuilt = sticky([T("10.0.0.2:80"), T("10.0.0.1:80")])  # new objects, other order
    again = rebuilt.pick(p.cookie)
    assert again is not None and again.target.key == p.target.key and not again.repinned


def test_repins_when_the_target_is_gone_or_unhealthy() -> None:
    ts = [T("a:1"), T("b:1")]
    p = sticky(ts).pick(target_token("a:1"))
    assert p is not None and p.target.key == "a:1"
    healthy_only = sticky([ts[1]])           # a became unhealthy: not among the eligible
    q = healthy_only.pick(p.cookie)
    assert q is not None and q.target is ts[1] and q.repinned
    assert q.cookie == target_token("b:1")
    assert sticky([]).pick(p.cookie) is None
    assert sticky(ts).pick(b"garbage") is not None


def test_set_cookie_header() -> None:
    assert sticky([]).set_cookie(b"v") == b"LB=v; Max-Age=3600; Path=/; HttpOnly"
