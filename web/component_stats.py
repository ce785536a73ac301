"""The one place that says where `/metrics` finds the counters of the web app's own
components (the dispatch websocket hub, the customer sockets, the webhook sender).

Each component is optional: it is looked up on the application at scrape time, through
the AppKey its module defines, and skipped when the module is not loaded or put nothing
on the app. So `/metrics` works whichever components a deployment runs, and a component
needs no import of the metrics code: it only keeps a stats object with numbers.

A stats object is read by duck typing: a `snapshot()` method returning a mapping, else
its public fields (a dataclass's, or `vars()`). Numbers become one series each;
a mapping of numbers (per close code, per outcome) becomes one series per key, labelled
`key`. Fields named in `gauges` are levels (clients connected now), the rest counters.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Component:
    name: str  # metric prefix: fleetpulse_<name>_<field>
    module: str  # the module defining the AppKey
    key: str  # the name of that AppKey in the module
    doc: str
    stats: str = "stats"  # the attribute of the object on the app that holds the numbers
    gauges: frozenset[str] = frozenset()  # fields that are levels rather than running totals
    # Numeric attributes (or properties) of the object itself, read as levels.
    levels: tuple[str, ...] = ()


COMPONENTS: tuple[Component, ...] = (
    Component(
        "ws_dispatch",
        "web.hub",
        "HUB",
        "dispatch websockets (/ws/dispatch)",
        gauges=frozenset({"clients", "queued"}),
    ),
    Component(
        "ws_track",
        "web.ws_track",
        "TRACK_HUB",
        "customer websockets (/ws/track/{token})",
        stats="counts",
        levels=("clients",),
    ),
    Component("webhooks", "web.webhooks", "WEBHOOK_SENDER", "webhook sender"),
)


@dataclass(frozen=True)
class Reading:
    """One number of one component: `labels` is empty or {"key": ...}."""

    component: Component
    field: str
    value: float
    key: str | None = None
    level: bool = False

    @property
    def is_gauge(self) -> bool:
        return self.level or self.field in self.component.gauges


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _fields(stats: Any) -> Mapping[str, Any]:
    """A stats object's numbers by name: its `snapshot()`, a dataclass's fields, a
    mapping's items, or its instance attributes."""
    snapshot = getattr(stats, "snapshot", None)
    if callable(snapshot):
        result = snapshot()
        return result if isinstance(result, Mapping) else {}
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        return {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
    if isinstance(stats, Mapping):
        return stats
    return vars(stats) if hasattr(stats, "__dict__") else {}


def _on_app(app: web.Application, component: Component) -> Any:
    module = sys.modules.get(component.module)
    key = getattr(module, component.key, None) if module is not None else None
    return app[key] if isinstance(key, web.AppKey) and key in app else None


def _numbers(component: Component, fields: Mapping[str, Any]) -> Iterator[Reading]:
    for name, value in fields.items():
        if name.startswith("_"):
            continue
        number = _number(value)
        if number is not None:
            yield Reading(component, name, number)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                number = _number(item)
                if number is not None:
                    yield Reading(component, name, number, str(key))


def read(app: web.Application) -> Iterator[Reading]:
    """Every number the loaded components keep, as they are at this moment."""
    for component in COMPONENTS:
        found = _on_app(app, component)
        if found is None:
            continue
        try:
            stats = getattr(found, component.stats, None)
            readings = list(_numbers(component, _fields(stats))) if stats is not None else []
            for name in component.levels:
                number = _number(getattr(found, name, None))
                if number is not None:
                    readings.append(Reading(component, name, number, level=True))
        except Exception:  # a component's bug must not take /metrics down with it
            log.exception("metrics: cannot read the stats of %s", component.doc)
            continue
        yield from readings
