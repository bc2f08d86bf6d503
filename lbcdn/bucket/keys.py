"""Object keys: from the raw request target to a key that is safe to map onto the file system.

Job: split a raw (still percent-encoded) path into bucket and key, decode exactly once, and
refuse every key that could address anything but a file inside its bucket directory.

Rules (each refused key raises S3Error InvalidObjectName / InvalidURI, never touches the disk):
- decoding happens once; a key still containing `%2e`, `%2f`, `%5c`, `%00` or `%25` after it
  (double encoding) is refused, so no later layer can be tricked by decoding again;
- no NUL or other control characters, no backslash, no leading `/` (absolute), no empty, `.`
  or `..` segment, at most 1024 UTF-8 bytes;
- a key ending in `/` names a "folder": allowed for reads (website index documents) but not
  storable (`storable_key`).
Symlinks are the storage layer's business (it resolves the real path), not this module's.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from lbcdn.bucket.errors import S3Error

MAX_KEY_BYTES = 1024
_ENCODED_TRICKS = re.compile(r"%(2e|2f|5c|00|25)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def decode_path(raw: str) -> str:
    """Percent-decode a raw path once, strictly as UTF-8."""
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise S3Error("InvalidURI", "Couldn't parse the specified URI.") from None


def split_path(raw_path: str) -> tuple[str, str]:
    """Path-style `/bucket/key...` (raw, without query) -> (bucket, raw key), both still
    encoded; either may be empty."""
    path = raw_path.split("?", 1)[0]
    if not path.startswith("/"):
        raise S3Error("InvalidURI", "Couldn't parse the specified URI.")
    bucket, _, key = path[1:].partition("/")
    return bucket, key


def check_key(key: str) -> str:
    """Validate an already decoded key for reading; returns it unchanged."""
    if not key:
        raise S3Error("InvalidObjectName", "Object key must not be empty.")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError")
    if _CONTROL.search(key):
        raise S3Error("InvalidObjectName", "Object key contains a control character.")
    if "\\" in key:
        raise S3Error("InvalidObjectName", "Object key contains a backslash.")
    if key.startswith("/"):
        raise S3Error("InvalidObjectName", "Object key must not be an absolute path.")
    if _ENCODED_TRICKS.search(key):
        raise S3Error("InvalidObjectName", "Object key contains an encoded dot, slash, "
                                           "backslash, NUL or percent sign.")
    segments = key.split("/")
    if segments[-1] == "":
        segments.pop()  # "folder/" is a readable name (index documents)
    for seg in segments:
        if seg in ("", ".", ".."):
            raise S3Error("InvalidObjectName",
                          "Object key contains an empty, '.' or '..' path segment.")
    return key


def storable_key(key: str) -> str:
    """Validate a key that is about to be written (files only, no folder markers)."""
    check_key(key)
    if key.endswith("/"):
        raise S3Error("InvalidObjectName",
                      "Keys ending in '/' (folder markers) cannot be stored.")
    return key


def decode_key(raw_key: str) -> str:
    """Raw (encoded) key from the path -> validated key."""
    return check_key(decode_path(raw_key))


def check_prefix(prefix: str) -> str:
    """A listing prefix may be anything printable; it never reaches the file system unchecked
    (the walker only descends into directories that exist inside the bucket)."""
    if "\x00" in prefix:
        raise S3Error("InvalidArgument", "Prefix contains a NUL byte.")
    return prefix
