"""An MQTT v5 subscriber that acknowledges a message only when told to.

aiomqtt acknowledges QoS 1 messages as soon as they arrive and its bounded queue drops
what it has already acknowledged. Here paho-mqtt's manual acknowledgement is switched on
underneath aiomqtt, so the caller acknowledges after its own commit, and the broker's
in-flight window (our Receive Maximum) bounds what is unacknowledged, instead of a queue
that drops; when the incoming queue still fills, reading the socket pauses (TCP pushes
back and the broker queues).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket as PahoMalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from mqtt import packets

if TYPE_CHECKING:
    from paho.mqtt.client import _InPacket

CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_S = 30
# One receive takes up to this much (some 500 fixes); more waits for the next turn of the
# event loop, so reading cannot starve the rest.
RECEIVE_BYTES = 64 * 1024
MAX_RECEIVES_PER_READ = 8  # only while TLS holds decoded bytes select() cannot see
# Reading pauses when this many Receive Maximum windows wait unconsumed in memory.
QUEUE_HIGH_WATER_WINDOWS = 2


class SubscriptionRefused(aiomqtt.MqttError):
    """The broker answered a SUBSCRIBE with a failure code (an ACL, say)."""


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


def _paho_in_packet(command: int, body: bytes) -> _InPacket:
    """paho's record of the packet being read: `command` 0 is none."""
    return {
        "command": command,
        "have_remaining": 1 if command else 0,
        "remaining_count": [],
        "remaining_mult": 1,
        "remaining_length": len(body),
        "packet": bytearray(body),
        "to_process": 0,
        "pos": 0,
    }


class _PausableClient(aiomqtt.Client):
    """aiomqtt's client, able to stop reading its socket.

    A full incoming queue then pushes back on the broker through TCP, which queues for us,
    instead of dropping. This matters because the broker's own window is not enough:
    Mosquitto 2.0.11 (Debian 12) was measured sending past our Receive Maximum once
    acknowledgements flow (10 → 83 → 331 unacknowledged with a window of 10).
    aiomqtt keeps its socket reader private, so this overrides the hook that installs it.
    """

    def __init__(self, *args: Any, high_water: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.high_water = high_water
        # Off until the subscriptions are acknowledged: a paused socket would hide the
        # SUBACK behind a resumed session's backlog.
        self.may_pause = False
        self.paused = False
        self.held = False
        self.pauses = 0
        self._fd = -1
        self._reader: Callable[[], None] | None = None
        # paho's messages as they come; aiomqtt's own queue and per-message wrapper cost
        # more than the rest of the pipeline (a task and a wait for every message).
        self.incoming: collections.deque[packets.Received] = collections.deque()
        self.arrived = asyncio.Event()
        self._buffer = bytearray()  # bytes received, not yet a whole packet or not yet handled

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        def read() -> None:
            try:
                self._read(client)
            except Exception as exc:  # a broken connection, reported to the iterator
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)
            self.arrived.set()

        def install() -> None:
            self._fd, self._reader = sock.fileno(), read
            self._buffer.clear()
            self.paused = False
            self._loop.add_reader(self._fd, read)
            self._misc_task = self._loop.create_task(self._misc_loop())

        # paho calls this from the executor thread that runs connect().
        self._loop.call_soon_threadsafe(install)

    def _read(self, client: paho.Client) -> None:
        """Take what the socket has (one receive, more while TLS holds decoded bytes),
        then handle every complete packet in order until reading pauses."""
        for _ in range(MAX_RECEIVES_PER_READ):
            try:
                data = client._sock_recv(RECEIVE_BYTES)
            except BlockingIOError:
                break
            except OSError:
                client._loop_rc_handle(paho.MQTT_ERR_CONN_LOST)
                return
            if not data:  # the broker closed the connection
                client._loop_rc_handle(paho.MQTT_ERR_CONN_LOST)
                return
            self._buffer += data
            with client._msgtime_mutex:  # what paho's keepalive check reads
                client._last_bytes_received = time.monotonic()
            if getattr(client.socket(), "pending", lambda: 0)() == 0:
                break
        done = 0
        try:
            for first_byte, body, end in packets.cut(self._buffer):
                done = end
                if first_byte & 0xF0 == packets.PUBLISH and first_byte & 0x06 != 0x04:
                    self._received(packets.decode_publish(first_byte, body))
                else:
                    rc = self._paho_handles(client, first_byte, body)
                    if rc != paho.MQTT_ERR_SUCCESS:
                        client._loop_rc_handle(rc)
                        return
                if self.paused or client.socket() is None:
                    break
        except packets.MalformedPacket:
            client._loop_rc_handle(paho.MQTT_ERR_PROTOCOL)
            raise
        finally:
            del self._buffer[:done]

    @staticmethod
    def _paho_handles(client: paho.Client, first_byte: int, body: bytes) -> MQTTErrorCode:
        """Any packet but a QoS 0/1 PUBLISH: paho keeps the protocol's state."""
        client._in_packet = _paho_in_packet(first_byte, body)
        try:
            return client._packet_handle()
        except PahoMalformedPacket:
            return paho.MQTT_ERR_PROTOCOL
        finally:
            client._in_packet = _paho_in_packet(0, b"")  # paho's state between packets

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        # Only a QoS 2 PUBLISH reaches here (through paho): the subscriptions ask for 1.
        self._received(
            packets.Received(message.topic, bytes(message.payload), message.mid, message.qos)
        )

    def _received(self, message: packets.Received) -> None:
        self.incoming.append(message)
        if self.may_pause and not self.paused and len(self.incoming) >= self.high_water:
            self.paused = True
            self.pauses += 1
            self._loop.remove_reader(self._fd)

    def hold(self) -> None:
        """Stop reading until `release`: the consumer cannot take more now, and reading
        ahead would only take the event loop from the work that frees it."""
        self.held = True
        if not self.paused and self._reader is not None:
            self.paused = True
            self._loop.remove_reader(self._fd)

    def release(self) -> None:
        self.held = False
        self.resume_if_drained()

    def resume_if_drained(self) -> None:
        if self.held:
            return
        if self.paused and len(self.incoming) <= self.high_water // 2 and self._reader:
            self.paused = False
            # Paused past the keepalive, paho may have closed the socket meanwhile.
            if not self._disconnected.done() and self._client.socket() is not None:
                self._loop.add_reader(self._fd, self._reader)
                if self._buffer:  # packets read before the pause, waiting for no socket event
                    self._loop.call_soon(self._reader)

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self._reader, self.paused = None, False
        super()._on_socket_close(client, userdata, sock)

    async def next_batch(self) -> collections.deque[packets.Received]:
        """Wait until messages are there (or the connection is gone: MqttError)."""
        while not self.incoming:
            if self._disconnected.done():
                raise aiomqtt.MqttError("Disconnected during message iteration")
            self.arrived.clear()
            waiter: asyncio.Future[Any] = asyncio.ensure_future(self.arrived.wait())
            try:
                await asyncio.wait({waiter, self._disconnected}, return_when="FIRST_COMPLETED")
            finally:
                waiter.cancel()
        return self.incoming


class Delivery:
    """One received message and the connection it must be acknowledged on."""

    __slots__ = ("_connection", "mid", "payload", "qos", "topic")

    def __init__(self, message: packets.Received, connection: Subscription) -> None:
        self.topic = message.topic
        self.payload = message.payload
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
        self._client = _PausableClient(
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
            high_water=QUEUE_HIGH_WATER_WINDOWS * receive_maximum,
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
                granted = await self._client.subscribe(
                    topic_filter, options=SubscribeOptions(qos=1)
                )
                refused = [code for code in granted if getattr(code, "is_failure", False)]
                if refused:
                    # Left unchecked, a refused subscription is an ingester that idles.
                    raise SubscriptionRefused(
                        f"the broker refused the subscription to {topic_filter!r} "
                        f"({refused[0]}); the account needs the rights of an ingester"
                    )
            self._client.may_pause = True
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
        client = self._client
        while True:
            incoming = await client.next_batch()
            while incoming:
                message = incoming.popleft()
                try:
                    client.resume_if_drained()
                except OSError as exc:  # the socket went away under us: a lost connection
                    raise aiomqtt.MqttError(f"connection lost: {exc}") from exc
                yield Delivery(message, self)

    def hold_reading(self) -> None:
        self._client.hold()

    def release_reading(self) -> None:
        try:
            self._client.release()
        except OSError as exc:  # the socket went away meanwhile: a lost connection
            raise aiomqtt.MqttError(f"connection lost: {exc}") from exc

    @property
    def read_pauses(self) -> int:
        """How often reading paused because the consumer fell behind."""
        return self._client.pauses

    def ack(self, mid: int, qos: int) -> bool:
        if not self._open:
            return False
        if qos > 0:
            return bool(self._paho.ack(mid, qos) == paho.MQTT_ERR_SUCCESS)
        return True
