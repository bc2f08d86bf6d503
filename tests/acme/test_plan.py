"""ACME decisions: default challenge, renewal time, backoff."""

from __future__ import annotations

import pytest

from lbcdn.acme.plan import MAX_RETRY_S, RateLimit, ari_time, default_challenge, \
    name_allowed, next_attempt, renew_at, retry_delay


def ours(name: str) -> bool:
    return name == "example.com" or name.endswith(".example.com")


@pytest.mark.parametrize(("names", "port", "expected"), [
    (["www.example.com"], 8443, "dns-01"),
    (["*.example.com", "example.com"], 8443, "dns-01"),
    (["www.example.com", "www.other.org"], 443, "tls-alpn-01"),
    (["www.other.org"], 8443, "http-01"),
])
def test_default_challenge(names: list[str], port: int, expected: str) -> None:
    assert default_challenge(names, ours, port) == expected


def test_renewal_at_two_thirds_of_the_lifetime() -> None:
    assert renew_at(1000.0, 1000.0 + 90 * 86400) == 1000.0 + 60 * 86400
    assert next_attempt(5.0, None, None, 0, None, 60.0) == 5.0   # none yet: at once
    assert next_attempt(5.0, 0.0, 90.0, 0, None, 60.0) == 60.0


def test_backoff_doubles_caps_and_tightens_near_expiry() -> None:
    assert [retry_delay(n, 60.0, 0.0, None) for n in (1, 2, 3)] == [60.0, 120.0, 240.0]
    assert retry_delay(30, 60.0, 0.0, None) == MAX_RETRY_S
    # two hours left: never wait more than a third of it
    assert retry_delay(30, 60.0, 0.0, 7200.0) == 2400.0
    # and never less than the first pause
    assert retry_delay(5, 60.0, 0.0, 30.0) == 60.0
    # after a failure the next attempt waits for the backoff even when renewal is due
    assert next_attempt(100.0, 0.0, 90.0, 2, 95.0, 60.0) == 95.0 + 120.0  # expired
    assert next_attempt(100.0, 0.0, 9000.0, 1, 95.0, 60.0) == 6000.0


def test_on_demand_allow_list_and_rate_limit() -> None:
    patterns = ["*.shop.example.com", "Exact.example.org."]
    assert name_allowed("a.shop.example.com", patterns)
    assert name_allowed("exact.example.org", patterns)
    assert not name_allowed("shop.example.com", patterns)          # the parent itself
    assert not name_allowed("a.b.shop.example.com", patterns)      # one label only
    assert not name_allowed("other.example.org", patterns)
    limit = RateLimit(2, 60.0)
    assert [limit.take(t) for t in (0.0, 1.0, 2.0, 59.0)] == [True, True, False, False]
    assert limit.take(60.5)                  # the first one left the window
    assert not limit.take(60.9) and limit.take(61.5)   # 1.0 left too


def test_a_time_in_the_suggested_renewal_window() -> None:
    assert [ari_time(100.0, 200.0, f) for f in (0.0, 0.5, 0.999)] == [100.0, 150.0, 199.9]
    assert ari_time(100.0, 50.0, 0.7) == 100.0   # an inverted window: its start
