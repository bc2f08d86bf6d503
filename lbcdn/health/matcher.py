"""Health-check success codes and body matching (pure).

Job: parse an ALB-style success-code matcher (`200`, `200,202`, `200-299`, or a mix such as
`200,301-302`) into a value that answers "does this status pass?" in O(1), and check a response
body for a search string within its first 5120 bytes, as Route 53's string-matching checks do.

Rules: codes are 100-599 (gRPC checks: gRPC status codes 0-99, as ALB's gRPC matcher); a
range is `lo-hi` with lo <= hi; spaces around items are ignored;
anything else is a ValueError whose message can be shown after a YAML path.
"""

from __future__ import annotations

from dataclasses import dataclass

SEARCH_WINDOW_BYTES = 5120
MIN_CODE, MAX_CODE = 100, 599
MAX_GRPC_CODE = 99


@dataclass(frozen=True)
class Matcher:
    """A set of passing status codes; `text` is the normalized matcher string."""
    text: str
    codes: frozenset[int]

    def __contains__(self, status: object) -> bool:
        return status in self.codes

    def matches(self, status: int) -> bool:
        return status in self.codes


def _code(item: str, whole: str, grpc: bool) -> int:
    item = item.strip()
    if grpc:
        if not (item.isascii() and item.isdigit() and len(item) <= 2):
            raise ValueError(f"{whole!r}: {item!r} is not a gRPC status code (0-{MAX_GRPC_CODE})")
        return int(item)
    if not (item.isascii() and item.isdigit() and len(item) == 3):
        raise ValueError(f"{whole!r}: {item!r} is not a 3-digit HTTP status code")
    code = int(item)
    if not MIN_CODE <= code <= MAX_CODE:
        raise ValueError(f"{whole!r}: status {code} is outside {MIN_CODE}-{MAX_CODE}")
    return code


def parse_matcher(text: str, grpc: bool = False) -> Matcher:
    """`"200"`, `"200,202"`, `"200-299"` (and mixes) -> Matcher; ValueError when malformed.
    `grpc`: gRPC status codes (`0`, `0-99`, `0,5`)."""
    if not text.strip():
        raise ValueError("empty matcher; give codes such as " +
                         ("0 or 0-99" if grpc else "200, 200,202 or 200-299"))
    codes: set[int] = set()
    parts: list[str] = []
    for item in text.split(","):
        if "-" in item:
            lo_text, _, hi_text = item.partition("-")
            lo, hi = _code(lo_text, text, grpc), _code(hi_text, text, grpc)
            if lo > hi:
                raise ValueError(f"{text!r}: range {lo}-{hi} is backwards")
            codes.update(range(lo, hi + 1))
            parts.append(f"{lo}-{hi}")
        else:
            code = _code(item, text, grpc)
            codes.add(code)
            parts.append(str(code))
    return Matcher(",".join(parts), frozenset(codes))


def body_contains(body: bytes, needle: bytes) -> bool:
    """Does `needle` occur entirely within the first 5120 bytes of `body`?"""
    return needle in body[:SEARCH_WINDOW_BYTES]
