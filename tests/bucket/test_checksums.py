"""The checksums S3 keeps with an object (lbcdn.bucket.checksums), checked against values
computed independently (zlib, hashlib, awscrt over the whole data)."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest
from awscrt import checksums as crt

from lbcdn.bucket.checksums import (checksum_headers, multipart_checksum, object_checksum,
                                    upload_checksum, xml_fields)
from lbcdn.bucket.errors import S3Error


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_upload_checksum_defaults_and_refusals() -> None:
    assert upload_checksum(None, None) == {}
    assert upload_checksum("crc32", None) == {"x-amz-checksum-algorithm": "CRC32",
                                              "x-amz-checksum-type": "COMPOSITE"}
    assert upload_checksum("CRC64NVME", None)["x-amz-checksum-type"] == "FULL_OBJECT"
    assert upload_checksum("CRC32C", "FULL_OBJECT")["x-amz-checksum-type"] == "FULL_OBJECT"
    for alg, kind in (("SHA256", "FULL_OBJECT"), ("CRC64NVME", "COMPOSITE"), ("MD5", None),
                      ("CRC32", "PARTIAL"), (None, "COMPOSITE")):
        with pytest.raises(S3Error) as ei:
            upload_checksum(alg, kind)
        assert ei.value.code == "InvalidRequest"


def test_multipart_full_object_crc_is_the_crc_of_the_whole() -> None:
    a, b, c = b"x" * 1000, b"hello", b"world" * 7
    for alg, fn, size in (("crc32", zlib.crc32, 4), ("crc32c", crt.crc32c, 4),
                          ("crc64nvme", crt.crc64nvme, 8)):
        parts = [({alg: b64(fn(p).to_bytes(size, "big"))}, len(p)) for p in (a, b, c)]
        upload = {"x-amz-checksum-algorithm": alg.upper(), "x-amz-checksum-type": "FULL_OBJECT"}
        got = multipart_checksum(upload, parts)
        assert got == {f"x-amz-checksum-{alg}": b64(fn(a + b + c).to_bytes(size, "big")),
                       "x-amz-checksum-type": "FULL_OBJECT"}


def test_multipart_composite_and_missing_parts() -> None:
    digests = [hashlib.sha256(p).digest() for p in (b"a", b"b")]
    parts = [({"sha256": b64(d)}, 1) for d in digests]
    upload = {"x-amz-checksum-algorithm": "SHA256", "x-amz-checksum-type": "COMPOSITE"}
    want = b64(hashlib.sha256(b"".join(digests)).digest()) + "-2"
    got = multipart_checksum(upload, parts)
    assert got == {"x-amz-checksum-sha256": want, "x-amz-checksum-type": "COMPOSITE"}
    assert xml_fields(got) == [("ChecksumSHA256", want), ("ChecksumType", "COMPOSITE")]
    assert multipart_checksum(upload, [parts[0], ({}, 1)]) == {}
    assert multipart_checksum({}, parts) == {}


def test_object_checksum_headers() -> None:
    stored = {"content-type": "x/y", **object_checksum({"crc32": "AAAAAA=="}),
              "x-amz-checksum-algorithm": "CRC32"}
    assert checksum_headers(stored) == {"x-amz-checksum-crc32": "AAAAAA==",
                                        "x-amz-checksum-type": "FULL_OBJECT"}
    assert object_checksum({}) == {}


def test_claimed_checksum_of_a_complete() -> None:
    from lbcdn.bucket.checksums import check_claimed, claimed_checksums
    claimed = claimed_checksums({"X-Amz-Checksum-CRC32": " AAAAAA== ",
                                 "x-amz-checksum-type": "FULL_OBJECT", "Content-Type": "a/b"})
    assert claimed == {"crc32": "AAAAAA=="}
    check_claimed({"x-amz-checksum-crc32": "AAAAAA=="}, claimed)
    check_claimed({"x-amz-checksum-crc32": "AAAAAA==-3"}, claimed)  # composite, no -N claimed
    for stored, code in (({"x-amz-checksum-crc32": "AAAAAQ=="}, "BadDigest"),
                         ({"x-amz-checksum-sha1": "AAAAAA=="}, "InvalidRequest"), ({},
                                                                             "InvalidRequest")):
        with pytest.raises(S3Error) as ei:
            check_claimed(stored, claimed)
        assert ei.value.code == code
