"""An independent MQTT client for tests: paho-mqtt's own network loop, not our wrapper."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

Message = tuple[str, bytes | str | dict[str, Any] | list[Any]]
PUBLISH_TIMEOUT_S = 20.0


def _encode(payload: bytes | str | dict[str, Any] | list[Any]) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload).encode()


def connect(url: str, client_id: str | None = None, **will: Any) -> paho.Client:
    parts = urlsplit(url)
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"test-pub-{uuid.uuid4().hex[:8]}",
        protocol=paho.MQTTv5,
    )
    client.max_inflight_messages_set(100)
    if will:
        client.will_set(**will)
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    client.loop_start()
    return client


def publish_sync(url: str, messages: Iterable[Message], qos: int = 1) -> int:
    client = connect(url)
    try:
        infos = [client.publish(topic, _encode(payload), qos=qos) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(PUBLISH_TIMEOUT_S)
            if not info.is_published():
                raise TimeoutError(f"message {info.mid} was not acknowledged by the broker")
        return len(infos)
    finally:
        client.disconnect()
        client.loop_stop()


async def publish(url: str, messages: Iterable[Message], qos: int = 1) -> int:
    """Publish and wait for every PUBACK; returns how many were sent."""
    return await asyncio.to_thread(publish_sync, url, list(messages), qos)
