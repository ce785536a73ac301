"""Broker accounts of devices and services: kept in PostgreSQL, written out as
Mosquitto's password and ACL files, and the broker told to reload them (or, with
FLEETPULSE_MQTT_AUTH_BACKEND=dynsec, given to the dynamic security plugin by
`fleetpulse.dynsec`).

PostgreSQL is the record (table `mqtt_accounts`, only password hashes); the files are
derived from it, so `sync_broker` can always write them again (a new broker, a restore).
A change is committed first, then `sync_broker` writes the files: the caller shows a new
password in between, so a broker that cannot be reached does not lose it. Each rewrite
reads the database and writes the files under one advisory lock, so of two commands at
once the last to write has read the newer state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg

from fleetpulse.database import Conn
from fleetpulse.errors import FleetPulseError
from fleetpulse.settings import Settings
from mqtt import credentials
from mqtt.credentials import Account, InvalidName, ServiceRole
from mqtt.topics import TopicScheme
from tracker import store as tracker_store
from tracker.positions import DeviceKind
from web import auth

# pg_advisory_lock key of "the broker's accounts"; any constant other locks do not use.
_LOCK_KEY = 0x666C_7074_6D71_7474  # "flptmqtt"
# Mode of a file written for the first time: the broker's group reads it, nobody else.
NEW_FILE_MODE = 0o640
RELOAD_TIMEOUT_S = 30.0
DEVICE_ROLE = "device"


class CredentialError(FleetPulseError):
    """An account that cannot be created or changed as asked."""


class BrokerSyncError(FleetPulseError):
    """The database changed, but the broker's files or reload failed: run
    `fleetpulse devices sync-broker` once the cause is fixed."""


@dataclass(frozen=True)
class Issued:
    """New credentials: the password exists only here, and is shown once."""

    username: str
    password: str
    device_id: str | None
    role: str


@dataclass(frozen=True)
class AccountInfo:
    username: str
    device_id: str | None
    role: str
    created_at: datetime
    rotated_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class BrokerSync:
    """What `sync_broker` did: accounts written (None: no files configured) and how
    the broker was told."""

    accounts: int | None
    reload: str


async def add_device(
    conn: Conn,
    device_id: str,
    *,
    kind: DeviceKind | None = None,
    groups: Sequence[str] | None = None,
) -> Issued:
    """Register the device (or keep its row) and give it a password. A revoked device is
    admitted again with a new one; a device that has an active one must be rotated."""
    try:
        username = credentials.device_username(device_id)
    except InvalidName as exc:
        raise CredentialError(str(exc)) from None
    password = credentials.new_password()
    async with conn.transaction():
        # A device registered before it reports counts as seen at registration: the
        # registry's first/last seen are never empty.
        await conn.execute(
            "INSERT INTO devices (device_id, kind, first_seen, last_seen)"
            " VALUES (%s, %s, now(), now())"
            " ON CONFLICT (device_id) DO UPDATE SET kind = coalesce(EXCLUDED.kind, devices.kind)",
            (device_id, kind.value if kind else None),
        )
        if groups is not None:
            await tracker_store.set_device_groups(conn, device_id, list(groups))
        cur = await conn.execute(
            "SELECT username, device_id, revoked_at FROM mqtt_accounts"
            " WHERE username = %s OR device_id = %s FOR UPDATE",
            (username, device_id),
        )
        existing = await cur.fetchone()
        if existing is not None and existing[1] != device_id:
            raise CredentialError(
                f"broker username {username!r} already belongs to"
                f" {_holder(existing[0], existing[1])}"
            )
        if existing is not None and existing[2] is None:
            raise CredentialError(
                f"device {device_id!r} has credentials already; `fleetpulse devices"
                f" rotate {device_id}` replaces its password"
            )
        await conn.execute(
            "INSERT INTO mqtt_accounts (username, device_id, role, password_hash)"
            " VALUES (%s, %s, 'device', %s)"
            " ON CONFLICT (username) DO UPDATE SET password_hash = EXCLUDED.password_hash,"
            " revoked_at = NULL, rotated_at = now()",
            (username, device_id, credentials.hash_password(password)),
        )
        action = "device.credentials.readmit" if existing else "device.credentials.add"
        await auth.audit(conn, "cli", action, device_id, {"username": username})
    return Issued(username, password, device_id, DEVICE_ROLE)


def _holder(username: str, device_id: str | None) -> str:
    return f"device {device_id!r}" if device_id else f"service account {username!r}"


async def add_service_account(conn: Conn, name: str, role: ServiceRole) -> Issued:
    try:
        username = credentials.check_account_name(name)
    except InvalidName as exc:
        raise CredentialError(str(exc)) from None
    password = credentials.new_password()
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO mqtt_accounts (username, role, password_hash) VALUES (%s, %s, %s)",
                (username, role.value, credentials.hash_password(password)),
            )
            detail = {"role": role.value}
            await auth.audit(conn, "cli", "service.credentials.add", username, detail)
    except psycopg.errors.UniqueViolation:
        cur = await conn.execute(
            "SELECT username, device_id FROM mqtt_accounts WHERE username = %s", (username,)
        )
        row = await cur.fetchone()
        holder = _holder(row[0], row[1]) if row else "another account"
        raise CredentialError(
            f"broker username {username!r} already belongs to {holder}"
            " (rotate or revoke it instead)"
        ) from None
    return Issued(username, password, None, role.value)


async def rotate(conn: Conn, name: str) -> Issued:
    """A new password for a device (by id) or a service account (by name); the old one
    stops working when the broker reloads, and sessions that used it are closed then."""
    password = credentials.new_password()
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE mqtt_accounts SET password_hash = %s, rotated_at = now()"
            " WHERE (device_id = %s OR (device_id IS NULL AND username = %s))"
            " AND revoked_at IS NULL RETURNING username, device_id, role",
            (credentials.hash_password(password), name, name),
        )
        row = await cur.fetchone()
        if row is None:
            raise CredentialError(await _why_not_active(conn, name, "rotate"))
        await auth.audit(conn, "cli", "credentials.rotate", name, {"username": row[0]})
    return Issued(row[0], password, row[1], row[2])


async def revoke(conn: Conn, name: str) -> str:
    """The account is kept (revoked, for the record) and leaves the broker's files at the
    next sync; the broker closes its sessions when it reloads. Returns the username."""
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE mqtt_accounts SET revoked_at = now()"
            " WHERE (device_id = %s OR (device_id IS NULL AND username = %s))"
            " AND revoked_at IS NULL RETURNING username",
            (name, name),
        )
        row = await cur.fetchone()
        if row is None:
            raise CredentialError(await _why_not_active(conn, name, "revoke"))
        await auth.audit(conn, "cli", "credentials.revoke", name, {"username": row[0]})
    return str(row[0])


async def _why_not_active(conn: Conn, name: str, verb: str) -> str:
    cur = await conn.execute(
        "SELECT revoked_at FROM mqtt_accounts"
        " WHERE device_id = %s OR (device_id IS NULL AND username = %s)",
        (name, name),
    )
    row = await cur.fetchone()
    if row is None:
        return f"cannot {verb} {name!r}: no device or service account has credentials by that name"
    return f"cannot {verb} {name!r}: revoked at {row[0].isoformat()}" + (
        f"; `fleetpulse devices add {name}` admits it again" if verb == "rotate" else ""
    )


async def listing(conn: Conn) -> list[AccountInfo]:
    cur = await conn.execute(
        "SELECT username, device_id, role, created_at, rotated_at, revoked_at"
        " FROM mqtt_accounts ORDER BY username"
    )
    return [AccountInfo(*row) for row in await cur.fetchall()]


async def sync_broker(conn: Conn, settings: Settings, issued: Issued | None = None) -> BrokerSync:
    """Write the files from the database as it stands, then have the broker reload; or,
    with FLEETPULSE_MQTT_AUTH_BACKEND=dynsec, bring the dynamic security plugin there
    (`issued`: the change's new password, which only that way reaches the plugin)."""
    if settings.mqtt_auth_backend == "dynsec":
        from fleetpulse import dynsec  # it builds on this module

        passwords = {issued.username: issued.password} if issued else {}
        return await dynsec.sync_broker(conn, settings, passwords)
    if not settings.mqtt_password_file:
        return BrokerSync(None, "no broker files configured (FLEETPULSE_MQTT_PASSWORD_FILE)")
    async with accounts_lock(conn):
        written = await _write_from_database(conn, settings)
    return BrokerSync(written, await reload_broker(settings))


@contextlib.asynccontextmanager
async def accounts_lock(conn: Conn) -> AsyncIterator[None]:
    """Held around "read the accounts, give them to the broker": of two commands at
    once, the last to reach the broker has read the newer state."""
    await conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


@dataclass(frozen=True)
class AccountRow:
    username: str
    device_id: str | None
    role: str
    password_hash: str


async def active_rows(conn: Conn) -> list[AccountRow]:
    cur = await conn.execute(
        "SELECT username, device_id, role, password_hash FROM mqtt_accounts"
        " WHERE revoked_at IS NULL ORDER BY username"
    )
    return [AccountRow(*row) for row in await cur.fetchall()]


async def active_accounts(conn: Conn, scheme: TopicScheme) -> list[Account]:
    accounts = []
    for row in await active_rows(conn):
        grants = (
            credentials.device_grants(row.device_id, scheme)
            if row.role == DEVICE_ROLE and row.device_id is not None
            else credentials.service_grants(ServiceRole(row.role), scheme)
        )
        accounts.append(Account(row.username, row.password_hash, grants))
    return accounts


async def _write_from_database(conn: Conn, settings: Settings) -> int:
    accounts = await active_accounts(
        conn, TopicScheme(settings.topic_prefix, settings.owntracks_prefix)
    )
    passwords = credentials.render_password_file(accounts)
    acl = credentials.render_acl_file(accounts)
    try:
        await asyncio.to_thread(
            write_files,
            [(Path(settings.mqtt_password_file), passwords), (Path(settings.mqtt_acl_file), acl)],
        )
    except OSError as exc:
        raise BrokerSyncError(
            f"the broker's files were not written: {exc}; the database holds the change,"
            " run `fleetpulse devices sync-broker` once this is fixed"
        ) from None
    return len(accounts)


def write_files(files: Sequence[tuple[Path, str]]) -> None:
    """Each file replaced whole (temporary file, fsync, rename): the broker reads either
    the old or the new one, never half. All are prepared before the first rename."""
    prepared: list[tuple[Path, str]] = []
    try:
        for path, text in files:
            prepared.append((path, _prepare(path, text)))
        for path, temporary in prepared:
            os.replace(temporary, path)
            _fsync_directory(path.parent)
    finally:
        for _, temporary in prepared:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)


def _prepare(path: Path, text: str) -> str:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        _take_permissions(path, temporary)
    except BaseException:
        os.unlink(temporary)
        raise
    return temporary


def _take_permissions(path: Path, temporary: str) -> None:
    """The broker reads these files after dropping to its own user: keep the mode and
    owner an operator gave the file; a new one gets NEW_FILE_MODE and its directory's group
    (give that directory the broker's group)."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        os.chmod(temporary, NEW_FILE_MODE)
        with contextlib.suppress(PermissionError):  # not a member of that group
            os.chown(temporary, -1, os.stat(path.parent).st_gid)
        return
    os.chmod(temporary, current.st_mode & 0o7777)
    with contextlib.suppress(PermissionError):  # only root can give a file away
        os.chown(temporary, current.st_uid, current.st_gid)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def reload_broker(settings: Settings) -> str:
    """SIGHUP to the pid in the broker's pid file, or the configured command. Mosquitto
    then re-reads both files, closes sessions whose credentials no longer hold, and judges
    every later publish by the new ACL."""
    if settings.mqtt_reload_cmd:
        argv = shlex.split(settings.mqtt_reload_cmd)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            output, _ = await asyncio.wait_for(process.communicate(), RELOAD_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise BrokerSyncError(f"files written, but {argv[0]!r} failed: {exc}") from None
        if process.returncode != 0:
            tail = output.decode(errors="replace").strip()[-500:]
            raise BrokerSyncError(
                f"files written, but {settings.mqtt_reload_cmd!r} exited with"
                f" {process.returncode}: {tail}"
            )
        return f"reloaded with {settings.mqtt_reload_cmd!r}"
    if settings.mqtt_pid_file:
        try:
            pid = int((await asyncio.to_thread(Path(settings.mqtt_pid_file).read_text)).strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            raise BrokerSyncError(
                f"files written, but the broker was not signalled ({settings.mqtt_pid_file}): {exc}"
            ) from None
        return f"SIGHUP sent to the broker (pid {pid})"
    return (
        "files written; the broker reloads them on SIGHUP (set FLEETPULSE_MQTT_PID_FILE"
        " or FLEETPULSE_MQTT_RELOAD_CMD to have this done)"
    )
