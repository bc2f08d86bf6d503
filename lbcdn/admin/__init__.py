"""The admin API: an aiohttp app with /healthz, /metrics and the bearer-protected /api/*."""

from lbcdn.admin.app import create_admin_app, start_admin
from lbcdn.admin.state import AdminState

__all__ = ["AdminState", "create_admin_app", "start_admin"]
