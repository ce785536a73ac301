"""The benchmark's own database: recreated empty, migrated by the product's CLI, checked."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

MIGRATE_TIMEOUT_S = 120.0


def database_url(server_url: str, name: str) -> str:
    """The server URL naming `name` as its database (a URL: the product's setting wants one)."""
    return urlunsplit(urlsplit(server_url)._replace(path="/" + name))


async def recreate(server_url: str, name: str) -> None:
    """DROP (forcing off any leftover session of an aborted run) and CREATE."""
    admin = psycopg.conninfo.make_conninfo(server_url, dbname="postgres")
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        ident = sql.Identifier(name)
        await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))


async def migrate(fleetpulse: str, env: dict[str, str]) -> str:
    """`fleetpulse db migrate`; its report (schema version, storage mode)."""
    process = await asyncio.create_subprocess_exec(
        fleetpulse,
        "db",
        "migrate",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), MIGRATE_TIMEOUT_S)
    if process.returncode != 0:
        raise RuntimeError(f"fleetpulse db migrate failed:\n{out.decode(errors='replace')}")
    return out.decode(errors="replace")


async def backend_pids(url: str, name: str) -> list[int]:
    """Server processes serving other sessions on the benchmark database (the ingester's)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        return [int(row[0]) for row in await cur.fetchall()]


async def stored_counts(url: str) -> dict[str, int]:
    """Rows in telemetry, distinct (device, ts) among them, devices and quarantined rows."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM telemetry),"
            " (SELECT count(*) FROM (SELECT DISTINCT device_id, ts FROM telemetry) d),"
            " (SELECT count(*) FROM devices),"
            " (SELECT count(*) FROM quarantine)"
        )
        row = await cur.fetchone()
    assert row is not None
    rows, distinct, devices, quarantined = (int(v) for v in row)
    return {"rows": rows, "distinct": distinct, "devices": devices, "quarantined": quarantined}
