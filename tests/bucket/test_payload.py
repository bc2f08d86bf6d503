"""PayloadReader: plain and aws-chunked bodies, digests, checksums, chunk and trailer signatures.

- The S3 documentation's two chunked uploads (signed chunks; signed chunks with a signed CRC32C
  trailer) with their published signatures, fed in pieces of every awkward size, then mutated.
- Checksums against the published check values of each CRC ("123456789").
- boto3 itself, against a tiny aiohttp server (HTTPS with a throwaway certificate, and plain
  HTTP) that runs `authenticate` + `PayloadReader`: what current boto3 sends by default (an
  unsigned aws-chunked body with a CRC32 trailer over TLS, a signed body with a checksum header
  over HTTP), every checksum algorithm, a wrong secret, a presigned URL.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import botocore.auth
import botocore.config
import botocore.exceptions
import pytest
import yarl
from aiohttp import web
from multidict import CIMultiDict

from lbcdn.bucket.errors import S3Error, render_error
from lbcdn.bucket.payload import Checksum, PayloadReader, checksum_b64
from lbcdn.bucket.sigv4 import (
    AuthResult,
    StaticCredentials,
    authenticate,
    chunk_string_to_sign,
    parse_query,
    sign,
    signing_key,
    trailer_string_to_sign,
)


class FakeStream:
    """An in-memory body handed out in pieces of at most `piece` bytes."""

    def __init__(self, data: bytes, piece: int = 1 << 16) -> None:
        self._data = data
        self._pos = 0
        self._piece = piece

    async def read(self, n: int = -1) -> bytes:
        size = self._piece if n < 0 else min(n, self._piece)
        chunk = self._data[self._pos:self._pos + size]
        self._pos += len(chunk)
        return chunk


async def _drain(reader: PayloadReader) -> bytes:
    out = bytearray()
    async for piece in reader:
        out += piece
    return bytes(out)


async def _error(reader_or_body: PayloadReader) -> S3Error:
    with pytest.raises(S3Error) as caught:
        await _drain(reader_or_body)
    return caught.value


# ------------------------------------------------------------------ the documented chunked uploads

AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
CREDS = StaticCredentials({AKID: SECRET})
NOW = datetime(2013, 5, 24, 0, 1, tzinfo=UTC)
SIGNED = "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;" \
         "x-amz-decoded-content-length;x-amz-storage-class"
# The trailer example signs x-amz-trailer and not content-length.
SIGNED_TRAILER = "content-encoding;host;x-amz-content-sha256;x-amz-date;" \
                 "x-amz-decoded-content-length;x-amz-storage-class;x-amz-trailer"
DATA = b"a" * 66560


@dataclass
class DocUpload:
    headers: CIMultiDict[str]
    body: bytes
    seed: str
    chunk_signatures: list[str] = field(default_factory=list)


def _doc_upload(trailer: bool) -> DocUpload:
    if trailer:
        seed = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
        sigs = ["b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
                "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
                "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992"]
        tail = (b"x-amz-checksum-crc32c:sOO8/Q==\r\nx-amz-trailer-signature:"
                b"d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n\r\n")
        mode = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
    else:
        seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
        sigs = ["ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
                "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
                "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"]
        tail = b"\r\n"
        mode = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    body = (f"10000;chunk-signature={sigs[0]}\r\n".encode() + DATA[:65536] + b"\r\n"
            + f"400;chunk-signature={sigs[1]}\r\n".encode() + DATA[65536:] + b"\r\n"
            + f"0;chunk-signature={sigs[2]}\r\n".encode() + tail)
    headers = CIMultiDict([
        ("Host", "s3.amazonaws.com"), ("x-amz-date", "20130524T000000Z"),
        ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("Authorization", f"AWS4-HMAC-SHA256 Credential={AKID}/20130524/us-east-1/s3/"
                          f"aws4_request,SignedHeaders={SIGNED_TRAILER if trailer else SIGNED},"
                          f"Signature={seed}"),
        ("x-amz-content-sha256", mode), ("Content-Encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", "66560"), ("Content-Length", "66824")])
    if trailer:
        headers["x-amz-trailer"] = "x-amz-checksum-crc32c"
    return DocUpload(headers, body, seed, sigs)


def _doc_auth(upload: DocUpload) -> AuthResult:
    return authenticate("PUT", "/examplebucket/chunkObject.txt", [], upload.headers, CREDS, NOW)


def test_doc_streaming_seed_signature_verifies() -> None:
    result = _doc_auth(_doc_upload(trailer=False))
    assert result.payload_mode == "streaming-signed"
    assert result.seed_signature == "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    assert result.signing_key == signing_key(SECRET, "20130524", "us-east-1", "s3")


def test_doc_chunk_signatures_chain() -> None:
    upload = _doc_upload(trailer=False)
    key = signing_key(SECRET, "20130524", "us-east-1", "s3")
    previous = upload.seed
    for data, expected in zip((DATA[:65536], DATA[65536:], b""), upload.chunk_signatures,
                              strict=True):
        previous = sign(key, chunk_string_to_sign(
            "20130524T000000Z", "20130524/us-east-1/s3/aws4_request", previous,
            hashlib.sha256(data).hexdigest()))
        assert previous == expected
    trailer = _doc_upload(trailer=True)
    assert sign(key, trailer_string_to_sign(
        "20130524T000000Z", "20130524/us-east-1/s3/aws4_request", trailer.chunk_signatures[2],
        hashlib.sha256(b"x-amz-checksum-crc32c:sOO8/Q==\n").hexdigest())) == \
        "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"


@pytest.mark.parametrize("trailer", [False, True])
@pytest.mark.parametrize("piece, chunk_size", [(1 << 20, 1 << 20), (1, 4096), (7, 1000),
                                               (4095, 65536), (65537, 3)])
async def test_doc_upload_decodes_in_any_pieces(trailer: bool, piece: int,
                                                chunk_size: int) -> None:
    upload = _doc_upload(trailer)
    reader = PayloadReader(FakeStream(upload.body, piece), _doc_auth(upload), upload.headers,
                           chunk_size=chunk_size)
    assert await _drain(reader) == DATA
    assert reader.verified and reader.size == 66560
    assert reader.md5_hex == hashlib.md5(DATA).hexdigest()
    if trailer:
        assert reader.trailers == {"x-amz-checksum-crc32c": "sOO8/Q=="}
        assert reader.checksums == {"crc32c": "sOO8/Q=="}
    else:
        assert reader.checksums == {}


@pytest.mark.parametrize("trailer", [False, True])
@pytest.mark.parametrize("where", [0, 100, 65535, 65700, 66559])
async def test_doc_upload_with_one_data_byte_changed_is_refused(trailer: bool,
                                                                where: int) -> None:
    upload = _doc_upload(trailer)
    # The second chunk's data starts after CRLF + its 88-byte header line.
    offset = upload.body.index(b"aaaa") + where + (0 if where < 65536 else 88)
    body = bytearray(upload.body)
    assert body[offset] == ord("a")
    body[offset] = ord("b")
    reader = PayloadReader(FakeStream(bytes(body)), _doc_auth(upload), upload.headers)
    err = await _error(reader)
    assert (err.code, err.status) == ("SignatureDoesNotMatch", 403)
    assert not reader.verified


@pytest.mark.parametrize("old, new, code", [
    (b"chunk-signature=ad80", b"chunk-signature=ad81", "SignatureDoesNotMatch"),
    (b"chunk-signature=b6c6", b"chunk-signature=b6c7", "SignatureDoesNotMatch"),
    (b";chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497", b"",
     "SignatureDoesNotMatch"),
    (b"10000;", b"1000g;", "InvalidRequest"),
    (b"400;", b"3ff;", "SignatureDoesNotMatch"),
    (b"400;", b"401;", "IncompleteBody"),
    (DATA[:4] + b"\r\n0;", DATA[:4] + b"\n0;", "InvalidRequest"),
    (b"b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n",
     b"b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\nextra",
     "InvalidRequest"),
])
async def test_doc_upload_framing_and_signature_faults(old: bytes, new: bytes,
                                                       code: str) -> None:
    upload = _doc_upload(trailer=False)
    assert old in upload.body
    body = upload.body.replace(old, new, 1)
    err = await _error(PayloadReader(FakeStream(body), _doc_auth(upload), upload.headers))
    assert err.code == code


@pytest.mark.parametrize("cut", [10, 65600, 66700])
async def test_truncated_chunked_body_is_incomplete(cut: int) -> None:
    upload = _doc_upload(trailer=False)
    err = await _error(PayloadReader(FakeStream(upload.body[:cut]), _doc_auth(upload),
                                     upload.headers))
    assert err.code in ("IncompleteBody", "SignatureDoesNotMatch")
    if cut < 66000:
        assert err.code == "IncompleteBody"


async def test_decoded_length_mismatch_is_incomplete_body() -> None:
    upload = _doc_upload(trailer=False)
    auth = _doc_auth(upload)
    for declared in ("66559", "66561"):
        upload.headers["x-amz-decoded-content-length"] = declared
        err = await _error(PayloadReader(FakeStream(upload.body), auth, upload.headers))
        assert err.code == "IncompleteBody"


async def test_trailer_signature_and_value_faults() -> None:
    upload = _doc_upload(trailer=True)
    auth = _doc_auth(upload)
    for old, new, code in [
        (b"sOO8/Q==", b"sOO8/R==", "SignatureDoesNotMatch"),
        (b"trailer-signature:d81f", b"trailer-signature:d82f", "SignatureDoesNotMatch"),
        (b"x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17f"
         b"e2e435\r\n", b"", "SignatureDoesNotMatch"),
    ]:
        body = upload.body.replace(old, new, 1)
        assert body != upload.body
        assert (await _error(PayloadReader(FakeStream(body), auth, upload.headers))).code == code


# ------------------------------------------------------------------ unsigned trailers, hand-built


def _unsigned_trailer_body(data: bytes, algorithm: str, value: str | None = None,
                           chunk: int = 5) -> bytes:
    out = bytearray()
    for i in range(0, len(data), chunk):
        piece = data[i:i + chunk]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    checksum = value if value is not None else checksum_b64(algorithm, data)
    out += f"0\r\nx-amz-checksum-{algorithm}:{checksum}\r\n\r\n".encode()
    return bytes(out)


def _unsigned_trailer_auth(algorithm: str) -> AuthResult:
    return AuthResult(None, "streaming-unsigned-trailer", None, None, None, None, None,
                      (f"x-amz-checksum-{algorithm}",))


def _chunked_headers(length: int) -> CIMultiDict[str]:
    return CIMultiDict([("x-amz-decoded-content-length", str(length)),
                        ("Content-Encoding", "aws-chunked")])


@pytest.mark.parametrize("algorithm", ["crc32", "crc32c", "crc64nvme", "sha1", "sha256"])
async def test_unsigned_trailer_each_algorithm(algorithm: str) -> None:
    data = b"hello, trailing checksum world"
    reader = PayloadReader(FakeStream(_unsigned_trailer_body(data, algorithm), 3),
                           _unsigned_trailer_auth(algorithm), _chunked_headers(len(data)))
    assert await _drain(reader) == data
    assert reader.checksums == {algorithm: checksum_b64(algorithm, data)}

    wrong = checksum_b64(algorithm, data + b"!")
    err = await _error(PayloadReader(FakeStream(_unsigned_trailer_body(data, algorithm, wrong)),
                                     _unsigned_trailer_auth(algorithm),
                                     _chunked_headers(len(data))))
    assert (err.code, err.status) == ("BadDigest", 400)
    assert algorithm.upper() in err.message


async def test_unsigned_trailer_missing_or_malformed() -> None:
    data = b"abc"
    missing = b"3\r\nabc\r\n0\r\n\r\n"
    err = await _error(PayloadReader(FakeStream(missing), _unsigned_trailer_auth("crc32"),
                                     _chunked_headers(3)))
    assert err.code == "IncompleteBody"
    bad = _unsigned_trailer_body(data, "crc32", "not-base64!")
    err = await _error(PayloadReader(FakeStream(bad), _unsigned_trailer_auth("crc32"),
                                     _chunked_headers(3)))
    assert err.code == "InvalidRequest"


def test_unsupported_trailer_name_is_refused_up_front() -> None:
    auth = AuthResult(None, "streaming-unsigned-trailer", None, None, None, None, None,
                      ("x-amz-meta-foo",))
    with pytest.raises(S3Error) as caught:
        PayloadReader(FakeStream(b""), auth, _chunked_headers(0))
    assert caught.value.code == "InvalidRequest"


def test_streaming_without_decoded_length_is_refused() -> None:
    with pytest.raises(S3Error) as caught:
        PayloadReader(FakeStream(b""), _unsigned_trailer_auth("crc32"), CIMultiDict())
    assert caught.value.code == "MissingContentLength"


async def test_overlong_chunk_header_line_is_refused() -> None:
    body = b"1" + b"0" * 5000 + b"\r\n"
    err = await _error(PayloadReader(FakeStream(body), _unsigned_trailer_auth("crc32"),
                                     _chunked_headers(1)))
    assert err.code == "InvalidRequest"


# ------------------------------------------------------------------ plain bodies


def _plain_auth(sha256: str | None = None) -> AuthResult:
    return AuthResult("AKID", "signed" if sha256 else "unsigned", sha256, None, None, None,
                      None)


async def test_plain_signed_body() -> None:
    data = bytes(range(256)) * 1000
    reader = PayloadReader(FakeStream(data, 999), _plain_auth(hashlib.sha256(data).hexdigest()),
                           CIMultiDict([("Content-Length", str(len(data)))]), chunk_size=4096)
    pieces = [piece async for piece in reader]
    assert b"".join(pieces) == data and max(map(len, pieces)) <= 4096
    assert reader.verified and reader.sha256_hex == hashlib.sha256(data).hexdigest()


async def test_plain_sha256_mismatch() -> None:
    claimed = hashlib.sha256(b"other").hexdigest()
    reader = PayloadReader(FakeStream(b"data"), _plain_auth(claimed), CIMultiDict())
    err = await _error(reader)
    assert (err.code, err.status) == ("XAmzContentSHA256Mismatch", 400)
    assert err.extra == {"ClientComputedContentSHA256": claimed,
                         "S3ComputedContentSHA256": hashlib.sha256(b"data").hexdigest()}


async def test_plain_short_body_is_incomplete() -> None:
    reader = PayloadReader(FakeStream(b"abc"), _plain_auth(), CIMultiDict([("Content-Length",
                                                                            "4")]))
    assert (await _error(reader)).code == "IncompleteBody"


async def test_content_md5() -> None:
    data = b"The quick brown fox"
    good = base64.b64encode(hashlib.md5(data).digest()).decode()
    reader = PayloadReader(FakeStream(data), _plain_auth(), CIMultiDict([("Content-MD5", good)]))
    assert await _drain(reader) == data and reader.md5_hex == hashlib.md5(data).hexdigest()

    other = base64.b64encode(hashlib.md5(b"x").digest()).decode()
    err = await _error(PayloadReader(FakeStream(data), _plain_auth(),
                                     CIMultiDict([("Content-MD5", other)])))
    assert (err.code, err.status) == ("BadDigest", 400)

    for malformed in ("not base64!", base64.b64encode(b"short").decode(), good[:-2]):
        with pytest.raises(S3Error) as caught:
            PayloadReader(FakeStream(data), _plain_auth(), CIMultiDict([("Content-MD5",
                                                                         malformed)]))
        assert (caught.value.code, caught.value.status) == ("InvalidDigest", 400)


@pytest.mark.parametrize("algorithm, check", [
    ("crc32", 0xCBF43926), ("crc32c", 0xE3069283), ("crc64nvme", 0xAE8B14860A799888),
])
def test_crc_check_values(algorithm: str, check: int) -> None:
    checksum = Checksum(algorithm)
    for piece in (b"1234", b"", b"56789"):
        checksum.update(piece)
    assert int.from_bytes(checksum.digest(), "big") == check


def test_hash_checksums_match_hashlib() -> None:
    assert checksum_b64("sha1", b"abc") == base64.b64encode(hashlib.sha1(b"abc").digest()
                                                            ).decode()
    assert checksum_b64("sha256", b"") == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


@pytest.mark.parametrize("algorithm", ["crc32", "crc32c", "crc64nvme", "sha1", "sha256"])
async def test_checksum_header(algorithm: str) -> None:
    data = b"checksum in a header"
    header = f"x-amz-checksum-{algorithm}"
    reader = PayloadReader(FakeStream(data), _plain_auth(),
                           CIMultiDict([(header, checksum_b64(algorithm, data))]))
    await _drain(reader)
    assert reader.checksums == {algorithm: checksum_b64(algorithm, data)}
    err = await _error(PayloadReader(FakeStream(data + b"."), _plain_auth(),
                                     CIMultiDict([(header, checksum_b64(algorithm, data))])))
    assert err.code == "BadDigest"
    with pytest.raises(S3Error) as caught:
        PayloadReader(FakeStream(data), _plain_auth(), CIMultiDict([(header, "AAAA")]
                                                                   if algorithm != "crc32"
                                                                   else [(header, "AAA")]))
    assert caught.value.code == "InvalidRequest"


def test_two_checksum_headers_are_refused() -> None:
    headers = CIMultiDict([("x-amz-checksum-crc32", checksum_b64("crc32", b"")),
                           ("x-amz-checksum-sha1", checksum_b64("sha1", b""))])
    with pytest.raises(S3Error) as caught:
        PayloadReader(FakeStream(b""), _plain_auth(), headers)
    assert "Multiple checksum" in caught.value.message


async def test_sdk_checksum_algorithm_is_computed() -> None:
    reader = PayloadReader(FakeStream(b"abc"), _plain_auth(),
                           CIMultiDict([("x-amz-sdk-checksum-algorithm", "CRC64NVME")]))
    await _drain(reader)
    assert reader.checksums == {"crc64nvme": checksum_b64("crc64nvme", b"abc")}


async def test_not_verified_when_the_consumer_stops_early() -> None:
    reader = PayloadReader(FakeStream(b"x" * 100, 10), _plain_auth(), CIMultiDict())
    async for _ in reader:
        break
    assert not reader.verified and reader.md5_hex == ""


# ------------------------------------------------------------------ boto3 against a real server

BOTO_AKID = "AKIDBOTO3TEST"
BOTO_SECRET = "boto3/secret+key/for/tests"


@dataclass
class Seen:
    auth: AuthResult
    size: int
    sha256: str
    checksums: dict[str, str]
    trailers: dict[str, str]
    headers: dict[str, str]


@dataclass
class Server:
    url: str
    seen: list[Seen]
    cert: Path | None


def _make_cert(directory: Path) -> Path:
    cert = directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(directory / "key.pem"), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)
    return cert


LIST_XML = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.'
            'com/doc/2006-03-01/"><Name>bucket</Name><Prefix></Prefix><KeyCount>0</KeyCount>'
            '<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>')


async def _handle(request: web.Request, seen: list[Seen]) -> web.StreamResponse:
    try:
        auth = authenticate(request.method, request.raw_path,
                            parse_query(request.rel_url.raw_query_string), request.headers,
                            StaticCredentials({BOTO_AKID: BOTO_SECRET}), datetime.now(UTC))
        reader = PayloadReader(request.content, auth, request.headers)
        digest = hashlib.sha256()
        async for piece in reader:
            digest.update(piece)
    except S3Error as err:
        return web.Response(status=err.status, body=render_error(err, "test"),
                            content_type="application/xml")
    seen.append(Seen(auth, reader.size, digest.hexdigest(), reader.checksums, reader.trailers,
                     dict(request.headers)))
    if request.method == "GET" and request.rel_url.path == "/bucket":
        return web.Response(text=LIST_XML, content_type="application/xml")
    return web.Response(headers={"ETag": f'"{reader.md5_hex}"'})


@pytest.fixture(params=["https", "http"])
async def server(request: pytest.FixtureRequest,
                 tmp_path: Path) -> AsyncIterator[Server]:
    seen: list[Seen] = []

    async def handle(req: web.Request) -> web.StreamResponse:
        return await _handle(req, seen)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    cert: Path | None = None
    ssl_context = None
    if request.param == "https":
        import ssl
        cert = _make_cert(tmp_path)
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(cert, tmp_path / "key.pem")
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Server(f"{request.param}://127.0.0.1:{port}", seen, cert)
    finally:
        await runner.cleanup()


def _client(server: Server, secret: str = BOTO_SECRET, **config: Any) -> Any:
    return boto3.client(
        "s3", endpoint_url=server.url, region_name="us-east-1",
        aws_access_key_id=BOTO_AKID, aws_secret_access_key=secret,
        verify=str(server.cert) if server.cert else None,
        config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=5,
                                      read_timeout=10, s3={"addressing_style": "path"},
                                      **config))


async def test_boto3_default_put_object(server: Server) -> None:
    data = bytes(range(256)) * 12289  # ~3 MiB: several aws-chunked chunks
    client = _client(server)
    response = await asyncio.to_thread(client.put_object, Bucket="bucket", Key="dir/a b+c.bin",
                                       Body=io.BytesIO(data))
    assert response["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    [seen] = server.seen
    assert seen.size == len(data) and seen.sha256 == hashlib.sha256(data).hexdigest()
    assert seen.checksums == {"crc32": checksum_b64("crc32", data)}
    if server.url.startswith("https"):
        # What current boto3 sends by default over TLS: an unsigned aws-chunked body with the
        # CRC32 in a trailer.
        assert seen.auth.payload_mode == "streaming-unsigned-trailer"
        assert seen.auth.trailer_names == ("x-amz-checksum-crc32",)
        assert seen.trailers == {"x-amz-checksum-crc32": checksum_b64("crc32", data)}
    else:
        assert seen.auth.payload_mode == "signed"
        assert seen.auth.expected_sha256 == seen.sha256


@pytest.mark.parametrize("algorithm", ["CRC32C", "CRC64NVME", "SHA1", "SHA256"])
async def test_boto3_put_object_each_checksum(server: Server, algorithm: str) -> None:
    data = b"some object content " * 1000
    client = _client(server)
    await asyncio.to_thread(client.put_object, Bucket="bucket", Key="k", Body=data,
                            ChecksumAlgorithm=algorithm)
    [seen] = server.seen
    assert seen.checksums == {algorithm.lower(): checksum_b64(algorithm.lower(), data)}
    assert seen.sha256 == hashlib.sha256(data).hexdigest()


async def test_boto3_pure_python_signer(server: Server,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # boto3 signs with the CRT when awscrt is installed; botocore's own signer is what users
    # without awscrt get.
    monkeypatch.setitem(botocore.auth.AUTH_TYPE_MAPS, "s3v4", botocore.auth.S3SigV4Auth)
    client = _client(server)
    await asyncio.to_thread(client.put_object, Bucket="bucket", Key="py", Body=b"pure python")
    await asyncio.to_thread(client.list_objects_v2, Bucket="bucket", Prefix="a b&c%d+e=f/é")
    assert [s.auth.access_key_id for s in server.seen] == [BOTO_AKID, BOTO_AKID]


async def test_boto3_list_with_awkward_prefix(server: Server) -> None:
    client = _client(server)
    await asyncio.to_thread(client.list_objects_v2, Bucket="bucket",
                            Prefix="a b&c%d+e=f/é~*", StartAfter="x y")
    [seen] = server.seen
    assert seen.auth.access_key_id == BOTO_AKID


async def test_boto3_wrong_secret_is_signature_does_not_match(server: Server) -> None:
    client = _client(server, secret="not the secret")
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        await asyncio.to_thread(client.put_object, Bucket="bucket", Key="k", Body=b"x")
    assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert server.seen == []


async def test_boto3_presigned_url(server: Server) -> None:
    client = _client(server, signature_version="s3v4")
    url = await asyncio.to_thread(client.generate_presigned_url, "get_object",
                                  Params={"Bucket": "bucket", "Key": "p r/e+s.txt"},
                                  ExpiresIn=60)
    assert "X-Amz-Signature=" in url
    ssl_arg: Any = False if server.cert else None
    async with aiohttp.ClientSession() as session:
        async with session.get(yarl.URL(url, encoded=True), ssl=ssl_arg) as resp:
            assert resp.status == 200, await resp.text()
        async with session.get(yarl.URL(url.replace("p%20r", "p%20q"), encoded=True),
                               ssl=ssl_arg) as resp:
            assert resp.status == 403
            assert b"<Code>SignatureDoesNotMatch</Code>" in await resp.read()
    assert [s.auth.presigned for s in server.seen] == [True]


async def test_boto3_default_presign_is_sigv2_and_refused(server: Server) -> None:
    # botocore presigns with SigV2 for regions it knows to accept it (us-east-1) unless the
    # client is configured with signature_version="s3v4"; such a URL must not pass as
    # anonymous.
    client = _client(server)
    url = await asyncio.to_thread(client.generate_presigned_url, "get_object",
                                  Params={"Bucket": "bucket", "Key": "k"}, ExpiresIn=60)
    assert "AWSAccessKeyId=" in url
    ssl_arg: Any = False if server.cert else None
    async with aiohttp.ClientSession() as session:
        async with session.get(yarl.URL(url, encoded=True), ssl=ssl_arg) as resp:
            assert resp.status == 400
            assert b"<Code>InvalidRequest</Code>" in await resp.read()
    assert server.seen == []
