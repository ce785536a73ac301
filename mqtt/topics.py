"""Topic scheme: which topics carry what, and which device a topic speaks for.

<prefix>/<device_id>/telemetry     fixes (JSON object, or array for an offline buffer)
<prefix>/<device_id>/status        "online" / "offline" (the device's retained last will)
    <prefix>/<device_id>/delivery      the driver's outcome of a delivery: delivered / failed
owntracks/<user>/<device>          OwnTracks app messages, device id "<user>:<device>"
"""

from __future__ import annotations

import enum

import msgspec


class Route(enum.Enum):
    TELEMETRY = "telemetry"
    STATUS = "status"
    DELIVERY = "delivery"
    OWNTRACKS = "owntracks"
    OWNTRACKS_SUBTOPIC = "owntracks_subtopic"
    UNKNOWN = "unknown"


class Addressed(msgspec.Struct, frozen=True):
    route: Route
    device_id: str


class TopicScheme:
    """Builds subscriptions and reads the device id out of a topic."""

    def __init__(self, prefix: str = "fleet", owntracks_prefix: str = "owntracks") -> None:
        self.prefix = prefix.strip("/")
        self.owntracks_prefix = owntracks_prefix.strip("/")
        self._head = self.prefix + "/"
        self._owntracks_head = self.owntracks_prefix + "/"

    def telemetry_topic(self, device_id: str) -> str:
        return f"{self.prefix}/{device_id}/telemetry"

    def status_topic(self, device_id: str) -> str:
        return f"{self.prefix}/{device_id}/status"

    def filters(self) -> list[str]:
        return [
            f"{self.prefix}/+/telemetry",
            f"{self.prefix}/+/status",
            f"{self.prefix}/+/delivery",
            f"{self.owntracks_prefix}/#",
        ]

    def shared_filters(self, group: str) -> list[str]:
        """The same filters as a shared subscription: the group's members split the load."""
        return [f"$share/{group}/{f}" for f in self.filters()]

    def parse(self, topic: str) -> Addressed:
        """Route a topic. The device id is returned as it stands; callers check it."""
        if topic.startswith(self._head):
            parts = topic[len(self._head) :].split("/")
            if len(parts) == 2 and parts[1] == "telemetry":
                return Addressed(Route.TELEMETRY, parts[0])
            if len(parts) == 2 and parts[1] == "status":
                return Addressed(Route.STATUS, parts[0])
            if len(parts) == 2 and parts[1] == "delivery":
                return Addressed(Route.DELIVERY, parts[0])
        if topic.startswith(self._owntracks_head):
            parts = topic[len(self._owntracks_head) :].split("/")
            # A ':' inside a level would let owntracks/a/b:c pose as owntracks/a:b/c.
            if len(parts) >= 2 and parts[0] and parts[1] and ":" not in parts[0] + parts[1]:
                device_id = f"{parts[0]}:{parts[1]}".lower()
                route = Route.OWNTRACKS if len(parts) == 2 else Route.OWNTRACKS_SUBTOPIC
                return Addressed(route, device_id)
        return Addressed(Route.UNKNOWN, "")
