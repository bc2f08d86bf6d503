"""HTTP semantics of serving a stored object (pure): conditional requests, a single Range, and
the RFC 2047 form of non-ASCII user metadata.

Rules (RFC 9110 §13 and §14, as S3 applies them):
- Preconditions in RFC order: If-Match (else If-Unmodified-Since) -> 412; If-None-Match (else
  If-Modified-Since, GET/HEAD only) -> 304 for GET/HEAD. ETags compare strongly for If-Match and
  weakly for If-None-Match; `*` matches any existing object. Dates have second resolution.
- Range: one `bytes=` range only. A syntactically invalid header or several ranges are
  ignored (the whole object, 200), as S3 does; an unsatisfiable one is 416 with
  `Content-Range: bytes */size`. If-Range with a differing validator also yields 200.
"""

from __future__ import annotations

import base64
import email.errors
import email.header
import email.utils
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal


def http_date(ts: float) -> str:
    return email.utils.formatdate(math.floor(ts), usegmt=True)


def iso8601(ts: float) -> str:
    """S3's XML timestamp form: 2009-10-12T17:50:30.000Z."""
    dt = datetime.fromtimestamp(ts, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_http_date(value: str) -> float | None:
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _etag_matches(header: str, etag: str, *, weak: bool) -> bool:
    if header.strip() == "*":
        return True
    for part in header.split(","):
        tag = part.strip()
        if tag.startswith("W/"):
            if not weak:
                continue
            tag = tag[2:]
        if tag.strip('"') == etag:
            return True
    return False


Outcome = Literal["ok", "not_modified", "precondition_failed"]


def evaluate_preconditions(method: str, headers: Mapping[str, str], etag: str,
                           last_modified: float) -> Outcome:
    """Which answer the conditional headers call for, for an existing object."""
    lm = math.floor(last_modified)
    if_match = headers.get("If-Match")
    if if_match is not None:
        if not _etag_matches(if_match, etag, weak=False):
            return "precondition_failed"
    else:
        ius = headers.get("If-Unmodified-Since")
        if ius is not None:
            t = parse_http_date(ius)
            if t is not None and lm > t:
                return "precondition_failed"
    safe = method in ("GET", "HEAD")
    inm = headers.get("If-None-Match")
    if inm is not None:
        if _etag_matches(inm, etag, weak=True):
            return "not_modified" if safe else "precondition_failed"
    elif safe:
        ims = headers.get("If-Modified-Since")
        if ims is not None:
            t = parse_http_date(ims)
            if t is not None and lm <= t:
                return "not_modified"
    return "ok"


@dataclass(frozen=True)
class WriteCondition:
    """The conditional-write headers of a PutObject or CompleteMultipartUpload."""
    if_match: str | None = None     # the ETag the current object must have
    if_none_match: bool = False     # `If-None-Match: *`: the key must not exist


WriteOutcome = Literal["ok", "precondition_failed", "no_such_key"]


def write_condition(headers: Mapping[str, str]) -> WriteCondition | None:
    """The write's condition, None when unconditional. Raises ValueError for an If-None-Match
    other than `*` (S3 supports only that one on writes)."""
    if_match = headers.get("If-Match")
    inm = headers.get("If-None-Match")
    if inm is not None and inm.strip() != "*":
        raise ValueError("If-None-Match")
    if if_match is None and inm is None:
        return None
    return WriteCondition(if_match, inm is not None)


def check_write(cond: WriteCondition, current_etag: str | None) -> WriteOutcome:
    """Whether a conditional write may replace the object whose ETag is `current_etag` (None:
    no object). As S3: If-None-Match fails on any existing object; If-Match on a missing key
    is NoSuchKey, on another ETag a 412."""
    if cond.if_none_match and current_etag is not None:
        return "precondition_failed"
    if cond.if_match is not None:
        if current_etag is None:
            return "no_such_key"
        if not _etag_matches(cond.if_match, current_etag, weak=False):
            return "precondition_failed"
    return "ok"


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


class Unsatisfiable(Exception):
    """The Range cannot be served: answer 416 with `Content-Range: bytes */size`."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range to serve, None for the whole object; raises Unsatisfiable."""
    if header is None:
        return None
    unit, sep, spec = header.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        if last == "":
            return None
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable()
        return ByteRange(max(0, size - n), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid syntax: ignored
    if start >= size:
        raise Unsatisfiable()
    return ByteRange(start, min(end, size - 1))


def parse_copy_range(header: str, size: int) -> ByteRange:
    """An UploadPartCopy `x-amz-copy-source-range` (`bytes=first-last`, both given) of an
    object of `size` bytes; ValueError with S3's message when malformed or outside it."""
    unit, sep, spec = header.strip().partition("=")
    first, dash, last = spec.strip().partition("-")
    if (not sep or unit.strip() != "bytes" or not dash or not first.strip().isdigit()
            or not last.strip().isdigit() or int(last) < int(first)):
        raise ValueError("The x-amz-copy-source-range value must be of the form bytes=first-last"
                         " where first and last are the zero-based offsets of the first and "
                         "last bytes to copy")
    if int(last) >= size:
        raise ValueError(f"Range specified is not valid for source object of size: {size}")
    return ByteRange(int(first), int(last))


def part_range(part_sizes: tuple[int, ...], parts: int, size: int,
               number: int) -> ByteRange | None:
    """The bytes of part `number` of an object (`?partNumber=`): its part of a multipart
    object, the whole of any other object for part 1 (None). Unsatisfiable for a part it does
    not have; ValueError when the part sizes were not recorded."""
    if not parts:
        if number != 1:
            raise Unsatisfiable()
        return None
    if not part_sizes:
        raise ValueError("the part sizes of this object were not recorded")
    if number > len(part_sizes):
        raise Unsatisfiable()
    start = sum(part_sizes[:number - 1])
    return ByteRange(start, start + part_sizes[number - 1] - 1)


def if_range_allows(header: str | None, etag: str, last_modified: float) -> bool:
    """False when If-Range names another version (serve the whole object)."""
    if header is None:
        return True
    value = header.strip()
    if value.startswith('"') or value.startswith("W/"):
        return not value.startswith("W/") and value.strip('"') == etag
    t = parse_http_date(value)
    return t is not None and math.floor(last_modified) == t


__all__ = ["ByteRange", "Outcome", "Unsatisfiable", "WriteCondition", "WriteOutcome",
           "check_write", "evaluate_preconditions", "http_date", "if_range_allows", "iso8601",
           "parse_copy_range", "parse_http_date", "parse_range", "part_range",
           "write_condition"]


def metadata_text(value: str) -> str:
    """A user metadata header value as the text S3 stores: RFC 2047 encoded words decoded
    (S3's documented treatment of non-ASCII metadata; boto3 only sends ASCII, so clients
    encode). A value that does not decode stays as given."""
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return value


def metadata_value(text: str) -> str:
    """Stored metadata text as a header value: non-ASCII text as one RFC 2047 encoded word
    in UTF-8, as S3 returns it (headers are ASCII on the wire)."""
    if text.isascii():
        return text
    raw = text.encode("utf-8", "surrogateescape")
    return f"=?UTF-8?B?{base64.b64encode(raw).decode('ascii')}?="
