"""Configuration of the edge cache: CloudFront's model of policies, origins and behaviors.

Job: the frozen dataclasses the reflective config loader (lbcdn.configkit.reflect) builds from the
`cache:` section of the YAML, plus the cross-field checks it runs (registered in VALIDATORS at
import, as lbcdn.config.load does for its own classes).

Rules:
- Field names are YAML keys, units in names; every field documents itself with `doc(...)`.
- Things are named by their key: `policies: {NAME: ...}`, `origin_request_policies:
  {NAME: ...}`, `origins: {ID: ...}`, `origin_groups: {ID: ...}`, `distributions: {NAME: ...}`;
  a behavior names its origin (or origin group), its cache policy and its origin request policy
  by those keys, and a route names its distribution. CloudFront's managed origin request
  policies (MANAGED_ORIGIN_REQUEST_POLICIES) exist under their names unless defined.
- Defaults are CloudFront's where CloudFront has one (TTLs 86400 / 0 / 31536000, connection
  timeout 10 s and 3 attempts, error caching minimum TTL 10 s), nginx's where it has none
  (proxy_cache_lock_timeout 5 s).
- Config is data only; the runtime (stores, collapsing, compiled behaviors) is built from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lbcdn.cache.signedurl import load_public_key
from lbcdn.configkit.reflect import VALIDATORS, Loader, join
from lbcdn.configkit.fields import REQUIRED, doc

QueryStringBehavior = Literal["none", "allow", "all_except", "all"]

# Methods a behavior may cache. It may allow CloudFront's seven (GET, HEAD, OPTIONS, PUT, POST,
# PATCH, DELETE) and extension methods: any token but CONNECT, which opens a tunnel rather than
# asking an origin.
CACHEABLE_METHODS = ("GET", "HEAD", "OPTIONS")
# CloudFront: an origin group fails over on a chosen subset of these.
FAILOVER_STATUSES = (400, 403, 404, 416, 500, 502, 503, 504)
# CloudFront: custom error responses exist for these origin statuses.
ERROR_STATUSES = (400, 403, 404, 405, 414, 416, 500, 501, 502, 503, 504)

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_COOKIE_NAME = _HEADER_NAME
_ORIGIN_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?")


@dataclass(frozen=True)
class QueryStringsConfig:
    behavior: QueryStringBehavior = doc(
        "Which query parameters are in the cache key (and forwarded): `none`, `allow` (only "
        "`names`), `all_except` (all but `names`) or `all`. Kept ones are sorted.", "none")
    names: tuple[str, ...] = doc(
        "Parameter names for `allow` / `all_except`.", default_factory=tuple)


@dataclass(frozen=True)
class ForwardedValuesConfig:
    behavior: QueryStringBehavior = doc(
        "Which viewer values are sent to the origin besides those in the cache key: `none`, "
        "`allow` (only `names`), `all_except` (all but `names`) or `all`.", "none")
    names: tuple[str, ...] = doc(
        "Names for `allow` / `all_except` (header names are case-insensitive).",
        default_factory=tuple)


@dataclass(frozen=True)
class OriginRequestPolicyConfig:
    """What a behavior's origin requests carry besides the cache key (a CloudFront origin
    request policy). Values here reach the origin but are not in the key, so every answer
    the origin builds from them is served to everyone."""
    headers: ForwardedValuesConfig = doc(
        "Viewer request headers forwarded. Not listable: `Host` (the edge's), `Cookie` (see "
        "`cookies`), `Accept-Encoding` (the cache's), `Authorization` (only through the cache "
        "key, or `all`).", default_factory=ForwardedValuesConfig)
    cookies: ForwardedValuesConfig = doc(
        "Viewer cookies forwarded, by name.", default_factory=ForwardedValuesConfig)
    query_strings: ForwardedValuesConfig = doc(
        "Query parameters forwarded, by name (sorted, as in the key).",
        default_factory=ForwardedValuesConfig)


def _names(behavior: QueryStringBehavior, *names: str) -> ForwardedValuesConfig:
    return ForwardedValuesConfig(behavior, names)


# CloudFront's managed origin request policies that make sense here (the Host ones do not:
# Host is always the one the origin expects).
MANAGED_ORIGIN_REQUEST_POLICIES: dict[str, OriginRequestPolicyConfig] = {
    "AllViewer": OriginRequestPolicyConfig(_names("all"), _names("all"), _names("all")),
    "CORS-CustomOrigin": OriginRequestPolicyConfig(_names("allow", "Origin")),
    "CORS-S3Origin": OriginRequestPolicyConfig(_names(
        "allow", "Origin", "Access-Control-Request-Headers", "Access-Control-Request-Method")),
    "UserAgentRefererHeaders": OriginRequestPolicyConfig(_names(
        "allow", "User-Agent", "Referer")),
}


@dataclass(frozen=True)
class CachePolicyConfig:
    """What is cached for how long, and what the cache key holds (a CloudFront cache policy)."""
    default_ttl_s: int = doc(
        "Freshness when the origin gives none (no CDN-Cache-Control, s-maxage, max-age or "
        "Expires), as CloudFront's Default TTL; with `heuristic_freshness`, the cap of the "
        "Last-Modified heuristic.", 86400, lo=0, hi=31536000 * 100)
    min_ttl_s: int = doc(
        "Lower clamp of an origin-given freshness lifetime.", 0, lo=0, hi=31536000 * 100)
    max_ttl_s: int = doc(
        "Upper clamp of an origin-given freshness lifetime.", 31536000, lo=0, hi=31536000 * 100)
    heuristic_freshness: bool = doc(
        "Without explicit freshness, use RFC 9111 4.2.2's heuristic instead of "
        "`default_ttl_s`: 10% of the time since Last-Modified (capped by `default_ttl_s`, "
        "at least `min_ttl_s`), for statuses cacheable by default or `public` responses. "
        "Off: `default_ttl_s`, as CloudFront.", False)
    query_strings: QueryStringsConfig = doc(
        "Query strings in the cache key.", default_factory=QueryStringsConfig)
    headers: tuple[str, ...] = doc(
        "Request headers whose values are in the cache key (case-insensitive names).",
        default_factory=tuple)
    cookies: tuple[str, ...] = doc(
        "Cookie names whose values are in the cache key.", default_factory=tuple)
    allowed_methods: tuple[str, ...] = doc(
        "Methods passed to the origin; others get 405. CloudFront's are GET, HEAD, OPTIONS, "
        "PUT, POST, PATCH and DELETE; extension methods (PROPFIND, REPORT, PURGE...) may be "
        "listed too and pass through. Unsafe ones (all but GET, HEAD, OPTIONS and TRACE) "
        "invalidate the URL on success.",
        default_factory=lambda: ("GET", "HEAD"))
    cached_methods: tuple[str, ...] = doc(
        "Methods whose responses are cached (GET and HEAD always; OPTIONS may be added).",
        default_factory=lambda: ("GET", "HEAD"))
    compress: bool = doc(
        "Compress compressible types (gzip, brotli) for clients that accept it.", True)
    cache_set_cookie: bool = doc(
        "Store responses carrying Set-Cookie (the cookie is then served to everyone).", False)
    stale_while_revalidate_s: float = doc(
        "Serve stale this long after expiry while one background request revalidates; a "
        "response's own stale-while-revalidate wins.", 0.0, lo=0)
    stale_if_error_s: float = doc(
        "Serve stale this long after expiry when the origin fails (5xx, timeout, refused); "
        "a response's own stale-if-error wins.", 0.0, lo=0)
    slice_bytes: int = doc(
        "Fetch and cache objects in aligned slices of this size (nginx's slice module): a "
        "range request fetches only the slices it covers, each cached on its own, all with "
        "the first slice's ETag. 0: whole objects.", 0, lo=0, hi=1 << 30)
    collapse: bool = doc(
        "Concurrent misses for one key make one origin request; the others wait for it.", True)
    lock_timeout_s: float = doc(
        "How long a collapsed request waits for the leader's response head before it goes "
        "to the origin itself (nginx proxy_cache_lock_timeout).", 5.0, lo=0.001)


@dataclass(frozen=True)
class S3CredentialsConfig:
    """The key an S3 origin's requests are signed with: exactly one of `secret_access_key`,
    `secret_access_key_file`."""
    access_key_id: str = doc("Access key id the edge signs with.", REQUIRED)
    secret_access_key: str | None = doc(
        "Secret key; write `${ENV_VAR}` to read it from the environment.", None)
    secret_access_key_file: str | None = doc(
        "A file holding the secret key (surrounding whitespace ignored), read at start and on "
        "reload.", None)

    def secret(self) -> str:
        if self.secret_access_key is not None:
            return self.secret_access_key
        assert self.secret_access_key_file is not None
        with open(self.secret_access_key_file, encoding="utf-8") as f:
            return f.read().strip()


@dataclass(frozen=True)
class S3OriginConfig:
    """A private S3 bucket (AWS S3, lbcdn's own bucket API, any S3 implementation), asked
    path-style (`endpoint/bucket/key`) with every request signed with SigV4 (CloudFront's
    origin access control): the bucket needs no public access."""
    endpoint: str = doc("The S3 API, `http://host[:port]` or `https://...`.", REQUIRED)
    bucket: str = doc("Bucket name.", REQUIRED)
    credentials: S3CredentialsConfig = doc(
        "The key the edge signs with (it needs s3:GetObject on the bucket).", REQUIRED)
    region: str = doc("Region in the signature's scope.", "us-east-1")


@dataclass(frozen=True)
class OriginConfig:
    """Where misses go: exactly one of `pool`, `bucket`, `url`, `s3`."""
    pool: str | None = doc("A pool name (the balancer picks a target).", None)
    bucket: str | None = doc("A bucket origin name.", None)
    url: str | None = doc("An external origin, `http://host[:port]` or `https://...`.", None)
    s3: S3OriginConfig | None = doc(
        "A private S3 bucket whose requests the edge signs (SigV4): fills and revalidations; "
        "pass-throughs (unsafe methods, requests with a body) are not signed.", None)
    origin_path: str = doc(
        "Prefix put before the request path (`/prod` makes `/a.png` fetch `/prod/a.png`); "
        "starts with `/`, no trailing `/`.", "")
    connect_timeout_s: float = doc("TCP connect timeout per attempt.", 10.0, lo=0.001, hi=60)
    connect_attempts: int = doc("Connection attempts before the origin counts as failed.",
                                3, lo=1, hi=10)
    response_timeout_s: float = doc(
        "Longest wait for the response head, and between body reads.", 30.0, lo=0.001)


@dataclass(frozen=True)
class OriginGroupConfig:
    """Failover: requests go to `primary`; on a listed status or a connection failure, once
    more to `secondary` (only for GET, HEAD and OPTIONS, as CloudFront does)."""
    primary: str = doc("Origin id tried first.", REQUIRED)
    secondary: str = doc("Origin id tried on failover.", REQUIRED)
    failover_statuses: tuple[int, ...] = doc(
        "Origin statuses that fail over (from 400, 403, 404, 416, 500, 502, 503, 504).",
        default_factory=lambda: (500, 502, 503, 504))


@dataclass(frozen=True)
class BehaviorConfig:
    path_pattern: str = doc(
        "CloudFront path pattern: `*` any run of characters, `?` one; `*` alone matches all.",
        REQUIRED)
    origin: str = doc("Origin id or origin group id.", REQUIRED)
    policy: str = doc("Cache policy name.", "default")
    origin_request_policy: str | None = doc(
        "Origin request policy name (one defined, or a managed one: `AllViewer`, "
        "`CORS-CustomOrigin`, `CORS-S3Origin`, `UserAgentRefererHeaders`); unset: the origin "
        "gets only what the cache key holds.", None)
    trusted_key_groups: tuple[str, ...] = doc(
        "Key groups (`cache.key_groups`) whose keys may sign URLs and cookies for this "
        "behavior (CloudFront's Restrict viewer access): requests without a valid signature "
        "get 403. Empty: no signature needed.", default_factory=tuple)


@dataclass(frozen=True)
class PublicKeyConfig:
    """A CloudFront public key: RSA, PEM (`-----BEGIN PUBLIC KEY-----`), exactly one of
    `pem`, `pem_file`."""
    pem: str | None = doc("The key itself, PEM text.", None)
    pem_file: str | None = doc("A file holding the PEM, read at start and on reload.", None)

    def pem_bytes(self) -> bytes:
        if self.pem is not None:
            return self.pem.encode()
        assert self.pem_file is not None
        with open(self.pem_file, "rb") as f:
            return f.read()


@dataclass(frozen=True)
class KeyGroupConfig:
    """Public keys by id: a signed URL or cookie names its key by this id (`Key-Pair-Id`)."""
    public_keys: dict[str, PublicKeyConfig] = doc("Public keys by key id.", REQUIRED)


@dataclass(frozen=True)
class ErrorResponseConfig:
    error_code: int = doc("Origin status this applies to.", REQUIRED, lo=400, hi=599)
    response_page_path: str | None = doc(
        "Path (fetched through the distribution, so cached) served instead of the error.", None)
    response_code: int | None = doc("Status sent to the client; default: error_code.", None,
                                    lo=200, hi=599)
    error_caching_min_ttl_s: int = doc(
        "How long the error (or the replacement) is cached when the origin gives no TTL.",
        10, lo=0, hi=31536000)


@dataclass(frozen=True)
class ParentTierConfig:
    """Other lbcdn replicas in front of the origin (CloudFront Origin Shield, Squid parents): a
    miss goes to the replica owning its cache key (rendezvous hashing over `peers`), which
    fetches from the origin once for the whole fleet. A request arriving with `marker_header`
    came from another replica and goes to the origin (no loops); a parent that fails (connect
    error, timeout, 5xx) falls back to the origin."""
    peers: tuple[str, ...] = doc(
        "Every replica of the tier, `host:port` of its cache listener (the same list on each, "
        "this one included). Exactly one of `peers`, `dns_name`.", default_factory=tuple)
    dns_name: str | None = doc(
        "A name resolving to every replica's address (a Kubernetes headless Service), "
        "re-resolved every `dns_refresh_s`; the replicas listen on `port`.", None)
    port: int | None = doc("The replicas' cache listener port, with `dns_name`.", None,
                           lo=1, hi=65535)
    dns_refresh_s: float = doc("How often `dns_name` is resolved again.", 5.0, lo=0.1,
                               hi=3600)
    self_peer: str | None = doc(
        "This replica's entry in `peers` (`auto`: the peer whose address is one of this "
        "host's and whose port is `port`, with `dns_name`): keys it owns go to the origin "
        "directly. Unset: this edge is not in the tier and always asks a peer.", None)
    marker_header: str = doc(
        "Header marking a request from a replica; never forwarded to another parent.",
        "X-Lbcdn-Tier")
    connect_timeout_s: float = doc("TCP connect timeout to a parent.", 1.0, lo=0.001, hi=60)
    response_timeout_s: float = doc(
        "Longest wait for a parent's response head, and between body reads.", 30.0,
        lo=0.001)


@dataclass(frozen=True)
class DistributionConfig:
    """A set of ordered behaviors (first match wins; `default_behavior` last), error pages."""
    default_behavior: BehaviorConfig = doc(
        "What a path matching no behavior uses (its path_pattern must be `*`).", REQUIRED)
    behaviors: tuple[BehaviorConfig, ...] = doc("Ordered behaviors.", default_factory=tuple)
    custom_error_responses: tuple[ErrorResponseConfig, ...] = doc(
        "Custom error responses by origin status.", default_factory=tuple)
    parent_tier: ParentTierConfig | None = doc(
        "Misses ask the replica owning the key first (origin shield across replicas).", None)


@dataclass(frozen=True)
class StorageConfig:
    memory_max_bytes: int = doc("Memory tier size (bodies plus heads), LRU.", 256 << 20, lo=0)
    max_object_bytes: int = doc(
        "Largest object kept in memory; larger ones go to disk, or pass through.", 16 << 20,
        lo=0)
    disk_path: str | None = doc(
        "Directory of the disk tier; none when unset. With --workers it holds the workers' "
        "shared store (else that is on tmpfs).", None)
    disk_max_bytes: int = doc("Disk tier size, LRU.", 10 << 30, lo=0)
    disk_max_object_bytes: int = doc("Largest object kept on disk.", 1 << 30, lo=0)


@dataclass(frozen=True)
class CacheConfig:
    storage: StorageConfig = doc("Memory and disk tiers.", default_factory=StorageConfig)
    policies: dict[str, CachePolicyConfig] = doc(
        "Cache policies by name; `default` exists unless given.",
        default_factory=lambda: {"default": CachePolicyConfig()})
    origin_request_policies: dict[str, OriginRequestPolicyConfig] = doc(
        "Origin request policies by name; the managed ones exist unless given.",
        default_factory=dict)
    origins: dict[str, OriginConfig] = doc("Origins by id.", default_factory=dict)
    origin_groups: dict[str, OriginGroupConfig] = doc("Origin groups by id.",
                                                      default_factory=dict)
    distributions: dict[str, DistributionConfig] = doc(
        "Distributions by name; a route's `cache` names one.", default_factory=dict)
    key_groups: dict[str, KeyGroupConfig] = doc(
        "Key groups by name, for behaviors' `trusted_key_groups` (signed URLs and cookies).",
        default_factory=dict)

    def policy(self, name: str) -> CachePolicyConfig:
        if name == "default" and name not in self.policies:
            return CachePolicyConfig()
        return self.policies[name]

    def origin_request_policy(self, name: str | None) -> OriginRequestPolicyConfig | None:
        if name is None:
            return None
        found = self.origin_request_policies.get(name)
        return found if found is not None else MANAGED_ORIGIN_REQUEST_POLICIES[name]


# -- checks ----------------------------------------------------------------------------------

def _names_problem(items: tuple[str, ...], pattern: re.Pattern[str], what: str) -> str | None:
    for name in items:
        if not pattern.match(name):
            return f"{name!r} is not a valid {what} name"
    return None


def _check_query(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    behavior, names = v.get("behavior"), v.get("names")
    if behavior in ("allow", "all_except") and not names:
        ld.error(join(path, "names"), f"must list at least one name for {behavior}")
    if behavior in ("none", "all") and names:
        ld.error(join(path, "names"), f"must be empty for {behavior}")


def _methods_problem(methods: tuple[str, ...], *, cacheable: bool) -> str | None:
    for m in methods:
        if cacheable and m not in CACHEABLE_METHODS:
            return f"unknown method {m!r} (known: {', '.join(CACHEABLE_METHODS)})"
        if m == "CONNECT" or not _HEADER_NAME.match(m):
            return f"{m!r} is not a method a cache route passes on (a method is a token; " \
                   "CONNECT opens a tunnel)"
    if "GET" not in methods or "HEAD" not in methods:
        return "must include GET and HEAD"
    return None


def _check_policy(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    lo, default, hi = v.get("min_ttl_s"), v.get("default_ttl_s"), v.get("max_ttl_s")
    if lo is not None and default is not None and lo > default:
        ld.error(join(path, "min_ttl_s"), f"must not exceed default_ttl_s ({default})")
    if default is not None and hi is not None and default > hi:
        ld.error(join(path, "default_ttl_s"), f"must not exceed max_ttl_s ({hi})")
    for key, what in (("headers", "header"), ("cookies", "cookie")):
        problem = _names_problem(v.get(key, ()), _HEADER_NAME, what)
        if problem:
            ld.error(join(path, key), problem)
    allowed = v.get("allowed_methods")
    for key in ("allowed_methods", "cached_methods"):
        methods = v.get(key)
        if methods is None:
            continue
        problem = _methods_problem(methods, cacheable=key == "cached_methods")
        if problem:
            ld.error(join(path, key), problem)
    cached = v.get("cached_methods")
    if allowed is not None and cached is not None:
        extra = [m for m in cached if m not in allowed]
        if extra:
            ld.error(join(path, "cached_methods"), f"{extra[0]} is not in allowed_methods")


# Header names an origin request policy may not list: Host is the edge's to set, a response to
# an Authorization must not answer others unless the key holds it (CloudFront refuses both),
# and Cookie and Accept-Encoding have rules of their own (lbcdn.cache.forwarding).
_NOT_LISTABLE = {"host": "Host is set by the edge (the viewer's for a pool origin, the "
                          "origin's own for url and bucket origins)",
                 "authorization": "Authorization is forwarded only when the cache policy's "
                                  "headers key on it",
                 "cookie": "cookies are listed under cookies",
                 "accept-encoding": "Accept-Encoding is the cache's own (see the cache "
                                    "policy's compress)"}


def _check_origin_request_policy(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    for key, pattern in (("headers", _HEADER_NAME), ("cookies", _COOKIE_NAME),
                         ("query_strings", None)):
        values = v.get(key)
        if values is None:
            continue
        where = join(join(path, key), "names")
        if pattern is not None:
            problem = _names_problem(values.names, pattern, key.rstrip("s"))
            if problem:
                ld.error(where, problem)
        if key == "headers" and values.behavior == "allow":
            for name in values.names:
                why = _NOT_LISTABLE.get(name.lower())
                if why:
                    ld.error(where, f"{name!r}: {why}")


def _check_origin(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    given = [k for k in ("pool", "bucket", "url", "s3") if v.get(k) is not None]
    if len(given) != 1:
        ld.error(path, "needs exactly one of pool, bucket, url, s3"
                 + (f" (got {', '.join(given)})" if given else ""))
    url = v.get("url")
    if url is not None and not _ORIGIN_URL.fullmatch(url):
        ld.error(join(path, "url"), "must be http(s)://host[:port] without a path "
                                    "(use origin_path)")
    op = v.get("origin_path")
    if op and (not op.startswith("/") or op.endswith("/") or re.search(r"[\s?#]", op)):
        ld.error(join(path, "origin_path"),
                 'must start with "/", not end with "/", and hold no spaces, "?" or "#"')


def _check_s3(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    endpoint = v.get("endpoint")
    if endpoint is not None and not _ORIGIN_URL.fullmatch(endpoint):
        ld.error(join(path, "endpoint"), "must be http(s)://host[:port] without a path")
    bucket = v.get("bucket")
    if bucket is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
        ld.error(join(path, "bucket"), "must be an S3 bucket name (3-63 of a-z 0-9 . -)")


def _check_s3_credentials(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    given = [k for k in ("secret_access_key", "secret_access_key_file") if v.get(k) is not None]
    if len(given) != 1:
        ld.error(path, "needs exactly one of secret_access_key, secret_access_key_file")
        return
    try:
        secret = S3CredentialsConfig(v.get("access_key_id", ""), v.get("secret_access_key"),
                                     v.get("secret_access_key_file")).secret()
    except OSError as exc:
        ld.error(join(path, given[0]), f"cannot read {v[given[0]]!r}: {exc.strerror}")
        return
    if not secret:
        ld.error(join(path, given[0]), "must not be empty")


def _check_group(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    statuses = v.get("failover_statuses")
    if statuses is not None:
        if not statuses:
            ld.error(join(path, "failover_statuses"), "must list at least one status")
        bad = [s for s in statuses if s not in FAILOVER_STATUSES]
        if bad:
            ld.error(join(path, "failover_statuses"),
                     f"{bad[0]} is not one of {', '.join(map(str, FAILOVER_STATUSES))}")
    if v.get("primary") is not None and v.get("primary") == v.get("secondary"):
        ld.error(join(path, "secondary"), "must differ from primary")


def _check_behavior(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    pattern = v.get("path_pattern")
    if pattern is not None and (not pattern or re.search(r"[\x00-\x20\x7f]", pattern)):
        ld.error(join(path, "path_pattern"), "must be non-empty without spaces")


def _check_public_key(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    given = [k for k in ("pem", "pem_file") if v.get(k) is not None]
    if len(given) != 1:
        ld.error(path, "needs exactly one of pem, pem_file")
        return
    where = join(path, given[0])
    try:
        load_public_key(PublicKeyConfig(v.get("pem"), v.get("pem_file")).pem_bytes())
    except OSError as exc:
        ld.error(where, f"cannot read {v['pem_file']!r}: {exc.strerror}")
    except ValueError as exc:
        ld.error(where, f"not a PEM RSA public key: {exc}")


def _check_key_group(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    if not v.get("public_keys", {"": None}):
        ld.error(join(path, "public_keys"), "must hold at least one key")


def _check_error_response(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    code = v.get("error_code")
    if code is not None and code not in ERROR_STATUSES:
        ld.error(join(path, "error_code"),
                 f"must be one of {', '.join(map(str, ERROR_STATUSES))}")
    page = v.get("response_page_path")
    if page is not None and not page.startswith("/"):
        ld.error(join(path, "response_page_path"), 'must start with "/"')
    if v.get("response_code") is not None and page is None:
        ld.error(join(path, "response_code"), "needs response_page_path")


def _check_distribution(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    default = v.get("default_behavior")
    if default is not None and default.path_pattern != "*":
        ld.error(join(join(path, "default_behavior"), "path_pattern"), 'must be "*"')
    seen: set[int] = set()
    for i, err in enumerate(v.get("custom_error_responses", ())):
        if err.error_code in seen:
            ld.error(f"{join(path, 'custom_error_responses')}[{i}].error_code",
                     f"duplicate error_code {err.error_code}")
        seen.add(err.error_code)


_PEER = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):[0-9]{1,5}")


def _check_parent_tier(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    peers = v.get("peers", ())
    name = v.get("dns_name")
    if bool(peers) == (name is not None):
        ld.error(path, "needs exactly one of peers, dns_name")
    if name is not None and v.get("port") is None:
        ld.error(join(path, "port"), "is required with dns_name")
    if name is None and v.get("port") is not None:
        ld.error(join(path, "port"), "is only used with dns_name")
    for i, peer in enumerate(peers):
        if not _PEER.fullmatch(peer) or not 0 < int(peer.rpartition(":")[2]) < 65536:
            ld.error(f"{join(path, 'peers')}[{i}]", f"{peer!r} is not host:port")
    if len(set(peers)) != len(peers):
        ld.error(join(path, "peers"), "lists a peer twice")
    me = v.get("self_peer")
    if name is not None and me not in (None, "auto"):
        ld.error(join(path, "self_peer"), "must be auto (or unset) with dns_name")
    if name is None and me is not None and me not in peers:
        ld.error(join(path, "self_peer"), f"{me!r} is not one of peers")
    if not re.fullmatch(r"[A-Za-z0-9\-]+", v.get("marker_header", "X-Lbcdn-Tier")):
        ld.error(join(path, "marker_header"), "must be a header name (letters, digits, -)")


def _check_cache(ld: Loader, v: Mapping[str, Any], path: str) -> None:
    origins = set(v.get("origins", {}))
    groups: Mapping[str, OriginGroupConfig] = v.get("origin_groups", {})
    policies = set(v.get("policies", {"default": None}))
    policies.add("default")  # `CacheConfig.policy("default")` always resolves
    request_policies = set(v.get("origin_request_policies", {})) | set(
        MANAGED_ORIGIN_REQUEST_POLICIES)
    for gid, group in groups.items():
        where = join(join(path, "origin_groups"), gid)
        if gid in origins:
            ld.error(where, "an origin group must not share an id with an origin")
        for key in ("primary", "secondary"):
            if getattr(group, key) not in origins:
                ld.error(join(where, key), f"unknown origin {getattr(group, key)!r}")
    targets = origins | set(groups)
    for name, dist in v.get("distributions", {}).items():
        where = join(join(path, "distributions"), name)
        pairs = [(f"{join(where, 'behaviors')}[{i}]", b) for i, b in enumerate(dist.behaviors)]
        pairs.append((join(where, "default_behavior"), dist.default_behavior))
        for bpath, behavior in pairs:
            if behavior.origin not in targets:
                ld.error(join(bpath, "origin"), f"unknown origin or origin group "
                                                f"{behavior.origin!r}")
            if behavior.policy not in policies:
                ld.error(join(bpath, "policy"), f"unknown cache policy {behavior.policy!r}")
            for i, group in enumerate(behavior.trusted_key_groups):
                if group not in v.get("key_groups", {}):
                    ld.error(f"{join(bpath, 'trusted_key_groups')}[{i}]",
                             f"unknown key group {group!r}")
            orp = behavior.origin_request_policy
            if orp is not None and orp not in request_policies:
                ld.error(join(bpath, "origin_request_policy"),
                         f"unknown origin request policy {orp!r}")


VALIDATORS.setdefault(QueryStringsConfig, []).append(_check_query)
VALIDATORS.setdefault(ForwardedValuesConfig, []).append(_check_query)
VALIDATORS.setdefault(OriginRequestPolicyConfig, []).append(_check_origin_request_policy)
VALIDATORS.setdefault(CachePolicyConfig, []).append(_check_policy)
VALIDATORS.setdefault(OriginConfig, []).append(_check_origin)
VALIDATORS.setdefault(OriginGroupConfig, []).append(_check_group)
VALIDATORS.setdefault(S3OriginConfig, []).append(_check_s3)
VALIDATORS.setdefault(S3CredentialsConfig, []).append(_check_s3_credentials)
VALIDATORS.setdefault(BehaviorConfig, []).append(_check_behavior)
VALIDATORS.setdefault(ErrorResponseConfig, []).append(_check_error_response)
VALIDATORS.setdefault(PublicKeyConfig, []).append(_check_public_key)
VALIDATORS.setdefault(KeyGroupConfig, []).append(_check_key_group)
VALIDATORS.setdefault(DistributionConfig, []).append(_check_distribution)
VALIDATORS.setdefault(ParentTierConfig, []).append(_check_parent_tier)
VALIDATORS.setdefault(CacheConfig, []).append(_check_cache)
