"""`fleetpulse watch` as a separate process against the really served app: it prints the
stream, resumes with `since` after the server restarts, and stops on a refusal."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fleetpulse.settings import Settings
from tests.conftest import WAIT_TIMEOUT_S, make_token
from tests.e2e.processes import FLEETPULSE, ROOT
from tests.integration.web.dispatch_support import fleet, live_state, make_event, served
from tracker.events import EventKind


class Watcher:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    async def line_where(self, wanted: Callable[[str], bool]) -> str:
        """The next stdout line that satisfies `wanted` (earlier ones are kept)."""
        assert self.process.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.process.stdout.readline(), WAIT_TIMEOUT_S)
            if not raw:
                stderr = await self.process.stderr.read() if self.process.stderr else b""
                raise AssertionError(f"watch ended: {stderr.decode()}")
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            if wanted(line):
                return line


@asynccontextmanager
async def watching(settings: Settings, token: str, *args: str) -> AsyncIterator[Watcher]:
    process = await asyncio.create_subprocess_exec(
        *FLEETPULSE,
        "watch",
        "--url",
        f"http://{settings.web_host}:{settings.web_port}",
        *args,
        env={**os.environ, "FLEETPULSE_TOKEN": token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        yield Watcher(process)
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


def message_of(kind: str) -> Callable[[str], bool]:
    return lambda line: json.loads(line)["type"] == kind


async def test_watch_prints_the_stream_as_json_and_resumes_after_a_restart(
    settings: Settings,
) -> None:
    token = await make_token(settings, "viewer")
    seen = make_event("van-1", EventKind.ENTER, second=1)
    missed = make_event("van-1", EventKind.EXIT, second=2)
    # It may start before the server is up: it retries until it can connect.
    async with fleet(settings) as fl, watching(settings, token, "--json") as watch:
        await fl.publish([live_state("van-1", 38.72, -9.14)])
        async with served(settings):
            snapshot = json.loads(await watch.line_where(message_of("snapshot")))
            assert [d["device_id"] for d in snapshot["devices"]] == ["van-1"]
            await fl.emit(seen)
            line = await watch.line_where(message_of("event"))
            assert json.loads(line)["event"]["id"] == seen.id

        # The server went away; an event is stored while nobody listens.
        await fl.store(missed)
        async with served(settings):
            snapshot = json.loads(await watch.line_where(message_of("snapshot")))
            assert {a["id"] for a in snapshot["alerts"]} == {seen.id, missed.id}
            resumed = json.loads(await watch.line_where(message_of("resumed")))
            # Resumed from the last event it saw: the missed one came from PostgreSQL
            # (and is printed once: the snapshot already listed it).
            assert resumed == {"type": "resumed", "missed": 1}
    assert watch.process.stderr is not None
    stderr = (await watch.process.stderr.read()).decode()
    assert "stream closed (1001 server shutting down); resuming" in stderr


async def test_watch_prints_events_and_a_fleet_summary(settings: Settings) -> None:
    token = await make_token(settings, "viewer")
    alert = make_event("drone-2", EventKind.ALTITUDE_BREACH, second=3)
    async with (
        fleet(settings) as fl,
        served(settings),
        watching(settings, token, "--every", "0.2", "--kinds", "altitude_breach") as watch,
    ):
        await fl.publish([live_state("van-1", 38.72, -9.14), live_state("drone-2", 38.7, -9.1)])
        await watch.line_where(lambda line: line.startswith("snapshot: "))
        await fl.emit(make_event("van-1", EventKind.ENTER, second=3), alert)
        line = await watch.line_where(lambda line: "altitude_breach" in line)
        assert "drone-2" in line and alert.id in line
        summary = await watch.line_where(lambda line: line.startswith("-- "))
        assert "2 devices: 2 moving" in summary
    assert not any(" enter " in line for line in watch.lines)  # filtered out by kind


async def test_watch_stops_when_the_server_refuses_it(settings: Settings) -> None:
    async with served(settings), watching(settings, "fpt_not_a_token") as watch:
        assert await asyncio.wait_for(watch.process.wait(), WAIT_TIMEOUT_S) == 1
        assert watch.process.stderr is not None
        stderr = (await watch.process.stderr.read()).decode()
    assert "HTTP 401 this token is unknown or revoked" in stderr
