"""The ingester as a process: crashes, graceful stops and the command line around it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from fleetpulse.local_servers import Mosquitto
from tests.e2e.processes import IngestProcess, fleetpulse
from tests.publisher import publish_sync


@pytest.fixture
def env(database_url: str, broker: Mosquitto, redis_url: str) -> dict[str, str]:
    return {
        "FLEETPULSE_DATABASE_URL": database_url,
        "FLEETPULSE_MQTT_URL": broker.url,
        "FLEETPULSE_REDIS_URL": redis_url,
        "FLEETPULSE_CLIENT_ID": "e2e-ingest",
    }


@pytest.fixture
def ingester(env: dict[str, str]) -> Iterator[IngestProcess]:
    process = IngestProcess(env)
    yield process
    process.stop()


def count(url: str, query: str = "SELECT count(*) FROM telemetry") -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
        return int(row[0]) if row else 0


def fixes(n: int, devices: int = 100) -> list[tuple[str, dict[str, float]]]:
    t0 = int(time.time() * 1000) - n
    return [
        (f"fleet/van-{i % devices}/telemetry", {"ts": t0 + i, "lat": 41.15, "lon": -8.61})
        for i in range(n)
    ]


def test_kill_9_mid_stream_then_restart_stores_every_fix_once(
    env: dict[str, str], ingester: IngestProcess
) -> None:
    total = 20_000
    ingester.start()
    publisher = threading.Thread(
        target=publish_sync, args=(env["FLEETPULSE_MQTT_URL"], fixes(total))
    )
    publisher.start()
    ingester.wait_for(lambda t: t.get("fixes_committed", 0) >= 2_000, "some commits")
    ingester.kill()
    stored_at_kill = count(env["FLEETPULSE_DATABASE_URL"])
    assert 0 < stored_at_kill < total, "the kill must land mid-stream"
    ingester.start()
    publisher.join(120)
    deadline = time.monotonic() + 60
    while count(env["FLEETPULSE_DATABASE_URL"]) < total and time.monotonic() < deadline:
        time.sleep(0.2)
    assert count(env["FLEETPULSE_DATABASE_URL"]) == total
    assert count(env["FLEETPULSE_DATABASE_URL"], "SELECT count(*) FROM quarantine") == 0


def test_sigterm_writes_and_acknowledges_what_it_holds(
    env: dict[str, str], ingester: IngestProcess
) -> None:
    env_slow = {**env, "FLEETPULSE_FLUSH_INTERVAL": "1h"}
    slow = IngestProcess(env_slow)
    try:
        slow.start()
        publish_sync(env["FLEETPULSE_MQTT_URL"], fixes(25))
        slow.wait_for(lambda t: t.get("messages", 0) >= 25, "25 messages held")
        assert count(env["FLEETPULSE_DATABASE_URL"]) == 0, "held, not yet written"
        assert slow.terminate() == 0
    finally:
        slow.stop()
    assert count(env["FLEETPULSE_DATABASE_URL"]) == 25
    # Had the acknowledgements been lost, the same session would get all 25 again.
    ingester.start()
    time.sleep(1.0)
    assert ingester.totals.get("messages", 0) == 0


def test_command_line_reads_back_what_was_ingested(
    env: dict[str, str], ingester: IngestProcess
) -> None:
    ingester.start()
    t0 = int(time.time() * 1000)
    publish_sync(
        env["FLEETPULSE_MQTT_URL"],
        [
            ("fleet/van-1/telemetry", {"ts": t0 - 2000, "lat": 41.1, "lon": -8.6, "speed": 3}),
            ("fleet/van-1/telemetry", {"ts": t0 - 1000, "lat": 41.2, "lon": -8.6}),
            ("fleet/van-1/telemetry", {"ts": t0 - 1000, "lat": 99, "lon": -8.6}),
            ("fleet/van-1/telemetry", b"\xff\xfe"),
        ],
    )
    ingester.wait_for(lambda t: t.get("acked", 0) >= 4, "4 acknowledged")
    csv = fleetpulse("history", "van-1", "--format", "csv", env=env).stdout.splitlines()
    assert csv[0].startswith("device_id,ts,lat,lon")
    assert len(csv) == 3 and csv[1].split(",")[6] == "3.0"
    lines = fleetpulse("history", "van-1", env=env).stdout.splitlines()
    assert [json.loads(line)["lat"] for line in lines] == [41.1, 41.2]
    since = fleetpulse("history", "van-1", "--from", str(t0 - 1500), env=env).stdout
    assert len(since.splitlines()) == 1
    rejected = [
        json.loads(line)
        for line in fleetpulse("quarantine", "--format", "jsonl", env=env).stdout.splitlines()
    ]
    assert sorted(r["reason"] for r in rejected) == ["invalid_json", "lat_out_of_range"]
    binary = next(r for r in rejected if r["reason"] == "invalid_json")
    assert binary["payload_base64"] == "//4="
    only = fleetpulse("quarantine", "--reason", "invalid_json", "--format", "jsonl", env=env)
    assert len(only.stdout.splitlines()) == 1
    stats = json.loads(fleetpulse("stats", "--json", env=env).stdout)
    assert stats["devices"] == 1 and stats["fixes"] == 2
    assert stats["quarantined"] == {"invalid_json": 1, "lat_out_of_range": 1}


def test_configuration_errors_are_one_line_naming_the_setting(env: dict[str, str]) -> None:
    bad = fleetpulse("config", env={**env, "FLEETPULSE_BATCH_SIZE": "lots"}, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "fleetpulse: FLEETPULSE_BATCH_SIZE: expected a whole number, got 'lots'"
    ]
    flag = fleetpulse("config", "--retention", "soon", env=env, check=False)
    assert flag.returncode == 2 and flag.stderr.startswith("fleetpulse: --retention:")
    secret = "postgresql://fleet:hunter2@127.0.0.1:5432/fleetpulse"
    shown = fleetpulse("config", env={**env, "FLEETPULSE_DATABASE_URL": secret}).stdout
    assert "hunter2" not in shown and "fleet:***@127.0.0.1" in shown
    down = fleetpulse(
        "stats",
        env={**env, "FLEETPULSE_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"},
        check=False,
    )
    assert down.returncode == 1
    assert len(down.stderr.strip().splitlines()) == 1
    assert down.stderr.startswith("fleetpulse: PostgreSQL at postgresql://postgres@127.0.0.1:1/x")


def test_ingest_refuses_to_start_on_an_unmigrated_database(env: dict[str, str]) -> None:
    with psycopg.connect(env["FLEETPULSE_DATABASE_URL"], autocommit=True) as conn:
        conn.execute("DROP TABLE schema_migrations")
    result = fleetpulse("ingest", env=env, check=False)
    assert result.returncode == 1
    assert "run `fleetpulse db migrate`" in result.stderr
