"""The few pieces of gRPC that lbcdn itself speaks (pure; no gRPC library).

- gRPC health checks (`grpc.health.v1.Health/Check`): the request and response messages,
  encoded by hand (protobuf: HealthCheckRequest is field 1 `service` (string);
  HealthCheckResponse is field 1 `status` (enum, SERVING = 1)), in gRPC's length-prefixed
  message framing (1 byte compressed flag, 4 bytes big-endian length);
- errors of lbcdn itself on a gRPC request (content-type application/grpc...): a gRPC client
  reads its status from the grpc-status trailer, not from the HTTP status or an HTML page, so
  such an error is a "trailers-only" response: HTTP 200, content-type application/grpc,
  grpc-status and grpc-message, no body. `error_status` maps the HTTP status lbcdn would have
  sent to the gRPC code the gRPC HTTP mapping (doc/http-grpc-status-mapping.md) gives, except
  that a timeout is DEADLINE_EXCEEDED, which is what it is.
"""

from __future__ import annotations

import struct
from typing import Final

HEALTH_CHECK_PATH: Final = b"/grpc.health.v1.Health/Check"
SERVING: Final = 1
STATUS_NAMES: Final = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}

OK: Final = 0
UNKNOWN: Final = 2
DEADLINE_EXCEEDED: Final = 4
PERMISSION_DENIED: Final = 7
RESOURCE_EXHAUSTED: Final = 8
UNIMPLEMENTED: Final = 12
INTERNAL: Final = 13
UNAVAILABLE: Final = 14
UNAUTHENTICATED: Final = 16

# HTTP status of an error of ours -> gRPC code
_BY_HTTP: Final = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED,
                   404: UNIMPLEMENTED, 408: DEADLINE_EXCEEDED, 413: RESOURCE_EXHAUSTED,
                   429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE,
                   504: DEADLINE_EXCEEDED}


def is_grpc(content_type: bytes | None) -> bool:
    """Is this a gRPC request's content-type (`application/grpc`, `application/grpc+proto`,
    ...)?"""
    if content_type is None:
        return False
    ct = content_type.lower()
    return ct == b"application/grpc" or ct.startswith((b"application/grpc+",
                                                       b"application/grpc;"))


def is_grpc_request(headers: list[tuple[bytes, bytes]]) -> bool:
    """Does a request with these fields expect gRPC's error statuses (its content-type)?"""
    for name, value in headers:
        if len(name) == 12 and name.lower() == b"content-type":
            return is_grpc(value)
    return False


def error_status(http_status: int) -> int:
    """The gRPC code for an error lbcdn answers with `http_status`."""
    return _BY_HTTP.get(http_status, UNKNOWN)


def error_fields(http_status: int, message: str) -> list[tuple[bytes, bytes]]:
    """The fields of the trailers-only response for that error (its status is 200)."""
    return [(b"content-type", b"application/grpc"),
            (b"grpc-status", str(error_status(http_status)).encode()),
            (b"grpc-message", percent_encode(message))]


def percent_encode(text: str) -> bytes:
    """grpc-message is percent-encoded UTF-8 (only printable ASCII but '%' goes as it is)."""
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7e and b != 0x25 else b"%%%02X" % b
                    for b in text.encode())


def frame(message: bytes) -> bytes:
    """One uncompressed gRPC length-prefixed message."""
    return struct.pack(">BI", 0, len(message)) + message


def check_request(service: str) -> bytes:
    """A framed HealthCheckRequest for `service` ("" is the server as a whole)."""
    name = service.encode()
    body = b"" if not name else b"\x0a" + _varint(len(name)) + name
    return frame(body)


def check_response_status(data: bytes) -> int:
    """The `status` of a framed HealthCheckResponse (0 when the field is absent, protobuf's
    default); ValueError when `data` is not one."""
    if len(data) < 5:
        raise ValueError("short gRPC message")
    flag, size = struct.unpack(">BI", data[:5])
    if flag != 0:
        raise ValueError("compressed gRPC message")
    msg = data[5:]
    if len(msg) != size:
        raise ValueError("gRPC message length does not match")
    status = 0
    pos = 0
    while pos < len(msg):
        key, pos = _read_varint(msg, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(msg, pos)
            if field == 1:
                status = value
        elif wire == 2:
            length, pos = _read_varint(msg, pos)
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(msg):
            raise ValueError("truncated protobuf message")
    return status


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7f
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated protobuf varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7f) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
