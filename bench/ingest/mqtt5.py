"""Just enough MQTT v5 to publish QoS 1 fast: CONNECT, CONNACK, PUBLISH, PUBACK.

A Python client library spends tens of microseconds per QoS 1 message; these packets are
built from pre-encoded pieces so that one publisher process can offer ~20k fixes/s on a
shared 2-core machine. Only the client side of a plain-TCP, anonymous session is covered.
"""

from __future__ import annotations

import struct

PROTOCOL_NAME = b"\x00\x04MQTT"
PROTOCOL_LEVEL_V5 = 5
CONNECT_FLAG_CLEAN_START = 0x02
KEEPALIVE_S = 60

CONNECT = 0x10
CONNACK = 0x20
PUBLISH_QOS1 = 0x32
PUBACK = 0x40
DISCONNECT = 0xE0

PROPERTY_RECEIVE_MAXIMUM = 0x21
# MQTT v5 §3.2.2.3.3: absent Receive Maximum means 65,535.
DEFAULT_RECEIVE_MAXIMUM = 65_535
MAX_PACKET_ID = 65_535
# Reason codes below 0x80 are successes (0x10: accepted, no matching subscribers).
FIRST_ERROR_REASON = 0x80

_U16 = struct.Struct("!H")


class ProtocolError(Exception):
    """The broker said no, or sent something this client does not expect."""


def varint(n: int) -> bytes:
    """MQTT's variable byte integer (remaining length, property lengths)."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def utf8(text: str) -> bytes:
    raw = text.encode()
    return _U16.pack(len(raw)) + raw


def connect_packet(client_id: str) -> bytes:
    variable = (
        PROTOCOL_NAME
        + bytes([PROTOCOL_LEVEL_V5, CONNECT_FLAG_CLEAN_START])
        + _U16.pack(KEEPALIVE_S)
        + varint(0)  # no properties
    )
    body = variable + utf8(client_id)
    return bytes([CONNECT]) + varint(len(body)) + body


def disconnect_packet() -> bytes:
    return bytes([DISCONNECT, 0])


def publish_topic_prefix(topic: str) -> bytes:
    """The part of a PUBLISH body that precedes the packet id: the topic name."""
    return utf8(topic)


def publish_qos1(topic_prefix: bytes, packet_id: int, payload: bytes) -> bytes:
    """A QoS 1 PUBLISH with no properties; `topic_prefix` from `publish_topic_prefix`."""
    remaining = len(topic_prefix) + 3 + len(payload)  # packet id (2) + property length (1)
    return b"".join(
        (
            bytes([PUBLISH_QOS1]),
            varint(remaining),
            topic_prefix,
            _U16.pack(packet_id),
            b"\x00",
            payload,
        )
    )


def read_varint(buffer: bytes | bytearray, offset: int) -> tuple[int, int] | None:
    """(value, offset after it), or None when the buffer ends inside it."""
    value, shift = 0, 0
    while offset < len(buffer):
        byte = buffer[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
        if shift > 21:
            raise ProtocolError("malformed variable byte integer")
    return None


def split_packets(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Remove the complete packets at the front of `buffer`: (first byte, body) each."""
    packets: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(buffer):
        header = read_varint(buffer, offset + 1)
        if header is None:
            break
        length, start = header
        if start + length > len(buffer):
            break
        packets.append((buffer[offset], bytes(buffer[start : start + length])))
        offset = start + length
    del buffer[:offset]
    return packets


def parse_connack(body: bytes) -> int:
    """The broker's Receive Maximum (how many QoS 1 publishes we may have unacknowledged)."""
    if len(body) < 2:
        raise ProtocolError("short CONNACK")
    reason = body[1]
    if reason >= FIRST_ERROR_REASON:
        raise ProtocolError(f"CONNACK refused the connection: reason code 0x{reason:02x}")
    receive_maximum = DEFAULT_RECEIVE_MAXIMUM
    props = read_varint(body, 2)
    if props is None:
        return receive_maximum
    length, offset = props
    end = offset + length
    while offset < end:
        identifier = body[offset]
        offset += 1
        if identifier == PROPERTY_RECEIVE_MAXIMUM:
            receive_maximum = _U16.unpack_from(body, offset)[0]
        offset += _property_size(identifier, body, offset)
    return receive_maximum


def _property_size(identifier: int, body: bytes, offset: int) -> int:
    """Bytes taken by the value of a CONNACK property (MQTT v5 §2.2.2.2)."""
    if identifier in (0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A):  # byte
        return 1
    if identifier in (0x13, 0x21, 0x22):  # two-byte integer
        return 2
    if identifier in (0x02, 0x11, 0x27):  # four-byte integer
        return 4
    if identifier == 0x26:  # user property: two strings
        first = 2 + int(_U16.unpack_from(body, offset)[0])
        return first + 2 + int(_U16.unpack_from(body, offset + first)[0])
    if identifier in (0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F):  # string or binary
        return 2 + int(_U16.unpack_from(body, offset)[0])
    raise ProtocolError(f"unknown CONNACK property 0x{identifier:02x}")


def parse_puback(body: bytes) -> tuple[int, int]:
    """(packet id, reason code); a two-byte body means success (MQTT v5 §3.4.2.1)."""
    packet_id = int(_U16.unpack_from(body, 0)[0])
    return packet_id, body[2] if len(body) > 2 else 0
