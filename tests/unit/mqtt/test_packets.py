"""Our PUBLISH decoder against paho's own on the same bytes, and packets cut from a
stream however it is split."""

import itertools

import paho.mqtt._packet as paho_packet
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt import packets


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: bytes, payload: bytes, qos: int, mid: int, properties: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    body += properties + payload
    return bytes([0x30 | qos << 1]) + _length(len(body)) + body


def _properties(expiry: int | None, user: list[tuple[str, str]], content_type: str | None) -> bytes:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if expiry is not None:
        props.MessageExpiryInterval = expiry
    if user:
        props.UserProperty = user
    if content_type is not None:
        props.ContentType = content_type
    return bytes(props.pack())  # type: ignore[no-untyped-call]


texts = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=20)


@given(
    topic=texts.filter(bool),
    payload=st.binary(max_size=300),
    qos=st.integers(0, 1),
    mid=st.integers(1, 65535),
    expiry=st.none() | st.integers(0, 2**32 - 1),
    user=st.lists(st.tuples(texts, texts), max_size=3),
    content_type=st.none() | texts,
)
def test_publish_decodes_as_paho_decodes_it(
    topic: str,
    payload: bytes,
    qos: int,
    mid: int,
    expiry: int | None,
    user: list[tuple[str, str]],
    content_type: str | None,
) -> None:
    packet = publish(topic.encode(), payload, qos, mid, _properties(expiry, user, content_type))
    [(first, body, end)] = packets.cut(bytearray(packet))
    assert end == len(packet)
    ours = packets.decode_publish(first, body)
    theirs = paho_packet.decode_publish(first, body, MQTTProtocolVersion.MQTTv5)
    assert ours.topic == theirs.topic.decode()
    assert ours.payload == bytes(theirs.payload)
    assert (ours.qos, ours.mid) == (theirs.qos, theirs.mid if qos else 0)


@given(
    cuts=st.lists(st.integers(0, 2_000), max_size=8),
    sizes=st.lists(st.integers(0, 400), min_size=1, max_size=6),
)
def test_packets_come_whole_and_in_order_however_the_stream_is_split(
    cuts: list[int], sizes: list[int]
) -> None:
    stream = b"".join(
        publish(f"fleet/v-{i}/telemetry".encode(), bytes([i]) * n, 1, i + 1, b"\x00")
        for i, n in enumerate(sizes)
    )
    buffer, seen = bytearray(), list[packets.Received]()
    for piece in _split(stream, cuts):
        buffer += piece
        found = packets.cut(buffer)
        seen.extend(packets.decode_publish(first, body) for first, body, _ in found)
        if found:
            del buffer[: found[-1][2]]
    assert not buffer
    assert [(m.topic, m.payload, m.mid) for m in seen] == [
        (f"fleet/v-{i}/telemetry", bytes([i]) * n, i + 1) for i, n in enumerate(sizes)
    ]


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def test_a_large_packet_has_a_multi_byte_length() -> None:
    packet = publish(b"t", b"x" * 200_000, 1, 7, b"\x00")
    assert len(packets.cut(bytearray(packet[:-1]))) == 0
    [(first, body, _)] = packets.cut(bytearray(packet))
    assert packets.decode_publish(first, body).payload == b"x" * 200_000


def test_other_packets_are_cut_too() -> None:
    pingresp, puback = b"\xd0\x00", b"\x40\x02\x00\x05"
    assert packets.cut(bytearray(pingresp + puback)) == [(0xD0, b"", 2), (0x40, b"\x00\x05", 6)]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x32\x80\x80\x80\x80\x01", "more than 4 bytes"),
    ],
)
def test_a_length_of_five_bytes_is_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(packets.MalformedPacket, match=reason):
        packets.cut(bytearray(data))


@pytest.mark.parametrize(
    ("first", "body", "reason"),
    [
        (0x36, b"\x00\x01t\x00\x01\x00", "QoS 3"),
        (0x30, b"\x00", "shorter than its topic length"),
        (0x30, b"\x00\x05ab", "ends inside its topic"),
        (0x32, b"\x00\x01t\x00", "ends inside its packet id"),
        (0x30, b"\x00\x01t", "ends inside its properties length"),
        (0x30, b"\x00\x01t\x05\x01", "ends inside its properties"),
        (0x30, b"\x00\x02\xff\xfe\x00", "not UTF-8"),
    ],
)
def test_broken_publish_is_malformed_with_the_reason(first: int, body: bytes, reason: str) -> None:
    with pytest.raises(packets.MalformedPacket, match=reason):
        packets.decode_publish(first, body)
