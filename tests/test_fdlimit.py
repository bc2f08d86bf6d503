"""lbcdn.fdlimit: the listeners' connection caps fit under the descriptor limit with a reserve
left, the largest lowered first when they do not; the soft limit is raised to the hard."""

from __future__ import annotations

import resource

from lbcdn.fdlimit import RESERVE_MIN, fit_caps, raise_nofile

WANTED = {"admin": (1024, 1), "s3": (1024, 3), "website": (1024, 3)}


def need(caps: dict[str, int], refusing_max: int = 64) -> int:
    return sum((cap + min(refusing_max, cap)) * WANTED[name][1] for name, cap in caps.items())


def test_caps_that_fit_are_kept() -> None:
    assert fit_caps(WANTED, 20_000, 64) == {"admin": 1024, "s3": 1024, "website": 1024}


def test_caps_that_do_not_fit_are_scaled_down_together_leaving_the_reserve() -> None:
    for limit in (600, 1024, 4096):
        caps = fit_caps(WANTED, limit, 64)
        assert len(set(caps.values())) == 1, caps            # the same factor for all
        assert need(caps) <= limit - max(RESERVE_MIN, limit // 10), (limit, caps)
        bigger = {name: cap + 1 for name, cap in caps.items()}
        assert need(bigger) > limit - max(RESERVE_MIN, limit // 10)   # the largest that fits
    assert fit_caps(WANTED, 600, 64) == {"admin": 24, "s3": 24, "website": 24}


def test_a_large_edge_cap_is_lowered_before_the_admin_api_s() -> None:
    wanted = {"admin": (1024, 1), "edge 0": (10_000, 2)}
    assert fit_caps(wanted, 400, 64) == {"admin": 24, "edge 0": 24}
    assert fit_caps(wanted, 4096, 64) == {"admin": 1024, "edge 0": 1235}
    assert fit_caps({"admin": (16, 1), "edge 0": (10_000, 2)}, 400, 64) == \
        {"admin": 16, "edge 0": 28}


def test_every_listener_keeps_at_least_one_connection() -> None:
    assert fit_caps(WANTED, 100, 64) == {"admin": 1, "s3": 1, "website": 1}


def test_raise_nofile_sets_the_soft_limit_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
        assert raise_nofile() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
