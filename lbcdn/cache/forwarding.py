"""What a cache behavior sends to its origin: CloudFront's cache policy + origin request policy.

An origin request carries the viewer's headers, cookies and query parameters that the cache
policy keys on or the behavior's origin request policy lists, and nothing else of the viewer's:
whatever else reached the origin could change its answer (X-Forwarded-Host, X-Original-URL,
User-Agent, ...) and that answer would be served from the cache to everyone (cache poisoning).
The edge adds its own fields (Host, X-Forwarded-*, Via, the request id); lbcdn.http.head keeps
those apart from the viewer's lines (`RequestHead.fwd`), which are all this module filters.

Rules:
- Always forwarded: Max-Forwards (RFC 9110 7.6.2: an intermediary decrements and forwards it).
- Accept-Encoding is the cache's: with `compress` it is never forwarded (the origin sends
  identity and the cache compresses); without, the origin gets the coding the cache keys a
  variant under (lbcdn.cache.compress.negotiate: br, gzip, or none for identity), so a stored
  variant is always what its key says.
- A fill or revalidation (the answer may be stored): the viewer's conditionals and Range are
  never forwarded (the cache fetches whole objects and answers those itself; a revalidation's
  validators are the edge's own, added by the caller).
- A pass-through (unsafe methods, requests with a body; never stored): the origin answers the
  request itself, so it also gets the fields that describe the body (Content-Length,
  Content-Type, Content-Encoding, Expect) and the conditionals and Range.
- Cookies and query parameters by name (case-sensitive); kept query parameters sorted as in
  the key. A cache policy keying on the whole Cookie header forwards every cookie.

Everything is worked out once per behavior at config load: a filter is (all_but, names), either
"only these names" or "all but these", and a union of two filters is again one.
"""

from __future__ import annotations

from lbcdn.cache.compress import negotiate
from lbcdn.cache.config import CachePolicyConfig, ForwardedValuesConfig, \
    OriginRequestPolicyConfig
from lbcdn.cache.key import normalize_query

# (True, names): every name but these; (False, names): only these.
Filter = tuple[bool, frozenset[bytes]]

NOTHING: Filter = (False, frozenset())
ALWAYS = frozenset({b"max-forwards"})
BODY_FIELDS = frozenset({b"content-length", b"content-type", b"content-encoding", b"expect"})
CONDITIONAL_FIELDS = frozenset({b"if-none-match", b"if-modified-since", b"if-match",
                                b"if-unmodified-since", b"if-range", b"range"})
# Filtered by their own rules, never as header lines.
OWN_RULES = frozenset({b"cookie", b"accept-encoding"})


def union(a: Filter, b: Filter) -> Filter:
    if a[0] and b[0]:
        return True, a[1] & b[1]
    if a[0]:
        return True, a[1] - b[1]
    if b[0]:
        return True, b[1] - a[1]
    return False, a[1] | b[1]


def without(f: Filter, names: frozenset[bytes]) -> Filter:
    return (True, f[1] | names) if f[0] else (False, f[1] - names)


def keeps(f: Filter, name: bytes) -> bool:
    return (name not in f[1]) if f[0] else (name in f[1])


def _filter(values: ForwardedValuesConfig | None, lower: bool) -> Filter:
    if values is None or values.behavior == "none":
        return NOTHING
    names = frozenset((n.lower() if lower else n).encode() for n in values.names)
    return values.behavior in ("all", "all_except"), names


class Forwarding:
    """The origin-request filters of one behavior (its cache policy and origin request
    policy)."""

    __slots__ = ("fill", "passthrough", "cookies", "query", "compress")

    def __init__(self, policy: CachePolicyConfig,
                 request_policy: OriginRequestPolicyConfig | None,
                 never_query: frozenset[bytes] = frozenset(),
                 never_cookies: frozenset[bytes] = frozenset()) -> None:
        """`never_query` / `never_cookies`: names never forwarded, whatever the policies say
        (CloudFront's signed-URL parameters and signed cookies)."""
        orp = request_policy
        keyed: Filter = (False, frozenset(h.lower().encode() for h in policy.headers))
        headers = union(union(keyed, _filter(orp.headers if orp else None, True)),
                        (False, ALWAYS))
        self.fill = without(headers, OWN_RULES | CONDITIONAL_FIELDS)
        self.passthrough = without(union(headers, (False, BODY_FIELDS | CONDITIONAL_FIELDS)),
                                   OWN_RULES)
        cookies: Filter = (False, frozenset(c.encode() for c in policy.cookies))
        if b"cookie" in keyed[1]:
            cookies = (True, frozenset())  # the whole Cookie header is in the key
        self.cookies = without(union(cookies, _filter(orp.cookies if orp else None, False)),
                               never_cookies)
        qs = policy.query_strings
        self.query = without(union(_filter(ForwardedValuesConfig(qs.behavior, qs.names), False),
                                   _filter(orp.query_strings if orp else None, False)),
                             never_query)
        self.compress = policy.compress

    def lines(self, fwd: list[bytes], *, passthrough: bool) -> list[bytes]:
        """The viewer's header lines for the origin, from `fwd` (RequestHead.fwd: pieces
        name, ": ", value, CRLF), in the same shape."""
        f = self.passthrough if passthrough else self.fill
        out: list[bytes] = []
        cookies: list[bytes] = []
        codings: list[bytes] = []
        for i in range(0, len(fwd), 4):
            name = fwd[i].lower()
            if name == b"cookie":
                for pair in fwd[i + 2].split(b";"):
                    pair = pair.strip()
                    if pair and keeps(self.cookies, pair.partition(b"=")[0]):
                        cookies.append(pair)
            elif name == b"accept-encoding":
                codings.append(fwd[i + 2])
            elif keeps(f, name):
                out += fwd[i:i + 4]
        if cookies:
            out += (b"Cookie", b": ", b"; ".join(cookies), b"\r\n")
        if codings and not self.compress:
            coding = negotiate(b",".join(codings))
            if coding != b"identity":
                out += (b"Accept-Encoding", b": ", coding, b"\r\n")
        return out

    def query_for(self, query: bytes | None) -> bytes | None:
        """The query sent to the origin (sorted as in the key), None when nothing is kept."""
        all_but, names = self.query
        return normalize_query(query, "all_except" if all_but else "allow", names) or None
