"""check-config errors of a route's header actions, CORS, security headers and rate limit,
each naming its YAML path."""

from __future__ import annotations

from typing import Any

import pytest

from lbcdn.config.load import load_config
from tests.config.test_load import errors, route, with_pool


def routed(**blocks: Any) -> dict[str, Any]:
    return with_pool(routes=[route(forward="app", **blocks)])


@pytest.mark.parametrize("blocks, expected", [
    ({"request_headers": {"set": {"X-A": "#{path}"}}},
     ["routes[0].request_headers.set.X-A: unknown variable #{path} (known: #{client_ip}, "
      "#{request_id}, #{host}, #{scheme})"]),
    ({"request_headers": {"remove": ["Transfer-Encoding"]}},
     ["routes[0].request_headers.remove[0]: 'Transfer-Encoding' is written by lbcdn itself "
      "(framing or hop-by-hop)"]),
    ({"request_headers": {"add": {"X-Forwarded-For": "1.2.3.4"}}},
     ["routes[0].request_headers.add.X-Forwarded-For: 'X-Forwarded-For' is written by lbcdn "
      "itself on forwarded requests (see the listener's x_forwarded_for and "
      "request_id_header)"]),
    ({"response_headers": {"set": {"Bad Name": "x"}, "remove": ["X-A"], "add": {"x-a": "1"}}},
     ["routes[0].response_headers.set[\"Bad Name\"]: 'Bad Name' is not a header field name",
      "routes[0].response_headers.remove[0]: 'X-A' is also in "
      "routes[0].response_headers.add"]),
    ({"response_headers": {"set": {"X-A": "a\nb"}}},
     ["routes[0].response_headers.set.X-A: 'a\\nb': control characters are not allowed in a "
      "header value"]),
    ({"cors": {"allow_origins": ["*"], "allow_credentials": True}},
     ['routes[0].cors.allow_credentials: not with allow_origins "*" (the Fetch standard '
      'refuses it): list the origins']),
    ({"cors": {"allow_origins": ["https://a.example/path", "a.example"]}},
     ['routes[0].cors.allow_origins[0]: \'https://a.example/path\': an origin is "*" or '
      'scheme://host[:port] (no path)',
      'routes[0].cors.allow_origins[1]: \'a.example\': an origin is "*" or '
      'scheme://host[:port] (no path)']),
    ({"cors": {"allow_origins": []}},
     ['routes[0].cors.allow_origins: needs at least one origin (or "*")']),
    ({"security_headers": {"frame_options": "ALLOW"}},
     ['routes[0].security_headers.frame_options: must be one of "DENY", "SAMEORIGIN"; got '
      '"ALLOW"']),
    ({"rate_limit": {"rate_per_s": 10, "burst": 5, "key": "cookie"}},
     ["routes[0].rate_limit.key_name: needed with key: cookie (the cookie's name)"]),
    ({"rate_limit": {"rate_per_s": 10, "burst": 5, "key_name": "X"}},
     ["routes[0].rate_limit.key_name: only with key: header or key: cookie"]),
    ({"rate_limit": {"rate_per_s": 0, "burst": 0}},
     ["routes[0].rate_limit.rate_per_s: must be >= 0.001; got 0",
      "routes[0].rate_limit.burst: must be >= 1; got 0"]),
])
def test_errors(blocks: dict[str, Any], expected: list[str]) -> None:
    assert errors(routed(**blocks)) == expected


def test_full_route_loads() -> None:
    from lbcdn.config.load import parse_config
    config = parse_config(routed(
        request_headers={"set": {"X-Client": "#{client_ip}"}},
        cors={"allow_origins": ["https://a.example"]},
        rate_limit={"rate_per_s": 100, "burst": 20, "key": "header", "key_name": "X-Key"}))
    r = config.routes[0]
    assert r.request_headers is not None and r.request_headers.set == {"X-Client": "#{client_ip}"}
    assert r.cors is not None and r.cors.allow_origins == ("https://a.example",)
    assert r.rate_limit is not None and r.rate_limit.key_name == "X-Key"
    assert load_config  # the module the CLI uses registers the checks
