"""What the REST API tests share: a bearer header, a token's id as the audit log names
its actor, and the audit rows one resource's actions left."""

from __future__ import annotations

from typing import Any

from fleetpulse.database import connect
from fleetpulse.settings import Settings
from web import auth


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def token_id(settings: Settings, token: str) -> str:
    conn = await connect(settings.database_url)
    try:
        found = await auth.principal(conn, token)
    finally:
        await conn.close()
    assert found is not None
    return found.token_id


async def audit_rows(
    settings: Settings, resource: str
) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(actor, action, target, detail) of the actions `<resource>.*`, oldest first."""
    conn = await connect(settings.database_url)
    try:
        cur = await conn.execute(
            "SELECT actor, action, target, detail FROM audit_log WHERE action LIKE %s ORDER BY id",
            (f"{resource}.%",),
        )
        return [tuple(row) for row in await cur.fetchall()]
    finally:
        await conn.close()
