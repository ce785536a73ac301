"""fleetpulse.settings: defaults, environment, CLI flags, and one clear line per bad value."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from datetime import timedelta

import pytest

from fleetpulse.errors import ConfigError
from fleetpulse.settings import (
    OPTIONS,
    Settings,
    format_duration,
    load_settings,
    mask_url,
    parse_duration,
)

ENV_NAMES = {o.field: o.env for o in OPTIONS}
FLAGS = {o.field: o.flag for o in OPTIONS}


def env(**values: str) -> dict[str, str]:
    return {ENV_NAMES[k]: v for k, v in values.items()}


def config_error(
    environ: dict[str, str], overrides: dict[str, str | None] | None = None
) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        load_settings(environ, overrides)
    return exc.value


# --- defaults, environment, flags ---------------------------------------------------------


def test_defaults() -> None:
    s = load_settings({})
    assert s.database_url == "postgresql://postgres@127.0.0.1:5432/fleetpulse"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.mqtt_url == "mqtt://127.0.0.1:1883"
    assert s.topic_prefix == "fleet"
    assert s.owntracks_prefix == "owntracks"
    assert s.share_group == "ingest"
    assert s.client_id == f"fleetpulse-ingest-{socket.gethostname()}"[:64]
    assert s.max_fix_age == timedelta(days=7)
    assert s.batch_size == 1000
    assert s.flush_interval == timedelta(milliseconds=100)
    assert s.receive_maximum == 4000
    assert s.receive_maximum >= 2 * s.batch_size
    assert s.session_expiry == timedelta(days=1)
    assert s.chunk_interval == timedelta(days=1)
    assert s.retention == timedelta(days=90)
    assert s.compress_after == timedelta(days=7)
    assert s.log_level == "INFO"


def test_every_setting_has_an_environment_variable_and_a_flag() -> None:
    assert {o.env for o in OPTIONS} == {
        "FLEETPULSE_DATABASE_URL",
        "FLEETPULSE_REDIS_URL",
        "FLEETPULSE_MQTT_URL",
        "FLEETPULSE_TOPIC_PREFIX",
        "FLEETPULSE_OWNTRACKS_PREFIX",
        "FLEETPULSE_SHARE_GROUP",
        "FLEETPULSE_CLIENT_ID",
        "FLEETPULSE_MAX_FIX_AGE_S",
        "FLEETPULSE_BATCH_SIZE",
        "FLEETPULSE_FLUSH_INTERVAL",
        "FLEETPULSE_RECEIVE_MAXIMUM",
        "FLEETPULSE_SESSION_EXPIRY",
        "FLEETPULSE_CHUNK_INTERVAL",
        "FLEETPULSE_RETENTION",
        "FLEETPULSE_COMPRESS_AFTER",
        "FLEETPULSE_PARTITIONS",
        "FLEETPULSE_STREAM_MAXLEN",
        "FLEETPULSE_TRACKER_INDEX",
        "FLEETPULSE_TRACKER_COUNT",
        "FLEETPULSE_OFFLINE_AFTER",
        "FLEETPULSE_GAP_AFTER",
        "FLEETPULSE_STOPPED_SPEED_MPS",
        "FLEETPULSE_REORDER_WINDOW",
        "FLEETPULSE_GEOFENCE_MARGIN_M",
        "FLEETPULSE_GEOFENCE_CONFIRM_FIXES",
        "FLEETPULSE_MAX_SPEED_MPS",
        "FLEETPULSE_H3_FINE_RES",
        "FLEETPULSE_H3_COARSE_RES",
        "FLEETPULSE_TIMEZONE",
        "FLEETPULSE_PROFILE_WINDOW",
        "FLEETPULSE_PROFILE_REFRESH",
        "FLEETPULSE_OSM_PBF",
        "FLEETPULSE_DRONE_CRUISE_SPEED_MPS",
        "FLEETPULSE_DRONE_CRUISE_ALT_M",
        "FLEETPULSE_DRONE_RESERVE_PCT",
        "FLEETPULSE_DEVICE_MAX_RATE",
        "FLEETPULSE_WEB_HOST",
        "FLEETPULSE_WEB_PORT",
        "FLEETPULSE_PUBLIC_URL",
        "FLEETPULSE_BASEMAP_URL",
        "FLEETPULSE_REVEAL_ETA",
        "FLEETPULSE_REVEAL_STOPS",
        "FLEETPULSE_PUBLIC_RATE_LIMIT",
        "FLEETPULSE_TRUSTED_PROXIES",
        "FLEETPULSE_WS_QUEUE",
        "FLEETPULSE_WS_SLOW_AFTER",
        "FLEETPULSE_WEBHOOK_TIMEOUT",
        "FLEETPULSE_WEBHOOK_MAX_ATTEMPTS",
        "FLEETPULSE_WEBHOOK_BACKOFF",
        "FLEETPULSE_MQTT_PASSWORD_FILE",
        "FLEETPULSE_MQTT_ACL_FILE",
        "FLEETPULSE_MQTT_PID_FILE",
        "FLEETPULSE_MQTT_RELOAD_CMD",
        "FLEETPULSE_MQTT_AUTH_BACKEND",
        "FLEETPULSE_MQTT_ADMIN_URL",
        "FLEETPULSE_LOG_LEVEL",
        "FLEETPULSE_LOG_FORMAT",
    }
    assert {o.field for o in OPTIONS} == set(Settings.__dataclass_fields__)
    by_field = {o.field: o for o in OPTIONS}
    assert by_field["max_fix_age"].flag == "--max-fix-age-s"
    assert by_field["batch_size"].flag == "--batch-size"


def test_environment_overrides() -> None:
    s = load_settings(
        env(
            database_url="postgresql://fp:pw@db.example:5433/fp",
            redis_url="rediss://:pw@cache:6380/2",
            mqtt_url="mqtts://ingest:secret@broker.example:8883",
            topic_prefix="acme/fleet",
            owntracks_prefix="/ot/",
            share_group="grp.1",
            client_id="ingest-a",
            max_fix_age="12h",
            batch_size="500",
            flush_interval="250ms",
            receive_maximum="1000",
            session_expiry="2d",
            chunk_interval="6h",
            retention="30d",
            compress_after="2d",
            partitions="32",
            stream_maxlen="5000",
            tracker_index="3",
            tracker_count="4",
            offline_after="90s",
            gap_after="1m",
            stopped_speed_mps="0.8",
            reorder_window="0",
            geofence_margin_m="7.5",
            geofence_confirm_fixes="2",
            max_speed_mps="0",
            h3_fine_res="10",
            h3_coarse_res="5",
            timezone="Europe/Lisbon",
            profile_window="14d",
            profile_refresh="0",
            osm_pbf=__file__,
            drone_cruise_speed_mps="12.5",
            drone_cruise_alt_m="80",
            drone_reserve_pct="25",
            log_level="debug",
            web_port="9090",
            public_url="https://fleet.example/",
            trusted_proxies="10.0.0.0/8, 192.0.2.1",
            reveal_eta="5m",
            log_format="json",
        )
    )
    assert s == dataclasses.replace(
        load_settings({}),
        database_url="postgresql://fp:pw@db.example:5433/fp",
        redis_url="rediss://:pw@cache:6380/2",
        mqtt_url="mqtts://ingest:secret@broker.example:8883",
        topic_prefix="acme/fleet",
        owntracks_prefix="ot",
        share_group="grp.1",
        client_id="ingest-a",
        max_fix_age=timedelta(hours=12),
        batch_size=500,
        flush_interval=timedelta(milliseconds=250),
        receive_maximum=1000,
        session_expiry=timedelta(days=2),
        chunk_interval=timedelta(hours=6),
        retention=timedelta(days=30),
        compress_after=timedelta(days=2),
        partitions=32,
        stream_maxlen=5000,
        tracker_index=3,
        tracker_count=4,
        offline_after=timedelta(seconds=90),
        gap_after=timedelta(minutes=1),
        stopped_speed_mps=0.8,
        reorder_window=None,
        geofence_margin_m=7.5,
        geofence_confirm_fixes=2,
        max_speed_mps=None,
        h3_fine_res=10,
        h3_coarse_res=5,
        timezone="Europe/Lisbon",
        profile_window=timedelta(days=14),
        profile_refresh=None,
        osm_pbf=__file__,
        drone_cruise_speed_mps=12.5,
        drone_cruise_alt_m=80.0,
        drone_reserve_pct=25.0,
        log_level="DEBUG",
        web_port=9090,
        public_url="https://fleet.example",
        trusted_proxies=(
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("192.0.2.1/32"),
        ),
        reveal_eta=timedelta(minutes=5),
        log_format="json",
    )
    assert s.web_base_url == "https://fleet.example"


def test_unrelated_environment_is_ignored() -> None:
    s = load_settings({"BATCH_SIZE": "x", "FLEETPULSE": "x", "fleetpulse_batch_size": "7"})
    assert s.batch_size == 1000


def test_cli_overrides_win_over_environment() -> None:
    s = load_settings(
        env(batch_size="500", topic_prefix="env", max_fix_age="1d"),
        {"batch_size": "250", "topic_prefix": "flag", "max_fix_age": None},
    )
    assert s.batch_size == 250
    assert s.topic_prefix == "flag"
    # An override of None is "not given": the environment applies.
    assert s.max_fix_age == timedelta(days=1)


def test_cli_overrides_win_over_defaults() -> None:
    assert load_settings({}, {"share_group": "g2"}).share_group == "g2"


def test_an_empty_share_group_means_a_plain_subscription() -> None:
    assert load_settings({"FLEETPULSE_SHARE_GROUP": ""}).share_group == ""


# --- durations and the zero that means "off" ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90d", timedelta(days=90)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        ("45s", timedelta(seconds=45)),
        ("250ms", timedelta(milliseconds=250)),
        ("2w", timedelta(weeks=2)),
        ("45", timedelta(seconds=45)),  # plain seconds
        ("0", timedelta(0)),
        ("0ms", timedelta(0)),
        (" 7d ", timedelta(days=7)),
        ("7 d", timedelta(days=7)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "d", "-1d", "1.5h", "7days", "1y", "12H", "1h30m", "abc"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(days=90), "90d"),
        (timedelta(days=14), "2w"),
        (timedelta(hours=12), "12h"),
        (timedelta(hours=36), "36h"),
        (timedelta(minutes=90), "90m"),
        (timedelta(seconds=3600), "1h"),
        (timedelta(seconds=61), "61s"),
        (timedelta(milliseconds=250), "250ms"),
        (timedelta(milliseconds=1500), "1500ms"),
        (timedelta(0), "0"),
    ],
)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


@pytest.mark.parametrize("text", ["90d", "12h", "250ms", "0", "1w", "100ms", "86401s", "7d"])
def test_duration_round_trip(text: str) -> None:
    value = parse_duration(text)
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize("field", ["retention", "max_fix_age", "compress_after"])
@pytest.mark.parametrize("zero", ["0", "0s", "0ms", "0d"])
def test_zero_turns_off(field: str, zero: str) -> None:
    s = load_settings(env(**{field: zero}))
    assert getattr(s, field) is None
    assert s.masked()[ENV_NAMES[field]] == "0 (off)"


@pytest.mark.parametrize("field", ["flush_interval", "session_expiry", "chunk_interval"])
def test_zero_is_refused_where_it_cannot_mean_off(field: str) -> None:
    error = config_error(env(**{field: "0"}))
    assert error.setting == f"FLEETPULSE_{field.upper()}"
    assert str(error) == f"FLEETPULSE_{field.upper()}: must be greater than 0"


# --- bad values ---------------------------------------------------------------------------

BAD_VALUES = [
    ("database_url", "mysql://db/fleet"),
    ("database_url", ""),
    ("database_url", "127.0.0.1:5432"),
    ("redis_url", "http://cache:6379"),
    ("mqtt_url", "tcp://broker:1883"),
    ("mqtt_url", "mqtt://"),
    ("mqtt_url", "broker:1883"),
    ("topic_prefix", "fleet/+"),
    ("topic_prefix", "fleet/#"),
    ("topic_prefix", "/"),
    ("topic_prefix", ""),
    ("owntracks_prefix", "own+tracks"),
    ("web_port", "70000"),
    ("web_port", "http"),
    ("web_host", "a b"),
    ("public_url", "fleet.example"),
    ("basemap_url", "https://tiles.example/tile.png"),
    ("trusted_proxies", "10.0.0.0/8,proxy"),
    ("reveal_eta", "0"),
    ("ws_queue", "0"),
    ("log_format", "xml"),
    ("share_group", "a b"),
    ("share_group", "g/1"),
    ("share_group", "x" * 65),
    ("client_id", "has space"),
    ("client_id", "c" * 65),
    ("max_fix_age", "7 days"),
    ("max_fix_age", "-1d"),
    ("batch_size", "0"),
    ("batch_size", "-5"),
    ("batch_size", "ten"),
    ("batch_size", "1.5"),
    ("batch_size", ""),
    ("flush_interval", "soon"),
    ("receive_maximum", "0"),
    ("receive_maximum", "lots"),
    ("session_expiry", "1y"),
    ("chunk_interval", "1 day"),
    ("retention", "forever"),
    ("compress_after", "x"),
    ("log_level", "verbose"),
    ("log_level", "CRITICAL"),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_bad_environment_value_names_the_variable(field: str, value: str) -> None:
    name = ENV_NAMES[field]
    error = config_error(env(**{field: value}))
    assert error.setting == name
    assert str(error).startswith(f"{name}: ")
    assert "\n" not in str(error)
    assert len(str(error)) > len(name) + 2


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_bad_flag_value_names_the_flag(field: str, value: str) -> None:
    flag = FLAGS[field]
    # A good value in the environment does not hide the bad flag.
    error = config_error({}, {field: value})
    assert error.setting == flag
    assert str(error).startswith(f"{flag}: ")


def test_bad_environment_value_is_not_reported_when_a_flag_replaces_it() -> None:
    s = load_settings(env(batch_size="ten"), {"batch_size": "10", "receive_maximum": "20"})
    assert s.batch_size == 10


def test_bad_value_messages() -> None:
    assert str(config_error(env(batch_size="ten"))) == (
        "FLEETPULSE_BATCH_SIZE: expected a whole number, got 'ten'"
    )
    assert str(config_error(env(batch_size="0"))) == (
        "FLEETPULSE_BATCH_SIZE: must be greater than 0, got 0"
    )
    assert str(config_error(env(log_level="loud"))) == (
        "FLEETPULSE_LOG_LEVEL: expected DEBUG, INFO, WARNING or ERROR, got 'loud'"
    )


def test_bad_url_message_masks_the_password() -> None:
    error = config_error(env(mqtt_url="http://ingest:s3cret@broker:1883"))
    assert error.setting == "FLEETPULSE_MQTT_URL"
    assert "s3cret" not in str(error)
    assert "ingest:***@broker:1883" in str(error)


@pytest.mark.parametrize(
    "url",
    ["postgresql:///fleetpulse", "postgres://u@h/db", "postgresql://u:p@h:5433/db?sslmode=require"],
)
def test_good_database_urls(url: str) -> None:
    assert load_settings(env(database_url=url)).database_url == url


# --- consistency --------------------------------------------------------------------------


def test_receive_maximum_must_be_twice_the_batch() -> None:
    error = config_error(env(batch_size="1000", receive_maximum="1999"))
    assert error.setting == "FLEETPULSE_RECEIVE_MAXIMUM"
    assert "2000" in str(error)
    assert load_settings(env(batch_size="1000", receive_maximum="2000")).receive_maximum == 2000


def test_receive_maximum_refused_when_batch_size_grows_past_it() -> None:
    # The default receive maximum (4000) is too small for a batch of 2001.
    error = config_error(env(batch_size="2001"))
    assert error.setting == "FLEETPULSE_RECEIVE_MAXIMUM"
    error = config_error({}, {"batch_size": "5000"})
    assert "FLEETPULSE_RECEIVE_MAXIMUM" in str(error)


def test_receive_maximum_at_most_65535() -> None:
    assert load_settings(env(receive_maximum="65535")).receive_maximum == 65535
    error = config_error(env(receive_maximum="65536"))
    assert error.setting == "FLEETPULSE_RECEIVE_MAXIMUM"


def test_chunk_interval_at_least_an_hour() -> None:
    assert load_settings(env(chunk_interval="1h")).chunk_interval == timedelta(hours=1)
    assert config_error(env(chunk_interval="59m")).setting == "FLEETPULSE_CHUNK_INTERVAL"


def test_retention_at_least_one_chunk() -> None:
    error = config_error(env(chunk_interval="7d", retention="6d"))
    assert error.setting == "FLEETPULSE_RETENTION"
    assert load_settings(env(chunk_interval="7d", retention="7d")).retention == timedelta(days=7)
    assert load_settings(env(chunk_interval="7d", retention="0")).retention is None


# --- masking ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("mqtt://ingest:s3cret@broker:1883", "mqtt://ingest:***@broker:1883"),
        (
            "postgresql://fp:pw@db:5432/fp?sslmode=require",
            "postgresql://fp:***@db:5432/fp?sslmode=require",
        ),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("mqtt://u:p%40ss@broker", "mqtt://u:***@broker"),
        ("mqtt://u:p@ss@broker", "mqtt://u:***@broker"),
        ("mqtt://u:@broker", "mqtt://u:***@broker"),
        ("mqtt://ingest@broker:1883", "mqtt://ingest@broker:1883"),
        ("mqtt://broker:1883", "mqtt://broker:1883"),
        ("postgresql:///fleetpulse", "postgresql:///fleetpulse"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_url_hides_a_password_given_as_a_query_parameter() -> None:
    # libpq reads the password from ?password=... too.
    masked = mask_url("postgresql://fp@db:5432/fleetpulse?password=s3cret&sslmode=require")
    assert "s3cret" not in masked


def test_masked_settings() -> None:
    s = load_settings(
        env(
            database_url="postgresql://fp:dbpass@db/fp",
            redis_url="redis://:redispass@cache:6379/0",
            mqtt_url="mqtt://ingest:mqttpass@broker:1883",
            max_fix_age="0",
            flush_interval="250ms",
            retention="90d",
        )
    )
    shown = s.masked()
    assert list(shown) == [o.env for o in OPTIONS]
    assert shown["FLEETPULSE_DATABASE_URL"] == "postgresql://fp:***@db/fp"
    assert shown["FLEETPULSE_REDIS_URL"] == "redis://:***@cache:6379/0"
    assert shown["FLEETPULSE_MQTT_URL"] == "mqtt://ingest:***@broker:1883"
    assert shown["FLEETPULSE_MAX_FIX_AGE_S"] == "0 (off)"
    assert shown["FLEETPULSE_FLUSH_INTERVAL"] == "250ms"
    assert shown["FLEETPULSE_RETENTION"] == "90d"
    assert shown["FLEETPULSE_BATCH_SIZE"] == "1000"
    text = "\n".join(shown.values())
    for secret in ("dbpass", "redispass", "mqttpass"):
        assert secret not in text


def test_masked_values_load_back_to_the_same_settings() -> None:
    s = load_settings(env(retention="0", max_fix_age="36h", flush_interval="1500ms"))
    shown = s.masked()
    plain = {k: v.replace(" (off)", "") for k, v in shown.items()}
    assert load_settings(plain) == s
