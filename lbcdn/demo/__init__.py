"""The built-in demo backend: a fast HTTP/1.1 app server for the default config, the
end-to-end tests and load tests. Every response carries `X-Backend: <name>`.

Endpoints (query parameters in brackets):
- `GET|HEAD /` and unknown paths, other methods on unlisted paths: 200 JSON echo of the request
  (backend, method, path, query, http_version, headers as received, body_bytes, client).
- `/bytes/N` [chunked=1] [close=1] [abort_after=M]: N bytes of `0123456789abcdef` repeated,
  streamed with back-pressure; chunked, read-until-close, or cut off after M bytes.
- `/status/N`: status N (200..999) with a short body (none for 204/304).
- `/delay/MS`: the echo after MS milliseconds.
- `POST|PUT /echo`: the request body streamed back. `POST|PUT /sink`: `{body_bytes, sha256}`.
- `/expect-fail`: 417 before the body, then close. `Expect: 100-continue` elsewhere gets a 100.
- `/early-hints`: 103 (Link: </style.css>; rel=preload) then the echo.
- `/ws`: RFC 6455 echo server after the handshake; 426 without `Upgrade: websocket`.
- `/headers/set?name=value&...`: the echo, with the pairs added as response headers.
- `/close`: the echo with `Connection: close`, then close. `/count`: `{"requests": n}`, the
  requests this backend has begun to answer, this one included.
"""

from lbcdn.demo.backend import run_demo_backend, start_demo_backend

__all__ = ["run_demo_backend", "start_demo_backend"]
