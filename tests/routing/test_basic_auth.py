"""Basic auth: RFC 7617 parsing, bcrypt verification, verdicts remembered per header value
(successes and failures apart, so a flood of wrong ones cannot evict the good)."""

from __future__ import annotations

import base64

import bcrypt
import pytest

from lbcdn.routing import basic_auth
from lbcdn.routing.basic_auth import BasicAuth
from lbcdn.routing.config import BasicAuthConfig

HASH = bcrypt.hashpw(b"s3cret:x", bcrypt.gensalt(rounds=4)).decode()


def basic(userpass: bytes, scheme: bytes = b"Basic") -> bytes:
    return scheme + b" " + base64.b64encode(userpass)


@pytest.fixture
def auth() -> BasicAuth:
    return BasicAuth(BasicAuthConfig(users={"ops": HASH}, realm='a "b"'))


def test_right_credentials_pass_and_the_password_may_hold_colons(auth: BasicAuth) -> None:
    assert auth.verify(basic(b"ops:s3cret:x"))
    assert auth.verify(basic(b"ops:s3cret:x", b"bAsIc"))


@pytest.mark.parametrize("header", [
    basic(b"ops:wrong"), basic(b"nobody:s3cret:x"), basic(b"ops"), basic(b"ops:s3cret:x",
                                                                        b"Bearer"),
    b"Basic !!!notbase64", b"Basic", b"",
])
def test_anything_else_fails(auth: BasicAuth, header: bytes) -> None:
    assert not auth.verify(header)


def test_missing_header_is_known_to_fail(auth: BasicAuth) -> None:
    assert auth.known(None) is False


def test_verdicts_are_remembered_so_bcrypt_runs_once(auth: BasicAuth,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    good, bad = basic(b"ops:s3cret:x"), basic(b"ops:nope")
    assert auth.known(good) is None
    assert auth.verify(good) and not auth.verify(bad)
    calls = []
    monkeypatch.setattr(basic_auth.bcrypt, "checkpw", lambda *a: calls.append(a) or True)
    assert auth.known(good) is True and auth.known(bad) is False
    assert calls == []


def test_a_flood_of_wrong_credentials_does_not_evict_the_good(auth: BasicAuth,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    good = basic(b"ops:s3cret:x")
    auth.verify(good)
    monkeypatch.setattr(basic_auth.bcrypt, "checkpw", lambda *a: False)
    for i in range(basic_auth.VERDICTS_MAX * 2):
        auth.verify(basic(b"ops:%d" % i))
    assert auth.known(good) is True


def test_challenge_quotes_the_realm(auth: BasicAuth) -> None:
    assert auth.challenge == b'Basic realm="a \\"b\\"", charset="UTF-8"'
