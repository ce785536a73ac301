"""FleetPulse's broker accounts as Mosquitto's dynamic security plugin holds them.

Pure: the roles and clients FleetPulse wants, the commands that take a broker from what
it holds to that (`plan`), and the plugin's config file for a broker that is not running
(`initial_config`). `fleetpulse.dynsec` reads the database, talks to the broker and
checks its answers.

What each account may do comes from `mqtt.credentials` (the same grants the ACL file
gets); the plugin can say more than the ACL file, and this is where that is used:
- A device gets a role of its own: `publishClientSend` on its topics, and for what it
  may read (an OwnTracks phone's command topic) `subscribeLiteral` plus
  `publishClientReceive`. Nothing else is allowed, because the default ACL access is
  deny for sending, receiving and subscribing: a device's SUBSCRIBE to `fleet/#` or to
  the ingesters' `$share/<group>/...` is refused in the SUBACK (0x87), so, unlike with
  the ACL file, a device can never join the ingesters' share group and take messages
  from them.
- The ingest role may subscribe to the device topics as they are and as shared
  subscriptions of any group (`$share/+/...`: the plugin judges the whole filter, group
  included; the ingest accounts are FleetPulse's own processes, so which group they use
  is theirs to choose), and receive them.

The broker keeps only a hash of each password and its API takes passwords in clear, so
FleetPulse can give the broker a password only with the command that issued it. Each
client it manages carries the fingerprint of its database hash in its text description:
a client whose fingerprint is not the database's holds a password the database no
longer accepts (a rotation or re-admission that did not reach the broker), and is
deleted when no new password is at hand (fail closed). Clients without the mark (the
administrator, anything made by hand) are left alone unless the database has an account
of that name; so are roles outside `fleetpulse:`.
"""

from __future__ import annotations

import base64
import binascii
import collections
import enum
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from mqtt import credentials
from mqtt.credentials import Access, Grant, ServiceRole
from mqtt.topics import TopicScheme

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
MANAGED_ROLE_PREFIX = "fleetpulse:"
DEVICE_ROLE_PREFIX = MANAGED_ROLE_PREFIX + "device:"
# The administrator's role when FleetPulse writes the plugin's first config file. Not
# under the managed prefix: `plan` never touches it.
ADMIN_ROLE = "admin"
FINGERPRINT_MARK = "fleetpulse password "
_FINGERPRINT_HEX = 32
_T = TypeVar("_T")

# Nothing that no role allows: sending, receiving and subscribing are refused; leaving a
# subscription one has is not worth refusing.
DEFAULT_ACCESS: Mapping[str, bool] = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}


class AclType(enum.StrEnum):
    PUBLISH_SEND = "publishClientSend"
    PUBLISH_RECEIVE = "publishClientReceive"
    SUBSCRIBE_LITERAL = "subscribeLiteral"
    SUBSCRIBE_PATTERN = "subscribePattern"
    UNSUBSCRIBE_LITERAL = "unsubscribeLiteral"
    UNSUBSCRIBE_PATTERN = "unsubscribePattern"


@dataclass(frozen=True, order=True)
class Acl:
    acltype: str
    topic: str
    allow: bool = True
    priority: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "acltype": self.acltype,
            "topic": self.topic,
            "priority": self.priority,
            "allow": self.allow,
        }


@dataclass(frozen=True)
class Role:
    name: str
    acls: frozenset[Acl]
    text_name: str = ""

    def acls_json(self) -> list[dict[str, Any]]:
        return [acl.to_json() for acl in sorted(self.acls)]


@dataclass(frozen=True)
class Member:
    """One FleetPulse account as a client of the plugin, with the role it holds."""

    username: str
    password_hash: str  # Mosquitto's $7$ form, from the database
    role: Role
    text_name: str

    @property
    def description(self) -> str:
        return FINGERPRINT_MARK + fingerprint(self.password_hash)


class UnsafeTopic(ValueError):
    """A topic the plugin would read as something else."""


def fingerprint(password_hash: str) -> str:
    """Names a database hash without revealing it: a digest of the salted hash."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:_FINGERPRINT_HEX]


def device_role_name(username: str) -> str:
    return DEVICE_ROLE_PREFIX + username


def service_role_name(role: ServiceRole) -> str:
    return MANAGED_ROLE_PREFIX + role.value


def device_member(device_id: str, username: str, password_hash: str, scheme: TopicScheme) -> Member:
    acls: set[Acl] = set()
    for grant in credentials.device_grants(device_id, scheme):
        topic = _checked(grant)
        if grant.access is Access.WRITE:
            acls.add(Acl(AclType.PUBLISH_SEND, topic))
        else:
            # Exactly this topic: a literal grant, so the device cannot widen it.
            acls.add(Acl(AclType.SUBSCRIBE_LITERAL, topic))
            acls.add(Acl(AclType.PUBLISH_RECEIVE, topic))
    role = Role(device_role_name(username), frozenset(acls), f"FleetPulse device {device_id}")
    return Member(username, password_hash, role, f"FleetPulse device {device_id}")


def service_member(
    username: str, service: ServiceRole, password_hash: str, scheme: TopicScheme
) -> Member:
    acls: set[Acl] = set()
    for grant in credentials.service_grants(service, scheme):
        topic = _checked(grant)
        if grant.access is Access.WRITE:
            acls.add(Acl(AclType.PUBLISH_SEND, topic))
            continue
        acls.add(Acl(AclType.SUBSCRIBE_PATTERN, topic))
        acls.add(Acl(AclType.SUBSCRIBE_PATTERN, f"$share/+/{topic}"))
        acls.add(Acl(AclType.PUBLISH_RECEIVE, topic))
    role = Role(service_role_name(service), frozenset(acls), f"FleetPulse {service.value}")
    return Member(username, password_hash, role, f"FleetPulse {service.value} service {username}")


def _checked(grant: Grant) -> str:
    """The plugin puts the client's id and username in place of a level that reads `%c`
    or `%u`: a topic prefix with such a level would grant per-client topics instead."""
    levels = grant.topic.split("/")
    if any(level in ("%c", "%u") for level in levels) or "\x00" in grant.topic:
        raise UnsafeTopic(
            f"the topic {grant.topic!r} has a level the dynamic security plugin replaces"
            " (%c or %u); change FLEETPULSE_TOPIC_PREFIX or FLEETPULSE_OWNTRACKS_PREFIX"
        )
    return grant.topic


# --- what the broker holds, as its listClients / listRoles / getDefaultACLAccess say ---


class _RoleRef(msgspec.Struct):
    rolename: str
    priority: int = -1


class _GroupRef(msgspec.Struct):
    groupname: str
    priority: int = -1


class _Client(msgspec.Struct):
    username: str
    textname: str | None = None
    textdescription: str | None = None
    roles: list[_RoleRef] = msgspec.field(default_factory=list)
    groups: list[_GroupRef] = msgspec.field(default_factory=list)


class _Acl(msgspec.Struct):
    acltype: str
    topic: str
    allow: bool = False
    priority: int = 0


class _Role(msgspec.Struct):
    rolename: str
    acls: list[_Acl] = msgspec.field(default_factory=list)


# Field names are the plugin's.
class _Clients(msgspec.Struct):
    totalCount: int
    clients: list[_Client]


class _Roles(msgspec.Struct):
    totalCount: int
    roles: list[_Role]


class _DefaultAcl(msgspec.Struct):
    acltype: str
    allow: bool


class _DefaultAccess(msgspec.Struct):
    acls: list[_DefaultAcl]


class BadAnswer(ValueError):
    """An answer of the plugin that is not what its API documents."""


@dataclass(frozen=True)
class BrokerClient:
    username: str
    roles: frozenset[str]
    groups: frozenset[str]
    description: str | None

    @property
    def fingerprint(self) -> str | None:
        if self.description is None or not self.description.startswith(FINGERPRINT_MARK):
            return None
        return self.description[len(FINGERPRINT_MARK) :]


@dataclass
class BrokerState:
    clients: dict[str, BrokerClient] = field(default_factory=dict)
    roles: dict[str, frozenset[Acl]] = field(default_factory=dict)
    default_access: dict[str, bool] = field(default_factory=dict)

    def add_clients(self, data: Any) -> int:
        """Adds one listClients page; returns the broker's total count."""
        page = _convert(data, _Clients, "listClients")
        for c in page.clients:
            self.clients[c.username] = BrokerClient(
                c.username,
                frozenset(r.rolename for r in c.roles),
                frozenset(g.groupname for g in c.groups),
                c.textdescription,
            )
        return page.totalCount

    def add_roles(self, data: Any) -> int:
        page = _convert(data, _Roles, "listRoles")
        for r in page.roles:
            self.roles[r.rolename] = frozenset(
                Acl(a.acltype, a.topic, a.allow, a.priority) for a in r.acls
            )
        return page.totalCount

    def set_default_access(self, data: Any) -> None:
        access = _convert(data, _DefaultAccess, "getDefaultACLAccess")
        self.default_access = {a.acltype: a.allow for a in access.acls}


def _convert(data: Any, kind: type[_T], command: str) -> _T:
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise BadAnswer(f"{command}: unexpected answer from the plugin: {exc}") from None


# --- from what the broker holds to what FleetPulse wants ------------------------------


@dataclass
class Plan:
    commands: list[dict[str, Any]]
    # Accounts the broker should let in but cannot, for want of a password in clear.
    stranded: list[str]
    counts: collections.Counter[str]

    def summary(self) -> str:
        if not self.commands:
            return "nothing to change"
        return ", ".join(f"{n} {what}" for what, n in sorted(self.counts.items()))


def plan(
    members: Sequence[Member],
    broker: BrokerState,
    passwords: Mapping[str, str],
    *,
    admin: str,
) -> Plan:
    """The commands, in an order the plugin accepts (roles before the clients that hold
    them, clients gone before their roles), that make the broker hold exactly `members`
    with the managed roles. `passwords` are new ones in clear, by username; `admin` is
    the administrator's username, which no member may have."""
    if any(m.username == admin for m in members):
        raise ValueError(f"the account {admin!r} has the administrator's username")
    commands: list[dict[str, Any]] = []
    stranded: list[str] = []
    counts: collections.Counter[str] = collections.Counter()

    def add(command: dict[str, Any], what: str) -> None:
        commands.append(command)
        counts[what] += 1

    if broker.default_access != DEFAULT_ACCESS:
        add(
            {"command": "setDefaultACLAccess", "acls": default_access_json()},
            "default ACL access set",
        )
    wanted_roles: dict[str, Role] = {}
    for member in members:
        wanted_roles.setdefault(member.role.name, member.role)
    for name, role in sorted(wanted_roles.items()):
        held = broker.roles.get(name)
        if held is None:
            add(_create_role(role), "roles created")
        elif held != role.acls:
            # Replaces every ACL of the role at once; the plugin then disconnects the
            # role's clients, so they reconnect under the new rules.
            add(
                {"command": "modifyRole", "rolename": name, "acls": role.acls_json()}, "roles fixed"
            )

    wanted = {m.username: m for m in members}
    for username, member in sorted(wanted.items()):
        roles = [{"rolename": member.role.name}]
        client = broker.clients.get(username)
        password = passwords.get(username)
        if client is None:
            if password is None:
                stranded.append(username)
                continue
            add(
                {
                    "command": "createClient",
                    "username": username,
                    "password": password,
                    "textname": member.text_name,
                    "textdescription": member.description,
                    "roles": roles,
                },
                "clients created",
            )
        elif client.fingerprint != fingerprint(member.password_hash):
            if password is None:
                # The broker holds a password the database no longer accepts.
                add({"command": "deleteClient", "username": username}, "stale clients deleted")
                stranded.append(username)
                continue
            add(
                {
                    "command": "modifyClient",
                    "username": username,
                    "password": password,
                    "textname": member.text_name,
                    "textdescription": member.description,
                    "roles": roles,
                    "groups": [],
                },
                "passwords set",
            )
        elif client.roles != {member.role.name} or client.groups:
            # A group could bring roles of its own: a managed client is in none.
            add(
                {"command": "modifyClient", "username": username, "roles": roles, "groups": []},
                "client roles fixed",
            )

    for username, client in sorted(broker.clients.items()):
        if username not in wanted and client.fingerprint is not None:
            add({"command": "deleteClient", "username": username}, "clients deleted")
    for name in sorted(broker.roles):
        if name.startswith(MANAGED_ROLE_PREFIX) and name not in wanted_roles:
            add({"command": "deleteRole", "rolename": name}, "roles deleted")
    return Plan(commands, stranded, counts)


def _create_role(role: Role) -> dict[str, Any]:
    return {
        "command": "createRole",
        "rolename": role.name,
        "textname": role.text_name,
        "acls": role.acls_json(),
    }


def default_access_json() -> list[dict[str, Any]]:
    return [{"acltype": name, "allow": allow} for name, allow in DEFAULT_ACCESS.items()]


# --- the plugin's config file, for a broker that is not running -----------------------


def admin_role() -> Role:
    """The administrator may use the control API and nothing else: unlike the role
    `mosquitto_ctrl dynsec init` makes, it cannot read the fleet's messages."""
    topic = CONTROL_TOPIC.rsplit("/", 1)[0] + "/#"
    return Role(
        ADMIN_ROLE,
        frozenset(
            {
                Acl(AclType.PUBLISH_SEND, topic),
                Acl(AclType.PUBLISH_RECEIVE, topic),
                Acl(AclType.SUBSCRIBE_PATTERN, topic),
            }
        ),
        "dynamic security administration",
    )


def initial_config(
    admin_username: str, admin_password_hash: str, members: Iterable[Member]
) -> dict[str, Any]:
    """The plugin's JSON file holding the administrator and every member with the
    database's own hashes: the plugin stores PBKDF2-SHA512 as salt, key and iterations,
    the same three numbers as Mosquitto's `$7$` form."""
    admin = admin_role()
    roles: dict[str, Role] = {admin.name: admin}
    clients = [_client_json(admin_username, admin_password_hash, admin.name, "administrator")]
    for member in sorted(members, key=lambda m: m.username):
        if member.username == admin_username:
            raise ValueError(f"the account {member.username!r} is the administrator's name")
        roles.setdefault(member.role.name, member.role)
        entry = _client_json(member.username, member.password_hash, member.role.name, "")
        entry["textname"] = member.text_name
        entry["textdescription"] = member.description
        clients.append(entry)
    return {
        "defaultACLAccess": dict(DEFAULT_ACCESS),
        "clients": clients,
        "groups": [],
        "roles": [
            {"rolename": r.name, "textname": r.text_name, "acls": r.acls_json()}
            for r in sorted(roles.values(), key=lambda r: r.name)
        ],
    }


def _client_json(username: str, password_hash: str, role: str, text_name: str) -> dict[str, Any]:
    iterations, salt, key = split_hash(password_hash)
    entry: dict[str, Any] = {
        "username": username,
        "password": key,
        "salt": salt,
        "iterations": iterations,
        "roles": [{"rolename": role}],
    }
    if text_name:
        entry["textname"] = text_name
    return entry


def split_hash(password_hash: str) -> tuple[int, str, str]:
    """`$7$<iterations>$<salt>$<key>` as (iterations, salt, key), base64 kept."""
    parts = password_hash.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != "7" or not parts[2].isdigit():
        raise ValueError(f"not a Mosquitto $7$ password hash: {password_hash[:12]!r}...")
    try:
        salt = base64.b64decode(parts[3], validate=True)
        key = base64.b64decode(parts[4], validate=True)
    except binascii.Error:
        raise ValueError("a $7$ hash's salt and key are standard base64") from None
    if len(salt) != credentials.SALT_BYTES or len(key) != credentials.KEY_BYTES:
        raise ValueError("a Mosquitto $7$ hash has a 12-byte salt and a 64-byte key")
    if int(parts[2]) < 1:
        raise ValueError("a $7$ hash has 1 iteration or more")
    return int(parts[2]), parts[3], parts[4]
