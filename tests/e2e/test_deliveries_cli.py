"""`fleetpulse deliveries` against a real database: create, change, finish, and the events."""

from __future__ import annotations

import hashlib
import json

import psycopg

from tests.e2e.processes import fleetpulse

WINDOW = ["--window-start", "2026-11-27T14:00:00Z", "--window-end", "2026-11-27T16:00:00Z"]


def test_a_delivery_from_creation_to_its_outcome(database_url: str, redis_url: str) -> None:
    env = {"FLEETPULSE_DATABASE_URL": database_url, "FLEETPULSE_REDIS_URL": redis_url}
    created = fleetpulse(
        "deliveries",
        "create",
        "d-1",
        "--vehicle",
        "van-1",
        "--dest",
        "41.1486,-8.611",
        *WINDOW,
        "--sequence",
        "2",
        env=env,
    )
    token = json.loads(created.stdout)["tracking_token"]
    assert len(token) >= 32
    with psycopg.connect(database_url) as conn:
        stored = conn.execute("SELECT token_hash FROM deliveries WHERE id = 'd-1'").fetchone()
    assert stored == (hashlib.sha256(token.encode()).hexdigest(),), "only the hash is kept"

    again = fleetpulse(
        "deliveries",
        "create",
        "d-1",
        "--vehicle",
        "van-1",
        "--dest",
        "41,-8",
        *WINDOW,
        env=env,
        check=False,
    )
    assert again.returncode == 1 and "exists already" in again.stderr

    moved = fleetpulse(
        "deliveries",
        "update",
        "d-1",
        "--vehicle",
        "van-2",
        "--window-end",
        "2026-11-27T17:00:00Z",
        env=env,
    )
    record = json.loads(moved.stdout)
    assert record["vehicle_id"] == "van-2"
    assert record["window"] == ["2026-11-27T14:00:00+00:00", "2026-11-27T17:00:00+00:00"]
    assert record["state"] == "scheduled"

    bad = fleetpulse(
        "deliveries",
        "update",
        "d-1",
        "--window-end",
        "2026-11-27T13:00:00Z",
        env=env,
        check=False,
    )
    assert bad.returncode == 1 and "window must end after it starts" in bad.stderr

    done = fleetpulse("deliveries", "report", "d-1", "failed", "--detail", "closed", env=env)
    assert json.loads(done.stdout)["state"] == "failed"
    late = fleetpulse("deliveries", "cancel", "d-1", env=env, check=False)
    assert late.returncode == 1 and "is failed already" in late.stderr

    events = [
        json.loads(line) for line in fleetpulse("events", "export", env=env).stdout.splitlines()
    ]
    assert [(e["kind"], e["delivery_id"], e["detail"]) for e in events] == [
        ("failed", "d-1", "closed")
    ]
    active = fleetpulse("deliveries", "list", "--active", env=env).stdout
    assert active == ""
