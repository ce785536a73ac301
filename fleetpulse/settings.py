"""Typed settings, read once at start-up from FLEETPULSE_* variables and CLI flags."""

from __future__ import annotations

import ipaddress
import re
import shlex
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fleetpulse.errors import ConfigError

ENV_PREFIX = "FLEETPULSE_"
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|[smhdw]?)\s*$")
# Milliseconds per unit; largest first, for printing.
_DURATION_UNITS = {
    "w": 604_800_000,
    "d": 86_400_000,
    "h": 3_600_000,
    "m": 60_000,
    "s": 1000,
    "ms": 1,
}


def parse_duration(text: str) -> timedelta:
    """'90d', '12h', '30m', '45s', '250ms' or plain seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"expected a duration such as 90d, 12h, 30m, 45s or 250ms, got {text!r}")
    return timedelta(milliseconds=int(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"])


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling that `parse_duration` reads back."""
    ms = value // timedelta(milliseconds=1)
    for unit, size in _DURATION_UNITS.items():
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return "0"


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise ValueError(
            f"must be greater than 0, got {value}"
            if minimum == 1
            else f"must be 0 or more, got {value}"
        )
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        parts = urlsplit(text)
        if parts.scheme not in schemes:
            raise ValueError(f"expected a {' or '.join(schemes)} URL, got {mask_url(text)!r}")
        if not parts.hostname and not parts.path.strip("/") and parts.scheme.startswith("mqtt"):
            raise ValueError(f"the URL names no host: {mask_url(text)!r}")
        return text

    return parse


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"must be a finite number 0 or more, got {text!r}")
    return value


def _optional_float(text: str) -> float | None:
    value = _non_negative_float(text)
    return value if value else None


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if not value:
        raise ValueError("must be greater than 0")
    return value


def _optional_path(text: str) -> str:
    if text and not Path(text).is_file():
        raise ValueError(f"no such file: {text!r}")
    return text


def _auth_backend(text: str) -> str:
    if text not in ("files", "dynsec"):
        raise ValueError(f"expected files or dynsec, got {text!r}")
    return text


def _optional_mqtt_url(text: str) -> str:
    return _url("mqtt", "mqtts")(text) if text else ""


def _optional_absolute_path(text: str) -> str:
    if text and not Path(text).is_absolute():
        raise ValueError(f"expected an absolute path, got {text!r}")
    return text


def _command(text: str) -> str:
    try:
        shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot split {text!r} into arguments: {exc}") from None
    return text


def _h3_resolution(text: str) -> int:
    value = _non_negative_int(text)
    if value > 15:
        raise ValueError(f"H3 resolutions are 0 to 15, got {value}")
    return value


def _topic_level(text: str) -> str:
    if not text.strip("/") or any(c in text for c in "+#\0"):
        raise ValueError(f"expected a topic without wildcards, got {text!r}")
    return text.strip("/")


def _name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", text):
        raise ValueError(f"expected 1-64 letters, digits, '_', '.', '-', got {text!r}")
    return text


def _share_group(text: str) -> str:
    """Empty: no shared subscription, for a lone ingester (see the option's help)."""
    return text if text == "" else _name(text)


def _time_zone(text: str) -> str:
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"expected an IANA time zone such as Europe/Lisbon, got {text!r}"
        ) from None
    return text


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"expected DEBUG, INFO, WARNING or ERROR, got {text!r}")
    return level


def _networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"expected an IP address or network, got {part!r}") from None
    return tuple(networks)


def _log_format(text: str) -> str:
    if text not in ("text", "json"):
        raise ValueError(f"expected text or json, got {text!r}")
    return text


def _host(text: str) -> str:
    if not text or any(c.isspace() or c in "/@" for c in text):
        raise ValueError(f"expected a host name or IP address, got {text!r}")
    return text


def _port(text: str) -> int:
    value = _whole_number(text, 1)
    if value > 65535:
        raise ValueError(f"ports are 1 to 65535, got {value}")
    return value


def _optional_http_url(text: str) -> str:
    return _url("http", "https")(text).rstrip("/") if text else ""


def _tile_template(text: str) -> str:
    if text and not all(part in text for part in ("{z}", "{x}", "{y}")):
        raise ValueError(f"expected a tile URL with {{z}}, {{x}} and {{y}}, got {text!r}")
    return _url("http", "https")(text) if text else ""


_QUERY_PASSWORD = re.compile(r"(?i)((?:^|&)password=)[^&]*")


def mask_url(url: str) -> str:
    """The URL with its password, in the user part or as libpq's `?password=`, as ***."""
    parts = urlsplit(url)
    if parts.password is None and not _QUERY_PASSWORD.search(parts.query):
        return url
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0]
        parts = parts._replace(netloc=f"{user}:***@{netloc[1]}")
    return urlunsplit(parts._replace(query=_QUERY_PASSWORD.sub(r"\1***", parts.query)))


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    mqtt_url: str
    topic_prefix: str
    owntracks_prefix: str
    share_group: str
    client_id: str
    max_fix_age: timedelta | None
    device_max_rate: float | None
    batch_size: int
    flush_interval: timedelta
    receive_maximum: int
    session_expiry: timedelta
    chunk_interval: timedelta
    retention: timedelta | None
    compress_after: timedelta | None
    partitions: int
    stream_maxlen: int
    tracker_index: int
    tracker_count: int
    offline_after: timedelta
    gap_after: timedelta
    stopped_speed_mps: float
    reorder_window: timedelta
    geofence_margin_m: float
    geofence_confirm_fixes: int
    max_speed_mps: float | None
    h3_fine_res: int
    h3_coarse_res: int
    timezone: str
    profile_window: timedelta
    profile_refresh: timedelta | None
    osm_pbf: str
    drone_cruise_speed_mps: float
    drone_cruise_alt_m: float
    drone_reserve_pct: float
    web_host: str
    web_port: int
    public_url: str
    basemap_url: str
    reveal_eta: timedelta
    reveal_stops: int
    public_rate_limit: int
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    ws_queue: int
    ws_slow_after: timedelta
    webhook_timeout: timedelta
    webhook_max_attempts: int
    webhook_backoff: timedelta
    mqtt_password_file: str
    mqtt_acl_file: str
    mqtt_pid_file: str
    mqtt_reload_cmd: str
    mqtt_auth_backend: str
    mqtt_admin_url: str
    log_level: str
    log_format: str

    @property
    def web_base_url(self) -> str:
        """Where people reach the web app: the public URL, else the listening address."""
        return self.public_url or f"http://{self.web_host}:{self.web_port}"

    def masked(self) -> dict[str, str]:
        """Every setting as text, passwords masked: what `fleetpulse config` prints."""
        out = {}
        for option in OPTIONS:
            value = getattr(self, option.field)
            out[option.env] = mask_url(value) if option.secret else _show(value)
        return out


def _show(value: Any) -> str:
    return "0 (off)" if value is None else setting_text(value)


def setting_text(value: Any) -> str:
    """A setting's value as the text `load_settings` reads back to the same value."""
    if value is None:  # an optional setting that is off
        return "0"
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


@dataclass(frozen=True)
class Option:
    field: str
    default: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False
    # The public name when it differs from the field (a unit suffix, say).
    name: str = ""

    @property
    def env(self) -> str:
        return ENV_PREFIX + (self.name or self.field).upper()

    @property
    def flag(self) -> str:
        return "--" + (self.name or self.field).replace("_", "-")


def _optional_duration(text: str) -> timedelta | None:
    value = parse_duration(text)
    return value if value else None


def _positive_duration(text: str) -> timedelta:
    value = parse_duration(text)
    if not value:
        raise ValueError("must be greater than 0")
    return value


OPTIONS: tuple[Option, ...] = (
    Option(
        "database_url",
        "postgresql://postgres@127.0.0.1:5432/fleetpulse",
        _url("postgresql", "postgres"),
        "PostgreSQL/TimescaleDB connection URL",
        secret=True,
    ),
    Option(
        "redis_url", "redis://127.0.0.1:6379/0", _url("redis", "rediss"), "Redis URL", secret=True
    ),
    Option(
        "mqtt_url",
        "mqtt://127.0.0.1:1883",
        _url("mqtt", "mqtts"),
        "broker URL, mqtt://user:password@host:port (mqtts:// for TLS)",
        secret=True,
    ),
    Option("topic_prefix", "fleet", _topic_level, "first topic level of device topics"),
    Option("owntracks_prefix", "owntracks", _topic_level, "topic prefix of OwnTracks phones"),
    Option(
        "share_group",
        "ingest",
        _share_group,
        "shared-subscription group the ingesters join; empty for a lone ingester: a plain"
        " subscription, which Mosquitto 2.0 keeps across its restart (a shared one it forgets)",
    ),
    Option(
        "client_id",
        f"fleetpulse-ingest-{socket.gethostname()}"[:64],
        _name,
        "MQTT client id of this ingester; unique per ingester, stable across restarts",
    ),
    Option(
        "max_fix_age",
        "604800",
        _optional_duration,
        "refuse fixes older than this at arrival, seconds (or 7d, 12h); 0 accepts any age",
        name="max_fix_age_s",
    ),
    Option(
        "device_max_rate",
        "10",
        _optional_float,
        "fixes per second of fix time one device may store, with a minute's burst; beyond"
        " it they are counted and quarantined as rate_limited (sampled); 0 off",
    ),
    Option("batch_size", "1000", _positive_int, "fixes per database write"),
    Option(
        "flush_interval",
        "100ms",
        _positive_duration,
        "longest wait before a partial batch is written",
    ),
    Option(
        "receive_maximum",
        "4000",
        _positive_int,
        "unacknowledged messages the broker may send us (MQTT v5 Receive Maximum)",
    ),
    Option(
        "session_expiry",
        "1d",
        _positive_duration,
        "how long the broker queues for an absent ingester",
    ),
    Option("chunk_interval", "1d", _positive_duration, "time span of one telemetry partition"),
    Option("retention", "90d", _optional_duration, "drop telemetry older than this; 0 keeps all"),
    Option(
        "compress_after",
        "7d",
        _optional_duration,
        "compress telemetry older than this (TimescaleDB only); 0 never",
    ),
    Option(
        "partitions",
        "16",
        _positive_int,
        "device partitions of the ingest-to-tracker hand-off; the same for every process",
    ),
    Option(
        "stream_maxlen",
        "10000",
        _positive_int,
        "entries kept per hand-off stream; a tracker further behind re-reads PostgreSQL",
    ),
    Option("tracker_index", "0", _non_negative_int, "this tracker's number, 0 .. count-1"),
    Option(
        "tracker_count",
        "1",
        _positive_int,
        "trackers sharing the partitions; tracker i owns the partitions p with p mod count = i",
    ),
    Option("offline_after", "5m", _positive_duration, "no fix for this long: offline event"),
    Option(
        "gap_after",
        "2m",
        _positive_duration,
        "a moving device silent this long raises a telemetry-gap event",
    ),
    Option("stopped_speed_mps", "0.5", _non_negative_float, "below this speed a device is stopped"),
    Option(
        "reorder_window",
        "5s",
        _optional_duration,
        "fixes wait this long per device to be evaluated in fix-time order; 0 none",
    ),
    Option(
        "geofence_margin_m",
        "0",
        _non_negative_float,
        "hysteresis: metres past a fence's boundary to count as entered or left; 0 off",
    ),
    Option(
        "geofence_confirm_fixes",
        "1",
        _positive_int,
        "hysteresis: consecutive fixes needed to enter or leave a fence; 1 off",
    ),
    Option(
        "max_speed_mps",
        "100",
        _optional_float,
        "outlier filter: a fix implying a faster speed is not evaluated; 0 off",
    ),
    Option("h3_fine_res", "9", _h3_resolution, "fine H3 resolution of live state"),
    Option("h3_coarse_res", "6", _h3_resolution, "coarse H3 resolution (shown to customers)"),
    Option(
        "timezone",
        "UTC",
        _time_zone,
        "the fleet's IANA time zone: delivery windows, speed profiles and reports",
    ),
    Option("profile_window", "28d", _positive_duration, "telemetry the speed profiles learn from"),
    Option(
        "profile_refresh",
        "1h",
        _optional_duration,
        "how often profiles are refreshed (rebuilt once a day); 0 never",
    ),
    Option(
        "osm_pbf",
        "",
        _optional_path,
        "an OpenStreetMap extract (.osm.pbf) to route on; empty estimates on the H3 grid",
    ),
    Option("drone_cruise_speed_mps", "10", _positive_float, "drones' cruise speed for ETAs"),
    Option("drone_cruise_alt_m", "60", _positive_float, "drones' cruise height above take-off"),
    Option(
        "drone_reserve_pct",
        "20",
        _non_negative_float,
        "battery a drone must still have on arrival, else a battery alert",
    ),
    Option("web_host", "127.0.0.1", _host, "address the web app listens on"),
    Option("web_port", "8080", _port, "port of the web app: REST API, websockets and pages"),
    Option(
        "public_url",
        "",
        _optional_http_url,
        "how people reach the web app (for printed links); empty: http://WEB_HOST:WEB_PORT",
    ),
    Option(
        "basemap_url",
        "",
        _tile_template,
        "XYZ tile URL template for the dispatch map ({z}/{x}/{y}); empty: roads from OSM_PBF",
    ),
    Option(
        "reveal_eta",
        "10m",
        _positive_duration,
        "customers see the exact position once the P50 ETA is below this",
    ),
    Option(
        "reveal_stops",
        "1",
        _non_negative_int,
        "... or once at most this many stops remain before theirs",
    ),
    Option(
        "public_rate_limit",
        "120",
        _positive_int,
        "requests per minute per client address on customer (token) endpoints, all workers",
    ),
    Option(
        "trusted_proxies",
        "",
        _networks,
        "comma-separated addresses/networks of our reverse proxies, whose X-Forwarded-For "
        "names the client (rate limits); empty: the peer is the client",
    ),
    Option("ws_queue", "1000", _positive_int, "messages queued per websocket client"),
    Option(
        "ws_slow_after",
        "10s",
        _positive_duration,
        "a websocket client whose queue stays full this long is disconnected",
    ),
    Option("webhook_timeout", "10s", _positive_duration, "time one webhook request may take"),
    Option(
        "webhook_max_attempts",
        "8",
        _positive_int,
        "attempts (with backoff) before a webhook delivery is dead-lettered",
    ),
    Option(
        "webhook_backoff",
        "30s",
        _positive_duration,
        "wait before a failed webhook delivery's first retry; doubles each time, at most 6h",
    ),
    Option(
        "mqtt_password_file",
        "",
        _optional_absolute_path,
        "Mosquitto password file `fleetpulse devices` writes; empty: none written",
    ),
    Option(
        "mqtt_acl_file",
        "",
        _optional_absolute_path,
        "Mosquitto ACL file `fleetpulse devices` writes, with the password file",
    ),
    Option(
        "mqtt_pid_file",
        "",
        _optional_absolute_path,
        "the broker's pid file: it gets SIGHUP to reload the files after a change",
    ),
    Option(
        "mqtt_reload_cmd",
        "",
        _command,
        "command that reloads the broker instead (systemctl reload mosquitto); no shell",
    ),
    Option(
        "mqtt_auth_backend",
        "files",
        _auth_backend,
        "where `fleetpulse devices` puts broker accounts: files (Mosquitto's password and"
        " ACL files) or dynsec (Mosquitto's dynamic security plugin, which also refuses"
        " a device's SUBSCRIBE outside its rights)",
    ),
    Option(
        "mqtt_admin_url",
        "",
        _optional_mqtt_url,
        "dynsec: mqtt://user:password@host:port of the plugin's administrator, for"
        " `fleetpulse devices` only (not the ingesters' MQTT_URL)",
        secret=True,
    ),
    Option("log_level", "INFO", _log_level, "DEBUG, INFO, WARNING or ERROR"),
    Option("log_format", "text", _log_format, "text, or json for one JSON object per line"),
)


def load_settings(
    env: Mapping[str, str], overrides: Mapping[str, str | None] | None = None
) -> Settings:
    """Settings from CLI overrides (by field name), then the environment, then defaults."""
    overrides = overrides or {}
    values: dict[str, Any] = {}
    for option in OPTIONS:
        override = overrides.get(option.field)
        source, text = (
            (option.flag, override) if override is not None else (option.env, env.get(option.env))
        )
        if text is None:
            source, text = option.env, option.default
        try:
            values[option.field] = option.parse(text)
        except ValueError as exc:
            raise ConfigError(source, str(exc)) from None
    settings = Settings(**values)
    _check_consistency(settings)
    return settings


def _check_consistency(settings: Settings) -> None:
    if settings.receive_maximum > 65535:
        raise ConfigError("FLEETPULSE_RECEIVE_MAXIMUM", "MQTT allows at most 65535")
    if settings.receive_maximum < 2 * settings.batch_size:
        raise ConfigError(
            "FLEETPULSE_RECEIVE_MAXIMUM",
            f"must be at least twice FLEETPULSE_BATCH_SIZE ({2 * settings.batch_size}) so "
            "that messages keep arriving while a batch is written",
        )
    if settings.chunk_interval < timedelta(hours=1):
        raise ConfigError("FLEETPULSE_CHUNK_INTERVAL", "must be at least 1h")
    if settings.tracker_index >= settings.tracker_count:
        raise ConfigError(
            "FLEETPULSE_TRACKER_INDEX",
            f"must be below FLEETPULSE_TRACKER_COUNT ({settings.tracker_count})",
        )
    if settings.tracker_count > settings.partitions:
        raise ConfigError(
            "FLEETPULSE_TRACKER_COUNT",
            f"more trackers than FLEETPULSE_PARTITIONS ({settings.partitions}) would idle",
        )
    if settings.h3_coarse_res >= settings.h3_fine_res:
        raise ConfigError("FLEETPULSE_H3_COARSE_RES", "must be coarser (lower) than the fine one")
    if settings.retention is not None and settings.retention < settings.chunk_interval:
        raise ConfigError("FLEETPULSE_RETENTION", "must be 0 or at least one chunk interval")
    if bool(settings.mqtt_password_file) != bool(settings.mqtt_acl_file):
        raise ConfigError(
            "FLEETPULSE_MQTT_ACL_FILE", "set both MQTT_PASSWORD_FILE and MQTT_ACL_FILE, or neither"
        )
    if settings.mqtt_pid_file and settings.mqtt_reload_cmd:
        raise ConfigError("FLEETPULSE_MQTT_RELOAD_CMD", "set MQTT_PID_FILE or this, not both")
    if settings.mqtt_auth_backend == "dynsec" and settings.mqtt_password_file:
        raise ConfigError(
            "FLEETPULSE_MQTT_PASSWORD_FILE",
            "belongs to MQTT_AUTH_BACKEND=files; the dynamic security plugin keeps its"
            " accounts itself: unset it and MQTT_ACL_FILE",
        )
