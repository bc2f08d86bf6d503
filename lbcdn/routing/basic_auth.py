"""HTTP basic authentication of a route (RFC 7617) against bcrypt hashes from the config.

Rules:
- `Authorization: Basic base64(user:password)`; the scheme name is case-insensitive, the user
  name is everything before the first `:` (RFC 7617 2). Anything else (no header, another
  scheme, bad base64, unknown user, wrong password) is a failure: 401 with
  `WWW-Authenticate: Basic realm="...", charset="UTF-8"`.
- bcrypt is slow on purpose (tens of milliseconds), so a verdict is remembered per exact
  header value: a client repeating its credentials pays a dict lookup, not bcrypt. Successes
  and failures are kept apart, each bounded (lbcdn.memo), so a flood of wrong passwords
  cannot push the good ones out. A verdict not yet known is worked out by `verify`, which the
  edge runs on a thread (bcrypt releases the GIL), never on the event loop.
- An unknown user is checked against a dummy hash too, so the answer takes as long as a
  wrong password (no user enumeration by timing).
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

import bcrypt

from lbcdn.memo import remember
from lbcdn.routing.config import BasicAuthConfig

VERDICTS_MAX: Final = 1024
_DUMMY: Final = bcrypt.hashpw(b"lbcdn", bcrypt.gensalt(rounds=4))


class BasicAuth:
    __slots__ = ("_hashes", "challenge", "_good", "_bad")

    def __init__(self, config: BasicAuthConfig) -> None:
        self._hashes = {user.encode(): hashed.encode() for user, hashed in config.users.items()}
        realm = config.realm.replace("\\", "\\\\").replace('"', '\\"')
        self.challenge = f'Basic realm="{realm}", charset="UTF-8"'.encode()
        self._good: dict[bytes, bool] = {}
        self._bad: dict[bytes, bool] = {}

    def known(self, authorization: bytes | None) -> bool | None:
        """The verdict on this header value if it is already known (a missing header: False)."""
        if authorization is None:
            return False
        if authorization in self._good:
            return True
        if authorization in self._bad:
            return False
        return None

    def verify(self, authorization: bytes) -> bool:
        """Check the credentials (slow: bcrypt) and remember the verdict."""
        ok = self._check(authorization)
        remember(self._good if ok else self._bad, authorization, True, VERDICTS_MAX)
        return ok

    def _check(self, authorization: bytes) -> bool:
        scheme, _, encoded = authorization.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        if not sep:
            return False
        hashed = self._hashes.get(user)
        ok = bcrypt.checkpw(password, hashed if hashed is not None else _DUMMY)
        return ok and hashed is not None
