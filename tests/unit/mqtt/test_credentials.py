"""mqtt.credentials: Mosquitto's password hashes, ACL rendering, and ids that would
widen a device's rights refused."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqtt import credentials
from mqtt.credentials import Access, Account, Grant, InvalidName, ServiceRole
from mqtt.topics import TopicScheme
from tracker.positions import is_valid_device_id

# Written by `mosquitto_passwd -b -c file alice s3cret` (Mosquitto 2.0.11).
MOSQUITTO_PASSWD_LINE = (
    "alice:$7$101$62YVKlZ5mspC9lUr$iF/EiiGg4bk9DkBspBneUmSAU01LtVAWZMOe4S9CsRosbbIAUrXtZl"
    "A6IJYeXk0ix6kLXEDx7vIdCGj5A7D0Tw=="
)
MOSQUITTO_HASH = MOSQUITTO_PASSWD_LINE.split(":", 1)[1]
HASH_FORMAT = re.compile(r"\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==")
SCHEME = TopicScheme()
DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "mosquitto"


# --- password hashes -----------------------------------------------------------------


def test_a_hash_written_by_mosquitto_passwd_verifies() -> None:
    assert credentials.verify_password("s3cret", MOSQUITTO_HASH)
    assert not credentials.verify_password("s3cret ", MOSQUITTO_HASH)
    assert not credentials.verify_password("S3cret", MOSQUITTO_HASH)


def test_the_same_salt_gives_mosquitto_passwds_hash_exactly() -> None:
    salt = base64.b64decode(MOSQUITTO_HASH.split("$")[3])
    assert credentials.hash_password("s3cret", salt=salt) == MOSQUITTO_HASH


def test_hashes_have_mosquittos_form_and_a_fresh_salt_each_time() -> None:
    first, second = credentials.hash_password("pw"), credentials.hash_password("pw")
    assert HASH_FORMAT.fullmatch(first) and HASH_FORMAT.fullmatch(second)
    assert first != second
    assert credentials.verify_password("pw", first) and credentials.verify_password("pw", second)
    assert not credentials.verify_password("pw2", first)


def test_other_iteration_counts_round_trip() -> None:
    encoded = credentials.hash_password("pw", iterations=1000)
    assert encoded.startswith("$7$1000$")
    assert credentials.verify_password("pw", encoded)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "$6$abc$def",
        "$7$x$62YVKlZ5mspC9lUr$" + "A" * 88,
        "$7$101$c2hvcnQ=$" + MOSQUITTO_HASH.split("$")[4],  # 5-byte salt
        "$7$101$62YVKlZ5mspC9lUr$c2hvcnQ=",  # 5-byte key
    ],
)
def test_malformed_hashes_are_reported_not_treated_as_a_mismatch(bad: str) -> None:
    with pytest.raises(ValueError):
        credentials.verify_password("s3cret", bad)


def test_salts_other_than_mosquittos_length_are_refused() -> None:
    with pytest.raises(ValueError, match="12-byte salt"):
        credentials.hash_password("pw", salt=b"short")
    with pytest.raises(ValueError, match="iterations"):
        credentials.hash_password("pw", iterations=0)


def test_new_passwords_are_long_random_and_safe_in_a_url() -> None:
    passwords = {credentials.new_password() for _ in range(50)}
    assert len(passwords) == 50
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{32}", p) for p in passwords)


# --- names ---------------------------------------------------------------------------


@pytest.mark.parametrize("device_id", ["van-17", "a", "drone_3.b", "alice:phone", "x" * 64])
def test_valid_device_ids_pass(device_id: str) -> None:
    assert credentials.check_device_id(device_id) == device_id


@pytest.mark.parametrize(
    ("device_id", "said"),
    [
        ("", "cannot be empty"),
        ("x" * 65, "65 characters, at most 64"),
        ("van\x00", "NUL"),
        ("van+", "wildcard '+'"),
        ("+", "wildcard '+'"),
        ("#", "wildcard '#'"),
        ("van/#", "wildcard '#'"),  # the first problem found is named
        ("van-a/../van-b", "'/'"),
        ("van-a/telemetry", "'/'"),
        ("van a", "U+0020"),
        ("van\n", "U+000A"),
        ("$SYS", "'$'"),
        ("vän", "'ä'"),
        ("van@x", "'@'"),
    ],
)
def test_ids_that_could_change_a_devices_topics_are_refused(device_id: str, said: str) -> None:
    with pytest.raises(InvalidName, match=re.escape(said)):
        credentials.check_device_id(device_id)
    with pytest.raises(InvalidName):
        credentials.device_grants(device_id, SCHEME)


@given(st.text(max_size=80))
def test_the_id_rule_is_the_one_topics_use(device_id: str) -> None:
    try:
        credentials.check_device_id(device_id)
    except InvalidName:
        assert not is_valid_device_id(device_id)
    else:
        assert is_valid_device_id(device_id)


@given(st.text(max_size=80))
def test_whatever_the_id_a_device_writes_only_its_own_literal_topics(device_id: str) -> None:
    try:
        grants = credentials.device_grants(device_id, SCHEME)
    except InvalidName:
        return
    owntracks = credentials.owntracks_topic(device_id, SCHEME)
    for grant in grants:
        levels = grant.topic.split("/")
        if grant.topic.startswith("fleet/"):
            assert grant.access is Access.WRITE
            assert levels[:2] == ["fleet", device_id] and len(levels) == 3
            assert "+" not in grant.topic and "#" not in grant.topic
        else:
            assert owntracks is not None and grant.topic.startswith(owntracks)
    acl = credentials.render_acl_file(
        [Account(credentials.device_username(device_id), MOSQUITTO_HASH, grants)]
    )
    assert acl.count("\nuser ") == 1


@pytest.mark.parametrize(
    ("name", "said"),
    [("ingest:1", "':'"), ("ingest@1", "'@'"), ("", "empty"), ("a/b", "'/'"), ("#", "'#'")],
)
def test_service_account_names_cannot_collide_with_device_usernames(name: str, said: str) -> None:
    with pytest.raises(InvalidName, match=re.escape(said)):
        credentials.check_account_name(name)


def test_owntracks_ids_get_a_username_without_a_colon() -> None:
    assert credentials.device_username("van-17") == "van-17"
    assert credentials.device_username("alice:phone") == "alice@phone"


@pytest.mark.parametrize(
    ("device_id", "topic"),
    [
        ("alice:phone", "owntracks/alice/phone"),
        ("Alice:Phone", None),  # the ingester would name it alice:phone, another device
        ("a:b:c", None),
        (":phone", None),
        ("alice:", None),
        ("van-17", None),
    ],
)
def test_the_owntracks_topic_of_a_device(device_id: str, topic: str | None) -> None:
    assert credentials.owntracks_topic(device_id, SCHEME) == topic


# --- grants --------------------------------------------------------------------------


def test_a_vehicle_writes_its_three_topics_and_reads_nothing() -> None:
    assert credentials.device_grants("van-17", SCHEME) == (
        Grant(Access.WRITE, "fleet/van-17/telemetry"),
        Grant(Access.WRITE, "fleet/van-17/status"),
        Grant(Access.WRITE, "fleet/van-17/delivery"),
    )


def test_an_owntracks_phone_also_writes_its_owntracks_topics_and_reads_its_commands() -> None:
    scheme = TopicScheme("acme/fleet", "acme/owntracks")
    assert credentials.device_grants("alice:phone", scheme)[3:] == (
        Grant(Access.WRITE, "acme/owntracks/alice/phone"),
        Grant(Access.WRITE, "acme/owntracks/alice/phone/+"),
        Grant(Access.READ, "acme/owntracks/alice/phone/cmd"),
    )


def test_an_ingest_account_reads_what_the_ingesters_subscribe_to() -> None:
    scheme = TopicScheme("acme/fleet")
    grants = credentials.service_grants(ServiceRole.INGEST, scheme)
    assert grants == tuple(Grant(Access.READ, f) for f in scheme.filters())


# --- files ---------------------------------------------------------------------------


def _accounts() -> list[Account]:
    return [
        Account("van-17", "$7$101$AAAA$BBBB", credentials.device_grants("van-17", SCHEME)),
        Account(
            "ingest-1", "$7$101$CCCC$DDDD", credentials.service_grants(ServiceRole.INGEST, SCHEME)
        ),
    ]


def test_the_password_file_has_one_sorted_line_per_account() -> None:
    text = credentials.render_password_file(_accounts())
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == ["ingest-1:$7$101$CCCC$DDDD", "van-17:$7$101$AAAA$BBBB"]


def test_the_acl_file_gives_each_user_its_own_lines_and_anonymous_nothing() -> None:
    text = credentials.render_acl_file(_accounts())
    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert body == [
        "user ingest-1",
        "topic read fleet/+/telemetry",
        "topic read fleet/+/status",
        "topic read fleet/+/delivery",
        "topic read owntracks/#",
        "user van-17",
        "topic write fleet/van-17/telemetry",
        "topic write fleet/van-17/status",
        "topic write fleet/van-17/delivery",
    ]


def test_no_account_renders_without_its_own_user_line() -> None:
    assert credentials.render_acl_file([]).strip().startswith("#")
    assert credentials.render_password_file([]).strip().startswith("#")


_UNSAFE_NAMES = ["van:17", "van 17", "van\nuser admin", ""]
_OK_HASH = "$7$101$AAAA$BBBB"


@pytest.mark.parametrize(
    "account",
    [Account(name, _OK_HASH, ()) for name in _UNSAFE_NAMES]
    + [
        Account("van", "plaintext", ()),
        Account("van", "$7$101$AAAA$BB\nadmin:$7$1$A$B", ()),
        Account("van", "$7$101$AAAA$BB:x", ()),
    ],
)
def test_the_password_file_refuses_what_could_add_or_split_a_line(account: Account) -> None:
    with pytest.raises(ValueError):
        credentials.render_password_file([account])


@pytest.mark.parametrize(
    "account",
    [Account(name, _OK_HASH, ()) for name in _UNSAFE_NAMES]
    + [
        Account("van", _OK_HASH, (Grant(Access.WRITE, topic),))
        for topic in ("a b", "a\nuser admin", "a\x00", "")
    ],
)
def test_the_acl_file_refuses_what_could_add_a_line(account: Account) -> None:
    with pytest.raises(ValueError):
        credentials.render_acl_file([account])


def test_two_accounts_with_one_name_are_refused() -> None:
    twice = [Account("van", "$7$101$AAAA$BBBB", ())] * 2
    with pytest.raises(ValueError, match="two accounts"):
        credentials.render_acl_file(twice)


# --- the secured broker configuration -------------------------------------------------


def _directives(name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (DEPLOY / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            found.setdefault(key, []).append(value)
    return found


def test_the_secure_config_keeps_the_tested_configs_limits() -> None:
    tested, secure = _directives("mosquitto.conf"), _directives("mosquitto-secure.conf")
    for key, values in tested.items():
        if key not in ("listener", "allow_anonymous"):
            assert secure.get(key) == values, key


def test_the_secure_config_logs_everyone_in_and_encrypts_devices() -> None:
    secure = _directives("mosquitto-secure.conf")
    assert secure["allow_anonymous"] == ["false"]
    assert secure["per_listener_settings"] == ["false"]
    assert len(secure["password_file"]) == 1 and len(secure["acl_file"]) == 1
    assert secure["listener"] == ["1883 127.0.0.1", "8883"]
    assert secure["use_username_as_clientid"] == ["true", "true"]  # one per listener
    assert secure["certfile"] and secure["keyfile"]
