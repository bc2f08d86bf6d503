"""The WebSocket handshake's keys: the accept digest, a fresh client key, the check of a 101."""

from __future__ import annotations

import base64

from lbcdn.demo.websocket import valid_client_key
from lbcdn.http.websocket import accept_key, accepted, new_key


def test_accept_key_matches_rfc_example() -> None:
    # RFC 6455 section 1.3.
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_new_keys_are_valid_and_fresh() -> None:
    keys = {new_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert valid_client_key(key.decode()) and len(base64.b64decode(key)) == 16


def test_a_101_is_accepted_only_with_the_one_right_digest() -> None:
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    good = (b"Sec-WebSocket-Accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    assert accepted(key, [(b"Upgrade", b"websocket"), good])
    assert accepted(key, [(b"sec-websocket-accept", b" s3pPLMBiTxaQ9kYGzzhZRbK+xOo= ")])
    assert not accepted(key, [])
    assert not accepted(key, [(b"Sec-WebSocket-Accept", b"AAAAAAAAAAAAAAAAAAAAAAAAAAA=")])
    assert not accepted(key, [good, good])
    assert not accepted(new_key(), [good])
