"""Broker accounts through Mosquitto's dynamic security plugin
(FLEETPULSE_MQTT_AUTH_BACKEND=dynsec): the alternative to the password and ACL files.

The plugin keeps clients, roles and ACLs in its own JSON file and changes them at run
time through commands on `$CONTROL/dynamic-security/v1`, answered on `.../response`:
no reload, and a device's SUBSCRIBE outside its rights is refused (see
`mqtt.dynsec_state` for the rules). As with the files, PostgreSQL is the record: every
change first reads the broker's state (listClients, listRoles, getDefaultACLAccess), then
sends what differs from the database and checks each answer, under the same advisory
lock as the files backend, so two commands at once cannot interleave.

FleetPulse logs in as the plugin's administrator (FLEETPULSE_MQTT_ADMIN_URL), a separate
account from the ingesters': the ingesters' URL must not carry the right to create
accounts. A broker that is not running gets its file written instead
(`write_initial_config`, for a new or restored broker), with the database's own hashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import ssl
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from fleetpulse import device_credentials
from fleetpulse.database import Conn
from fleetpulse.device_credentials import BrokerSync, BrokerSyncError, CredentialError
from fleetpulse.settings import Settings, mask_url
from mqtt import credentials, dynsec_state
from mqtt.client import Endpoint
from mqtt.credentials import ServiceRole
from mqtt.dynsec_state import BadAnswer, BrokerState, Member, UnsafeTopic
from mqtt.topics import TopicScheme

RESPONSE_TIMEOUT_S = 30.0
# The plugin rewrites its whole file after each change, so a message of many commands
# takes a while; this keeps each well inside the timeout and the broker's packet limit.
COMMANDS_PER_MESSAGE = 100
LIST_PAGE = 1000
_SHOWN_NAMES = 10


async def members(conn: Conn, scheme: TopicScheme) -> list[Member]:
    """Every active account of `mqtt_accounts`, with the grants `mqtt.credentials` gives it."""
    found = []
    for row in await device_credentials.active_rows(conn):
        if row.role == device_credentials.DEVICE_ROLE and row.device_id is not None:
            member = dynsec_state.device_member(
                row.device_id, row.username, row.password_hash, scheme
            )
        else:
            member = dynsec_state.service_member(
                row.username, ServiceRole(row.role), row.password_hash, scheme
            )
        found.append(member)
    return found


async def sync_broker(
    conn: Conn, settings: Settings, passwords: Mapping[str, str] | None = None
) -> BrokerSync:
    """Make the broker hold exactly the database's active accounts. `passwords` are the
    new ones in clear (by username) of the change being made: the only way a password
    reaches the plugin. Raises BrokerSyncError when the broker could not be brought there,
    after doing what it could."""
    admin = administrator(settings)
    scheme = TopicScheme(settings.topic_prefix, settings.owntracks_prefix)
    async with device_credentials.accounts_lock(conn):
        try:
            wanted = await members(conn, scheme)
        except UnsafeTopic as exc:
            raise BrokerSyncError(str(exc)) from None
        try:
            async with Control(admin.endpoint) as control:
                state = await control.read_state()
                todo = dynsec_state.plan(wanted, state, passwords or {}, admin=admin.username)
                errors = await control.apply(todo.commands)
        except (aiomqtt.MqttError, OSError, BadAnswer, ValueError) as exc:
            raise BrokerSyncError(
                f"the dynamic security plugin at {mask_url(settings.mqtt_admin_url)} was not"
                f" updated: {exc}; the database holds the change"
            ) from None
    problems = []
    if errors:
        problems.append(
            f"the dynamic security plugin refused {len(errors)} of {len(todo.commands)}"
            f" commands: {'; '.join(errors[:_SHOWN_NAMES])}"
        )
    if todo.stranded:
        problems.append(
            f"the broker has no valid password for {_names(todo.stranded)}: FleetPulse keeps"
            " only hashes and the plugin takes passwords in clear. `fleetpulse devices rotate"
            " NAME` gives each a new one (or, with the broker stopped, `fleetpulse devices"
            " dynsec-init --replace FILE` writes its file from the database)"
        )
    if problems:
        raise BrokerSyncError("; and ".join(problems))
    return BrokerSync(len(wanted), f"dynamic security plugin: {todo.summary()}")


def _names(usernames: Sequence[str]) -> str:
    shown = ", ".join(usernames[:_SHOWN_NAMES])
    more = len(usernames) - _SHOWN_NAMES
    return f"{len(usernames)} accounts ({shown}{f' and {more} more' if more > 0 else ''})"


@dataclass(frozen=True)
class Admin:
    endpoint: Endpoint
    username: str
    password: str


def administrator(settings: Settings) -> Admin:
    if not settings.mqtt_admin_url:
        raise BrokerSyncError(
            "FLEETPULSE_MQTT_ADMIN_URL is not set: the dynamic security plugin is driven as"
            " its administrator, mqtt://user:password@host:port (docs/device-security.md)"
        )
    endpoint = Endpoint.from_url(settings.mqtt_admin_url)
    if not endpoint.username or not endpoint.password:
        raise BrokerSyncError(
            f"FLEETPULSE_MQTT_ADMIN_URL {mask_url(settings.mqtt_admin_url)!r} names no user"
            " and password: the plugin's administrator logs in with both"
        )
    return Admin(endpoint, endpoint.username, endpoint.password)


async def write_initial_config(
    conn: Conn, settings: Settings, path: Path, *, replace: bool = False
) -> int:
    """The plugin's file for a broker that is not running: the administrator of
    FLEETPULSE_MQTT_ADMIN_URL and every active account, with the database's hashes (so
    every issued password works at once). Returns the number of accounts. The running
    plugin rewrites this file after each change and reads it only when it starts: write
    it while the broker is stopped."""
    admin = administrator(settings)
    if not replace and await asyncio.to_thread(path.exists):
        raise CredentialError(
            f"{path} exists: it is the broker's own record once it runs. Stop the broker"
            " and add --replace to write it again from the database"
        )
    scheme = TopicScheme(settings.topic_prefix, settings.owntracks_prefix)
    async with device_credentials.accounts_lock(conn):
        try:
            wanted = await members(conn, scheme)
            document = dynsec_state.initial_config(
                admin.username, credentials.hash_password(admin.password), wanted
            )
        except ValueError as exc:
            raise CredentialError(str(exc)) from None
        try:
            await asyncio.to_thread(
                device_credentials.write_files, [(path, json.dumps(document, indent=1) + "\n")]
            )
        except OSError as exc:
            raise CredentialError(f"{path} was not written: {exc}") from None
    return len(wanted)


class Control:
    """One administrator's connection to the plugin: commands out, answers matched to
    them by correlation data (the plugin answers every administrator on one topic)."""

    def __init__(self, endpoint: Endpoint, timeout_s: float = RESPONSE_TIMEOUT_S) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._tag = uuid.uuid4().hex
        self._numbers = itertools.count()
        self._client = aiomqtt.Client(
            hostname=endpoint.host,
            port=endpoint.port,
            username=endpoint.username,
            password=endpoint.password,
            identifier=f"fleetpulse-dynsec-{self._tag[:12]}",
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=timeout_s,
            tls_context=ssl.create_default_context() if endpoint.tls else None,
        )

    async def __aenter__(self) -> Self:
        await self._client.__aenter__()
        try:
            granted = await self._client.subscribe(dynsec_state.RESPONSE_TOPIC, qos=0)
            if any(_code(g) >= 0x80 for g in granted):
                raise aiomqtt.MqttError(
                    f"{self.endpoint.username} may not subscribe to"
                    f" {dynsec_state.RESPONSE_TOPIC}: its role must allow"
                    " $CONTROL/dynamic-security/#"
                )
        except BaseException:
            await self._client.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(aiomqtt.MqttError):  # already gone: nothing to close
            await self._client.__aexit__(exc_type, exc, tb)

    async def run(self, commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The plugin's answer to each command, in order."""
        tagged = []
        for command in commands:
            tag = f"{self._tag}-{next(self._numbers)}"
            tagged.append((tag, {**command, "correlationData": tag}))
        await self._client.publish(
            dynsec_state.CONTROL_TOPIC,
            json.dumps({"commands": [c for _, c in tagged]}),
            qos=1,
        )
        answers = await self._answers({tag for tag, _ in tagged})
        return [answers[tag] for tag, _ in tagged]

    async def _answers(self, tags: set[str]) -> dict[str, dict[str, Any]]:
        answers: dict[str, dict[str, Any]] = {}
        try:
            async with asyncio.timeout(self.timeout_s):
                async for message in self._client.messages:
                    for response in _responses(message.payload):
                        tag = response.get("correlationData")
                        if tag in tags:
                            answers[tag] = response
                    if len(answers) == len(tags):
                        return answers
        except TimeoutError:
            pass
        raise aiomqtt.MqttError(
            f"no answer to {len(tags) - len(answers)} commands in {self.timeout_s:g} s: is"
            " the dynamic security plugin loaded (`plugin` and `plugin_opt_config_file` in"
            f" the broker's config), and may {self.endpoint.username} publish to"
            f" {dynsec_state.CONTROL_TOPIC}?"
        )

    async def read_state(self) -> BrokerState:
        state = BrokerState()
        (default,) = await self._data([{"command": "getDefaultACLAccess"}])
        state.set_default_access(default)
        for command, add in (("listClients", state.add_clients), ("listRoles", state.add_roles)):
            offset, total = 0, 1
            while offset < total:
                (page,) = await self._data(
                    [{"command": command, "verbose": True, "count": LIST_PAGE, "offset": offset}]
                )
                total = add(page)
                offset += LIST_PAGE
        return state

    async def _data(self, commands: Sequence[dict[str, Any]]) -> list[Any]:
        data = []
        for command, answer in zip(commands, await self.run(commands), strict=True):
            if "error" in answer or "data" not in answer:
                raise BadAnswer(f"{command['command']}: {answer.get('error', 'no data')}")
            data.append(answer["data"])
        return data

    async def apply(self, commands: Sequence[dict[str, Any]]) -> list[str]:
        """Sends the commands in order; returns the plugin's refusals, each naming its
        command and account (never a password)."""
        errors = []
        for start in range(0, len(commands), COMMANDS_PER_MESSAGE):
            chunk = commands[start : start + COMMANDS_PER_MESSAGE]
            for command, answer in zip(chunk, await self.run(chunk), strict=True):
                if "error" in answer:
                    name = command.get("username") or command.get("rolename") or ""
                    errors.append(f"{command['command']} {name}: {answer['error']}".strip())
        return errors


def _code(granted: int | ReasonCode) -> int:
    return granted if isinstance(granted, int) else int(granted.value)


def _responses(payload: Any) -> list[dict[str, Any]]:
    """The answers in one message on the response topic; anything else is not ours."""
    if not isinstance(payload, bytes | bytearray | str):
        return []
    try:
        body = json.loads(payload)
    except ValueError:
        return []
    responses = body.get("responses") if isinstance(body, dict) else None
    if not isinstance(responses, list):
        return []
    return [r for r in responses if isinstance(r, dict)]
