"""The RFC 6455 opening handshake's keys, without I/O: what a WebSocket client sends
(Sec-WebSocket-Key) and what it checks in the server's 101 (Sec-WebSocket-Accept).

The edge plays that client towards an HTTP/1.1 backend when a viewer opens a WebSocket over
HTTP/2 (RFC 8441): such a viewer sends no key and checks no accept, so the edge makes the key
and checks the answer itself. The demo backend's /ws endpoint answers keys with `accept_key`.
"""

from __future__ import annotations

import base64
import hashlib
import os

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value answering a client's Sec-WebSocket-Key."""
    digest = hashlib.sha1((key + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def new_key() -> bytes:
    """A client's Sec-WebSocket-Key: 16 random bytes, base64 (RFC 6455 4.1)."""
    return base64.b64encode(os.urandom(16))


def accepted(key: bytes, fields: list[tuple[bytes, bytes]]) -> bool:
    """Whether a 101's fields answer `key` (RFC 6455 4.2.2: exactly one Sec-WebSocket-Accept,
    the key's digest); a client that gets anything else fails the connection (4.1)."""
    values = [v.strip() for n, v in fields if n.lower() == b"sec-websocket-accept"]
    return values == [accept_key(key.decode("ascii")).encode("ascii")]
