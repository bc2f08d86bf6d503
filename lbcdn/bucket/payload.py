"""The request body of an S3 upload, decoded and verified while it streams.

Job: `PayloadReader` turns the raw body (plain, or aws-chunked in any of its three forms) into
the object's bytes, piece by piece, and hashes them on the way: MD5 always (the ETag), SHA-256
when the signature covers the body, and every `x-amz-checksum-*` algorithm the client declared in
a header, in `x-amz-trailer` or in `x-amz-sdk-checksum-algorithm`. Chunk and trailer signatures
are checked against the chain that starts at the request's seed signature (sigv4.AuthResult).

Rules:
- Never holds the body: memory is one read (`chunk_size`) plus one chunk-header line.
- Pieces are handed out before the whole body is verified (a chunk's signature is only known
  after its data). A consumer writes them to a temporary place and commits only when iteration
  ends without an exception; then `verified` is True and `size`, `md5_hex`, `checksums` are set.
- Header values are validated in the constructor, so a bad Content-MD5 or checksum header is
  refused before the first byte is read. Every failure is an S3Error with S3's code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Protocol

from awscrt import checksums as crt_checksums

from lbcdn.bucket.errors import S3Error
from lbcdn.bucket.sigv4 import (
    AuthResult,
    chunk_string_to_sign,
    group_headers,
    sign,
    signatures_equal,
    trailer_string_to_sign,
)

# Algorithm name (lower case, as in the header names) -> digest length in bytes.
CHECKSUM_SIZES: dict[str, int] = {"crc32": 4, "crc32c": 4, "crc64nvme": 8, "sha1": 20,
                                  "sha256": 32}
CHECKSUM_HEADER_PREFIX = "x-amz-checksum-"
TRAILER_SIGNATURE = "x-amz-trailer-signature"
MAX_LINE_BYTES = 4096  # chunk header or trailer line; real ones are < 200 bytes


class ByteSource(Protocol):
    """What the body is read from: aiohttp's StreamReader, or an in-memory fake in tests."""

    async def read(self, n: int = -1) -> bytes: ...


class Checksum:
    """One incremental x-amz-checksum-* algorithm; `b64()` is the value S3 exchanges."""

    def __init__(self, algorithm: str) -> None:
        if algorithm not in CHECKSUM_SIZES:
            raise ValueError(f"unknown checksum algorithm {algorithm!r}")
        self.algorithm = algorithm
        self._crc = 0
        self._crc_fn: Callable[[bytes, int], int] | None = None
        self._hash: hashlib._Hash | None = None
        if algorithm == "crc32":
            self._crc_fn = zlib.crc32
        elif algorithm == "crc32c":
            self._crc_fn = crt_checksums.crc32c
        elif algorithm == "crc64nvme":
            self._crc_fn = crt_checksums.crc64nvme
        else:
            self._hash = hashlib.new(algorithm)

    def update(self, data: bytes) -> None:
        if self._crc_fn is not None:
            self._crc = int(self._crc_fn(data, self._crc))
        else:
            assert self._hash is not None
            self._hash.update(data)

    def digest(self) -> bytes:
        if self._hash is not None:
            return self._hash.digest()
        return self._crc.to_bytes(CHECKSUM_SIZES[self.algorithm], "big")

    def b64(self) -> str:
        return base64.b64encode(self.digest()).decode("ascii")


def checksum_b64(algorithm: str, data: bytes) -> str:
    """The x-amz-checksum-<algorithm> value of `data` in one call."""
    checksum = Checksum(algorithm)
    checksum.update(data)
    return checksum.b64()


def _strict_b64(value: str, size: int) -> bytes | None:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == size else None


def _malformed(detail: str) -> S3Error:
    return S3Error("InvalidRequest", f"Malformed aws-chunked body: {detail}")


def _last(grouped: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = grouped.get(name)
    return values[-1].strip() if values else None


class PayloadReader:
    """Async iterator of the decoded body; raises S3Error on any mismatch (see module doc)."""

    def __init__(self, stream: ByteSource, auth: AuthResult, headers: Mapping[str, str],
                 chunk_size: int = 1 << 20) -> None:
        self._stream = stream
        self._auth = auth
        self._chunk_size = max(1, chunk_size)
        self._buffer = bytearray()
        self._eof = False
        grouped = group_headers(headers)

        self._md5 = hashlib.md5(usedforsecurity=False)
        self._expected_md5 = self._content_md5(grouped)
        self._sha256 = hashlib.sha256() if auth.payload_mode == "signed" else None
        self._declared = self._checksum_headers(grouped)
        self._trailer_algorithms = self._trailer_checksums(auth.trailer_names)
        algorithms = set(self._declared) | set(self._trailer_algorithms.values())
        sdk = (_last(grouped, "x-amz-sdk-checksum-algorithm") or "").lower()
        if sdk in CHECKSUM_SIZES:
            algorithms.add(sdk)
        self._checksums = {name: Checksum(name) for name in sorted(algorithms)}

        self._streaming = auth.payload_mode.startswith("streaming")
        length_header = "x-amz-decoded-content-length" if self._streaming else "content-length"
        length = _last(grouped, length_header)
        if length is not None and not length.isdigit():
            raise S3Error("InvalidArgument", f"{length_header} must be a number")
        if self._streaming and length is None:
            raise S3Error("MissingContentLength", "You must provide the "
                          "x-amz-decoded-content-length header with an aws-chunked body.")
        self._expected_size = int(length) if length is not None else None

        self.size = 0
        self.md5_hex = ""
        self.sha256_hex: str | None = None
        self.checksums: dict[str, str] = {}
        self.trailers: dict[str, str] = {}
        self.verified = False

    # ------------------------------------------------------------ declared digests

    @staticmethod
    def _content_md5(grouped: Mapping[str, Sequence[str]]) -> bytes | None:
        value = _last(grouped, "content-md5")
        if value is None:
            return None
        digest = _strict_b64(value, 16)
        if digest is None:
            raise S3Error("InvalidDigest")
        return digest

    @staticmethod
    def _checksum_headers(grouped: Mapping[str, Sequence[str]]) -> dict[str, str]:
        declared: dict[str, str] = {}
        for algorithm, size in CHECKSUM_SIZES.items():
            value = _last(grouped, CHECKSUM_HEADER_PREFIX + algorithm)
            if value is None:
                continue
            if _strict_b64(value, size) is None:
                raise S3Error("InvalidRequest", f"Value for {CHECKSUM_HEADER_PREFIX}{algorithm} "
                                                "header is invalid.")
            declared[algorithm] = value
        if len(declared) > 1:
            raise S3Error("InvalidRequest", "Expecting a single x-amz-checksum- header. "
                                            "Multiple checksum Types are not allowed.")
        return declared

    def _trailer_checksums(self, names: Sequence[str]) -> dict[str, str]:
        """x-amz-trailer names -> algorithm. Only checksum trailers are defined by S3."""
        if names and not self._auth.payload_mode.endswith("trailer"):
            raise S3Error("InvalidRequest", "x-amz-trailer needs a STREAMING-...-TRAILER "
                                            "x-amz-content-sha256")
        result: dict[str, str] = {}
        for name in names:
            algorithm = name.removeprefix(CHECKSUM_HEADER_PREFIX)
            if not name.startswith(CHECKSUM_HEADER_PREFIX) or algorithm not in CHECKSUM_SIZES:
                raise S3Error("InvalidRequest", "The value specified in the x-amz-trailer "
                                                "header is not supported")
            result[name] = algorithm
        if len(result) > 1 or (result and self._declared):
            raise S3Error("InvalidRequest", "Expecting a single x-amz-checksum- header. "
                                            "Multiple checksum Types are not allowed.")
        return result

    # ------------------------------------------------------------ iteration

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        pieces = self._chunked() if self._streaming else self._plain()
        async for piece in pieces:
            yield piece
        self._finish()

    def _consume(self, piece: bytes) -> None:
        self.size += len(piece)
        if self._expected_size is not None and self.size > self._expected_size:
            raise S3Error("IncompleteBody", "The body is longer than its declared length.")
        self._md5.update(piece)
        if self._sha256 is not None:
            self._sha256.update(piece)
        for checksum in self._checksums.values():
            checksum.update(piece)

    async def _plain(self) -> AsyncIterator[bytes]:
        while True:
            piece = await self._stream.read(self._chunk_size)
            if not piece:
                return
            self._consume(piece)
            yield piece

    # ------------------------------------------------------------ aws-chunked

    async def _fill(self) -> None:
        # Small reads for framing lines: chunk data then mostly bypasses the buffer (`_take`
        # reads it straight from the stream), which saves a copy of every byte.
        data = await self._stream.read(min(self._chunk_size, 2 * MAX_LINE_BYTES))
        if data:
            self._buffer += data
        else:
            self._eof = True

    async def _line(self) -> bytes | None:
        """One CRLF-terminated line without its terminator; None at a clean EOF."""
        while True:
            end = self._buffer.find(b"\n", 0, MAX_LINE_BYTES + 2)
            if end >= 0:
                if end == 0 or self._buffer[end - 1] != 0x0D:
                    raise _malformed("line not terminated by CRLF")
                line = bytes(self._buffer[:end - 1])
                del self._buffer[:end + 1]
                return line
            if len(self._buffer) > MAX_LINE_BYTES:
                raise _malformed("line too long")
            if self._eof:
                if self._buffer:
                    raise S3Error("IncompleteBody")
                return None
            await self._fill()

    async def _take(self, n: int) -> bytes:
        """Up to n bytes of chunk data (at least one); served from the buffer first."""
        if self._buffer:
            piece = bytes(self._buffer[:n])
            del self._buffer[:n]
            return piece
        piece = await self._stream.read(n)
        if not piece:
            raise S3Error("IncompleteBody")
        return piece

    async def _chunked(self) -> AsyncIterator[bytes]:
        auth = self._auth
        signed = auth.payload_mode in ("streaming-signed", "streaming-signed-trailer")
        if signed and (auth.signing_key is None or auth.seed_signature is None
                       or auth.scope is None or auth.amz_date is None):
            raise S3Error("AccessDenied", "A signed aws-chunked payload needs a signature")
        previous = auth.seed_signature or ""
        while True:
            line = await self._line()
            if line is None:
                raise S3Error("IncompleteBody")
            size, signature = _chunk_header(line)
            if signed and signature is None:
                raise S3Error("SignatureDoesNotMatch", "The chunk carries no chunk-signature.")
            chunk_hash = hashlib.sha256() if signed else None
            left = size
            while left:
                piece = await self._take(min(left, self._chunk_size))
                left -= len(piece)
                if chunk_hash is not None:
                    chunk_hash.update(piece)
                self._consume(piece)
                yield piece
            if chunk_hash is not None:
                assert signature is not None
                previous = self._check_chunk(previous, chunk_hash.hexdigest(), signature)
            if size == 0:
                break
            if await self._line() != b"":
                raise _malformed("chunk data is not followed by CRLF")
        await self._read_trailers(previous, signed)
        if self._buffer:
            raise _malformed("data after the final chunk")
        while not self._eof:
            await self._fill()
            if self._buffer:
                raise _malformed("data after the final chunk")

    def _check_chunk(self, previous: str, chunk_sha256: str, provided: str) -> str:
        auth = self._auth
        assert auth.signing_key is not None and auth.scope is not None
        assert auth.amz_date is not None
        expected = sign(auth.signing_key,
                        chunk_string_to_sign(auth.amz_date, auth.scope, previous, chunk_sha256))
        if not signatures_equal(expected, provided):
            raise S3Error("SignatureDoesNotMatch", "The chunk signature we calculated does not "
                          "match the signature you provided.")
        return expected

    async def _read_trailers(self, previous: str, signed: bool) -> None:
        """Trailer lines after the final chunk, up to an empty line (or EOF)."""
        canonical: list[str] = []
        trailer_signature: str | None = None
        while True:
            line = await self._line()
            if not line:
                break
            try:
                text = line.decode("ascii")
            except UnicodeDecodeError:
                raise _malformed("non-ASCII trailer") from None
            name, sep, value = text.partition(":")
            name, value = name.strip().lower(), value.strip()
            if not sep or not name:
                raise _malformed("trailer line without ':'")
            if not self._auth.payload_mode.endswith("trailer"):
                raise _malformed("trailers without x-amz-trailer")
            if name == TRAILER_SIGNATURE:
                trailer_signature = value
                continue
            canonical.append(f"{name}:{value}\n")
            self.trailers[name] = value
        if signed and self._auth.payload_mode == "streaming-signed-trailer":
            if trailer_signature is None:
                raise S3Error("SignatureDoesNotMatch", "The trailer carries no "
                                                       "x-amz-trailer-signature.")
            auth = self._auth
            assert auth.signing_key is not None and auth.scope is not None
            assert auth.amz_date is not None
            digest = hashlib.sha256("".join(canonical).encode("ascii")).hexdigest()
            expected = sign(auth.signing_key,
                            trailer_string_to_sign(auth.amz_date, auth.scope, previous, digest))
            if not signatures_equal(expected, trailer_signature):
                raise S3Error("SignatureDoesNotMatch", "The trailer signature we calculated "
                              "does not match the signature you provided.")
        for name, algorithm in self._trailer_algorithms.items():
            received = self.trailers.get(name)
            if received is None:
                raise S3Error("IncompleteBody", f"The trailer {name} announced in x-amz-trailer "
                                                "was not sent.")
            if _strict_b64(received, CHECKSUM_SIZES[algorithm]) is None:
                raise S3Error("InvalidRequest", f"Value for {name} trailing header is invalid.")

    # ------------------------------------------------------------ the verdict

    def _finish(self) -> None:
        if self._expected_size is not None and self.size != self._expected_size:
            raise S3Error("IncompleteBody")
        if self._sha256 is not None:
            computed = self._sha256.hexdigest()
            self.sha256_hex = computed
            if computed != self._auth.expected_sha256:
                raise S3Error("XAmzContentSHA256Mismatch", extra={
                    "ClientComputedContentSHA256": self._auth.expected_sha256 or "",
                    "S3ComputedContentSHA256": computed})
        md5 = self._md5.digest()
        if self._expected_md5 is not None and md5 != self._expected_md5:
            raise S3Error("BadDigest", extra={
                "ExpectedDigest": base64.b64encode(self._expected_md5).decode("ascii"),
                "CalculatedDigest": base64.b64encode(md5).decode("ascii")})
        computed_checksums = {name: checksum.b64() for name, checksum in self._checksums.items()}
        claimed = dict(self._declared)
        for name, algorithm in self._trailer_algorithms.items():
            claimed[algorithm] = self.trailers[name]
        for algorithm, value in claimed.items():
            if computed_checksums[algorithm] != value:
                raise S3Error("BadDigest", f"The {algorithm.upper()} you specified did not "
                                           "match the calculated checksum.")
        self.md5_hex = md5.hex()
        self.checksums = computed_checksums
        self.verified = True


def _chunk_header(line: bytes) -> tuple[int, str | None]:
    """'hex-size[;chunk-signature=sig][;other-ext]' -> (size, signature or None)."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise _malformed("non-ASCII chunk header") from None
    size_text, *extensions = text.split(";")
    size_text = size_text.strip()
    if not 0 < len(size_text) <= 16 or any(c not in "0123456789abcdefABCDEF" for c in size_text):
        raise _malformed(f"bad chunk size {size_text[:20]!r}")
    signature: str | None = None
    for extension in extensions:
        name, _, ext_value = extension.partition("=")
        if name.strip() == "chunk-signature":
            signature = ext_value.strip()
    return int(size_text, 16), signature
