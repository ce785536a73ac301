"""The sliding-window arithmetic of the public rate limit, and whom a request counts
against. (Its sharing across workers is tested against a real Redis in
tests/integration/web/test_tracking_api.py.)"""

from __future__ import annotations

import ipaddress

import pytest

from web.rate_limit import WINDOW_S, client_address, client_key, retry_after_s


def allowed(current: int, previous: int, elapsed_s: float, limit: int) -> bool:
    """The rule the Lua script applies: the previous minute weighted by how much of it
    is still inside the last 60 s, plus this minute, plus this request."""
    weight = (WINDOW_S - elapsed_s) / WINDOW_S
    return previous * weight + current + 1 <= limit


def after(current: int, previous: int, elapsed_s: float, wait_s: float) -> tuple[int, int, float]:
    """The counts seen `wait_s` later, nobody having been let in meanwhile."""
    at = elapsed_s + wait_s
    if at < WINDOW_S:
        return current, previous, at
    if at < 2 * WINDOW_S:
        return 0, current, at - WINDOW_S
    return 0, 0, at % WINDOW_S


@pytest.mark.parametrize(
    ("current", "previous", "elapsed_s", "limit"),
    [
        (10, 0, 0.0, 10),  # this minute is full, the last one was empty
        (10, 0, 59.5, 10),
        (10, 10, 30.0, 10),
        (3, 10, 12.0, 10),  # room this minute, but the last one still weighs
        (0, 120, 0.2, 120),
        (1, 0, 20.0, 1),
        (119, 40, 45.3, 120),
    ],
)
def test_retry_after_is_the_first_whole_second_that_gets_in(
    current: int, previous: int, elapsed_s: float, limit: int
) -> None:
    assert not allowed(current, previous, elapsed_s, limit)
    wait = retry_after_s(current, previous, elapsed_s, limit)
    assert 1 <= wait <= 2 * WINDOW_S
    assert allowed(*after(current, previous, elapsed_s, wait), limit)
    if wait > 1:
        assert not allowed(*after(current, previous, elapsed_s, wait - 1), limit)


def test_a_full_window_with_a_limit_of_one_waits_for_it_to_slide_out() -> None:
    # One request at the start of a minute: the next fits once that minute has fully
    # left the sliding window, a minute after the next one began.
    assert retry_after_s(1, 0, 0.0, 1) == 2 * WINDOW_S


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),  # the same customer's /64
        (None, "unknown"),
        ("", "unknown"),
    ],
)
def test_clients_are_counted_by_address_and_ipv6_by_prefix(address: str | None, key: str) -> None:
    assert client_key(address) == key


PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


def test_the_client_is_the_peer_unless_the_peer_is_our_proxy() -> None:
    assert client_address("203.0.113.9", "198.51.100.1", PROXIES) == "203.0.113.9"
    assert client_address("10.0.0.5", "198.51.100.1", PROXIES) == "198.51.100.1"
    assert client_address("10.0.0.5", None, PROXIES) == "10.0.0.5"
    assert client_address("10.0.0.5", "198.51.100.1", ()) == "10.0.0.5"


def test_forwarded_addresses_the_client_wrote_itself_are_not_believed() -> None:
    # The client claims 1.2.3.4; our two proxies appended the real client and themselves.
    chain = "1.2.3.4, 198.51.100.7, 10.0.0.9"
    assert client_address("10.0.0.5", chain, PROXIES) == "198.51.100.7"
    # Only proxies all the way: the left-most one we reached is all we know.
    assert client_address("::1", "10.0.0.2, 10.0.0.3", PROXIES) == "10.0.0.2"
