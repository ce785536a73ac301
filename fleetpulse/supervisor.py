"""Several processes on one machine: `fleetpulse run --workers N` (or `--ingesters N
--trackers N --web-workers N`, each defaulting to `--workers`, else 1).

The supervisor migrates the schema once, then runs every stage as a child process,
`python -m fleetpulse ingest|tracker|web`, with the same settings (passed on as
FLEETPULSE_* variables, CLI flags included) and what must differ per child:

    ingest-i    FLEETPULSE_CLIENT_ID=<client id>-i: unique per ingester and the same after
                a restart, so the broker keeps its persistent session (QoS 1 queue and
                in-flight window); all ingesters join the shared subscription
    tracker-i   FLEETPULSE_TRACKER_INDEX=i, FLEETPULSE_TRACKER_COUNT=<trackers>: tracker i
                owns the hand-off partitions p with p mod count = i, and resumes them from
                its checkpoints after a restart
    web-i       nothing: every web worker listens on FLEETPULSE_WEB_PORT (SO_REUSEPORT)
                and the kernel spreads connections over them; Redis fans out between them

A child that exits while the supervisor is not stopping is restarted after a backoff
(`RestartPolicy`: 0.5 s doubling to 30 s, back to 0.5 s after a minute of good running),
logged and counted. More than `max_crashes` exits of one child within `crash_window_s`
(5 in 5 minutes), or a child refusing its configuration (exit status 2), ends the
supervision: everything is stopped and the command exits with status 1.

SIGTERM or SIGINT is passed on to every child; each stops cleanly (ingest writes and
acknowledges what it holds, trackers checkpoint, web workers close their websockets).
A child still running after `stop_timeout_s` (30 s) gets SIGKILL, and the command then
exits with status 1. Children also get SIGTERM from the kernel if the supervisor dies
(Linux), so a `kill -9` of the supervisor leaves no orphans behind.

Output: each line a child writes is passed on, to the supervisor's stdout or stderr as
the child wrote it, tagged with the child's name: a JSON object (JSON logs,
`--stats-json` lines) gets a `"worker": "tracker-1"` field, any other line a
`tracker-1 | ` prefix.

Interface, for operators and tests:

- `--status-file PATH` (`Supervisor(status_file=...)`) keeps a JSON document, replaced
  atomically at every change: `{"pid": <supervisor>, "state": "starting" | "running" |
  "stopping" | "stopped" | "gave_up", "children": {"tracker-0": {"stage": "tracker",
  "pid": 4242 or null, "running": true, "starts": 2, "crashes": 1, "last_exit": -9}}}`.
  To kill a child on purpose: read its pid there, kill it, and wait until `starts` grows.
- In Python: `Supervisor(settings, Workers(...)).run()` until `stop(signum)` is called;
  `children` names each child's state; `run` raises `GaveUp` when it gave up and
  `UncleanStop` when a child had to be killed. `supervise()` is what the command runs:
  migrate, install the signal handlers, run.

Scaling down leaves the removed ingesters' broker sessions behind: the broker may have
queued messages for them (shared subscriptions), kept until FLEETPULSE_SESSION_EXPIRY.
Lower the count only after a clean stop, and start the old count once if in doubt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from fleetpulse.arguments import whole
from fleetpulse.errors import FleetPulseError
from fleetpulse.settings import OPTIONS, Settings, load_settings, setting_text

log = logging.getLogger(__name__)

FLEETPULSE_COMMAND: tuple[str, ...] = (sys.executable, "-m", "fleetpulse")
STAGES = ("ingest", "tracker", "web")
# The exit status of a refused configuration (argparse's, and `fleetpulse`'s for
# settings): a restart would be refused the same way.
CONFIG_EXIT_STATUS = 2
# Longest output line passed on whole; a longer one is passed on in pieces.
LINE_LIMIT_BYTES = 1024 * 1024
# How long the output of an exited child may still take to drain.
DRAIN_TIMEOUT_S = 5.0
_MAX_CLIENT_ID = 64


class GaveUp(FleetPulseError):
    """A child crashed too often, or refused its configuration; everything was stopped."""


class UncleanStop(FleetPulseError):
    """Stopping, a child did not exit by itself in time (it was killed) or failed."""


@dataclass(frozen=True)
class Workers:
    """How many processes of each stage; 0 leaves a stage to another machine."""

    ingesters: int = 1
    trackers: int = 1
    web: int = 1

    def __post_init__(self) -> None:
        if min(self.ingesters, self.trackers, self.web) < 0:
            raise ValueError(f"process counts must be 0 or more, got {self}")
        if self.ingesters + self.trackers + self.web == 0:
            raise ValueError("at least one process is needed")


@dataclass(frozen=True)
class RestartPolicy:
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    # A child that ran this long was well: its next crash waits backoff_min_s again.
    stable_after_s: float = 60.0
    max_crashes: int = 5
    crash_window_s: float = 300.0
    stop_timeout_s: float = 30.0


@dataclass(frozen=True)
class ChildSpec:
    """One child: its name, stage, and the FLEETPULSE_* variables that are its own."""

    name: str
    stage: str
    env: Mapping[str, str]


def plan(settings: Settings, workers: Workers) -> list[ChildSpec]:
    """The children for these counts, ingesters first; validates each child's settings
    (more trackers than partitions, say) before anything starts."""
    specs: list[ChildSpec] = []
    for i in range(workers.ingesters):
        suffix = f"-{i}"
        client_id = settings.client_id[: _MAX_CLIENT_ID - len(suffix)] + suffix
        specs.append(ChildSpec(f"ingest-{i}", "ingest", {"FLEETPULSE_CLIENT_ID": client_id}))
    for i in range(workers.trackers):
        own = {
            "FLEETPULSE_TRACKER_INDEX": str(i),
            "FLEETPULSE_TRACKER_COUNT": str(workers.trackers),
        }
        specs.append(ChildSpec(f"tracker-{i}", "tracker", own))
    specs.extend(ChildSpec(f"web-{i}", "web", {}) for i in range(workers.web))
    shared = settings_env(settings)
    for spec in specs:
        load_settings({**shared, **spec.env})  # raises ConfigError naming the setting
    return specs


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as the FLEETPULSE_* variable `load_settings` reads back to the same
    value: how the children get the supervisor's settings, CLI flags included."""
    return {option.env: setting_text(getattr(settings, option.field)) for option in OPTIONS}


class CrashHistory:
    """One child's recent crashes: the wait before the next start, or None to give up."""

    def __init__(self, policy: RestartPolicy) -> None:
        self._policy = policy
        self._times: deque[float] = deque()
        self._backoff = policy.backoff_min_s

    def crashed(self, at: float, ran_s: float) -> float | None:
        policy = self._policy
        self._times.append(at)
        while self._times and self._times[0] <= at - policy.crash_window_s:
            self._times.popleft()
        if len(self._times) > policy.max_crashes:
            return None
        if ran_s >= policy.stable_after_s:
            self._backoff = policy.backoff_min_s
        wait = self._backoff
        self._backoff = min(self._backoff * 2, policy.backoff_max_s)
        return wait

    @property
    def recent(self) -> int:
        return len(self._times)


def tag_line(name: str, line: str, width: int = 0) -> str:
    """A child's output line, marked as that child's (see the module's docstring)."""
    if line.startswith("{") and line.endswith("}"):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            return json.dumps({"worker": name, **entry}, ensure_ascii=False)
    return f"{name:<{width}} | {line}"


def describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


@dataclass
class ChildState:
    spec: ChildSpec
    pid: int | None = None
    starts: int = 0
    crashes: int = 0
    last_exit: int | None = None
    started_at: float = 0.0
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def status(self) -> dict[str, Any]:
        return {
            "stage": self.spec.stage,
            "pid": self.pid if self.running else None,
            "running": self.running,
            "starts": self.starts,
            "crashes": self.crashes,
            "last_exit": self.last_exit,
        }


def _parent_death_signal() -> Callable[[], None] | None:
    """On Linux, a function for the child, between fork and exec, that asks the kernel
    for SIGTERM when the supervisor dies. It is one prctl call through a function
    resolved here, before the fork: nothing the child runs there can wait on a lock
    another thread held at fork time."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    prctl = ctypes.CDLL(name, use_errno=True).prctl
    pr_set_pdeathsig = 1
    supervisor = os.getpid()

    def ask() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != supervisor:  # it died before the request was in place
            os._exit(1)

    return ask


class Supervisor:
    """Runs the children of `plan(settings, workers)` until `stop()` (module docstring).

    `command` is what starts a stage (the stage's name is appended); `stage_args` are
    added after it for the stages in `stage_args_for`. `env` is the environment the
    children start from (this process's by default)."""

    def __init__(
        self,
        settings: Settings,
        workers: Workers,
        *,
        policy: RestartPolicy | None = None,
        command: Sequence[str] = FLEETPULSE_COMMAND,
        stage_args: Sequence[str] = (),
        stage_args_for: Sequence[str] = ("ingest", "tracker"),
        status_file: Path | None = None,
        env: Mapping[str, str] | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self.policy = policy or RestartPolicy()
        specs = plan(settings, workers)
        self.children = {spec.name: ChildState(spec) for spec in specs}
        self._command = tuple(command)
        self._stage_args = tuple(stage_args)
        self._stage_args_for = frozenset(stage_args_for)
        self._status_file = status_file
        self._base_env = {**(os.environ if env is None else env), **settings_env(settings)}
        self._stdout = stdout if stdout is not None else sys.stdout
        self._stderr = stderr if stderr is not None else sys.stderr
        self._width = max(len(name) for name in self.children)
        self._stop = asyncio.Event()
        self._signal = signal.SIGTERM
        self._gave_up: str | None = None
        self._unclean: list[str] = []
        self._state = "starting"
        self._preexec = _parent_death_signal()
        self.lines_lost = 0

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop every child with this signal (children treat SIGTERM and SIGINT alike)."""
        if not self._stop.is_set():
            self._signal = signal.Signals(signum)
            self._stop.set()
            self._write_status()

    async def run(self) -> None:
        """Start the children and keep them running until `stop()`; returns once every
        child has stopped."""
        self._set_state("running")
        try:
            async with asyncio.TaskGroup() as tasks:
                for child in self.children.values():
                    tasks.create_task(self._keep(child), name=f"supervise-{child.spec.name}")
        finally:
            self._set_state("gave_up" if self._gave_up else "stopped")
        if self._gave_up:
            raise GaveUp(self._gave_up)
        if self._unclean:
            raise UncleanStop("stopped, but " + "; ".join(self._unclean))

    # --- one child ------------------------------------------------------------------

    async def _keep(self, child: ChildState) -> None:
        history = CrashHistory(self.policy)
        name = child.spec.name
        while not self._stop.is_set():
            status = await self._run_once(child)
            if status is None:  # stopped on purpose
                return
            child.crashes += 1
            ran_s = time.monotonic() - child.started_at
            wait = history.crashed(time.monotonic(), ran_s)
            how = describe_exit(status) if status != _START_FAILED else "could not be started"
            if status == CONFIG_EXIT_STATUS:
                self._give_up(f"{name} refused its configuration ({how}); see its output")
                return
            if wait is None:
                self._give_up(
                    f"{name} {how}; it crashed {history.recent} times within "
                    f"{self.policy.crash_window_s:g} s, more than {self.policy.max_crashes}"
                )
                return
            log.warning(
                "%s %s after %.1f s; restart %d in %.1f s (%d crashes in the last %g s)",
                name,
                how,
                ran_s,
                child.crashes,
                wait,
                history.recent,
                self.policy.crash_window_s,
                extra={"child": name, "crashes": child.crashes},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)

    async def _run_once(self, child: ChildState) -> int | None:
        """Start the child and wait for it; its exit status, or None when it was stopped
        on purpose."""
        spec = child.spec
        args = [*self._command, spec.stage]
        if spec.stage in self._stage_args_for:
            args.extend(self._stage_args)
        child.started_at = time.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                *args,
                env={**self._base_env, **spec.env},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=LINE_LIMIT_BYTES,
                # Its own process group: a Ctrl-C in the terminal reaches the supervisor
                # only, which passes it on; a child never stops before the supervisor
                # knows it is stopping, so no stop looks like a crash.
                process_group=0,
                preexec_fn=self._preexec,
            )
        except OSError as exc:
            log.error("%s could not be started: %s", spec.name, exc, extra={"child": spec.name})
            child.last_exit = _START_FAILED
            return _START_FAILED
        child.process, child.pid = process, process.pid
        child.starts += 1
        log.info(
            "%s started (pid %d, start %d)",
            spec.name,
            process.pid,
            child.starts,
            extra={"child": spec.name, "pid": process.pid},
        )
        self._write_status()
        assert process.stdout is not None and process.stderr is not None
        output = [
            asyncio.create_task(self._forward(spec.name, process.stdout, self._stdout)),
            asyncio.create_task(self._forward(spec.name, process.stderr, self._stderr)),
        ]
        exited = asyncio.create_task(process.wait())
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            on_purpose = not exited.done()
            if on_purpose:
                await self._stop_child(child, process)
            status = await exited
        except BaseException:
            # Cancelled (a bug elsewhere ended the supervision): no child may outlive it.
            if process.returncode is None:
                process.kill()
            raise
        finally:
            stopping.cancel()
        await self._drain(spec.name, output)
        child.last_exit = status
        self._write_status()
        if on_purpose:
            if status != 0:
                self._unclean.append(f"{spec.name} {describe_exit(status)}")
            log.info(
                "%s stopped (%s)", spec.name, describe_exit(status), extra={"child": spec.name}
            )
            return None
        return status

    async def _stop_child(self, child: ChildState, process: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(self._signal)
        try:
            await asyncio.wait_for(process.wait(), self.policy.stop_timeout_s)
        except TimeoutError:
            name = child.spec.name
            log.error(
                "%s did not stop within %g s; killing it",
                name,
                self.policy.stop_timeout_s,
                extra={"child": name},
            )
            self._unclean.append(f"{name} did not stop within {self.policy.stop_timeout_s:g} s")
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    async def _drain(self, name: str, output: list[asyncio.Task[None]]) -> None:
        """Let the output the child wrote before it exited be passed on; a grandchild
        still holding the pipes must not hold up a restart."""
        _, pending = await asyncio.wait(output, timeout=DRAIN_TIMEOUT_S)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("%s: output still open %g s after it exited", name, DRAIN_TIMEOUT_S)

    async def _forward(self, name: str, stream: asyncio.StreamReader, into: TextIO) -> None:
        while True:
            try:
                raw = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                raw = exc.partial  # the last line, without its newline; then EOF
                if raw:
                    self._emit(name, raw, into)
                return
            except asyncio.LimitOverrunError as exc:
                raw = await stream.readexactly(exc.consumed)  # an overlong line, in pieces
            self._emit(name, raw, into)

    def _emit(self, name: str, raw: bytes, out: TextIO) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        try:
            out.write(tag_line(name, line, self._width) + "\n")
            out.flush()
        except (OSError, ValueError):
            self.lines_lost += 1  # our own output is gone; the child must not block on it

    # --- the whole ------------------------------------------------------------------

    def _give_up(self, why: str) -> None:
        if self._gave_up is None:
            self._gave_up = why
            log.error("giving up: %s; stopping every process", why)
        self.stop(signal.SIGTERM)

    def _set_state(self, state: str) -> None:
        self._state = state
        self._write_status()

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "state": "stopping"
            if self._stop.is_set() and self._state == "running"
            else self._state,
            "children": {name: child.status() for name, child in self.children.items()},
            "output_lines_lost": self.lines_lost,
        }

    def _write_status(self) -> None:
        if self._status_file is None:
            return
        temporary = self._status_file.with_name(self._status_file.name + ".tmp")
        try:
            temporary.write_text(json.dumps(self.status(), indent=1) + "\n")
            os.replace(temporary, self._status_file)
        except OSError as exc:
            log.warning("cannot write the status file %s: %s", self._status_file, exc)


# Not an exit status: the child's command could not be run at all.
_START_FAILED = -(10**6)


async def supervise(
    settings: Settings,
    workers: Workers,
    *,
    stage_args: Sequence[str] = (),
    status_file: Path | None = None,
) -> None:
    """`fleetpulse run --workers`: migrate once, then supervise until SIGTERM or SIGINT."""
    from fleetpulse.app import prepare_database  # the stages' imports, only when needed

    supervisor = Supervisor(settings, workers, stage_args=stage_args, status_file=status_file)
    await prepare_database(settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, supervisor.stop, signum)
    log.info(
        "supervising %d ingesters, %d trackers, %d web workers",
        workers.ingesters,
        workers.trackers,
        workers.web,
    )
    try:
        await supervisor.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


# --- the command line -----------------------------------------------------------------


def add_options(parser: argparse.ArgumentParser) -> None:
    """`fleetpulse run`'s options for running the stages as supervised processes."""
    group = parser.add_argument_group(
        "several processes (any of these runs each stage as supervised child processes)"
    )
    group.add_argument(
        "--workers",
        type=whole(1),
        metavar="N",
        help="processes of each stage; the three options below override it per stage",
    )
    group.add_argument("--ingesters", type=whole(0), metavar="N", help="ingest processes")
    group.add_argument("--trackers", type=whole(0), metavar="N", help="tracker processes")
    group.add_argument(
        "--web-workers",
        type=whole(0),
        metavar="N",
        help="web processes, sharing FLEETPULSE_WEB_PORT",
    )
    group.add_argument(
        "--status-file",
        type=Path,
        metavar="PATH",
        help="keep the children's pids, starts and crashes there, as JSON",
    )


def workers_from(args: argparse.Namespace) -> Workers | None:
    """The counts asked for on the command line; None when none was (one process)."""
    given = {
        "ingesters": args.ingesters,
        "trackers": args.trackers,
        "web": args.web_workers,
    }
    if args.workers is None and all(v is None for v in given.values()):
        return None
    default = args.workers if args.workers is not None else 1
    try:
        return Workers(**{k: default if v is None else v for k, v in given.items()})
    except ValueError as exc:
        raise FleetPulseError(f"run: {exc}") from None


async def command(settings: Settings, args: argparse.Namespace, workers: Workers) -> None:
    stage_args = ["--stats-every", str(args.stats_every)]
    if args.stats_json:
        stage_args.append("--stats-json")
    await supervise(settings, workers, stage_args=stage_args, status_file=args.status_file)
