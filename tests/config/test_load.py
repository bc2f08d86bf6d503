"""The config loader: shapes, defaults, semantic checks and their exact YAML paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lbcdn.config.load import load_config, parse_config
from lbcdn.configkit.errors import ConfigError
from lbcdn.config.schema import Config
from lbcdn.routing.config import (FixedResponseAction, ForwardAction, MatchConfig, RedirectAction,
                                  RouteConfig)
from lbcdn.upstream.config import TargetConfig

REPO = Path(__file__).resolve().parents[2]
LISTENER = {"name": "web", "port": 8080}


def cfg(**sections: Any) -> dict[str, Any]:
    """A minimal valid config plus the given sections."""
    return {"listeners": [LISTENER], **sections}


def with_pool(**sections: Any) -> dict[str, Any]:
    return cfg(pools={"app": {"targets": ["127.0.0.1:9001"]}}, **sections)


def errors(data: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env=env or {})
    return info.value.lines()


def route(**body: Any) -> dict[str, Any]:
    return {"name": "r", **body}


CACHE = {"origins": {"o": {"pool": "app"}}, "distributions": {"site": {
    "default_behavior": {"path_pattern": "*", "origin": "o"}}}}


# -- defaults and shapes -------------------------------------------------------------------

def test_minimal_config_gets_defaults() -> None:
    config = parse_config(cfg(), env={})
    assert config == Config(listeners=config.listeners)
    lst = config.listeners[0]
    assert (lst.address, lst.idle_timeout_s, lst.x_forwarded_for) == ("0.0.0.0", 60.0, "append")
    assert config.default_route.action == FixedResponseAction(
        status=404, body="no route matches this request\n")
    assert config.admin.port == 9901 and config.admin.token is None
    assert config.routes == () and config.pools == {}


def test_target_shapes() -> None:
    config = parse_config(cfg(pools={"app": {"targets": [
        "10.0.0.1:80",
        "[::1]:8080",
        "Backend.Internal:81",
        {"host": "b", "port": 82, "weight": 3},
        {"host": "[::1]", "port": 83},
        {"address": "c:84", "weight": 0},
        {"address": "[fe80::1]:85"},
    ]}}), env={})
    pool = config.pools["app"]
    assert pool.name == "app"
    assert pool.targets == (
        TargetConfig("10.0.0.1", 80), TargetConfig("::1", 8080),
        TargetConfig("backend.internal", 81), TargetConfig("b", 82, 3), TargetConfig("::1", 83),
        TargetConfig("c", 84, 0), TargetConfig("fe80::1", 85))


def test_actions() -> None:
    config = parse_config(with_pool(routes=[
        {"name": "a", "forward": "app"},
        {"name": "b", "forward": {"pool": "app"}},
        {"name": "c", "redirect": {"protocol": "https", "status": 308}},
        {"name": "d", "fixed_response": {"status": 200, "body": "hi"}},
    ]), env={})
    assert [r.action for r in config.routes] == [
        ForwardAction("app"), ForwardAction("app"),
        RedirectAction(status=308, protocol="https"),
        FixedResponseAction(status=200, body="hi")]


def test_match_hosts_string_or_list_lowercased() -> None:
    config = parse_config(with_pool(routes=[
        route(match={"host": "WWW.Example.COM."}, forward="app"),
        {"name": "r2", "match": {"host": ["a.example.com", "*.B.example.com"],
                                 "path_prefix": "/api/", "path": "/api/*.json"},
         "forward": "app", "max_body_bytes": 0},
    ]), env={})
    assert config.routes[0].match == MatchConfig(hosts=("www.example.com",))
    assert config.routes[1].match == MatchConfig(
        hosts=("a.example.com", "*.b.example.com"), path_prefix="/api/", path="/api/*.json")
    assert config.routes[1].max_body_bytes == 0


def test_default_route() -> None:
    config = parse_config(with_pool(default_route={"forward": "app"}), env={})
    assert config.default_route == RouteConfig(name="default", action=ForwardAction("app"))
    config = parse_config(cfg(default_route={"name": "fallback", "fixed_response": {}}), env={})
    assert config.default_route.name == "fallback"


def test_admin_port_zero_disables_collision_check() -> None:
    config = parse_config({"listeners": [{"name": "a", "port": 9901, "address": "127.0.0.1"}],
                           "admin": {"port": 0}}, env={})
    assert config.admin.port == 0


# -- environment ---------------------------------------------------------------------------

def test_env_secret_and_port() -> None:
    config = parse_config(cfg(admin={"token": "${TOKEN}", "port": "${ADMIN_PORT:-9999}"},
                              logging={"access_log": {"path": "/var/log/$${X}.log"}}),
                          env={"TOKEN": "s3cret"})
    assert config.admin.token == "s3cret"
    assert config.admin.port == 9999
    assert config.logging.access_log.path == "/var/log/${X}.log"


def test_env_unset_is_an_error_naming_path_and_variable() -> None:
    assert errors(cfg(admin={"token": "${LBCDN_TEST_UNSET}"})) == [
        "admin.token: environment variable LBCDN_TEST_UNSET is not set "
        "(use ${LBCDN_TEST_UNSET:-default} to give a default)"]


def test_env_in_targets_and_hosts() -> None:
    config = parse_config(cfg(
        pools={"app": {"targets": ["${BACKEND}", {"address": "${B2:-b:2}"}]}},
        routes=[route(match={"host": "${SITE}"}, forward="app")]),
        env={"BACKEND": "a:1", "SITE": "Example.com"})
    assert config.pools["app"].targets == (TargetConfig("a", 1), TargetConfig("b", 2))
    assert config.routes[0].match.hosts == ("example.com",)


def test_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LBCDN_TEST_TOKEN", "from-os")
    config = parse_config(cfg(admin={"token": "${LBCDN_TEST_TOKEN}"}))
    assert config.admin.token == "from-os"


# -- error messages, each with its exact YAML path ----------------------------------------

CASES: list[tuple[dict[str, Any], list[str]]] = [
    # structure and types
    ({}, ["listeners: missing (required)"]),
    ({"listeners": []}, ["listeners: must list at least one listener"]),
    (cfg(bogus=1), ["bogus: unknown key (allowed: admin, buckets, cache, default_route, "
                    "demo_backends, dns, listeners, logging, pools, routes, routing, shutdown, "
                    "tls_session_tickets)"]),
    ({"listeners": [{"name": "web"}]}, ["listeners[0].port: missing (required)"]),
    ({"listeners": [{"name": "web", "port": "80"}]},
     ['listeners[0].port: expected an integer, got a string ("80")']),
    ({"listeners": [{"name": "web", "port": 0}]}, ["listeners[0].port: must be >= 1; got 0"]),
    ({"listeners": [{"name": "web", "port": 70000}]},
     ["listeners[0].port: must be <= 65535; got 70000"]),
    ({"listeners": [{"name": "web", "port": True}]},
     ["listeners[0].port: expected an integer, got a boolean"]),
    ({"listeners": [{"name": "web", "port": 80, "idle_timeout_s": 0}]},
     ["listeners[0].idle_timeout_s: must be >= 0.001; got 0"]),
    ({"listeners": [{"name": "web", "port": 80, "x_forwarded_for": "drop"}]},
     ['listeners[0].x_forwarded_for: must be one of "append", "preserve", "remove"; got "drop"']),
    ({"listeners": [{"name": "web", "port": 80, "request_id_header": "X Id"}]},
     ["listeners[0].request_id_header: 'X Id' is not a valid header name "
      "(letters, digits and !#$%&'*+-.^_`|~)"]),
    ({"listeners": [{"name": "web", "port": 80, "address": "not an address"}]},
     ["listeners[0].address: 'not an address' is not a valid host name "
      "(letters, digits, '-' and '_' in dot-separated labels)"]),
    ({"listeners": [{"name": "web", "port": 80, "max_header_bytes": 40000}]},
     ["listeners[0].max_header_bytes: must not exceed max_headers_total_bytes (32768)"]),
    ({"listeners": [{"name": "web", "port": 80, "http_versions": []}]},
     ["listeners[0].http_versions: list h2, http1.1 or both, each once"]),
    ({"listeners": [{"name": "web", "port": 80, "http_versions": ["h2", "h3"]}]},
     ['listeners[0].http_versions[1]: must be one of "h2", "http1.1"; got "h3"']),
    (cfg(logging={"level": "trace"}),
     ['logging.level: must be one of "debug", "info", "warning", "error"; got "trace"']),
    (cfg(logging={"access_log": {"enabled": "yes"}}),
     ['logging.access_log.enabled: expected true or false, got a string ("yes")']),
    (cfg(shutdown={"drain_timeout_s": -1}), ["shutdown.drain_timeout_s: must be >= 0; got -1"]),
    (cfg(admin={"token": ""}), ["admin.token: must not be empty (leave it out to set no token)"]),
    (cfg(admin=None), ["admin: expected a mapping, got null"]),
    # uniqueness of names and sockets
    ({"listeners": [LISTENER, {"name": "web", "port": 8081}]},
     ['listeners[1].name: duplicate listener name "web" (also listeners[0])']),
    ({"listeners": [LISTENER, {"name": "b", "port": 8080}]},
     ["listeners[1].port: 0.0.0.0:8080 is already used by listeners[0] (0.0.0.0:8080)"]),
    ({"listeners": [LISTENER, {"name": "b", "port": 8080, "address": "127.0.0.1"}]},
     ["listeners[1].port: 127.0.0.1:8080 is already used by listeners[0] (0.0.0.0:8080)"]),
    ({"listeners": [{"name": "a", "port": 80, "address": "::"},
                    {"name": "b", "port": 80, "address": "::1"}]},
     ["listeners[1].port: [::1]:80 is already used by listeners[0] ([::]:80)"]),
    (cfg(demo_backends=[{"name": "d", "port": 8080}]),
     ["demo_backends[0].port: 127.0.0.1:8080 is already used by listeners[0] (0.0.0.0:8080)"]),
    (cfg(demo_backends=[{"name": "d", "port": 9901}]),
     ["admin.port: 127.0.0.1:9901 is already used by demo_backends[0] (127.0.0.1:9901)"]),
    # pools and targets
    (cfg(pools={"app": {"targets": []}}), ["pools.app.targets: must list at least one target"]),
    (cfg(pools={"app": {}}), ["pools.app.targets: missing (required)"]),
    (cfg(pools={"app": {"name": "x", "targets": ["a:1"]}}),
     ["pools.app.name: not allowed: a pool's name is its key under pools"]),
    (cfg(pools=[{"name": "app"}]),
     ["pools: expected a mapping of pool name to pool, got a list"]),
    (cfg(pools={"app": {"targets": ["a"]}}),
     ['pools.app.targets[0]: expected "host:port" (IPv6 as "[::1]:8080"), got a string ("a")']),
    (cfg(pools={"app": {"targets": ["::1:80"]}}),
     ['pools.app.targets[0]: expected "host:port" (IPv6 as "[::1]:8080"), '
      'got a string ("::1:80")']),
    (cfg(pools={"app": {"targets": ["a:0"]}}),
     ["pools.app.targets[0]: port must be 1-65535; got 0"]),
    (cfg(pools={"app": {"targets": ["bad host:80"]}}),
     ["pools.app.targets[0]: 'bad host' is not a valid host name "
      "(letters, digits, '-' and '_' in dot-separated labels)"]),
    (cfg(pools={"app": {"targets": [{"host": "a", "port": 1, "weight": 1001}]}}),
     ["pools.app.targets[0].weight: must be <= 1000; got 1001"]),
    (cfg(pools={"app": {"targets": [{"host": "a"}]}}),
     ["pools.app.targets[0].port: missing (required)"]),
    (cfg(pools={"app": {"targets": [{"address": "a:1", "port": 2}]}}),
     ["pools.app.targets[0].port: give either address or host and port, not both"]),
    (cfg(pools={"app": {"targets": [{"address": "a:1", "wieght": 2}]}}),
     ["pools.app.targets[0].wieght: unknown key (did you mean 'weight'? "
      "allowed: address, weight)"]),
    (cfg(pools={"app": {"targets": [80]}}),
     ['pools.app.targets[0]: expected "host:port" or a mapping, got an integer']),
    (cfg(pools={"app": {"targets": ["a:1"], "host_header": "bad host"}}),
     ["pools.app.host_header: must be preserve, target, or a host name (with an optional port)"]),
    # routes and actions
    (with_pool(routes=[route()]),
     ["routes[0]: needs exactly one action: forward, redirect or fixed_response "
      "(or cache: DISTRIBUTION)"]),
    (with_pool(routes=[route(forward="app", fixed_response={})]),
     ["routes[0]: has 2 actions (forward, fixed_response); give exactly one of forward, "
      "redirect, fixed_response"]),
    (with_pool(routes=[{"forward": "app"}]), ["routes[0].name: missing (required)"]),
    (with_pool(routes=[route(forward="app", action="x")]),
     ["routes[0].action: unknown key (allowed: basic_auth, cache, cors, fixed_response, "
      "forward, hsts_max_age_s, https_redirect_status, match, max_body_bytes, mirror, "
      "name, rate_limit, redirect, request_headers, response_headers, security_headers, "
      "viewer_protocol)"]),
    (with_pool(routes=[route(forward="app"), route(forward="app")]),
     ['routes[1].name: duplicate route name "r" (also routes[0])']),
    (with_pool(routes=[route(name="default", forward="app")]),
     ['default_route.name: duplicate route name "default" (also routes[0])']),
    (with_pool(routes=[route(forward="app"), {"name": "s", "forward": "x"}]),
     ['routes[1].forward: unknown pool "x" (known: app)']),
    (cfg(routes=[route(forward={"pool": "x"})]),
     ['routes[0].forward: unknown pool "x" (known: none)']),
    (with_pool(routes=[route(forward={"pol": "app"})]),
     ["routes[0].forward.pol: unknown key (did you mean 'pool'? allowed: pool, pools, "
      "rewrite, stickiness)",
      "routes[0].forward: needs `pool` (one pool) or `pools` (weighted, at least one)"]),
    (with_pool(routes=[route(forward="")]), ["routes[0].forward: expected a pool name"]),
    (with_pool(routes=[route(forward="app", max_body_bytes=-1)]),
     ["routes[0].max_body_bytes: must be >= 0; got -1"]),
    (with_pool(routes=[route(forward="app", match={"path": "api/*"})]),
     ['routes[0].match.path: must start with "/"']),
    (with_pool(routes=[route(forward="app", match={"path_prefix": "api"})]),
     ['routes[0].match.path_prefix: must start with "/"']),
    (with_pool(routes=[route(forward="app", match={"path_prefix": "/a b"})]),
     ["routes[0].match.path_prefix: must not contain spaces or control characters"]),
    (with_pool(routes=[route(forward="app", match={"hosts": ["a.com"]})]),
     ["routes[0].match.hosts: unknown key (did you mean 'host'? "
      "allowed: host, http_header, method, path, path_prefix, query_string, source_ip)"]),
    (with_pool(routes=[route(forward="app", match={"host": ["a.com", "w*.b.com"]})]),
     ["routes[0].match.host[1]: 'w*.b.com': a wildcard must be the whole first label, "
      "as in '*.example.com'"]),
    (with_pool(routes=[route(forward="app", match={"host": "a.com:80"})]),
     ["routes[0].match.host: 'a.com:80': give the host name without a port"]),
    (with_pool(routes=[route(forward="app", match={"host": "a_b!.com"})]),
     ["routes[0].match.host: 'a_b!.com' is not a valid host name "
      "(letters, digits, '-' and '_' in dot-separated labels)"]),
    (cfg(routes=[route(redirect={"status": 200})]),
     ["routes[0].redirect.status: must be one of 301, 302, 303, 307, 308; got 200"]),
    (cfg(routes=[route(redirect={"protocol": "ftp"})]),
     ['routes[0].redirect.protocol: must be one of "http", "https", "#{protocol}"; got "ftp"']),
    (cfg(routes=[route(redirect={"path": "#{path}"})]),
     ['routes[0].redirect.path: must start with "/"']),
    (cfg(routes=[route(redirect={"query": "a=#{qs}"})]),
     ["routes[0].redirect.query: unknown placeholder #{qs} (known: #{protocol}, #{host}, "
      "#{port}, #{path}, #{query})"]),
    (cfg(routes=[route(redirect={"port": "http"})]),
     ['routes[0].redirect.port: must be a port number 1-65535 or use "#{port}"']),
    (cfg(routes=[route(redirect={"status": "301"})]),
     ['routes[0].redirect.status: expected an integer, got a string ("301")']),
    (cfg(routes=[route(fixed_response={"status": 199})]),
     ["routes[0].fixed_response.status: must be >= 200; got 199"]),
    (cfg(routes=[route(fixed_response={"body": "x" * (1024 * 1024 + 1)})]),
     ["routes[0].fixed_response.body: must be at most 1048576 bytes (1 MiB); got 1048577"]),
    (cfg(routes=[route(fixed_response={"content_type": "text/plain\r\nX: y"})]),
     ["routes[0].fixed_response.content_type: must be a non-empty header value without "
      "control characters"]),
    (cfg(routes={"name": "r"}), ["routes: expected a list, got a mapping"]),
    # default route
    (cfg(default_route={"match": {"host": "a.com"}, "fixed_response": {}}),
     ["default_route.match: not allowed: default_route applies to requests no route matched"]),
    (cfg(default_route={"forward": "nope"}),
     ['default_route.forward: unknown pool "nope" (known: none)']),
    (cfg(default_route={}),
     ["default_route: needs exactly one action: forward, redirect or fixed_response "
      "(or cache: DISTRIBUTION)"]),
    # a cache route is answered through its distribution: an action beside it never runs
    (with_pool(routes=[route(cache="site", forward="app"),
                       route(name="s", cache="site", redirect={"host": "x.com"},
                             fixed_response={})], cache=CACHE),
     ["routes[0].forward: not with cache: the route is answered through distribution "
      "'site', whose behaviors name the origin; remove forward",
      "routes[1].redirect: not with cache: the route is answered through distribution "
      "'site', whose behaviors name the origin; remove redirect",
      "routes[1].fixed_response: not with cache: the route is answered through distribution "
      "'site', whose behaviors name the origin; remove fixed_response"]),
    (with_pool(default_route={"cache": "nope"}, cache=CACHE),
     ['default_route.cache: unknown distribution "nope" (known: site)']),
]


def test_a_cache_route_stands_alone() -> None:
    """Its distribution names the origin: no forward, redirect or fixed_response."""
    config = parse_config(with_pool(routes=[route(cache="site")], default_route={
        "cache": "site"}, cache=CACHE), env={})
    assert (config.routes[0].cache, config.routes[0].action) == ("site", None)
    assert (config.default_route.cache, config.default_route.action) == ("site", None)


@pytest.mark.parametrize("data, expected", CASES, ids=[e[0][:60] for _, e in CASES])
def test_error_messages(data: dict[str, Any], expected: list[str]) -> None:
    assert errors(data) == expected


def test_many_errors_collected_in_one_pass() -> None:
    lines = errors({
        "listeners": [{"name": "web", "port": 80}, {"name": "web", "port": 81},
                      {"name": "x", "port": 0}],
        "pools": {"app": {"targets": ["nope"]}},
        "routes": [
            {"name": "a", "forward": "app", "match": {"path": "x"}},
            {"name": "b", "forward": "missing"},
        ],
        "logging": {"level": "loud"},
    })
    assert lines == [
        "listeners[2].port: must be >= 1; got 0",
        'pools.app.targets[0]: expected "host:port" (IPv6 as "[::1]:8080"), '
        'got a string ("nope")',
        'routes[0].match.path: must start with "/"',
        'logging.level: must be one of "debug", "info", "warning", "error"; got "loud"',
        'listeners[1].name: duplicate listener name "web" (also listeners[0])',
        # the pool with a broken target still counts as known; the missing one does not
        'routes[1].forward: unknown pool "missing" (known: app)',
    ]


def test_config_error_str_and_attributes() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(cfg(routes=[route(fixed_response={}, match={"path": "x"})]), env={})
    err = info.value
    assert err.problems == [("routes[0].match.path", 'must start with "/"')]
    assert str(err) == 'routes[0].match.path: must start with "/"'


# -- sockets: every one the daemon binds, addresses compared by value ------------------------

def two_listeners(a: str, b: str) -> dict[str, Any]:
    return {"listeners": [{"name": "a", "port": 80, "address": a},
                          {"name": "b", "port": 80, "address": b}]}


@pytest.mark.parametrize("a, b", [
    ("127.0.0.1", "::ffff:127.0.0.1"),
    ("0:0:0:0:0:0:0:0", "::1"),
    ("::0", "0:0::1"),
    ("::1", "0:0::1"),
    ("0.0.0.0", "::ffff:10.0.0.1"),
])
def test_ip_literals_are_compared_by_value(a: str, b: str) -> None:
    fmt = f"[{b}]" if ":" in b else b
    assert errors(two_listeners(a, b)) == [
        f"listeners[1].port: {fmt}:80 is already used by listeners[0] "
        f"({f'[{a}]' if ':' in a else a}:80)"]


def test_ipv4_and_ipv6_wildcards_may_share_a_port() -> None:
    # asyncio binds `::` IPV6_V6ONLY: nginx's `listen 80; listen [::]:80;`
    config = parse_config(two_listeners("0.0.0.0", "::"), env={})
    assert [x.address for x in config.listeners] == ["0.0.0.0", "::"]
    parse_config(two_listeners("::", "10.0.0.1"), env={})
    parse_config({"listeners": [{"name": "a", "port": 80, "address": "0.0.0.0"},
                                {"name": "b", "port": 9901, "address": "::"}],
                  "demo_backends": [{"name": "d", "port": 80, "address": "::"}]}, env={})
    # the same family still clashes
    assert errors(two_listeners("0.0.0.0", "127.0.0.1")) == [
        "listeners[1].port: 127.0.0.1:80 is already used by listeners[0] (0.0.0.0:80)"]
    assert errors(two_listeners("::", "::1")) == [
        "listeners[1].port: [::1]:80 is already used by listeners[0] ([::]:80)"]


BUCKETS = {"root": "/nonexistent/buckets"}


@pytest.mark.parametrize("sections, expected", [
    ({"buckets": {**BUCKETS, "port": 8080}},
     "buckets.port: 127.0.0.1:8080 is already used by listeners[0] (0.0.0.0:8080)"),
    ({"buckets": {**BUCKETS, "website_port": 9901}},
     "buckets.website_port: 127.0.0.1:9901 is already used by admin (127.0.0.1:9901)"),
    ({"buckets": {**BUCKETS, "port": 9100, "website_port": 9100,
                  "website_address": "0.0.0.0"}},
     "buckets.website_port: 0.0.0.0:9100 is already used by buckets (127.0.0.1:9100)"),
    ({"demo_backends": [{"name": "d", "port": 9000}], "buckets": BUCKETS},
     "buckets.port: 127.0.0.1:9000 is already used by demo_backends[0] (127.0.0.1:9000)"),
    ({"dns": {"listeners": [{"address": "127.0.0.1", "port": 8080}]}},
     "dns.listeners[0].port: 127.0.0.1:8080 is already used by listeners[0] (0.0.0.0:8080)"),
    ({"dns": {"listeners": [{"address": "::", "port": 8080}]}},  # dual-stack: IPv4 too
     "dns.listeners[0].port: [::]:8080 is already used by listeners[0] (0.0.0.0:8080)"),
    ({"dns": {"listeners": [{"port": 53}, {"address": "127.0.0.1", "port": 53}]}},
     "dns.listeners[1].port: 127.0.0.1:53 is already used by dns.listeners[0] (0.0.0.0:53)"),
    ({"buckets": {**BUCKETS, "address": "::", "port": 53},
      "dns": {"listeners": [{"address": "127.0.0.1", "port": 53}]}},
     "dns.listeners[0].port: 127.0.0.1:53 is already used by buckets ([::]:53)"),
])
def test_bucket_and_dns_sockets_are_cross_checked(sections: dict[str, Any],
                                                  expected: str) -> None:
    assert errors(cfg(**sections)) == [expected]


def test_dns_and_bucket_sockets_clash_only_where_they_overlap() -> None:
    parse_config(cfg(buckets={**BUCKETS, "port": 0, "website_port": 0},
                     dns={"listeners": [{"address": "::1", "port": 8080}]}), env={})
    assert errors(cfg(dns={"listeners": [{"address": "10.0.0.1", "port": 8080}]})) == [
        "dns.listeners[0].port: 10.0.0.1:8080 is already used by listeners[0] (0.0.0.0:8080)"]
    # one clash inside a section is reported once, by the section's own check
    assert errors(cfg(dns={"listeners": [{"port": 53}, {"port": 53}]})) == [
        "dns.listeners[1].port: 0.0.0.0 port 53 is already used by dns.listeners[0]"]


# -- access log file -----------------------------------------------------------------------

def access_log(path: str, **more: Any) -> dict[str, Any]:
    return cfg(logging={"access_log": {"path": path, **more}})


def test_access_log_path_must_be_a_file_in_an_existing_directory(tmp_path: Path) -> None:
    where = "logging.access_log.path"
    assert errors(access_log("")) == [
        f"{where}: must not be empty (leave it out to log to stdout)"]
    assert errors(access_log(str(tmp_path))) == [
        f"{where}: {str(tmp_path)!r} is a directory; give the path of a file"]
    missing = tmp_path / "nope" / "access.log"
    assert errors(access_log(str(missing))) == [
        f"{where}: the directory {str(tmp_path / 'nope')!r} does not exist"]
    # a new file in an existing directory is fine; so is anything when the log is off
    assert parse_config(access_log(str(tmp_path / "access.log")), env={}) \
        .logging.access_log.path == str(tmp_path / "access.log")
    parse_config(access_log(str(missing), enabled=False), env={})


# -- request id header ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding", "HOST", "Connection",
                                  "Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Connection",
                                  "Expect"])
def test_request_id_header_may_not_frame_the_request(name: str) -> None:
    assert errors({"listeners": [{**LISTENER, "request_id_header": name}]}) == [
        f"listeners[0].request_id_header: {name!r} frames the request or belongs to one hop; "
        "choose another header"]


@pytest.mark.parametrize("name", ["X-Forwarded-For", "x-forwarded-proto", "X-Forwarded-Port",
                                  "Via"])
def test_request_id_header_may_not_be_one_the_proxy_sets(name: str) -> None:
    assert errors({"listeners": [{**LISTENER, "request_id_header": name}]}) == [
        f"listeners[0].request_id_header: {name!r} is set by the proxy itself; "
        "choose another header"]


# -- redirect targets ---------------------------------------------------------------------

@pytest.mark.parametrize("key, value, message", [
    ("path", "/x\r\nSet-Cookie: evil=2", "must not contain spaces or control characters"),
    ("path", "/a b", "must not contain spaces or control characters"),
    ("path", "/a?b=1", 'must not contain "?" or "#" (give the query in `query`)'),
    ("path", "/#{path}#top", 'must not contain "?" or "#" (give the query in `query`)'),
    ("query", "a=1\r\nX: y", "must not contain spaces or control characters"),
    ("query", "a=1#frag", 'must not contain "#"'),
    ("query", "?a=1", 'give the query without its leading "?"'),
    ("host", "exa mple.com", "must not contain spaces or control characters"),
    ("host", "a.com\r\nX: y", "must not contain spaces or control characters"),
    ("host", "a.com/evil", "'a.com/evil': give a host name or IP address only, without scheme, "
                           "path or query"),
    ("host", "evil.com?a.com", "'evil.com?a.com': give a host name or IP address only, without "
                               "scheme, path or query"),
    ("host", "user@a.com", "'user@a.com': give a host name or IP address only, without scheme, "
                           "path or query"),
    ("host", "a.com:8443", "'a.com:8443': give the host without a port (the port goes in `port`)"),
    ("host", "#{host}:#{port}",
     "'#{host}:#{port}': give the host without a port (the port goes in `port`)"),
    ("host", "a_b!.com", "'a_b!.com' is not a valid host name (letters, digits, '-' and '_' in "
                         "dot-separated labels)"),
    ("host", "www..#{host}", "'www..#{host}' is not a valid host name (letters, digits, '-' and "
                             "'_' in dot-separated labels)"),
])
def test_redirect_host_path_and_query_syntax(key: str, value: str, message: str) -> None:
    assert errors(cfg(routes=[route(redirect={key: value})])) == [
        f"routes[0].redirect.{key}: {message}"]
    assert errors(cfg(default_route={"redirect": {key: value}})) == [
        f"default_route.redirect.{key}: {message}"]


def test_redirect_parts_accept_placeholders_and_addresses() -> None:
    hosts = ["#{host}", "www.#{host}", "#{host}.cdn.example", "Example.COM.", "10.0.0.1",
             "[2001:db8::1]", "2001:db8::1"]
    config = parse_config(cfg(routes=[
        route(name=f"h{i}", redirect={"host": h}) for i, h in enumerate(hosts)] + [
        route(name="p", redirect={"path": "/new/#{path}", "query": "#{query}&from=old"})]),
        env={})
    assert [r.action.host for r in config.routes[:-1]] == hosts  # type: ignore[union-attr]
    assert errors(cfg(routes=[route(redirect={"host": "a.com:1"})])) != []


# -- lax values ----------------------------------------------------------------------------

@pytest.mark.parametrize("data, expected", [
    ({"listeners": [{"name": "", "port": 80}]}, ["listeners[0].name: must not be empty"]),
    ({"listeners": [{"name": " ", "port": 80}]}, ["listeners[0].name: must not be empty"]),
    (cfg(routes=[route(name="", fixed_response={})]), ["routes[0].name: must not be empty"]),
    (cfg(default_route={"name": "", "fixed_response": {}}),
     ["default_route.name: must not be empty"]),
    (cfg(demo_backends=[{"name": "d", "port": 9001}, {"name": "d", "port": 9002}]),
     ['demo_backends[1].name: duplicate demo backend name "d" (also demo_backends[0])']),
    (cfg(pools={"app": {"targets": ["10.0.0.1:80", "b:81", {"host": "10.0.0.1", "port": 80}]}}),
     ["pools.app.targets[2]: 10.0.0.1:80 is listed twice (targets[0] and targets[2]); "
      "give it once, with a weight"]),
    (cfg(pools={"app": {"targets": ["[::1]:80", {"address": "[0:0::1]:80", "weight": 2}]}}),
     ["pools.app.targets[1]: [0:0::1]:80 is listed twice (targets[0] and targets[1]); "
      "give it once, with a weight"]),
    (cfg(routes=[route(fixed_response={"status": 302})]),
     ["routes[0].fixed_response.status: must be 2xx, 4xx or 5xx (as ALB); for a 3xx use a "
      "`redirect` action"]),
    (cfg(default_route={"fixed_response": {"status": 399}}),
     ["default_route.fixed_response.status: must be 2xx, 4xx or 5xx (as ALB); for a 3xx use a "
      "`redirect` action"]),
    (cfg(routes=[route(fixed_response={"content_type": "html"})]),
     ["routes[0].fixed_response.content_type: must be a media type, type/subtype with optional "
      "parameters (\"text/html; charset=utf-8\"); got 'html'"]),
    (cfg(routes=[route(fixed_response={"content_type": "text/html; charset"})]),
     ["routes[0].fixed_response.content_type: must be a media type, type/subtype with optional "
      "parameters (\"text/html; charset=utf-8\"); got 'text/html; charset'"]),
    (cfg(routes=[route(fixed_response={}, match={"path_prefix": "/search?q="})]),
     ['routes[0].match.path_prefix: must not contain "?": it would never match, as the query '
      "(and fragment) are not part of the path"]),
    (cfg(routes=[route(fixed_response={}, match={"path_prefix": "/a#b"})]),
     ['routes[0].match.path_prefix: must not contain "#": it would never match, as the query '
      "(and fragment) are not part of the path"]),
    (cfg(routes=[route(fixed_response={}, match={"path": "/docs/*#intro"})]),
     ['routes[0].match.path: must not contain "#": it would never match, as the query '
      "(and fragment) are not part of the path"]),
])
def test_lax_values_are_refused(data: dict[str, Any], expected: list[str]) -> None:
    assert errors(data) == expected


def test_media_types_and_path_wildcards_still_accepted() -> None:
    config = parse_config(cfg(routes=[
        route(name="a", fixed_response={"content_type": 'text/html; charset="utf-8";q=1'},
              match={"path": "/img/?.png"}),
        route(name="b", fixed_response={"status": 204, "content_type": "application/json"})]),
        env={})
    assert config.routes[1].action == FixedResponseAction(204, "application/json")
    assert config.routes[0].match.path == "/img/?.png"  # `?`: one character, not a query
    assert errors(cfg(routes=[route(fixed_response={"content_type": "x"})])) != []


@pytest.mark.parametrize("data, expected", [
    ({"listeners": [{**LISTENER, "header_timeout_s": 1e300}]},
     ["listeners[0].header_timeout_s: must be <= 31536000; got 1e+300"]),
    (cfg(shutdown={"drain_timeout_s": 31536001}),
     ["shutdown.drain_timeout_s: must be <= 31536000; got 31536001"]),
    (cfg(pools={"app": {"targets": ["a:1"], "response_timeout_s": 1e30}}),
     ["pools.app.response_timeout_s: must be <= 31536000; got 1e+30"]),
    (cfg(admin={"peers": {"timeout_s": 1e9}}),
     ["admin.peers.timeout_s: must be <= 31536000; got 1000000000"]),
    (cfg(routes=[route(fixed_response={}, hsts_max_age_s=2**31)]),
     ["routes[0].hsts_max_age_s: must be <= 2147483647; got 2147483648"]),
])
def test_durations_are_capped_at_a_year(data: dict[str, Any], expected: list[str]) -> None:
    assert errors(data) == expected


def test_duration_cap_spares_rates_and_own_bounds() -> None:
    from lbcdn.configkit.fields import MAX_DURATION_S
    config = parse_config(cfg(shutdown={"drain_timeout_s": MAX_DURATION_S},
                              routes=[route(fixed_response={}, hsts_max_age_s=63072000)],
                              dns={"rate_limit": {"responses_per_s": 1e8}}), env={})
    assert config.shutdown.drain_timeout_s == 31536000
    assert config.routes[0].hsts_max_age_s == 63072000  # two years, as HSTS preloading asks
    assert errors(cfg(shutdown={"drain_timeout_s": MAX_DURATION_S + 1})) != []


# -- files ---------------------------------------------------------------------------------

def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lbcdn.yaml"
    path.write_text(text)
    return path


def file_errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return info.value.lines()


def test_load_file(tmp_path: Path) -> None:
    path = write(tmp_path, "listeners:\n  - {name: web, port: 8080}\n")
    assert load_config(path, env={}).listeners[0].port == 8080
    assert load_config(str(path), env={}).listeners[0].name == "web"


def test_yaml_syntax_error_has_file_line_column(tmp_path: Path) -> None:
    path = write(tmp_path, "listeners:\n  - name: web\n    port: [8080\n")
    (line,) = file_errors(path)
    assert line.startswith(f"{path}:4:1: YAML syntax error: ")


def test_yaml_bad_indentation(tmp_path: Path) -> None:
    path = write(tmp_path, "listeners:\n  - name: web\n   port: 8080\n")
    (line,) = file_errors(path)
    assert line.startswith(f"{path}:3:")
    assert "YAML syntax error" in line


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "admin:\n  port: 1\n  port: 2\nlisteners: []\n")
    assert file_errors(path) == [
        f"{path}:3:3: YAML syntax error: duplicate key 'port' (first given on line 2)"]


def test_yaml_merge_keys_may_override(tmp_path: Path) -> None:
    path = write(tmp_path, "listeners:\n  - &b {name: a, port: 80}\n"
                           "  - {<<: *b, name: b, port: 81}\n")
    assert [x.name for x in load_config(path, env={}).listeners] == ["a", "b"]


@pytest.mark.parametrize("text, message", [
    ("", "the configuration is empty"),
    ("# only a comment\n", "the configuration is empty"),
    ("- a\n- b\n", "the top level must be a mapping, got a list"),
    ("just text\n", 'the top level must be a mapping, got a string ("just text")'),
])
def test_empty_and_non_mapping_files(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    assert file_errors(path) == [f"{path}: {message}"]


def test_missing_and_undecodable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert file_errors(missing) == [f"{missing}: cannot read: No such file or directory"]
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"listeners: \xff\n")
    assert file_errors(bad) == [f"{bad}: not valid UTF-8 (byte 11)"]


# -- the documented example ----------------------------------------------------------------

EXAMPLE = REPO / "config" / "example-full.yaml"


def test_full_example_is_valid() -> None:
    config = load_config(EXAMPLE, env={})
    assert [lst.name for lst in config.listeners] == ["public", "internal", "public-tls"]
    assert config.listeners[2].tls is not None
    assert config.listeners[1].port == 8081
    assert config.admin.token == "example-only-change-me"
    assert config.routes[3].action == FixedResponseAction(
        status=503, body="Down for maintenance; the fee is $0.\n")
    assert load_config(EXAMPLE, env={"LBCDN_ADMIN_TOKEN": "t"}).admin.token == "t"


def _yaml_keys(node: object, out: set[str], named: set[str], prefix: str = "") -> None:
    """Every key path in the YAML; the keys of a mapping keyed by name (`pools`,
    `cache.policies`, ...: the paths in `named`) are folded into `*`."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = "*" if prefix.rstrip(".") in named else key
            out.add(f"{prefix}{here}")
            _yaml_keys(value, out, named, f"{prefix}{here}.")
    elif isinstance(node, list):
        for item in node:
            _yaml_keys(item, out, named, prefix)


def _schema_keys(cls: type, out: set[str], named: set[str], prefix: str = "") -> None:
    """Every YAML key the schema accepts, following the loader's special shapes; a
    dict[str, X] field is a mapping keyed by name: its path goes into `named` and X's keys
    are expected under `<path>.*.`."""
    import dataclasses
    from typing import get_args, get_origin, get_type_hints

    from lbcdn.configkit.reflect import RENAMES
    renames = RENAMES.get(cls, {})  # per class: only MatchConfig renames hosts -> host
    for f in dataclasses.fields(cls):
        tp = get_type_hints(cls)[f.name]
        if cls is RouteConfig and f.name == "action":
            for key, action in (("forward", ForwardAction), ("redirect", RedirectAction),
                                ("fixed_response", FixedResponseAction)):
                out.add(f"{prefix}{key}")
                _schema_keys(action, out, named, f"{prefix}{key}.")
            continue
        if f.name == "name" and cls.__name__ == "PoolConfig":
            continue  # a pool's name is its key under `pools`
        key = renames.get(f.name, f.name)
        out.add(f"{prefix}{key}")
        sub_prefix = f"{prefix}{key}."
        if get_origin(tp) is dict:
            named.add(f"{prefix}{key}")
            sub_prefix += "*."
        inner = [a for a in (get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)]
        for sub in inner:
            assert isinstance(sub, type)
            _schema_keys(sub, out, named, sub_prefix)


def test_full_example_uses_every_key() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    expected: set[str] = set()
    named: set[str] = set()
    _schema_keys(Config, expected, named)
    assert {"pools", "cache.policies", "buckets.users", "dns"} - named == {"dns"}
    used: set[str] = set()
    _yaml_keys(data, used, named)
    # default_route is a route: its own keys must be shown, its actions and the inside of
    # its header, CORS and security blocks are shown on routes.
    expected -= {k for k in expected if k.startswith("default_route.")
                 and k.split(".")[1] in ("match", "forward", "redirect", "fixed_response",
                                         "basic_auth", "mirror")}
    expected -= {k for k in expected if k.startswith("default_route.") and k.count(".") > 1
                 and k.split(".")[1] in ("request_headers", "response_headers", "cors",
                                         "security_headers")}
    missing = sorted(k for k in expected if k not in used)
    assert missing == [], f"config/example-full.yaml does not show: {missing}"


# -- YAML 1.2 numbers ------------------------------------------------------------------------

def listener_yaml(tmp_path: Path, extra: str) -> Path:
    return write(tmp_path, f"listeners:\n  - {{name: web, {extra}}}\n")


def test_yaml_integers_are_decimal(tmp_path: Path) -> None:
    for text, port in [("0100", 100), ("08080", 8080), ("+8080", 8080)]:
        assert load_config(listener_yaml(tmp_path, f"port: {text}"), env={}).listeners[0].port \
            == port, text


def test_yaml_11_integer_forms_are_strings(tmp_path: Path) -> None:
    for text in ["301:20", "0x46A0", "0b1", "1_000", "0o17"]:
        assert file_errors(listener_yaml(tmp_path, f"port: {text}")) == [
            f'listeners[0].port: expected an integer, got a string ("{text}")'], text


def test_yaml_12_floats(tmp_path: Path) -> None:
    for text, value in [("1e3", 1000.0), ("2.5E-1", 0.25), (".5", 0.5), ("1.", 1.0),
                        ("7", 7.0)]:
        path = listener_yaml(tmp_path, f"port: 80, idle_timeout_s: {text}")
        assert load_config(path, env={}).listeners[0].idle_timeout_s == value, text
    for text in [".inf", "-.Inf", ".NaN"]:  # still numbers, refused as not finite
        assert file_errors(listener_yaml(tmp_path, f"port: 80, idle_timeout_s: {text}")) == [
            "listeners[0].idle_timeout_s: must be a finite number"], text
    assert yaml.safe_load("a: 0100") == {"a": 64}  # only lbcdn's loader follows YAML 1.2


def test_yaml_explicit_int_tag_must_be_decimal(tmp_path: Path) -> None:
    path = listener_yaml(tmp_path, "port: !!int 0x50")
    assert file_errors(path) == [
        f"{path}:2:23: YAML syntax error: '0x50' is not a decimal integer"]


def test_dnssec_needs_admin_state_dir() -> None:
    zone = {"name": "example.com", "dnssec": {"enabled": True}}
    assert errors(with_pool(dns={"zones": [zone]})) == [
        "dns.zones[0].dnssec.enabled: needs admin.state_dir, where the zone's keys are kept "
        "(a new key at every start breaks the DS)"]
    parse_config(with_pool(dns={"zones": [zone]}, admin={"state_dir": "/var/lib/lbcdn"}),
                 env={})
    assert "dns.zones[0].dnssec.algorithm" in errors(with_pool(dns={"zones": [
        {"name": "example.com", "dnssec": {"algorithm": "RSASHA1"}}]}))[0]


# -- issue 20: route conditions, weighted forward, rewrites, basic auth --------------------

def two_pools(**sections: Any) -> dict[str, Any]:
    return cfg(pools={"blue": {"targets": ["127.0.0.1:9001"]},
                      "green": {"targets": ["127.0.0.1:9002"]}}, **sections)


GOOD_HASH = "$2b$04$" + "a" * 53


def test_conditions_and_actions_load_with_their_short_forms() -> None:
    config = parse_config(two_pools(routes=[route(
        match={"http_header": {"name": "X-A", "values": "b*"}, "method": "GET",
               "source_ip": "10.0.0.0/8", "query_string": [{"value": "x"}]},
        forward={"pools": [{"pool": "blue", "weight": 9}, {"pool": "green", "weight": 1}],
                 "stickiness": {"duration_s": 60}, "rewrite": {"path_prefix": "/a"}},
        basic_auth={"users": {"ops": GOOD_HASH}})]), env={})
    r = config.routes[0]
    assert r.match.http_headers[0].values == ("b*",)
    assert r.match.methods == ("GET",) and r.match.source_ips == ("10.0.0.0/8",)
    assert r.match.query_string[0].key is None
    assert isinstance(r.action, ForwardAction) and r.action.pools[1].weight == 1
    assert r.basic_auth is not None and r.basic_auth.realm == "lbcdn"


CONDITION_CASES: list[tuple[dict[str, Any], list[str]]] = [
    (with_pool(routes=[route(forward="app", match={"http_header": {"name": "X-*",
                                                                   "values": ["a"]}})]),
     ["routes[0].match.http_header[0].name: no wildcards in a header name"]),
    (with_pool(routes=[route(forward="app", match={"http_header": {"name": "Host",
                                                                   "values": ["a"]}})]),
     ["routes[0].match.http_header[0].name: use `host` to match the Host header"]),
    (with_pool(routes=[route(forward="app", match={"http_header": {"name": "X-A",
                                                                   "values": []}})]),
     ["routes[0].match.http_header[0].values: must list at least one value"]),
    (with_pool(routes=[route(forward="app", match={"http_header": {"name": "X-A",
                                                                   "values": ["x" * 129]}})]),
     ["routes[0].match.http_header[0].values[0]: at most 128 characters (ALB's limit); "
      "got 129"]),
    (with_pool(routes=[route(forward="app", match={"query_string": [{"key": "", "value": "a"}]})]),
     ["routes[0].match.query_string[0].key: must not be empty (leave it out to match any key)"]),
    (with_pool(routes=[route(forward="app", match={"method": ["GET", "get", "G*"]})]),
     ["routes[0].match.method[1]: 'get': a method is 1-40 of A-Z, '-' and '_' "
      "(case-sensitive, no wildcards)",
      "routes[0].match.method[2]: 'G*': a method is 1-40 of A-Z, '-' and '_' "
      "(case-sensitive, no wildcards)"]),
    (with_pool(routes=[route(forward="app", match={"source_ip": ["10.1.2.3/8", "10.0.0.300/8",
                                                                 "*"]})]),
     ["routes[0].match.source_ip[0]: '10.1.2.3/8' has host bits set; did you mean 10.0.0.0/8?",
      "routes[0].match.source_ip[1]: '10.0.0.300/8' is not an IPv4 or IPv6 CIDR range "
      "(10.0.0.0/8, 2001:db8::/32)",
      "routes[0].match.source_ip[2]: '*' is not an IPv4 or IPv6 CIDR range "
      "(10.0.0.0/8, 2001:db8::/32)"]),
    (with_pool(routes=[route(forward="app", match={"host": ["a.com", "b.com"],
                                                   "method": ["GET", "PUT"],
                                                   "source_ip": ["::1/128", "10.0.0.0/8"]})]),
     ["routes[0].match: 6 condition values; at most 5 per route (ALB's limit; raise "
      "routing.max_condition_values)"]),
    (two_pools(routes=[route(forward={"pools": [{"pool": "blue", "weight": 1},
                                                {"pool": "red", "weight": 1},
                                                {"pool": "blue", "weight": 0}]})]),
     ['routes[0].forward.pools[2]: pool "blue" is listed twice (pools[0] and pools[2])',
      'routes[0].forward.pools[1].pool: unknown pool "red" (known: blue, green)']),
    (two_pools(routes=[route(forward={"pool": "blue",
                                      "pools": [{"pool": "green", "weight": 1}]})]),
     ["routes[0].forward: give `pool` or `pools`, not both"]),
    (two_pools(routes=[route(forward={"pools": [{"pool": "blue", "weight": 0}]})]),
     ["routes[0].forward.pools: at least one weight must be above 0"]),
    (two_pools(routes=[route(forward={"pools": [{"pool": "blue", "weight": 1000}]})]),
     ["routes[0].forward.pools[0].weight: must be <= 999; got 1000"]),
    (two_pools(routes=[route(forward={"pools": [{"pool": "blue", "weight": 1}] * 6})]),
     ["routes[0].forward.pools: at most 5 pools (ALB's limit); got 6"] +
     [f'routes[0].forward.pools[{i}]: pool "blue" is listed twice (pools[0] and pools[{i}])'
      for i in range(1, 6)]),
    (two_pools(routes=[route(forward={"pool": "blue", "stickiness": {"duration_s": 5}})]),
     ["routes[0].forward.stickiness: needs `pools` (a single pool has nothing to stick to; "
      "see the pool's `stickiness`)"]),
    (two_pools(routes=[route(forward={"pools": [{"pool": "blue", "weight": 1}],
                                      "stickiness": {"duration_s": 0}})]),
     ["routes[0].forward.stickiness.duration_s: must be >= 1; got 0"]),
    (with_pool(routes=[route(forward={"pool": "app", "rewrite": {}})]),
     ["routes[0].forward.rewrite: needs path_prefix, path_regex or host_regex"]),
    (with_pool(routes=[route(forward={"pool": "app", "rewrite": {
        "path_prefix": "api", "path_regex": "(", "host_regex": "(a)",
        "host_replacement": "$2"}})]),
     ['routes[0].forward.rewrite.path_prefix: must start with "/"',
      "routes[0].forward.rewrite.path_regex: not a valid regular expression: missing ), "
      "unterminated subpattern at position 0",
      "routes[0].forward.rewrite.host_replacement: $2 refers to a group the regex does not "
      "have (1)"]),
    (with_pool(routes=[route(forward={"pool": "app", "rewrite": {
        "path_regex": "x", "path_replacement": "/a?b"}})]),
     ['routes[0].forward.rewrite.path_replacement: must not contain "?" or "#": the query is '
      "kept as sent"]),
    (with_pool(routes=[route(forward="app", basic_auth={"users": {}})]),
     ["routes[0].basic_auth.users: must name at least one user"]),
    (with_pool(routes=[route(forward="app", basic_auth={"users": {"ops": "secret",
                                                                  "a:b": GOOD_HASH}})]),
     ["routes[0].basic_auth.users.ops: must be a bcrypt hash ($2b$12$ and 53 characters); "
      "never the password itself",
      "routes[0].basic_auth.users[\"a:b\"]: a user name is not empty and has no ':' "
      "(RFC 7617)"]),
    (with_pool(routes=[route(forward="app", match={"method": "GET"})],
               routing={"max_condition_values": 0}),
     ["routing.max_condition_values: must be >= 1; got 0"]),
]


@pytest.mark.parametrize("data, expected", CONDITION_CASES,
                         ids=[e[0][:60] for _, e in CONDITION_CASES])
def test_condition_and_action_errors_name_the_path(data: dict[str, Any],
                                                   expected: list[str]) -> None:
    assert errors(data) == expected


def test_the_condition_value_limit_is_configurable() -> None:
    data = with_pool(routes=[route(forward="app", match={"method": ["GET", "PUT", "POST",
                                                                    "HEAD", "DELETE", "PATCH"]})],
                     routing={"max_condition_values": 6})
    assert parse_config(data, env={}).routes[0].match.methods[-1] == "PATCH"


def test_proxy_protocol_errors_name_their_path() -> None:
    listener = {**LISTENER, "proxy_protocol": {"trusted": ["10.0.0.0/8", "10.0.0.300"],
                                               "requird": True}}
    assert errors({"listeners": [{**LISTENER, "proxy_protocol": {}}]}) == [
        "listeners[0].proxy_protocol.trusted: missing (required)"]
    assert errors({"listeners": [listener]}) == [
        "listeners[0].proxy_protocol.requird: unknown key (did you mean 'required'? allowed: "
        "accept, required, trusted)",
        "listeners[0].proxy_protocol.trusted[1]: not an address or CIDR: '10.0.0.300'"]
    assert errors(cfg(pools={"app": {"targets": ["127.0.0.1:9001"],
                                     "proxy_protocol": "v3"}})) == [
        'pools.app.proxy_protocol: must be one of "v1", "v2"; got "v3"']
    ok = parse_config({"listeners": [{**LISTENER, "proxy_protocol": {"trusted": ["::1"]}}]},
                      env={})
    pp = ok.listeners[0].proxy_protocol
    assert pp is not None and (pp.accept, pp.required, pp.trusted) == (True, True, ("::1",))


def test_mirror_needs_a_known_pool_and_a_forward() -> None:
    assert errors(with_pool(routes=[route(forward="app", mirror={"pool": "nope"})])) == [
        'routes[0].mirror.pool: unknown pool "nope" (known: app)']
    assert errors(with_pool(routes=[route(fixed_response={}, mirror={"pool": "app"})])) == [
        "routes[0].mirror: only on a route that forwards"]
    assert errors(with_pool(routes=[route(forward="app", mirror={
        "pool": "app", "percent": 101})])) == [
        "routes[0].mirror.percent: must be <= 100; got 101"]
