"""The shipped warehouse samples are what their generator writes: the e2e tests' SQL and
samples/segment-warehouse.sql (batch 1 without the conversions dead-lettered on purpose) come
from one scenario (tests/e2e/fixtures/scenario.py), so the two cannot drift apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.fixtures import scenario, warehouse


@pytest.mark.parametrize("path", list(warehouse.files()), ids=lambda p: p.name)
def test_the_generated_sql_is_current(path: Path) -> None:
    assert path.read_text(encoding="utf-8") == warehouse.files()[path], (
        f"{path} is out of date: run `python -m tests.e2e.fixtures.warehouse`"
    )


def test_the_sample_leaves_out_exactly_the_conversions_dead_lettered_on_purpose() -> None:
    sample = warehouse.SAMPLE.read_text(encoding="utf-8")
    for event in scenario.BATCH_1:
        if scenario.expect(event).outcome == scenario.DEAD_LETTER:
            assert f"'{event['messageId']}'" not in sample
        elif scenario.expect(event).archive_only is False and warehouse.rows(event):
            assert f"'{event['messageId']}'" in sample
