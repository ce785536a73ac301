"""The fleet's side: one paho-mqtt connection publishing the workload at a steady rate
with QoS 1, so that a fault lands mid-stream.

paho keeps every QoS 1 message until the broker's PUBACK: what it could not send while
the broker was away, and what was in flight when the connection broke, it sends again
after reconnecting (flagged DUP). The broker may therefore receive a message twice; the
database must keep it once.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any

from paho.mqtt.reasoncodes import ReasonCode

from tests.faults.workload import Message
from tests.publisher import connect

CHUNK = 50
# paho numbers messages with 16-bit ids; more outstanding at once would reuse one.
MAX_MESSAGES = 60_000
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 1
NO_MATCHING_SUBSCRIBERS = 0x10  # an MQTT v5 PUBACK reason code


class PacedPublisher:
    def __init__(self, url: str, messages: Sequence[Message], per_second: float) -> None:
        if len(messages) > MAX_MESSAGES:
            raise ValueError(f"at most {MAX_MESSAGES} messages per publisher")
        self._url = url
        self._messages = messages
        self._per_second = per_second
        self._acknowledged: set[int] = set()
        self._lock = threading.Lock()
        self.published = 0  # handed to paho so far
        self.unmatched = 0
        self._thread = threading.Thread(target=self._run, name="fault-publisher", daemon=True)
        self._error: BaseException | None = None
        self._done = threading.Event()

    @property
    def acknowledged(self) -> int:
        with self._lock:
            return len(self._acknowledged)

    def _on_publish(self, client: Any, userdata: Any, mid: int, *rest: Any) -> None:
        codes = [r for r in rest if isinstance(r, ReasonCode)]
        if codes and codes[0].is_failure:
            return  # refused: stays unacknowledged, and `wait` reports it
        with self._lock:
            self._acknowledged.add(mid)
            # Accepted, but the broker had no subscriber for it: nobody will store it.
            self.unmatched += bool(codes and codes[0].value == NO_MATCHING_SUBSCRIBERS)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            client = connect(self._url)
        except BaseException as exc:
            self._error = exc
            self._done.set()
            return
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.on_publish = self._on_publish
        try:
            started = time.monotonic()
            for first in range(0, len(self._messages), CHUNK):
                if self._done.is_set():
                    return  # closed early: the test failed
                for topic, payload in self._messages[first : first + CHUNK]:
                    # Not connected (the broker restarting): paho queues it and sends it
                    # after reconnecting.
                    client.publish(topic, json.dumps(payload).encode(), qos=1)
                    self.published += 1
                due = started + self.published / self._per_second
                time.sleep(max(0.0, due - time.monotonic()))
            self._done.wait()  # until `wait` has seen every acknowledgement
        except BaseException as exc:
            self._error = exc
        finally:
            client.disconnect()
            client.loop_stop()

    def wait(self, within: float) -> None:
        """Until the broker has acknowledged every message."""
        deadline = time.monotonic() + within
        try:
            while self.acknowledged < len(self._messages):
                if self._error is not None:
                    raise AssertionError(f"the publisher failed: {self._error!r}")
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"the broker acknowledged {self.acknowledged} of"
                        f" {len(self._messages)} messages in {within} s"
                    )
                time.sleep(0.05)
        finally:
            self._done.set()
            self._thread.join(10)

    def close(self) -> None:
        """Stop publishing and disconnect, whatever was acknowledged so far."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(10)
