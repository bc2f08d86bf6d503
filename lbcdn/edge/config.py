"""Configuration of an HTTP listener (one entry of `listeners`): address, limits, client
address handling and TLS.

Declared here, below the root schema (lbcdn.config.schema), so the edge reads it without
importing the schema. Data only: imports nothing of the edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lbcdn.configkit.fields import REQUIRED, doc
from lbcdn.configkit.limits import limit_field
from lbcdn.tls import ListenerTlsConfig


XffMode = Literal["append", "preserve", "remove"]


@dataclass(frozen=True)
class ListenerConfig:
    name: str = doc("Listener name, used in logs and metrics.", REQUIRED)
    port: int = doc("TCP port to listen on.", REQUIRED, lo=1, hi=65535)
    address: str = doc("Address to bind.", "0.0.0.0")
    header_timeout_s: float = limit_field("header_timeout_s")
    idle_timeout_s: float = limit_field("idle_timeout_s")
    body_timeout_s: float = limit_field("body_timeout_s")
    max_request_line_bytes: int = limit_field("max_request_line_bytes")
    max_header_bytes: int = limit_field("max_header_bytes")
    max_headers_total_bytes: int = limit_field("max_headers_total_bytes")
    max_header_count: int = limit_field("max_header_count")
    x_forwarded_for: XffMode = doc(
        "X-Forwarded-For handling: append the client address, preserve as received, "
        "or remove.", "append")
    request_id_header: str = doc(
        "Header carrying the request id; generated when the client sent none.", "X-Request-Id")
    backlog: int = doc("listen() backlog.", 1024, lo=1, hi=65535)
    max_connections: int | None = doc(
        "Most client connections open at once on this listener (per worker with --workers); "
        "unset: as many as the file descriptor limit holds. At the cap a connection idle for "
        "a second or more is closed to make room; with none, the new one is answered 503 with "
        "Retry-After and closed. Lowered at start (with a warning) when the file descriptor "
        "limit cannot hold them, each with an upstream connection.", None, lo=1, hi=1_000_000)
    tls: ListenerTlsConfig | None = doc("Serve HTTPS on this listener.", None)
