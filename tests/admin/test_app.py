"""The admin API over real TCP on 127.0.0.1: health, metrics, bearer auth on /api/, JSON errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from lbcdn.admin.app import create_admin_app, start_admin
from lbcdn.metrics import route_metrics

TOKEN = "s3cret-token"


@dataclass
class FakeState:
    draining: bool = False
    view: dict[str, object] = field(default_factory=lambda: {
        "listeners": [{"name": "http", "port": 8080}], "pools": {"web": {"targets": []}}})

    def describe(self) -> dict[str, object]:
        return self.view


@dataclass
class Admin:
    url: str
    state: FakeState
    session: aiohttp.ClientSession


async def serve(token: str | None, app_hook: object = None) -> AsyncIterator[Admin]:
    state = FakeState()
    app = create_admin_app(state, token)
    if callable(app_hook):
        app_hook(app)
    server = await start_admin(app, "127.0.0.1", 0)
    assert server.port > 0
    try:
        async with aiohttp.ClientSession() as session:
            yield Admin(f"http://127.0.0.1:{server.port}", state, session)
    finally:
        await server.stop()


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    async for a in serve(TOKEN):
        yield a


@pytest.fixture
async def open_admin() -> AsyncIterator[Admin]:
    async for a in serve(None):
        yield a


async def test_healthz_ok_then_draining(admin: Admin) -> None:
    async with admin.session.get(admin.url + "/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
    admin.state.draining = True
    async with admin.session.get(admin.url + "/healthz") as resp:
        assert resp.status == 503
        assert await resp.json() == {"status": "draining"}


async def test_metrics_needs_no_auth_and_shows_observations(admin: Admin) -> None:
    route_metrics("admin-test-listener", "admin-test-route").observe(200, 0.01, 10, 20)
    async with admin.session.get(admin.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        body = await resp.text()
    assert ('lbcdn_http_requests_total{listener="admin-test-listener",'
            'route="admin-test-route",status_class="2xx"} 1.0') in body


async def test_api_without_authorization_is_401(admin: Admin) -> None:
    async with admin.session.get(admin.url + "/api/runtime") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        # RFC 6750 3.1: no error code when the request carried no credentials
        assert "error=" not in resp.headers["WWW-Authenticate"]
        assert "error" in await resp.json()


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   "])
async def test_api_with_other_scheme_or_no_credentials_is_401(admin: Admin, header: str) -> None:
    async with admin.session.get(admin.url + "/api/runtime",
                                 headers={"Authorization": header}) as resp:
        assert resp.status == 401


@pytest.mark.parametrize("token", ["wrong", TOKEN + "x", TOKEN[:-1], "\u00e9t\u00e9"])
async def test_api_with_wrong_token_is_401_invalid_token(admin: Admin, token: str) -> None:
    # RFC 6750 3.1: an invalid token is 401 with error="invalid_token", not 403
    for method, path in (("GET", "/api/runtime"), ("POST", "/api/reload"), ("GET", "/api/nope")):
        async with admin.session.request(method, admin.url + path,
                                         headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 401
            challenge = resp.headers["WWW-Authenticate"]
            assert challenge.startswith("Bearer ")
            assert 'error="invalid_token"' in challenge
            assert await resp.json() == {"error": "invalid token"}


async def test_api_with_token_returns_runtime(admin: Admin) -> None:
    for scheme in ("Bearer", "bearer"):
        async with admin.session.get(admin.url + "/api/runtime",
                                     headers={"Authorization": f"{scheme} {TOKEN}"}) as resp:
            assert resp.status == 200
            assert await resp.json() == admin.state.view


async def test_unknown_api_path_asks_for_auth_before_404(admin: Admin) -> None:
    async with admin.session.get(admin.url + "/api/nope") as resp:
        assert resp.status == 401
    async with admin.session.get(admin.url + "/api/nope",
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        assert resp.status == 404
        assert resp.content_type == "application/json"
        assert "error" in await resp.json()


async def test_unknown_path_is_404_json(admin: Admin) -> None:
    async with admin.session.get(admin.url + "/nope") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/json"
        assert await resp.json() == {"error": "not found"}


async def test_wrong_method_is_405_json_with_allow(admin: Admin) -> None:
    async with admin.session.post(admin.url + "/healthz") as resp:
        assert resp.status == 405
        assert "GET" in resp.headers["Allow"]
        assert await resp.json() == {"error": "method not allowed"}


async def test_endpoints_added_later_under_api_are_protected() -> None:
    async def purge(request: web.Request) -> web.Response:
        return web.json_response({"purged": True})

    def add(app: web.Application) -> None:
        app.router.add_post("/api/purge", purge)

    async for a in serve(TOKEN, add):
        async with a.session.post(a.url + "/api/purge") as resp:
            assert resp.status == 401
        async with a.session.post(a.url + "/api/purge",
                                  headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200


async def test_handler_crash_is_500_json() -> None:
    async def crash(request: web.Request) -> web.Response:
        raise RuntimeError("internal detail")

    def add(app: web.Application) -> None:
        app.router.add_get("/crash", crash)

    async for a in serve(TOKEN, add):
        async with a.session.get(a.url + "/crash") as resp:
            assert resp.status == 500
            assert await resp.json() == {"error": "internal error"}


async def test_no_token_leaves_api_open(open_admin: Admin) -> None:
    async with open_admin.session.get(open_admin.url + "/api/runtime") as resp:
        assert resp.status == 200
        assert await resp.json() == open_admin.state.view


async def test_no_token_refuses_state_changes_with_403(open_admin: Admin) -> None:
    # no token could make this allowed: 403, and no challenge to send one
    async with open_admin.session.post(open_admin.url + "/api/reload",
                                       headers={"Authorization": "Bearer anything"}) as resp:
        assert resp.status == 403
        assert "WWW-Authenticate" not in resp.headers
        assert await resp.json() == {
            "error": "state-changing API calls need admin.token to be configured"}


def test_empty_token_is_refused() -> None:
    with pytest.raises(ValueError):
        create_admin_app(FakeState(), "  ")
