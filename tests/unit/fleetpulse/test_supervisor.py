"""fleetpulse.supervisor, the parts without processes: the children planned for a count,
the settings they inherit, the restart policy, how their output is tagged, the options."""

from __future__ import annotations

import json

import pytest

from fleetpulse import cli
from fleetpulse.errors import ConfigError, FleetPulseError
from fleetpulse.settings import load_settings
from fleetpulse.supervisor import (
    CrashHistory,
    RestartPolicy,
    Workers,
    describe_exit,
    plan,
    settings_env,
    tag_line,
    workers_from,
)


def test_plan_gives_each_child_its_own_identity() -> None:
    settings = load_settings({"FLEETPULSE_CLIENT_ID": "edge-7"})
    specs = plan(settings, Workers(ingesters=2, trackers=3, web=2))
    assert [s.name for s in specs] == [
        "ingest-0",
        "ingest-1",
        "tracker-0",
        "tracker-1",
        "tracker-2",
        "web-0",
        "web-1",
    ]
    by_name = {s.name: s for s in specs}
    assert by_name["ingest-0"].env == {"FLEETPULSE_CLIENT_ID": "edge-7-0"}
    assert by_name["ingest-1"].env == {"FLEETPULSE_CLIENT_ID": "edge-7-1"}
    assert by_name["tracker-2"].env == {
        "FLEETPULSE_TRACKER_INDEX": "2",
        "FLEETPULSE_TRACKER_COUNT": "3",
    }
    assert by_name["web-1"].env == {}
    assert {s.stage for s in specs} == {"ingest", "tracker", "web"}


def test_a_long_client_id_is_cut_to_leave_room_for_the_number() -> None:
    settings = load_settings({"FLEETPULSE_CLIENT_ID": "x" * 64})
    specs = plan(settings, Workers(ingesters=12, trackers=0, web=0))
    ids = [s.env["FLEETPULSE_CLIENT_ID"] for s in specs]
    assert ids[0] == "x" * 62 + "-0"
    assert ids[11] == "x" * 61 + "-11"
    assert len(set(ids)) == 12
    assert all(len(i) <= 64 for i in ids)


def test_more_trackers_than_partitions_is_refused_before_anything_starts() -> None:
    settings = load_settings({"FLEETPULSE_PARTITIONS": "4"})
    with pytest.raises(ConfigError, match="FLEETPULSE_TRACKER_COUNT"):
        plan(settings, Workers(trackers=5))


def test_the_children_read_back_exactly_the_supervisors_settings() -> None:
    settings = load_settings(
        {
            "FLEETPULSE_MAX_FIX_AGE_S": "0",  # optional: off
            "FLEETPULSE_DEVICE_MAX_RATE": "2.5",
            "FLEETPULSE_FLUSH_INTERVAL": "50ms",
            "FLEETPULSE_REORDER_WINDOW": "0",
            "FLEETPULSE_PROFILE_REFRESH": "90m",
            "FLEETPULSE_MAX_SPEED_MPS": "0",
            "FLEETPULSE_STOPPED_SPEED_MPS": "0.25",
            "FLEETPULSE_DATABASE_URL": "postgresql://u:secret@db:5432/fp",
        },
        {"web_port": "9123", "log_format": "json"},  # as CLI flags
    )
    assert load_settings(settings_env(settings)) == settings
    assert load_settings(settings_env(load_settings({}))) == load_settings({})


def test_crashes_back_off_doubling_and_give_up_past_the_limit() -> None:
    policy = RestartPolicy(
        backoff_min_s=0.5,
        backoff_max_s=3.0,
        stable_after_s=60.0,
        max_crashes=4,
        crash_window_s=100.0,
    )
    history = CrashHistory(policy)
    waits = [history.crashed(at, ran_s=1.0) for at in (0.0, 1.0, 2.0, 3.0)]
    assert waits == [0.5, 1.0, 2.0, 3.0]
    assert history.crashed(4.0, ran_s=1.0) is None  # the fifth within 100 s


def test_old_crashes_leave_the_window_and_a_long_run_resets_the_backoff() -> None:
    policy = RestartPolicy(backoff_min_s=1.0, max_crashes=2, crash_window_s=10.0)
    history = CrashHistory(policy)
    assert history.crashed(0.0, ran_s=0.1) == 1.0
    assert history.crashed(5.0, ran_s=0.1) == 2.0
    # The first has left the window by now; it had been running for long.
    assert history.crashed(12.0, ran_s=policy.stable_after_s) == 1.0
    assert history.recent == 2
    assert history.crashed(13.0, ran_s=0.1) is None


def test_json_lines_get_a_worker_field_and_other_lines_a_prefix() -> None:
    stats = '{"tracker": {"entries": 3}}'
    assert json.loads(tag_line("tracker-1", stats)) == {
        "worker": "tracker-1",
        "tracker": {"entries": 3},
    }
    assert tag_line("web-0", "2026-01-01 INFO web.app: listening", width=9) == (
        "web-0     | 2026-01-01 INFO web.app: listening"
    )
    assert tag_line("web-0", "{not json}") == "web-0 | {not json}"
    assert tag_line("web-0", "[1, 2]") == "web-0 | [1, 2]"
    assert tag_line("web-0", "") == "web-0 | "


def test_exit_statuses_are_described() -> None:
    assert describe_exit(0) == "exited with status 0"
    assert describe_exit(3) == "exited with status 3"
    assert describe_exit(-9) == "killed by SIGKILL"


def _run_args(*argv: str) -> Workers | None:
    return workers_from(cli._parser().parse_args(["run", *argv]))


def test_run_without_counts_stays_one_process() -> None:
    assert _run_args() is None


def test_workers_sets_every_stage_and_the_others_override_it() -> None:
    assert _run_args("--workers", "2") == Workers(2, 2, 2)
    assert _run_args("--workers", "3", "--web-workers", "1") == Workers(3, 3, 1)
    assert _run_args("--trackers", "2") == Workers(1, 2, 1)
    assert _run_args("--ingesters", "0", "--trackers", "2", "--web-workers", "0") == Workers(
        0, 2, 0
    )


def test_bad_counts_are_refused_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _run_args("--workers", "0")
    assert "--workers: must be 1 or more, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run_args("--trackers", "two")
    assert "--trackers: expected a whole number, got 'two'" in capsys.readouterr().err
    with pytest.raises(FleetPulseError, match="at least one process"):
        _run_args("--ingesters", "0", "--trackers", "0", "--web-workers", "0")
