"""Private Mosquitto and Redis servers started from the project's own configurations on
free ports, for tests, benchmarks and local demos. They never touch the machine's shared
servers.
"""

from __future__ import annotations

import abc
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def set_directive(text: str, directive: str, value: str) -> str:
    """Replace a directive's first line (or append it) in a key-value config file."""
    line = f"{directive} {value}"
    pattern = re.compile(rf"(?m)^{re.escape(directive)}\s.*$")
    if pattern.search(text):
        return pattern.sub(lambda _: line, text, count=1)
    return f"{text}\n{line}\n"


def mosquitto_config(template: str, port: int, data_dir: Path) -> str:
    """The project's Mosquitto configuration for a private broker: its one listener on
    127.0.0.1:`port`, its persistence in `data_dir`."""
    text = re.sub(r"(?m)^listener\s+\d+.*$", f"listener {port} 127.0.0.1", template, count=1)
    return set_directive(text, "persistence_location", f"{data_dir}/")


def redis_config(template: str, port: int, data_dir: Path) -> str:
    """The project's Redis configuration for a private server on 127.0.0.1:`port`,
    keeping its files in `data_dir` (Valkey reads it as well)."""
    text = set_directive(template, "port", str(port))
    text = set_directive(text, "bind", "127.0.0.1")
    return set_directive(text, "dir", str(data_dir))


class LocalServer(abc.ABC):
    """`with Server() as s: s.url` — started on enter, stopped and its data removed on exit.
    `restart()` keeps the data directory, so persistence can be tested."""

    binary: str
    scheme: str
    config_name: str

    def __init__(self, extra: str = "") -> None:
        self.port = free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"fleetpulse-{self.binary}-"))
        self._config = self.data_dir / "server.conf"
        self._config.write_text(self.render((DEPLOY / self.config_name).read_text()) + extra)
        self._log = self.data_dir / "server.log"
        self._process: subprocess.Popen[bytes] | None = None

    @abc.abstractmethod
    def render(self, template: str) -> str:
        """The project's config adapted to this instance's port and data directory."""

    @abc.abstractmethod
    def command(self, binary: str, config: Path) -> list[str]: ...

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which(self.binary) or f"/usr/sbin/{self.binary}"
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                self.command(binary, self._config), stdout=log, stderr=log
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = self._log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.binary} exited at start: {tail}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.binary} did not listen on {self.port} in {START_TIMEOUT_S} s")

    def stop(self) -> None:
        """SIGTERM: both servers save their persistence before they exit."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(STOP_TIMEOUT_S)
        self._process = None

    def kill(self) -> None:
        """SIGKILL: nothing saved beyond what was already on disk."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(STOP_TIMEOUT_S)
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class Mosquitto(LocalServer):
    binary = "mosquitto"
    scheme = "mqtt"
    config_name = "mosquitto/mosquitto.conf"

    def render(self, template: str) -> str:
        let_mosquitto_write(self.data_dir)
        return mosquitto_config(template, self.port, self.data_dir)

    def command(self, binary: str, config: Path) -> list[str]:
        return [binary, "-c", str(config)]


class Redis(LocalServer):
    binary = "redis-server"
    scheme = "redis"
    config_name = "redis/redis.conf"

    def render(self, template: str) -> str:
        return redis_config(template, self.port, self.data_dir)

    def command(self, binary: str, config: Path) -> list[str]:
        return [binary, str(config)]


def let_mosquitto_write(directory: Path) -> None:
    """Started as root, Mosquitto drops to its own user before it saves its persistence
    file, so that user must own the data directory."""
    if os.geteuid() != 0:
        return
    try:
        shutil.chown(directory, user="mosquitto")
    except (LookupError, OSError):
        return  # no such user: the server then keeps running as root
