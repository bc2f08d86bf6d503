"""Keys from the raw request target: decoded once, strictly UTF-8, any key S3 accepts kept
as given (where it is stored is layout.py's business, tested in test_layout.py)."""

from __future__ import annotations

import pytest

from lbcdn.bucket.errors import S3Error
from lbcdn.bucket.keys import check_key, decode_key, split_path


def refused(raw: str) -> str:
    with pytest.raises(S3Error) as e:
        decode_key(raw)
    return e.value.code


def test_plain_keys_decode_once() -> None:
    assert decode_key("a/b%20c.txt") == "a/b c.txt"
    assert decode_key("caf%C3%A9/x+y") == "café/x+y"
    assert decode_key("folder/") == "folder/"


@pytest.mark.parametrize("raw,key", [
    ("../etc/passwd", "../etc/passwd"),
    ("a/./b", "a/./b"),
    ("a//b", "a//b"),
    ("%2e%2e/secret", "../secret"),
    ("..%2fsecret", "../secret"),
    ("%252e%252e", "%2e%2e"),         # decoded once: the rest is literal
    ("/etc/passwd", "/etc/passwd"),
    ("a%5cb", "a\\b"),
    ("tab%09key", "tab\tkey"),
])
def test_every_key_s3_accepts_is_accepted_as_given(raw: str, key: str) -> None:
    assert decode_key(raw) == key


def test_invalid_utf8_is_invalid_uri() -> None:
    assert refused("%ff%fe") == "InvalidURI"


def test_empty() -> None:
    assert refused("") == "InvalidObjectName"


def test_too_long() -> None:
    assert refused("k" * 1025) == "KeyTooLongError"
    assert refused("é" * 513) == "KeyTooLongError"  # 1026 UTF-8 bytes
    assert check_key("k" * 1024)


def test_lone_surrogate_is_not_utf8() -> None:
    with pytest.raises(S3Error) as e:
        check_key("a\udcffb")
    assert e.value.code == "InvalidObjectName"


def test_split_path() -> None:
    assert split_path("/bucket/a/b?x=1") == ("bucket", "a/b")
    assert split_path("/bucket") == ("bucket", "")
    assert split_path("/") == ("", "")
    with pytest.raises(S3Error):
        split_path("bucket/a")
