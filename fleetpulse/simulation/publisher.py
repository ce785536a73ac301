"""Publishing as many devices: each with its own MQTT connection, client id and
credentials, as real devices have, so that the broker's per-device auth and ACL (and
the ingester's "a device publishes only as itself") see what production sees.

Every device connects with its last will (`offline`, retained, on its status topic),
says `online` after connecting and `offline` before a clean disconnect. Messages are
sent at QoS 1 with a small window in flight per device; a message whose PUBACK did not
come is sent again on the next connection (at least once: the ingester stores a resent
fix once). Per-device queues are bounded and `send` waits when one is full, so a slow
broker slows the simulation down rather than dropping anything; at the end every message
that could not be sent is counted (`unsent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self, TextIO

import aiomqtt

from fleetpulse.simulation.messages import Outgoing, status
from mqtt.client import Endpoint
from mqtt.credentials import device_username
from mqtt.topics import TopicScheme

RECONNECT_INTERVAL_S = 1.0
CONNECTS_AT_ONCE = 32  # connection attempts in progress at once: no connect storm
KEEPALIVE_S = 60
PUBACK_TIMEOUT_S = 10.0
INFLIGHT_PER_DEVICE = 16  # QoS 1 messages awaiting their PUBACK, per device
DEVICE_QUEUE = 1_000  # messages waiting per device; `send` waits when full
DRAIN_TIMEOUT_S = 30.0  # at the end, for the queues to empty
GOODBYE_TIMEOUT_S = 2.0  # for the `offline` status when a device stops
PROGRESS_TTY_EVERY_S = 1.0
PROGRESS_LOG_EVERY_S = 10.0  # when the display is not a terminal (a log file)
DEVICE_PLACEHOLDER = "{device}"


@dataclass(frozen=True)
class Credentials:
    """The username is the device's (`mqtt.credentials.device_username`: its id); the
    password comes from a template where `{device}` is the id (none without a template:
    brokers that let devices in without one)."""

    password_template: str | None = None

    def password(self, device_id: str) -> str | None:
        if self.password_template is None:
            return None
        return self.password_template.replace(DEVICE_PLACEHOLDER, device_id)


class RateLimiter:
    """At most `rate` messages per second over all devices, in slots 1/rate apart;
    None is no limit. A caller that falls behind does not earn a burst later."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate is not None and not rate > 0:
            raise ValueError(f"the rate must be positive, got {rate}")
        self.rate = rate
        self._clock = clock
        self._next = -float("inf")

    def reserve(self) -> float:
        """Take the next slot; returns how long to wait for it (seconds, >= 0)."""
        if self.rate is None:
            return 0.0
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + 1.0 / self.rate
        return slot - now

    async def acquire(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass
class Progress:
    """Counts of what was published, and the display line made of them."""

    messages: int = 0
    fixes: int = 0
    malformed: int = 0
    errors: int = 0
    resent: int = 0
    unsent: int = 0
    devices: int = 0
    connected: int = 0
    last_error: str = ""
    _mark: tuple[float, int] = field(default=(0.0, 0), repr=False)

    def start(self, now_s: float) -> None:
        self._mark = (now_s, self.fixes)

    def sent(self, message: Outgoing) -> None:
        self.messages += 1
        self.fixes += message.fixes
        if message.fault and message.fault.startswith("malformed:"):
            self.malformed += 1

    def error(self, device_id: str, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{device_id}: {exc}"

    def line(self, now_s: float) -> str:
        """The display line; the rate is fixes per second since the previous line."""
        since, before = self._mark
        rate = (self.fixes - before) / (now_s - since) if now_s > since else 0.0
        self._mark = (now_s, self.fixes)
        text = (
            f"{self.fixes:,} fixes sent ({rate:,.0f}/s) in {self.messages:,} messages, "
            f"{self.malformed:,} malformed on purpose, {self.errors:,} errors, "
            f"{self.connected}/{self.devices} devices connected"
        )
        if self.unsent:
            text += f", {self.unsent:,} UNSENT"
        if self.last_error:
            text += f" (last error: {self.last_error[:120]})"
        return text


class _Link:
    """One device's connection, with its own queue and sender task."""

    def __init__(self, publisher: Publisher, device_id: str) -> None:
        self.device_id = device_id
        self.queue: asyncio.Queue[Outgoing | None] = asyncio.Queue(publisher.queue_size)
        self.retry: deque[Outgoing] = deque()
        self._p = publisher
        self.task = asyncio.create_task(self._run(), name=f"mqtt-device-{device_id}")

    @property
    def pending(self) -> int:
        return self.queue.qsize() + len(self.retry)

    async def _run(self) -> None:
        p = self._p
        while True:
            try:
                await self._session()
                return
            except (aiomqtt.MqttError, OSError) as exc:
                p.progress.error(self.device_id, exc)
                await asyncio.sleep(RECONNECT_INTERVAL_S)

    def _client(self) -> aiomqtt.Client:
        p, endpoint = self._p, self._p.endpoint
        will_topic = p.scheme.status_topic(self.device_id)
        return aiomqtt.Client(
            hostname=endpoint.host,
            port=endpoint.port,
            username=device_username(self.device_id),
            password=p.credentials.password(self.device_id),
            identifier=self.device_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(will_topic, b"offline", qos=1, retain=True),
            keepalive=KEEPALIVE_S,
            timeout=PUBACK_TIMEOUT_S,
            tls_context=ssl.create_default_context() if endpoint.tls else None,
            max_inflight_messages=INFLIGHT_PER_DEVICE,
        )

    async def _session(self) -> None:
        p = self._p
        client = self._client()
        # aiomqtt warns from 10 pending publishes on; the window allows more on purpose.
        client.pending_calls_threshold = INFLIGHT_PER_DEVICE + 2
        async with p.connecting:
            await client.__aenter__()
        p.progress.connected += 1
        try:
            await self._publish(client, status(self.device_id, online=True))
            await self._serve(client)
        finally:
            # Also when stopped (^C): a clean disconnect does not fire the last will, so
            # the device says itself that it is gone.
            p.progress.connected -= 1
            with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
                offline = self._publish(client, status(self.device_id, online=False))
                await asyncio.wait_for(offline, GOODBYE_TIMEOUT_S)
            with contextlib.suppress(aiomqtt.MqttError, OSError):
                await client.__aexit__(None, None, None)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Send until the close marker; raises on a lost connection, with every message
        not acknowledged put back in `retry`."""
        p = self._p
        inflight: set[asyncio.Task[None]] = set()
        failure: BaseException | None = None

        def settled(message: Outgoing, task: asyncio.Task[None]) -> None:
            nonlocal failure
            inflight.discard(task)
            if task.cancelled():
                self.retry.append(message)
            elif task.exception() is not None:
                self.retry.append(message)
                failure = failure or task.exception()
            else:
                p.progress.sent(message)

        message: Outgoing | None = None
        try:
            while failure is None:
                if self.retry:
                    message = self.retry.popleft()
                    p.progress.resent += 1
                else:
                    message = await self.queue.get()
                if message is None:  # the close marker: all before it is sent
                    if inflight:
                        await asyncio.wait(inflight)
                    if failure is None:
                        return
                    self.queue.put_nowait(None)  # comes back after a reconnect
                    break
                await p.limiter.acquire()
                while len(inflight) >= INFLIGHT_PER_DEVICE and failure is None:
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.create_task(self._publish(client, message))
                inflight.add(task)
                task.add_done_callback(functools.partial(settled, message))
                message = None
            if inflight:
                await asyncio.wait(inflight)
        except asyncio.CancelledError:
            if message is not None:
                self.retry.appendleft(message)  # taken from the queue, not yet sent
            raise
        finally:
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)
        assert failure is not None
        raise aiomqtt.MqttError(f"publish failed: {failure}")

    async def _publish(self, client: aiomqtt.Client, message: Outgoing) -> None:
        await client.publish(
            message.topic(self._p.scheme), message.payload, qos=1, retain=message.retain
        )


class Publisher:
    """`async with Publisher(...) as pub: await pub.send(message) ... await pub.close()`"""

    def __init__(
        self,
        mqtt_url: str,
        scheme: TopicScheme,
        credentials: Credentials | None = None,
        rate: float | None = None,
        queue_size: int = DEVICE_QUEUE,
        display: TextIO | None = None,
    ) -> None:
        self.endpoint = Endpoint.from_url(mqtt_url)
        self.scheme = scheme
        self.credentials = credentials or Credentials()
        self.limiter = RateLimiter(rate)
        self.queue_size = queue_size
        self.progress = Progress()
        self.connecting = asyncio.Semaphore(CONNECTS_AT_ONCE)
        self._links: dict[str, _Link] = {}
        self._display = display
        self._display_task: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        self.progress.start(time.monotonic())
        if self._display is not None:
            self._display_task = asyncio.create_task(self._show(), name="simulation-progress")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._closed:
            await self._stop()

    async def send(self, message: Outgoing) -> None:
        link = self._links.get(message.device_id)
        if link is None:
            link = self._links[message.device_id] = _Link(self, message.device_id)
            self.progress.devices += 1
        await link.queue.put(message)

    async def close(self, timeout_s: float = DRAIN_TIMEOUT_S) -> Progress:
        """Send what is queued (within `timeout_s`), disconnect every device cleanly,
        and return the final counts; what could not be sent is counted as unsent."""

        async def finish(link: _Link) -> None:
            await link.queue.put(None)  # waits while the queue is full
            await link.task

        finishing = [asyncio.create_task(finish(link)) for link in self._links.values()]
        if finishing:
            _, late = await asyncio.wait(finishing, timeout=timeout_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*finishing, return_exceptions=True)
        await self._stop()
        return self.progress

    async def _stop(self) -> None:
        self._closed = True
        links = list(self._links.values())
        for link in links:
            link.task.cancel()
        await asyncio.gather(*(link.task for link in links), return_exceptions=True)
        unsent = 0
        for link in links:
            unsent += len(link.retry)
            while not link.queue.empty():
                unsent += link.queue.get_nowait() is not None  # the close marker is no message
        self.progress.unsent = unsent
        if self._display_task is not None:
            self._display_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._display_task
            self._print(final=True)

    async def _show(self) -> None:
        tty = self._display is not None and self._display.isatty()
        every = PROGRESS_TTY_EVERY_S if tty else PROGRESS_LOG_EVERY_S
        while True:
            await asyncio.sleep(every)
            self._print(final=False)

    def _print(self, final: bool) -> None:
        display = self._display
        if display is None:
            return
        line = self.progress.line(time.monotonic())
        if display.isatty():
            display.write(f"\r\x1b[K{line}" + ("\n" if final else ""))
        else:
            display.write(line + "\n")
        display.flush()
