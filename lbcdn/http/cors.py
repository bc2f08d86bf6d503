"""CORS decisions for a route (the Fetch standard's CORS protocol, the way CloudFront's response
headers policies answer it): pure, from the request's Origin and preflight fields to the
response fields.

- A preflight is an OPTIONS request with Origin and Access-Control-Request-Method. It is
  answered here (204): with Access-Control-Allow-Origin/-Methods/-Headers/-Max-Age(/-Credentials)
  when the origin, the method and every requested header are allowed; with none of them (403)
  otherwise, which the browser reports as a CORS failure.
- Any other request from an allowed Origin gets Access-Control-Allow-Origin (and -Credentials,
  -Expose-Headers) on its response; from another origin, none.
- Origins match exactly, ASCII case-insensitively (scheme://host[:port] as the browser
  serializes it); `*` allows any. With credentials the allowed origin is echoed, since the Fetch
  standard refuses `*` there (the config loader refuses `*` with credentials at all, so a
  credentialed response is only ever for a listed origin).
- `Vary: Origin` is on every answer whose fields depend on the Origin (not for `*` without
  credentials), so a shared cache keeps one variant per origin.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

Fields = list[tuple[bytes, bytes]]

ACAO: Final = b"Access-Control-Allow-Origin"
# the response fields a CORS block owns (lower case), replaced on the origin's responses when
# the block overrides them
OWNED: Final = frozenset({
    b"access-control-allow-origin", b"access-control-allow-credentials",
    b"access-control-expose-headers", b"access-control-allow-methods",
    b"access-control-allow-headers", b"access-control-max-age"})
_PREFLIGHT_VARY: Final = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


def _listed(values: Iterable[str]) -> bytes:
    return ", ".join(values).encode()


class Cors:
    __slots__ = ("any_origin", "origins", "methods", "allow_methods", "any_header", "headers",
                 "allow_headers", "expose", "max_age", "credentials")

    def __init__(self, allow_origins: Iterable[str], allow_methods: Iterable[str],
                 allow_headers: Iterable[str], expose_headers: Iterable[str],
                 max_age_s: int | None, allow_credentials: bool) -> None:
        origins = [o.strip().lower() for o in allow_origins]
        self.any_origin = "*" in origins
        if self.any_origin and allow_credentials:
            raise ValueError('"*" cannot allow credentials (the Fetch standard refuses it); '
                             'list the origins')
        self.origins = frozenset(o.encode() for o in origins if o != "*")
        methods = [m.strip().upper() for m in allow_methods]
        self.methods = frozenset(m.encode() for m in methods)
        self.allow_methods = _listed(methods)
        headers = [h.strip().lower() for h in allow_headers]
        self.any_header = "*" in headers
        self.headers = frozenset(h.encode() for h in headers if h != "*")
        self.allow_headers = _listed(h for h in allow_headers if h.strip() != "*")
        self.expose = _listed(expose_headers)
        self.max_age = max_age_s
        self.credentials = allow_credentials

    def _allow_origin(self, origin: bytes | None) -> bytes | None:
        """The Access-Control-Allow-Origin value for this Origin, None if not allowed."""
        if origin is None:
            return None
        if self.any_origin:
            return b"*"
        return origin if origin.strip().lower() in self.origins else None

    def _vary(self) -> Fields:
        return [] if self.any_origin else [(b"Vary", b"Origin")]

    def preflight(self, origin: bytes, request_method: bytes,
                  request_headers: bytes | None) -> tuple[int, Fields]:
        """The answer to a preflight: (status, fields)."""
        vary = [(b"Vary", _PREFLIGHT_VARY)]
        allowed = self._allow_origin(origin)
        if allowed is None or request_method.strip().upper() not in self.methods:
            return 403, vary
        asked = [h.strip() for h in (request_headers or b"").split(b",") if h.strip()]
        if not self.any_header and any(h.lower() not in self.headers for h in asked):
            return 403, vary
        fields = [(ACAO, allowed)]
        if self.credentials:
            fields.append((b"Access-Control-Allow-Credentials", b"true"))
        fields.append((b"Access-Control-Allow-Methods", self.allow_methods))
        # `*` is literal for credentialed requests (Fetch): echoing what was asked works always
        allow_headers = b", ".join(asked) if self.any_header else self.allow_headers
        if allow_headers:
            fields.append((b"Access-Control-Allow-Headers", allow_headers))
        if self.max_age is not None:
            fields.append((b"Access-Control-Max-Age", b"%d" % self.max_age))
        return 204, fields + vary

    def actual(self, origin: bytes | None) -> Fields:
        """The fields for the response to a request (not a preflight) with this Origin."""
        allowed = self._allow_origin(origin)
        if allowed is None:
            return self._vary()
        fields = [(ACAO, allowed)]
        if self.credentials:
            fields.append((b"Access-Control-Allow-Credentials", b"true"))
        if self.expose:
            fields.append((b"Access-Control-Expose-Headers", self.expose))
        return fields + self._vary()
