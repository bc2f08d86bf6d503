"""Checksums S3 keeps with an object (pure): which one a multipart upload uses, how the parts'
checksums make the object's, and the headers that carry them.

Rules (S3 "Checking object integrity"):
- An object keeps the checksum its upload was sent with (PutObject, or the algorithm
  CreateMultipartUpload declared), stored as the headers S3 returns:
  `x-amz-checksum-<algorithm>` and `x-amz-checksum-type` (FULL_OBJECT or COMPOSITE).
- A multipart upload's checksum is COMPOSITE (the checksum of the parts' binary checksums,
  with `-<number of parts>` appended) or FULL_OBJECT (the CRC of the whole object, combined
  from the parts' CRCs and sizes without reading the data). CRC32 and CRC32C allow both and
  default to COMPOSITE; CRC64NVME is FULL_OBJECT only; SHA1 and SHA256 are COMPOSITE only.
- A stored checksum is returned on GET/HEAD only when the client asks for it
  (`x-amz-checksum-mode: ENABLED`) and the whole object is read: a range has no checksum.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence

from awscrt import checksums as crt_checksums

from lbcdn.bucket.errors import S3Error
from lbcdn.bucket.payload import CHECKSUM_HEADER_PREFIX, CHECKSUM_SIZES, Checksum

ALGORITHM_HEADER = "x-amz-checksum-algorithm"
TYPE_HEADER = "x-amz-checksum-type"
FULL_OBJECT = "FULL_OBJECT"
COMPOSITE = "COMPOSITE"
_COMBINE = {"crc32": crt_checksums.combine_crc32, "crc32c": crt_checksums.combine_crc32c,
            "crc64nvme": crt_checksums.combine_crc64nvme}

_XML_NAMES = {"crc32": "ChecksumCRC32", "crc32c": "ChecksumCRC32C",
              "crc64nvme": "ChecksumCRC64NVME", "sha1": "ChecksumSHA1",
              "sha256": "ChecksumSHA256"}


def upload_checksum(algorithm: str | None, type_: str | None) -> dict[str, str]:
    """The checksum headers a CreateMultipartUpload stores (and echoes), from its
    x-amz-checksum-algorithm and x-amz-checksum-type; InvalidRequest for a pair S3 refuses."""
    if algorithm is None:
        if type_ is not None:
            raise S3Error("InvalidRequest", "The x-amz-checksum-type header can only be used "
                                            "with the x-amz-checksum-algorithm header.")
        return {}
    alg = algorithm.strip().lower()
    if alg not in CHECKSUM_SIZES:
        raise S3Error("InvalidRequest", f"Checksum algorithm {algorithm!r} is not supported.")
    kind = (type_ or (FULL_OBJECT if alg == "crc64nvme" else COMPOSITE)).strip().upper()
    if kind not in (FULL_OBJECT, COMPOSITE):
        raise S3Error("InvalidRequest", f"Checksum type {type_!r} is not supported.")
    allowed = ((FULL_OBJECT,) if alg == "crc64nvme" else (FULL_OBJECT, COMPOSITE)
               if alg in _COMBINE else (COMPOSITE,))
    if kind not in allowed:
        raise S3Error("InvalidRequest", f"The {alg.upper()} checksum algorithm does not "
                                        f"support the {kind} checksum type.")
    return {ALGORITHM_HEADER: alg.upper(), TYPE_HEADER: kind}


def object_checksum(checksums: Mapping[str, str]) -> dict[str, str]:
    """The checksum headers of an object uploaded in one request, from the checksums its
    body reader computed and verified (algorithm -> base64)."""
    if not checksums:
        return {}
    out = part_checksum(checksums)
    out[TYPE_HEADER] = FULL_OBJECT
    return out


def part_checksum(checksums: Mapping[str, str]) -> dict[str, str]:
    """The checksum headers of a part (no type: a part is one piece)."""
    return {CHECKSUM_HEADER_PREFIX + alg: value for alg, value in sorted(checksums.items())}


def multipart_checksum(upload_headers: Mapping[str, str],
                       parts: Sequence[tuple[Mapping[str, str], int]]) -> dict[str, str]:
    """The checksum headers of a completed upload, from the upload's declared algorithm and
    each part's (checksums, size); none when no algorithm was declared or a part lacks it."""
    algorithm = upload_headers.get(ALGORITHM_HEADER)
    if algorithm is None:
        return {}
    alg = algorithm.lower()
    kind = upload_headers.get(TYPE_HEADER, COMPOSITE)
    values = [checksums.get(alg) for checksums, _ in parts]
    if not parts or any(v is None for v in values):
        return {}
    raw = [base64.b64decode(v or "") for v in values]
    if kind == FULL_OBJECT:
        combine = _COMBINE[alg]
        crc = int.from_bytes(raw[0], "big")
        for digest, (_, size) in zip(raw[1:], parts[1:]):
            crc = int(combine(crc, int.from_bytes(digest, "big"), size))
        value = base64.b64encode(crc.to_bytes(CHECKSUM_SIZES[alg], "big")).decode("ascii")
    else:
        outer = Checksum(alg)
        outer.update(b"".join(raw))
        value = f"{outer.b64()}-{len(parts)}"
    return {CHECKSUM_HEADER_PREFIX + alg: value, TYPE_HEADER: kind}


def xml_fields(stored: Mapping[str, str]) -> list[tuple[str, str]]:
    """The checksum as S3's XML elements (ChecksumCRC32 ..., ChecksumType), in that order."""
    out = [(_XML_NAMES[k[len(CHECKSUM_HEADER_PREFIX):]], v) for k, v in sorted(stored.items())
           if k[len(CHECKSUM_HEADER_PREFIX):] in _XML_NAMES and is_checksum_header(k)]
    if out and TYPE_HEADER in stored:
        out.append(("ChecksumType", stored[TYPE_HEADER]))
    return out


def claimed_checksums(headers: Mapping[str, str]) -> dict[str, str]:
    """The x-amz-checksum-<algorithm> headers of a request (algorithm -> base64). On
    CompleteMultipartUpload they claim the object's checksum, not the XML body's."""
    out = {}
    for name, value in headers.items():
        alg = name.lower().removeprefix(CHECKSUM_HEADER_PREFIX)
        if alg != name.lower() and alg in CHECKSUM_SIZES:
            out[alg] = value.strip()
    return out


def check_claimed(stored: Mapping[str, str], claimed: Mapping[str, str]) -> None:
    """A Complete's claimed checksum against the one the parts make (`multipart_checksum`):
    InvalidRequest when the upload has none of that algorithm, BadDigest when it differs (a
    composite value may be claimed with or without its `-N`)."""
    for alg, value in claimed.items():
        have = stored.get(CHECKSUM_HEADER_PREFIX + alg)
        if have is None:
            raise S3Error("InvalidRequest", f"The upload was not created with the "
                                            f"{alg.upper()} checksum algorithm.")
        if value.split("-")[0] != have.split("-")[0]:
            raise S3Error("BadDigest", f"The {alg.upper()} you specified did not match the "
                                       "calculated checksum.")


def is_checksum_header(name: str) -> bool:
    """A stored header that is the checksum (returned only when asked for)."""
    return name.startswith(CHECKSUM_HEADER_PREFIX)


def checksum_headers(stored: Mapping[str, str]) -> dict[str, str]:
    """The object's checksum headers as sent on a response (algorithm and type, no upload
    bookkeeping)."""
    return {k: v for k, v in stored.items() if is_checksum_header(k) and k != ALGORITHM_HEADER}
