"""How readings of the deployment and the components' stats objects become Prometheus
families: names, types and labels, checked through the exposition text Prometheus reads."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from fleetpulse.process_stats import ProcessStats
from web import hub, metrics, webhooks, ws_track
from web.fleet_state import Checkpoint, DatabaseReading, FleetReading, RedisReading


class _Families(Collector):
    def __init__(self, families: list[object]) -> None:
        self._families = families

    def collect(self) -> list[object]:  # type: ignore[override]
        return self._families


Exposed = dict[str, tuple[str, dict[tuple[tuple[str, str], ...], float]]]


def exposed(families: list[object]) -> Exposed:
    """name -> (type, {labels: value}) as Prometheus's parser reads the text."""
    registry = CollectorRegistry()
    registry.register(_Families(families))
    text = generate_latest(registry).decode()
    out: Exposed = {}
    for family in text_string_to_metric_families(text):
        values = {tuple(sorted(s.labels.items())): s.value for s in family.samples}
        out[family.name] = (family.type, values)
    return out


def test_process_counters_become_per_process_series_with_reasons_as_labels() -> None:
    reading = FleetReading(
        database=None,
        redis=RedisReading(
            processes=[
                ProcessStats("ingest", "h:1", {"messages": 10, "quarantined_ts_unit": 2}),
                ProcessStats("ingest", "h:2", {"messages": 5, "ignored_retained": 1}),
                ProcessStats("tracker", "h:3", {"events": 4, "devices": 7}),
            ],
            stream_lengths={0: 3, 1: 0},
        ),
        database_error="OperationalError: connection refused",
    )
    found = exposed(list(metrics.reading_families(reading)))
    assert found["fleetpulse_source_up"][1] == {
        (("source", "postgresql"),): 0.0,
        (("source", "redis"),): 1.0,
    }
    assert found["fleetpulse_ingest_messages"] == (
        "counter",
        {(("process", "h:1"),): 10.0, (("process", "h:2"),): 5.0},
    )
    assert found["fleetpulse_ingest_rejects"][1] == {
        (("process", "h:1"), ("reason", "ts_unit")): 2.0
    }
    assert found["fleetpulse_ingest_ignored"][1] == {
        (("process", "h:2"), ("what", "retained")): 1.0
    }
    assert found["fleetpulse_tracker_events"][0] == "counter"
    assert found["fleetpulse_tracker_devices"] == ("gauge", {(("process", "h:3"),): 7.0})
    assert found["fleetpulse_stage_processes"][1] == {
        (("stage", "ingest"),): 2.0,
        (("stage", "tracker"),): 1.0,
    }
    assert found["fleetpulse_handoff_stream_entries"][1][(("partition", "0"),)] == 3.0
    # Without PostgreSQL, nothing that comes from it is shown (rather than zeros).
    assert "fleetpulse_quarantine_last_hour" not in found
    assert "fleetpulse_tracker_lag_seconds" not in found


def test_tracker_lag_compares_stream_head_with_checkpoint_by_entry_time() -> None:
    reading = FleetReading(
        database=DatabaseReading(
            checkpoints={0: Checkpoint("1000-0", 2.0), 1: Checkpoint("5000-3", 1.0)}
        ),
        redis=RedisReading(stream_heads={0: "4500-1", 1: "5000-3", 2: "7000-0"}),
    )
    assert reading.tracker_lag_s() == {0: 3.5, 1: 0.0}
    found = exposed(list(metrics.reading_families(reading)))
    assert found["fleetpulse_tracker_lag_seconds"][1] == {
        (("partition", "0"),): 3.5,
        (("partition", "1"),): 0.0,
    }
    assert found["fleetpulse_tracker_checkpoint_age_seconds"][1][(("partition", "0"),)] == 2.0


@dataclass
class _Stats:
    messages_sent: int = 3
    clients: int = 2
    by_code: dict[int, int] = field(default_factory=lambda: {4000: 1})
    healthy: bool = True  # not a number: not shown
    _private: int = 9


@dataclass
class _Holder:
    stats: Any


def test_component_stats_are_read_by_duck_typing() -> None:
    app = web.Application()
    app[hub.HUB] = cast(Any, _Holder(_Stats()))
    found = exposed(list(metrics.component_families(app)))
    assert found["fleetpulse_ws_dispatch_messages_sent"] == ("counter", {(): 3.0})
    assert found["fleetpulse_ws_dispatch_clients"] == ("gauge", {(): 2.0})
    assert found["fleetpulse_ws_dispatch_by_code"][1] == {(("key", "4000"),): 1.0}
    assert "fleetpulse_ws_dispatch_healthy" not in found
    assert "fleetpulse_ws_dispatch__private" not in found


def test_components_absent_from_the_app_are_skipped() -> None:
    assert exposed(list(metrics.component_families(web.Application()))) == {}


def test_a_snapshot_method_is_preferred_to_fields() -> None:
    class WithSnapshot:
        def __init__(self) -> None:
            self.counts = Counter({"ignored": 1})

        def snapshot(self) -> dict[str, int]:
            return {"sent": 8}

    app = web.Application()
    app[webhooks.WEBHOOK_SENDER] = cast(Any, _Holder(WithSnapshot()))
    found = exposed(list(metrics.component_families(app)))
    assert found == {"fleetpulse_webhooks_sent": ("counter", {(): 8.0})}


def test_a_mapping_of_counts_and_levels_of_the_object_itself() -> None:
    class Hub:
        def __init__(self) -> None:
            self.counts = {"sent": 5, "closed_slow": 1}

        @property
        def clients(self) -> int:
            return 3

    app = web.Application()
    app[ws_track.TRACK_HUB] = cast(Any, Hub())
    found = exposed(list(metrics.component_families(app)))
    assert found == {
        "fleetpulse_ws_track_sent": ("counter", {(): 5.0}),
        "fleetpulse_ws_track_closed_slow": ("counter", {(): 1.0}),
        "fleetpulse_ws_track_clients": ("gauge", {(): 3.0}),
    }
