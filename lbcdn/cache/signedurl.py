"""CloudFront signed URLs and signed cookies: may this request see a restricted behavior?

Job: decide, from the request (scheme, Host, path, query, Cookie lines, client address) and
`now`, whether a signature made with one of the behavior's trusted public keys allows it; and say
which query parameters are CloudFront's own (they are neither in the cache key nor sent to the
origin).

Rules (CloudFront's, so URLs made by botocore's CloudFrontSigner and `aws cloudfront sign` work
unmodified):
- A signed URL carries `Expires` (canned policy) or `Policy` (custom policy), `Signature` and
  `Key-Pair-Id` as query parameters; signed cookies carry the same as `CloudFront-Expires`,
  `CloudFront-Policy`, `CloudFront-Signature`, `CloudFront-Key-Pair-Id`. Query parameters win
  when the URL has a Key-Pair-Id.
- Policy and Signature use CloudFront's URL-safe base64 (`+` -> `-`, `=` -> `_`, `/` -> `~`).
  The signature is RSA-SHA1, PKCS#1 v1.5, over the policy bytes: for a canned policy those are
  rebuilt from the request URL and Expires exactly as the signer wrote them
  (`{"Statement":[{"Resource":URL,"Condition":{"DateLessThan":{"AWS:EpochTime":N}}}]}`).
- The URL a policy is about: scheme://Host + path + the query without CloudFront's parameters
  (in the order sent). A custom policy's Resource may use `*` (any run) and `?` (one
  character); without Resource it allows every URL. Conditions: DateLessThan (required; the
  request must come before it), DateGreaterThan (at or after it), IpAddress (`AWS:SourceIp`,
  one CIDR the client address is in).
- Denials are 403 with CloudFront's XML body: `MissingKey` ("Missing Key-Pair-Id query
  parameter or cookie value"), `InvalidKey` ("Unknown Key") for a key id in none of the
  trusted groups, `AccessDenied` ("Access denied") for everything else (no or bad signature,
  malformed policy, expired, too early, other address, other resource).
- Verifying RSA per request is the expensive part, so what a signature proved is remembered
  (bounded LRUs, see Verifier); the conditions (time, address, resource) are still checked on
  every request.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import unquote_to_bytes

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from lbcdn.cache.directives import Headers

QUERY_NAMES = frozenset({b"Expires", b"Policy", b"Signature", b"Key-Pair-Id"})
COOKIE_NAMES = frozenset({b"CloudFront-Expires", b"CloudFront-Policy", b"CloudFront-Signature",
                          b"CloudFront-Key-Pair-Id"})
_FROM_SAFE = bytes.maketrans(b"-_~", b"+=/")
_XML = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>%s</Message>' \
       b'</Error>'
CACHE_ENTRIES = 4096

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Denial:
    code: bytes
    message: bytes

    def body(self) -> bytes:
        return _XML % (self.code, self.message)


MISSING_KEY = Denial(b"MissingKey", b"Missing Key-Pair-Id query parameter or cookie value")
UNKNOWN_KEY = Denial(b"InvalidKey", b"Unknown Key")
ACCESS_DENIED = Denial(b"AccessDenied", b"Access denied")


@dataclass(frozen=True, slots=True)
class Policy:
    """What a verified signature allows; checked against each request."""
    resource: re.Pattern[str] | None   # None: any URL (a custom policy without Resource)
    exact: str | None                  # a canned policy's URL (no wildcards)
    date_less_than: int
    date_greater_than: int | None = None
    source: Network | None = None

    def allows(self, url: str, client_ip: str, now: float) -> bool:
        if now >= self.date_less_than:
            return False
        if self.date_greater_than is not None and now < self.date_greater_than:
            return False
        if self.exact is not None and url != self.exact:
            return False
        if self.resource is not None and self.resource.fullmatch(url) is None:
            return False
        if self.source is not None:
            try:
                if ipaddress.ip_address(client_ip) not in self.source:
                    return False
            except ValueError:
                return False
        return True


def safe_b64decode(value: bytes) -> bytes | None:
    try:
        return base64.b64decode(value.translate(_FROM_SAFE), validate=True)
    except (binascii.Error, ValueError):
        return None


def canned_policy(url: str, expires: int) -> bytes:
    """The bytes a canned policy signature is over (botocore's CloudFrontSigner.build_policy
    with only DateLessThan, compact JSON)."""
    return ('{"Statement":[{"Resource":%s,"Condition":{"DateLessThan":{"AWS:EpochTime":%d}}}]}'
            % (json.dumps(url), expires)).encode()


def resource_pattern(resource: str) -> re.Pattern[str]:
    """A policy Resource as a pattern: `*` any run, `?` one character, the rest literal."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                              for c in resource), re.DOTALL)


def _epoch(condition: object) -> int | None:
    if not isinstance(condition, dict):
        return None
    value = condition.get("AWS:EpochTime")
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def parse_policy(raw: bytes) -> Policy | None:
    """A custom policy's JSON, or None when it is not one CloudFront accepts."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    statements = doc.get("Statement") if isinstance(doc, dict) else None
    if not isinstance(statements, list) or len(statements) != 1 or \
            not isinstance(statements[0], dict):
        return None
    statement = statements[0]
    resource = statement.get("Resource")
    conditions = statement.get("Condition")
    if (resource is not None and not isinstance(resource, str)) or \
            not isinstance(conditions, dict):
        return None
    before = _epoch(conditions.get("DateLessThan"))
    if before is None:
        return None
    after = None
    if "DateGreaterThan" in conditions:
        after = _epoch(conditions["DateGreaterThan"])
        if after is None:
            return None
    source = None
    if "IpAddress" in conditions:
        ip = conditions["IpAddress"]
        cidr = ip.get("AWS:SourceIp") if isinstance(ip, dict) else None
        if not isinstance(cidr, str):
            return None
        try:
            source = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            return None
    pattern = resource_pattern(resource) if resource is not None else None
    return Policy(pattern, None, before, after, source)


def load_public_key(pem: bytes) -> rsa.RSAPublicKey:
    """An RSA public key from PEM; ValueError says why it is not one."""
    key = load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key (CloudFront signs with RSA-SHA1)")
    return key


def split_query(query: bytes | None) -> tuple[dict[bytes, bytes], bytes]:
    """CloudFront's parameters of a query (percent-decoded), and the rest of it as sent."""
    found: dict[bytes, bytes] = {}
    if not query:
        return found, b""
    rest: list[bytes] = []
    for param in query.split(b"&"):
        name, _, value = param.partition(b"=")
        if name in QUERY_NAMES:
            found[name] = unquote_to_bytes(value)
        elif param:
            rest.append(param)
    return found, b"&".join(rest)


def _cookies(headers: Headers) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for n, v in headers:
        if n.lower() != b"cookie" or b"CloudFront-" not in v:
            continue
        for pair in v.split(b";"):
            name, eq, value = pair.strip().partition(b"=")
            if eq and name in COOKIE_NAMES:
                found[name[11:]] = value.strip(b'"')  # without "CloudFront-"
    return found


class _Lru(Generic[K, V]):
    """A bounded map that forgets the least recently used entry first."""

    __slots__ = ("items", "size")

    def __init__(self, size: int) -> None:
        self.items: OrderedDict[K, V] = OrderedDict()
        self.size = size

    def get(self, key: K) -> V | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self.items[key] = value
        if len(self.items) > self.size:
            self.items.popitem(last=False)


# What a request's signature decided, whatever its address and time: a refusal, or the policy
# proved and the URL it is checked against.
Decision = tuple[Denial | None, Policy | None, str]
_INVALID = Policy(None, "", 0)  # remembered for a signature that proves nothing


class Verifier:
    """The trusted public keys of one behavior (by key id, from its key groups) and what
    their signatures already decided.

    Two memories: by request (scheme, Host, path, query and, for signed cookies, the Cookie
    lines) what the signature decided, so a repeated request costs a dict lookup and the
    conditions; and by signature (key id, signed bytes, signature), the policy proved, so a
    custom policy's signature (a cookie reused over many URLs) is verified once."""

    __slots__ = ("keys", "decided", "verified")

    def __init__(self, keys: dict[str, rsa.RSAPublicKey], size: int = CACHE_ENTRIES) -> None:
        self.keys = keys
        self.decided: _Lru[tuple[bytes, ...], Decision] = _Lru(size)
        self.verified: _Lru[tuple[bytes, bytes, bytes], Policy] = _Lru(size)

    def check(self, scheme: bytes, host: bytes, path: bytes, query: bytes | None,
              headers: Headers, client_ip: str, now: float) -> Denial | None:
        """None: the request is allowed; else why not."""
        if query is not None and b"Key-Pair-Id=" in query:
            memo: tuple[bytes, ...] = (scheme, host, path, query)
        else:
            memo = (scheme, host, path, query or b"",
                    *[v for n, v in headers if n.lower() == b"cookie"])
        decision = self.decided.get(memo)
        if decision is None:
            decision = self._decide(scheme, host, path, query, headers)
            self.decided.put(memo, decision)
        denial, policy, url = decision
        if denial is not None:
            return denial
        assert policy is not None
        return None if policy.allows(url, client_ip, now) else ACCESS_DENIED

    def _decide(self, scheme: bytes, host: bytes, path: bytes, query: bytes | None,
                headers: Headers) -> Decision:
        params, rest = split_query(query)
        if not params.get(b"Key-Pair-Id"):
            params = _cookies(headers)
        url = (scheme + b"://" + host + path + (b"?" + rest if rest else b"")).decode(
            "latin-1")
        key_id = params.get(b"Key-Pair-Id")
        if not key_id:
            return MISSING_KEY, None, url
        key = self.keys.get(key_id.decode("latin-1"))
        if key is None:
            return UNKNOWN_KEY, None, url
        signature = params.get(b"Signature")
        policy_param = params.get(b"Policy")
        expires = params.get(b"Expires")
        canned: int | None = None
        if policy_param is not None:
            signed = policy_param
        elif expires is not None and expires.isdigit():
            canned = int(expires)
            signed = canned_policy(url, canned)
        else:
            return ACCESS_DENIED, None, url
        if not signature:
            return ACCESS_DENIED, None, url
        memo = (key_id, signed, signature)
        policy = self.verified.get(memo)
        if policy is None:
            policy = self._verify(key, signed, signature, canned, url) or _INVALID
            self.verified.put(memo, policy)
        if policy is _INVALID:
            return ACCESS_DENIED, None, url
        return None, policy, url

    @staticmethod
    def _verify(key: rsa.RSAPublicKey, signed: bytes, signature: bytes, canned: int | None,
                url: str) -> Policy | None:
        """The policy a signature proves, None when it proves nothing."""
        raw_signature = safe_b64decode(signature)
        message = signed if canned is not None else safe_b64decode(signed)
        if raw_signature is None or message is None:
            return None
        try:
            key.verify(raw_signature, message, padding.PKCS1v15(), hashes.SHA1())
        except InvalidSignature:
            return None
        if canned is None:
            return parse_policy(message)
        return Policy(None, url, canned)  # exactly the URL it was rebuilt from
