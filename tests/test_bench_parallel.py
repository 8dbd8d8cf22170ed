"""The parallel-runs benchmark (``bench/run.py --only-parallel``) as a correctness check: its own
code starts N targets at once on one PostgreSQL ledger against one receiver, with their own
inputs and with one input for all, and every conversion must be accepted exactly once. Small
inputs, and no throughput figure is asserted here (the benchmark reports those)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import run as bench
from tests.conftest import postgres_url

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("runs", "same_input"), [(2, False), (3, True)])
def test_the_parallel_benchmark_sends_each_conversion_once(
    tmp_path: Path, runs: int, same_input: bool
) -> None:
    result = bench.run_parallel(
        tmp_path, name="check", pg_url=postgres_url(), runs=runs, same_input=same_input,
        conversions=300, latency=0.005, concurrency=16, source=bench.REPO,
    )  # fmt: skip
    assert result.conversions == 300 * (1 if same_input else runs)  # none lost (else BenchError)
    assert result.duplicates == 0
    assert result.ledger_wait is not None and result.ledger_wait >= 0
