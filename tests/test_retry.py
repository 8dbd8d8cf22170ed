"""The one retry policy: each user's parameters give the waits they gave before it existed."""

from __future__ import annotations

import random

import pytest

from target_everflow.delivery import engine as delivery
from target_everflow.everflow import api as everflow_api
from target_everflow.retry import API_RETRY, LEDGER_RETRY, RetryPolicy


def test_every_user_shares_one_policy_class() -> None:
    assert delivery.RetryPolicy is RetryPolicy
    assert everflow_api.API_RETRY is API_RETRY and isinstance(API_RETRY, RetryPolicy)
    assert (everflow_api.MAX_ATTEMPTS, everflow_api.MAX_RETRY_AFTER) == (4, 60.0)


def test_the_ledger_waits_5_to_20_ms_times_the_retry() -> None:
    rng = random.Random(3)
    assert LEDGER_RETRY.max_retries == 6
    for retry in range(1, LEDGER_RETRY.max_retries + 1):
        delays = [LEDGER_RETRY.delay(retry, rng=rng) for _ in range(300)]
        assert all(0.005 * retry <= d <= 0.02 * retry for d in delays)
        assert min(delays) < 0.006 * retry and max(delays) > 0.019 * retry


def test_the_api_waits_a_retry_after_exactly_and_fails_past_a_minute() -> None:
    rng = random.Random(5)
    assert [API_RETRY.delay(retry, 1.0, rng) for retry in (1, 2, 3)] == [1.0, 1.0, 1.0]
    assert API_RETRY.waits_for(60.0) and not API_RETRY.waits_for(60.5)
    delays = [API_RETRY.delay(3, rng=rng) for _ in range(300)]  # equal jitter: 2 to 4 s
    assert all(2.0 <= d <= 4.0 for d in delays) and min(delays) < 2.1 and max(delays) > 3.9


def test_postbacks_wait_at_least_the_retry_after_up_to_the_cap() -> None:
    policy = RetryPolicy(max_retries=5)
    rng = random.Random(7)
    assert (policy.backoff_base, policy.backoff_max, policy.retry_after_max) == (0.5, 30.0, 300.0)
    assert all(policy.delay(6, 2.0, rng) >= 2.0 for _ in range(50))
    assert max(policy.delay(6, 2.0, rng) for _ in range(300)) > 10.0  # the longer backoff wins
    assert policy.delay(1, 10_000.0, rng) == 300.0
    assert policy.worst_case_seconds(30) == pytest.approx(30 * 6 + 5 * 30)
