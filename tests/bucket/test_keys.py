"""Key safety: one test per trick, through the real request path (raw target -> key)."""

from __future__ import annotations

import pytest

from lbcdn.bucket.errors import S3Error
from lbcdn.bucket.keys import check_key, decode_key, split_path, storable_key


def refused(raw: str) -> str:
    with pytest.raises(S3Error) as e:
        decode_key(raw)
    return e.value.code


def test_plain_keys_decode_once() -> None:
    assert decode_key("a/b%20c.txt") == "a/b c.txt"
    assert decode_key("caf%C3%A9/x+y") == "café/x+y"
    assert decode_key("folder/") == "folder/"


def test_dot_dot_segment() -> None:
    assert refused("../etc/passwd") == "InvalidObjectName"
    assert refused("a/../../b") == "InvalidObjectName"
    assert refused("a/..") == "InvalidObjectName"


def test_single_dot_and_empty_segments() -> None:
    assert refused("a/./b") == "InvalidObjectName"
    assert refused("a//b") == "InvalidObjectName"


def test_percent_encoded_dots() -> None:
    assert refused("%2e%2e/secret") == "InvalidObjectName"
    assert refused("%2E%2E%2Fsecret") == "InvalidObjectName"


def test_percent_encoded_slash() -> None:
    assert refused("..%2fsecret") == "InvalidObjectName"
    assert refused("a%2F..%2F..%2Fb") == "InvalidObjectName"


def test_double_encoded_dots_and_slashes() -> None:
    assert refused("%252e%252e%252fsecret") == "InvalidObjectName"
    assert refused("a%252Fb") == "InvalidObjectName"


def test_absolute_path() -> None:
    assert refused("/etc/passwd") == "InvalidObjectName"
    assert refused("%2Fetc%2Fpasswd") == "InvalidObjectName"


def test_nul_byte() -> None:
    assert refused("a%00b") == "InvalidObjectName"
    assert refused("a\x00b") == "InvalidObjectName"


def test_backslash() -> None:
    assert refused("..%5c..%5cwin") == "InvalidObjectName"
    assert refused("a\\b") == "InvalidObjectName"


def test_invalid_utf8_is_invalid_uri() -> None:
    assert refused("%ff%fe") == "InvalidURI"


def test_too_long() -> None:
    assert refused("k" * 1025) == "KeyTooLongError"
    assert check_key("k" * 1024)


def test_folder_marker_not_storable() -> None:
    with pytest.raises(S3Error):
        storable_key("folder/")
    assert storable_key("folder/x") == "folder/x"


def test_split_path() -> None:
    assert split_path("/bucket/a/b?x=1") == ("bucket", "a/b")
    assert split_path("/bucket") == ("bucket", "")
    assert split_path("/") == ("", "")
    with pytest.raises(S3Error):
        split_path("bucket/a")
