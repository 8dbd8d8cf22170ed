"""Unit tests of the postback client's building blocks: URLs, answers, retry policy, rate limit."""

from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
import requests

from target_everflow.delivery.engine import RateLimiter, RetryPolicy
from target_everflow.delivery.postback import (
    PostbackClient,
    Verdict,
    classify,
    encode_query,
    retry_after_seconds,
)
from target_everflow.mapping import Conversion


def _response(status: int, body: bytes = b"", headers: dict | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body
    response.headers.update(headers or {})
    return response


def _conversion(params: list[tuple[str, str]]) -> Conversion:
    return Conversion(
        key="m:1",
        stream="s",
        event="Order Completed",
        event_id=0,
        transaction_id="t",
        platform="web",
        message_id="1",
        params=params,
        record={},
    )


@pytest.mark.parametrize(
    ("status", "body", "headers", "verdict", "reason"),
    [
        (
            200,
            b'{"conversion_id":"c1","transaction_id":"t"}',
            {"Content-Type": "application/json"},
            Verdict.ACCEPTED,
            "accepted",
        ),
        (200, b"", {}, Verdict.ACCEPTED, "accepted"),
        (200, b"OK", {"Content-Type": "text/html"}, Verdict.ACCEPTED, "accepted"),
        (204, b"", {}, Verdict.REJECTED, "rejected"),
        (
            200,
            b'{"error":"Invalid Verification Token"}',
            {"Content-Type": "application/json"},
            Verdict.REJECTED,
            "rejected",
        ),
        (200, b'{"Error":"duplicate"}', {}, Verdict.REJECTED, "rejected"),
        (200, b'{"\\u0065rror":"escaped"}', {}, Verdict.REJECTED, "rejected"),
        (400, b"bad request", {}, Verdict.PERMANENT, "http_400"),
        (404, b"", {}, Verdict.PERMANENT, "http_404"),
        (401, b"", {}, Verdict.SYSTEMIC, "http_401"),
        (403, b"", {}, Verdict.SYSTEMIC, "http_403"),
        (
            302,
            b"",
            {"Location": "https://elsewhere.example/?verification_token=x"},
            Verdict.SYSTEMIC,
            "http_302",
        ),
        (429, b"", {"Retry-After": "3"}, Verdict.TRANSIENT, "http_429"),
        (500, b"oops", {}, Verdict.TRANSIENT, "http_500"),
        (503, b"", {}, Verdict.TRANSIENT, "http_503"),
    ],
)
def test_classify(status, body, headers, verdict, reason):
    answer = classify(_response(status, body, headers))
    assert answer.verdict is verdict
    assert answer.reason == reason or verdict is Verdict.ACCEPTED
    assert answer.status == status
    assert "verification_token=x" not in answer.detail  # a redirect target loses its query


def test_retry_after_seconds_and_http_date():
    assert retry_after_seconds("1") == 1.0
    assert retry_after_seconds(" 2.5 ") == 2.5
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    now = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)
    later = format_datetime(now + timedelta(seconds=7), usegmt=True)
    assert retry_after_seconds(later, now=now.timestamp()) == pytest.approx(7.0)
    assert (
        retry_after_seconds(
            format_datetime(now - timedelta(seconds=7), usegmt=True), now=now.timestamp()
        )
        == 0.0
    )


def test_query_is_percent_encoded_utf8():
    query = encode_query([("email", "jürgen+vip@exämple.com"), ("coupon_code", "SPRING 20%&x=1")])
    assert query == "email=j%C3%BCrgen%2Bvip%40ex%C3%A4mple.com&coupon_code=SPRING%2020%25%26x%3D1"


def test_token_is_the_whole_query_of_a_postback_without_parameters():
    client = PostbackClient("https://t.example/", verification_token="a&b", timeout=30)
    assert client.url(_conversion([])) == "https://t.example/?verification_token=a%26b"
    assert client.url(_conversion([("x", "=")]), redact=True) == (
        "https://t.example/?x=%3D&verification_token=%2A%2A%2A"
    )
    assert PostbackClient("https://t.example/", timeout=30).url(_conversion([])) == (
        "https://t.example/?"
    )


def test_url_appends_token_last_and_redacts():
    client = PostbackClient("https://t.example/path?x=1", verification_token="tok en", timeout=30)
    conversion = _conversion([("nid", "1"), ("transaction_id", "abc")])
    assert (
        client.url(conversion)
        == "https://t.example/path?x=1&nid=1&transaction_id=abc&verification_token=tok%20en"
    )
    assert client.url(conversion, redact=True).endswith("verification_token=%2A%2A%2A")
    # what is sent: the URL's path and query
    assert (
        client.target(conversion)
        == "/path?x=1&nid=1&transaction_id=abc&verification_token=tok%20en"
    )
    assert client.connection().cert_reqs == "CERT_REQUIRED"  # TLS verification is never off


def test_retry_policy_full_jitter_and_retry_after():
    policy = RetryPolicy(max_retries=5, backoff_base=0.5, backoff_max=30)
    rng = random.Random(1)
    for retry in range(1, 8):
        ceiling = min(30, 0.5 * 2 ** (retry - 1))
        delays = [policy.delay(retry, rng=rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # full jitter spans the range
    assert policy.delay(1, retry_after=4.0, rng=rng) >= 4.0
    assert policy.delay(1, retry_after=10_000, rng=rng) == policy.retry_after_max
    assert policy.worst_case_seconds(30) >= 30 * 6


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_spaces_slots_and_holds():
    clock = FakeClock()
    limiter = RateLimiter(10, clock=clock)
    stop = threading.Event()
    waits: list[float] = []
    original = stop.wait

    def fake_wait(seconds: float) -> bool:
        waits.append(round(seconds, 6))
        clock.now += seconds
        return original(0)

    stop.wait = fake_wait  # type: ignore[method-assign]
    for _ in range(5):
        assert limiter.acquire(stop)
    assert waits == [0.1, 0.1, 0.1, 0.1]  # the first goes at once, then one every 1/rate s
    limiter.hold(2.0)
    waits.clear()
    assert limiter.acquire(stop)
    assert sum(waits) >= 2.0  # a 429 hold pauses every sender


def test_rate_limiter_unlimited_and_stop():
    limiter = RateLimiter(0)
    assert all(limiter.acquire() for _ in range(1000))
    limiter.hold(60)
    stop = threading.Event()
    stop.set()
    assert limiter.acquire(stop) is False
