"""RFC 6455 WebSocket pieces for the demo backend's `/ws` echo endpoint, without I/O.

Bytes in, frames out (`FrameDecoder.feed`); frames in, bytes out (`encode_frame`). The backend
protocol owns the socket and only moves bytes between the two.

Rules:
- The decoder plays the server: client frames must be masked, reserved bits must be clear,
  control frames must be short and unfragmented, continuation frames must continue a message,
  text messages must be valid UTF-8. A breach raises `WebSocketError` carrying the close code
  the server should send (1002 protocol error, 1007 bad data, 1009 too big).
- Frames are echoed one by one (fragmentation preserved), so the decoder never joins a message.
"""

from __future__ import annotations

import base64
import codecs
from dataclasses import dataclass

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_DATA_OPS = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY})
_CONTROL_OPS = frozenset({OP_CLOSE, OP_PING, OP_PONG})

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009


def valid_client_key(key: str) -> bool:
    """RFC 6455 4.1: the key is 16 random bytes, base64-encoded (24 characters)."""
    if len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


def apply_mask(data: bytes, mask: bytes) -> bytes:
    """XOR `data` with the 4-byte `mask` repeated (masking and unmasking are the same).

    Done as one big-integer XOR: a per-byte Python loop would make 64 KiB frames cost
    milliseconds."""
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True,
                 mask: bytes | None = None) -> bytes:
    """One frame on the wire. Servers send unmasked frames; tests pass `mask` to play a client."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 1 << 16:
        head = bytes((first, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, mask_bit | 127)) + n.to_bytes(8, "big")
    if mask is not None:
        return head + mask + apply_mask(payload, mask)
    return head + payload


class WebSocketError(Exception):
    """The peer broke RFC 6455; `code` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Frame:
    fin: bool
    opcode: int
    payload: bytes


class FrameDecoder:
    """Incremental decoder of client-to-server frames."""

    def __init__(self, max_payload: int = 16 << 20) -> None:
        self._buf = bytearray()
        self._max_payload = max_payload
        # Opcode of the fragmented message in progress (None between messages) and the UTF-8
        # checker of a text message, which must survive frame boundaries.
        self._message_op: int | None = None
        self._utf8: codecs.IncrementalDecoder | None = None

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while True:
            frame = self._next()
            if frame is None:
                return frames
            frames.append(frame)

    def _next(self) -> Frame | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        fin = bool(b0 & 0x80)
        opcode = b0 & 0x0F
        if b0 & 0x70:
            raise WebSocketError(CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension")
        if opcode not in _DATA_OPS and opcode not in _CONTROL_OPS:
            raise WebSocketError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if not b1 & 0x80:
            raise WebSocketError(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        length = b1 & 0x7F
        pos = 2
        if length == 126:
            if len(buf) < 4:
                return None
            length = int.from_bytes(buf[2:4], "big")
            pos = 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length = int.from_bytes(buf[2:10], "big")
            if length >> 63:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "64-bit length with the top bit set")
            pos = 10
        if opcode in _CONTROL_OPS and (length > 125 or not fin):
            raise WebSocketError(CLOSE_PROTOCOL_ERROR, "control frames must be short and whole")
        if length > self._max_payload:
            raise WebSocketError(CLOSE_TOO_BIG, f"frame of {length} bytes is too big")
        end = pos + 4 + length
        if len(buf) < end:
            return None
        payload = apply_mask(bytes(buf[pos + 4:end]), bytes(buf[pos:pos + 4]))
        del buf[:end]
        if opcode in _DATA_OPS:
            self._track_message(fin, opcode, payload)
        elif opcode == OP_CLOSE:
            _check_close_payload(payload)
        return Frame(fin, opcode, payload)

    def _track_message(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode == OP_CONTINUATION:
            if self._message_op is None:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "continuation without a message")
        else:
            if self._message_op is not None:
                raise WebSocketError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            self._message_op = opcode
            self._utf8 = codecs.getincrementaldecoder("utf-8")() if opcode == OP_TEXT else None
        if self._utf8 is not None:
            try:
                self._utf8.decode(payload, final=fin)
            except UnicodeDecodeError as exc:
                raise WebSocketError(CLOSE_INVALID_DATA, "text message is not UTF-8") from exc
        if fin:
            self._message_op = None
            self._utf8 = None


def _check_close_payload(payload: bytes) -> None:
    # Empty, or a 2-byte code plus an optional UTF-8 reason (RFC 6455 5.5.1).
    if len(payload) == 1:
        raise WebSocketError(CLOSE_PROTOCOL_ERROR, "close payload of one byte")
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebSocketError(CLOSE_INVALID_DATA, "close reason is not UTF-8") from exc
