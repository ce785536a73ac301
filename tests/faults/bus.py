"""A subscriber on the events channel that counts what it receives per event id, the way
a web worker would hear it, reconnecting as soon as Redis is back after a restart."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter

import redis

from tracker.redis_live import EVENTS_CHANNEL

BARRIER_CHANNEL = "fleetpulse-test:barrier"
RECONNECT_INTERVAL_S = 0.02
BARRIER_TIMEOUT_S = 20.0


class EventBus:
    def __init__(self, url: str) -> None:
        self._url = url
        self.seen: Counter[str] = Counter()
        self.reconnects = 0
        self._barriers: set[str] = set()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-bus", daemon=True)

    def __enter__(self) -> EventBus:
        self._thread.start()
        if not self._subscribed.wait(BARRIER_TIMEOUT_S):
            raise AssertionError("could not subscribe to the events channel")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                with redis.Redis.from_url(self._url) as client, client.pubsub() as pubsub:
                    pubsub.subscribe(EVENTS_CHANNEL, BARRIER_CHANNEL)
                    while not self._stop.is_set():
                        message = pubsub.get_message(timeout=0.2)
                        if message is None:
                            continue
                        if message["type"] == "subscribe":
                            if not first and message["channel"] == EVENTS_CHANNEL.encode():
                                self.reconnects += 1
                            first = False
                            self._subscribed.set()
                        elif message["type"] == "message":
                            self._take(message["channel"], message["data"])
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                time.sleep(RECONNECT_INTERVAL_S)

    def _take(self, channel: bytes, data: bytes) -> None:
        with self._lock:
            if channel == BARRIER_CHANNEL.encode():
                self._barriers.add(data.decode())
            else:
                self.seen[json.loads(data)["id"]] += 1

    def barrier(self) -> Counter[str]:
        """Everything published before this call, counted: a marker published now reaches
        this connection after every message Redis delivered to it before."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + BARRIER_TIMEOUT_S
        with redis.Redis.from_url(self._url) as client:
            while True:
                if client.publish(BARRIER_CHANNEL, token) > 0:
                    break  # our subscriber is connected and will see it
                if time.monotonic() > deadline:
                    raise AssertionError("the bus subscriber is not connected")
                time.sleep(0.05)
        while time.monotonic() < deadline:
            with self._lock:
                if token in self._barriers:
                    return Counter(self.seen)
            time.sleep(0.02)
        raise AssertionError("the barrier marker never arrived")
