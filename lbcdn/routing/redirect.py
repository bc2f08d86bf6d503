"""Redirect actions: the Location of an ALB-style redirect, built from the request's URL parts.

Rules (as ALB):
- Each part of the action (protocol, host, port, path, query) may use `#{protocol}`, `#{host}`,
  `#{port}`, `#{path}` and `#{query}`; they are replaced in one pass, so text that arrives in a
  value (a path containing `#{host}`) is never expanded again. Unknown `#{...}` stays literal.
- `#{path}` is the original path WITHOUT its leading `/` (so the default `/#{path}` keeps it);
  `#{query}` is the original query without `?`; `#{host}` is the Host without its port.
- The port is left out when it is the default of the resulting scheme (80 http, 443 https).
- `?query` is appended only when the resulting query is non-empty.
- A redirect to exactly the URL that was requested (same scheme, host, port, path and query)
  would loop forever: `redirect_location` returns None and the caller answers 500, as ALB does.
"""

from __future__ import annotations

import re

from lbcdn.routing.config import RedirectAction

_PLACEHOLDER = re.compile(r"#\{(protocol|host|port|path|query)\}")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _strip_port(host: str) -> str:
    """`example.com:8080` -> `example.com`, `[::1]:80` -> `[::1]`; bare IPv6 left whole."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end >= 0 else host
    if host.count(":") == 1:
        return host[: host.find(":")]
    return host


def _bracket(host: str) -> str:
    """A bare IPv6 address must be bracketed inside a URL."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def redirect_location(action: RedirectAction, *, scheme: str, host: str, port: int, path: str,
                      query: str) -> str | None:
    """The absolute URL for a Location header, or None when it equals the requested URL (a loop).

    `scheme` is how the client reached us (`http`/`https`), `host` the Host header (a port in it
    is dropped), `port` the port the client connected to, `path` the request path (starting with
    `/`) and `query` the query string without `?` (empty when there was none)."""
    scheme = scheme.lower()
    host = _bracket(_strip_port(host))
    values = {
        "protocol": scheme,
        "host": host,
        "port": str(port),
        "path": path[1:] if path.startswith("/") else path,
        "query": query,
    }

    def fill(template: str) -> str:
        if "#{" not in template:
            return template
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)

    new_scheme = fill(action.protocol).lower()
    new_host = fill(action.host) or host
    new_port = fill(action.port)
    new_path = fill(action.path)
    new_query = fill(action.query)

    if not new_path.startswith("/"):
        new_path = "/" + new_path
    new_host = _bracket(new_host)
    effective_port = new_port or _DEFAULT_PORTS.get(new_scheme, "")

    if (new_scheme == scheme and new_host.lower() == host.lower()
            and effective_port == str(port) and new_path == path and new_query == query):
        return None

    authority = new_host
    if new_port and new_port != _DEFAULT_PORTS.get(new_scheme):
        authority = f"{new_host}:{new_port}"
    location = f"{new_scheme}://{authority}{new_path}"
    if new_query:
        location = f"{location}?{new_query}"
    return location
