"""The pure key -> file mapping (layout.py)."""

from __future__ import annotations

import hashlib

import pytest

from lbcdn.bucket import layout


@pytest.mark.parametrize("key", ["a", "a/b/c.txt", "café/x y", "x" * 255, "a\\b", "%2e%2e",
                                 "..a", "a..", ".hidden/x"])
def test_clean_keys_are_their_own_path(key: str) -> None:
    assert layout.file_path(key) == key


@pytest.mark.parametrize("key", [
    "folder/", "/abs", "a//b", "./a", "a/./b", "../x", "a/..", ".", "..", "",
    "x" * 256, "a/" + "é" * 128,  # 256 bytes in one segment
    "nul\x00byte",
])
def test_keys_that_cannot_be_a_file(key: str) -> None:
    assert layout.file_path(key) is None


def test_spill_path_is_the_sha256_of_the_key() -> None:
    h = hashlib.sha256("folder/".encode()).hexdigest()
    assert layout.spill_path("folder/") == f"{h[:2]}/{h}"
    assert layout.spill_path("a") != layout.spill_path("a/")


@pytest.mark.parametrize("prefix,walked", [
    ("", ""), ("ph", ""), ("photos/", "photos"), ("photos/2024/x", "photos/2024"),
    ("/", None), ("/abs", None), ("a//", None), ("../", None), ("x" * 256 + "/", None),
])
def test_listable_dir(prefix: str, walked: str | None) -> None:
    assert layout.listable_dir(prefix) == walked
