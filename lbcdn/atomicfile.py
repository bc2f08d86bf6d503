"""Replace a small state file so that a crash leaves either the old or the new content, never
a torn mix: write a temporary file in the same directory, fsync it, rename it over the target,
then fsync the directory so the rename itself survives a power cut."""

from __future__ import annotations

import os
import tempfile


def write_atomic(path: str, text: str, *, prefix: str = ".tmp-") -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
