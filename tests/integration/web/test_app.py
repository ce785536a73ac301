"""The web app's frame: it serves its OpenAPI document, answers errors as problem
details, and enforces bearer tokens and roles."""

from __future__ import annotations

import pytest
from aiohttp import web

import web.app as web_app
from fleetpulse.settings import Settings
from tests.conftest import make_token, web_client
from web.api import Api
from web.auth import Role


async def test_openapi_document_is_served(settings: Settings) -> None:
    async with web_client(settings) as http, http.get("/api/openapi.json") as resp:
        assert resp.status == 200
        document = await resp.json()
    assert document["openapi"].startswith("3.")
    assert "/api/openapi.json" in document["paths"]
    assert "ProblemDetails" in document["components"]["schemas"]


async def test_unknown_route_is_a_problem_document(settings: Settings) -> None:
    async with web_client(settings) as http, http.get("/api/v1/nothing-here") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
    assert problem["status"] == 404
    assert "/api/v1/nothing-here" in problem["detail"]


async def test_tokens_are_checked_and_roles_enforced(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = Api()

    @api.post("/api/v1/_probe", summary="probe", role=Role.DISPATCHER, tag="test")
    async def probe(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    viewer = await make_token(settings, "viewer")
    dispatcher = await make_token(settings, "dispatcher")
    original = web_app.route_apis
    monkeypatch.setattr(web_app, "route_apis", lambda: [*original(), api])
    async with web_client(settings) as http:
        url = "/api/v1/_probe"
        async with http.post(url) as resp:
            assert resp.status == 401
            assert "bearer token is required" in (await resp.json())["detail"]
        async with http.post(url, headers={"Authorization": "Bearer fpt_wrong"}) as resp:
            assert resp.status == 401
            assert "unknown or revoked" in (await resp.json())["detail"]
        async with http.post(url, headers={"Authorization": "Basic abc"}) as resp:
            assert resp.status == 401
        async with http.post(url, headers={"Authorization": f"Bearer {viewer}"}) as resp:
            assert resp.status == 403
            assert "dispatcher role" in (await resp.json())["detail"]
        async with http.post(url, headers={"Authorization": f"Bearer {dispatcher}"}) as resp:
            assert resp.status == 200
