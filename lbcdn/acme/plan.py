"""ACME decisions, pure: which challenge by default, when to renew, how long to wait after a
failure. They take data and `now`; the manager (lbcdn.acme.manager) does what they say."""

from __future__ import annotations

from collections.abc import Callable, Sequence

RENEW_FRACTION = 2 / 3          # renew when two thirds of the lifetime have passed
MAX_RETRY_S = 3600.0


def default_challenge(names: Sequence[str], authoritative: Callable[[str], bool],
                      listener_port: int) -> str:
    """dns-01 when our own DNS serves a zone holding every name (the only way for a
    wildcard), else tls-alpn-01 on a 443 listener (the port the CA connects to), else
    http-01 (answered on the plain listeners: the CA connects to port 80)."""
    if all(authoritative(n.removeprefix("*.")) for n in names):
        return "dns-01"
    return "tls-alpn-01" if listener_port == 443 else "http-01"


def renew_at(not_before: float, not_after: float) -> float:
    return not_before + (not_after - not_before) * RENEW_FRACTION


def ari_time(start: float, end: float, fraction: float) -> float:
    """A time in the renewal window the CA suggested (RFC 9773: chosen at random in it, so
    that clients spread out); `fraction` is a random number in [0, 1)."""
    return start + max(end - start, 0.0) * fraction


def retry_delay(failures: int, initial_s: float, now: float,
                not_after: float | None) -> float:
    """The pause after the `failures`-th failure in a row (1 or more): `initial_s`, doubling,
    at most an hour; with a certificate still valid, never more than a third of its time
    left, so the retries get denser as its end comes near."""
    delay: float = min(initial_s * 2.0 ** (max(failures, 1) - 1), MAX_RETRY_S)
    if not_after is not None and not_after > now:
        delay = min(delay, max((not_after - now) / 3, initial_s))
    return delay


def next_attempt(now: float, not_before: float | None, not_after: float | None,
                 failures: int, last_failure: float | None, initial_s: float) -> float:
    """When to (re)issue: at once without a certificate; at two thirds of its lifetime; after
    a failure, once its backoff has passed (whichever is later)."""
    due = now if not_before is None or not_after is None else renew_at(not_before, not_after)
    if failures and last_failure is not None:
        due = max(due, last_failure + retry_delay(failures, initial_s, last_failure,
                                                  not_after))
    return due


def name_allowed(name: str, patterns: Sequence[str]) -> bool:
    """`name` is one of `patterns`: an exact name, or `*.parent` for one label below it."""
    name = name.lower().rstrip(".")
    first, _, parent = name.partition(".")
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern == name or (pattern.startswith("*.") and first and
                               pattern[2:] == parent):
            return True
    return False


class RateLimit:
    """At most `count` events in any `window_s`: `take(now)` says whether one more may."""

    def __init__(self, count: int, window_s: float) -> None:
        self.count = count
        self.window_s = window_s
        self.times: list[float] = []

    def take(self, now: float) -> bool:
        self.times = [t for t in self.times if t > now - self.window_s]
        if len(self.times) >= self.count:
            return False
        self.times.append(now)
        return True
