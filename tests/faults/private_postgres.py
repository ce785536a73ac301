"""A throwaway PostgreSQL 15 cluster of one test's own, on a free port in a temporary
directory, so that the test may stop and restart it. The machine's shared server is never
touched.

PostgreSQL refuses to run as root; started as root, every server command runs as the
`postgres` system user (`runuser -u postgres --`), which then owns the directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from fleetpulse.local_servers import free_port

BIN = Path(os.environ.get("FLEETPULSE_PG_BIN", "/usr/lib/postgresql/15/bin"))
SERVICE_USER = "postgres"
COMMAND_TIMEOUT_S = 60.0
START_TIMEOUT_S = 30


class PrivatePostgres:
    """`with PrivatePostgres() as pg: pg.url("fleetpulse")`; `stop()`, `start()` and
    `restart()` keep the data directory, as a real server restart does."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="fleetpulse-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_service_user = os.geteuid() == 0
        if self._as_service_user:
            shutil.chown(self.root, user=SERVICE_USER)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, program: str, *args: str) -> None:
        command = [str(BIN / program), *args]
        if self._as_service_user:
            command = ["runuser", "-u", SERVICE_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        if done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({done.returncode}):"
                f" {done.stdout}{done.stderr}{tail}"
            )

    def init(self) -> None:
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            "postgres",
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
        self._run(
            "pg_ctl",
            "--pgdata",
            str(self.data),
            "--log",
            str(self.log),
            "--wait",
            "--timeout",
            str(START_TIMEOUT_S),
            "-o",
            options,
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """`fast`: clients are disconnected, open transactions rolled back, then a clean
        shutdown; `immediate`: a crash, recovered from the WAL at the next start."""
        self._run("pg_ctl", "--pgdata", str(self.data), "--wait", "--mode", mode, "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        try:
            self.init()
            self.start()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
