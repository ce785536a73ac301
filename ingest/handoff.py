"""After commit, hand the batch's fixes and status changes to the trackers through Redis
Streams, one stream per device partition (see `tracker.handoff`)."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import redis.asyncio as redis

from tracker.events import Event
from tracker.handoff import StatusChange, encode, split, stream_key
from tracker.positions import Fix


class StreamHandoff:
    """`async with StreamHandoff(url, partitions, maxlen) as h: await h.send(fixes, statuses)`

    Streams are capped at about `maxlen` entries; a tracker that falls further behind than
    that finds a gap and re-reads from PostgreSQL (the record), so trimming loses nothing.
    """

    def __init__(self, url: str, partitions: int, maxlen: int) -> None:
        self._redis = redis.Redis.from_url(url)
        self._partitions = partitions
        self._maxlen = maxlen

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._redis.aclose()

    async def send(
        self, fixes: list[Fix], statuses: list[StatusChange], events: list[Event] | None = None
    ) -> int:
        """One round trip for the whole batch; returns the number of stream entries."""
        parts = split(fixes, statuses, self._partitions, events)
        if not parts:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for partition, handoff in sorted(parts.items()):
                pipe.xadd(
                    stream_key(partition),
                    {"h": encode(handoff)},
                    maxlen=self._maxlen,
                    approximate=True,
                )
            await pipe.execute()
        return len(parts)
