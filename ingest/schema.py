"""The one schema module: versioned migrations for both storage modes.

`timescaledb` mode: telemetry is a hypertable with compression and retention policies.
`plain` mode (PostgreSQL without the extension): telemetry is natively range-partitioned
on fix time; `ingest.partitions` creates partitions ahead and drops expired ones, so the
chunk interval and retention settings mean the same thing in both modes.
The mode is chosen once, when the schema is first created, and recorded.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from psycopg import sql

from fleetpulse.database import Conn
from fleetpulse.errors import SchemaError

log = logging.getLogger(__name__)


class StorageMode(enum.StrEnum):
    TIMESCALEDB = "timescaledb"
    PLAIN = "plain"


# Columns of a stored fix, in COPY order. Conflict detection compares all but received_at.
TELEMETRY_COLUMNS = (
    "device_id",
    "ts",
    "lat",
    "lon",
    "alt",
    "rel_alt",
    "speed",
    "heading",
    "acc",
    "battery",
    "kind",
    "seq",
    "received_at",
)
TELEMETRY_TYPES = (
    "text",
    "timestamptz",
    "float8",
    "float8",
    "float4",
    "float4",
    "float4",
    "float4",
    "float4",
    "float4",
    "text",
    "int8",
    "timestamptz",
)
CONTENT_COLUMNS = TELEMETRY_COLUMNS[:-1]

_TELEMETRY_DDL = """
CREATE TABLE telemetry (
    device_id   text             NOT NULL,
    ts          timestamptz      NOT NULL,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    alt         real,
    rel_alt     real,
    speed       real,
    heading     real,
    acc         real,
    battery     real,
    kind        text,
    seq         bigint,
    received_at timestamptz      NOT NULL,
    PRIMARY KEY (device_id, ts)
)"""

_V1_COMMON = """
CREATE TABLE quarantine (
    id           bigserial   PRIMARY KEY,
    received_at  timestamptz NOT NULL,
    topic        text        NOT NULL,
    device_id    text,
    reason       text        NOT NULL,
    detail       text        NOT NULL,
    payload      bytea       NOT NULL,
    payload_size integer     NOT NULL
);
CREATE INDEX quarantine_reason_idx ON quarantine (reason, received_at);
CREATE INDEX quarantine_received_idx ON quarantine (received_at);

CREATE TABLE devices (
    device_id         text        PRIMARY KEY,
    kind              text,
    first_seen        timestamptz NOT NULL,
    last_seen         timestamptz NOT NULL,
    last_fix_ts       timestamptz,
    status            text,
    status_changed_at timestamptz
);

CREATE TABLE device_status_changes (
    id         bigserial   PRIMARY KEY,
    device_id  text        NOT NULL,
    status     text        NOT NULL,
    changed_at timestamptz NOT NULL
);
CREATE INDEX device_status_changes_device_idx ON device_status_changes (device_id, changed_at);

CREATE TABLE ingest_counters (
    name  text   PRIMARY KEY,
    value bigint NOT NULL
);
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Conn, StorageMode], Awaitable[None]]


async def _v1_initial(conn: Conn, mode: StorageMode) -> None:
    if mode is StorageMode.TIMESCALEDB:
        await conn.execute(_TELEMETRY_DDL)
        await conn.execute(
            "SELECT create_hypertable('telemetry', 'ts', chunk_time_interval => INTERVAL '1 day')"
        )
        await conn.execute(
            "ALTER TABLE telemetry SET (timescaledb.compress,"
            " timescaledb.compress_segmentby = 'device_id',"
            " timescaledb.compress_orderby = 'ts DESC')"
        )
    else:
        await conn.execute(_TELEMETRY_DDL + " PARTITION BY RANGE (ts)")
    await conn.execute(_V1_COMMON)


_V2_TRACKER = """
-- Groups a fence can be limited to (a depot's vans, a client's drones).
ALTER TABLE devices ADD COLUMN groups text[] NOT NULL DEFAULT '{}';

CREATE TABLE fences (
    id         text        PRIMARY KEY,
    name       text        NOT NULL,
    feature    jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE events (
    id          text             NOT NULL,
    device_id   text             NOT NULL,
    kind        text             NOT NULL,
    ts          timestamptz      NOT NULL,
    fence_id    text,
    lat         double precision,
    lon         double precision,
    alt         real,
    detail      text             NOT NULL DEFAULT '',
    recorded_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (id, ts)
);
CREATE INDEX events_device_idx ON events (device_id, ts);
CREATE INDEX events_fence_idx ON events (fence_id, ts) WHERE fence_id IS NOT NULL;
CREATE INDEX events_kind_idx ON events (kind, ts);

-- Where each tracker partition stands: the last hand-off entry it applied, the arrival
-- time up to which it has seen telemetry, and its engines' state, all written together.
CREATE TABLE tracker_checkpoints (
    partition    integer     PRIMARY KEY,
    stream_id    text        NOT NULL,
    watermark    timestamptz,
    redis_epoch  text        NOT NULL,
    state        bytea       NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Re-reading telemetry by arrival time after Redis lost the hand-off; BRIN because
-- arrival time follows insertion order and the index must cost ingest almost nothing.
CREATE INDEX telemetry_received_brin ON telemetry USING brin (received_at);
"""


async def _v2_tracker(conn: Conn, mode: StorageMode) -> None:
    await conn.execute(_V2_TRACKER)
    if mode is StorageMode.TIMESCALEDB:
        await conn.execute(
            "SELECT create_hypertable('events', 'ts', chunk_time_interval => INTERVAL '7 days')"
        )


_V3_DELIVERIES = """
ALTER TABLE events ADD COLUMN delivery_id text;
CREATE INDEX events_delivery_idx ON events (delivery_id, ts) WHERE delivery_id IS NOT NULL;

CREATE TABLE deliveries (
    id               text             PRIMARY KEY,
    vehicle_id       text             NOT NULL,
    dest_lat         double precision NOT NULL CHECK (dest_lat BETWEEN -90 AND 90),
    dest_lon         double precision NOT NULL CHECK (dest_lon BETWEEN -180 AND 180),
    drop_radius_m    real             NOT NULL DEFAULT 50 CHECK (drop_radius_m > 0),
    drop_zone        jsonb,
    window_start     timestamptz      NOT NULL,
    window_end       timestamptz      NOT NULL,
    service_type     text             NOT NULL DEFAULT 'standard',
    sequence         integer          NOT NULL DEFAULT 0,
    service_s        real             NOT NULL DEFAULT 120 CHECK (service_s >= 0),
    state            text             NOT NULL DEFAULT 'scheduled',
    late_risk        boolean          NOT NULL DEFAULT false,
    -- The customer's tracking token is shown once; only its hash is kept.
    token_hash       text             NOT NULL UNIQUE,
    token_expires_at timestamptz      NOT NULL,
    created_at       timestamptz      NOT NULL DEFAULT now(),
    updated_at       timestamptz      NOT NULL DEFAULT now(),
    CHECK (window_end > window_start)
);
CREATE INDEX deliveries_vehicle_idx ON deliveries (vehicle_id, sequence)
    WHERE state NOT IN ('delivered', 'failed', 'cancelled');
CREATE INDEX deliveries_updated_idx ON deliveries (updated_at);

-- Every ETA published, and the arrival it turned out to have: the deployment's own accuracy.
CREATE TABLE eta_predictions (
    delivery_id  text             NOT NULL,
    predicted_at timestamptz      NOT NULL,
    vehicle_id   text             NOT NULL,
    lat          double precision NOT NULL,
    lon          double precision NOT NULL,
    p50          timestamptz      NOT NULL,
    p90          timestamptz      NOT NULL,
    method       text             NOT NULL,
    -- The model's own figures, so that residuals can be learned again after a restart.
    travel_s     real,
    service_s    real,
    straight_m   real,
    arrived_at   timestamptz,
    PRIMARY KEY (delivery_id, predicted_at)
);
"""


async def _v3_deliveries(conn: Conn, mode: StorageMode) -> None:
    await conn.execute(_V3_DELIVERIES)


_V4_PROFILES = """
-- Learned from the fleet's own telemetry by `fleetpulse profiles rebuild` (and hourly):
-- sums and counts, so that the mean is exact and rows of rebuilds could be added up.
CREATE TABLE speed_profiles (
    cell         bigint           NOT NULL,  -- H3 cell, resolution 9, integer form
    hour_of_week smallint         NOT NULL CHECK (hour_of_week BETWEEN 0 AND 167),
    sum_speed    double precision NOT NULL,  -- m/s summed over the samples
    samples      bigint           NOT NULL,
    PRIMARY KEY (cell, hour_of_week)
);
CREATE TABLE detour_factors (
    area          bigint           NOT NULL,  -- H3 cell, resolution 7
    band          smallint         NOT NULL,  -- straight-line distance band
    sum_log_ratio double precision NOT NULL,
    samples       bigint           NOT NULL,
    PRIMARY KEY (area, band)
);
"""


async def _v4_profiles(conn: Conn, mode: StorageMode) -> None:
    await conn.execute(_V4_PROFILES)


_V5_WEB = """
-- Bearer tokens of dispatch users and integrations; only a hash of each is kept.
CREATE TABLE api_tokens (
    id           text        PRIMARY KEY,  -- public handle, shown in lists and the audit log
    name         text        NOT NULL,
    role         text        NOT NULL CHECK (role IN ('viewer', 'dispatcher', 'admin')),
    token_hash   text        NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz
);

-- Who changed fences, deliveries and tokens, and how.
CREATE TABLE audit_log (
    id     bigserial   PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    actor  text        NOT NULL,  -- a token id, or 'cli' for the command line
    action text        NOT NULL,  -- fence.create, delivery.update, token.revoke, ...
    target text        NOT NULL,
    detail jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at_idx ON audit_log (at);

-- A dispatcher's acknowledgement of an alert (an event), once per event.
CREATE TABLE alert_acks (
    event_id text        PRIMARY KEY,
    acked_by text        NOT NULL,
    acked_at timestamptz NOT NULL DEFAULT now(),
    note     text        NOT NULL DEFAULT ''
);

-- Websocket clients that reconnect ask for the events stored since the last one they saw.
CREATE INDEX events_recorded_idx ON events (recorded_at);
"""


async def _v5_web(conn: Conn, mode: StorageMode) -> None:
    await conn.execute(_V5_WEB)


_V6_WEBHOOKS = """
-- Integrators' HTTP endpoints and the event kinds each wants (empty: every kind).
CREATE TABLE webhook_subscriptions (
    id          text        PRIMARY KEY,
    url         text        NOT NULL CHECK (url ~* '^https?://'),
    kinds       text[]      NOT NULL DEFAULT '{}',
    secret      text        NOT NULL,  -- signs each request; shown once, at creation
    active      boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    description text        NOT NULL DEFAULT ''
);

-- The outbox: one row per (subscription, event), written in the transaction that stores
-- the event, so an event is either stored and queued for every subscriber, or neither.
CREATE TABLE webhook_deliveries (
    id              bigserial   PRIMARY KEY,  -- X-FleetPulse-Delivery: receivers dedupe on it
    subscription_id text        NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    event_id        text        NOT NULL,
    event_kind      text        NOT NULL,
    payload         jsonb       NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- A sender owns a row until then; another may take it over only after.
    leased_until    timestamptz,
    last_status     integer,  -- the receiver's last HTTP status; NULL: no answer
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (subscription_id, event_id)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_listing_idx ON webhook_deliveries (subscription_id, status, id);

-- Runs only for rows really inserted: save_events' ON CONFLICT DO NOTHING skips it for an
-- event stored again, so a replayed event is not queued twice. A row trigger, because
-- TimescaleDB hypertables support those (not statement triggers with transition tables).
CREATE FUNCTION webhook_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (subscription_id, event_id, event_kind, payload)
    SELECT s.id, NEW.id, NEW.kind, jsonb_build_object(
        'id', NEW.id,
        'device_id', NEW.device_id,
        'kind', NEW.kind,
        'ts', to_char(NEW.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'fence_id', NEW.fence_id,
        'delivery_id', NEW.delivery_id,
        'lat', NEW.lat,
        'lon', NEW.lon,
        'alt', NEW.alt,
        'detail', NEW.detail)
    FROM webhook_subscriptions s
    WHERE s.active AND (s.kinds = '{}' OR NEW.kind = ANY (s.kinds))
    ON CONFLICT (subscription_id, event_id) DO NOTHING;
    IF FOUND THEN
        -- Identical notifications in one transaction are folded into one by PostgreSQL.
        PERFORM pg_notify('fleetpulse_webhooks', '');
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER events_webhook_outbox AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION webhook_enqueue();
"""


async def _v6_webhooks(conn: Conn, mode: StorageMode) -> None:
    await conn.execute(_V6_WEBHOOKS)


_V7_MQTT_ACCOUNTS = """
-- Broker accounts of devices and services; the broker's password and ACL files are
-- written from this table (`fleetpulse devices ...`). Only Mosquitto's PBKDF2 hash of
-- each password is kept: the password is shown once.
CREATE TABLE mqtt_accounts (
    username      text        PRIMARY KEY,
    device_id     text        UNIQUE REFERENCES devices (device_id) ON DELETE CASCADE,
    role          text        NOT NULL CHECK (role IN ('device', 'ingest')),
    password_hash text        NOT NULL CHECK (password_hash LIKE '$7$%'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    rotated_at    timestamptz,
    revoked_at    timestamptz,
    CHECK ((role = 'device') = (device_id IS NOT NULL))
);
"""


async def _v7_mqtt_accounts(conn: Conn, mode: StorageMode) -> None:
    await conn.execute(_V7_MQTT_ACCOUNTS)


# Speed profiles are grouped per quarter hour of fix time (see tracker.speed_profiles).
SPEED_PROFILE_AGGREGATE = "speed_profile_buckets"

_V8_SPEED_SAMPLES = """
-- Partial sums of segment speeds per UTC quarter hour of fix time and H3 cell, appended
-- by every profile refresh (several rows per bucket and cell add up); the hour of week
-- is taken in the fleet's time zone when the profile is loaded.
CREATE TABLE speed_samples (
    bucket    timestamptz      NOT NULL,
    cell      bigint           NOT NULL,  -- H3 cell, resolution 9, integer form
    sum_speed double precision NOT NULL,  -- m/s summed over the samples
    samples   integer          NOT NULL CHECK (samples > 0)
);
-- Its rows replace the per hour-of-week table, which could not follow a time zone change
-- or be appended to.
DROP TABLE speed_profiles;
DELETE FROM fleetpulse_meta WHERE key = 'profiles_built_at';
"""

# One row per bucket and cell however many refreshes wrote to it. Real-time aggregation
# (materialized_only = false) adds the rows above the materialized range; rows written
# into already materialized buckets (late fixes) count after the next refresh, which the
# profile refresh runs itself right after writing and the policy repeats as a backstop.
# WITH NO DATA: a continuous aggregate created WITH DATA cannot be created inside the
# migration's transaction.
_V8_TIMESCALEDB = f"""
SELECT create_hypertable('speed_samples', 'bucket', chunk_time_interval => INTERVAL '7 days');
CREATE MATERIALIZED VIEW {SPEED_PROFILE_AGGREGATE}
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '15 minutes', bucket) AS bucket,
       cell,
       sum(sum_speed) AS sum_speed,
       sum(samples) AS samples
FROM speed_samples
GROUP BY time_bucket(INTERVAL '15 minutes', bucket), cell
WITH NO DATA;
SELECT add_continuous_aggregate_policy('{SPEED_PROFILE_AGGREGATE}',
    start_offset => INTERVAL '3 days',
    end_offset => INTERVAL '15 minutes',
    schedule_interval => INTERVAL '30 minutes');
"""


async def _v8_speed_samples(conn: Conn, mode: StorageMode) -> None:
    await conn.execute(_V8_SPEED_SAMPLES)
    if mode is StorageMode.TIMESCALEDB:
        await conn.execute(_V8_TIMESCALEDB)
    else:
        # The loader reads the profile window; the refresh deletes what fell out of it.
        await conn.execute("CREATE INDEX speed_samples_bucket_idx ON speed_samples (bucket)")


async def _v9_uncompressed_checkpoints(conn: Conn, mode: StorageMode) -> None:
    # A tracker rewrites every partition's state every few seconds (~44 MB for 100,000
    # devices). PostgreSQL compressing it each time cost ~5 times the write itself
    # (measured: 17.8 against 3.7 ms per 0.8 MB), a fifth of a core at that size, to
    # save space in a table of one row per partition.
    await conn.execute("ALTER TABLE tracker_checkpoints ALTER COLUMN state SET STORAGE EXTERNAL")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial telemetry schema", _v1_initial),
    Migration(2, "fences, events and tracker checkpoints", _v2_tracker),
    Migration(3, "deliveries, ETA predictions, delivery events", _v3_deliveries),
    Migration(4, "speed profiles and detour factors", _v4_profiles),
    Migration(5, "API tokens, audit log, alert acknowledgements", _v5_web),
    Migration(6, "webhook subscriptions and their delivery outbox", _v6_webhooks),
    Migration(7, "MQTT accounts of devices and services", _v7_mqtt_accounts),
    Migration(8, "speed samples per quarter hour and cell", _v8_speed_samples),
    Migration(9, "tracker checkpoints stored uncompressed", _v9_uncompressed_checkpoints),
)
LATEST_VERSION = MIGRATIONS[-1].version

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS fleetpulse_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
"""
# Serialises concurrent `migrate` runs (several processes starting at once).
_MIGRATION_LOCK = 7_305_011


@dataclass(frozen=True)
class SchemaStatus:
    version: int
    latest: int
    mode: StorageMode | None
    timescaledb_available: bool

    @property
    def up_to_date(self) -> bool:
        return self.version == self.latest


async def timescaledb_available(conn: Conn) -> bool:
    cur = await conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    return await cur.fetchone() is not None


async def stored_mode(conn: Conn) -> StorageMode | None:
    """The mode recorded when the schema was created; None before `migrate`."""
    cur = await conn.execute("SELECT value FROM fleetpulse_meta WHERE key = 'storage_mode'")
    row = await cur.fetchone()
    return StorageMode(str(row[0])) if row else None


async def status(conn: Conn) -> SchemaStatus:
    cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    row = await cur.fetchone()
    version, mode = 0, None
    if row and row[0]:
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
        version_row = await cur.fetchone()
        version = int(str(version_row[0])) if version_row else 0
        mode = await stored_mode(conn)
    return SchemaStatus(version, LATEST_VERSION, mode, await timescaledb_available(conn))


async def _choose_mode(conn: Conn) -> StorageMode:
    if not await timescaledb_available(conn):
        return StorageMode.PLAIN
    try:
        async with conn.transaction():
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        log.warning("TimescaleDB is installed but cannot be loaded (%s); using plain mode", exc)
        return StorageMode.PLAIN
    return StorageMode.TIMESCALEDB


async def migrate(conn: Conn) -> SchemaStatus:
    """Apply every migration not yet applied, each in its own transaction."""
    await conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
    try:
        async with conn.transaction():
            await conn.execute(_BOOKKEEPING)
        mode = await stored_mode(conn)
        if mode is None:
            mode = await _choose_mode(conn)
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO fleetpulse_meta (key, value) VALUES ('storage_mode', %s)",
                    (mode.value,),
                )
        current = (await status(conn)).version
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            async with conn.transaction():
                await migration.apply(conn, mode)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
            log.info("applied migration %d: %s", migration.version, migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return await status(conn)


async def require_current(conn: Conn) -> StorageMode:
    """The storage mode of an up-to-date schema, or a SchemaError saying what to run."""
    current = await status(conn)
    if current.version == 0 or current.mode is None:
        raise SchemaError("the database has no FleetPulse schema: run `fleetpulse db migrate`")
    if current.version < current.latest:
        raise SchemaError(
            f"schema version {current.version} is older than {current.latest}:"
            " run `fleetpulse db migrate`"
        )
    if current.version > current.latest:
        raise SchemaError(
            f"schema version {current.version} is newer than this FleetPulse"
            f" ({current.latest}): upgrade FleetPulse"
        )
    return current.mode


def _interval(value: timedelta) -> str:
    return f"{int(value.total_seconds())} seconds"


async def apply_timescaledb_policies(
    conn: Conn,
    chunk_interval: timedelta,
    retention: timedelta | None,
    compress_after: timedelta | None,
) -> None:
    """Make TimescaleDB's policies match the settings (they may change between runs)."""
    async with conn.transaction():
        await conn.execute(
            "SELECT set_chunk_time_interval('telemetry', %s::interval)",
            (_interval(chunk_interval),),
        )
        await conn.execute("SELECT remove_compression_policy('telemetry', if_exists => true)")
        if compress_after is not None:
            await conn.execute(
                "SELECT add_compression_policy('telemetry', %s::interval)",
                (_interval(compress_after),),
            )
        await conn.execute("SELECT remove_retention_policy('telemetry', if_exists => true)")
        if retention is not None:
            await conn.execute(
                "SELECT add_retention_policy('telemetry', %s::interval)",
                (_interval(retention),),
            )


async def create_database_if_missing(url: str) -> bool:
    """Create the database a URL names, through the server's `postgres` database."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    name = str(info.get("dbname") or "")
    if not name:
        return False
    try:
        conn = await psycopg.AsyncConnection.connect(url)
    except psycopg.OperationalError as exc:
        if f'database "{name}" does not exist' not in str(exc):
            raise
    else:
        await conn.close()
        return False
    admin_url = psycopg.conninfo.make_conninfo(url, dbname="postgres")
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return True
