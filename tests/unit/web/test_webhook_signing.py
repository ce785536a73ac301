"""Webhook signatures (what receivers verify), the retry schedule, and the checks on a
subscription's URL and kinds."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from web.webhook_store import InvalidSubscription, check_kinds, check_url
from web.webhooks import Backoff, sign, verify

SECRET = "whsec_test-secret"
BODY = b'{"id": 7, "event": {"kind": "enter"}}'


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    # Written out as a receiver in another language would do it.
    expected = hmac.new(b"whsec_test-secret", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, BODY) == "sha256=" + expected
    # A vector computed outside Python (`printf '1.x' | openssl dgst -sha256 -hmac key`).
    assert sign("key", "1", b"x") == (
        "sha256=fc4913c41a7bf793267e2a384f3261c9436ec2cd097bd745e7b0d99113f510ec"
    )


def test_verify_accepts_the_signed_request_only() -> None:
    signature = sign(SECRET, 1700000000, BODY)
    assert verify(SECRET, "1700000000", BODY, signature)
    assert not verify("whsec_other", "1700000000", BODY, signature)
    assert not verify(SECRET, "1700000001", BODY, signature)  # timestamp swapped
    assert not verify(SECRET, "1700000000", BODY + b" ", signature)  # body altered
    assert not verify(SECRET, "1700000000", BODY, signature.upper())
    assert not verify(SECRET, "1700000000", BODY, "")


def test_backoff_doubles_from_the_base_within_its_jitter_band() -> None:
    backoff = Backoff(base_s=30.0, cap_s=3600.0)
    lows = [backoff.delay_s(n, 0.0) for n in range(1, 9)]
    highs = [backoff.delay_s(n, 0.999999) for n in range(1, 9)]
    assert lows == [15.0, 30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1800.0]
    assert highs == pytest.approx([30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0], 1e-5)
    assert backoff.delay_s(3, 0.5) == 90.0


def test_backoff_is_capped_and_never_overflows() -> None:
    backoff = Backoff(base_s=30.0, cap_s=3600.0)
    assert backoff.delay_s(9, 0.0) == 1800.0
    assert backoff.delay_s(10_000, 0.999999) == pytest.approx(3600.0, 1e-5)
    assert backoff.delay_s(0, 0.0) == 15.0  # read as the first failure


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000/hook", "https://example.com/a?b=c", "HTTPS://Example.com"],
)
def test_http_and_https_urls_are_accepted(url: str) -> None:
    assert check_url(f"  {url} ") == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://example.com/x", "http:// or https://"),
        ("example.com/hook", "http:// or https://"),
        ("http:///path-only", "names no host"),
        ("http://example.com:99999/", "url:"),
        ("http://exa mple.com/", "white space"),
        ("https://example.com/" + "a" * 2048, "at most 2048"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: str, says: str) -> None:
    with pytest.raises(InvalidSubscription, match=re.escape(says)):
        check_url(url)


def test_kinds_are_known_sorted_and_unique() -> None:
    assert check_kinds(["exit", "enter", "exit"]) == ("enter", "exit")
    assert check_kinds([]) == ()
    with pytest.raises(InvalidSubscription, match="unknown event kind 'entered'"):
        check_kinds(["enter", "entered"])
