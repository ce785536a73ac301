"""A private Mosquitto started from the project's configuration on a free port.

For tests, benchmarks and local demos: it never touches the machine's shared broker.
"""

from __future__ import annotations

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

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto" / "mosquitto.conf"
START_TIMEOUT_S = 10.0
BROKER_USER = "mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def render_config(template: str, port: int, data_dir: Path) -> str:
    """The template with its listener moved to `port` and its data kept in `data_dir`."""
    text = re.sub(r"(?m)^listener\s+\d+.*$", f"listener {port} 127.0.0.1", template, count=1)
    text = re.sub(r"(?m)^persistence_location\s+.*$", f"persistence_location {data_dir}/", text)
    return text


def _let_broker_user_write(directory: Path) -> None:
    """Started as root, Mosquitto drops to the `mosquitto` user before it saves its
    persistence file, so that user must own the data directory."""
    if os.geteuid() != 0:
        return
    try:
        shutil.chown(directory, user=BROKER_USER)
    except (LookupError, OSError):
        return  # no such user: Mosquitto then keeps running as root


class Mosquitto:
    """`with Mosquitto() as broker: broker.url` — stopped (and its data removed) on exit.

    `restart()` keeps the data directory, so persistence can be tested.
    """

    def __init__(self, config: Path = DEFAULT_CONFIG, extra: str = "") -> None:
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="fleetpulse-mosquitto-"))
        self._config_path = self._dir / "mosquitto.conf"
        body = render_config(config.read_text(), self.port, self._dir)
        self._config_path.write_text(body + "\n" + extra)
        _let_broker_user_write(self._dir)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self._process = subprocess.Popen(
            [binary, "-c", str(self._config_path)],
            stdout=subprocess.DEVNULL,
            stderr=(self._dir / "mosquitto.log").open("ab"),
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log = (self._dir / "mosquitto.log").read_text(errors="replace")
                raise RuntimeError(f"mosquitto exited at start: {log[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} in {START_TIMEOUT_S} s")

    def stop(self) -> None:
        """SIGTERM: Mosquitto saves its persistence file and exits."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)
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
        shutil.rmtree(self._dir, ignore_errors=True)
