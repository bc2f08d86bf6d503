"""Microseconds to route one request with 10 and 1,000 rules of mixed conditions (no sockets).

    python benchmarks/route_matches.py [--requests 50000] [--rounds 7] [--json]

Issue 20: header, query, method and source-IP conditions must not make a large rule set slow:
1,000 rules with mixed conditions may cost at most 2 µs per request more than 10. A request is
timed as the exchange routes it: its RequestFacts made, then Router.match. The rules: 100 hosts
with 10 rules each (1,000) or one host with the same 10 (10); each host's rules mix a header
value glob, a query pair, a method list, a source range, a path prefix and a path pattern, and
2 host-less rules with conditions come first, candidates for every request. Requests spread
over every host and every outcome: each rule, and the default. Host and path-only rule sets
of the same sizes are timed too, for comparison (that hot path must stay as it was). Each of
the 4,096 requests timed in turn is its own objects (host, path, headers), as parsed requests
are. Run by
scenario_rules.py (pinned with taskset), or alone.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lbcdn.routing import Router  # noqa: E402
from lbcdn.routing.conditions import RequestFacts  # noqa: E402
from lbcdn.routing.config import (FixedResponseAction, ForwardAction, HeaderCondition,  # noqa: E402
                                  MatchConfig, QueryCondition, RouteConfig)

DEFAULT = RouteConfig("default", FixedResponseAction(status=404))
ACTION = ForwardAction(pool="app")

# (match of one host's rule i, a request that meets it): each rule's request fails the rules
# before it, so every position in the list is reached
_Request = tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes | None, bytes]


def _host_rules(host: str, mixed: bool) -> list[tuple[MatchConfig, _Request]]:
    h = (host,)
    ua = [(b"User-Agent", b"curl/8"), (b"Accept", b"*/*")]
    if not mixed:
        return [(MatchConfig(hosts=h, path_prefix=f"/p{i}/"), (b"GET", f"/p{i}/x".encode(),
                 ua, None, b"10.1.1.1")) for i in range(10)]
    return [
        (MatchConfig(hosts=h, path_prefix="/api/", http_headers=(
            HeaderCondition("X-Canary", ("beta-*",)),)),
         (b"GET", b"/api/v1", ua + [(b"X-Canary", b"beta-3")], None, b"10.1.1.1")),
        (MatchConfig(hosts=h, path_prefix="/api/", methods=("POST", "PUT")),
         (b"POST", b"/api/v1", ua, None, b"10.1.1.1")),
        (MatchConfig(hosts=h, path_prefix="/api/", query_string=(
            QueryCondition(key="version", value="2*"),)),
         (b"GET", b"/api/v2", ua, b"a=1&version=2.1", b"10.1.1.1")),
        (MatchConfig(hosts=h, path_prefix="/api/", source_ips=("192.168.0.0/16",)),
         (b"GET", b"/api/x", ua, None, b"192.168.3.4")),
        (MatchConfig(hosts=h, path_prefix="/api/"), (b"GET", b"/api/y", ua, None, b"10.1.1.1")),
        (MatchConfig(hosts=h, path="/img/*.png", methods=("GET", "HEAD")),
         (b"HEAD", b"/img/a/b.png", ua, None, b"10.1.1.1")),
        (MatchConfig(hosts=h, http_headers=(HeaderCondition("Accept-Language", ("de*", "fr*")),)),
         (b"GET", b"/", ua + [(b"Accept-Language", b"de-CH")], None, b"10.1.1.1")),
        (MatchConfig(hosts=h, source_ips=("2001:db8::/32", "10.0.0.0/8"), methods=("DELETE",)),
         (b"DELETE", b"/thing", ua, None, b"10.2.2.2")),
        (MatchConfig(hosts=h, query_string=(QueryCondition(value="debug"),)),
         (b"GET", b"/q", ua, b"mode=debug", b"10.1.1.1")),
        (MatchConfig(hosts=h, path_prefix="/static/"),
         (b"GET", b"/static/app.js", ua, None, b"10.1.1.1")),
    ]


@dataclass(frozen=True)
class MatchCost:
    rules: int
    mixed: bool
    us_per_request: float


def rule_set(hosts: int, mixed: bool) -> tuple[Router, list[tuple[bytes, _Request]]]:
    routes: list[RouteConfig] = []
    requests: list[tuple[bytes, _Request]] = []
    if mixed:  # host-less rules with conditions: candidates for every request
        routes.append(RouteConfig("any-1", ACTION, MatchConfig(http_headers=(
            HeaderCondition("X-Debug-Route", ("on",)),))))
        routes.append(RouteConfig("any-2", ACTION, MatchConfig(
            path_prefix="/.well-known/", methods=("GET",))))
    for n in range(hosts):
        host = f"h{n}.example.com"
        for i, (match, request) in enumerate(_host_rules(host, mixed)):
            routes.append(RouteConfig(f"{host}-{i}", ACTION, match))
            requests.append((host.encode(), request))
        # one request per host that no rule takes
        requests.append((host.encode(), (b"GET", b"/nothing", [], None, b"10.1.1.1")))
    return Router(routes, DEFAULT), requests


def _copy(data: bytes) -> bytes:
    return bytes(bytearray(data))


def _fresh(request: tuple[bytes, _Request]) -> tuple[bytes, _Request]:
    host, (method, path, headers, query, client) = request
    return _copy(host), (_copy(method), _copy(path),
                         [(_copy(k), _copy(v)) for k, v in headers],
                         None if query is None else _copy(query), _copy(client))


def _time(router: Router, order: list[tuple[bytes, _Request]], n: int) -> float:
    conditional = router.conditional
    t0 = time.perf_counter()
    done = 0
    while done < n:
        for host, (method, path, headers, query, client) in order:
            router.match(host, path, RequestFacts(method, headers, query, client, None, 0)
                         if conditional else None)
        done += len(order)
    return (time.perf_counter() - t0) / done * 1e6


def measure(n: int, rounds: int) -> list[MatchCost]:
    """Every rule set, timed in `rounds` interleaved rounds of n requests (a shared machine
    drifts: interleaving gives each set the same share of it); the median round of each."""
    sets = []
    rng = random.Random(1)
    for mixed in (False, True):
        for size in (10, 1000):
            router, requests = rule_set(size // 10, mixed)
            # every request its own objects, as parsed requests are: 10 rules must not look
            # faster for reusing 11 warm request objects where 1,000 rules use 1,100
            order = [_fresh(rng.choice(requests)) for _ in range(4096)]
            _time(router, order, len(order))   # warm the host cache
            sets.append((mixed, router, order))
    times: list[list[float]] = [[] for _ in sets]
    for _ in range(rounds):
        for i, (_, router, order) in enumerate(sets):
            times[i].append(_time(router, order, n))
    return [MatchCost(len(router.routes), mixed, statistics.median(t))
            for (mixed, router, _), t in zip(sets, times)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000, help="per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = measure(args.requests, args.rounds)
    if args.json:
        print(json.dumps([asdict(r) for r in rows]))
        return
    for r in rows:
        kind = "mixed conditions" if r.mixed else "host + path only"
        print(f"{r.rules:5d} rules, {kind:17s}: {r.us_per_request:6.2f} us per request")


if __name__ == "__main__":
    main()
