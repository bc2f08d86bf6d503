"""Object keys: from the raw request target to a key.

Job: split a raw (still percent-encoded) path into bucket and key, decode exactly once, and
refuse what S3 refuses (no more: every key S3 stores must be storable).

Rules: decoding happens once, strictly as UTF-8 (anything else is InvalidURI, 400); a key is
any non-empty UTF-8 text of at most 1024 bytes, as on S3 (`../x`, `a//b`, `folder/` included):
keys never become paths here. Which keys are files and which are stored under a hashed name is
layout.py's business, and it never turns a key into a path outside its bucket.
Symlinks are the storage layer's business too (it resolves the real path).
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from lbcdn.bucket.errors import S3Error

MAX_KEY_BYTES = 1024


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
    """Validate an already decoded key; returns it unchanged."""
    if not key:
        raise S3Error("InvalidObjectName", "Object key must not be empty.")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise S3Error("InvalidObjectName", "Object key is not valid UTF-8.") from None
    return key


def decode_key(raw_key: str) -> str:
    """Raw (encoded) key from the path -> validated key."""
    return check_key(decode_path(raw_key))


def check_text(value: str, name: str) -> str:
    """A listing parameter (prefix, delimiter, marker, start-after): UTF-8 text (the query is
    decoded leniently, for signatures) without NUL; else InvalidArgument, 400."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise S3Error("InvalidArgument", f"The {name} is not valid UTF-8.",
                      extra={"ArgumentName": name}) from None
    if "\x00" in value:
        raise S3Error("InvalidArgument", f"The {name} contains a NUL byte.",
                      extra={"ArgumentName": name})
    return value
