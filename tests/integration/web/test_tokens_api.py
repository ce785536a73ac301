"""Tokens and the audit log over REST, for admins, against the running app."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import ClientSession

from fleetpulse.settings import Settings
from tests.conftest import make_token, web_client
from tests.integration.web.rest_support import bearer

CIRCLE: dict[str, Any] = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [-8.611, 41.1486]},
    "properties": {"id": "clerigos", "radius_m": 150.0},
}


async def tokens(http: ClientSession) -> dict[str, dict[str, Any]]:
    async with http.get("/api/v1/tokens") as resp:
        assert resp.status == 200
        return {t["name"]: t for t in await resp.json()}


async def test_an_admin_creates_lists_and_revokes_tokens(settings: Settings) -> None:
    admin = await make_token(settings, "admin", name="root")
    async with web_client(settings, admin) as http:
        admin_id = (await tokens(http))["root"]["id"]
        async with http.post(
            "/api/v1/tokens", json={"name": "  map wall ", "role": "viewer"}
        ) as resp:
            assert resp.status == 201, await resp.text()
            created = await resp.json()
        assert created["name"] == "map wall"
        assert created["role"] == "viewer"
        assert created["token"].startswith("fpt_")
        listed = await tokens(http)
        assert listed["map wall"]["id"] == created["id"]
        assert listed["map wall"]["role"] == "viewer"
        assert listed["map wall"]["revoked_at"] is None
        assert set(listed["map wall"]) == {
            "id",
            "name",
            "role",
            "created_at",
            "revoked_at",
            "last_used_at",
        }
        # The new token works, with its role and no more.
        as_new = bearer(created["token"])
        async with http.get("/api/v1/geofences", headers=as_new) as resp:
            assert resp.status == 200
        async with http.put("/api/v1/geofences/clerigos", json=CIRCLE, headers=as_new) as resp:
            assert resp.status == 403
        assert (await tokens(http))["map wall"]["last_used_at"] is not None
        async with http.delete(f"/api/v1/tokens/{created['id']}") as resp:
            assert resp.status == 204
        async with http.get("/api/v1/geofences", headers=as_new) as resp:
            assert resp.status == 401
            assert "unknown or revoked" in (await resp.json())["detail"]
        async with http.delete(f"/api/v1/tokens/{created['id']}") as resp:
            assert resp.status == 409
            assert "revoked already" in (await resp.json())["detail"]
        async with http.delete("/api/v1/tokens/tok_000000000000") as resp:
            assert resp.status == 404
        assert (await tokens(http))["map wall"]["revoked_at"] is not None
        async with http.get(f"/api/v1/audit?target={created['id']}") as resp:
            entries = (await resp.json())["items"]
    assert [(e["actor"], e["action"]) for e in entries] == [
        (admin_id, "token.revoke"),
        (admin_id, "token.create"),
    ]
    assert entries[1]["detail"] == {"name": "  map wall ", "role": "viewer"}


async def test_only_admins_manage_tokens_and_read_the_audit_log(settings: Settings) -> None:
    dispatcher = await make_token(settings, "dispatcher", name="dispatch")
    viewer = await make_token(settings, "viewer", name="wall")
    admin = await make_token(settings, "admin", name="root")
    async with web_client(settings) as http:
        async with http.get("/api/v1/tokens", headers=bearer(admin)) as resp:
            dispatcher_id = {t["name"]: t["id"] for t in await resp.json()}["dispatch"]
        for token in (dispatcher, viewer):
            for method, path, body in (
                ("GET", "/api/v1/tokens", None),
                ("POST", "/api/v1/tokens", {"name": "mine", "role": "admin"}),
                ("DELETE", f"/api/v1/tokens/{dispatcher_id}", None),
                ("GET", "/api/v1/audit", None),
            ):
                async with http.request(method, path, json=body, headers=bearer(token)) as resp:
                    assert resp.status == 403, (method, path)
                    assert "admin role" in (await resp.json())["detail"]
                async with http.request(method, path, json=body) as resp:
                    assert resp.status == 401
        async with http.get("/api/v1/tokens", headers=bearer(admin)) as resp:
            listed = await resp.json()
    assert sorted(t["name"] for t in listed) == ["dispatch", "root", "wall"]
    assert all(t["revoked_at"] is None for t in listed)


async def test_bad_token_requests_are_4xx(settings: Settings) -> None:
    admin = await make_token(settings, "admin")
    async with web_client(settings, admin) as http:
        for body, detail in (
            ({"name": "x", "role": "root"}, "at `$.role`"),
            ({"name": "", "role": "viewer"}, "at `$.name`"),
            ({"name": "   ", "role": "viewer"}, "a token needs a name"),
            ({"name": "a\x00b", "role": "viewer"}, "at `$.name`"),
            ({"role": "viewer"}, "missing required field `name`"),
            ({"name": 3, "role": "viewer"}, "at `$.name`"),
        ):
            async with http.post("/api/v1/tokens", json=body) as resp:
                assert resp.status == 422, body
                assert detail in (await resp.json())["detail"]
        async with http.delete("/api/v1/tokens/tok%00") as resp:
            assert resp.status == 404
        assert set(await tokens(http)) == {"test"}


async def test_the_audit_log_newest_first_filtered_and_paged(settings: Settings) -> None:
    admin = await make_token(settings, "admin", name="root")
    dispatcher = await make_token(settings, "dispatcher", name="dispatch")
    before_changes = datetime.now(UTC) - timedelta(seconds=1)
    async with web_client(settings, admin) as http:
        ids = {name: t["id"] for name, t in (await tokens(http)).items()}
        for name in ("a", "b", "c"):
            fence = {**CIRCLE, "properties": {**CIRCLE["properties"], "id": name}}
            async with http.put(
                f"/api/v1/geofences/{name}", json=fence, headers=bearer(dispatcher)
            ) as resp:
                assert resp.status == 200
        async with http.delete("/api/v1/geofences/b", headers=bearer(dispatcher)) as resp:
            assert resp.status == 204

        async def entries(query: str) -> tuple[list[tuple[str, str, str]], int | None]:
            async with http.get(f"/api/v1/audit?{query}") as resp:
                assert resp.status == 200, await resp.text()
                page = await resp.json()
            found = [(e["actor"], e["action"], e["target"]) for e in page["items"]]
            return found, page["next_before"]

        by_dispatcher = f"actor={ids['dispatch']}"
        newest_first = [
            (ids["dispatch"], "fence.delete", "b"),
            (ids["dispatch"], "fence.create", "c"),
            (ids["dispatch"], "fence.create", "b"),
            (ids["dispatch"], "fence.create", "a"),
        ]
        assert await entries(by_dispatcher) == (newest_first, None)
        first, cursor = await entries(f"{by_dispatcher}&limit=3")
        assert first == newest_first[:3] and cursor is not None
        assert await entries(f"{by_dispatcher}&limit=3&before={cursor}") == (newest_first[3:], None)
        assert (await entries("action=fence.delete"))[0] == newest_first[:1]
        assert (await entries("target=a&action=fence.create"))[0] == newest_first[3:]
        # make_token's own rows are by the command line.
        assert {actor for actor, _, _ in (await entries("action=token.create"))[0]} == {"cli"}
        since = before_changes.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert (await entries(f"{by_dispatcher}&from={since}"))[0] == newest_first
        assert (await entries(f"{by_dispatcher}&to={since}"))[0] == []
        for query, detail in (
            ("from=yesterday", "expected RFC 3339"),
            (f"from={since}&to={since}", "must be before 'to'"),
            ("limit=0", "must be at least 1"),
            ("limit=5000", "at most 1000"),
            ("before=x", "expected a whole number"),
            ("actor=a%00b", "contains a NUL character"),
        ):
            async with http.get(f"/api/v1/audit?{query}") as resp:
                assert resp.status == 400, query
                assert detail in (await resp.json())["detail"]
