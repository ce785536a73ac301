"""Device credentials against a real Mosquitto started from deploy/mosquitto/
mosquitto-secure.conf, with the password and ACL files `fleetpulse devices` writes.

"Never received" is shown without waiting: after the forbidden message, a permitted one
goes the same way, and MQTT keeps one connection's messages in order, so once the
permitted one has arrived the forbidden one would have arrived before it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleetpulse import cli, device_credentials
from fleetpulse.database import Conn, connect
from fleetpulse.local_servers import Mosquitto, free_port
from fleetpulse.settings import Settings
from mqtt.credentials import ServiceRole
from mqtt.topics import TopicScheme
from tests.conftest import WAIT_TIMEOUT_S, eventually, make_settings, running_ingester

GRANTED_QOS1 = 1
NOT_AUTHORIZED = 0x87
NO_SUBSCRIBERS = 0x10  # a PUBACK's "accepted, but nobody subscribes"
# Mosquitto 2.0 answers a wrong password with 0x87; MQTT 5 also has 0x86 for it.
REFUSED_LOGIN = {0x86, NOT_AUTHORIZED}
SCHEME = TopicScheme()


class TlsMosquitto(Mosquitto):
    """A private broker from one of the production configs: its two listeners on free
    ports, a throwaway TLS certificate, and the files the config names (`files()`) in
    its data directory. Construct, write those files, then start."""

    def __init__(self) -> None:
        self.tls_port = free_port()
        super().__init__()

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "mosquitto.pid"

    @property
    def certificate(self) -> Path:
        return self.data_dir / "cert.pem"

    def files(self) -> dict[str, Path]:
        """The config's file directives, set to paths in the data directory."""
        return {"pid_file": self.pid_file}

    def render(self, template: str) -> str:
        text = super().render(template)  # the plain listener's port, persistence location
        text, n = re.subn(r"(?m)^listener\s+8883\b.*$", f"listener {self.tls_port} 127.0.0.1", text)
        assert n == 1, f"{self.config_name} has no TLS listener on 8883"
        key = self.data_dir / "key.pem"
        paths = {**self.files(), "certfile": self.certificate, "keyfile": key}
        for directive, path in paths.items():
            text, n = re.subn(rf"(?m)^{directive}\s.*$", f"{directive} {path}", text)
            assert n == 1, f"{self.config_name} has no single {directive}"
        _self_signed(self.certificate, key)
        # The broker reads these (and writes some) after dropping to its own user, as the
        # deploy configs say: the key is given to its group, and files FleetPulse creates
        # take the directory's group.
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, group="mosquitto")
            shutil.chown(key, group="mosquitto")
            key.chmod(0o640)
        return text


class SecureMosquitto(TlsMosquitto):
    """The password-file and ACL-file broker."""

    config_name = "mosquitto/mosquitto-secure.conf"

    @property
    def password_file(self) -> Path:
        return self.data_dir / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.data_dir / "acl"

    def files(self) -> dict[str, Path]:
        return {
            **super().files(),
            "password_file": self.password_file,
            "acl_file": self.acl_file,
        }


def _self_signed(certificate: Path, key: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the TLS listener's test certificate")
    subprocess.run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ),
            *("-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key)),
            *("-out", str(certificate), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )


class Probe:
    """An MQTT v5 client (paho's own network thread) that records every answer."""

    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None,
        *,
        client_id: str = "",
        ca: Path | None = None,
    ) -> None:
        self.port = port
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or username or "anonymous",
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,  # a refused or closed session stays closed
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca is not None:
            self.client.tls_set_context(ssl.create_default_context(cafile=str(ca)))
        self.messages: list[tuple[str, bytes]] = []
        self.connack: int | None = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self._acks: dict[int, Any] = {}
        self._acked = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_ack
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = reason.value
        self.connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, p: Any) -> None:
        self.disconnected.set()
        self.connected.set()  # a refused CONNECT ends here too

    def _on_ack(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._acked:
            self._acks[mid] = reason.value
            self._acked.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, p: Any) -> None:
        with self._acked:
            self._acks[mid] = [r.value for r in reasons]
            self._acked.notify_all()

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        self.messages.append((message.topic, bytes(message.payload)))

    def connect(self) -> int:
        """The CONNACK reason code (0: accepted)."""
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        assert self.connected.wait(WAIT_TIMEOUT_S), "no CONNACK"
        assert self.connack is not None
        return self.connack

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> int:
        """QoS 1: the PUBACK's reason code; QoS 0: 0 once it is on the wire."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            info.wait_for_publish(WAIT_TIMEOUT_S)
            return 0
        return int(self._wait(info.mid))

    def subscribe(self, topic_filter: str) -> list[int]:
        _, mid = self.client.subscribe(topic_filter, qos=1)
        assert mid is not None, "paho did not send the SUBSCRIBE"
        return list(self._wait(mid))

    def _wait(self, mid: int) -> Any:
        with self._acked:
            assert self._acked.wait_for(
                lambda: mid in self._acks or self.disconnected.is_set(), WAIT_TIMEOUT_S
            ), f"no acknowledgement of message {mid}"
            if mid not in self._acks:
                raise ConnectionError(f"disconnected before message {mid} was acknowledged")
            return self._acks.pop(mid)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclasses.dataclass
class Secured:
    broker: SecureMosquitto
    settings: Settings  # FLEETPULSE_MQTT_* pointing at the broker's files and pid file
    conn: Conn
    probes: list[Probe] = dataclasses.field(default_factory=list)

    @property
    def before_start(self) -> Settings:
        """No pid file exists before the broker runs: nothing to signal yet."""
        return dataclasses.replace(self.settings, mqtt_pid_file="")

    async def sync(self) -> device_credentials.BrokerSync:
        settings = self.settings if self.broker.pid else self.before_start
        return await device_credentials.sync_broker(self.conn, settings)

    async def device(self, device_id: str) -> device_credentials.Issued:
        issued = await device_credentials.add_device(self.conn, device_id)
        await self.sync()
        return issued

    async def service(self, name: str) -> device_credentials.Issued:
        issued = await device_credentials.add_service_account(self.conn, name, ServiceRole.INGEST)
        await self.sync()
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
        """Logged in with an ingest account, subscribed as the ingesters subscribe."""
        probe = self.login(issued)
        for topic_filter in SCHEME.shared_filters(group):
            assert probe.subscribe(topic_filter) == [GRANTED_QOS1]
        return probe


@pytest.fixture
async def secured(database_url: str) -> AsyncIterator[Secured]:
    broker = SecureMosquitto()
    settings = make_settings(
        database_url=database_url,
        mqtt_url=broker.url,
        mqtt_password_file=broker.password_file,
        mqtt_acl_file=broker.acl_file,
        mqtt_pid_file=broker.pid_file,
    )
    conn = await connect(database_url)
    state = Secured(broker, settings, conn)
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
    secured: Secured,
) -> None:
    ingest = await secured.service("ingest-1")
    van = await secured.device("van-a")
    secured.broker.start()
    ingester = secured.ingester(ingest)
    device = secured.login(van)
    assert device.publish("fleet/van-a/telemetry", "fix") == 0
    assert device.publish("fleet/van-a/status", "online", retain=True) == 0
    assert device.publish("fleet/van-a/delivery", "report") == 0
    assert await arrived(ingester, 3) == [
        ("fleet/van-a/telemetry", b"fix"),
        ("fleet/van-a/status", b"online"),
        ("fleet/van-a/delivery", b"report"),
    ]


async def test_a_device_cannot_publish_as_another_device(secured: Secured) -> None:
    ingest = await secured.service("ingest-1")
    van_a = await secured.device("van-a")
    await secured.device("van-b")
    secured.broker.start()
    ingester = secured.ingester(ingest)
    device = secured.login(van_a)
    # MQTT 5, QoS 1: refused in the PUBACK; QoS 0: dropped without a word.
    assert device.publish("fleet/van-b/telemetry", "spoof-1") == NOT_AUTHORIZED
    assert device.publish("fleet/van-b/status", "offline", retain=True) == NOT_AUTHORIZED
    assert device.publish("fleet/van-b/telemetry", "spoof-0", qos=0) == 0
    assert device.publish("fleet/van-a/../van-b/telemetry", "spoof-2") == NOT_AUTHORIZED
    assert device.publish("other/topic", "spoof-3") == NOT_AUTHORIZED
    assert device.publish("fleet/van-a/telemetry", "own") == 0
    assert await arrived(ingester, 1) == [("fleet/van-a/telemetry", b"own")]
    assert not device.disconnected.is_set(), "a refused publish need not end the session"


async def test_a_device_reads_nothing_of_the_fleet(secured: Secured) -> None:
    ingest = await secured.service("ingest-1")
    van_a, van_b = await secured.device("van-a"), await secured.device("van-b")
    secured.broker.start()
    ingester = secured.ingester(ingest)
    other = secured.login(van_b)
    assert other.publish("fleet/van-b/status", "online", retain=True) == 0
    device = secured.login(van_a)
    # Mosquitto's ACL file cannot refuse a SUBSCRIBE (it grants every filter) but delivers
    # only what the subscriber may read: not the retained status, nor anything later.
    for topic_filter in ("fleet/#", "#", "fleet/van-b/telemetry", "$share/mine/fleet/+/status"):
        assert device.subscribe(topic_filter)[0] in (GRANTED_QOS1, NOT_AUTHORIZED)
    assert other.publish("fleet/van-b/telemetry", "b's fix") == 0
    assert await arrived(ingester, 2) == [
        ("fleet/van-b/status", b"online"),
        ("fleet/van-b/telemetry", b"b's fix"),
    ]
    # Published after the broker handled b's fix: anything bound for this device would
    # be on its connection ahead of this acknowledgement.
    assert device.publish("fleet/van-a/telemetry", "barrier") == 0
    assert device.messages == []
    assert await arrived(ingester, 3)


async def test_a_device_cannot_take_messages_from_a_share_group_it_cannot_name(
    secured: Secured,
) -> None:
    """Mosquitto gives a message to one member of a share group and only then checks that
    member's `read` access: a device that joins the ingesters' group makes them lose the
    messages it is dealt (measured: half, with one ingester). So the group's name must be
    one devices cannot guess (docs/device-security.md); under any other name a device
    only forms a group of its own, which receives nothing."""
    ingest = await secured.service("ingest-1")
    van_a, van_b = await secured.device("van-a"), await secured.device("van-b")
    secured.broker.start()
    ingester = secured.ingester(ingest, group="ingest-4f9c2e1ab7d3")
    device = secured.login(van_a)
    for group in ("ingest", "fleetpulse", "g"):
        assert device.subscribe(f"$share/{group}/fleet/+/telemetry") == [GRANTED_QOS1]
    other = secured.login(van_b)
    sent = [str(i).encode() for i in range(40)]
    for payload in sent:
        assert other.publish("fleet/van-b/telemetry", payload) == 0
    assert [p for _, p in await arrived(ingester, len(sent))] == sent
    assert device.publish("fleet/van-a/telemetry", "barrier") == 0
    assert device.messages == []


async def test_wrong_unknown_and_anonymous_logins_are_refused(secured: Secured) -> None:
    van = await secured.device("van-a")
    secured.broker.start()
    assert secured.probe("van-a", van.password + "x").connect() in REFUSED_LOGIN
    assert secured.probe("van-a", "").connect() in REFUSED_LOGIN
    assert secured.probe("van-z", van.password).connect() in REFUSED_LOGIN
    assert secured.probe(None, None).connect() in REFUSED_LOGIN
    assert secured.probe("van-a", van.password).connect() == 0


async def test_a_device_cannot_take_over_another_devices_session(secured: Secured) -> None:
    van_a, van_b = await secured.device("van-a"), await secured.device("van-b")
    secured.broker.start()
    device = secured.login(van_a)
    secured.login(van_b, client_id="van-a")  # the broker uses the username instead
    assert device.publish("fleet/van-a/telemetry", "still here") == NO_SUBSCRIBERS
    assert not device.disconnected.is_set()


async def test_a_revoked_device_is_cut_off_when_the_broker_reloads(secured: Secured) -> None:
    ingest = await secured.service("ingest-1")
    van = await secured.device("van-a")
    await secured.device("van-b")
    secured.broker.start()
    device = secured.login(van)
    assert await device_credentials.revoke(secured.conn, "van-a") == "van-a"
    sync = await secured.sync()
    assert sync.accounts == 2 and "SIGHUP" in sync.reload
    assert "van-a" not in secured.broker.password_file.read_text()
    assert "user van-a" not in secured.broker.acl_file.read_text()
    await eventually(device.disconnected.is_set)  # the reload closed its session
    assert secured.probe("van-a", van.password).connect() in REFUSED_LOGIN
    secured.login(ingest)  # the others are untouched
    listed = {a.username: a for a in await device_credentials.listing(secured.conn)}
    assert listed["van-a"].revoked_at is not None and listed["van-b"].revoked_at is None


async def test_rotation_replaces_the_password_at_the_next_reload(secured: Secured) -> None:
    ingest = await secured.service("ingest-1")
    van = await secured.device("van-a")
    secured.broker.start()
    ingester = secured.ingester(ingest)
    old_session = secured.login(van)
    rotated = await device_credentials.rotate(secured.conn, "van-a")
    sync = await secured.sync()
    assert rotated.username == "van-a" and rotated.password != van.password
    assert "SIGHUP" in sync.reload
    await eventually(old_session.disconnected.is_set)
    assert secured.probe("van-a", van.password).connect() in REFUSED_LOGIN
    device = secured.login(rotated)
    assert device.publish("fleet/van-a/telemetry", "after rotation") == 0
    assert await arrived(ingester, 1) == [("fleet/van-a/telemetry", b"after rotation")]


async def test_a_revoked_device_added_again_gets_a_new_password(secured: Secured) -> None:
    van = await secured.device("van-a")
    secured.broker.start()
    await device_credentials.revoke(secured.conn, "van-a")
    await secured.sync()
    again = await secured.device("van-a")
    assert again.password != van.password
    await eventually(lambda: secured.probe("van-a", again.password).connect() == 0)
    assert secured.probe("van-a", van.password).connect() in REFUSED_LOGIN


async def test_an_owntracks_phone_publishes_only_as_itself(secured: Secured) -> None:
    ingest = await secured.service("ingest-1")
    phone = await secured.device("alice:phone")
    assert phone.username == "alice@phone"  # a password file cannot hold ':' in a name
    secured.broker.start()
    ingester = secured.ingester(ingest)
    device = secured.login(phone)
    assert device.publish("owntracks/bob/phone", "{}") == NOT_AUTHORIZED
    assert device.publish("owntracks/alice/tablet", "{}") == NOT_AUTHORIZED
    assert device.publish("owntracks/alice/phone", "location") == 0
    assert device.publish("owntracks/alice/phone/event", "event") == 0
    assert await arrived(ingester, 2) == [
        ("owntracks/alice/phone", b"location"),
        ("owntracks/alice/phone/event", b"event"),
    ]


async def test_devices_log_in_over_tls(secured: Secured) -> None:
    ingest = await secured.service("ingest-1")
    van = await secured.device("van-a")
    secured.broker.start()
    ingester = secured.ingester(ingest)
    device = secured.login(van, ca=secured.broker.certificate)
    assert device.publish("fleet/van-a/telemetry", "over tls") == 0
    assert device.publish("fleet/van-b/telemetry", "spoof") == NOT_AUTHORIZED
    assert await arrived(ingester, 1) == [("fleet/van-a/telemetry", b"over tls")]
    wrong = secured.probe("van-a", "guess", ca=secured.broker.certificate)
    assert wrong.connect() in REFUSED_LOGIN


async def test_the_ingester_stores_fixes_from_a_secured_broker(
    secured: Secured, redis_url: str
) -> None:
    ingest = await secured.service("ingest-1")
    van = await secured.device("van-a")
    secured.broker.start()
    settings = dataclasses.replace(
        secured.settings,
        mqtt_url=f"mqtt://ingest-1:{ingest.password}@127.0.0.1:{secured.broker.port}",
        redis_url=redis_url,
    )
    async with running_ingester(settings):
        device = secured.login(van)
        ts = int(datetime.now(UTC).timestamp() * 1000)
        fix = json.dumps({"ts": ts, "lat": 41.15, "lon": -8.61})
        assert await asyncio.to_thread(device.publish, "fleet/van-a/telemetry", fix) == 0
        spoof = json.dumps({"ts": ts, "lat": 1.0, "lon": 1.0})
        assert await asyncio.to_thread(device.publish, "fleet/van-b/telemetry", spoof) == (
            NOT_AUTHORIZED
        )

        async def stored() -> list[tuple[Any, ...]]:
            cur = await secured.conn.execute("SELECT device_id, lat FROM telemetry")
            return await cur.fetchall()

        assert await eventually(stored) == [("van-a", 41.15)]


def test_the_command_line_adds_lists_rotates_and_revokes(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = SecureMosquitto()
    files = [
        "--database-url",
        database_url,
        "--mqtt-password-file",
        str(broker.password_file),
        "--mqtt-acl-file",
        str(broker.acl_file),
    ]
    try:
        assert cli.main([*files, "devices", "service-account", "ingest-1"]) == 0
        add = ["devices", "add", "van-c", "--kind", "vehicle", "--groups", "depot-1"]
        assert cli.main([*files, *add]) == 0
        out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [o["username"] for o in out] == ["ingest-1", "van-c"]
        ingest, van = out
        assert van["device_id"] == "van-c" and len(van["password"]) >= 32
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT kind, groups FROM devices WHERE device_id = 'van-c'")
            assert row.fetchone() == ("vehicle", ["depot-1"])
            hashes = conn.execute("SELECT password_hash FROM mqtt_accounts").fetchall()
        assert all(h.startswith("$7$101$") for (h,) in hashes)
        assert van["password"] not in broker.password_file.read_text()

        assert cli.main([*files, "devices", "add", "van-c"]) == 1
        assert "rotate" in capsys.readouterr().err
        assert cli.main([*files, "devices", "add", "van/c"]) == 1
        assert "'/'" in capsys.readouterr().err

        broker.start()
        device = Probe(broker.port, "van-c", van["password"])
        assert device.connect() == 0
        device.close()

        assert cli.main([*files, "devices", "list-credentials"]) == 0
        listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [(a["username"], a["role"], a["revoked_at"]) for a in listed] == [
            ("ingest-1", "ingest", None),
            ("van-c", "device", None),
        ]
        files += ["--mqtt-pid-file", str(broker.pid_file)]
        assert cli.main([*files, "devices", "revoke", "van-c"]) == 0
        assert "SIGHUP" in capsys.readouterr().err
        assert cli.main([*files, "devices", "rotate", "van-c"]) == 1
        assert "revoked" in capsys.readouterr().err
        assert cli.main([*files, "devices", "rotate", "ingest-1"]) == 0
        rotated = json.loads(capsys.readouterr().out)
        assert rotated["username"] == "ingest-1" and rotated["password"] != ingest["password"]
    finally:
        broker.__exit__(None, None, None)


async def test_a_reload_command_is_run_and_its_failure_reported(secured: Secured) -> None:
    van = await secured.device("van-a")
    with pytest.raises(device_credentials.BrokerSyncError, match=r"mosquitto\.pid"):
        await device_credentials.sync_broker(secured.conn, secured.settings)  # not running yet
    secured.broker.start()
    device = secured.login(van)
    await device_credentials.revoke(secured.conn, "van-a")
    failing = dataclasses.replace(secured.before_start, mqtt_reload_cmd="false")
    with pytest.raises(device_credentials.BrokerSyncError, match="exited with 1"):
        await device_credentials.sync_broker(secured.conn, failing)
    assert not device.disconnected.is_set()
    signalling = dataclasses.replace(
        secured.before_start, mqtt_reload_cmd=f"kill -HUP {secured.broker.pid}"
    )
    synced = await device_credentials.sync_broker(secured.conn, signalling)
    assert synced.accounts == 0 and "kill -HUP" in synced.reload
    await eventually(device.disconnected.is_set)


def test_rewritten_files_keep_their_mode_and_new_ones_are_not_world_readable(
    tmp_path: Path,
) -> None:
    kept, new = tmp_path / "passwd", tmp_path / "acl"
    kept.write_text("old\n")
    kept.chmod(0o600)
    device_credentials.write_files([(kept, "new passwords\n"), (new, "new acl\n")])
    assert kept.read_text() == "new passwords\n" and new.read_text() == "new acl\n"
    assert kept.stat().st_mode & 0o7777 == 0o600
    assert new.stat().st_mode & 0o7777 == device_credentials.NEW_FILE_MODE
    assert new.stat().st_gid == tmp_path.stat().st_gid
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acl", "passwd"]  # no temporaries
