"""write_atomic: new content replaces old whole; a failure leaves the old file and no debris."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lbcdn.atomicfile import write_atomic


def test_replaces_and_creates_directories(tmp_path: Path) -> None:
    target = tmp_path / "state" / "x.json"
    write_atomic(str(target), "one")
    write_atomic(str(target), "two")
    assert target.read_text() == "two"
    assert os.listdir(target.parent) == ["x.json"]


def test_a_failed_replace_keeps_the_old_file(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.json"
    write_atomic(str(target), "old")

    def broken(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        write_atomic(str(target), "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["x.json"]  # the temporary file is gone
