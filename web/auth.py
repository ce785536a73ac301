"""Bearer tokens for dispatch users and integrations, their roles, and the audit log.

Tokens are 32 random bytes, so a plain SHA-256 is a safe way to keep them: there is no
password to guess. Only the hash is stored; the token is shown once, at creation.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from psycopg.types.json import Jsonb

from fleetpulse.database import Conn
from web.problems import Problem

TOKEN_PREFIX = "fpt_"
CLI_ACTOR = "cli"


class Role(enum.IntEnum):
    """Each role may do what the ones below it may."""

    VIEWER = 1  # reads everything
    DISPATCHER = 2  # also changes fences and deliveries, acknowledges alerts
    ADMIN = 3  # also manages tokens and webhooks

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"expected viewer, dispatcher or admin, got {text!r}") from None


@dataclass(frozen=True)
class Principal:
    token_id: str
    name: str
    role: Role


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(
    conn: Conn, name: str, role: Role, actor: str = CLI_ACTOR
) -> tuple[str, str]:
    """A new token: returns (its id, the token itself, which is not kept)."""
    if not name.strip():
        raise ValueError("a token needs a name that says whose it is")
    token_id = "tok_" + secrets.token_hex(6)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO api_tokens (id, name, role, token_hash) VALUES (%s, %s, %s, %s)",
            (token_id, name.strip(), role.label, hash_token(token)),
        )
        await audit(conn, actor, "token.create", token_id, {"name": name, "role": role.label})
    return token_id, token


async def revoke_token(conn: Conn, token_id: str, actor: str = CLI_ACTOR) -> bool:
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL",
            (token_id,),
        )
        if cur.rowcount:
            await audit(conn, actor, "token.revoke", token_id)
    return bool(cur.rowcount)


async def list_tokens(conn: Conn) -> list[TokenInfo]:
    cur = await conn.execute(
        "SELECT id, name, role, created_at, revoked_at, last_used_at FROM api_tokens"
        " ORDER BY created_at"
    )
    return [
        TokenInfo(row[0], row[1], Role.parse(row[2]), row[3], row[4], row[5])
        for row in await cur.fetchall()
    ]


async def principal(conn: Conn, token: str) -> Principal | None:
    """Who holds this token, if it is valid and not revoked."""
    cur = await conn.execute(
        "UPDATE api_tokens SET last_used_at = now() WHERE token_hash = %s AND revoked_at IS NULL"
        " RETURNING id, name, role",
        (hash_token(token),),
    )
    row = await cur.fetchone()
    return None if row is None else Principal(row[0], row[1], Role.parse(row[2]))


async def audit(
    conn: Conn, actor: str, action: str, target: str, detail: dict[str, Any] | None = None
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, target, detail) VALUES (%s, %s, %s, %s)",
        (actor, action, target, Jsonb(detail or {})),
    )


def bearer_token(request: web.Request, *, allow_query: bool = False) -> str | None:
    """The token from `Authorization: Bearer ...`; websockets may pass `?access_token=`,
    since browsers cannot set headers on them."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if header:
        raise Problem(401, "the Authorization header must be 'Bearer <token>'")
    if allow_query:
        return request.query.get("access_token") or None
    return None


def require_role(found: Principal | None, needed: Role, *, had_token: bool) -> Principal:
    if found is None:
        raise Problem(
            401,
            "this token is unknown or revoked"
            if had_token
            else "a bearer token is required (fleetpulse tokens create)",
        )
    if found.role < needed:
        raise Problem(
            403,
            f"this needs the {needed.label} role; the token {found.token_id} is a "
            f"{found.role.label}",
        )
    return found
