"""Broker credentials of devices and services, in Mosquitto's own file formats.

Pure: names are checked, passwords hashed and the password and ACL files rendered here;
`fleetpulse.device_credentials` keeps the accounts in PostgreSQL and writes the files.

- Password file: `username:$7$<iterations>$<salt>$<hash>` per line, the PBKDF2-SHA512
  form `mosquitto_passwd` writes (12-byte salt, 64-byte key, standard base64).
- ACL file: `user <name>` followed by that user's `topic read|write <topic>` lines. Lines
  before the first `user` would apply to anonymous clients, so there are none.

A device may write its own topics and read nothing. Mosquitto's ACL file grants every
SUBSCRIBE (its default ACL check does not judge subscription filters) and filters what it
delivers by `read` access, so a device that subscribes to the whole fleet receives
nothing; refusing the SUBSCRIBE itself takes the dynamic security plugin
(docs/device-security.md).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from mqtt.topics import TopicScheme

MAX_NAME_LENGTH = 64
# mosquitto_passwd's own default. The passwords are random (PASSWORD_BYTES of entropy),
# so key stretching adds nothing against guessing; it only costs the broker CPU on every
# CONNECT, which matters when a whole fleet reconnects after a broker restart.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12  # Mosquitto refuses any other salt length
KEY_BYTES = 64  # SHA-512's output; Mosquitto refuses any other length
PASSWORD_BYTES = 24  # 192 random bits, 32 URL-safe characters

_DEVICE_ID = re.compile(r"[A-Za-z0-9_.:-]+")
_ACCOUNT_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# What may appear in a rendered file: checked again there, whatever the caller checked.
_USERNAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_TOPIC_FORBIDDEN = re.compile(r"[\s\x00]")
# Password files split each line at its first ':' (so usernames cannot hold one), and
# OwnTracks device ids are `<user>:<device>`: their username has '@' there, a character
# device ids never contain, so no two devices can map to one username.
_OWNTRACKS_SEPARATOR = "@"


class InvalidName(ValueError):
    """A device id or account name that cannot be a broker username or a topic level."""


class Access(enum.StrEnum):
    READ = "read"
    WRITE = "write"


class ServiceRole(enum.StrEnum):
    """What a service account may do; devices have their own fixed rights."""

    # Reads every device topic, through `$share/<group>/...` or directly.
    INGEST = "ingest"


@dataclass(frozen=True)
class Grant:
    access: Access
    topic: str


@dataclass(frozen=True)
class Account:
    """One broker user, as the files carry it."""

    username: str
    password_hash: str
    grants: tuple[Grant, ...]


def check_device_id(device_id: str) -> str:
    """The id, if it can name a device in topics and on the broker; else InvalidName
    saying what is wrong (a wildcard or '/' in an id would widen the device's grants)."""
    return _check_name(device_id, "device id", _DEVICE_ID, "'_', '.', ':' and '-'")


def check_account_name(name: str) -> str:
    """A service account's name: also its username, so no ':' (see above)."""
    return _check_name(name, "account name", _ACCOUNT_NAME, "'_', '.' and '-'")


def _check_name(name: str, what: str, allowed: re.Pattern[str], punctuation: str) -> str:
    """`name` if it is a `what` made only of `allowed` characters (letters, digits and
    `punctuation`); else InvalidName naming the first thing wrong."""
    if not name:
        raise InvalidName(f"a {what} cannot be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(
            f"{what} {name[:20]!r}...: {len(name)} characters, at most {MAX_NAME_LENGTH}"
        )
    for char, why in (
        ("\x00", "a NUL character"),
        ("+", "the MQTT wildcard '+'"),
        ("#", "the MQTT wildcard '#'"),
        ("/", "'/', which would add a topic level"),
    ):
        if char in name:
            raise InvalidName(f"{what} {name!r} contains {why}")
    if not name.strip("."):
        raise InvalidName(f"{what} {name!r} is made of dots only, which read as a path step")
    if not allowed.fullmatch(name):
        bad = next(c for c in name if not allowed.fullmatch(c))
        raise InvalidName(
            f"{what} {name!r}: {_describe(bad)} is not allowed; use letters, digits, {punctuation}"
        )
    return name


def _describe(char: str) -> str:
    return repr(char) if char.isprintable() and not char.isspace() else f"U+{ord(char):04X}"


def device_username(device_id: str) -> str:
    """The broker username of a device: its id, with an OwnTracks id's ':' as '@'."""
    return check_device_id(device_id).replace(":", _OWNTRACKS_SEPARATOR)


def owntracks_topic(device_id: str, scheme: TopicScheme) -> str | None:
    """`owntracks/<user>/<device>` for an id of that form, as the ingester names such a
    device (lower-cased); None for an id that no OwnTracks topic maps to."""
    user, colon, device = device_id.partition(":")
    if not colon or not user or not device or ":" in device or device_id != device_id.lower():
        return None
    return f"{scheme.owntracks_prefix}/{user}/{device}"


def device_grants(device_id: str, scheme: TopicScheme) -> tuple[Grant, ...]:
    """Publishing on its own topics, reading nothing: a device never sees the fleet."""
    check_device_id(device_id)
    head = f"{scheme.prefix}/{device_id}"
    grants = [Grant(Access.WRITE, f"{head}/{leaf}") for leaf in ("telemetry", "status", "delivery")]
    owntracks = owntracks_topic(device_id, scheme)
    if owntracks is not None:
        # The app's location and last will on the topic itself, events and info below it;
        # it may read its own command topic (remote configuration, report now).
        grants += [
            Grant(Access.WRITE, owntracks),
            Grant(Access.WRITE, f"{owntracks}/+"),
            Grant(Access.READ, f"{owntracks}/cmd"),
        ]
    return tuple(grants)


def service_grants(role: ServiceRole, scheme: TopicScheme) -> tuple[Grant, ...]:
    if role is ServiceRole.INGEST:
        # The filters the ingester subscribes to; `read` also covers their `$share/<group>/`
        # form, since Mosquitto judges a delivery by the message's own topic.
        return tuple(Grant(Access.READ, f) for f in scheme.filters())
    raise AssertionError(f"unhandled role {role}")


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """Mosquitto's `$7$` PBKDF2-SHA512 form, as mosquitto_passwd writes it."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    if len(salt) != SALT_BYTES:
        raise ValueError(f"Mosquitto needs a {SALT_BYTES}-byte salt, got {len(salt)}")
    if iterations < 1:
        raise ValueError(f"iterations must be 1 or more, got {iterations}")
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, KEY_BYTES)
    return f"$7${iterations}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether `password` matches a `$7$` hash, as the broker decides at CONNECT."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != "7" or not parts[2].isdigit():
        raise ValueError(f"not a Mosquitto $7$ password hash: {encoded[:12]!r}...")
    salt, key = base64.b64decode(parts[3], validate=True), base64.b64decode(parts[4], validate=True)
    if len(salt) != SALT_BYTES or len(key) != KEY_BYTES:
        raise ValueError("a Mosquitto $7$ hash has a 12-byte salt and a 64-byte key")
    computed = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]), KEY_BYTES)
    return hmac.compare_digest(computed, key)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_HEADER = (
    "# Written by FleetPulse from its database (fleetpulse devices ...); edits here are\n"
    "# overwritten. Change accounts with `fleetpulse devices add|rotate|revoke`.\n"
)


def render_password_file(accounts: Iterable[Account]) -> str:
    lines = [_HEADER]
    for account in _sorted(accounts):
        if not account.password_hash.startswith("$7$") or any(
            c in account.password_hash for c in ":\n\r"
        ):
            raise ValueError(f"{account.username}: not a Mosquitto $7$ password hash")
        lines.append(f"{account.username}:{account.password_hash}\n")
    return "".join(lines)


def render_acl_file(accounts: Iterable[Account]) -> str:
    blocks = [_HEADER]
    for account in _sorted(accounts):
        lines = [f"\nuser {account.username}\n"]
        for grant in account.grants:
            if not grant.topic or _TOPIC_FORBIDDEN.search(grant.topic):
                raise ValueError(f"{account.username}: unsafe ACL topic {grant.topic!r}")
            lines.append(f"topic {grant.access.value} {grant.topic}\n")
        blocks.append("".join(lines))
    return "".join(blocks)


def _sorted(accounts: Iterable[Account]) -> list[Account]:
    ordered = sorted(accounts, key=lambda a: a.username)
    seen: set[str] = set()
    for account in ordered:
        if not _USERNAME.fullmatch(account.username):
            raise ValueError(f"unsafe broker username {account.username!r}")
        if account.username in seen:
            raise ValueError(f"two accounts named {account.username!r}")
        seen.add(account.username)
    return ordered
