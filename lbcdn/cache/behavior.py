"""A distribution's behaviors compiled for the request path: path -> (origin, policy, keys,
forwarding).

Rules (CloudFront): behaviors are tried in order and the first whose path pattern matches the
request path wins; the default behavior (`*`) takes the rest. Patterns use the router's glob
syntax (lbcdn.routing.router.compile_path_pattern: `*` any run, `?` one character), matched
against the path without the query. Everything derivable from config is built once here: the
compiled pattern, the KeyBuilder, the policy, what origin requests carry (Forwarding), the
error responses by status.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from lbcdn.cache.config import (BehaviorConfig, CacheConfig, CachePolicyConfig,
                                DistributionConfig, ErrorResponseConfig)
from lbcdn.cache.forwarding import Forwarding
from lbcdn.cache.key import KeyBuilder
from lbcdn.cache.signedurl import COOKIE_NAMES, QUERY_NAMES, Verifier, load_public_key
from lbcdn.routing.router import compile_path_pattern


@dataclass(frozen=True, slots=True)
class Behavior:
    path_pattern: str
    origin: str
    policy_name: str
    policy: CachePolicyConfig
    keys: KeyBuilder
    forwarding: Forwarding
    # the behavior's trusted keys when it restricts viewer access (signed URLs / cookies)
    signed: Verifier | None = None


class Distribution:
    def __init__(self, config: DistributionConfig, cache: CacheConfig) -> None:
        self._ordered: list[tuple[Callable[[bytes], re.Match[bytes] | None], Behavior]] = []
        for b in config.behaviors:
            self._ordered.append((compile_path_pattern(b.path_pattern).fullmatch,
                                  _behavior(b, cache)))
        self.default = _behavior(config.default_behavior, cache)
        self.errors: dict[int, ErrorResponseConfig] = {
            e.error_code: e for e in config.custom_error_responses}

    def select(self, path: bytes) -> Behavior:
        for match, behavior in self._ordered:
            if match(path):
                return behavior
        return self.default

    def error_page(self, status: int) -> tuple[bytes, int] | None:
        """The custom error response for an origin's `status`: the page to fetch through the
        cache instead, and the status to send it with; None: the error as it is."""
        e = self.errors.get(status)
        if e is None or e.response_page_path is None:
            return None
        return e.response_page_path.encode(), e.response_code or status

    def error_ttl_s(self, status: int, default: float = 10.0) -> float:
        """Error caching minimum TTL for an origin error status (CloudFront default 10 s)."""
        e = self.errors.get(status)
        return float(e.error_caching_min_ttl_s) if e is not None else default


def _behavior(b: BehaviorConfig, cache: CacheConfig) -> Behavior:
    policy = cache.policy(b.policy)
    orp = cache.origin_request_policy(b.origin_request_policy)
    if not b.trusted_key_groups:
        return Behavior(b.path_pattern, b.origin, b.policy, policy, KeyBuilder(policy),
                        Forwarding(policy, orp))
    keys = {key_id: load_public_key(key.pem_bytes())
            for group in b.trusted_key_groups
            for key_id, key in cache.key_groups[group].public_keys.items()}
    # the signature is the viewer's pass, not part of what is asked: CloudFront keeps its
    # parameters and cookies out of the cache key and the origin request
    return Behavior(b.path_pattern, b.origin, b.policy, policy, KeyBuilder(policy, QUERY_NAMES),
                    Forwarding(policy, orp, QUERY_NAMES, COOKIE_NAMES), Verifier(keys))
