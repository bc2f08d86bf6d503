"""lbcdn.control's connection caps: the listeners that share a process's descriptors are fitted
together (one process: the control listeners and the edge's; a worker: the edge's; the control
process with workers: its own), and a lowered cap is a warning naming its listener."""

from __future__ import annotations

import logging

import pytest

from lbcdn.config.load import parse_config
from lbcdn.config.schema import Config
from lbcdn.control import EDGE, connection_caps, log_lowered


def config() -> Config:
    return parse_config({
        "listeners": [{"name": "web", "port": 8080, "max_connections": 5000},
                      {"name": "api", "port": 8081}],
        "pools": {"app": {"targets": ["127.0.0.1:9000"]}},
        "default_route": {"forward": "app"},
        "admin": {"port": 9100, "limits": {"max_connections": 100}}})


def need(caps: dict[str, int]) -> int:
    """Descriptors the caps may hold: 1 an admin connection, 2 an edge one; and the refused."""
    return sum((cap + min(64, cap)) * (1 if name == "admin" else 2)
               for name, cap in caps.items())


def test_the_listeners_of_one_process_are_fitted_together() -> None:
    c = config()
    # an unset cap (api's) takes what the limit holds beside the others
    big = connection_caps(c, 1 << 20, control=True, edge=True)
    assert big == {"admin": 100, EDGE + "web": 5000, EDGE + "api": 466_649}
    assert need(big) <= (1 << 20) - (1 << 20) // 10 < need({**big, EDGE + "api": 466_650})
    # limit 4096: 3,687 descriptors for connections (2 for each edge one); the largest lowered
    # first, the admin API's small cap kept
    one = connection_caps(c, 4096, control=True, edge=True)
    assert one == {"admin": 100, EDGE + "web": 816, EDGE + "api": 816}
    # a worker's edge listeners have its descriptors to themselves; so have the control's
    assert connection_caps(c, 4096, control=False, edge=True) == \
        {EDGE + "web": 857, EDGE + "api": 857}
    assert connection_caps(c, 4096, control=True, edge=False) == {"admin": 100}


def test_a_lowered_cap_is_a_warning_naming_its_listener_an_unset_one_said_at_info(
        caplog: pytest.LogCaptureFixture) -> None:
    c = config()
    caps = connection_caps(c, 4096, control=True, edge=True)
    with caplog.at_level(logging.INFO, "lbcdn.control"):
        log_lowered(c, 4096, caps, edge=True)
        log_lowered(c, 4096, caps, edge=False)
    assert caplog.messages == [
        "listener web: max_connections lowered from 5000 to 816 to fit the file descriptor "
        "limit (4096)",
        "listener api: max_connections 816 (what the file descriptor limit, 4096, holds)"]
