"""Presigned URLs in the legacy signature version 2 form (query `AWSAccessKeyId`, `Expires`,
`Signature`), which the aws CLI v1 still produces by default (`aws s3 presign`).

Job: `is_v2_presigned` tells whether a query carries one; `authenticate_v2_query` verifies it
and returns the same `sigv4.AuthResult` a SigV4 request gets (an unsigned body). Pure: the
time comes in, secrets come through the Credentials protocol.

Rules (S3's "Query string request authentication alternative" for SigV2):
- StringToSign = VERB \\n Content-MD5 \\n Content-Type \\n Expires \\n amz-headers resource,
  resource = the raw request path plus the S3 sub-resources of the query (sorted, decoded).
- Signature = base64(HMAC-SHA1(secret, StringToSign)), compared in constant time.
- Expired (now > Expires) is AccessDenied, as S3 answers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime

from lbcdn.bucket.errors import S3Error
from lbcdn.bucket.sigv4 import AuthResult, Credentials

# Query parameters that are part of the SigV2 canonical resource (botocore's list).
SUBRESOURCES = frozenset((
    "accelerate", "acl", "cors", "defaultObjectAcl", "location", "logging", "partNumber",
    "policy", "requestPayment", "torrent", "versioning", "versionId", "versions", "website",
    "uploads", "uploadId", "response-content-type", "response-content-language",
    "response-expires", "response-cache-control", "response-content-disposition",
    "response-content-encoding", "delete", "lifecycle", "tagging", "restore",
    "storageClass", "notification", "replication", "requestPayment", "analytics", "metrics",
    "inventory", "select", "select-type", "object-lock"))


def is_v2_presigned(query: Mapping[str, str]) -> bool:
    return "AWSAccessKeyId" in query and "Signature" in query


def string_to_sign(method: str, raw_path: str, query: list[tuple[str, str]],
                   headers: Mapping[str, str], expires: str) -> str:
    amz = sorted((k.lower().strip(), v.strip()) for k, v in headers.items()
                 if k.lower().startswith("x-amz-"))
    amz_lines = "".join(f"{k}:{v}\n" for k, v in amz)
    subs = sorted((k, v) for k, v in query if k in SUBRESOURCES)
    resource = raw_path.split("?", 1)[0]
    if subs:
        resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in subs)
    return (f"{method}\n{headers.get('Content-MD5', '')}\n{headers.get('Content-Type', '')}\n"
            f"{expires}\n{amz_lines}{resource}")


def authenticate_v2_query(method: str, raw_path: str, query: list[tuple[str, str]],
                          headers: Mapping[str, str], credentials: Credentials,
                          now: datetime) -> AuthResult:
    params = dict(query)
    access_key = params.get("AWSAccessKeyId", "")
    expires = params.get("Expires", "")
    if not expires.isdigit():
        raise S3Error("AccessDenied", "Query-string authentication requires the Signature, "
                                      "Expires and AWSAccessKeyId parameters")
    secret = credentials.secret_for(access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", extra={"AWSAccessKeyId": access_key})
    if now.timestamp() > int(expires):
        raise S3Error("AccessDenied", "Request has expired",
                      extra={"Expires": expires, "ServerTime": now.isoformat()})
    text = string_to_sign(method, raw_path, query, headers, expires)
    expected = base64.b64encode(
        hmac.new(secret.encode("utf-8"), text.encode("utf-8"), hashlib.sha1).digest()).decode()
    if not hmac.compare_digest(expected.encode(), params.get("Signature", "").encode()):
        raise S3Error("SignatureDoesNotMatch", extra={"AWSAccessKeyId": access_key,
                                                      "StringToSign": text})
    return AuthResult(access_key, "unsigned", None, None, None, None, None)
