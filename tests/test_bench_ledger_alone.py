"""``bench/ledger_alone.py`` as a correctness check: every key it claims is fenced (the script
stops otherwise), its figures are per key, and the numbers a person gives it are checked. No
figure is asserted (the script reports those)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench import ledger_alone


def test_one_run_fences_every_key_and_reports_costs_per_key() -> None:
    result = ledger_alone.one_run(200, 6)
    assert set(result) == {"user_us", "system_us", "wall_us", "switches"}
    assert all(value >= 0 for value in result.values())
    assert result["wall_us"] > 0


@pytest.mark.parametrize("arg", [["--keys", "0"], ["--per-tick", "-1"], ["--repeats", "0"]])
def test_numbers_out_of_range_are_refused(arg: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, str(ledger_alone.__file__), *arg],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "must be between 1 and 10000000" in proc.stderr
    assert "Traceback" not in proc.stderr
