"""Checkpoints are stored as written: PostgreSQL compressing tens of megabytes every few
seconds cost it a fifth of a core (migration 9); the tracker compresses them itself with
zstd (tracker/saved_state.py)."""

from __future__ import annotations

from fleetpulse.database import connect
from tracker import store


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
