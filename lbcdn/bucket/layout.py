"""Where a key's data lives on disk (pure): a plain file, or a hashed name in the spill area.

Job: decide, from the key alone, whether it can be the file `<bucket dir>/<key>`, and name its
place in the spill area (`<root>/.lbcdn/spill/<bucket>/<h2>/<h>`, h = sha256 of the key) for
when it cannot. `Storage` is the only user; nothing else builds object paths.

A key maps to a file when every `/`-separated segment is a name a Linux file system stores
as itself: not empty (so no leading, trailing or doubled `/`), not `.` or `..`, no NUL, at
most NAME_MAX_BYTES of UTF-8. Any other key (a folder marker `photos/`, `a//b`, `../x`, a
300-byte segment) is spilled. A key that maps to a file is spilled too when the file system
disagrees at write time: its path is a directory (`foo` while `foo/bar` exists), or a prefix
of it is a file (`foo/bar/xyzzy` while `foo/bar` exists). Reads look at the file first, then at
the spill area, so a key is found wherever it was put; a listing merges both in key order.
"""

from __future__ import annotations

import hashlib

# NAME_MAX of ext4, xfs, btrfs and tmpfs.
NAME_MAX_BYTES = 255


def file_path(key: str) -> str | None:
    """The key as a path relative to its bucket directory, or None when it cannot be one."""
    if not key or "\x00" in key:
        return None
    for seg in key.split("/"):
        if seg in ("", ".", "..") or len(seg.encode("utf-8")) > NAME_MAX_BYTES:
            return None
    return key


def spill_path(key: str) -> str:
    """The key's place in its bucket's spill area, relative to it: `<h2>/<h>`. Its metadata
    directory (`meta/<bucket>/<h2>/<h>/`) has the same name."""
    h = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return f"{h[:2]}/{h}"


def listable_dir(prefix: str) -> str | None:
    """The directory (relative, "" for the bucket itself) a listing of `prefix` walks for
    file keys, or None when no file key can start with `prefix` (say `/` or `a//`)."""
    dir_part = prefix.rpartition("/")[0]
    if not dir_part:
        return None if prefix.startswith("/") else ""
    return dir_part if file_path(dir_part) is not None else None
