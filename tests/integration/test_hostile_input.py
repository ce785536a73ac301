"""Hostile input end to end: a private Mosquitto from the project's config, a running
ingester, PostgreSQL, and the served REST API.

- What the broker refuses (over 1 MiB, NUL, wildcards or broken UTF-8 in a topic name)
  never reaches the ingester: the broker disconnects the publisher with a reason code.
- Everything else that is bad is quarantined with its reason, counted here by SQL:
  oversized payloads (over 256 KiB), deep nesting, broken UTF-8, NaN, huge numbers,
  device ids that break the rule, topics outside the scheme, SQL metacharacters in
  every string field of every payload kind. What is stored is stored verbatim, and
  nothing is executed. The device is the topic's, never a payload's; that a device
  cannot publish on another's topics is the broker's ACL, tested against a secured
  Mosquitto in tests/integration/mqtt/test_device_acl.py.
- A flooding device is limited, counted and sampled (ingest/flood.py).
- SQL metacharacters in REST string fields are stored verbatim or refused with a 4xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import psycopg
from aiohttp import ClientSession

from bench.ingest import mqtt5
from fleetpulse.database import connect
from fleetpulse.settings import Settings
from ingest import store
from ingest.flood import BURST_S, SAMPLE_PER_MINUTE
from ingest.writer import QUARANTINE_PAYLOAD_BYTES
from mqtt.codec import MAX_PAYLOAD_BYTES
from tests.conftest import eventually, make_settings, make_token, running_ingester, web_client
from tests.publisher import publish
from tracker import delivery_store

PORTO = (41.1496, -8.6109)
SQL = (
    "'; DROP TABLE telemetry; --",
    '"; DROP TABLE quarantine; --',
    "$$; DROP TABLE deliveries; $$",
    "\\'; SELECT pg_sleep(30); --",
    "' OR '1'='1",
    "%s %(x)s {0} \\x00 \\\\ E'\\\\'",
)
TABLES = ("telemetry", "quarantine", "devices", "deliveries", "events", "fences", "api_tokens")
SOCKET_TIMEOUT_S = 10.0


def now_ms() -> int:
    return int(time.time() * 1000)


def fix(ts: int, **extra: Any) -> dict[str, Any]:
    return {"ts": ts, "lat": PORTO[0], "lon": PORTO[1], **extra}


def as_bytes(payload: Any) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()


async def rows(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(query, params)
        return list(await cur.fetchall())


async def count(url: str, query: str, *params: Any) -> int:
    return int((await rows(url, query, *params))[0][0])


async def tables_intact(url: str) -> None:
    for table in TABLES:
        assert await rows(url, "SELECT to_regclass(%s)", table) == [(table,)], table
        await count(url, f"SELECT count(*) FROM {table}")


# --- a raw MQTT v5 publisher: it sends what a client library would refuse to send --------


def raw_publish(url: str, topic: bytes, payload: bytes) -> tuple[str, int]:
    """One QoS 1 PUBLISH with the topic's bytes as given (length-prefixed); the broker's
    answer: ("puback", reason), ("disconnect", reason) or ("closed", -1)."""
    parts = urlsplit(url)
    with socket.create_connection(
        (parts.hostname or "127.0.0.1", parts.port or 1883), SOCKET_TIMEOUT_S
    ) as sock:
        sock.sendall(mqtt5.connect_packet(f"hostile-{time.monotonic_ns()}"))
        buffer = bytearray()
        answers = _read(sock, buffer)
        assert answers and answers[0][0] == mqtt5.CONNACK, answers
        packet = mqtt5.publish_qos1(len(topic).to_bytes(2, "big") + topic, 1, payload)
        # Refused mid-packet, the broker's DISCONNECT may still be in our receive buffer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(packet)
        while True:
            try:
                answers = _read(sock, buffer)
            except ConnectionResetError:
                answers = []
            for first, body in answers:
                if first == mqtt5.PUBACK:
                    return "puback", mqtt5.parse_puback(body)[1]
                if first == mqtt5.DISCONNECT:
                    return "disconnect", body[0] if body else 0
            if not answers:
                return "closed", -1


def _read(sock: socket.socket, buffer: bytearray) -> list[tuple[int, bytes]]:
    while True:
        data = sock.recv(65536)
        if not data:
            return []
        buffer += data
        packets = mqtt5.split_packets(buffer)
        if packets:
            return packets


# --- the broker's refusals ---------------------------------------------------------------

PACKET_TOO_LARGE = 0x95
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
NO_MATCHING_SUBSCRIBERS = 0x10


async def test_the_broker_refuses_oversized_packets_and_malformed_topic_names(
    settings: Settings,
) -> None:
    url = settings.mqtt_url
    good = json.dumps(fix(now_ms())).encode()
    async with running_ingester(settings) as ingester:
        refused = {
            "over 1 MiB": await asyncio.to_thread(
                raw_publish, url, b"fleet/van-1/telemetry", b"[" + b" " * (2 << 20) + b"]"
            ),
            "NUL": await asyncio.to_thread(raw_publish, url, b"fleet/van\x001/telemetry", good),
            "+": await asyncio.to_thread(raw_publish, url, b"fleet/+/telemetry", good),
            "#": await asyncio.to_thread(raw_publish, url, b"fleet/#", good),
            "not UTF-8": await asyncio.to_thread(raw_publish, url, b"fleet/\xff/telemetry", good),
        }
        # Topics outside the subscriptions are routed nowhere: the broker says so.
        unrouted = await asyncio.to_thread(
            raw_publish, url, b"fleet/van-1/../van-2/telemetry", good
        )
        accepted = await asyncio.to_thread(raw_publish, url, b"fleet/van-1/telemetry", good)
        await eventually(lambda: ingester.stats.counts["acked"] >= 1)
        # Past the refusals: only the good message ever reached the ingester.
        assert ingester.stats.counts["messages"] == 1
    assert refused == {
        "over 1 MiB": ("disconnect", PACKET_TOO_LARGE),
        "NUL": ("disconnect", MALFORMED_PACKET),
        "+": ("disconnect", PROTOCOL_ERROR),
        "#": ("disconnect", PROTOCOL_ERROR),
        "not UTF-8": ("disconnect", MALFORMED_PACKET),
    }
    assert unrouted == ("puback", NO_MATCHING_SUBSCRIBERS)
    assert accepted == ("puback", 0)
    db = settings.database_url
    assert await count(db, "SELECT count(*) FROM telemetry WHERE device_id = 'van-1'") == 1
    assert await count(db, "SELECT count(*) FROM telemetry WHERE device_id <> 'van-1'") == 0
    assert await count(db, "SELECT count(*) FROM quarantine") == 0


# --- hostile payloads: every reject quarantined with its reason ---------------------------


def hostile_messages(t0: int) -> tuple[list[tuple[str, Any, str]], int]:
    """(topic, payload, expected reason or "stored") and the number of fixes to store."""
    messages: list[tuple[str, Any, str]] = []
    fixes = 0
    for k, text in enumerate(SQL):
        ts = t0 + k * 1000
        messages += [
            # every string field of a fix
            ("fleet/van-1/telemetry", {"ts": text, "lat": 1.0, "lon": 2.0}, "ts_invalid"),
            ("fleet/van-1/telemetry", fix(ts, kind=text), "invalid_field"),
            # unknown fields are ignored; the payload cannot name another device
            ("fleet/van-1/telemetry", fix(ts + 1, note=text, device_id="van-2"), "stored"),
            # the device id in the topic
            (f"fleet/{text}/telemetry", fix(ts), "bad_device_id"),
            (f"owntracks/{text}/phone", {"_type": "lwt"}, "bad_device_id"),
            # a status
            ("fleet/van-1/status", text.encode(), "invalid_status"),
            # every string field of a delivery report
            (
                "fleet/van-1/delivery",
                {"delivery_id": text, "outcome": "failed", "ts": ts},
                "invalid_field",
            ),
            (
                "fleet/van-1/delivery",
                {"delivery_id": "parcel-0", "outcome": text, "ts": ts},
                "invalid_field",
            ),
            (
                "fleet/van-1/delivery",
                {"delivery_id": f"parcel-{k + 1}", "outcome": "failed", "ts": ts, "detail": text},
                "stored",
            ),
            # OwnTracks: an unknown _type is ignored and counted; tid is not stored
            ("owntracks/alice/phone", {"_type": text}, "stored"),
            (
                "owntracks/alice/phone",
                {"_type": "location", "lat": 1, "lon": 2, "tst": ts // 1000, "tid": text},
                "stored",
            ),
        ]
        fixes += 2
    big = b'{"ts":%d,"lat":1,"lon":2,"pad":"' % t0 + b"x" * (300 * 1024) + b'"}'
    deep_arrays = b"[" * 100_000 + b"]" * 100_000
    deep_field = as_bytes(fix(t0))[:-1] + b',"junk":' + b'{"a":' * 20_000 + b"1" + b"}" * 20_001
    buffer = [fix(t0 - 3_600_000 + k * 1000) for k in range(3000)]  # an hour at 1 Hz
    messages += [
        ("fleet/van-1/telemetry", big, "payload_too_large"),
        ("fleet/van-1/telemetry", deep_arrays, "invalid_json"),
        ("fleet/van-1/telemetry", deep_field, "invalid_json"),
        ("fleet/van-1/delivery", b'{"delivery_id":"p","detail":"\xff"}', "invalid_json"),
        ("fleet/van-1/telemetry", b'{"ts":%d,"lat":NaN,"lon":2}' % t0, "invalid_json"),
        ("fleet/van-1/telemetry", b'{"ts":%d,"lat":1e400,"lon":2}' % t0, "invalid_field"),
        ("fleet/van-1/telemetry", fix(t0 + 7, seq=10**30), "value_out_of_range"),
        ("fleet/van-1/telemetry", b"\x00\x01\x02", "invalid_json"),
        (f"fleet/{'x' * 5000}/telemetry", fix(t0), "bad_device_id"),
        ("fleet/v\u0430n-1/telemetry", fix(t0), "bad_device_id"),  # Cyrillic a
        ("fleet/\uff56\uff41\uff4e-1/telemetry", fix(t0), "bad_device_id"),  # fullwidth
        ("fleet/van-1\u200b/telemetry", fix(t0), "bad_device_id"),  # zero-width space
        ("owntracks/a/b:c", {"_type": "location", "lat": 1, "lon": 2, "tst": 1}, "unknown_topic"),
        ("fleet/van-3/telemetry", buffer, "stored"),
    ]
    return messages, fixes + len(buffer)


async def test_every_hostile_payload_is_quarantined_with_its_reason_or_stored_verbatim(
    settings: Settings,
) -> None:
    db = settings.database_url
    t0 = now_ms() - 600_000
    conn = await connect(db)
    try:
        for k in range(len(SQL) + 1):
            await delivery_store.create(
                conn,
                delivery_store.NewDelivery(
                    id=f"parcel-{k}",
                    vehicle_id="van-1",
                    dest_lat=PORTO[0],
                    dest_lon=PORTO[1],
                    window_start=datetime.now(UTC) - timedelta(hours=1),
                    window_end=datetime.now(UTC) + timedelta(hours=1),
                ),
            )
    finally:
        await conn.close()
    messages, fixes = hostile_messages(t0)
    async with running_ingester(settings) as ingester:
        await publish(settings.mqtt_url, [(t, as_bytes(p)) for t, p, _ in messages])
        await eventually(lambda: ingester.stats.counts["acked"] >= len(messages))
        counts = ingester.stats.counts
    expected = Counter(reason for _, _, reason in messages if reason != "stored")
    found = dict(await rows(db, "SELECT reason, count(*) FROM quarantine GROUP BY reason"))
    assert found == dict(expected)
    await tables_intact(db)
    # Each reject kept with its topic and bytes (the first 64 KiB) and its full size.
    stored = Counter(
        (topic, reason, bytes(payload), size)
        for topic, reason, payload, size in await rows(
            db, "SELECT topic, reason, payload, payload_size FROM quarantine"
        )
    )
    sent = Counter(
        (topic, reason, as_bytes(p)[:QUARANTINE_PAYLOAD_BYTES], len(as_bytes(p)))
        for topic, p, reason in messages
        if reason != "stored"
    )
    assert stored == sent
    (big,) = [as_bytes(p) for _, p, reason in messages if reason == "payload_too_large"]
    oversized = await rows(db, "SELECT detail FROM quarantine WHERE reason = 'payload_too_large'")
    assert oversized == [(f"{len(big)} bytes; the limit is {MAX_PAYLOAD_BYTES}",)]
    # Device ids that break the rule are kept verbatim, as parameters, never as SQL.
    query = "SELECT device_id FROM quarantine WHERE reason = 'bad_device_id'"
    bad_ids = {r[0] for r in await rows(db, query)}
    assert set(SQL) <= bad_ids
    assert {f"{s}:phone".lower() for s in SQL} <= bad_ids
    # Stored: the fixes, under the topic's device only, and the drivers' notes verbatim.
    assert await count(db, "SELECT count(*) FROM telemetry") == fixes
    devices = dict(await rows(db, "SELECT device_id, count(*) FROM telemetry GROUP BY 1"))
    assert devices == {"van-1": len(SQL), "alice:phone": len(SQL), "van-3": 3000}
    notes = await rows(db, "SELECT detail FROM events WHERE kind = 'failed' ORDER BY detail")
    assert sorted(n[0] for n in notes) == sorted(SQL)
    assert await count(db, "SELECT count(*) FROM deliveries WHERE state = 'failed'") == len(SQL)
    assert counts["ignored_owntracks_other"] == len(SQL)
    assert counts["rate_limited"] == 0


# --- a flooding device --------------------------------------------------------------------


async def test_a_flooding_device_is_limited_counted_and_sampled(settings: Settings) -> None:
    db = settings.database_url
    rate = settings.device_max_rate
    assert rate == 10.0, "the default limit"
    t0 = now_ms() - 120_000
    flood = [("fleet/flooder/telemetry", fix(t0 + k)) for k in range(1000)]  # 1 ms apart
    calm = [("fleet/calm/telemetry", fix(t0 + k * 1000)) for k in range(30)]  # 1 Hz
    async with running_ingester(settings) as ingester:
        await publish(settings.mqtt_url, [*flood, *calm])
        await eventually(lambda: ingester.stats.counts["acked"] >= len(flood) + len(calm))
    # The burst (a minute at the rate), then what 999 ms of fix time refill.
    admitted = int(rate * BURST_S) + int(rate * 0.999)
    over = len(flood) - admitted
    stored = dict(await rows(db, "SELECT device_id, count(*) FROM telemetry GROUP BY 1"))
    assert stored == {"flooder": admitted, "calm": len(calm)}
    sampled = await rows(db, "SELECT device_id, topic, detail FROM quarantine")
    # The first ten per minute of arrival: one minute's worth unless the machine took a
    # minute to take in a thousand messages (tests/unit/ingest/test_flood.py is exact).
    assert SAMPLE_PER_MINUTE <= len(sampled) < over
    assert all(r[0] == "flooder" and r[1] == "fleet/flooder/telemetry" for r in sampled)
    assert all("over its limit of 10/s" in r[2] for r in sampled)
    conn = await connect(db)
    try:
        totals = await store.totals(conn)  # what `fleetpulse stats --json` prints
    finally:
        await conn.close()
    assert totals["counters"]["rate_limited"] == over
    assert totals["counters"]["rate_limited_unquarantined"] == over - len(sampled)
    assert totals["quarantined"] == {"rate_limited": len(sampled)}

    # With the limit off, the same flood is stored whole. (The same client id: a new one
    # would join the shared subscription beside the stopped ingester's session, which
    # the broker would go on giving its share.)
    unlimited = make_settings(
        database_url=db,
        mqtt_url=settings.mqtt_url,
        redis_url=settings.redis_url,
        client_id=settings.client_id,
        device_max_rate="0",
    )
    again = [("fleet/flooder-2/telemetry", fix(t0 + k)) for k in range(1000)]
    async with running_ingester(unlimited) as ingester:
        await publish(settings.mqtt_url, again)
        await eventually(lambda: ingester.stats.counts["acked"] >= len(again))
        assert ingester.stats.counts["rate_limited"] == 0
    assert await count(db, "SELECT count(*) FROM telemetry WHERE device_id = 'flooder-2'") == 1000


# --- REST string fields -------------------------------------------------------------------


def circle(name: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": {"name": name, "radius_m": 50, **properties},
        "geometry": {"type": "Point", "coordinates": [PORTO[1], PORTO[0]]},
    }


async def answer(http: ClientSession, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with http.request(method, path, json=body) as resp:
        text = await resp.text()
        assert resp.status < 500, f"{method} {path} {body!r}: {resp.status} {text[:500]}"
        return resp.status, (json.loads(text) if text and "json" in resp.content_type else text)


def refused(status: int) -> bool:
    return 400 <= status < 500


async def test_sql_metacharacters_in_rest_strings_are_stored_verbatim_or_refused(
    settings: Settings,
) -> None:
    db = settings.database_url
    token = await make_token(settings, "admin")
    nul = "a\x00b"
    async with web_client(settings, token) as http:
        parcel = {
            "id": "parcel-1",
            "vehicle_id": "van-1",
            "destination": {"lat": PORTO[0], "lon": PORTO[1]},
            "window_start": datetime.now(UTC).isoformat(),
            "window_end": (datetime.now(UTC) + timedelta(hours=2)).isoformat(),
        }
        assert (await answer(http, "POST", "/api/v1/deliveries", parcel))[0] == 201
        status, hook = await answer(
            http, "POST", "/api/v1/webhooks", {"url": "http://127.0.0.1:9/hook"}
        )
        assert status == 201
        for k, text in enumerate([*SQL, nul]):
            quoted = quote(text, safe="")
            # Ids must match their patterns: refused, in the path or in a body.
            for method, path, body in (
                ("PUT", f"/api/v1/geofences/{quoted}", circle("x")),
                ("GET", f"/api/v1/geofences/{quoted}", None),
                ("DELETE", f"/api/v1/geofences/{quoted}", None),
                ("GET", f"/api/v1/deliveries/{quoted}", None),
                ("POST", f"/api/v1/deliveries/{quoted}/cancel", {}),
                ("POST", "/api/v1/deliveries", {**parcel, "id": text}),
                ("POST", "/api/v1/deliveries", {**parcel, "vehicle_id": text}),
                ("POST", "/api/v1/webhooks", {"url": f"http://127.0.0.1:9/{text}"}),
                ("PATCH", f"/api/v1/webhooks/{hook['id']}", {"url": f"http://{text}/"}),
                ("DELETE", f"/api/v1/tokens/{quoted}", None),
                ("GET", f"/api/v1/webhooks/{quoted}", None),
                ("PATCH", f"/api/v1/webhooks/{quoted}", {"description": "x"}),
                ("DELETE", f"/api/v1/webhooks/{quoted}", None),
                ("GET", f"/api/v1/webhooks/{quoted}/deliveries", None),
                ("POST", f"/api/v1/webhooks/deliveries/{quoted}/replay", None),
                ("POST", f"/api/v1/alerts/{quoted}/ack", None),
                ("GET", f"/api/v1/devices/{quoted}/history", None),
                ("GET", f"/api/v1/devices/{quoted}/live", None),
                ("GET", f"/api/v1/devices/{quoted}", None),
                ("GET", f"/api/v1/track/{quoted}", None),
            ):
                status, _ = await answer(http, method, path, body)
                assert refused(status), (method, path, body, status)
            # Free text: stored verbatim (read back equal), or refused when it holds a NUL.
            for method, path, body, read in (
                ("PUT", f"/api/v1/geofences/f-{k}", circle(text), f"/api/v1/geofences/f-{k}"),
                ("POST", "/api/v1/tokens", {"name": text, "role": "viewer"}, None),
                ("PATCH", f"/api/v1/webhooks/{hook['id']}", {"description": text}, None),
            ):
                status, stored = await answer(http, method, path, body)
                if text == nul:
                    assert refused(status), (method, path, status)
                    continue
                assert status in (200, 201), (method, path, status, stored)
                if read is not None:
                    stored = (await answer(http, "GET", read))[1]
                name = stored["properties"]["name"] if "properties" in stored else None
                assert text in (name, stored.get("name"), stored.get("description")), stored
            for name in ("device", "fence", "delivery", "after"):
                status, page = await answer(http, "GET", f"/api/v1/events?{name}={quoted}")
                assert refused(status) or page["items"] == [], (name, status, page)
        # A closing note, verbatim.
        status, _ = await answer(
            http,
            "POST",
            "/api/v1/deliveries/parcel-1/report",
            {"outcome": "failed", "detail": SQL[0] + SQL[2]},
        )
        assert status == 200
    await tables_intact(db)
    names = {r[0] for r in await rows(db, "SELECT name FROM fences")}
    assert names == set(SQL)
    tokens = {r[0] for r in await rows(db, "SELECT name FROM api_tokens")}
    assert set(SQL) <= tokens
    assert await rows(db, "SELECT description FROM webhook_subscriptions") == [(SQL[-1],)]
    notes = await rows(db, "SELECT detail FROM events WHERE kind = 'failed'")
    assert notes == [(SQL[0] + SQL[2],)]
    assert await count(db, "SELECT count(*) FROM deliveries") == 1
