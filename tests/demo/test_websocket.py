"""The WebSocket codec: masking, frame lengths, and the protocol errors the
server must answer with a close code."""

from __future__ import annotations

import pytest

from lbcdn.demo.websocket import (CLOSE_INVALID_DATA, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG,
                                  OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_TEXT, Frame,
                                  FrameDecoder, WebSocketError, apply_mask, encode_frame,
                                  valid_client_key)

MASK = b"\x37\xfa\x21\x3d"


def test_client_key_must_be_16_bytes_base64() -> None:
    assert valid_client_key("dGhlIHNhbXBsZSBub25jZQ==")
    assert not valid_client_key("c2hvcnQ=")
    assert not valid_client_key("!" * 24)


def test_mask_is_its_own_inverse_and_matches_rfc_example() -> None:
    # RFC 6455 5.7: "Hello" masked with 37 fa 21 3d.
    assert apply_mask(b"Hello", MASK) == bytes.fromhex("7f9f4d5158")
    data = bytes(range(256)) * 3 + b"x"
    assert apply_mask(apply_mask(data, MASK), MASK) == data
    assert apply_mask(b"", MASK) == b""


@pytest.mark.parametrize("size, header_len", [(0, 2), (125, 2), (126, 4), (65535, 4),
                                              (65536, 10), (70000, 10)])
def test_lengths_roundtrip_7_16_64_bit(size: int, header_len: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    unmasked = encode_frame(OP_BINARY, payload)
    assert len(unmasked) == header_len + size
    wire = encode_frame(OP_BINARY, payload, mask=MASK)
    decoder = FrameDecoder()
    # Fed a byte at a time at the start, then the rest, to cross every boundary of the header.
    frames = []
    for i in range(min(12, len(wire))):
        frames += decoder.feed(wire[i:i + 1])
    frames += decoder.feed(wire[12:])
    assert frames == [Frame(True, OP_BINARY, payload)]


def test_several_frames_in_one_feed_and_fragments_preserved() -> None:
    wire = (encode_frame(OP_TEXT, b"he", fin=False, mask=MASK)
            + encode_frame(OP_PING, b"p", mask=MASK)
            + encode_frame(OP_CONTINUATION, b"llo", mask=MASK))
    assert FrameDecoder().feed(wire) == [Frame(False, OP_TEXT, b"he"), Frame(True, OP_PING, b"p"),
                                         Frame(True, OP_CONTINUATION, b"llo")]


def _error(wire: bytes, max_payload: int = 1 << 20) -> int:
    with pytest.raises(WebSocketError) as info:
        FrameDecoder(max_payload).feed(wire)
    return info.value.code


def test_protocol_errors() -> None:
    assert _error(encode_frame(OP_TEXT, b"unmasked")) == CLOSE_PROTOCOL_ERROR
    assert _error(bytes([0x80 | 0x40 | OP_TEXT, 0x80]) + MASK) == CLOSE_PROTOCOL_ERROR  # RSV1
    assert _error(bytes([0x83, 0x80]) + MASK) == CLOSE_PROTOCOL_ERROR  # opcode 3
    assert _error(encode_frame(OP_PING, b"x" * 126, mask=MASK)) == CLOSE_PROTOCOL_ERROR
    assert _error(encode_frame(OP_PING, b"x", fin=False, mask=MASK)) == CLOSE_PROTOCOL_ERROR
    assert _error(encode_frame(OP_CONTINUATION, b"x", mask=MASK)) == CLOSE_PROTOCOL_ERROR
    two_starts = (encode_frame(OP_TEXT, b"a", fin=False, mask=MASK)
                  + encode_frame(OP_BINARY, b"b", mask=MASK))
    assert _error(two_starts) == CLOSE_PROTOCOL_ERROR
    assert _error(encode_frame(OP_CLOSE, b"\x03", mask=MASK)) == CLOSE_PROTOCOL_ERROR
    assert _error(encode_frame(OP_BINARY, b"x" * 100, mask=MASK), max_payload=99) == CLOSE_TOO_BIG


def test_text_must_be_utf8_even_split_across_fragments() -> None:
    assert _error(encode_frame(OP_TEXT, b"\xff", mask=MASK)) == CLOSE_INVALID_DATA
    snowman = "☃".encode()
    ok = (encode_frame(OP_TEXT, snowman[:1], fin=False, mask=MASK)
          + encode_frame(OP_CONTINUATION, snowman[1:], mask=MASK))
    assert len(FrameDecoder().feed(ok)) == 2
    cut = (encode_frame(OP_TEXT, snowman[:1], fin=False, mask=MASK)
           + encode_frame(OP_CONTINUATION, b"", mask=MASK))
    assert _error(cut) == CLOSE_INVALID_DATA
