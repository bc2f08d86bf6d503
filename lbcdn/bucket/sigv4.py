"""AWS Signature Version 4 for the S3 API: who sent this request, and may we trust its body?

Job: `authenticate` takes one request head (method, raw path, query, headers) and the time, and
returns an `AuthResult` (the access key id, or None for an anonymous request, and how the body
must be verified), or raises `S3Error` with the code, status and extra fields S3 itself sends.
`PayloadReader` (payload.py) then checks the body against the result while it streams.

Rules:
- Pure: no I/O, no clock of its own (`now` comes in), no logging. Secrets come through the
  `Credentials` protocol and never appear in an error.
- Canonicalization follows the AWS specification exactly; the building blocks are public and
  service-agnostic so the generic AWS SigV4 test suite can drive them. S3 differs from the generic
  rules in two ways: the path is not normalized (`a//b/../c` is a key) and is encoded once.
- Signatures are compared in constant time. Checks run cheapest-first; the HMAC runs last.
- Header auth (`Authorization: AWS4-HMAC-SHA256 ...`) and presigned URLs (`X-Amz-Signature` in
  the query, at most 7 days) share one verification path.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Literal, Protocol
from urllib.parse import unquote

from lbcdn.bucket.errors import S3Error

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
TERMINATOR = "aws4_request"
DEFAULT_REGION = "us-east-1"
MAX_SKEW = timedelta(minutes=15)
MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
CHUNK_ALGORITHM = "AWS4-HMAC-SHA256-PAYLOAD"
TRAILER_ALGORITHM = "AWS4-HMAC-SHA256-TRAILER"

PayloadMode = Literal["signed", "unsigned", "streaming-signed", "streaming-unsigned-trailer",
                      "streaming-signed-trailer"]
_STREAMING_MODES: dict[str, PayloadMode] = {
    STREAMING_SIGNED: "streaming-signed",
    STREAMING_SIGNED_TRAILER: "streaming-signed-trailer",
    STREAMING_UNSIGNED_TRAILER: "streaming-unsigned-trailer",
}

# Query parameters of a presigned URL (names are case-sensitive, as in S3).
Q_ALGORITHM = "X-Amz-Algorithm"
Q_CREDENTIAL = "X-Amz-Credential"
Q_DATE = "X-Amz-Date"
Q_EXPIRES = "X-Amz-Expires"
Q_SIGNED_HEADERS = "X-Amz-SignedHeaders"
Q_SIGNATURE = "X-Amz-Signature"
_PRESIGN_REQUIRED = (Q_ALGORITHM, Q_CREDENTIAL, Q_SIGNATURE, Q_DATE, Q_SIGNED_HEADERS, Q_EXPIRES)

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_AMZ_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")


class Credentials(Protocol):
    """Where secrets come from (config users, env vars). None = unknown access key id."""

    def secret_for(self, access_key_id: str) -> str | None: ...


class StaticCredentials:
    """`Credentials` from a dict: access key id -> secret."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        self._secrets = dict(secrets)

    def secret_for(self, access_key_id: str) -> str | None:
        return self._secrets.get(access_key_id)


@dataclass(frozen=True)
class AuthResult:
    """Who signed the request and how its body must be checked (see payload.PayloadReader).

    access_key_id None = anonymous (no Authorization header and no X-Amz-Signature query).
    expected_sha256: the hex digest the body must have ("signed" mode), else None.
    seed_signature / signing_key / scope / amz_date: what chunk and trailer signatures of the
    streaming-signed modes chain from; None for anonymous requests.
    """

    access_key_id: str | None
    payload_mode: PayloadMode
    expected_sha256: str | None
    seed_signature: str | None
    signing_key: bytes | None
    scope: str | None
    amz_date: str | None
    trailer_names: tuple[str, ...] = ()
    presigned: bool = False


# ---------------------------------------------------------------- canonicalization (generic)


def uri_encode(value: str, *, keep_slash: bool = False) -> str:
    """AWS UriEncode: every byte of the UTF-8 form except A-Z a-z 0-9 - . _ ~ becomes %XX
    (upper-case hex); '/' is kept only for paths. Strings decoded with surrogateescape give back
    their original bytes, so an invalid UTF-8 escape round-trips unchanged."""
    out: list[str] = []
    for byte in value.encode("utf-8", "surrogateescape"):
        if byte in _UNRESERVED or (keep_slash and byte == 0x2F):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def percent_decode(value: str) -> str:
    """Decode %XX; '+' stays (a literal plus in a path)."""
    return unquote(value, encoding="utf-8", errors="surrogateescape")


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """Decoded (name, value) pairs of a raw query string, in order, keeping repeated names.

    '+' is a space, as S3 reads it (botocore sends a space in a query value as '+' and signs
    it as '%20'); a literal plus arrives as %2B. Invalid UTF-8 escapes survive through
    surrogateescape, so they re-encode to the bytes that were signed.
    """
    pairs: list[tuple[str, str]] = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((percent_decode(name.replace("+", " ")),
                      percent_decode(value.replace("+", " "))))
    return pairs


def normalize_path(path: str) -> str:
    """RFC 3986 dot-segment removal plus empty-segment removal, as generic SigV4 services do
    (never S3). Keeps a trailing slash."""
    segments: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    result = "/" + "/".join(segments)
    if path.endswith(("/", "/.", "/..")) and result != "/":
        result += "/"
    return result


def canonical_uri(decoded_path: str, *, normalize: bool = False) -> str:
    """CanonicalURI from the decoded path: URI-encoded once, '/' kept, empty -> '/'."""
    path = decoded_path or "/"
    if normalize:
        path = normalize_path(path)
    return uri_encode(path, keep_slash=True)


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """CanonicalQueryString: names and values URI-encoded, sorted by encoded name then value."""
    encoded = sorted((uri_encode(name), uri_encode(value)) for name, value in pairs)
    return "&".join(f"{name}={value}" for name, value in encoded)


def canonical_header_value(values: Sequence[str]) -> str:
    """Trimmed, inner whitespace runs collapsed to one space, repeated headers joined by ','."""
    return ",".join(" ".join(value.split()) for value in values)


def group_headers(headers: Mapping[str, str]) -> dict[str, list[str]]:
    """Lower-case name -> every value in arrival order (multi-valued mappings give them all)."""
    grouped: dict[str, list[str]] = {}
    for name, value in headers.items():
        grouped.setdefault(name.lower(), []).append(value)
    return grouped


def canonical_headers(grouped: Mapping[str, Sequence[str]], signed: Sequence[str]) -> str:
    """CanonicalHeaders for the signed names ('name:value\\n' each). A signed header the request
    lacks canonicalizes as empty, so the signature simply does not match."""
    return "".join(f"{name}:{canonical_header_value(grouped.get(name, ()))}\n" for name in signed)


def canonical_request(method: str, uri: str, query: str, headers: str, signed_headers: str,
                      payload_hash: str) -> str:
    return "\n".join((method, uri, query, headers, signed_headers, payload_hash))


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


@functools.lru_cache(maxsize=256)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """kSigning = HMAC chain over date, region, service, 'aws4_request'. Cached: a key is
    valid for a whole day and every request of a client derives the same one."""
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, TERMINATOR):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def signatures_equal(expected: str, provided: str) -> bool:
    """Constant-time comparison (a timing oracle would leak the signature byte by byte)."""
    return hmac.compare_digest(expected.encode("ascii", "replace"),
                               provided.encode("ascii", "replace"))


def chunk_string_to_sign(amz_date: str, scope: str, previous_signature: str,
                         chunk_sha256: str) -> str:
    """StringToSign of one aws-chunked chunk; chained to the previous chunk's signature."""
    return "\n".join((CHUNK_ALGORITHM, amz_date, scope, previous_signature, EMPTY_SHA256,
                      chunk_sha256))


def trailer_string_to_sign(amz_date: str, scope: str, previous_signature: str,
                           trailer_sha256: str) -> str:
    """StringToSign of the trailer chunk: sha256 of its canonical 'name:value\\n' lines."""
    return "\n".join((TRAILER_ALGORITHM, amz_date, scope, previous_signature, trailer_sha256))


def format_amz_date(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def parse_amz_date(value: str) -> datetime | None:
    """ISO 8601 basic format as SigV4 uses it ('20130524T000000Z'); None if malformed."""
    match = _AMZ_DATE.fullmatch(value.strip())
    if match is None:
        return None
    try:
        year, month, day, hour, minute, second = (int(g) for g in match.groups())
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None


def parse_http_date(value: str) -> datetime | None:
    """The Date header (IMF-fixdate or the obsolete forms); None if malformed."""
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


# ---------------------------------------------------------------- parsing the credentials


@dataclass(frozen=True)
class _Presented:
    """What the client claims, from the Authorization header or the presigned query."""

    access_key_id: str
    date: str            # yyyymmdd of the credential scope
    region: str
    signed_headers: tuple[str, ...]
    signed_headers_text: str
    signature: str
    amz_date: str        # the timestamp as it enters the StringToSign
    moment: datetime
    expires_s: int | None  # presigned only

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{SERVICE}/{TERMINATOR}"


def parse_authorization(value: str) -> tuple[str, dict[str, str]]:
    """'AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...' -> (algorithm,
    components). Separators: ',' with optional spaces, as SDKs differ."""
    algorithm, _, rest = value.strip().partition(" ")
    components: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, item = part.strip().partition("=")
        if not sep:
            if name:
                raise _header_malformed(f"the header component '{name}' is malformed")
            continue
        components[name.strip()] = item.strip()
    return algorithm, components


def _unsupported_mechanism() -> S3Error:
    """SigV2, as S3 answers it in the regions that only take SigV4."""
    return S3Error("InvalidRequest", "The authorization mechanism you have provided is not "
                                     "supported. Please use AWS4-HMAC-SHA256.")


def _header_malformed(detail: str, extra: dict[str, str] | None = None) -> S3Error:
    return S3Error("AuthorizationHeaderMalformed",
                   f"The authorization header is malformed; {detail}", extra=extra)


def _query_error(message: str, extra: dict[str, str] | None = None) -> S3Error:
    return S3Error("AuthorizationQueryParametersError", message, extra=extra)


def _split_credential(credential: str, region: str, presigned: bool) -> tuple[str, str, str]:
    """'AKID/yyyymmdd/region/s3/aws4_request' -> (akid, date, region), scope checked."""
    if presigned:
        def fail(detail: str, extra: dict[str, str] | None = None) -> S3Error:
            return _query_error(f"Error parsing the X-Amz-Credential parameter; {detail}", extra)
    else:
        fail = _header_malformed
    parts = credential.split("/")
    if len(parts) != 5 or not parts[0]:
        raise fail('the Credential is mal-formed; expecting '
                   '"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".')
    akid, date, got_region, service, terminal = parts
    if parse_amz_date(f"{date}T000000Z") is None:
        raise fail(f"incorrect date format \"{date}\". This date in the credential must be in "
                   "the format \"yyyyMMdd\".")
    if got_region != region:
        raise fail(f"the region '{got_region}' is wrong; expecting '{region}'",
                   {"Region": region})
    if service != SERVICE:
        raise fail(f'incorrect service "{service}". This endpoint belongs to "{SERVICE}".')
    if terminal != TERMINATOR:
        raise fail(f'incorrect terminal "{terminal}". This endpoint uses "{TERMINATOR}".')
    return akid, date, got_region


def _signed_header_list(text: str, fail: S3Error) -> tuple[str, ...]:
    names = tuple(text.split(";"))
    if not text or any(not _HEADER_NAME.fullmatch(name) for name in names):
        raise fail
    return names


def _from_header(value: str, grouped: Mapping[str, Sequence[str]], region: str) -> _Presented:
    algorithm, components = parse_authorization(value)
    if algorithm == "AWS":
        raise _unsupported_mechanism()
    if algorithm != ALGORITHM:
        # SigV4a and anything else unknown.
        raise S3Error("InvalidArgument", "Unsupported Authorization Type",
                      extra={"ArgumentName": "Authorization", "ArgumentValue": value[:64]})
    credential = components.get("Credential")
    signed_text = components.get("SignedHeaders")
    signature = components.get("Signature")
    if credential is None or signed_text is None or signature is None:
        raise _header_malformed("the authorization header requires three components: "
                                "Credential, SignedHeaders, and Signature.")
    akid, date, got_region = _split_credential(credential, region, presigned=False)
    signed = _signed_header_list(signed_text, _header_malformed(
        "the SignedHeaders component is malformed."))
    if not _SIGNATURE.fullmatch(signature):
        raise _header_malformed("the Signature component is malformed.")
    amz_date_values = grouped.get("x-amz-date")
    moment: datetime | None
    if amz_date_values:
        amz_date = amz_date_values[-1].strip()
        moment = parse_amz_date(amz_date)
    else:
        date_values = grouped.get("date")
        moment = parse_http_date(date_values[-1]) if date_values else None
        amz_date = format_amz_date(moment) if moment is not None else ""
    if moment is None:
        raise S3Error("AccessDenied",
                      "AWS authentication requires a valid Date or x-amz-date header")
    if amz_date[:8] != date:
        raise _header_malformed(f'Invalid credential date. Date is not the same as '
                                f'X-Amz-Date: "{date}".')
    return _Presented(akid, date, got_region, signed, signed_text, signature, amz_date, moment,
                      None)


def _from_query(params: Mapping[str, str], region: str) -> _Presented:
    missing = [name for name in _PRESIGN_REQUIRED if name not in params]
    if missing:
        raise _query_error("Query-string authentication version 4 requires the X-Amz-Algorithm, "
                           "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, "
                           "and X-Amz-Expires parameters.")
    if params[Q_ALGORITHM] != ALGORITHM:
        raise _query_error(f'X-Amz-Algorithm only supports "{ALGORITHM}"')
    akid, date, got_region = _split_credential(params[Q_CREDENTIAL], region, presigned=True)
    amz_date = params[Q_DATE]
    moment = parse_amz_date(amz_date)
    if moment is None:
        raise _query_error("X-Amz-Date must be in the ISO8601 Long Format "
                           "\"yyyyMMdd'T'HHmmss'Z'\"")
    if amz_date[:8] != date:
        raise _query_error("Invalid credential date. Date is not the same as X-Amz-Date.")
    raw_expires = params[Q_EXPIRES]
    if not re.fullmatch(r"-?\d{1,18}", raw_expires):
        raise _query_error("X-Amz-Expires should be a number")
    expires_s = int(raw_expires)
    if expires_s < 0:
        raise _query_error("X-Amz-Expires must be non-negative")
    if expires_s > MAX_PRESIGN_EXPIRES_S:
        raise _query_error("X-Amz-Expires must be less than a week (in seconds) that is "
                           f"{MAX_PRESIGN_EXPIRES_S}")
    signed_text = params[Q_SIGNED_HEADERS]
    signed = _signed_header_list(signed_text, _query_error(
        "SignedHeaders must be a ;-separated list of lower-case header names"))
    signature = params[Q_SIGNATURE]
    if not _SIGNATURE.fullmatch(signature):
        # A malformed signature cannot match; S3 reports it as a mismatch too.
        signature = signature[:64]
    return _Presented(akid, date, got_region, signed, signed_text, signature, amz_date, moment,
                      expires_s)


# ---------------------------------------------------------------- payload declaration


def _payload_mode(value: str | None, presigned: bool) -> tuple[PayloadMode, str | None]:
    """(mode, expected sha256) from x-amz-content-sha256."""
    if value is None or value == UNSIGNED_PAYLOAD:
        return "unsigned", None
    if _HEX64.fullmatch(value):
        return "signed", value.lower()
    mode = _STREAMING_MODES.get(value)
    if mode is not None and not presigned:
        return mode, None
    if value.startswith("STREAMING-AWS4-ECDSA-P256-SHA256"):
        raise S3Error("NotImplemented", "SigV4a (ECDSA) signing is not supported", status=501)
    raise S3Error("InvalidArgument",
                  "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-"
                  "TRAILER, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-"
                  "PAYLOAD-TRAILER or a valid sha256 value.",
                  extra={"ArgumentName": "x-amz-content-sha256", "ArgumentValue": value[:80]})


def _trailer_names(grouped: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    values = grouped.get("x-amz-trailer", ())
    names = [name.strip().lower() for value in values for name in value.split(",")]
    return tuple(name for name in names if name)


def _check_streaming_headers(mode: PayloadMode, grouped: Mapping[str, Sequence[str]]) -> None:
    if not mode.startswith("streaming"):
        return
    decoded = grouped.get("x-amz-decoded-content-length")
    if not decoded:
        raise S3Error("MissingContentLength",
                      "You must provide the x-amz-decoded-content-length header with an "
                      "aws-chunked body.")
    if not decoded[-1].strip().isdigit():
        raise S3Error("InvalidArgument", "x-amz-decoded-content-length must be a number",
                      extra={"ArgumentName": "x-amz-decoded-content-length",
                             "ArgumentValue": decoded[-1][:40]})


# ---------------------------------------------------------------- the entry point


def authenticate(method: str, raw_path: str, query: list[tuple[str, str]],
                 headers: Mapping[str, str], credentials: Credentials, now: datetime, *,
                 region: str = DEFAULT_REGION) -> AuthResult:
    """Verify one request's SigV4 signature (header or presigned) at time `now`.

    raw_path: the path as received, still percent-encoded (a '?query' suffix is ignored; the
    query comes decoded in `query`, see `parse_query`). headers: a multi-valued mapping (aiohttp's
    CIMultiDictProxy) or any mapping. Raises S3Error; returns who signed and how the body must be
    verified. The body itself is checked later by payload.PayloadReader.
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    grouped = group_headers(headers)
    params = dict(query)
    authorization = grouped.get("authorization")
    presigned = any(name in params for name in (Q_SIGNATURE, Q_ALGORITHM, Q_CREDENTIAL))
    if "Signature" in params and "AWSAccessKeyId" in params:
        # A SigV2 presigned URL (what botocore presigns by default for us-east-1): refused
        # loudly rather than served as if anonymous.
        raise _unsupported_mechanism()
    content_sha = grouped.get("x-amz-content-sha256")
    declared = content_sha[-1].strip() if content_sha else None

    if authorization is None and not presigned:
        mode, expected = _payload_mode(declared, presigned=False)
        if mode in ("streaming-signed", "streaming-signed-trailer"):
            raise S3Error("AccessDenied", "A signed aws-chunked payload needs an Authorization "
                                          "header")
        _check_streaming_headers(mode, grouped)
        return AuthResult(None, mode, expected, None, None, None, None, _trailer_names(grouped))
    if authorization is not None and presigned:
        raise S3Error("InvalidArgument", "Only one auth mechanism allowed; only the "
                      "X-Amz-Algorithm query parameter, Signature query string parameter or the "
                      "Authorization header should be specified",
                      extra={"ArgumentName": "Authorization",
                             "ArgumentValue": authorization[-1][:64]})

    if presigned:
        presented = _from_query(params, region)
    else:
        assert authorization is not None
        if len(authorization) != 1:
            raise _header_malformed("the request carries more than one Authorization header.")
        presented = _from_header(authorization[0], grouped, region)

    secret = credentials.secret_for(presented.access_key_id)
    if secret is None:
        raise S3Error("InvalidAccessKeyId",
                      extra={"AWSAccessKeyId": presented.access_key_id})
    _check_time(presented, now, grouped)

    if presigned:
        mode, expected = _payload_mode(declared, presigned=True)
        payload_hash = declared if declared is not None else UNSIGNED_PAYLOAD
    else:
        if declared is None:
            raise S3Error("InvalidRequest",
                          "Missing required header for this request: x-amz-content-sha256")
        mode, expected = _payload_mode(declared, presigned=False)
        payload_hash = declared
    _check_signed_headers(presented, grouped, presigned)
    _check_streaming_headers(mode, grouped)

    key = signing_key(secret, presented.date, presented.region, SERVICE)
    _verify(method, raw_path, query if not presigned else
            [(n, v) for n, v in query if n != Q_SIGNATURE],
            grouped, presented, payload_hash, key)
    return AuthResult(presented.access_key_id, mode, expected, presented.signature, key,
                      presented.scope, presented.amz_date, _trailer_names(grouped), presigned)


def _check_time(presented: _Presented, now: datetime,
                grouped: Mapping[str, Sequence[str]]) -> None:
    server_time = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if presented.expires_s is not None:
        if presented.moment - now > MAX_SKEW:
            raise S3Error("AccessDenied", "Request is not valid yet")
        expiry = presented.moment + timedelta(seconds=presented.expires_s)
        if now > expiry:
            raise S3Error("AccessDenied", "Request has expired", extra={
                "X-Amz-Expires": str(presented.expires_s),
                "Expires": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "ServerTime": server_time})
        return
    if abs(now - presented.moment) > MAX_SKEW:
        raw = grouped.get("x-amz-date") or grouped.get("date") or [presented.amz_date]
        raise S3Error("RequestTimeTooSkewed", extra={
            "RequestTime": raw[-1], "ServerTime": server_time,
            "MaxAllowedSkewMilliseconds": str(int(MAX_SKEW.total_seconds() * 1000))})


# Unsigned x-amz-* headers tolerated on presigned URLs: the payload declaration authorizes
# nothing (the body is UNSIGNED-PAYLOAD unless the header was signed).
_PRESIGN_UNSIGNED_OK = frozenset({"x-amz-content-sha256"})


def _check_signed_headers(presented: _Presented, grouped: Mapping[str, Sequence[str]],
                          presigned: bool) -> None:
    signed = set(presented.signed_headers)
    if "host" not in signed:
        message = "Host must be signed (it is missing from SignedHeaders)"
        raise (_query_error(message) if presigned else _header_malformed(message))
    if not presigned and "x-amz-content-sha256" not in signed:
        raise S3Error("AccessDenied", "There were headers present in the request which were "
                      "not signed", extra={"HeadersNotSigned": "x-amz-content-sha256"})
    # An unsigned x-amz-* header could change what the request does (an ACL, a copy source,
    # server-side encryption) without the signer's consent: refused, as S3 does.
    unsigned = sorted(name for name in grouped
                      if name.startswith("x-amz-") and name not in signed
                      and not (presigned and name in _PRESIGN_UNSIGNED_OK))
    if unsigned:
        raise S3Error("AccessDenied", "There were headers present in the request which were "
                      "not signed", extra={"HeadersNotSigned": ", ".join(unsigned)})


def _verify(method: str, raw_path: str, query: list[tuple[str, str]],
            grouped: Mapping[str, Sequence[str]], presented: _Presented, payload_hash: str,
            key: bytes) -> None:
    path = raw_path.partition("?")[0]
    canonical_q = canonical_query(query)
    canonical_h = canonical_headers(grouped, presented.signed_headers)
    first: tuple[str, str] | None = None
    # The canonical URI is the decoded path encoded the AWS way; a client that encoded its
    # path differently on the wire (e.g. left '!' or '$' raw) may have signed the wire form.
    candidates = dict.fromkeys((canonical_uri(percent_decode(path)), path or "/"))
    for uri in candidates:
        creq = canonical_request(method.upper(), uri, canonical_q, canonical_h,
                                 presented.signed_headers_text, payload_hash)
        sts = string_to_sign(presented.amz_date, presented.scope, creq)
        if signatures_equal(sign(key, sts), presented.signature):
            return
        if first is None:
            first = (creq, sts)
    assert first is not None
    creq, sts = first
    raise S3Error("SignatureDoesNotMatch", extra={
        "AWSAccessKeyId": presented.access_key_id,
        "StringToSign": sts,
        "SignatureProvided": presented.signature,
        "StringToSignBytes": _hex_bytes(sts),
        "CanonicalRequest": creq,
        "CanonicalRequestBytes": _hex_bytes(creq)})


def _hex_bytes(text: str) -> str:
    return " ".join(f"{b:02x}" for b in text.encode("utf-8", "surrogateescape"))


def sign_request(method: str, raw_path: str, raw_query: str, host: str, access_key_id: str,
                 secret: str, region: str, now: datetime) -> list[tuple[str, str]]:
    """The fields that sign a bodiless request with header auth (what a client of S3 sends,
    e.g. an edge cache fetching from a private bucket): X-Amz-Date, X-Amz-Content-SHA256 and
    Authorization over host and those two. `raw_path` and `raw_query` as they go on the wire;
    other fields the request carries are left unsigned (S3 only requires x-amz-* ones)."""
    amz_date = format_amz_date(now)
    scope = f"{amz_date[:8]}/{region}/{SERVICE}/{TERMINATOR}"
    fields = {"host": host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": amz_date}
    signed = ";".join(fields)
    canonical = canonical_request(
        method, canonical_uri(percent_decode(raw_path)), canonical_query(parse_query(raw_query)),
        canonical_headers(group_headers(fields), tuple(fields)), signed, EMPTY_SHA256)
    key = signing_key(secret, amz_date[:8], region, SERVICE)
    signature = sign(key, string_to_sign(amz_date, scope, canonical))
    return [("X-Amz-Date", amz_date), ("X-Amz-Content-SHA256", EMPTY_SHA256),
            ("Authorization", f"{ALGORITHM} Credential={access_key_id}/{scope}, "
                              f"SignedHeaders={signed}, Signature={signature}")]
