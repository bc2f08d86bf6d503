"""The cache config through the reflective loader: defaults, YAML shapes, every check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lbcdn.cache.behavior import Distribution
from lbcdn.cache.config import MANAGED_ORIGIN_REQUEST_POLICIES, CacheConfig, \
    CachePolicyConfig
from lbcdn.configkit.reflect import Loader


def load(data: object) -> tuple[Any, list[str]]:
    ld = Loader({"ORIGIN": "http://origin.internal:8080"})
    value = ld.value(CacheConfig, data, "cache")
    return value, [f"{p}: {m}" for p, m in ld.problems]


GOOD = {
    "storage": {"memory_max_bytes": 1 << 20, "disk_path": "/var/cache/lbcdn"},
    "policies": {
        "default": {},
        "static": {"default_ttl_s": 3600, "min_ttl_s": 60, "max_ttl_s": 86400,
                   "query_strings": {"behavior": "allow", "names": ["v"]},
                   "headers": ["Accept-Language"], "cookies": ["session"],
                   "allowed_methods": ["GET", "HEAD", "OPTIONS", "POST"],
                   "cached_methods": ["GET", "HEAD", "OPTIONS"],
                   "stale_while_revalidate_s": 30, "stale_if_error_s": 600,
                   "collapse": False, "lock_timeout_s": 2},
    },
    "origins": {
        "web": {"pool": "web"},
        "site": {"bucket": "site", "origin_path": "/prod"},
        "ext": {"url": "${ORIGIN}", "connect_timeout_s": 3, "connect_attempts": 2},
    },
    "origin_groups": {"ha": {"primary": "web", "secondary": "site",
                             "failover_statuses": [500, 503]}},
    "distributions": {
        "main": {
            "default_behavior": {"path_pattern": "*", "origin": "ha"},
            "behaviors": [{"path_pattern": "/images/*.jpg", "origin": "site",
                           "policy": "static"},
                          {"path_pattern": "/api/*", "origin": "ext"}],
            "custom_error_responses": [
                {"error_code": 404, "response_page_path": "/404.html", "response_code": 200,
                 "error_caching_min_ttl_s": 60},
                {"error_code": 503, "error_caching_min_ttl_s": 0}],
        },
    },
}


def test_defaults() -> None:
    cfg, problems = load({})
    assert problems == [] and cfg == CacheConfig()
    p = cfg.policy("default")
    assert (p.default_ttl_s, p.min_ttl_s, p.max_ttl_s) == (86400, 0, 31536000)
    assert p.query_strings.behavior == "none" and p.collapse and p.lock_timeout_s == 5
    assert p.allowed_methods == ("GET", "HEAD") and not p.cache_set_cookie and p.compress
    assert cfg.storage.disk_path is None


def test_full_config_and_behaviors() -> None:
    cfg, problems = load(GOOD)
    assert problems == []
    assert cfg.origins["ext"].url == "http://origin.internal:8080"
    assert cfg.policies["static"].query_strings.names == ("v",)
    d = Distribution(cfg.distributions["main"], cfg)
    img = d.select(b"/images/a/b.jpg")
    assert (img.origin, img.policy_name, img.policy.default_ttl_s) == ("site", "static", 3600)
    assert d.select(b"/images/a.png").origin == "ha"
    assert d.select(b"/api/x").origin == "ext" and d.select(b"/api/x").policy_name == "default"
    assert d.select(b"/").origin == "ha"
    assert d.error_ttl_s(404) == 60 and d.error_ttl_s(503) == 0 and d.error_ttl_s(500) == 10
    # the behavior's key builder uses its policy
    assert img.keys.kept_query(b"x=1&v=2") == b"v=2"


def test_policy_default_resolves_without_policies() -> None:
    cfg, problems = load({"policies": {"p": {}}, "origins": {"o": {"pool": "x"}},
                          "distributions": {"d": {"default_behavior": {
                              "path_pattern": "*", "origin": "o"}}}})
    assert problems == []
    assert cfg.policy("default") == CachePolicyConfig()


def test_origin_request_policies_defined_and_managed() -> None:
    cfg, problems = load({
        "origin_request_policies": {"app": {
            "headers": {"behavior": "allow", "names": ["Referer"]},
            "cookies": {"behavior": "all_except", "names": ["tracking"]},
            "query_strings": {"behavior": "all"}}},
        "origins": {"o": {"pool": "x"}},
        "distributions": {"d": {
            "default_behavior": {"path_pattern": "*", "origin": "o",
                                 "origin_request_policy": "app"},
            "behaviors": [{"path_pattern": "/cors/*", "origin": "o",
                           "origin_request_policy": "CORS-S3Origin"},
                          {"path_pattern": "/plain/*", "origin": "o"}]}}})
    assert problems == []
    app = cfg.origin_request_policy("app")
    assert app.headers.names == ("Referer",) and app.cookies.behavior == "all_except"
    assert cfg.origin_request_policy("CORS-S3Origin") is \
        MANAGED_ORIGIN_REQUEST_POLICIES["CORS-S3Origin"]
    assert cfg.origin_request_policy(None) is None
    d = Distribution(cfg.distributions["d"], cfg)
    assert d.select(b"/x").forwarding.query_for(b"b=2&a=1") == b"a=1&b=2"
    assert d.select(b"/cors/a").forwarding.lines([b"Origin", b": ", b"https://a", b"\r\n"],
                                                 passthrough=False) != []
    assert d.select(b"/plain/a").forwarding.lines([b"Origin", b": ", b"https://a", b"\r\n"],
                                                  passthrough=False) == []


def test_a_defined_origin_request_policy_wins_over_a_managed_one() -> None:
    cfg, problems = load({"origin_request_policies": {"AllViewer": {}}})
    assert problems == []
    assert cfg.origin_request_policy("AllViewer").headers.behavior == "none"


ORP_BEHAVIOR = {"origins": {"o": {"pool": "a"}}, "distributions": {"d": {
    "default_behavior": {"path_pattern": "*", "origin": "o", "origin_request_policy": "x"}}}}


@pytest.mark.parametrize("patch, expected", [
    ({"origin_request_policies": {"x": {"headers": {"behavior": "allow"}}}},
     "cache.origin_request_policies.x.headers.names: must list at least one name for allow"),
    ({"origin_request_policies": {"x": {"cookies": {"behavior": "none", "names": ["a"]}}}},
     "cache.origin_request_policies.x.cookies.names: must be empty for none"),
    ({"origin_request_policies": {"x": {"headers": {"behavior": "allow",
                                                    "names": ["Bad Header"]}}}},
     "cache.origin_request_policies.x.headers.names: 'Bad Header' is not a valid header"),
    ({"origin_request_policies": {"x": {"cookies": {"behavior": "allow",
                                                    "names": ["a;b"]}}}},
     "cache.origin_request_policies.x.cookies.names: 'a;b' is not a valid cookie name"),
    ({"origin_request_policies": {"x": {"headers": {"behavior": "allow",
                                                    "names": ["authorization"]}}}},
     "cache.origin_request_policies.x.headers.names: 'authorization': Authorization is "
     "forwarded only when the cache policy's headers key on it"),
    ({"origin_request_policies": {"x": {"headers": {"behavior": "allow", "names": ["Host"]}}}},
     "cache.origin_request_policies.x.headers.names: 'Host': Host is set by the edge"),
    ({"origin_request_policies": {"x": {"headers": {"behavior": "allow",
                                                    "names": ["Cookie"]}}}},
     "cache.origin_request_policies.x.headers.names: 'Cookie': cookies are listed under "
     "cookies"),
    ({"origin_request_policies": {"x": {"headers": {"behavior": "allow",
                                                    "names": ["accept-encoding"]}}}},
     "cache.origin_request_policies.x.headers.names: 'accept-encoding': Accept-Encoding is "
     "the cache's own"),
    ({"origin_request_policies": {"x": {"header": {}}}},
     "cache.origin_request_policies.x.header: unknown key"),
    ({**ORP_BEHAVIOR, "origin_request_policies": {"y": {}}},
     "cache.distributions.d.default_behavior.origin_request_policy: unknown origin request "
     "policy 'x'"),
])
def test_origin_request_policy_problems(patch: dict[str, Any], expected: str) -> None:
    value, problems = load(patch)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize("patch, expected", [
    ({"policies": {"p": {"min_ttl_s": 100, "default_ttl_s": 10}}},
     "cache.policies.p.min_ttl_s: must not exceed default_ttl_s (10)"),
    ({"policies": {"p": {"default_ttl_s": 100, "max_ttl_s": 10}}},
     "cache.policies.p.default_ttl_s: must not exceed max_ttl_s (10)"),
    ({"policies": {"p": {"query_strings": {"behavior": "allow"}}}},
     "cache.policies.p.query_strings.names: must list at least one name for allow"),
    ({"policies": {"p": {"query_strings": {"behavior": "all", "names": ["a"]}}}},
     "cache.policies.p.query_strings.names: must be empty for all"),
    ({"policies": {"p": {"query_strings": {"behavior": "some"}}}},
     'cache.policies.p.query_strings.behavior: must be one of "none", "allow", '
     '"all_except", "all"; got "some"'),
    ({"policies": {"p": {"headers": ["Bad Header"]}}},
     "cache.policies.p.headers: 'Bad Header' is not a valid header name"),
    ({"policies": {"p": {"allowed_methods": ["GET", "HEAD", "BR EW"]}}},
     "cache.policies.p.allowed_methods: 'BR EW' is not a method a cache route passes on"),
    ({"policies": {"p": {"allowed_methods": ["GET", "HEAD", "CONNECT"]}}},
     "cache.policies.p.allowed_methods: 'CONNECT' is not a method a cache route passes on"),
    ({"policies": {"p": {"cached_methods": ["GET"]}}},
     "cache.policies.p.cached_methods: must include GET and HEAD"),
    ({"policies": {"p": {"cached_methods": ["GET", "HEAD", "OPTIONS"]}}},
     "cache.policies.p.cached_methods: OPTIONS is not in allowed_methods"),
    ({"policies": {"p": {"cached_methods": ["GET", "HEAD", "POST"]}}},
     "cache.policies.p.cached_methods: unknown method 'POST'"),
    ({"policies": {"p": {"stale_if_error_s": -1}}},
     "cache.policies.p.stale_if_error_s: must be >= 0; got -1"),
    ({"policies": {"p": {"ttl": 5}}}, "cache.policies.p.ttl: unknown key"),
    ({"origins": {"o": {}}}, "cache.origins.o: needs exactly one of pool, bucket, url"),
    ({"origins": {"o": {"pool": "a", "url": "http://x"}}},
     "cache.origins.o: needs exactly one of pool, bucket, url, s3 (got pool, url)"),
    ({"origins": {"o": {"url": "http://x/path"}}},
     "cache.origins.o.url: must be http(s)://host[:port] without a path"),
    ({"origins": {"o": {"url": "ftp://x"}}}, "cache.origins.o.url: must be"),
    ({"origins": {"o": {"pool": "a", "origin_path": "prod/"}}},
     'cache.origins.o.origin_path: must start with "/"'),
    ({"origins": {"o": {"pool": "a", "connect_attempts": 0}}},
     "cache.origins.o.connect_attempts: must be >= 1; got 0"),
    ({"origins": {"o": {"pool": "a"}},
      "origin_groups": {"g": {"primary": "o", "secondary": "o"}}},
     "cache.origin_groups.g.secondary: must differ from primary"),
    ({"origins": {"o": {"pool": "a"}},
      "origin_groups": {"g": {"primary": "o", "secondary": "nope"}}},
     "cache.origin_groups.g.secondary: unknown origin 'nope'"),
    ({"origins": {"o": {"pool": "a"}, "p": {"pool": "b"}},
      "origin_groups": {"g": {"primary": "o", "secondary": "p", "failover_statuses": [418]}}},
     "cache.origin_groups.g.failover_statuses: 418 is not one of"),
    ({"origins": {"o": {"pool": "a"}, "p": {"pool": "b"}},
      "origin_groups": {"o": {"primary": "o", "secondary": "p"}}},
     "cache.origin_groups.o: an origin group must not share an id with an origin"),
    ({"distributions": {"d": {"default_behavior": {"path_pattern": "/x", "origin": "o"}}},
      "origins": {"o": {"pool": "a"}}},
     'cache.distributions.d.default_behavior.path_pattern: must be "*"'),
    ({"distributions": {"d": {"default_behavior": {"path_pattern": "*", "origin": "nope"}}}},
     "cache.distributions.d.default_behavior.origin: unknown origin or origin group 'nope'"),
    ({"distributions": {"d": {"default_behavior": {"path_pattern": "*", "origin": "o"},
                              "behaviors": [{"path_pattern": "/a", "origin": "o",
                                             "policy": "nope"}]}},
      "origins": {"o": {"pool": "a"}}},
     "cache.distributions.d.behaviors[0].policy: unknown cache policy 'nope'"),
    ({"distributions": {"d": {"default_behavior": {"path_pattern": "*", "origin": "o"},
                              "custom_error_responses": [
                                  {"error_code": 404}, {"error_code": 404}]}},
      "origins": {"o": {"pool": "a"}}},
     "cache.distributions.d.custom_error_responses[1].error_code: duplicate error_code 404"),
    ({"distributions": {"d": {"default_behavior": {"path_pattern": "*", "origin": "o"},
                              "custom_error_responses": [{"error_code": 418}]}},
      "origins": {"o": {"pool": "a"}}},
     "cache.distributions.d.custom_error_responses[0].error_code: must be one of"),
    ({"distributions": {"d": {"default_behavior": {"path_pattern": "*", "origin": "o"},
                              "custom_error_responses": [
                                  {"error_code": 404, "response_code": 200}]}},
      "origins": {"o": {"pool": "a"}}},
     "cache.distributions.d.custom_error_responses[0].response_code: needs "
     "response_page_path"),
    ({"distributions": {"d": {"default_behavior": {"path_pattern": "*", "origin": "o"},
                              "custom_error_responses": [
                                  {"error_code": 404, "response_page_path": "x.html"}]}},
      "origins": {"o": {"pool": "a"}}},
     'cache.distributions.d.custom_error_responses[0].response_page_path: must start with'),
])
def test_problems_name_their_yaml_path(patch: dict[str, Any], expected: str) -> None:
    value, problems = load(patch)
    assert any(p.startswith(expected) for p in problems), problems


def test_s3_origin(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    s3 = {"endpoint": "http://127.0.0.1:9000", "bucket": "media",
          "credentials": {"access_key_id": "AKID", "secret_access_key_file": str(secret)}}
    value, problems = load({"origins": {"m": {"s3": s3}}})
    assert problems == []
    assert value.origins["m"].s3.credentials.secret() == "from-a-file"
    assert value.origins["m"].s3.region == "us-east-1"
    bad = {"endpoint": "http://h/path", "bucket": "No_Such",
           "credentials": {"access_key_id": "AKID", "secret_access_key": "x",
                           "secret_access_key_file": "/nonexistent"}}
    _, problems = load({"origins": {"m": {"s3": bad}, "n": {"s3": {
        "endpoint": "http://h", "bucket": "abc",
        "credentials": {"access_key_id": "AKID", "secret_access_key_file": "/nonexistent"}}}}})
    where = "cache.origins.m.s3"
    assert f"{where}.endpoint: must be http(s)://host[:port] without a path" in problems
    assert f"{where}.bucket: must be an S3 bucket name (3-63 of a-z 0-9 . -)" in problems
    assert f"{where}.credentials: needs exactly one of secret_access_key, " \
           "secret_access_key_file" in problems
    assert "cache.origins.n.s3.credentials.secret_access_key_file: cannot read " \
           "'/nonexistent': No such file or directory" in problems


def test_parent_tier_errors_name_the_path() -> None:
    def tier(t: dict[str, Any]) -> list[str]:
        return load({"origins": {"o": {"url": "http://o:80"}},
                     "distributions": {"d": {"default_behavior": {"path_pattern": "*",
                                                                  "origin": "o"},
                                             "parent_tier": t}}})[1]
    assert tier({"peers": ["10.0.0.1:80", "[::1]:81"], "self_peer": "[::1]:81"}) == []
    assert tier({"peers": []}) == [
        "cache.distributions.d.parent_tier: needs exactly one of peers, dns_name"]
    assert tier({"dns_name": "edges.svc", "port": 8080, "self_peer": "auto"}) == []
    assert tier({"dns_name": "edges.svc", "self_peer": "a:1"}) == [
        "cache.distributions.d.parent_tier.port: is required with dns_name",
        "cache.distributions.d.parent_tier.self_peer: must be auto (or unset) with dns_name"]
    assert tier({"peers": ["a:1"], "port": 1}) == [
        "cache.distributions.d.parent_tier.port: is only used with dns_name"]
    assert tier({"peers": ["a:1", "a:1", "b"], "self_peer": "c:1",
                 "marker_header": "x y"}) == [
        "cache.distributions.d.parent_tier.peers[2]: 'b' is not host:port",
        "cache.distributions.d.parent_tier.peers: lists a peer twice",
        "cache.distributions.d.parent_tier.self_peer: 'c:1' is not one of peers",
        "cache.distributions.d.parent_tier.marker_header: must be a header name "
        "(letters, digits, -)"]
