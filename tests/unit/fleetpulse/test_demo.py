"""The demo's pure decisions: which services it embeds, its fences, its banner."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path

from fleetpulse.demo import (
    DemoOptions,
    Prepared,
    banner,
    configured,
    demo_fences,
    wanted_servers,
)
from fleetpulse.embedded import _iotcore_config
from fleetpulse.local_servers import set_directive
from fleetpulse.settings import load_settings
from fleetpulse.simulation.deliveries import CreatedDelivery
from fleetpulse.simulation.drones import SORTIE_RADIUS_M
from fleetpulse.simulation.geo import haversine_m, offset
from tracker.positions import DeviceKind

PORTO = (41.1496, -8.6109)


def test_services_named_by_environment_or_flag_are_used_and_the_rest_embedded() -> None:
    given = configured(
        {"FLEETPULSE_DATABASE_URL": "postgresql://db.example/fleet", "PATH": "/usr/bin"},
        {"mqtt_url": "mqtt://broker.example:1883", "redis_url": None},
    )
    assert {"database_url", "mqtt_url"} <= given
    assert "redis_url" not in given
    wanted = wanted_servers(given, "auto", 4000)
    assert (wanted.postgres, wanted.redis, wanted.mqtt) == (False, True, False)


def test_nothing_configured_embeds_all_three() -> None:
    wanted = wanted_servers(configured({}, {}), "iotcore", 4000)
    assert (wanted.postgres, wanted.redis, wanted.mqtt) == (True, True, True)
    assert wanted.broker == "iotcore"


def test_fences_are_valid_and_placed_for_the_fleet() -> None:
    depot, centre, no_fly = demo_fences(PORTO)
    assert depot.shape.contains(*PORTO)
    assert centre.shape.contains(*offset(*PORTO, 1000, -1000))
    assert not centre.shape.contains(*offset(*PORTO, 1500, 0))
    assert centre.kinds == {DeviceKind.VEHICLE}
    assert no_fly.kinds == {DeviceKind.DRONE}
    assert not no_fly.shape.contains(*PORTO)  # drones take off outside it
    no_fly_middle = offset(*PORTO, 600, 900)
    assert no_fly.shape.contains(*no_fly_middle)
    assert haversine_m(*PORTO, *no_fly_middle) < SORTIE_RADIUS_M  # within the drones' reach
    assert len({f.id for f in (depot, centre, no_fly)}) == 3


def test_banner_carries_the_dispatch_link_token_and_each_vans_next_stop() -> None:
    settings = load_settings({"FLEETPULSE_WEB_PORT": "8099"})
    prepared = Prepared("tok_1", "fpt_secret", PORTO, "")
    created = [
        CreatedDelivery(
            f"demo-van-00{van}-x-{seq}",
            f"demo-van-00{van}",
            seq,
            PORTO,
            datetime(2026, 11, 27, tzinfo=UTC),
            f"t{van}{seq}",
            f"http://127.0.0.1:8099/track/t{van}{seq}",
        )
        for van in (1, 2)
        for seq in (1, 2, 3)
    ]
    text = banner(settings, prepared, created, DemoOptions(links=2), "embedded postgres")
    assert "dispatch:  http://127.0.0.1:8099/dispatch#token=fpt_secret" in text
    assert "token:     fpt_secret" in text
    assert "/track/t11  (demo-van-001-x-1, stop 1 of demo-van-001)" in text
    assert "/track/t21  (demo-van-002-x-1, stop 1 of demo-van-002)" in text
    assert "/track/t12" not in text


def test_iotcore_config_has_one_v5_listener_on_loopback() -> None:
    config = tomllib.loads(_iotcore_config(18884, 4000))
    assert "v4" not in config
    [listener] = config["v5"].values()
    assert listener["listen"] == "127.0.0.1:18884"
    assert listener["connections"]["max_inflight_count"] == 4000
    assert listener["connections"]["max_payload_size"] == 1048576


def test_redis_directives_are_replaced_not_duplicated() -> None:
    template = (Path(__file__).parents[3] / "deploy" / "redis" / "redis.conf").read_text()
    text = set_directive(template, "port", "4242")
    assert [line for line in text.splitlines() if line.startswith("port ")] == ["port 4242"]
    assert set_directive("save ''\n", "dir", "/x").endswith("dir /x\n")
