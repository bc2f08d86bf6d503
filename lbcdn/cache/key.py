"""Cache keys: which stored responses a request can be answered from.

Two levels, as RFC 9111 4.1 has it:
- the primary key (CloudFront's cache key): method class, host, path, the query parameters the
  policy keeps, and the values of allow-listed request headers and cookies. GET and HEAD share
  a key (HEAD is answered from the GET entry); OPTIONS has its own.
- the variant key: the request's normalized values of the header fields named by the stored
  response's Vary. `Vary: *` has no variant key: such a response never answers a request.

Rules:
- Host: lower-cased, without port or trailing dot (lbcdn.routing.normalize_host), so
  `Example.com:80` and `example.com` share entries. Path: as sent, case-sensitive, not
  percent-decoded (CloudFront does the same; decoding would let two URIs the origin may
  treat differently collide).
- Query: parameters split on `&`, filtered by name (case-sensitive, as CloudFront) per
  `none | allow | all_except | all`, sorted by name then value; empty members dropped.
- Header values: field lines combined with `,`, whitespace around members removed; lower-cased
  for the fields whose values are case-insensitive. Accept-Encoding is reduced to the coding
  the cache would choose for it (br, gzip or identity), so the many spellings browsers send
  share one variant.
- Cookies: only allow-listed names, sorted; the rest of the Cookie header is not in the key.
- Parts are joined with NUL, which cannot appear in any of them on the wire.
"""

from __future__ import annotations

from lbcdn.cache.compress import negotiate
from lbcdn.cache.config import CachePolicyConfig
from lbcdn.cache.directives import Headers, split_list
from lbcdn.routing.router import normalize_host

CASE_INSENSITIVE = frozenset({b"accept", b"accept-charset", b"accept-language",
                              b"accept-encoding", b"origin", b"host"})
_SEP = b"\x00"


def normalize_query(query: bytes | None, behavior: str, names: frozenset[bytes]) -> bytes:
    if not query or behavior == "none":
        return b""
    params = [p for p in query.split(b"&") if p]
    if behavior == "allow":
        params = [p for p in params if p.partition(b"=")[0] in names]
    elif behavior == "all_except":
        params = [p for p in params if p.partition(b"=")[0] not in names]
    params.sort(key=lambda p: p.partition(b"="))
    return b"&".join(params)


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The normalized value of field `name` (lower-case) in a request, None when absent."""
    lines = [v for n, v in headers if n.lower() == name]
    if not lines:
        return None
    if name == b"accept-encoding":
        return negotiate(b",".join(lines))
    value = b",".join(split_list(lines))
    return value.lower() if name in CASE_INSENSITIVE else value


def cookie_values(headers: Headers, names: frozenset[bytes]) -> bytes:
    found: list[bytes] = []
    for n, v in headers:
        if n.lower() != b"cookie":
            continue
        for pair in v.split(b";"):
            name, eq, value = pair.strip().partition(b"=")
            if eq and name in names:
                found.append(name + b"=" + value)
    found.sort()
    return b";".join(found)


class KeyBuilder:
    """Primary keys for one cache policy (precomputed name sets)."""

    __slots__ = ("qs_behavior", "qs_names", "headers", "cookies")

    def __init__(self, policy: CachePolicyConfig,
                 never: frozenset[bytes] = frozenset()) -> None:
        """`never`: query parameter names never in the key, whatever the policy says
        (CloudFront's signed-URL parameters on a behavior with trusted key groups)."""
        behavior = policy.query_strings.behavior
        names = frozenset(n.encode() for n in policy.query_strings.names)
        if never and behavior == "all":
            behavior, names = "all_except", never
        elif behavior == "all_except":
            names |= never
        elif behavior == "allow":
            names -= never
        self.qs_behavior = behavior
        self.qs_names = names
        self.headers = tuple(sorted({h.lower().encode() for h in policy.headers}))
        self.cookies = frozenset(c.encode() for c in policy.cookies)

    def primary(self, method: bytes, host: bytes, path: bytes, query: bytes | None,
                headers: Headers) -> bytes:
        parts = [b"GET" if method == b"HEAD" else method, normalize_host(host), path,
                 normalize_query(query, self.qs_behavior, self.qs_names)]
        for name in self.headers:
            value = header_value(headers, name)
            parts.append(name + (b"=" + value if value is not None else b"!"))
        if self.cookies:
            parts.append(cookie_values(headers, self.cookies))
        return _SEP.join(parts)

    def kept_query(self, query: bytes | None) -> bytes | None:
        """The query as the key keeps it (an entry's `query`), or None when nothing is kept."""
        q = normalize_query(query, self.qs_behavior, self.qs_names)
        return q or None


def variant_key(vary: tuple[bytes, ...], headers: Headers) -> bytes | None:
    """The secondary key for a response with these Vary names; None for `Vary: *`."""
    if not vary:
        return b""
    if b"*" in vary:
        return None
    parts = []
    for name in sorted(set(vary)):
        value = header_value(headers, name)
        parts.append(name + (b"=" + value if value is not None else b"!"))
    return _SEP.join(parts)
