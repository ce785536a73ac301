"""Wire formats as typed structs; decoding them gives precise, path-named errors.

Unknown fields are ignored so that devices can add fields without being refused.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from tracker.positions import DeviceKind

AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


class FixPayload(msgspec.Struct):
    """Native telemetry: `ts` is RFC 3339 or epoch milliseconds."""

    ts: AwareDatetime | int | float
    lat: float
    lon: float
    alt: float | None = None
    rel_alt: float | None = None
    speed: float | None = None
    heading: float | None = None
    acc: float | None = None
    battery: float | None = None
    kind: DeviceKind | None = None
    seq: int | None = None


class DeliveryReportPayload(msgspec.Struct):
    """`fleet/<device>/delivery`: the driver closes a delivery from the vehicle."""

    delivery_id: str
    outcome: Literal["delivered", "failed"]
    ts: AwareDatetime | int | float
    detail: str = ""


class OwnTracksEnvelope(msgspec.Struct):
    type: str = msgspec.field(name="_type")


class OwnTracksLocation(msgspec.Struct):
    """OwnTracks `_type: location`: `tst` in epoch seconds, `vel` in km/h."""

    lat: float
    lon: float
    tst: int
    vel: float | None = None
    cog: float | None = None
    alt: float | None = None
    acc: float | None = None
    batt: float | None = None
    tid: str | None = None


fix_decoder = msgspec.json.Decoder(FixPayload)
raw_array_decoder = msgspec.json.Decoder(list[msgspec.Raw])
delivery_report_decoder = msgspec.json.Decoder(DeliveryReportPayload)
owntracks_envelope_decoder = msgspec.json.Decoder(OwnTracksEnvelope)
owntracks_location_decoder = msgspec.json.Decoder(OwnTracksLocation)
