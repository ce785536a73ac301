"""The websocket benchmark's pure parts: CPU figures that cannot go negative when a
process exits, the kernel's socket queues read from /proc/net/tcp text, server figures
summed over workers, sockets spread over the workers, the Redis feed's rates per phase,
customers' ETAs seen before the window not taken for late ones, and the verdict on what
limited a run."""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import datetime
from typing import Any

from bench.ingest.procstat import CLOCK_TICKS_PER_S
from bench.ws.clients import Clients as ClientProcess
from bench.ws.clients import Tally
from bench.ws.feed import FeedCounter
from bench.ws.histogram import Histogram
from bench.ws.results import Clients, Run, table
from bench.ws.run import _server_figures
from bench.ws.sampler import ProcessTrack, Reading, socket_queues

WORKER_PORT = 0x1F90  # 8080
REDIS_PORT = 0x18EB  # 6379


def test_a_process_that_exits_keeps_its_last_reading_instead_of_counting_as_zero() -> None:
    track = ProcessTrack()
    track.add(Reading(at=10.0, ticks=1000, waited_ns=0))
    track.add(Reading(at=12.0, ticks=1000 + CLOCK_TICKS_PER_S, waited_ns=500_000_000))
    track.add(None)  # gone: /proc/<pid> no longer exists
    assert track.cpu_percent() == 50.0
    assert track.waiting_percent() == 25.0


def test_a_process_read_once_has_no_figure() -> None:
    track = ProcessTrack()
    track.add(Reading(at=10.0, ticks=1000, waited_ns=0))
    assert track.cpu_percent() is None


def _tcp_line(local_port: int, remote_port: int, tx: int, rx: int) -> str:
    return (
        f"   0: 0100007F:{local_port:04X} 0100007F:{remote_port:04X} 01"
        f" {tx:08X}:{rx:08X} 00:00000000 00000000     0        0 1 1 0 20 4 30 10 -1"
    )


def test_socket_queues_count_each_end_of_a_loopback_connection_once() -> None:
    table_text = "\n".join(
        [
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt",
            _tcp_line(WORKER_PORT, 50001, tx=0x100, rx=0x7),  # a worker's end
            _tcp_line(50001, WORKER_PORT, tx=0x9, rx=0x200),  # its client's end
            _tcp_line(50002, REDIS_PORT, tx=0x0, rx=0x300),  # a subscriber's end
            _tcp_line(REDIS_PORT, 50002, tx=0x50, rx=0x0),  # Redis's end: not counted
            _tcp_line(40000, 40001, tx=0x999, rx=0x999),  # someone else's
        ]
    )
    queues = socket_queues(table_text, [WORKER_PORT], REDIS_PORT)
    assert (queues.unsent, queues.unread, queues.feed_unread) == (0x100, 0x200, 0x300)


def test_server_figures_sum_workers_counters_over_the_window_and_their_levels() -> None:
    before = [
        {"ws_dispatch_messages_sent_total": 100.0, "ws_dispatch_clients": 5.0},
        {"ws_dispatch_messages_sent_total": 10.0, "ws_dispatch_clients": 1.0},
    ]
    after = [
        {"ws_dispatch_messages_sent_total": 150.0, "ws_dispatch_clients": 0.0},
        {"ws_dispatch_messages_sent_total": 40.0, "ws_dispatch_clients": 0.0},
    ]
    levels = [{"ws_dispatch_clients": 7.0}, {"ws_dispatch_clients": 8.0}]
    summed, per_worker = _server_figures(before, after, levels)
    assert summed == {"ws_dispatch_messages_sent_total": 80.0, "ws_dispatch_clients": 15.0}
    assert [w["ws_dispatch_messages_sent_total"] for w in per_worker] == [50, 30]


def test_a_client_process_spreads_its_sockets_over_every_worker() -> None:
    args = argparse.Namespace(
        role="dispatch",
        url="ws://127.0.0.1:1,ws://127.0.0.1:2",
        count=3,
        token="t",
        tokens="",
        first=1,
        deflate=False,
    )
    urls = [url for url, _ in ClientProcess(args)._targets()]
    assert urls == [
        "ws://127.0.0.1:2/ws/dispatch",
        "ws://127.0.0.1:1/ws/dispatch",
        "ws://127.0.0.1:2/ws/dispatch",
    ]


def _clients(role: str, cpu_s: float, lag_ms: float) -> Clients:
    clients = Clients(role, wanted=10)
    lag = Histogram()
    lag.add(lag_ms)
    clients.add(
        {
            "connected": 10,
            "failed": {},
            "closed_early": {},
            "cpu_s": cpu_s,
            "cpu_wall_s": 10.0,
            "undecodable": 0,
            "outside_window": 0,
            "messages": {"positions": 5},
            "loop_lag": lag.as_json(),
        }
    )
    return clients


def _run(
    *, dispatch_cpu_s: float, lag_ms: float, machine: float, feed_kib: float, web_cpu: float
) -> Run:
    sampled: dict[str, Any] = {
        "cpu_pct_per_process": {"web-0": web_cpu, "dispatch-0": 10.0 * dispatch_cpu_s},
        "waiting_for_cpu_pct": {"web-0": 60.0},
        "dispatch_queued": {"min": 0.0, "median": 16.0, "max": 16.0},
        "feed_unread_kib": {"min": feed_kib, "median": feed_kib, "max": feed_kib},
        "feed_unread_kib_series": [round(feed_kib)],
    }
    return Run(
        config={},
        machine={"nproc": 2},
        dispatch=_clients("dispatch", dispatch_cpu_s, lag_ms),
        customers=_clients("customers", 0.1, 1.0),
        window_s=10.0,
        published=100,
        acked=100,
        offered_per_s=10.0,
        streams=[],
        server={},
        server_per_worker=[],
        cpu_pct={"machine": machine, "web": web_cpu},
        sampled=sampled,
    )


def test_an_unloaded_run_says_nothing_was_saturated() -> None:
    run = _run(dispatch_cpu_s=1.0, lag_ms=2.0, machine=60.0, feed_kib=0.0, web_cpu=20.0)
    assert run.limits() == []
    assert table(run).endswith("limit: nothing saturated")


def test_clients_that_use_a_whole_core_are_named_as_the_limit() -> None:
    run = _run(dispatch_cpu_s=9.8, lag_ms=2.0, machine=120.0, feed_kib=0.0, web_cpu=20.0)
    (limit,) = run.limits()
    assert limit.startswith("dispatch clients: read late (each process 98 % of a core")


def test_clients_whose_event_loop_lags_are_named_even_at_low_cpu() -> None:
    run = _run(dispatch_cpu_s=1.0, lag_ms=3000.0, machine=120.0, feed_kib=0.0, web_cpu=20.0)
    assert [limit.split(":")[0] for limit in run.limits()] == ["dispatch clients"]


def test_workers_behind_their_feed_and_a_busy_machine_are_both_named() -> None:
    run = _run(dispatch_cpu_s=1.0, lag_ms=2.0, machine=199.0, feed_kib=8000.0, web_cpu=35.0)
    machine, server = run.limits()
    assert machine.startswith("machine: 199 % of 200 busy")
    assert "read the Redis feed late: median 8,000 KiB" in server
    assert "waited for one 60 % of the time" in server


def test_the_feed_counter_gives_rates_per_phase_from_its_per_second_counts() -> None:
    feed = FeedCounter("redis://127.0.0.1:1")  # never connected: counts filled by hand
    feed.messages = {0: Counter({"etas": 30}), 1: Counter({"etas": 10, "positions": 1})}
    feed.bytes = {0: Counter({"etas": 3072}), 1: Counter({"positions": 2048})}
    assert feed.rates(0.0, 1.0)["etas"] == {"per_s": 30.0, "kib_per_s": 3.0}
    assert feed.rates(1.0, 3.0)["positions"] == {"per_s": 0.5, "kib_per_s": 1.0}
    assert feed.report(1.0, 2.0)["positions_per_second"] == [0, 1]


def _track_frame(computed_at: str) -> str:
    return (
        '{"type":"track","delivery":{"delivery_id":"d1","state":"approaching",'
        f'"eta":{{"p50":"{computed_at}","p90":"{computed_at}","computed_at":"{computed_at}"}}}}}}'
    )


def test_an_eta_first_shown_before_the_window_is_not_a_latency_when_repeated_in_it() -> None:
    tally = Tally()
    tally.start_at, tally.end_at = 100.0, 200.0
    seen: dict[str, datetime] = {}
    old = "1970-01-01T00:00:50Z"  # 50 s after the epoch: computed before the window
    tally.record(_track_frame(old), 60.0, seen)  # before the window
    tally.record(_track_frame(old), 150.0, seen)  # the same view again, in the window
    assert tally.deliveries["track"] == 1
    assert "track" not in tally.latency
    tally.record(_track_frame("1970-01-01T00:02:29Z"), 150.0, seen)  # a new ETA
    assert tally.latency["track"].total == 1


def test_hubs_that_handle_less_of_the_feed_than_is_published_are_named_as_behind() -> None:
    run = _run(dispatch_cpu_s=1.0, lag_ms=2.0, machine=120.0, feed_kib=0.0, web_cpu=35.0)
    run.sampled["server_counters_over_s"] = 10.0
    rates = {
        "positions": {"per_s": 20.0, "kib_per_s": 300.0},
        "events": {"per_s": 50.0, "kib_per_s": 12.0},
        "etas": {"per_s": 550.0, "kib_per_s": 130.0},
    }
    run.sampled["feed_published"] = {"warmup": rates, "window": rates}
    run.server_per_worker = [
        {"ws_dispatch_bus_messages_total": 760.0},
        {"ws_dispatch_bus_messages_total": 6200.0},
    ]
    (server,) = run.limits()
    assert "each handled 76 and 620 of the 620 messages/s published" in server
    assert "feed messages/s in the window: published 620, handled by each" in table(run)


def test_hubs_that_keep_up_with_the_feed_are_not_named() -> None:
    run = _run(dispatch_cpu_s=1.0, lag_ms=2.0, machine=120.0, feed_kib=0.0, web_cpu=35.0)
    run.sampled["server_counters_over_s"] = 10.0
    run.sampled["feed_published"] = {"window": {"etas": {"per_s": 100.0}}}
    run.server_per_worker = [{"ws_dispatch_bus_messages_total": 990.0}]
    assert run.limits() == []
