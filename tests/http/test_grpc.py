"""lbcdn.http.grpc: the hand-encoded health messages agree with protobuf's own encoding (the
grpcio-health-checking package), and errors map to the gRPC codes clients expect."""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2

from lbcdn.http import grpc


@pytest.mark.parametrize("service", ["", "app", "pkg.Service", "x" * 300])
def test_check_request_is_protobufs_encoding(service: str) -> None:
    framed = grpc.check_request(service)
    message = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    assert framed == b"\0" + len(message).to_bytes(4, "big") + message


@pytest.mark.parametrize("status", [0, 1, 2, 3])
def test_check_response_status_reads_protobufs_encoding(status: int) -> None:
    message = health_pb2.HealthCheckResponse(status=status).SerializeToString()
    assert grpc.check_response_status(grpc.frame(message)) == status


@pytest.mark.parametrize("data", [b"", b"\0\0\0\0", b"\1\0\0\0\0", b"\0\0\0\0\2\x08",
                                  b"\0\0\0\0\1\x08", b"\0\0\0\0\2\x0b\x00"])
def test_a_broken_check_response_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        grpc.check_response_status(data)


@pytest.mark.parametrize("http, code", [(502, 14), (503, 14), (504, 4), (408, 4), (403, 7),
                                        (413, 8), (404, 12), (500, 2)])
def test_error_status(http: int, code: int) -> None:
    assert grpc.error_status(http) == code


def test_error_fields_and_content_types() -> None:
    assert grpc.error_fields(503, "no target available: 100%") == [
        (b"content-type", b"application/grpc"), (b"grpc-status", b"14"),
        (b"grpc-message", b"no target available: 100%25")]
    assert grpc.is_grpc_request([(b"Content-Type", b"application/grpc+proto")])
    assert grpc.is_grpc_request([(b"content-type", b"application/grpc")])
    assert not grpc.is_grpc_request([(b"content-type", b"application/grpc-web")])
    assert not grpc.is_grpc_request([(b"content-type", b"text/html")])
    assert not grpc.is_grpc_request([])
