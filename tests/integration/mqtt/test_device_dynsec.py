"""Device credentials through Mosquitto's dynamic security plugin, against a real
Mosquitto started from deploy/mosquitto/mosquitto-dynsec.conf: the accounts reach the
broker as `fleetpulse devices` sends them on $CONTROL/dynamic-security/v1.

What the ACL file could not do is checked here: a device's SUBSCRIBE outside its rights
is refused in the SUBACK, so it cannot join the ingesters' share group, even under the
default, guessable group name, and the ingesters get every message.

"Never received" is shown without waiting, as in test_device_acl: after the forbidden
message a permitted one goes the same way, and MQTT keeps one connection's messages in
order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from fleetpulse import cli, device_credentials, dynsec
from fleetpulse.database import Conn, connect
from fleetpulse.local_servers import Mosquitto
from fleetpulse.settings import Settings
from mqtt import credentials, dynsec_state
from mqtt.client import Endpoint, Subscription, SubscriptionRefused
from mqtt.credentials import ServiceRole
from mqtt.dynsec_state import BrokerState
from mqtt.topics import TopicScheme
from tests.conftest import WAIT_TIMEOUT_S, eventually, make_settings, running_ingester
from tests.integration.mqtt.test_device_acl import Probe, TlsMosquitto

GRANTED_QOS1 = 1
NOT_AUTHORIZED = 0x87
REFUSED_LOGIN = {0x86, NOT_AUTHORIZED}
SCHEME = TopicScheme()
ADMIN = "fleetpulse-admin"


class DynsecMosquitto(TlsMosquitto):
    """The dynamic-security broker: the plugin's file in its data directory."""

    config_name = "mosquitto/mosquitto-dynsec.conf"

    @property
    def plugin_file(self) -> Path:
        return self.data_dir / "dynamic-security.json"

    def files(self) -> dict[str, Path]:
        return {**super().files(), "plugin_opt_config_file": self.plugin_file}

    def render(self, template: str) -> str:
        text = super().render(template)
        plugin = re.search(r"(?m)^plugin\s+(\S+)$", text)
        assert plugin is not None, "the dynsec config loads no plugin"
        if not Path(plugin.group(1)).exists():
            pytest.fail(f"{plugin.group(1)} is missing: install Debian's mosquitto package")
        return text


@dataclasses.dataclass
class Dynsec:
    broker: DynsecMosquitto
    settings: Settings  # backend dynsec, the administrator's URL
    conn: Conn
    probes: list[Probe] = dataclasses.field(default_factory=list)

    async def start(self) -> None:
        """The plugin's first file from the database, then the broker."""
        await dynsec.write_initial_config(self.conn, self.settings, self.broker.plugin_file)
        self.broker.start()

    async def sync(self, issued: device_credentials.Issued | None = None) -> str:
        synced = await device_credentials.sync_broker(self.conn, self.settings, issued)
        return synced.reload

    async def device(self, device_id: str) -> device_credentials.Issued:
        issued = await device_credentials.add_device(self.conn, device_id)
        await self.sync(issued)
        return issued

    async def service(self, name: str) -> device_credentials.Issued:
        issued = await device_credentials.add_service_account(self.conn, name, ServiceRole.INGEST)
        await self.sync(issued)
        return issued

    def login(self, issued: device_credentials.Issued, **kwargs: Any) -> Probe:
        probe = self.probe(issued.username, issued.password, **kwargs)
        assert probe.connect() == 0
        return probe

    def probe(self, username: str | None, password: str | None, **kwargs: Any) -> Probe:
        port = self.broker.tls_port if kwargs.get("ca") else self.broker.port
        probe = Probe(port, username, password, **kwargs)
        self.probes.append(probe)
        return probe

    def ingester(self, issued: device_credentials.Issued, group: str = "ingest") -> Probe:
        probe = self.login(issued)
        for topic_filter in SCHEME.shared_filters(group):
            assert probe.subscribe(topic_filter) == [GRANTED_QOS1], topic_filter
        return probe

    def control(self) -> dynsec.Control:
        return dynsec.Control(Endpoint.from_url(self.settings.mqtt_admin_url))

    async def broker_state(self) -> BrokerState:
        async with self.control() as control:
            return await control.read_state()


def _settings(database_url: str, broker: DynsecMosquitto, admin_password: str) -> Settings:
    return make_settings(
        database_url=database_url,
        mqtt_url=broker.url,
        mqtt_auth_backend="dynsec",
        mqtt_admin_url=f"mqtt://{ADMIN}:{admin_password}@127.0.0.1:{broker.port}",
    )


@pytest.fixture
async def plugin(database_url: str) -> AsyncIterator[Dynsec]:
    broker = DynsecMosquitto()
    conn = await connect(database_url)
    state = Dynsec(broker, _settings(database_url, broker, credentials.new_password()), conn)
    try:
        yield state
    finally:
        for probe in state.probes:
            probe.close()
        await conn.close()
        broker.__exit__(None, None, None)


async def arrived(probe: Probe, count: int) -> list[tuple[str, bytes]]:
    await eventually(lambda: len(probe.messages) >= count)
    return list(probe.messages)


async def test_a_device_publishes_on_its_own_topics_and_the_ingester_receives(
    plugin: Dynsec,
) -> None:
    await plugin.start()
    ingest = await plugin.service("ingest-1")
    van = await plugin.device("van-a")
    ingester = plugin.ingester(ingest)
    device = plugin.login(van)
    assert device.publish("fleet/van-a/telemetry", "fix") == 0
    assert device.publish("fleet/van-a/status", "online", retain=True) == 0
    assert device.publish("fleet/van-a/delivery", "report") == 0
    assert await arrived(ingester, 3) == [
        ("fleet/van-a/telemetry", b"fix"),
        ("fleet/van-a/status", b"online"),
        ("fleet/van-a/delivery", b"report"),
    ]


async def test_a_device_cannot_publish_as_another_device(plugin: Dynsec) -> None:
    await plugin.start()
    ingest = await plugin.service("ingest-1")
    van_a = await plugin.device("van-a")
    await plugin.device("van-b")
    ingester = plugin.ingester(ingest)
    device = plugin.login(van_a)
    assert device.publish("fleet/van-b/telemetry", "spoof-1") == NOT_AUTHORIZED
    assert device.publish("fleet/van-b/status", "offline", retain=True) == NOT_AUTHORIZED
    assert device.publish("fleet/van-b/telemetry", "spoof-0", qos=0) == 0
    assert device.publish("fleet/van-a/../van-b/telemetry", "spoof-2") == NOT_AUTHORIZED
    assert device.publish("other/topic", "spoof-3") == NOT_AUTHORIZED
    assert device.publish("$CONTROL/dynamic-security/v1", "{}") == NOT_AUTHORIZED
    assert device.publish("fleet/van-a/telemetry", "own") == 0
    assert await arrived(ingester, 1) == [("fleet/van-a/telemetry", b"own")]
    assert not device.disconnected.is_set(), "a refused publish need not end the session"


async def test_a_device_subscription_to_the_fleet_is_refused(plugin: Dynsec) -> None:
    await plugin.start()
    ingest = await plugin.service("ingest-1")
    van_a, van_b = await plugin.device("van-a"), await plugin.device("van-b")
    ingester = plugin.ingester(ingest)
    other = plugin.login(van_b)
    assert other.publish("fleet/van-b/status", "online", retain=True) == 0
    device = plugin.login(van_a)
    for topic_filter in (
        "fleet/#",
        "#",
        "fleet/+/telemetry",
        "fleet/van-b/telemetry",
        "fleet/van-a/telemetry",  # not even its own: a device reads nothing
        "$share/ingest/fleet/+/telemetry",
        "$share/mine/fleet/+/status",
        "owntracks/#",
        "$SYS/#",
        "$CONTROL/dynamic-security/#",
    ):
        assert device.subscribe(topic_filter) == [NOT_AUTHORIZED], topic_filter
    assert other.publish("fleet/van-b/telemetry", "b's fix") == 0
    assert await arrived(ingester, 2) == [
        ("fleet/van-b/status", b"online"),
        ("fleet/van-b/telemetry", b"b's fix"),
    ]
    assert device.publish("fleet/van-a/telemetry", "barrier") == 0
    assert device.messages == []


async def test_a_device_cannot_join_the_ingesters_share_group(plugin: Dynsec) -> None:
    """The ACL file's gap, closed: with it, a device in the ingesters' group is dealt
    some of the fleet's messages, which the broker then drops (half of them, with one
    ingester). Here the group keeps its default, guessable name, the device's
    subscriptions to it are refused, and the ingester gets every message."""
    await plugin.start()
    ingest = await plugin.service("ingest-1")
    van_a, van_b = await plugin.device("van-a"), await plugin.device("van-b")
    ingester = plugin.ingester(ingest, group="ingest")
    device = plugin.login(van_a)
    for topic_filter in SCHEME.shared_filters("ingest"):
        assert device.subscribe(topic_filter) == [NOT_AUTHORIZED], topic_filter
    other = plugin.login(van_b)
    sent = [str(i).encode() for i in range(40)]
    for payload in sent:
        assert other.publish("fleet/van-b/telemetry", payload) == 0
    assert [p for _, p in await arrived(ingester, len(sent))] == sent
    assert device.publish("fleet/van-a/telemetry", "barrier") == 0
    assert await arrived(ingester, len(sent) + 1)
    assert device.messages == []


async def test_an_ingester_may_subscribe_plainly_or_in_any_group(plugin: Dynsec) -> None:
    await plugin.start()
    ingest = await plugin.service("ingest-1")
    ingester = plugin.login(ingest)
    for topic_filter in [*SCHEME.filters(), *SCHEME.shared_filters("ingest-7f3a")]:
        assert ingester.subscribe(topic_filter) == [GRANTED_QOS1], topic_filter
    for topic_filter in ("#", "other/#", "$SYS/#", "$share/ingest/#"):
        assert ingester.subscribe(topic_filter) == [NOT_AUTHORIZED], topic_filter
    assert ingester.publish("fleet/van-a/telemetry", "forged") == NOT_AUTHORIZED


async def test_an_ingester_with_a_devices_account_fails_loudly(plugin: Dynsec) -> None:
    """A refused subscription must not leave an ingester idling as if all were well."""
    await plugin.start()
    van = await plugin.device("van-a")
    url = f"mqtt://{van.username}:{van.password}@127.0.0.1:{plugin.broker.port}"
    subscription = Subscription(
        url, van.username, SCHEME.shared_filters("ingest"), 100, timedelta(minutes=1)
    )
    with pytest.raises(SubscriptionRefused, match="refused the subscription"):
        async with subscription:
            pass


async def test_revocation_takes_effect_without_a_restart(plugin: Dynsec) -> None:
    await plugin.start()
    ingest = await plugin.service("ingest-1")
    van = await plugin.device("van-a")
    await plugin.device("van-b")
    device = plugin.login(van)
    pid = plugin.broker.pid
    assert await device_credentials.revoke(plugin.conn, "van-a") == "van-a"
    assert "1 clients deleted" in await plugin.sync()
    await eventually(device.disconnected.is_set)  # the plugin closed its session
    assert plugin.probe("van-a", van.password).connect() in REFUSED_LOGIN
    plugin.login(ingest)  # the others are untouched
    state = await plugin.broker_state()
    assert "van-a" not in state.clients and "van-b" in state.clients
    assert dynsec_state.device_role_name("van-a") not in state.roles
    assert plugin.broker.pid == pid


async def test_rotation_takes_effect_without_a_restart(plugin: Dynsec) -> None:
    await plugin.start()
    ingest = await plugin.service("ingest-1")
    van = await plugin.device("van-a")
    ingester = plugin.ingester(ingest)
    old_session = plugin.login(van)
    rotated = await device_credentials.rotate(plugin.conn, "van-a")
    assert "1 passwords set" in await plugin.sync(rotated)
    await eventually(old_session.disconnected.is_set)
    assert plugin.probe("van-a", van.password).connect() in REFUSED_LOGIN
    device = plugin.login(rotated)
    assert device.publish("fleet/van-a/telemetry", "after rotation") == 0
    assert device.publish("fleet/van-b/telemetry", "spoof") == NOT_AUTHORIZED
    assert device.subscribe("fleet/#") == [NOT_AUTHORIZED]
    assert await arrived(ingester, 1) == [("fleet/van-a/telemetry", b"after rotation")]


async def test_a_revoked_device_added_again_gets_a_new_password(plugin: Dynsec) -> None:
    await plugin.start()
    van = await plugin.device("van-a")
    await device_credentials.revoke(plugin.conn, "van-a")
    await plugin.sync()
    again = await plugin.device("van-a")
    assert again.password != van.password
    assert plugin.probe("van-a", again.password).connect() == 0
    assert plugin.probe("van-a", van.password).connect() in REFUSED_LOGIN


async def test_an_owntracks_phone_publishes_only_as_itself(plugin: Dynsec) -> None:
    await plugin.start()
    ingest = await plugin.service("ingest-1")
    phone = await plugin.device("alice:phone")
    assert phone.username == "alice@phone"
    ingester = plugin.ingester(ingest)
    device = plugin.login(phone)
    assert device.publish("owntracks/bob/phone", "{}") == NOT_AUTHORIZED
    assert device.publish("owntracks/alice/tablet", "{}") == NOT_AUTHORIZED
    assert device.publish("owntracks/alice/phone", "location") == 0
    assert device.publish("owntracks/alice/phone/event", "event") == 0
    assert device.subscribe("owntracks/alice/phone/cmd") == [GRANTED_QOS1]
    assert device.subscribe("owntracks/alice/+/cmd") == [NOT_AUTHORIZED]
    assert device.subscribe("owntracks/bob/phone/cmd") == [NOT_AUTHORIZED]
    assert await arrived(ingester, 2) == [
        ("owntracks/alice/phone", b"location"),
        ("owntracks/alice/phone/event", b"event"),
    ]


async def test_devices_log_in_over_tls(plugin: Dynsec) -> None:
    await plugin.start()
    ingest = await plugin.service("ingest-1")
    van = await plugin.device("van-a")
    ingester = plugin.ingester(ingest)
    device = plugin.login(van, ca=plugin.broker.certificate)
    assert device.publish("fleet/van-a/telemetry", "over tls") == 0
    assert device.subscribe("fleet/#") == [NOT_AUTHORIZED]
    assert await arrived(ingester, 1) == [("fleet/van-a/telemetry", b"over tls")]


async def test_the_initial_file_carries_the_databases_hashes(plugin: Dynsec) -> None:
    """A new or restored broker: accounts issued while it was not running log in with
    the passwords they were given, from the hashes in PostgreSQL."""
    ingest = await device_credentials.add_service_account(
        plugin.conn, "ingest-1", ServiceRole.INGEST
    )
    van = await device_credentials.add_device(plugin.conn, "van-a")
    await plugin.start()
    ingester = plugin.ingester(ingest)
    device = plugin.login(van)
    assert device.publish("fleet/van-a/telemetry", "restored") == 0
    assert device.publish("fleet/van-b/telemetry", "spoof") == NOT_AUTHORIZED
    assert device.subscribe("$share/ingest/fleet/+/telemetry") == [NOT_AUTHORIZED]
    assert await arrived(ingester, 1) == [("fleet/van-a/telemetry", b"restored")]
    # The plugin's answer to the same state is "nothing to change".
    assert "nothing to change" in await plugin.sync()
    # The administrator runs the control API and reads nothing of the fleet.
    admin = Endpoint.from_url(plugin.settings.mqtt_admin_url)
    watcher = plugin.probe(admin.username, admin.password)
    assert watcher.connect() == 0
    assert watcher.subscribe("fleet/#") == [NOT_AUTHORIZED]
    assert watcher.subscribe("$CONTROL/dynamic-security/v1/response") == [GRANTED_QOS1]
    with pytest.raises(device_credentials.CredentialError, match="--replace"):
        await dynsec.write_initial_config(plugin.conn, plugin.settings, plugin.broker.plugin_file)


async def test_sync_puts_right_what_was_changed_at_the_broker(plugin: Dynsec) -> None:
    await plugin.start()
    await plugin.service("ingest-1")
    van = await plugin.device("van-a")
    role = dynsec_state.device_role_name("van-a")
    async with plugin.control() as control:
        # Widened by hand, given a second role, and a managed-looking leftover.
        answers = await control.run(
            [
                {
                    "command": "modifyRole",
                    "rolename": role,
                    "acls": [{"acltype": "subscribePattern", "topic": "#", "allow": True}],
                },
                {"command": "addClientRole", "username": "van-a", "rolename": "fleetpulse:ingest"},
                {
                    "command": "createClient",
                    "username": "van-old",
                    "password": "x",
                    "textdescription": dynsec_state.FINGERPRINT_MARK + "0" * 32,
                },
                {"command": "createRole", "rolename": "fleetpulse:device:van-old"},
                {
                    "command": "setDefaultACLAccess",
                    "acls": [{"acltype": "subscribe", "allow": True}],
                },
            ]
        )
    assert [a.get("error") for a in answers] == [None] * 5
    device = plugin.login(van)
    assert device.subscribe("fleet/#") == [GRANTED_QOS1]  # what the drift allowed

    summary = await plugin.sync()
    assert summary == (
        "dynamic security plugin: 1 client roles fixed, 1 clients deleted,"
        " 1 default ACL access set, 1 roles deleted, 1 roles fixed"
    )
    await eventually(device.disconnected.is_set)  # the plugin applies it to sessions
    device = plugin.login(van)
    assert device.subscribe("fleet/#") == [NOT_AUTHORIZED]
    state = await plugin.broker_state()
    assert "van-old" not in state.clients and "fleetpulse:device:van-old" not in state.roles
    assert state.clients["van-a"].roles == {role}
    assert ADMIN in state.clients and dynsec_state.ADMIN_ROLE in state.roles  # not FleetPulse's
    assert "nothing to change" in await plugin.sync()


async def test_an_account_the_broker_lost_is_reported_and_rotation_restores_it(
    plugin: Dynsec,
) -> None:
    await plugin.start()
    van = await plugin.device("van-a")
    async with plugin.control() as control:
        (answer,) = await control.run([{"command": "deleteClient", "username": "van-a"}])
    assert "error" not in answer
    with pytest.raises(device_credentials.BrokerSyncError, match=r"van-a.*rotate"):
        await plugin.sync()
    rotated = await device_credentials.rotate(plugin.conn, "van-a")
    assert "1 clients created" in await plugin.sync(rotated)
    assert plugin.probe("van-a", rotated.password).connect() == 0
    assert plugin.probe("van-a", van.password).connect() in REFUSED_LOGIN


async def test_a_rotation_that_missed_the_broker_fails_closed(plugin: Dynsec) -> None:
    """The database replaced the password but the broker never heard: the old password
    must not keep working, so the next sync deletes the client and says to rotate."""
    await plugin.start()
    van = await plugin.device("van-a")
    device = plugin.login(van)
    await device_credentials.rotate(plugin.conn, "van-a")  # the broker was unreachable
    with pytest.raises(device_credentials.BrokerSyncError, match="rotate"):
        await plugin.sync()
    await eventually(device.disconnected.is_set)
    assert plugin.probe("van-a", van.password).connect() in REFUSED_LOGIN


async def test_the_ingester_stores_fixes_from_a_dynsec_broker(
    plugin: Dynsec, redis_url: str
) -> None:
    await plugin.start()
    ingest = await plugin.service("ingest-1")
    van = await plugin.device("van-a")
    settings = dataclasses.replace(
        plugin.settings,
        mqtt_url=f"mqtt://ingest-1:{ingest.password}@127.0.0.1:{plugin.broker.port}",
        redis_url=redis_url,
    )
    async with running_ingester(settings):
        device = plugin.login(van)
        ts = int(datetime.now(UTC).timestamp() * 1000)
        fix = json.dumps({"ts": ts, "lat": 41.15, "lon": -8.61})
        assert await asyncio.to_thread(device.publish, "fleet/van-a/telemetry", fix) == 0
        spoof = json.dumps({"ts": ts, "lat": 1.0, "lon": 1.0})
        assert await asyncio.to_thread(device.publish, "fleet/van-b/telemetry", spoof) == (
            NOT_AUTHORIZED
        )

        async def stored() -> list[tuple[Any, ...]]:
            cur = await plugin.conn.execute("SELECT device_id, lat FROM telemetry")
            return await cur.fetchall()

        assert await eventually(stored) == [("van-a", 41.15)]


async def test_the_administrators_name_cannot_be_an_account(plugin: Dynsec) -> None:
    await plugin.start()
    await device_credentials.add_service_account(plugin.conn, ADMIN, ServiceRole.INGEST)
    with pytest.raises(device_credentials.BrokerSyncError, match="administrator"):
        await plugin.sync()
    state = await plugin.broker_state()
    assert state.clients[ADMIN].roles == {dynsec_state.ADMIN_ROLE}


async def test_without_an_administrator_the_command_says_what_to_set(plugin: Dynsec) -> None:
    settings = dataclasses.replace(plugin.settings, mqtt_admin_url="")
    with pytest.raises(device_credentials.BrokerSyncError, match="FLEETPULSE_MQTT_ADMIN_URL"):
        await device_credentials.sync_broker(plugin.conn, settings)
    nameless = dataclasses.replace(plugin.settings, mqtt_admin_url="mqtt://127.0.0.1:1")
    with pytest.raises(device_credentials.BrokerSyncError, match="no user"):
        await device_credentials.sync_broker(plugin.conn, nameless)
    await plugin.start()
    wrong = dataclasses.replace(
        plugin.settings, mqtt_admin_url=f"mqtt://{ADMIN}:guess@127.0.0.1:{plugin.broker.port}"
    )
    with pytest.raises(device_credentials.BrokerSyncError, match=r"(?i)not authori[sz]ed"):
        await device_credentials.sync_broker(plugin.conn, wrong)


async def test_a_broker_without_the_plugin_is_named_as_such(broker: Mosquitto) -> None:
    """The project's plain broker (anonymous, no plugin) never answers the control topic."""
    async with dynsec.Control(Endpoint.from_url(broker.url), timeout_s=0.5) as control:
        with pytest.raises(aiomqtt.MqttError, match="plugin loaded"):
            await control.run([{"command": "listClients"}])


async def test_an_unreachable_broker_leaves_the_change_in_the_database(plugin: Dynsec) -> None:
    # Not started: nothing listens on the broker's port.
    issued = await device_credentials.add_device(plugin.conn, "van-a")
    with pytest.raises(device_credentials.BrokerSyncError, match="the database holds"):
        await plugin.sync(issued)
    listed = await device_credentials.listing(plugin.conn)
    assert [(a.username, a.revoked_at) for a in listed] == [("van-a", None)]


def test_the_command_line_drives_the_plugin(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = DynsecMosquitto()
    admin_url = f"mqtt://{ADMIN}:{credentials.new_password()}@127.0.0.1:{broker.port}"
    flags = [
        *("--database-url", database_url),
        *("--mqtt-auth-backend", "dynsec", "--mqtt-admin-url", admin_url),
    ]
    probes: list[Probe] = []

    def probe(username: str, password: str) -> Probe:
        probes.append(Probe(broker.port, username, password))
        return probes[-1]

    try:
        # Issued before the broker runs: each command fails after the database changed
        # and the password was shown...
        assert cli.main([*flags, "devices", "service-account", "ingest-1"]) == 1
        assert cli.main([*flags, "devices", "add", "van-c", "--kind", "vehicle"]) == 1
        out, err = capsys.readouterr()
        ingest, van = (json.loads(line) for line in out.splitlines())
        assert err.count("the database holds the change") == 2
        assert "FLEETPULSE_SHARE_GROUP" not in err  # no guessable-group warning with dynsec
        # ...and the plugin's first file carries both.
        assert cli.main([*flags, "devices", "dynsec-init", str(broker.plugin_file)]) == 0
        assert "2 accounts" in capsys.readouterr().err
        assert cli.main([*flags, "devices", "dynsec-init", str(broker.plugin_file)]) == 1
        assert "--replace" in capsys.readouterr().err
        broker.start()
        assert probe("ingest-1", ingest["password"]).connect() == 0
        device = probe("van-c", van["password"])
        assert device.connect() == 0
        assert device.subscribe("$share/ingest/fleet/+/telemetry") == [NOT_AUTHORIZED]

        assert cli.main([*flags, "devices", "sync-broker"]) == 0
        assert "nothing to change" in capsys.readouterr().err
        assert cli.main([*flags, "devices", "rotate", "van-c"]) == 0
        rotated = json.loads(capsys.readouterr().out)
        assert device.disconnected.wait(WAIT_TIMEOUT_S)
        assert probe("van-c", van["password"]).connect() in REFUSED_LOGIN
        assert probe("van-c", rotated["password"]).connect() == 0
        assert cli.main([*flags, "devices", "revoke", "van-c"]) == 0
        assert "1 clients deleted" in capsys.readouterr().err
        assert probe("van-c", rotated["password"]).connect() in REFUSED_LOGIN
    finally:
        for p in probes:
            p.close()
        broker.__exit__(None, None, None)
