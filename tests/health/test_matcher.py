"""Success-code matcher forms and errors; body search window."""

from __future__ import annotations

import pytest

from lbcdn.health.matcher import SEARCH_WINDOW_BYTES, body_contains, parse_matcher


def test_single_code() -> None:
    m = parse_matcher("200")
    assert 200 in m and 201 not in m and m.matches(200)
    assert m.text == "200"


def test_list_and_range_and_mix() -> None:
    assert parse_matcher("200,202").codes == {200, 202}
    assert parse_matcher("200-299").codes == set(range(200, 300))
    m = parse_matcher(" 200 , 301-302 ")
    assert m.codes == {200, 301, 302}
    assert m.text == "200,301-302"


@pytest.mark.parametrize("text", ["", " ", "abc", "20", "2000", "099", "600", "300-200",
                                  "200-", "-200", "200,,201", "200-250-299", "２００"])
def test_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_matcher(text)


def test_body_window() -> None:
    pad = b"x" * (SEARCH_WINDOW_BYTES - 2)
    assert body_contains(pad + b"ok", b"ok")
    assert not body_contains(pad + b"_ok", b"ok")  # straddles byte 5120
    assert not body_contains(b"nothing", b"ok")


def test_grpc_matcher_takes_grpc_codes() -> None:
    from lbcdn.health.matcher import parse_matcher
    assert parse_matcher("0-99", grpc=True).codes == frozenset(range(100))
    assert parse_matcher("0,12", grpc=True).codes == frozenset({0, 12})
    for bad in ("100", "200", "-1", "a", ""):
        with pytest.raises(ValueError):
            parse_matcher(bad, grpc=True)
