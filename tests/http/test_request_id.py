"""Request ids (the access-log lines that carry them are checked end to end in tests/e2e)."""

from __future__ import annotations

import re

from lbcdn.http.request_id import new_request_id


def test_request_ids_are_unique_hex_tokens_of_one_process() -> None:
    ids = [new_request_id() for _ in range(10_000)]  # across blocks of 4,096
    assert len(set(ids)) == 10_000
    assert all(re.fullmatch(rb"[0-9a-f]{20}", i) for i in ids)
    assert len({i[:8] for i in ids}) == 1  # the per-process prefix
