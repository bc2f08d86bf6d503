from __future__ import annotations

import pytest

from lbcdn.bucket.httpsem import (ByteRange, Unsatisfiable, evaluate_preconditions, http_date,
                                  if_range_allows, iso8601, parse_range)

LM = 1_700_000_000.7
ETAG = "abc"


def ev(method: str = "GET", **headers: str) -> str:
    return evaluate_preconditions(method, {k.replace("_", "-"): v for k, v in headers.items()},
                                  ETAG, LM)


def test_if_match() -> None:
    assert ev(If_Match='"abc"') == "ok"
    assert ev(If_Match='"x", "abc"') == "ok"
    assert ev(If_Match="*") == "ok"
    assert ev(If_Match='"x"') == "precondition_failed"
    assert ev(If_Match='W/"abc"') == "precondition_failed"  # strong comparison


def test_if_none_match() -> None:
    assert ev(If_None_Match='"abc"') == "not_modified"
    assert ev(If_None_Match='W/"abc"') == "not_modified"  # weak comparison
    assert ev(If_None_Match='"x"') == "ok"
    assert ev("PUT", If_None_Match="*") == "precondition_failed"


def test_dates() -> None:
    assert ev(If_Modified_Since=http_date(LM)) == "not_modified"
    assert ev(If_Modified_Since=http_date(LM - 10)) == "ok"
    assert ev(If_Unmodified_Since=http_date(LM - 10)) == "precondition_failed"
    assert ev(If_Unmodified_Since=http_date(LM)) == "ok"
    assert ev(If_Modified_Since="garbage") == "ok"


def test_precedence() -> None:
    # If-Match true wins over a failing If-Unmodified-Since; If-None-Match over IMS.
    assert ev(If_Match='"abc"', If_Unmodified_Since=http_date(LM - 10)) == "ok"
    assert ev(If_None_Match='"x"', If_Modified_Since=http_date(LM)) == "ok"


def test_ranges() -> None:
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == ByteRange(0, 9)
    assert parse_range("bytes=90-", 100) == ByteRange(90, 99)
    assert parse_range("bytes=-10", 100) == ByteRange(90, 99)
    assert parse_range("bytes=-1000", 100) == ByteRange(0, 99)
    assert parse_range("bytes=50-1000", 100) == ByteRange(50, 99)
    assert ByteRange(0, 9).content_range(100) == "bytes 0-9/100"


def test_ignored_ranges() -> None:
    for header in ("bytes=0-1,5-6", "items=0-1", "bytes=5-1", "bytes=a-b", "bytes=-"):
        assert parse_range(header, 100) is None, header


def test_unsatisfiable() -> None:
    for header, size in (("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-1", 0)):
        with pytest.raises(Unsatisfiable):
            parse_range(header, size)


def test_if_range() -> None:
    assert if_range_allows(None, ETAG, LM)
    assert if_range_allows('"abc"', ETAG, LM)
    assert not if_range_allows('"x"', ETAG, LM)
    assert if_range_allows(http_date(LM), ETAG, LM)
    assert not if_range_allows(http_date(LM - 5), ETAG, LM)


def test_formats() -> None:
    assert iso8601(0.5) == "1970-01-01T00:00:00.500Z"
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


def test_metadata_text_decodes_rfc2047_words() -> None:
    from lbcdn.bucket.httpsem import metadata_text
    assert metadata_text("=?UTF-8?B?Y2Fmw6k=?=") == "café"
    assert metadata_text("=?utf-8?q?caf=C3=A9?=") == "café"
    assert metadata_text("plain  text") == "plain  text"
    assert metadata_text("=?bogus?X?zz?=") == "=?bogus?X?zz?="  # not decodable: as given
    assert metadata_text("café") == "café"  # raw UTF-8 in the header


def test_metadata_value_encodes_only_non_ascii() -> None:
    from lbcdn.bucket.httpsem import metadata_text, metadata_value
    assert metadata_value("plain") == "plain"
    assert metadata_value("café ✓") == "=?UTF-8?B?Y2Fmw6kg4pyT?="
    assert metadata_text(metadata_value("café ✓")) == "café ✓"


def test_write_conditions() -> None:
    from lbcdn.bucket.httpsem import WriteCondition, check_write, write_condition
    assert write_condition({}) is None
    assert write_condition({"If-None-Match": "*"}) == WriteCondition(None, True)
    assert write_condition({"If-Match": '"abc"'}) == WriteCondition('"abc"', False)
    with pytest.raises(ValueError):
        write_condition({"If-None-Match": '"abc"'})
    create = WriteCondition(if_none_match=True)
    assert check_write(create, None) == "ok"
    assert check_write(create, "abc") == "precondition_failed"
    cas = WriteCondition(if_match='"abc"')
    assert check_write(cas, "abc") == "ok"
    assert check_write(cas, "abd") == "precondition_failed"
    assert check_write(cas, None) == "no_such_key"
    assert check_write(WriteCondition(if_match='W/"abc"'), "abc") == "precondition_failed"


def test_copy_source_range() -> None:
    from lbcdn.bucket.httpsem import ByteRange, parse_copy_range
    assert parse_copy_range("bytes=0-9", 10) == ByteRange(0, 9)
    assert parse_copy_range("bytes=3-3", 10) == ByteRange(3, 3)
    for bad in ("bytes=0-10", "bytes=5-", "bytes=-5", "bytes=9-3", "items=0-1", "0-1"):
        with pytest.raises(ValueError):
            parse_copy_range(bad, 10)


def test_part_range() -> None:
    from lbcdn.bucket.httpsem import ByteRange, Unsatisfiable, part_range
    assert part_range((5, 5, 2), 3, 12, 1) == ByteRange(0, 4)
    assert part_range((5, 5, 2), 3, 12, 3) == ByteRange(10, 11)
    assert part_range((), 0, 7, 1) is None  # a plain object is its own part 1
    for sizes, parts, number in (((5, 5, 2), 3, 4), ((), 0, 2)):
        with pytest.raises(Unsatisfiable):
            part_range(sizes, parts, 12, number)
    with pytest.raises(ValueError):
        part_range((), 3, 12, 1)  # completed before part sizes were kept
