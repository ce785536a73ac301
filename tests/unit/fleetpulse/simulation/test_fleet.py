"""Everything a simulated fleet sends decodes with FleetPulse's own codec: a fix, a
delivery report, or (the malformed knob) a refusal with the reason it was built for."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import timedelta

import pytest

from fleetpulse.simulation import deliveries
from fleetpulse.simulation.faults import MALFORMED_PREFIX, FaultConfig
from fleetpulse.simulation.fleet import Fleet, FleetConfig, build_fleet
from fleetpulse.simulation.messages import Outgoing, status
from ingest.validation import FixRules
from mqtt.codec import Codec, StatusReport
from mqtt.rejects import Rejected
from mqtt.topics import TopicScheme
from tests.unit.conftest import RECEIVED_AT
from tests.unit.fleetpulse.simulation.conftest import PORTO_CENTRE
from tracker.handoff import DeliveryReport
from tracker.positions import DeviceKind, Fix
from tracker.roads import RoadGraph

SCHEME = TopicScheme()
CODEC = Codec(SCHEME, FixRules(timedelta(days=7)))
ALL_FAULTS = FaultConfig(
    jitter=0.2, late=0.05, late_s=20, out_of_order=0.05, duplicate=0.05, offline=0.01,
    offline_s=30, malformed=0.05,
)  # fmt: skip


def run(fleet: Fleet) -> list[tuple[float, Outgoing]]:
    sent: list[tuple[float, Outgoing]] = []
    while (due := fleet.next_time_s()) is not None:
        sent.extend((due, m) for m in fleet.advance_to(due))
    sent.extend((fleet.config.duration_s or 0.0, m) for m in fleet.finish())
    return sent


def test_every_message_decodes_as_the_contract_says(grid: RoadGraph) -> None:
    config = FleetConfig(
        vans=4, drones=3, interval_s=2.0, duration_s=600.0, radius_m=700.0, faults=ALL_FAULTS
    )
    fleet = build_fleet(config, grid, PORTO_CENTRE, started_at=RECEIVED_AT)
    sent = run(fleet)
    fixes: list[Fix] = []
    refused: Counter[str] = Counter()
    for at_s, message in sent:
        decoded = CODEC.decode(message.topic(SCHEME), message.payload, fleet.time_of(at_s + 0.05))
        for item in decoded:
            if isinstance(item, Rejected):
                assert message.fault == MALFORMED_PREFIX + item.reason
                refused[item.reason] += 1
            else:
                assert isinstance(item, Fix)
                fixes.append(item)
    assert config.ticks == 300
    assert fleet.generated == 7 * 300
    assert len({f.key for f in fixes}) == fleet.generated  # every fix, exactly once
    assert sum(refused.values()) == fleet.faults.counts["malformed"] > 0
    kinds = Counter(f.kind for f in {f.key: f for f in fixes}.values())
    assert kinds == {DeviceKind.VEHICLE: 4 * 300, DeviceKind.DRONE: 3 * 300}
    for fix in fixes:
        if fix.kind is DeviceKind.DRONE:
            assert fix.battery is not None and fix.rel_alt is not None and fix.alt is not None
        else:
            assert fix.battery is None and fix.speed is not None


def test_fix_times_follow_the_report_interval(grid: RoadGraph) -> None:
    config = FleetConfig(vans=2, drones=1, interval_s=5.0, duration_s=60.0, radius_m=700.0)
    fleet = build_fleet(config, grid, PORTO_CENTRE, started_at=RECEIVED_AT)
    by_device: dict[str, list[Fix]] = {}
    for at_s, message in run(fleet):
        [fix] = CODEC.decode(message.topic(SCHEME), message.payload, fleet.time_of(at_s))
        assert isinstance(fix, Fix)
        assert abs(fix.ts - fleet.time_of(at_s)) <= timedelta(milliseconds=0.5)  # epoch ms
        by_device.setdefault(fix.device_id, []).append(fix)
    assert sorted(by_device) == ["sim-drone-001", "sim-van-001", "sim-van-002"]
    for fixes in by_device.values():
        assert len(fixes) == 12
        gaps = {round((b.ts - a.ts).total_seconds(), 3) for a, b in itertools.pairwise(fixes)}
        assert gaps == {5.0}
        assert [f.seq for f in fixes] == list(range(12))


def test_vans_report_the_deliveries_they_drop(grid: RoadGraph) -> None:
    config = FleetConfig(
        vans=2, interval_s=5.0, duration_s=3_600.0, radius_m=500.0, stops_per_van=2,
        service_s=40.0,
    )  # fmt: skip
    fleet = build_fleet(config, grid, PORTO_CENTRE, started_at=RECEIVED_AT)
    planned = deliveries.plan(fleet, "t1")
    assert [new.id for _, new in planned] == [
        "sim-van-001-t1-1", "sim-van-001-t1-2", "sim-van-002-t1-1", "sim-van-002-t1-2"
    ]  # fmt: skip
    for key, new in planned:
        fleet.deliveries[key] = new.id
        assert new.window_start == RECEIVED_AT < new.window_end
        assert new.vehicle_id == key[0] and new.sequence == key[2]
    reports = []
    for at_s, message in run(fleet):
        decoded = CODEC.decode(message.topic(SCHEME), message.payload, fleet.time_of(at_s))
        reports += [d for d in decoded if isinstance(d, DeliveryReport)]
    assert sorted(r.delivery_id for r in reports) == sorted(new.id for _, new in planned)
    assert fleet.reports == len(planned)
    for report in reports:
        new = dict((n.id, n) for _, n in planned)[report.delivery_id]
        assert report.device_id == new.vehicle_id and report.outcome == "delivered"
        assert report.ts <= new.window_end


def test_status_messages_are_retained_and_decode() -> None:
    for online in (True, False):
        message = status("sim-van-001", online)
        assert message.retain
        [report] = CODEC.decode(message.topic(SCHEME), message.payload, RECEIVED_AT)
        assert isinstance(report, StatusReport)
        assert report.status == ("online" if online else "offline")


def test_same_seed_same_messages(grid: RoadGraph) -> None:
    config = FleetConfig(vans=2, drones=1, interval_s=1.0, duration_s=120.0, faults=ALL_FAULTS)

    def payloads(seed: int) -> list[bytes]:
        fleet = build_fleet(
            FleetConfig(**{**config.__dict__, "seed": seed}), grid, PORTO_CENTRE, RECEIVED_AT
        )
        return [m.payload for _, m in run(fleet)]

    assert payloads(1) == payloads(1)
    assert payloads(1) != payloads(2)


def test_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="at least one"):
        FleetConfig(vans=0, drones=0)
    with pytest.raises(ValueError, match="interval"):
        FleetConfig(interval_s=0)
    with pytest.raises(ValueError, match="at least one stop"):
        FleetConfig(stops_per_van=0)
    with pytest.raises(ValueError, match="service time"):
        FleetConfig(service_s=-1)
