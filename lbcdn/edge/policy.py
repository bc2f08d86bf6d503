"""A route's header actions, CORS block, security headers and rate limit, compiled once per
route and listener (lbcdn.edge.listener.RoutePlan.policy) and applied by the exchange through a
few calls. A route with none of them has no policy, and its requests never come here.

What the exchange asks, in order:
- `admit`: the rate limit's decision for this request -> None, or the 429 to answer;
- `preflight`: a CORS preflight's answer (status, fields), answered at the edge;
- `request_head`: the request as the origin gets it (header actions on it);
- `response_head`: a proxied response as the client gets it (response actions, security
  headers, CORS fields); `local_lines`: the same fields for a response lbcdn writes itself.
The decisions are lbcdn.http.headeractions, lbcdn.http.cors and lbcdn.ratelimit; this module
only reads the request's fields for them.
"""

from __future__ import annotations

import hashlib
import os
import time

from lbcdn.edge.passthrough import forwarded_head
from lbcdn.http.cors import OWNED, Cors
from lbcdn.http.errors import HttpError
from lbcdn.http.head import RequestHead, ResponseHead
from lbcdn.http.headeractions import HeaderActions, Values, rewrite
from lbcdn.metrics import RATE_LIMITED
from lbcdn.ratelimit import ENV, BucketTable, reset_s, retry_after_s
from lbcdn.routing.config import RouteRateLimitConfig, RouteConfig

# Tables by everything that shapes them: a reload keeps a limit's counters unless it changed.
_TABLES: dict[tuple[str, RouteRateLimitConfig], BucketTable] = {}


def table_for(route: str, config: RouteRateLimitConfig) -> BucketTable:
    table = _TABLES.get((route, config))
    if table is None:
        # a reload changed this route's limit: the old table goes once the exchanges of the
        # old configuration that use it are done (its mapping is freed with the last reference)
        for old in [k for k in _TABLES if k[0] == route]:
            del _TABLES[old]
        directory = os.environ.get(ENV)
        path = None
        if directory:
            # the same name in every worker: they map one file
            digest = hashlib.sha256(repr((route, config)).encode()).hexdigest()[:16]
            path = os.path.join(directory, f"ratelimit-{digest}.buckets")
        table = _TABLES[(route, config)] = BucketTable(
            config.max_keys, config.rate_per_s, config.burst, path)
    return table


def field(head: RequestHead, lower: bytes) -> bytes | None:
    """The first value of a request field by its lower-case name."""
    for name, value in head.headers:
        if name.lower() == lower:
            return value
    return None


def cookie(head: RequestHead, name: bytes) -> bytes | None:
    for fname, value in head.headers:
        if fname.lower() == b"cookie":
            for pair in value.split(b";"):
                key, eq, val = pair.strip().partition(b"=")
                if eq and key == name:
                    return val
    return None


class RoutePolicy:
    __slots__ = ("route", "request", "response", "cors", "cors_override", "table", "limit",
                 "policy_field")

    def __init__(self, route: RouteConfig, tls: bool) -> None:
        self.route = route.name
        req = route.request_headers
        self.request: HeaderActions | None = None
        if req is not None:
            self.request = HeaderActions(req.remove, req.set, req.add, request=True) or None
        resp = route.response_headers
        remove, set_, add = (resp.remove, dict(resp.set), resp.add) if resp else ((), {}, {})
        default: dict[str, str] = {}
        sec = route.security_headers
        if sec is not None:
            fields = {"Strict-Transport-Security": sec.strict_transport_security if tls else None,
                      "X-Content-Type-Options": "nosniff" if sec.content_type_options else None,
                      "X-Frame-Options": sec.frame_options,
                      "Referrer-Policy": sec.referrer_policy,
                      "Content-Security-Policy": sec.content_security_policy}
            for name, value in fields.items():
                if value is not None:
                    (set_ if sec.override else default)[name] = value
        self.response = HeaderActions(remove, set_, add, default) or None
        cors = route.cors
        self.cors: Cors | None = None
        self.cors_override = True
        if cors is not None:
            self.cors = Cors(cors.allow_origins, cors.allow_methods, cors.allow_headers,
                             cors.expose_headers, cors.max_age_s, cors.allow_credentials)
            self.cors_override = cors.override
        self.limit = route.rate_limit
        self.table = table_for(route.name, self.limit) if self.limit is not None else None
        self.policy_field = b""
        if self.limit is not None:
            # the draft's quota is an integer per window of whole seconds: 100/s is q=100;w=1,
            # 0.5/s is q=1;w=2
            rate = self.limit.rate_per_s
            quota, window = (round(rate), 1) if rate >= 1 else (1, round(1 / rate))
            self.policy_field = b'RateLimit-Policy: "%s";q=%d;w=%d\r\n' % (
                route.name.encode(), quota, window)

    def admit(self, head: RequestHead, client_ip: bytes) -> tuple[HttpError | None, bytes]:
        """The rate limit's word on this request: (None, the RateLimit fields its response
        carries) or (the 429 to answer, b"")."""
        limit = self.limit
        table = self.table
        if limit is None or table is None:
            return None, b""
        if limit.key == "client_ip":
            key: bytes | None = client_ip
        elif limit.key == "header":
            key = field(head, (limit.key_name or "").lower().encode())
        else:
            key = cookie(head, (limit.key_name or "").encode())
        allowed, tokens = table.hit(key or b"", time.monotonic())
        state = b'RateLimit: "%s";r=%d;t=%d\r\n' % (
            self.route.encode(), int(tokens), reset_s(tokens, limit.rate_per_s, limit.burst))
        if allowed:
            return None, self.policy_field + state
        RATE_LIMITED.labels(self.route).inc()
        retry = retry_after_s(tokens, limit.rate_per_s)
        # with its CORS fields, a script of an allowed origin can read the 429 and wait
        cors = self._cors_lines(head)
        return HttpError(429, "rate limit exceeded", close=False,
                         headers=b"Retry-After: %d\r\n%s%s%s" % (
                             retry, self.policy_field, state, cors)), b""

    def preflight(self, head: RequestHead) -> tuple[int, list[tuple[bytes, bytes]]] | None:
        cors = self.cors
        if cors is None or head.method != b"OPTIONS":
            return None
        origin = field(head, b"origin")
        asked = field(head, b"access-control-request-method")
        if origin is None or asked is None:
            return None
        return cors.preflight(origin, asked, field(head, b"access-control-request-headers"))

    def request_head(self, head: RequestHead, values: Values) -> RequestHead:
        if self.request is None:
            return head
        return forwarded_head(head, head.target, head.query, self.request.apply(head.fwd, values))

    def _cors_fields(self, head: RequestHead) -> tuple[list[tuple[bytes, bytes]],
                                                       list[tuple[bytes, bytes]]]:
        """(fields to set, fields to add only where the origin sent none)."""
        if self.cors is None:
            return [], []
        fields = self.cors.actual(field(head, b"origin"))
        owned = [f for f in fields if f[0].lower() in OWNED]
        vary = [f for f in fields if f[0].lower() not in OWNED]
        return (owned + vary, []) if self.cors_override else (vary, owned)

    def response_head(self, resp: ResponseHead, head: RequestHead,
                      values: Values) -> ResponseHead:
        fwd = resp.fwd
        if self.response is not None:
            fwd = self.response.apply(fwd, values)
        if self.cors is not None:
            add, default = self._cors_fields(head)
            fwd = rewrite(fwd, OWNED if self.cors_override else frozenset(), add, default)
        if fwd is resp.fwd:
            return resp
        return ResponseHead(resp.status, resp.reason, resp.headers, resp.content_length,
                            resp.chunked, resp.keep_alive, fwd, resp.has_date)

    def _cors_lines(self, head: RequestHead) -> bytes:
        add, default = self._cors_fields(head)
        return b"".join(b"%s: %s\r\n" % f for f in add + default)

    def local_lines(self, head: RequestHead, values: Values) -> bytes:
        """Fields for a response written here (no origin fields to replace)."""
        out = self.response.lines(values) if self.response is not None else b""
        return out + self._cors_lines(head)
