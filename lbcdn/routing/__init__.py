"""Routing: which configured route a request belongs to, and where a redirect action points.

Pure code, no I/O: the edge calls `Router.match` once per request and `redirect_location` when the
chosen route's action is a redirect.
"""

from lbcdn.routing.redirect import redirect_location
from lbcdn.routing.router import Router

__all__ = ["Router", "redirect_location"]
