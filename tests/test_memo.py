"""The bounded remember-table."""

from __future__ import annotations

from lbcdn.memo import remember


def test_remember_stores_and_empties_the_table_when_full() -> None:
    table: dict[str, int] = {}
    assert remember(table, "a", 1, 2) == 1
    remember(table, "b", 2, 2)
    assert table == {"a": 1, "b": 2}
    remember(table, "a", 3, 2)             # full: emptied first, even for a known key
    assert table == {"a": 3}
    remember(table, "c", 4, 2)
    assert table == {"a": 3, "c": 4}
