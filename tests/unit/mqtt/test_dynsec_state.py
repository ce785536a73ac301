"""mqtt.dynsec_state: FleetPulse's accounts as the dynamic security plugin's roles and
clients, the commands that bring a broker there, and the plugin's config file."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest

from mqtt import credentials, dynsec_state
from mqtt.credentials import ServiceRole
from mqtt.dynsec_state import Acl, AclType, BadAnswer, BrokerState, Member
from mqtt.topics import TopicScheme

SCHEME = TopicScheme()
DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "mosquitto"
ADMIN = "admin"
# The client `mosquitto_ctrl dynsec init file admin s3cret` wrote (Mosquitto 2.0.11).
CTRL_INIT_CLIENT = {
    "username": "admin",
    "password": "kl7dN732wZFEsGjd3tgfxv90b4wdQKoQrQkaYbKS0+zzZjRNQdiQ1bvHr0BG17QwG75qzx2aMD/"
    "FIxatdScplA==",
    "salt": "699bMgcLDUaru3Z5",
    "iterations": 101,
}


def _hash(password: str = "pw") -> str:
    return credentials.hash_password(password)


def _device(device_id: str = "van-a", password_hash: str | None = None) -> Member:
    username = credentials.device_username(device_id)
    return dynsec_state.device_member(device_id, username, password_hash or _hash(), SCHEME)


def _service(name: str = "ingest-1", password_hash: str | None = None) -> Member:
    return dynsec_state.service_member(name, ServiceRole.INGEST, password_hash or _hash(), SCHEME)


def _held(members: list[Member], **extra_clients: Any) -> BrokerState:
    """A broker holding exactly what `plan` aims at, plus an administrator."""
    state = BrokerState(default_access=dict(dynsec_state.DEFAULT_ACCESS))
    state.add_roles(
        {
            "totalCount": 0,
            "roles": [{"rolename": ADMIN, "acls": []}]
            + [{"rolename": m.role.name, "acls": m.role.acls_json()} for m in members],
        }
    )
    clients = [{"username": ADMIN, "roles": [{"rolename": ADMIN}]}] + [
        {
            "username": m.username,
            "textdescription": m.description,
            "roles": [{"rolename": m.role.name}],
        }
        for m in members
    ]
    clients += [{"username": name, **fields} for name, fields in extra_clients.items()]
    state.add_clients({"totalCount": len(clients), "clients": clients})
    return state


def _commands(plan: dynsec_state.Plan) -> list[tuple[str, str]]:
    return [(c["command"], c.get("username") or c.get("rolename") or "") for c in plan.commands]


# --- roles ---------------------------------------------------------------------------


def test_a_device_may_publish_on_its_own_topics_and_nothing_else() -> None:
    member = _device("van-a")
    assert member.role.name == "fleetpulse:device:van-a"
    assert member.role.acls == {
        Acl(AclType.PUBLISH_SEND, "fleet/van-a/telemetry"),
        Acl(AclType.PUBLISH_SEND, "fleet/van-a/status"),
        Acl(AclType.PUBLISH_SEND, "fleet/van-a/delivery"),
    }


def test_an_owntracks_phone_reads_exactly_its_command_topic() -> None:
    member = _device("alice:phone")
    assert member.username == "alice@phone"
    assert member.role.name == "fleetpulse:device:alice@phone"
    reading = {a for a in member.role.acls if a.acltype != AclType.PUBLISH_SEND}
    assert reading == {
        Acl(AclType.SUBSCRIBE_LITERAL, "owntracks/alice/phone/cmd"),
        Acl(AclType.PUBLISH_RECEIVE, "owntracks/alice/phone/cmd"),
    }


def test_the_ingest_role_reads_the_device_topics_plainly_or_shared() -> None:
    role = _service().role
    assert role.name == "fleetpulse:ingest"
    patterns = {a.topic for a in role.acls if a.acltype == AclType.SUBSCRIBE_PATTERN}
    assert patterns == set(SCHEME.filters()) | {f"$share/+/{f}" for f in SCHEME.filters()}
    received = {a.topic for a in role.acls if a.acltype == AclType.PUBLISH_RECEIVE}
    assert received == set(SCHEME.filters())
    assert not any(a.acltype == AclType.PUBLISH_SEND for a in role.acls)
    assert all(a.allow for a in role.acls)


@pytest.mark.parametrize("prefix", ["%u", "a/%c", "fleet/%u/x"])
def test_a_prefix_the_plugin_would_substitute_is_refused(prefix: str) -> None:
    scheme = TopicScheme(prefix=prefix)
    with pytest.raises(dynsec_state.UnsafeTopic, match="FLEETPULSE_TOPIC_PREFIX"):
        dynsec_state.device_member("van-a", "van-a", _hash(), scheme)
    with pytest.raises(dynsec_state.UnsafeTopic):
        dynsec_state.service_member("i", ServiceRole.INGEST, _hash(), scheme)


def test_a_level_merely_containing_percent_is_kept() -> None:
    member = dynsec_state.device_member("van-a", "van-a", _hash(), TopicScheme(prefix="f%u1"))
    assert Acl(AclType.PUBLISH_SEND, "f%u1/van-a/telemetry") in member.role.acls


def test_the_fingerprint_names_the_hash_without_giving_it() -> None:
    one, two = _hash("pw"), _hash("pw")
    assert dynsec_state.fingerprint(one) != dynsec_state.fingerprint(two)  # salted
    assert dynsec_state.fingerprint(one) == dynsec_state.fingerprint(one)
    assert one.split("$")[4][:8] not in _device(password_hash=one).description


# --- plans ---------------------------------------------------------------------------


def test_an_empty_broker_gets_defaults_roles_then_clients() -> None:
    van, ingest = _device(), _service()
    broker = BrokerState()
    plan = dynsec_state.plan([van, ingest], broker, {"van-a": "p1", "ingest-1": "p2"}, admin=ADMIN)
    assert _commands(plan) == [
        ("setDefaultACLAccess", ""),
        ("createRole", "fleetpulse:device:van-a"),
        ("createRole", "fleetpulse:ingest"),
        ("createClient", "ingest-1"),
        ("createClient", "van-a"),
    ]
    create = plan.commands[-1]
    assert create["password"] == "p1"
    assert create["roles"] == [{"rolename": "fleetpulse:device:van-a"}]
    assert create["textdescription"] == van.description
    assert plan.stranded == []
    default = {a["acltype"]: a["allow"] for a in plan.commands[0]["acls"]}
    assert default == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }


def test_a_broker_that_holds_everything_gets_nothing() -> None:
    members = [_device("van-a"), _device("alice:phone"), _service("ingest-1")]
    plan = dynsec_state.plan(members, _held(members), {}, admin=ADMIN)
    assert plan.commands == [] and plan.stranded == []
    assert plan.summary() == "nothing to change"


def test_many_devices_share_the_ingest_role_once() -> None:
    members = [_service("ingest-1"), _service("ingest-2")]
    plan = dynsec_state.plan(
        members, BrokerState(), {"ingest-1": "a", "ingest-2": "b"}, admin=ADMIN
    )
    assert [n for c, n in _commands(plan) if c == "createRole"] == ["fleetpulse:ingest"]


def test_a_new_account_without_its_password_is_stranded() -> None:
    plan = dynsec_state.plan([_device()], BrokerState(), {}, admin=ADMIN)
    assert plan.stranded == ["van-a"]
    assert ("createClient", "van-a") not in _commands(plan)


def test_a_new_password_is_set_with_its_fingerprint() -> None:
    old = _device(password_hash=_hash("old"))
    new = _device(password_hash=_hash("new"))
    plan = dynsec_state.plan([new], _held([old]), {"van-a": "new"}, admin=ADMIN)
    assert _commands(plan) == [("modifyClient", "van-a")]
    (modify,) = plan.commands
    assert modify["password"] == "new" and modify["textdescription"] == new.description
    assert modify["groups"] == [] and plan.counts == {"passwords set": 1}


def test_a_password_the_database_replaced_is_deleted_when_the_new_one_is_unknown() -> None:
    old = _device(password_hash=_hash("old"))
    new = _device(password_hash=_hash("new"))
    plan = dynsec_state.plan([new], _held([old]), {}, admin=ADMIN)
    assert _commands(plan) == [("deleteClient", "van-a")]
    assert plan.stranded == ["van-a"]


def test_extra_roles_and_groups_are_taken_away() -> None:
    van = _device()
    broker = _held([van])
    broker.add_clients(
        {
            "totalCount": 2,
            "clients": [
                {
                    "username": "van-a",
                    "textdescription": van.description,
                    "roles": [{"rolename": van.role.name}, {"rolename": ADMIN}],
                    "groups": [{"groupname": "everyone"}],
                }
            ],
        }
    )
    plan = dynsec_state.plan([van], broker, {}, admin=ADMIN)
    assert plan.commands == [
        {
            "command": "modifyClient",
            "username": "van-a",
            "roles": [{"rolename": van.role.name}],
            "groups": [],
        }
    ]


def test_a_changed_role_is_replaced_whole() -> None:
    van = _device()
    broker = _held([van])
    broker.roles[van.role.name] = frozenset({Acl(AclType.SUBSCRIBE_PATTERN, "#")})
    plan = dynsec_state.plan([van], broker, {}, admin=ADMIN)
    assert plan.commands == [
        {"command": "modifyRole", "rolename": van.role.name, "acls": van.role.acls_json()}
    ]


def test_revoked_accounts_go_and_what_is_not_fleetpulses_stays() -> None:
    van, gone = _device("van-a"), _device("van-b")
    broker = _held([van, gone], **{"by-hand": {"roles": [{"rolename": "custom"}]}})
    broker.roles["custom"] = frozenset()
    plan = dynsec_state.plan([van], broker, {}, admin=ADMIN)
    assert _commands(plan) == [
        ("deleteClient", "van-b"),
        ("deleteRole", "fleetpulse:device:van-b"),
    ]
    assert plan.summary() == "1 clients deleted, 1 roles deleted"


def test_an_account_named_like_the_administrator_is_refused() -> None:
    with pytest.raises(ValueError, match="administrator"):
        dynsec_state.plan([_service(ADMIN)], _held([]), {ADMIN: "x"}, admin=ADMIN)


# --- what the broker answers ---------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        {},
        {"totalCount": 1},
        {"totalCount": 1, "clients": [{"roles": []}]},
        {"totalCount": 1, "clients": [{"username": 7}]},
        {"totalCount": 1, "clients": [{"username": "a", "roles": "admin"}]},
    ],
)
def test_an_unexpected_client_list_is_refused(answer: dict[str, Any]) -> None:
    with pytest.raises(BadAnswer, match="listClients"):
        BrokerState().add_clients(answer)


def test_an_unexpected_role_list_or_default_access_is_refused() -> None:
    with pytest.raises(BadAnswer, match="listRoles"):
        BrokerState().add_roles({"totalCount": 1, "roles": [{"acls": []}]})
    with pytest.raises(BadAnswer, match="getDefaultACLAccess"):
        BrokerState().set_default_access({"acls": [{"acltype": "subscribe"}]})


def test_the_plugins_own_listing_is_read() -> None:
    state = BrokerState()
    total = state.add_clients(
        {
            "totalCount": 3,
            "clients": [
                {
                    "username": "admin",
                    "textname": "Dynsec admin user",
                    "roles": [{"rolename": "admin"}],
                    "groups": [],
                }
            ],
        }
    )
    assert total == 3
    assert state.clients["admin"].roles == {"admin"}
    assert state.clients["admin"].fingerprint is None


# --- the plugin's config file --------------------------------------------------------


def test_the_plugins_stored_hash_is_mosquittos_7_form() -> None:
    """What `mosquitto_ctrl dynsec init` stored, read as a `$7$` hash, verifies."""
    c = CTRL_INIT_CLIENT
    as_7 = f"$7${c['iterations']}${c['salt']}${c['password']}"
    assert credentials.verify_password("s3cret", as_7)
    assert dynsec_state.split_hash(as_7) == (101, c["salt"], c["password"])


def test_the_initial_config_holds_the_databases_hashes() -> None:
    van_hash, admin_hash = _hash("van-pw"), _hash("admin-pw")
    van, ingest = _device(password_hash=van_hash), _service()
    document = dynsec_state.initial_config(ADMIN, admin_hash, [van, ingest])
    assert document["defaultACLAccess"] == dynsec_state.DEFAULT_ACCESS
    clients = {c["username"]: c for c in document["clients"]}
    assert set(clients) == {ADMIN, "van-a", "ingest-1"}
    stored = clients["van-a"]
    key = hashlib.pbkdf2_hmac(
        "sha512", b"van-pw", base64.b64decode(stored["salt"]), stored["iterations"], 64
    )
    assert base64.b64encode(key).decode() == stored["password"]
    assert stored["textdescription"] == van.description
    assert stored["roles"] == [{"rolename": van.role.name}]
    roles = {r["rolename"]: r for r in document["roles"]}
    assert set(roles) == {ADMIN, van.role.name, ingest.role.name}
    assert clients[ADMIN]["roles"] == [{"rolename": ADMIN}]
    assert "textdescription" not in clients[ADMIN]  # not one of FleetPulse's accounts


def test_the_initial_config_agrees_with_the_plan() -> None:
    """Read back as the plugin would list it, the file's state needs no command."""
    members = [_device("van-a"), _service("ingest-1")]
    document = dynsec_state.initial_config(ADMIN, _hash(), members)
    state = BrokerState(
        default_access=dict(document["defaultACLAccess"]),
    )
    state.add_roles({"totalCount": 0, "roles": document["roles"]})
    state.add_clients({"totalCount": 0, "clients": document["clients"]})
    assert dynsec_state.plan(members, state, {}, admin=ADMIN).commands == []


def test_the_administrator_uses_the_control_api_and_reads_nothing_else() -> None:
    topics = {a.topic for a in dynsec_state.admin_role().acls}
    assert topics == {"$CONTROL/dynamic-security/#"}


def test_the_initial_config_refuses_an_account_named_like_the_administrator() -> None:
    with pytest.raises(ValueError, match="administrator"):
        dynsec_state.initial_config(ADMIN, _hash(), [_service(ADMIN)])


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "$6$101$AAAA$BBBB",
        "$7$x$AAAAAAAAAAAAAAAA$" + "A" * 86 + "==",
        "$7$0$" + base64.b64encode(b"s" * 12).decode() + "$" + base64.b64encode(b"k" * 64).decode(),
        "$7$101$"
        + base64.b64encode(b"s" * 11).decode()
        + "$"
        + base64.b64encode(b"k" * 64).decode(),
        "$7$101$!!!!$" + base64.b64encode(b"k" * 64).decode(),
    ],
)
def test_a_malformed_hash_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        dynsec_state.split_hash(bad)


# --- the broker configuration --------------------------------------------------------


def _directives(name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (DEPLOY / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            found.setdefault(key, []).append(value)
    return found


def test_the_dynsec_config_keeps_the_tested_configs_limits() -> None:
    tested, dynsec = _directives("mosquitto.conf"), _directives("mosquitto-dynsec.conf")
    for key, values in tested.items():
        if key not in ("listener", "allow_anonymous"):
            assert dynsec.get(key) == values, key


def test_the_dynsec_config_leaves_accounts_to_the_plugin() -> None:
    dynsec, secure = _directives("mosquitto-dynsec.conf"), _directives("mosquitto-secure.conf")
    assert dynsec["allow_anonymous"] == ["false"]
    assert dynsec["per_listener_settings"] == ["false"]
    assert [p.rsplit("/", 1)[1] for p in dynsec["plugin"]] == ["mosquitto_dynamic_security.so"]
    assert len(dynsec["plugin_opt_config_file"]) == 1
    assert "password_file" not in dynsec and "acl_file" not in dynsec
    for key in ("listener", "use_username_as_clientid", "certfile", "keyfile", "tls_version"):
        assert dynsec[key] == secure[key], key
