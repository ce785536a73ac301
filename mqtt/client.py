"""An MQTT v5 subscriber that acknowledges a message only when told to.

aiomqtt acknowledges QoS 1 messages as soon as they arrive and its bounded queue drops
what it has already acknowledged. Here paho-mqtt's manual acknowledgement is switched on
underneath aiomqtt, so the caller acknowledges after its own commit, and the broker's
in-flight window (our Receive Maximum) bounds what is unacknowledged, instead of a queue
that drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Self
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_S = 30


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
        )


class CountingQueue(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's incoming queue, counting what it sheds when full.

    Only QoS 0 messages can reach the bound: QoS 1 deliveries are limited by the
    Receive Maximum, which is kept below the queue's size.
    """

    dropped = 0

    def put_nowait(self, item: aiomqtt.Message) -> None:
        try:
            super().put_nowait(item)
        except asyncio.QueueFull:
            CountingQueue.dropped += 1
            raise


class Delivery:
    """One received message and the connection it must be acknowledged on."""

    __slots__ = ("_connection", "mid", "payload", "qos", "topic")

    def __init__(self, message: aiomqtt.Message, connection: Subscription) -> None:
        self.topic = message.topic.value
        self.payload = message.payload if isinstance(message.payload, bytes) else b""
        self.mid = message.mid
        self.qos = message.qos
        self._connection = connection

    def ack(self) -> bool:
        """Acknowledge to the broker; False when the connection it came on is gone (the
        broker will send it again on the next session)."""
        return self._connection.ack(self.mid, self.qos)


class Subscription:
    """`async with Subscription(...) as sub: async for delivery in sub: ... delivery.ack()`

    One instance is one connection: reconnecting means a new instance. The session is
    persistent (clean start off, session expiry > 0), so the broker queues while we are away
    and re-sends what we had not acknowledged.
    """

    def __init__(
        self,
        url: str,
        client_id: str,
        filters: Sequence[str],
        receive_maximum: int,
        session_expiry: timedelta,
    ) -> None:
        endpoint = Endpoint.from_url(url)
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.ReceiveMaximum = receive_maximum
        properties.SessionExpiryInterval = int(session_expiry.total_seconds())
        self._filters = list(filters)
        self._client = aiomqtt.Client(
            hostname=endpoint.host,
            port=endpoint.port,
            username=endpoint.username,
            password=endpoint.password,
            identifier=client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=properties,
            keepalive=KEEPALIVE_S,
            timeout=CONNECT_TIMEOUT_S,
            tls_context=ssl.create_default_context() if endpoint.tls else None,
            queue_type=CountingQueue,
            max_queued_incoming_messages=4 * receive_maximum,
        )
        # aiomqtt exposes no manual-ack switch; its paho client is the only way in.
        self._paho = self._client._client
        self._paho.manual_ack_set(True)
        self._open = False

    async def __aenter__(self) -> Self:
        await self._client.__aenter__()
        self._open = True
        try:
            for topic_filter in self._filters:
                await self._client.subscribe(topic_filter, options=SubscribeOptions(qos=1))
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        with contextlib.suppress(aiomqtt.MqttError):  # already gone: nothing to close
            await self._client.__aexit__(exc_type, exc, tb)

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        async for message in self._client.messages:
            yield Delivery(message, self)

    def ack(self, mid: int, qos: int) -> bool:
        if not self._open:
            return False
        if qos > 0:
            self._paho.ack(mid, qos)
        return True
