"""Checkpoints written while the tracker goes on.

A partition's state is encoded in the tracker's loop, at the point its checkpoint
describes (its stream position, its watermark, every event before it already stored);
writing those megabytes to PostgreSQL then took most of the ~40 ms the loop stood still
for each partition's turn (100,000 devices), and fixes arriving meanwhile waited. Here
the write runs on a connection of its own while the loop reads on. One write at a time,
in order: a new one waits for the last, so checkpoints never overtake each other, and a
failed write fails the next `submit` or `drain`, which restarts the tracker from the
checkpoints that did land.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fleetpulse.database import Conn
from tracker import store


class CheckpointWriter:
    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._pending: asyncio.Task[None] | None = None

    async def submit(self, checkpoints: Sequence[store.Checkpoint]) -> None:
        """Start writing these (one transaction) once the previous write has landed."""
        await self.drain()
        if checkpoints:
            self._pending = asyncio.create_task(
                self._write(list(checkpoints)), name="tracker-checkpoint"
            )

    async def drain(self) -> None:
        """Wait for the write in flight; its error, if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending

    async def close(self) -> None:
        """Abandon a write in flight (a failure path: the last landed checkpoint stands)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)

    async def _write(self, checkpoints: list[store.Checkpoint]) -> None:
        async with self._conn.transaction():
            for checkpoint in checkpoints:
                await store.save_checkpoint(self._conn, checkpoint)
