"""The manual-ack subscription against a real Mosquitto started from deploy/mosquitto."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from fleetpulse.local_servers import Mosquitto
from mqtt.client import Delivery, Subscription
from tests.conftest import eventually
from tests.publisher import publish

WINDOW = 10


def subscription(broker: Mosquitto, client_id: str = "window-test") -> Subscription:
    return Subscription(
        broker.url, client_id, ["$share/g/fleet/+/telemetry"], WINDOW, timedelta(minutes=5)
    )


async def collect(sub: Subscription, into: list[Delivery]) -> None:
    async for delivery in sub:
        into.append(delivery)


async def test_broker_starts_within_receive_maximum_and_nothing_is_lost(
    broker: Mosquitto,
) -> None:
    received: list[Delivery] = []
    async with subscription(broker) as sub:
        reader = asyncio.create_task(collect(sub, received))
        await publish(broker.url, [(f"fleet/d{i}/telemetry", str(i)) for i in range(300)])
        await eventually(lambda: len(received) >= WINDOW)
        await asyncio.sleep(0.3)
        assert len(received) == WINDOW, "the broker sent more than our Receive Maximum"
        while len(received) < 300:
            for delivery in received:
                delivery.ack()
            await asyncio.sleep(0.05)
        reader.cancel()
    assert sorted(int(d.payload) for d in received) == list(range(300))


async def test_a_consumer_that_falls_behind_pauses_reading_and_loses_nothing(
    broker: Mosquitto,
) -> None:
    """QoS 0 messages ignore the broker's window; with a stalled consumer, reading the
    socket stops instead of queueing without bound or dropping, and TCP holds the rest."""
    window, total = 500, 6000
    sub = Subscription(broker.url, "slow", ["fleet/+/telemetry"], window, timedelta(minutes=5))
    received: list[Delivery] = []
    async with sub:
        await publish(broker.url, [(f"fleet/d{i}/telemetry", str(i)) for i in range(total)], qos=0)
        await asyncio.sleep(0.5)
        assert sub.read_pauses == 1
        async for delivery in sub:
            received.append(delivery)
            delivery.ack()
            if len(received) == total:
                break
    assert sorted(int(d.payload) for d in received) == list(range(total))


async def test_unacknowledged_messages_come_back_on_the_next_session(broker: Mosquitto) -> None:
    first: list[Delivery] = []
    async with subscription(broker) as sub:
        reader = asyncio.create_task(collect(sub, first))
        await publish(broker.url, [(f"fleet/d{i}/telemetry", str(i)) for i in range(5)])
        await eventually(lambda: len(first) == 5)
        first[0].ack()
        first[1].ack()
        reader.cancel()
    assert not first[2].ack(), "an ack on a closed connection must report that it was lost"
    again: list[Delivery] = []
    async with subscription(broker) as sub:
        reader = asyncio.create_task(collect(sub, again))
        await eventually(lambda: len(again) == 3)
        reader.cancel()
    assert sorted(d.payload for d in again) == [b"2", b"3", b"4"]


async def test_session_survives_a_broker_restart_with_persistence(broker: Mosquitto) -> None:
    async with subscription(broker, "persist-test"):
        pass  # creates the persistent session and its subscription
    await publish(broker.url, [(f"fleet/d{i}/telemetry", str(i)) for i in range(20)])
    broker.restart()
    received: list[Delivery] = []
    async with subscription(broker, "persist-test") as sub:
        reader = asyncio.create_task(collect(sub, received))
        await eventually(lambda: len(received) >= WINDOW)
        for d in list(received):
            d.ack()
        await eventually(lambda: len(received) == 20)
        reader.cancel()
