"""Checkpoints: stored as written (PostgreSQL compressing tens of megabytes every few
seconds cost it a fifth of a core, migration 9), and written behind the tracker's loop."""

from __future__ import annotations

import psycopg
import pytest

from fleetpulse.database import connect
from tracker import store
from tracker.checkpoint_writer import CheckpointWriter


async def test_a_checkpoint_state_is_stored_uncompressed(database_url: str) -> None:
    state = b"device-000001 parked at 41.15,-8.61; " * 30_000  # ~1 MB, very compressible
    conn = await connect(database_url)
    try:
        await store.save_checkpoint(conn, store.Checkpoint(3, "1-0", None, "epoch", state))
        cur = await conn.execute(
            "SELECT pg_column_size(state), octet_length(state) FROM tracker_checkpoints"
            " WHERE partition = 3"
        )
        stored, length = await cur.fetchone() or (0, 0)
        [loaded] = (await store.load_checkpoints(conn, [3])).values()
    finally:
        await conn.close()
    assert length == len(state)
    assert stored >= len(state), f"compressed to {stored} bytes"
    assert loaded.state == state


async def test_checkpoints_written_behind_the_loop_land_in_order(database_url: str) -> None:
    conn = await connect(database_url)
    writer = CheckpointWriter(conn)
    try:
        for n in range(1, 6):
            await writer.submit(
                [store.Checkpoint(p, f"{n}-0", None, "e", b"s" * n) for p in (0, 1)]
            )
        await writer.drain()
        saved = await store.load_checkpoints(conn, [0, 1])
    finally:
        await writer.close()
        await conn.close()
    assert {p: (c.stream_id, c.state) for p, c in saved.items()} == {
        0: ("5-0", b"sssss"),
        1: ("5-0", b"sssss"),
    }


async def test_a_failed_write_fails_the_next_submit(database_url: str) -> None:
    conn = await connect(database_url)
    writer = CheckpointWriter(conn)
    await writer.submit([store.Checkpoint(0, "1-0", None, "e", b"s")])
    await conn.close()  # the database went away under the write in flight or the next
    with pytest.raises(psycopg.OperationalError):
        await writer.submit([store.Checkpoint(0, "2-0", None, "e", b"s")])
        await writer.drain()
    await writer.close()
