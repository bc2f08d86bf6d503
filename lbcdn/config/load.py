"""Configuration loading: a YAML file -> a validated `Config`, or a `ConfigError` listing
every problem found, each with its YAML path (`routes[2].match.path: must start with "/"`).

Job: read and parse the YAML strictly (syntax errors carry file, line and column; duplicate
keys are errors), hand the tree to the generic reflective loader (reflect.py), and register
here what the generic loader cannot know:
- the special YAML shapes (pools keyed by name, `host:port` targets, a route's single action
  key, `match.host` as a string or a list, `default_route` without `match`);
- the semantic checks (unique names and addresses, pools that exist, host and path syntax,
  redirect and fixed-response rules).

Rules: validation happens once, here; the rest of the daemon trusts a `Config`. Shape hooks
reuse `Loader.dataclass` for everything that is not special, so new schema fields need no
change in this file. Secrets come from the environment via `${VAR}` (see env.py).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import yaml

from lbcdn.acme.config import AcmeConfig, OnDemandConfig
from lbcdn.bucket.config import BucketsConfig
from lbcdn.configkit import names
from lbcdn.configkit.errors import ConfigError
from lbcdn.configkit.reflect import (FIELD_HOOKS, INVALID, RENAMES, TYPE_HOOKS, VALIDATORS,
                                  Loader, describe, index, join)
from lbcdn.dns.config import DnsConfig, alias_problems
from lbcdn.http.head import HOP_BY_HOP
from lbcdn.config import route_policy  # noqa: F401  (registers its checks)
from lbcdn.config.schema import AccessLogConfig, AdminConfig, Config
from lbcdn.edge.config import ListenerConfig
from lbcdn.routing.config import (BasicAuthConfig, FixedResponseAction, ForwardAction,
                                  HeaderCondition, MatchConfig, QueryCondition, RedirectAction,
                                  RewriteConfig, RouteConfig)
from lbcdn.routing.rewrite import replacement_problem
from lbcdn.tls import CertificateConfig, ListenerTlsConfig
from lbcdn.upstream.config import PoolConfig, TargetConfig

__all__ = ["load_config", "load_config_text", "parse_config"]

MAX_FIXED_BODY_BYTES = 1 << 20
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
REDIRECT_PROTOCOLS = ("http", "https", "#{protocol}")
REDIRECT_PLACEHOLDERS = ("#{protocol}", "#{host}", "#{port}", "#{path}", "#{query}")
ACTION_KEYS = ("forward", "redirect", "fixed_response")


# -- reading YAML ------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which plain YAML loading silently overwrites."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges are meant to be overridden
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # unhashable key; the base constructor reports it
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {first.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = self.construct_scalar(node)
        if not _YAML12_INT.match(text):
            raise yaml.constructor.ConstructorError(
                None, None, f"{text!r} is not a decimal integer", node.start_mark)
        return int(text)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        text = self.construct_scalar(node)
        if not _YAML12_FLOAT.match(text):
            raise yaml.constructor.ConstructorError(
                None, None, f"{text!r} is not a number", node.start_mark)
        return float(super().construct_yaml_float(node))


# Numbers follow the YAML 1.2 core schema, not YAML 1.1's: `0100` is 100 (not octal 64),
# `301:20` and `0x46A0` stay strings (not base 60 and hex), `1e3` is a float (not a string).
_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_YAML12_INT = re.compile(r"[-+]?[0-9]+\Z")
_YAML12_FLOAT = re.compile(r"(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                           r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))\Z")
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_StrictLoader.add_implicit_resolver(_INT_TAG, _YAML12_INT, list("-+0123456789"))
_StrictLoader.add_implicit_resolver(_FLOAT_TAG, _YAML12_FLOAT, list("-+0123456789."))
_StrictLoader.add_constructor(_INT_TAG, _StrictLoader.construct_yaml_int)
_StrictLoader.add_constructor(_FLOAT_TAG, _StrictLoader.construct_yaml_float)


def _yaml_problem(source: str, e: yaml.YAMLError) -> tuple[str, str]:
    mark = getattr(e, "problem_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    return where, f"YAML syntax error: {problem}" + (f" ({context})" if context else "")


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate the YAML file at `path`; raises ConfigError."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError([(source, f"cannot read: {e.strerror or e}")], source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([(source, f"not valid UTF-8 (byte {e.start})")], source) from None
    return load_config_text(text, source, env)


def load_config_text(text: str, source: str = "<config>",
                     env: Mapping[str, str] | None = None) -> Config:
    """Parse and validate YAML text (what load_config read from `source`)."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        raise ConfigError([_yaml_problem(source, e)], source) from None
    config = parse_config(data, source, env)
    if config.dns is not None:
        _check_zones(config, source)
    return config


def _check_zones(config: Config, source: str) -> None:
    """Build the DNS zones and TSIG keys and open the location database once, so a broken
    zone file, record, key file or database is a configuration error (in check-config too),
    not a failure at start. Zone files, key files and the database are relative to `source`."""
    import time

    from lbcdn.dns.alias import aliases_from_config
    from lbcdn.dns.locate import open_location_database
    from lbcdn.dns.tsig import KeyProblem, build_keys
    from lbcdn.dns.zone import ZoneError, build_zones
    assert config.dns is not None
    base = os.path.dirname(os.path.abspath(source)) if os.path.exists(source) else "."
    try:
        build_zones(config.dns, now=time.time(), base_dir=base, aliases=aliases_from_config(
            config.listeners, config.pools, config.dns.public_addresses))
        build_keys(config.dns.tsig_keys, base)  # secret files must be there and readable
    except ZoneError as e:
        raise ConfigError([("", p) for p in e.problems], source) from None
    except KeyProblem as e:
        raise ConfigError(e.problems, source) from None
    try:
        geo = open_location_database(config.dns.location_database, base)
    except ValueError as e:
        raise ConfigError([("", str(e))], source) from None
    if geo is not None:
        geo.close()


def parse_config(data: object, source: str = "<config>",
                 env: Mapping[str, str] | None = None) -> Config:
    """Validate already-parsed YAML; `env` defaults to os.environ. Raises ConfigError."""
    if data is None:
        raise ConfigError([(source, "the configuration is empty")], source)
    if not isinstance(data, Mapping):
        raise ConfigError([(source, f"the top level must be a mapping, got {describe(data)}")],
                          source)
    loader = Loader(os.environ if env is None else env)
    config = loader.value(Config, data, "")
    if loader.problems or config is INVALID:
        raise ConfigError(loader.problems or [(source, "invalid configuration")], source)
    assert isinstance(config, Config)
    return config


# -- shape hooks -------------------------------------------------------------------------


def _pools(ld: Loader, data: object, path: str) -> Any:
    """`pools: {NAME: body}`: the key is the pool's name."""
    if not isinstance(data, Mapping):
        return ld.error(path, f"expected a mapping of pool name to pool, got {describe(data)}")
    out: dict[str, PoolConfig] = {}
    ok = True
    # Routes are checked against every pool named, even one whose body has errors, so a
    # typo inside a pool does not also produce "unknown pool" errors.
    ld.notes["pool_names"] = [n for n in data if isinstance(n, str)]
    for name, body in data.items():
        sub = join(path, name)
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            ld.error(sub, "a pool name must be a non-empty string without spaces")
            ok = False
            continue
        if isinstance(body, Mapping) and "name" in body:
            ld.error(join(sub, "name"), "not allowed: a pool's name is its key under pools")
            body = {k: v for k, v in body.items() if k != "name"}
            ok = False
        given: dict[str, Any] = {"name": name}
        if isinstance(body, Mapping) and "targets" not in body and "discovery" not in body:
            ld.error(join(sub, "targets"), "missing (required)")  # unless discovery finds them
            given["targets"] = INVALID
        pool = ld.dataclass(PoolConfig, body, sub, given=given)
        if pool is INVALID:
            ok = False
        else:
            out[name] = pool
    if not ok:
        ld.partial[path] = [(join(path, n), p) for n, p in out.items()]
    return out if ok else INVALID


def _target_port(ld: Loader, port: int, path: str) -> Any:
    meta = TargetConfig.__dataclass_fields__["port"].metadata
    if not meta["min"] <= port <= meta["max"]:
        return ld.error(path, f"port must be {meta['min']}-{meta['max']}; got {port}")
    return port


def _host_port(ld: Loader, data: object, path: str) -> tuple[Any, Any]:
    """A `host:port` string (IPv6 as `[::1]:8080`) -> (host, port), or INVALIDs."""
    text = ld.string(data, path)
    if text is INVALID:
        return INVALID, INVALID
    parsed = names.split_host_port(text)
    if parsed is None:
        ld.error(path, f'expected "host:port" (IPv6 as "[::1]:8080"), got {describe(text)}')
        return INVALID, INVALID
    host, port = parsed
    problem = names.target_host_problem(host)
    if problem:
        ld.error(path, problem)
        host = INVALID
    return host, _target_port(ld, port, path)


def _target(ld: Loader, data: object, path: str) -> Any:
    """A target: `"host:port"`, `{host, port, weight}` or `{address: "host:port", weight}`."""
    if isinstance(data, str):
        host, port = _host_port(ld, data, path)
        if host is INVALID or port is INVALID:
            return INVALID
        return TargetConfig(host=host, port=port)
    if isinstance(data, Mapping) and "address" in data:
        both = [k for k in ("host", "port") if k in data]
        if both:
            ld.error(join(path, both[0]), "give either address or host and port, not both")
        host, port = _host_port(ld, data["address"], join(path, "address"))
        rest = {k: v for k, v in data.items() if k not in ("address", "host", "port")}
        target = ld.dataclass(TargetConfig, rest, path, given={"host": host, "port": port},
                              extra_keys=("address",))
        return INVALID if both else target
    if isinstance(data, Mapping):
        return ld.dataclass(TargetConfig, data, path)
    return ld.error(path, f'expected "host:port" or a mapping, got {describe(data)}')


def _target_host(ld: Loader, data: object, path: str) -> Any:
    host = ld.string(data, path)
    if host is INVALID:
        return INVALID
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # brackets belong to URLs, not to an address
    problem = names.target_host_problem(host)
    return ld.error(path, problem) if problem else host


def _forward(ld: Loader, data: object, path: str) -> Any:
    if isinstance(data, Mapping):
        return ld.dataclass(ForwardAction, data, path)
    name = ld.string(data, path)
    if name is INVALID:
        return INVALID
    if not name:
        return ld.error(path, "expected a pool name")
    return ForwardAction(pool=name)


def _route_like(ld: Loader, data: object, path: str, *, default: bool) -> Any:
    if not isinstance(data, Mapping):
        return ld.error(path, f"expected a mapping, got {describe(data)}")
    present = [k for k in ACTION_KEYS if k in data]
    # Each action given is loaded, even when there are too many, to report its own errors.
    actions: list[Any] = []
    for key in present:
        sub = join(path, key)
        if key == "forward":
            actions.append(_forward(ld, data[key], sub))
        elif key == "redirect":
            actions.append(ld.dataclass(RedirectAction, data[key], sub))
        else:
            actions.append(ld.dataclass(FixedResponseAction, data[key], sub))
    action: Any = actions[0] if len(actions) == 1 else INVALID
    cache = data.get("cache")
    if cache is not None:
        # the route is answered through the cache: an action would never run
        for key in present:
            ld.error(join(path, key), f"not with cache: the route is answered through "
                                      f"distribution {cache!r}, whose behaviors name the "
                                      f"origin; remove {key}")
        action = INVALID if present else None
    elif not present:
        ld.error(path, "needs exactly one action: forward, redirect or fixed_response "
                       "(or cache: DISTRIBUTION)")
    elif len(present) > 1:
        ld.error(path, f"has {len(present)} actions ({', '.join(present)}); give exactly one "
                       "of forward, redirect, fixed_response")
    rest = {k: v for k, v in data.items() if k not in ACTION_KEYS}
    given: dict[str, Any] = {"action": action}
    if default:
        if "match" in rest:
            ld.error(join(path, "match"),
                     "not allowed: default_route applies to requests no route matched")
            del rest["match"]
            given["action"] = INVALID
        given["match"] = MatchConfig()
        if "name" not in rest:
            given["name"] = "default"
    return ld.dataclass(RouteConfig, rest, path, given=given, extra_keys=ACTION_KEYS)


def _route(ld: Loader, data: object, path: str) -> Any:
    return _route_like(ld, data, path, default=False)


def _default_route(ld: Loader, data: object, path: str) -> Any:
    return _route_like(ld, data, path, default=True)


def _match_hosts(ld: Loader, data: object, path: str) -> Any:
    """`match.host`: one host or a list; lower-cased, one trailing dot dropped."""
    items: list[tuple[object, str]]
    if isinstance(data, list):
        items = [(h, index(path, i)) for i, h in enumerate(data)]
    else:
        items = [(data, path)]
    out: list[str] = []
    ok = True
    for raw, sub in items:
        host = ld.string(raw, sub)
        if host is INVALID:
            ok = False
            continue
        host = host.lower()
        host = host[:-1] if host.endswith(".") and len(host) > 1 else host
        problem = names.match_host_problem(host)
        if problem:
            ok = ld.error(sub, problem) is not INVALID
        out.append(host)
    return tuple(out) if ok else INVALID


def _one_or_list(item: Any) -> Any:
    """A field hook for a list field that also takes a single item (`method: GET`)."""
    def hook(ld: Loader, data: object, path: str) -> Any:
        return ld.value(tuple[item, ...], data if isinstance(data, list) else [data], path)
    return hook


TYPE_HOOKS[TargetConfig] = _target
TYPE_HOOKS[RouteConfig] = _route
FIELD_HOOKS[(Config, "pools")] = _pools
FIELD_HOOKS[(Config, "default_route")] = _default_route
FIELD_HOOKS[(MatchConfig, "hosts")] = _match_hosts
FIELD_HOOKS[(TargetConfig, "host")] = _target_host
FIELD_HOOKS[(MatchConfig, "http_headers")] = _one_or_list(HeaderCondition)
FIELD_HOOKS[(MatchConfig, "methods")] = _one_or_list(str)
FIELD_HOOKS[(MatchConfig, "source_ips")] = _one_or_list(str)
FIELD_HOOKS[(HeaderCondition, "values")] = _one_or_list(str)
RENAMES[MatchConfig] = {"hosts": "host", "http_headers": "http_header", "methods": "method",
                        "source_ips": "source_ip"}


# -- semantic checks ---------------------------------------------------------------------


# Headers that cannot carry the request id: they frame the message or belong to one hop
# (the proxy reads, drops or rewrites them), or the proxy sets them itself.
_FRAMING_HEADERS = {h.decode() for h in HOP_BY_HOP} | {"content-length", "host", "expect"}
_PROXY_HEADERS = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-port", "via")


def _request_id_header_problem(name: str) -> str | None:
    problem = names.header_token_problem(name)
    if problem:
        return problem
    if name.lower() in _FRAMING_HEADERS:
        return f"{name!r} frames the request or belongs to one hop; choose another header"
    if name.lower() in _PROXY_HEADERS:
        return f"{name!r} is set by the proxy itself; choose another header"
    return None


def _check_listener(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    if isinstance(v.get("name"), str) and not v["name"].strip():
        ld.error(join(path, "name"), "must not be empty")
    if "request_id_header" in v:
        problem = _request_id_header_problem(v["request_id_header"])
        if problem:
            ld.error(join(path, "request_id_header"), problem)
    if "address" in v:
        problem = names.bind_address_problem(v["address"])
        if problem:
            ld.error(join(path, "address"), problem)
    versions = v.get("http_versions")
    if versions is not None and (not versions or len(set(versions)) != len(versions)):
        ld.error(join(path, "http_versions"), "list h2, http1.1 or both, each once")
    one, total = v.get("max_header_bytes"), v.get("max_headers_total_bytes")
    if one is not None and total is not None and one > total:
        ld.error(join(path, "max_header_bytes"),
                 f"must not exceed max_headers_total_bytes ({total})")


def _check_certificate(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    for key in ("cert_file", "key_file"):
        if key in v and not os.access(v[key], os.R_OK):
            ld.error(join(path, key), f"cannot read {v[key]!r}")
    for i, name in enumerate(v.get("server_names", ())):
        problem = names.match_host_problem(name.lower())
        if problem:
            ld.error(index(join(path, "server_names"), i), problem)


def _check_access_log(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    """The access log file is opened at start: a path that cannot be opened stops `serve`."""
    file = v.get("path")
    if file is None or v.get("enabled") is False:
        return
    where = join(path, "path")
    if not file.strip():
        ld.error(where, "must not be empty (leave it out to log to stdout)")
    elif os.path.isdir(file):
        ld.error(where, f"{file!r} is a directory; give the path of a file")
    else:
        parent = os.path.dirname(os.path.abspath(file))
        if not os.path.isdir(parent):
            ld.error(where, f"the directory {parent!r} does not exist")


def _check_listener_tls(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    if not v.get("certificates") and not v.get("acme") and not v.get("on_demand"):
        ld.error(join(path, "certificates"), "needs at least one certificate (or an `acme` "
                                             "entry, or `on_demand`)")


def _check_acme(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    directory = v.get("directory")
    if isinstance(directory, str) and not re.match(r"https?://[^/\s]+", directory):
        ld.error(join(path, "directory"), f"{directory!r} is not an http(s) URL")
    if "names" in v and not v["names"]:
        ld.error(join(path, "names"), "needs at least one name")
    for i, name in enumerate(v.get("names", ())):
        base = name.lower().removeprefix("*.")
        problem = names.match_host_problem(base)
        if problem or base.startswith("*") or names.is_ip(base.strip("[]")):
            ld.error(index(join(path, "names"), i),
                     problem or f"{name!r}: a DNS name, at most one leading `*.` label")
        elif name.startswith("*.") and v.get("challenge") not in (None, "dns-01"):
            ld.error(index(join(path, "names"), i),
                     f"{name!r}: a wildcard name needs the dns-01 challenge")
    bundle = v.get("ca_bundle")
    if bundle is not None and not os.access(bundle, os.R_OK):
        ld.error(join(path, "ca_bundle"), f"cannot read {bundle!r}")


def _check_on_demand(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    for key in ("directory", "ask"):
        url = v.get(key)
        if isinstance(url, str) and not re.match(r"https?://[^/\s]+", url):
            ld.error(join(path, key), f"{url!r} is not an http(s) URL")
    if "allow" in v and not v["allow"]:
        ld.error(join(path, "allow"), "needs at least one name or `*.` pattern")
    for i, pattern in enumerate(v.get("allow", ())):
        base = pattern.lower().removeprefix("*.")
        if names.match_host_problem(base) or "*" in base or names.is_ip(base.strip("[]")):
            ld.error(index(join(path, "allow"), i),
                     f"{pattern!r}: a DNS name, or `*.` and a DNS name")
    bundle = v.get("ca_bundle")
    if bundle is not None and not os.access(bundle, os.R_OK):
        ld.error(join(path, "ca_bundle"), f"cannot read {bundle!r}")


def _check_route(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    if isinstance(v.get("name"), str) and not v["name"].strip():
        ld.error(join(path, "name"), "must not be empty")
    if v.get("https_redirect_status", 301) not in (301, 308):
        ld.error(join(path, "https_redirect_status"), "must be 301 or 308")


def _check_admin(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    if v.get("port") and "address" in v:
        problem = names.bind_address_problem(v["address"])
        if problem:
            ld.error(join(path, "address"), problem)
    if isinstance(v.get("token"), str) and not v["token"].strip():
        ld.error(join(path, "token"), "must not be empty (leave it out to set no token)")


def _check_pool(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    if "targets" in v and not v["targets"] and v.get("discovery") is None:
        ld.error(join(path, "targets"), "must list at least one target")
    first: dict[tuple[object, int], int] = {}
    for i, target in enumerate(v.get("targets", ())):
        key = (_ip(target.host) or target.host, target.port)
        if key in first:
            ld.error(index(join(path, "targets"), i),
                     f"{names.format_host_port(target.host, target.port)} is listed twice "
                     f"(targets[{first[key]}] and targets[{i}]); give it once, with a weight")
        first.setdefault(key, i)
    host_header = v.get("host_header")
    if host_header is not None and host_header not in ("preserve", "target"):
        hp = names.split_host_port(host_header)
        problem = names.match_host_problem(hp[0] if hp else host_header.lower())
        if problem or host_header.startswith("*"):
            ld.error(join(path, "host_header"),
                     "must be preserve, target, or a host name (with an optional port)")


_WS_OR_CTL = re.compile(r"[\x00-\x20\x7f]")
_CTL = re.compile(r"[\x00-\x1f\x7f]")


def _check_path(ld: Loader, value: str | None, path: str) -> None:
    if value is None:
        return
    if not value.startswith("/"):
        ld.error(path, 'must start with "/"')
    elif _WS_OR_CTL.search(value):
        ld.error(path, "must not contain spaces or control characters")


def _check_match(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    _check_path(ld, v.get("path_prefix"), join(path, "path_prefix"))
    _check_path(ld, v.get("path"), join(path, "path"))
    # The request path never holds a query or a fragment. In `path`, `?` is the
    # one-character wildcard, so only `#` is refused there.
    for key, chars in (("path_prefix", "?#"), ("path", "#")):
        value = v.get(key)
        bad = [c for c in chars if value and value.startswith("/") and c in value]
        if bad:
            ld.error(join(path, key), f'must not contain "{bad[0]}": it would never match, as '
                                      "the query (and fragment) are not part of the path")


# ALB's limits on condition values
MAX_CONDITION_CHARS = 128
_METHOD = re.compile(r"[A-Z_-]{1,40}")
MAX_WEIGHTED_POOLS = 5
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


def _check_text(ld: Loader, value: str, path: str) -> None:
    if len(value) > MAX_CONDITION_CHARS:
        ld.error(path, f"at most {MAX_CONDITION_CHARS} characters (ALB's limit); "
                       f"got {len(value)}")


def _check_header_condition(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    name = v.get("name")
    if name is not None:
        problem = names.header_token_problem(name)
        if "*" in name or "?" in name:
            problem = "no wildcards in a header name"
        elif not problem and name.lower() == "host":
            problem = "use `host` to match the Host header"
        if problem:
            ld.error(join(path, "name"), problem)
    values = v.get("values")
    if values is not None and not values:
        ld.error(join(path, "values"), "must list at least one value")
    for i, value in enumerate(values or ()):
        _check_text(ld, value, index(join(path, "values"), i))


def _check_query_condition(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    for key in ("key", "value"):
        if v.get(key) is not None:
            _check_text(ld, v[key], join(path, key))
    if v.get("key") == "":
        ld.error(join(path, "key"), "must not be empty (leave it out to match any key)")


def _check_conditions(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    for i, method in enumerate(v.get("methods", ())):
        if not _METHOD.fullmatch(method):
            ld.error(index(join(path, "method"), i),
                     f"{method!r}: a method is 1-40 of A-Z, '-' and '_' (case-sensitive, no "
                     "wildcards)")
    for i, text in enumerate(v.get("source_ips", ())):
        where = index(join(path, "source_ip"), i)
        try:
            ipaddress.ip_network(text, strict=True)
        except ValueError as e:
            if "host bits set" in str(e):
                net = ipaddress.ip_network(text, strict=False)
                ld.error(where, f"{text!r} has host bits set; did you mean {net}?")
            else:
                ld.error(where, f"{text!r} is not an IPv4 or IPv6 CIDR range (10.0.0.0/8, "
                                "2001:db8::/32)")


def condition_values(match: MatchConfig) -> int:
    """How many condition values a route lists, counted as ALB does."""
    return (len(match.hosts) + (match.path_prefix is not None) + (match.path is not None)
            + sum(len(h.values) for h in match.http_headers) + len(match.query_string)
            + len(match.methods) + len(match.source_ips))


def _check_forward(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    pools = v.get("pools", ())
    if "pool" in v and "pools" in v:   # both loaded (a default counts as loaded)
        if v["pool"] is not None and pools:
            ld.error(path, "give `pool` or `pools`, not both")
        elif v["pool"] is None and not pools:
            ld.error(path, "needs `pool` (one pool) or `pools` (weighted, at least one)")
    if len(pools) > MAX_WEIGHTED_POOLS:
        ld.error(join(path, "pools"), f"at most {MAX_WEIGHTED_POOLS} pools (ALB's limit); "
                                      f"got {len(pools)}")
    seen: dict[str, int] = {}
    for i, item in enumerate(pools):
        if item.pool in seen:
            ld.error(index(join(path, "pools"), i),
                     f'pool "{item.pool}" is listed twice (pools[{seen[item.pool]}] and '
                     f"pools[{i}])")
        seen.setdefault(item.pool, i)
    if pools and not sum(item.weight for item in pools):
        ld.error(join(path, "pools"), "at least one weight must be above 0")
    if v.get("stickiness") is not None and not pools:
        ld.error(join(path, "stickiness"), "needs `pools` (a single pool has nothing to "
                                           "stick to; see the pool's `stickiness`)")


def _regex_groups(ld: Loader, source: str | None, path: str) -> int | None:
    if source is None:
        return None
    try:
        return re.compile(source.encode()).groups
    except re.error as e:
        ld.error(path, f"not a valid regular expression: {e}")
        return None


def _check_rewrite(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    if v.get("path_prefix") is None and v.get("path_regex") is None and \
            v.get("host_regex") is None:
        ld.error(path, "needs path_prefix, path_regex or host_regex")
    prefix = v.get("path_prefix")
    if prefix is not None and not prefix.startswith("/"):
        ld.error(join(path, "path_prefix"), 'must start with "/"')
    for what in ("path", "host"):
        groups = _regex_groups(ld, v.get(f"{what}_regex"), join(path, f"{what}_regex"))
        replacement = v.get(f"{what}_replacement", "")
        problem = replacement_problem(replacement, groups or 0)
        if problem and groups is not None:
            ld.error(join(path, f"{what}_replacement"), problem)
        elif _WS_OR_CTL.search(replacement):
            ld.error(join(path, f"{what}_replacement"),
                     "must not contain spaces or control characters")
    for key in ("prefix_replacement", "path_replacement"):
        if any(c in v.get(key, "") for c in "?#"):
            ld.error(join(path, key), 'must not contain "?" or "#": the query is kept as sent')
    if _WS_OR_CTL.search(v.get("prefix_replacement", "")):
        ld.error(join(path, "prefix_replacement"), "must not contain spaces or control "
                                                   "characters")


def _check_basic_auth(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    users = v.get("users")
    if users is not None and not users:
        ld.error(join(path, "users"), "must name at least one user")
    for user, hashed in (users or {}).items():
        where = join(join(path, "users"), user)
        if ":" in user or not user:
            ld.error(where, "a user name is not empty and has no ':' (RFC 7617)")
        elif not _BCRYPT_HASH.fullmatch(hashed):
            ld.error(where, "must be a bcrypt hash ($2b$12$ and 53 characters); never the "
                            "password itself")
    if _CTL.search(v.get("realm", "")):
        ld.error(join(path, "realm"), "must not contain control characters")


_PLACEHOLDER = re.compile(r"#\{[^}]*\}")
# What each placeholder stands for when a redirect host is checked for syntax.
_SAMPLE_VALUES = {"#{protocol}": "http", "#{host}": "example.com", "#{port}": "80",
                  "#{path}": "p", "#{query}": "q"}


def _unknown_placeholders(text: str) -> list[str]:
    return [m for m in _PLACEHOLDER.findall(text) if m not in REDIRECT_PLACEHOLDERS]


def _redirect_host_problem(host: str) -> str | None:
    """A redirect's host: a host name or IP literal (IPv6 bracketed or not), placeholders
    allowed; no port (that is `port`), path, query or user."""
    text = _PLACEHOLDER.sub(lambda m: _SAMPLE_VALUES.get(m.group(), "x"), host).lower()
    if text.startswith("[") and text.endswith("]") and ":" in text and names.is_ip(text[1:-1]):
        return None
    if names.is_ip(text):
        return None
    if any(c in text for c in "/?#@\\"):
        return f"{host!r}: give a host name or IP address only, without scheme, path or query"
    if ":" in text:
        return f"{host!r}: give the host without a port (the port goes in `port`)"
    problem = names.hostname_problem(text[:-1] if text.endswith(".") else text)
    if problem and "#{" in host:  # the message would quote the sample values
        return (f"{host!r} is not a valid host name (letters, digits, '-' and '_' in "
                "dot-separated labels)")
    return problem


def _redirect_part_problem(key: str, value: str) -> str | None:
    """Syntax of a redirect's host, path or query (placeholders already known to be valid)."""
    if _WS_OR_CTL.search(value):
        return "must not contain spaces or control characters"
    literal = _PLACEHOLDER.sub("", value)  # a `#` of a placeholder is not a fragment
    if key == "host":
        return _redirect_host_problem(value)
    if key == "path" and ("?" in literal or "#" in literal):
        return 'must not contain "?" or "#" (give the query in `query`)'
    if key == "query" and value.startswith("?"):
        return 'give the query without its leading "?"'
    if key == "query" and "#" in literal:
        return 'must not contain "#"'
    return None


def _check_redirect(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    if "status" in v and v["status"] not in REDIRECT_STATUSES:
        ld.error(join(path, "status"), "must be one of 301, 302, 303, 307, 308; "
                                       f"got {v['status']}")
    if "protocol" in v and v["protocol"] not in REDIRECT_PROTOCOLS:
        ld.error(join(path, "protocol"),
                 f'must be one of "http", "https", "#{{protocol}}"; got "{v["protocol"]}"')
    for key in ("host", "port", "path", "query"):
        if key not in v:
            continue
        bad = _unknown_placeholders(v[key])
        problem = None
        if key == "host" and not v[key]:
            problem = "must not be empty"
        elif key == "path" and not v[key].startswith("/"):
            problem = 'must start with "/"'
        elif bad:
            problem = f"unknown placeholder {bad[0]} (known: {', '.join(REDIRECT_PLACEHOLDERS)})"
        elif key == "port":
            port = v["port"]
            if "#{" not in port and not (port.isascii() and port.isdigit()
                                         and 1 <= int(port) <= 65535):
                problem = 'must be a port number 1-65535 or use "#{port}"'
        else:
            problem = _redirect_part_problem(key, v[key])
        if problem:
            ld.error(join(path, key), problem)


_TOKEN = names.TOKEN_PATTERN
# RFC 9110 media type: type "/" subtype *( OWS ";" OWS [ token "=" ( token / quoted-string ) ] )
_MEDIA_TYPE = re.compile(rf'{_TOKEN}/{_TOKEN}'
                         rf'(?:[ \t]*;[ \t]*(?:{_TOKEN}=(?:{_TOKEN}|"(?:[^"\\]|\\.)*"))?)*')


def _check_fixed(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    body = v.get("body")
    if body is not None:
        size = len(body.encode("utf-8", "surrogatepass"))
        if size > MAX_FIXED_BODY_BYTES:
            ld.error(join(path, "body"), f"must be at most {MAX_FIXED_BODY_BYTES} bytes "
                                         f"(1 MiB); got {size}")
    ctype = v.get("content_type")
    if ctype is not None and (not ctype or re.search(r"[\x00-\x1f\x7f]", ctype)):
        ld.error(join(path, "content_type"), "must be a non-empty header value without "
                                             "control characters")
    elif ctype is not None and not _MEDIA_TYPE.fullmatch(ctype):
        ld.error(join(path, "content_type"), 'must be a media type, type/subtype with optional '
                                             f'parameters ("text/html; charset=utf-8"); got '
                                             f'{ctype!r}')
    status = v.get("status")
    if isinstance(status, int) and 300 <= status <= 399:
        ld.error(join(path, "status"), "must be 2xx, 4xx or 5xx (as ALB); for a 3xx use a "
                                       "`redirect` action")


class _Bind(NamedTuple):
    """A socket the daemon binds: the YAML path of its port, its address and port, whether an
    IPv6 wildcard there also takes IPv4 (a dual-stack socket), and the section whose own
    validator already compares its sockets by their written address (bucket origin, DNS)."""
    where: str
    address: str
    port: int
    dual_stack: bool = False
    section: str = ""

    @property
    def owner(self) -> str:
        return self.where.removesuffix(".port")


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address an IP literal means (`::ffff:127.0.0.1` is 127.0.0.1); None for a name."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _overlaps(a: _Bind, b: _Bind) -> bool:
    """Would binding both sockets on one port collide?

    IP literals are compared by value. `0.0.0.0` covers every IPv4 address and `::` every
    IPv6 address. Listeners, admin and demo backends are asyncio servers, which bind `::`
    IPV6_V6ONLY, so `0.0.0.0` and `::` may share a port there (nginx's `listen 80;
    listen [::]:80;`); the bucket origin and DNS bind plain sockets, dual-stack on Linux by
    default, where `::` takes IPv4 too. A host name (`localhost`) is compared as written and
    overlaps every wildcard; what it resolves to is checked when it is bound."""
    ia, ib = _ip(a.address), _ip(b.address)
    if ia is None or ib is None:
        wild = [ip for ip in (ia, ib) if ip is not None and ip.is_unspecified]
        return a.address.lower() == b.address.lower() or bool(wild)
    if ia.version == ib.version:
        return ia == ib or ia.is_unspecified or ib.is_unspecified
    v6, v6_bind = (ia, a) if ia.version == 6 else (ib, b)
    return v6.is_unspecified and v6_bind.dual_stack


def _binds(ld: Loader, v: Mapping[str, Any],
           listeners: list[tuple[str, ListenerConfig]]) -> list[_Bind]:
    """Every socket the daemon binds, in order (port 0, "pick a free one", never collides).
    Each is a TCP socket (DNS binds UDP beside it), so two on one port compete."""
    binds = [_Bind(join(w, "port"), x.address, x.port) for w, x in listeners]
    binds += [_Bind(join(w, "port"), x.address, x.port) for w, x in _items(ld, v, "demo_backends")]
    admin: AdminConfig | None = v.get("admin")
    if admin is not None and admin.port != 0:
        binds.append(_Bind("admin.port", admin.address, admin.port))
    buckets: BucketsConfig | None = v.get("buckets")
    if buckets is not None:
        if buckets.port:
            binds.append(_Bind("buckets.port", buckets.address, buckets.port, True, "buckets"))
        if buckets.website_port:
            binds.append(_Bind("buckets.website_port", buckets.website_address,
                               buckets.website_port, True, "buckets"))
    dns: DnsConfig | None = v.get("dns")
    if dns is not None:
        binds += [_Bind(join(index("dns.listeners", i), "port"), x.address, x.port, True, "dns")
                  for i, x in enumerate(dns.listeners)]
    return binds


def _items(ld: Loader, v: Mapping[str, Any], key: str) -> list[tuple[str, Any]]:
    """(path, item) pairs of a top-level list, or of its valid items when it failed."""
    if key in v:
        return [(index(key, i), x) for i, x in enumerate(v[key])]
    return list(ld.partial.get(key, []))


def _check_config(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    if "listeners" in v and not v["listeners"]:
        ld.error("listeners", "must list at least one listener")
    listeners: list[tuple[str, ListenerConfig]] = _items(ld, v, "listeners")
    seen: dict[str, str] = {}
    for where, lst in listeners:
        if lst.name in seen:
            ld.error(join(where, "name"),
                     f'duplicate listener name "{lst.name}" (also {seen[lst.name]})')
        seen.setdefault(lst.name, where)

    demo_names: dict[str, str] = {}
    for where, demo in _items(ld, v, "demo_backends"):
        if demo.name in demo_names:
            ld.error(join(where, "name"), f'duplicate demo backend name "{demo.name}" '
                                          f"(also {demo_names[demo.name]})")
        demo_names.setdefault(demo.name, where)

    binds = _binds(ld, v, listeners)
    for j, b in enumerate(binds):
        for o in binds[:j]:
            if b.port != o.port or not _overlaps(b, o):
                continue
            if b.section and b.section == o.section and b.address == o.address:
                break  # the section's own validator said so
            ld.error(b.where, f"{names.format_host_port(b.address, b.port)} is already used by "
                              f"{o.owner} ({names.format_host_port(o.address, o.port)})")
            break

    routes: list[tuple[str, RouteConfig]] = _items(ld, v, "routes")
    if "default_route" in v:
        routes.append(("default_route", v["default_route"]))
    pool_names: list[str] | None = ld.notes.get("pool_names")
    if pool_names is None and "pools" in v:
        pool_names = list(v["pools"])  # `pools:` not given: the default, no pools
    if pool_names is not None:
        known = ", ".join(pool_names) or "none"
        for where, route in routes:
            action = route.action
            if route.mirror is not None and not isinstance(action, ForwardAction):
                ld.error(join(where, "mirror"), "only on a route that forwards")
            elif route.mirror is not None and route.mirror.pool not in pool_names:
                ld.error(join(join(where, "mirror"), "pool"),
                         f'unknown pool "{route.mirror.pool}" (known: {known})')
            if not isinstance(action, ForwardAction):
                continue
            if action.pool is not None and action.pool not in pool_names:
                ld.error(join(where, "forward"), f'unknown pool "{action.pool}" (known: {known})')
            for i, item in enumerate(action.pools):
                if item.pool not in pool_names:
                    ld.error(join(index(join(join(where, "forward"), "pools"), i), "pool"),
                             f'unknown pool "{item.pool}" (known: {known})')
    routing = v.get("routing")
    limit = routing.max_condition_values if routing is not None and routing is not INVALID \
        else 5
    for where, route in routes:
        count = condition_values(route.match)
        if count > limit:
            ld.error(join(where, "match"),
                     f"{count} condition values; at most {limit} per route (ALB's limit; "
                     "raise routing.max_condition_values)")
    first: dict[str, str] = {}
    for where, route in routes:
        if route.name in first:
            ld.error(join(where, "name"),
                     f'duplicate route name "{route.name}" (also {first[route.name]})')
        first.setdefault(route.name, where)

    cache = v.get("cache")
    if cache is not None and cache is not INVALID:
        dists = ", ".join(cache.distributions) or "none"
        for where, route in routes:
            if route.cache is not None and route.cache not in cache.distributions:
                ld.error(join(where, "cache"),
                         f'unknown distribution "{route.cache}" (known: {dists})')
        if pool_names is not None:
            for name, origin in cache.origins.items():
                if origin.pool is not None and origin.pool not in pool_names:
                    ld.error(join(join(join("cache", "origins"), name), "pool"),
                             f'unknown pool "{origin.pool}" (known: '
                             f'{", ".join(pool_names) or "none"})')
    admin = v.get("admin")
    for where, lst in listeners:
        if lst.tls is None or not lst.tls.acme and lst.tls.on_demand is None:
            continue
        if admin is None or admin is not INVALID and admin.state_dir is None:
            ld.error(join(join(where, "tls"), "acme" if lst.tls.acme else "on_demand"),
                     "ACME needs `admin.state_dir` (where keys and certificates are kept)")
        dns_zones = [z.name.lower().rstrip(".") for z in v["dns"].zones] \
            if v.get("dns") not in (None, INVALID) else []
        for i, ac in enumerate(lst.tls.acme):
            for name in ac.names:
                base = name.lower().removeprefix("*.")
                if name.startswith("*.") and ac.challenge is None and not any(
                        base == z or base.endswith("." + z) for z in dns_zones):
                    ld.error(index(join(join(where, "tls"), "acme"), i),
                             f"{name!r}: a wildcard name needs dns-01, and lbcdn's DNS "
                             "serves no zone holding it")
    dns = v.get("dns")
    admin = v.get("admin")
    if dns is not None and dns is not INVALID and (
            admin is None or admin is INVALID or admin.state_dir is None):
        for i, zone in enumerate(dns.zones):
            if zone.dnssec.enabled:
                ld.error(f"dns.zones[{i}].dnssec.enabled", "needs admin.state_dir, where the "
                         "zone's keys are kept (a new key at every start breaks the DS)")
    if dns is not None and dns is not INVALID and pool_names is not None:
        for where, message in alias_problems(dns, [l.name for _, l in listeners],
                                             list(pool_names)):
            ld.error(where, message)


VALIDATORS.setdefault(ListenerConfig, []).append(_check_listener)
VALIDATORS.setdefault(AdminConfig, []).append(_check_admin)
VALIDATORS.setdefault(PoolConfig, []).append(_check_pool)
VALIDATORS.setdefault(MatchConfig, []).append(_check_match)
VALIDATORS.setdefault(MatchConfig, []).append(_check_conditions)
VALIDATORS.setdefault(HeaderCondition, []).append(_check_header_condition)
VALIDATORS.setdefault(QueryCondition, []).append(_check_query_condition)
VALIDATORS.setdefault(ForwardAction, []).append(_check_forward)
VALIDATORS.setdefault(RewriteConfig, []).append(_check_rewrite)
VALIDATORS.setdefault(BasicAuthConfig, []).append(_check_basic_auth)
VALIDATORS.setdefault(RedirectAction, []).append(_check_redirect)
VALIDATORS.setdefault(FixedResponseAction, []).append(_check_fixed)
VALIDATORS.setdefault(Config, []).append(_check_config)
VALIDATORS.setdefault(CertificateConfig, []).append(_check_certificate)
VALIDATORS.setdefault(ListenerTlsConfig, []).append(_check_listener_tls)
VALIDATORS.setdefault(AcmeConfig, []).append(_check_acme)
VALIDATORS.setdefault(OnDemandConfig, []).append(_check_on_demand)
VALIDATORS.setdefault(AccessLogConfig, []).append(_check_access_log)
VALIDATORS.setdefault(RouteConfig, []).append(_check_route)
