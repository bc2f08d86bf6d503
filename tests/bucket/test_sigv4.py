"""SigV4 verification: the AWS test suite, the S3 documentation's examples, botocore as an oracle.

- The generic AWS SigV4 test suite ships in botocore's source distribution. The session fixture
  fetches that sdist with `pip download` (from the package index, cached inside the venv) and
  extracts only the suite; a failed download fails the tests. Each case drives the public
  canonicalization blocks with the generic rules (service "service", normalized path).
- The S3 API reference's worked examples (GET with Range, PUT, ?lifecycle, listing, a presigned
  URL) go through `authenticate` itself.
- Oracle: random requests signed by botocore's pure-Python S3 signers and by the CRT signers
  (aws-c-auth, what boto3 uses when awscrt is installed) must be accepted, and single-byte
  mutations of the method, path, query, a signed header, the date or the secret must not be.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit

import botocore
import botocore.auth
import botocore.crt.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from multidict import CIMultiDict

from lbcdn.bucket.errors import S3Error
from lbcdn.bucket.sigv4 import (
    EMPTY_SHA256,
    AuthResult,
    StaticCredentials,
    authenticate,
    canonical_headers,
    canonical_query,
    canonical_request,
    canonical_uri,
    group_headers,
    parse_authorization,
    parse_query,
    sign,
    signing_key,
    string_to_sign,
    uri_encode,
)

# ------------------------------------------------------------------ the AWS SigV4 test suite

SUITE_MEMBER = "tests/unit/auth/aws4_testsuite/"
SUITE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def _fetch_suite(cache: Path) -> Path:
    """Extract botocore's aws4_testsuite from its sdist (same version as installed)."""
    version = botocore.__version__
    target = cache / f"aws4_testsuite-{version}"
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", ":all:",
                        f"botocore=={version}", "-d", tmp],
                       check=True, timeout=300, stdin=subprocess.DEVNULL)
        sdist = next(Path(tmp).glob("botocore-*.tar.gz"))
        extracted = Path(tmp) / "suite"
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers()
                       if SUITE_MEMBER in m.name and (m.isfile() or m.isdir())]
            for member in members:
                member.name = member.name.split(SUITE_MEMBER, 1)[1]
            archive.extractall(extracted, members=[m for m in members if m.name],
                               filter="data")
        extracted.rename(target)
    return target


@pytest.fixture(scope="session")
def aws4_suite() -> Path:
    return _fetch_suite(Path(sys.prefix) / "lbcdn-test-cache")


@dataclass
class RawRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


def _parse_raw(text: str) -> RawRequest:
    """The suite's .sreq files: request line (the path may hold a space), headers with
    obs-fold continuations, blank line, body."""
    head, _, body = text.partition("\n\n")
    lines = head.split("\n")
    method, rest = lines[0].split(" ", 1)
    target = rest.rsplit(" ", 1)[0]
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return RawRequest(method, target, headers, body.encode())


def _suite_cases() -> list[str]:
    # Names are fixed by the suite; listing them here keeps test ids stable and makes a case
    # that disappears from a future botocore fail instead of silently vanishing.
    return [
        "get-header-key-duplicate", "get-header-value-multiline", "get-header-value-order",
        "get-header-value-trim", "get-unreserved", "get-utf8", "get-vanilla",
        "get-vanilla-empty-query-key", "get-vanilla-query", "get-vanilla-query-order-encoded",
        "get-vanilla-query-order-key", "get-vanilla-query-order-key-case",
        "get-vanilla-query-order-value", "get-vanilla-query-unreserved",
        "get-vanilla-utf8-query", "get-vanilla-with-session-token",
        "normalize-path/get-relative", "normalize-path/get-relative-relative",
        "normalize-path/get-slash", "normalize-path/get-slash-dot-slash",
        "normalize-path/get-slash-pointless-dot", "normalize-path/get-slashes",
        "normalize-path/get-space", "normalize-path/get-special-character",
        "post-header-key-case", "post-header-key-sort", "post-header-value-case",
        "post-sts-token/post-sts-header-after", "post-sts-token/post-sts-header-before",
        "post-vanilla", "post-vanilla-empty-query-value", "post-vanilla-query",
        "post-x-www-form-urlencoded", "post-x-www-form-urlencoded-parameters",
    ]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8").replace("\r\n", "\n")


def test_suite_has_every_listed_case(aws4_suite: Path) -> None:
    found = sorted(str(p.parent.relative_to(aws4_suite)) for p in aws4_suite.rglob("*.sreq"))
    assert found == sorted(_suite_cases())


@pytest.mark.parametrize("case", _suite_cases())
def test_aws4_testsuite(aws4_suite: Path, case: str) -> None:
    base = aws4_suite / case / Path(case).name
    raw = _parse_raw(_read(base.with_suffix(".sreq")))
    authz = next(v for n, v in raw.headers if n.lower() == "authorization")
    algorithm, parts = parse_authorization(authz)
    assert algorithm == "AWS4-HMAC-SHA256"
    signed = parts["SignedHeaders"].split(";")
    path, _, raw_query = raw.target.partition("?")
    grouped = group_headers(CIMultiDict((n, v) for n, v in raw.headers
                                        if n.lower() != "authorization"))
    # The suite writes paths unencoded (a literal space, raw UTF-8); generic services
    # normalize them, S3 would not.
    creq = canonical_request(raw.method, canonical_uri(path, normalize=True),
                             canonical_query(parse_query(raw_query)),
                             canonical_headers(grouped, signed), parts["SignedHeaders"],
                             hashlib.sha256(raw.body).hexdigest())
    assert creq == _read(base.with_suffix(".creq"))
    sts = string_to_sign("20150830T123600Z", "20150830/us-east-1/service/aws4_request", creq)
    assert sts == _read(base.with_suffix(".sts"))
    key = signing_key(SUITE_SECRET, "20150830", "us-east-1", "service")
    # The expected answer is the .authz file. (get-vanilla-with-session-token's .sreq carries
    # a placeholder signature cut from its token; its .authz is the real one.)
    expected_authz = _read(base.with_suffix(".authz"))
    assert expected_authz.endswith(f"Signature={sign(key, sts)}")
    assert expected_authz.startswith(authz.rpartition("Signature=")[0])


# ------------------------------------------------------------------ S3 documentation examples

DOC_AKID = "AKIAIOSFODNN7EXAMPLE"
DOC_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DOC_CREDS = StaticCredentials({DOC_AKID: DOC_SECRET})
DOC_NOW = datetime(2013, 5, 24, 0, 0, 5, tzinfo=UTC)
DOC_SCOPE = f"{DOC_AKID}/20130524/us-east-1/s3/aws4_request"


def _doc_auth(signed: str, signature: str) -> str:
    return f"AWS4-HMAC-SHA256 Credential={DOC_SCOPE},SignedHeaders={signed},Signature={signature}"


def _headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def test_doc_get_object_with_range() -> None:
    headers = _headers(
        ("Host", "examplebucket.s3.amazonaws.com"), ("Range", "bytes=0-9"),
        ("x-amz-content-sha256", EMPTY_SHA256), ("x-amz-date", "20130524T000000Z"),
        ("Authorization", _doc_auth(
            "host;range;x-amz-content-sha256;x-amz-date",
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")))
    result = authenticate("GET", "/test.txt", [], headers, DOC_CREDS, DOC_NOW)
    assert result.access_key_id == DOC_AKID
    assert result.payload_mode == "signed" and result.expected_sha256 == EMPTY_SHA256
    assert result.scope == "20130524/us-east-1/s3/aws4_request"
    assert result.amz_date == "20130524T000000Z"


def test_doc_put_object_encodes_dollar_and_signs_date() -> None:
    body_sha = hashlib.sha256(b"Welcome to Amazon S3.").hexdigest()
    headers = _headers(
        ("Host", "examplebucket.s3.amazonaws.com"), ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
        ("x-amz-date", "20130524T000000Z"), ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("x-amz-content-sha256", body_sha),
        ("Authorization", _doc_auth(
            "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")))
    result = authenticate("PUT", "/test%24file.text", [], headers, DOC_CREDS, DOC_NOW)
    assert result.payload_mode == "signed" and result.expected_sha256 == body_sha


def test_doc_get_bucket_lifecycle_query_without_value() -> None:
    headers = _headers(
        ("Host", "examplebucket.s3.amazonaws.com"), ("x-amz-date", "20130524T000000Z"),
        ("x-amz-content-sha256", EMPTY_SHA256),
        ("Authorization", _doc_auth(
            "host;x-amz-content-sha256;x-amz-date",
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")))
    authenticate("GET", "/?lifecycle", parse_query("lifecycle"), headers, DOC_CREDS, DOC_NOW)


def test_doc_list_objects_query_sorted() -> None:
    headers = _headers(
        ("Host", "examplebucket.s3.amazonaws.com"), ("x-amz-date", "20130524T000000Z"),
        ("x-amz-content-sha256", EMPTY_SHA256),
        ("Authorization", _doc_auth(
            "host;x-amz-content-sha256;x-amz-date",
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")))
    authenticate("GET", "/", parse_query("max-keys=2&prefix=J"), headers, DOC_CREDS, DOC_NOW)


DOC_PRESIGNED_QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2F"
    "us-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&"
    "X-Amz-SignedHeaders=host&X-Amz-Signature="
    "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")
DOC_HOST = _headers(("Host", "examplebucket.s3.amazonaws.com"))


def test_doc_presigned_url() -> None:
    result = authenticate("GET", "/test.txt", parse_query(DOC_PRESIGNED_QUERY), DOC_HOST,
                          DOC_CREDS, DOC_NOW + timedelta(hours=23))
    assert result.presigned and result.access_key_id == DOC_AKID
    assert result.payload_mode == "unsigned" and result.expected_sha256 is None


def test_doc_presigned_url_expires_after_its_lifetime() -> None:
    with pytest.raises(S3Error) as caught:
        authenticate("GET", "/test.txt", parse_query(DOC_PRESIGNED_QUERY), DOC_HOST,
                     DOC_CREDS, datetime(2013, 5, 25, 0, 0, 1, tzinfo=UTC))
    err = caught.value
    assert (err.code, err.status, err.message) == ("AccessDenied", 403, "Request has expired")
    assert err.extra["X-Amz-Expires"] == "86400"
    assert err.extra["Expires"] == "2013-05-25T00:00:00Z"


def test_doc_presigned_url_not_valid_before_its_date() -> None:
    with pytest.raises(S3Error) as caught:
        authenticate("GET", "/test.txt", parse_query(DOC_PRESIGNED_QUERY), DOC_HOST,
                     DOC_CREDS, datetime(2013, 5, 23, 23, 0, 0, tzinfo=UTC))
    assert caught.value.code == "AccessDenied"


# ------------------------------------------------------------------ error cases


def _get_headers(**overrides: str) -> CIMultiDict[str]:
    base = {"Host": "examplebucket.s3.amazonaws.com", "Range": "bytes=0-9",
            "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": "20130524T000000Z",
            "Authorization": _doc_auth(
                "host;range;x-amz-content-sha256;x-amz-date",
                "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")}
    base.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return CIMultiDict(base)


def _error(headers: CIMultiDict[str], *, now: datetime = DOC_NOW, region: str = "us-east-1",
           query: list[tuple[str, str]] | None = None,
           creds: StaticCredentials = DOC_CREDS) -> S3Error:
    with pytest.raises(S3Error) as caught:
        authenticate("GET", "/test.txt", query or [], headers, creds, now, region=region)
    return caught.value


def test_anonymous_request() -> None:
    result = authenticate("GET", "/test.txt", [], _headers(("Host", "h")), DOC_CREDS, DOC_NOW)
    assert result == AuthResult(None, "unsigned", None, None, None, None, None)


def test_anonymous_request_with_declared_sha256_is_still_checked() -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    result = authenticate("PUT", "/k", [], _headers(("x-amz-content-sha256", sha)),
                          DOC_CREDS, DOC_NOW)
    assert result.access_key_id is None and result.expected_sha256 == sha


def test_wrong_region_names_the_expected_one() -> None:
    err = _error(_get_headers(), region="eu-west-1")
    assert err.code == "AuthorizationHeaderMalformed" and err.status == 400
    assert "'us-east-1' is wrong; expecting 'eu-west-1'" in err.message
    assert err.extra == {"Region": "eu-west-1"}


@pytest.mark.parametrize("authorization, fragment", [
    ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request",
     "three components"),
    ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3,"
     "SignedHeaders=host,Signature=" + "0" * 64, "mal-formed"),
    ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/ec2/aws4_request,"
     "SignedHeaders=host,Signature=" + "0" * 64, 'incorrect service "ec2"'),
    ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws5_request,"
     "SignedHeaders=host,Signature=" + "0" * 64, 'incorrect terminal "aws5_request"'),
    ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130525/us-east-1/s3/aws4_request,"
     "SignedHeaders=host,Signature=" + "0" * 64, "Date is not the same as X-Amz-Date"),
    ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
     "SignedHeaders=host,Signature=xyz", "Signature component"),
    ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
     "SignedHeaders=Host;X-Amz-Date,Signature=" + "0" * 64, "SignedHeaders"),
])
def test_malformed_authorization_header(authorization: str, fragment: str) -> None:
    err = _error(_get_headers(Authorization=authorization))
    assert err.code == "AuthorizationHeaderMalformed" and err.status == 400
    assert fragment in err.message


def test_sigv2_is_an_unsupported_mechanism() -> None:
    err = _error(_get_headers(Authorization="AWS AKIAIOSFODNN7EXAMPLE:frJIUN8DYpKDtOLCwo="))
    assert (err.code, err.status) == ("InvalidRequest", 400)
    assert "Please use AWS4-HMAC-SHA256" in err.message
    query = parse_query("AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Expires=1369353600&Signature=x")
    err = _error(DOC_HOST.copy(), query=query)
    assert (err.code, err.status) == ("InvalidRequest", 400)


def test_unknown_algorithm_is_an_unsupported_authorization_type() -> None:
    err = _error(_get_headers(Authorization="AWS4-ECDSA-P256-SHA256 Credential=x"))
    assert (err.code, err.status) == ("InvalidArgument", 400)


def test_unknown_access_key() -> None:
    err = _error(_get_headers(), creds=StaticCredentials({"OTHER": DOC_SECRET}))
    assert (err.code, err.status) == ("InvalidAccessKeyId", 403)
    assert err.extra == {"AWSAccessKeyId": DOC_AKID}


@pytest.mark.parametrize("offset_s, ok", [(-900, True), (900, True), (-901, False),
                                          (901, False)])
def test_skew_limit_is_fifteen_minutes(offset_s: int, ok: bool) -> None:
    now = datetime(2013, 5, 24, tzinfo=UTC) + timedelta(seconds=offset_s)
    if ok:
        authenticate("GET", "/test.txt", [], _get_headers(), DOC_CREDS, now)
        return
    err = _error(_get_headers(), now=now)
    assert (err.code, err.status) == ("RequestTimeTooSkewed", 403)
    assert err.extra["RequestTime"] == "20130524T000000Z"
    assert err.extra["MaxAllowedSkewMilliseconds"] == "900000"


def test_missing_date() -> None:
    headers = _get_headers()
    del headers["x-amz-date"]
    err = _error(headers)
    assert (err.code, err.status) == ("AccessDenied", 403)
    assert "Date or x-amz-date" in err.message


def test_missing_content_sha256_header() -> None:
    headers = _get_headers()
    del headers["x-amz-content-sha256"]
    err = _error(headers)
    assert err.code == "InvalidRequest" and "x-amz-content-sha256" in err.message


def test_invalid_content_sha256_value() -> None:
    assert _error(_get_headers(x_amz_content_sha256="abc")).code == "InvalidArgument"


def test_unsigned_amz_header_is_refused() -> None:
    headers = _get_headers()
    headers["x-amz-acl"] = "public-read"
    err = _error(headers)
    assert err.code == "AccessDenied" and err.extra == {"HeadersNotSigned": "x-amz-acl"}


def test_signature_mismatch_carries_the_canonical_request() -> None:
    err = _error(_get_headers(Range="bytes=0-10"))
    assert (err.code, err.status) == ("SignatureDoesNotMatch", 403)
    assert "range:bytes=0-10\n" in err.extra["CanonicalRequest"]
    assert err.extra["StringToSign"].startswith("AWS4-HMAC-SHA256\n20130524T000000Z\n")
    assert err.extra["AWSAccessKeyId"] == DOC_AKID
    assert DOC_SECRET not in repr(err.extra)


def test_both_header_and_query_auth_is_refused() -> None:
    err = _error(_get_headers(), query=parse_query(DOC_PRESIGNED_QUERY))
    assert err.code == "InvalidArgument"


@pytest.mark.parametrize("replace, fragment", [
    (("X-Amz-Expires=86400", "X-Amz-Expires=604801"), "less than a week"),
    (("X-Amz-Expires=86400", "X-Amz-Expires=-1"), "non-negative"),
    (("X-Amz-Expires=86400", "X-Amz-Expires=soon"), "should be a number"),
    (("X-Amz-Date=20130524T000000Z", "X-Amz-Date=2013-05-24"), "ISO8601"),
    (("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-HMAC-SHA1"), "only supports"),
    (("&X-Amz-SignedHeaders=host", ""), "requires the X-Amz-Algorithm"),
    (("us-east-1", "us-west-2"), "Error parsing the X-Amz-Credential parameter; the region"),
])
def test_presigned_query_errors(replace: tuple[str, str], fragment: str) -> None:
    query = parse_query(DOC_PRESIGNED_QUERY.replace(*replace))
    err = _error(DOC_HOST.copy(), query=query)
    assert (err.code, err.status) == ("AuthorizationQueryParametersError", 400)
    assert fragment in err.message


def test_presigned_expiry_of_exactly_seven_days_is_allowed() -> None:
    secret_key = signing_key(DOC_SECRET, "20130524", "us-east-1", "s3")
    query = [("X-Amz-Algorithm", "AWS4-HMAC-SHA256"), ("X-Amz-Credential", DOC_SCOPE),
             ("X-Amz-Date", "20130524T000000Z"), ("X-Amz-Expires", "604800"),
             ("X-Amz-SignedHeaders", "host")]
    creq = canonical_request("GET", "/test.txt", canonical_query(query),
                             "host:examplebucket.s3.amazonaws.com\n", "host", "UNSIGNED-PAYLOAD")
    signature = sign(secret_key, string_to_sign(
        "20130524T000000Z", "20130524/us-east-1/s3/aws4_request", creq))
    query.append(("X-Amz-Signature", signature))
    authenticate("GET", "/test.txt", query, DOC_HOST, DOC_CREDS,
                 datetime(2013, 5, 30, 23, 59, tzinfo=UTC))
    with pytest.raises(S3Error, match="Request has expired"):
        authenticate("GET", "/test.txt", query, DOC_HOST, DOC_CREDS,
                     datetime(2013, 5, 31, 0, 0, 1, tzinfo=UTC))


def test_uri_encode_rules() -> None:
    assert uri_encode("a b/c~d", keep_slash=True) == "a%20b/c~d"
    assert uri_encode("a/b") == "a%2Fb"
    assert uri_encode("é+*") == "%C3%A9%2B%2A"
    assert parse_query("a=b+c&d=%2B&e&&f=%FF") == [("a", "b c"), ("d", "+"), ("e", ""),
                                                  ("f", "\udcff")]
    assert canonical_query(parse_query("f=%ff&a=b")) == "a=b&f=%FF"


# ------------------------------------------------------------------ botocore as an oracle

ORACLE_AKID = "AKIDORACLE"
ORACLE_SECRET = "oracle/Secret+Key=0123456789abcdefXYZ"
ORACLE_CREDS = StaticCredentials({ORACLE_AKID: ORACLE_SECRET})
KEY_ALPHABET = "abcXYZ019-_.~ !$&'()*+,;=:@%/é€😀"
HOST = "127.0.0.1:9000"


@dataclass
class Signed:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: CIMultiDict[str]
    now: datetime


QUERY_ALPHABET = "abc 019+/=&%é~*"


def _random_request(rng: random.Random, query_alphabet: str = QUERY_ALPHABET
                    ) -> tuple[str, str, dict[str, str], dict[str, str], bytes]:
    method = rng.choice(["GET", "PUT", "HEAD", "DELETE", "POST"])
    key = "".join(rng.choice(KEY_ALPHABET) for _ in range(rng.randint(1, 24)))
    params = {"".join(rng.choice(query_alphabet) for _ in range(rng.randint(1, 8))):
              "".join(rng.choice(query_alphabet) for _ in range(rng.randint(0, 10)))
              for _ in range(rng.randint(0, 4))}
    headers = {f"x-amz-meta-{i}": rng.choice(["plain", "  padded  value ", "a\tb", "é", ""])
               for i in range(rng.randint(0, 3))}
    if rng.random() < 0.5:
        headers["Content-Type"] = "text/plain; charset=utf-8"
    body = rng.randbytes(rng.randint(1, 64)) if method in ("PUT", "POST") else b""
    return method, key, params, headers, body


def _sign(signer: Callable[[BotoCredentials], botocore.auth.BaseSigner], method: str, key: str,
          params: dict[str, str], headers: dict[str, str], body: bytes,
          secret: str = ORACLE_SECRET) -> Signed:
    request = AWSRequest(method=method, url=f"http://{HOST}/bucket/{quote(key, safe='/~')}",
                         params=params, headers=headers, data=body)
    signer(BotoCredentials(ORACLE_AKID, secret)).add_auth(request)
    prepared = request.prepare()
    url = urlsplit(prepared.url)
    sent = CIMultiDict[str]((name, value if isinstance(value, str) else value.decode())
                            for name, value in prepared.headers.items())
    sent["Host"] = HOST
    query = parse_query(url.query)
    stamp = sent.get("X-Amz-Date") or dict(query)["X-Amz-Date"]
    now = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return Signed(method, url.path, query, sent, now + timedelta(seconds=1))


SIGNERS: dict[str, Callable[[BotoCredentials], botocore.auth.BaseSigner]] = {
    "botocore-header": lambda c: botocore.auth.S3SigV4Auth(c, "s3", "us-east-1"),
    "botocore-presign": lambda c: botocore.auth.S3SigV4QueryAuth(c, "s3", "us-east-1",
                                                                 expires=600),
    "crt-header": lambda c: botocore.crt.auth.CrtS3SigV4Auth(c, "s3", "us-east-1"),
    "crt-presign": lambda c: botocore.crt.auth.CrtS3SigV4QueryAuth(c, "s3", "us-east-1",
                                                                   expires=600),
}


def _accepts(s: Signed, creds: StaticCredentials = ORACLE_CREDS) -> bool:
    try:
        authenticate(s.method, s.path, s.query, s.headers, creds, s.now)
    except S3Error as err:
        if err.code == "SignatureDoesNotMatch":
            return False
        raise
    return True


def _flip(text: str, rng: random.Random, alphabet: str = "abcXYZ019") -> str:
    i = rng.randrange(len(text))
    replacement = rng.choice([c for c in alphabet if c != text[i]])
    return text[:i] + replacement + text[i + 1:]


@pytest.mark.parametrize("signer_name", sorted(SIGNERS))
def test_oracle_signed_requests_are_accepted_and_mutations_refused(signer_name: str) -> None:
    rng = random.Random(f"oracle-{signer_name}")
    signer = SIGNERS[signer_name]
    presigned = signer_name.endswith("presign")
    for _ in range(60):
        # botocore's glue to the CRT signer hands it decoded query parameters, which it
        # cannot take when they hold '%' (it raises), '&' or '=' (it signs another query).
        alphabet = QUERY_ALPHABET.translate({ord(c): None for c in "%&="}) \
            if "crt" in signer_name else QUERY_ALPHABET
        method, key, params, headers, body = _random_request(rng, alphabet)
        if presigned:
            body = b""  # query signers would read a body as form parameters
        signed = _sign(signer, method, key, params, headers, body)
        assert _accepts(signed), (method, key, params, headers)
        result = authenticate(signed.method, signed.path, signed.query, signed.headers,
                              ORACLE_CREDS, signed.now)
        assert result.access_key_id == ORACLE_AKID and result.presigned == presigned
        if not presigned:
            assert result.expected_sha256 in (hashlib.sha256(body).hexdigest(), None)

        other_method = rng.choice([m for m in ("GET", "PUT", "HEAD", "DELETE") if m != method])
        assert not _accepts(Signed(other_method, signed.path, signed.query, signed.headers,
                                   signed.now))
        mutated_path = "/bucket/" + quote(_flip(key, rng), safe="/~")
        assert not _accepts(Signed(method, mutated_path, signed.query, signed.headers,
                                   signed.now))
        if params:
            name = rng.choice(sorted(params))
            query = [(n, _flip(v + "x", rng) if n == name else v) for n, v in signed.query]
            assert not _accepts(Signed(method, signed.path, query, signed.headers, signed.now))
            extra = [*signed.query, ("extra", "1")]
            assert not _accepts(Signed(method, signed.path, extra, signed.headers, signed.now))
        signed_names = _signed_header_names(signed)
        name = rng.choice(sorted(signed_names))
        mutated_headers = signed.headers.copy()
        mutated_headers[name] = _flip(mutated_headers.get(name, "") + "x", rng)
        if name not in ("x-amz-date", "x-amz-content-sha256"):
            assert not _accepts(Signed(method, signed.path, signed.query, mutated_headers,
                                       signed.now)), name
        if not presigned:
            later = signed.headers.copy()
            stamp = datetime.strptime(later["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
            later["X-Amz-Date"] = (stamp + timedelta(seconds=1)).strftime("%Y%m%dT%H%M%SZ")
            assert not _accepts(Signed(method, signed.path, signed.query, later, signed.now))
        else:
            stamp_q = dict(signed.query)["X-Amz-Date"]
            later_q = (datetime.strptime(stamp_q, "%Y%m%dT%H%M%SZ") + timedelta(seconds=1)
                       ).strftime("%Y%m%dT%H%M%SZ")
            query = [(n, later_q if n == "X-Amz-Date" else v) for n, v in signed.query]
            assert not _accepts(Signed(method, signed.path, query, signed.headers, signed.now))
        assert not _accepts(signed, StaticCredentials({ORACLE_AKID: _flip(ORACLE_SECRET, rng)}))


def _signed_header_names(s: Signed) -> set[str]:
    if "Authorization" in s.headers:
        _, parts = parse_authorization(s.headers["Authorization"])
        return set(parts["SignedHeaders"].split(";"))
    return set(dict(s.query)["X-Amz-SignedHeaders"].split(";"))


def test_oracle_whitespace_only_changes_in_header_values_still_verify() -> None:
    signed = _sign(SIGNERS["botocore-header"], "PUT", "k", {}, {"x-amz-meta-a": "one two"},
                   b"")
    signed.headers["x-amz-meta-a"] = "  one \t  two "
    assert _accepts(signed)


def test_oracle_path_encoded_differently_on_the_wire_still_verifies() -> None:
    signed = _sign(SIGNERS["botocore-header"], "GET", "a!b(c)", {}, {}, b"")
    assert signed.path == "/bucket/a%21b%28c%29"
    signed.path = "/bucket/a!b(c)"
    assert _accepts(signed)


def test_oracle_s3_path_is_not_normalized() -> None:
    signed = _sign(SIGNERS["crt-header"], "GET", "a//b/../c/./d", {}, {}, b"")
    assert signed.path == "/bucket/a//b/../c/./d"
    assert _accepts(signed)
    signed.path = "/bucket/a/c/d"
    assert not _accepts(signed)


def test_presigned_url_with_unsigned_amz_header_is_refused() -> None:
    signed = _sign(SIGNERS["botocore-presign"], "PUT", "k", {}, {}, b"")
    signed.headers["x-amz-acl"] = "public-read"
    with pytest.raises(S3Error) as caught:
        authenticate("PUT", signed.path, signed.query, signed.headers, ORACLE_CREDS,
                     signed.now)
    assert caught.value.extra == {"HeadersNotSigned": "x-amz-acl"}


def test_fetch_suite_is_cached(aws4_suite: Path) -> None:
    # The second call must not need the network: it returns the extracted directory as is.
    assert _fetch_suite(aws4_suite.parent) == aws4_suite


@pytest.mark.parametrize("key,params", [("a.txt", {}), ("dir/with space+plus~é.bin", {}),
                                        ("k", {"versionId": "v 1", "a": ""})])
def test_sign_request_signs_as_botocore_does(key: str, params: dict[str, str]) -> None:
    """The edge's S3 origin signer (sign_request) makes botocore's Authorization for a GET,
    and lbcdn's own verifier accepts it."""
    from lbcdn.bucket.sigv4 import sign_request
    s = _sign(SIGNERS["botocore-header"], "GET", key, params, {}, b"")
    stamp = datetime.strptime(s.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    raw_query = "&".join(f"{quote(n, safe='')}={quote(v, safe='')}" for n, v in params.items())
    ours = dict(sign_request("GET", s.path, raw_query, HOST, ORACLE_AKID, ORACLE_SECRET,
                             "us-east-1", stamp))
    assert ours["Authorization"] == s.headers["Authorization"]
    assert ours["X-Amz-Content-SHA256"] == s.headers["X-Amz-Content-SHA256"]
    headers = CIMultiDict[str]([("Host", HOST), *ours.items()])
    assert authenticate("GET", s.path, parse_query(raw_query), headers, ORACLE_CREDS,
                        s.now).access_key_id == ORACLE_AKID
