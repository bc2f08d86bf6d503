"""What a route does beyond choosing one pool: weighted forward with stickiness, rewrites and
basic authentication, built once per route from its config (the router holds them, so a
reload builds them afresh and the admin API changes the live ones)."""

from __future__ import annotations

from lbcdn.routing.basic_auth import BasicAuth
from lbcdn.routing.config import ForwardAction, RouteConfig
from lbcdn.routing.rewrite import Rewriter
from lbcdn.routing.weighted import WeightedForward


class RouteActions:
    __slots__ = ("weighted", "rewriter", "auth")

    def __init__(self, weighted: WeightedForward | None, rewriter: Rewriter | None,
                 auth: BasicAuth | None) -> None:
        self.weighted = weighted
        self.rewriter = rewriter
        self.auth = auth

    @staticmethod
    def build(route: RouteConfig) -> RouteActions | None:
        """The route's actions, or None when it has none of them (a plain forward and others)."""
        action = route.action
        weighted = rewriter = None
        if isinstance(action, ForwardAction):
            if action.pools:
                weighted = WeightedForward(route.name, action)
            if action.rewrite is not None:
                rewriter = Rewriter(action.rewrite)
        auth = BasicAuth(route.basic_auth) if route.basic_auth is not None else None
        if weighted is None and rewriter is None and auth is None:
            return None
        return RouteActions(weighted, rewriter, auth)
