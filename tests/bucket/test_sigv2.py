"""SigV2 presigned URLs, with botocore (signature_version "s3") as the oracle."""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config

from lbcdn.bucket.errors import S3Error
from lbcdn.bucket.s3api import parse_query
from lbcdn.bucket.sigv2 import authenticate_v2_query, is_v2_presigned
from lbcdn.bucket.sigv4 import StaticCredentials

CREDS = StaticCredentials({"AKID": "secret"})


def presign(key: str, expires: int = 3600, **params: str) -> tuple[str, list[tuple[str, str]]]:
    s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:9", aws_access_key_id="AKID",
                      aws_secret_access_key="secret", region_name="us-east-1",
                      config=Config(signature_version="s3"))
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "bkt", "Key": key,
                                                          **params}, ExpiresIn=expires)
    parts = urlsplit(url)
    return parts.path, parse_query(parts.query)


def test_botocore_presigned_urls_verify() -> None:
    now = datetime.now(timezone.utc)
    for key, extra in (("a/b c+d.txt", {}), ("ü", {"ResponseContentType": "text/x"})):
        path, query = presign(key, **extra)
        assert is_v2_presigned(dict(query))
        assert authenticate_v2_query("GET", path, query, {}, CREDS, now).access_key_id == \
            "AKID"


def test_tampering_and_expiry() -> None:
    now = datetime.now(timezone.utc)
    path, query = presign("k")
    with pytest.raises(S3Error) as e:
        authenticate_v2_query("GET", path + "x", query, {}, CREDS, now)
    assert e.value.code == "SignatureDoesNotMatch"
    with pytest.raises(S3Error) as e:
        authenticate_v2_query("PUT", path, query, {}, CREDS, now)
    assert e.value.code == "SignatureDoesNotMatch"
    with pytest.raises(S3Error) as e:
        authenticate_v2_query("GET", path, query, {}, CREDS,
                              datetime(2100, 1, 1, tzinfo=timezone.utc))
    assert (e.value.code, e.value.status) == ("AccessDenied", 403)
    with pytest.raises(S3Error) as e:
        authenticate_v2_query("GET", path, query, {}, StaticCredentials({}), now)
    assert e.value.code == "InvalidAccessKeyId"
