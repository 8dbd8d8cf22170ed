"""The ledger package: other modules use its public helpers, never a ledger's private names."""

from __future__ import annotations

import ast
import pathlib
import time
import typing as t

import pytest

from target_everflow import settings
from target_everflow.ledger import (
    DELIVERED_STATUS,
    HELD_STATUS,
    PENDING_STATUS,
    SENDING_STATUS,
    LedgerError,
    SQLLedger,
    admin,
    runs,
)
from tests.ledgers import Backend, backend  # noqa: F401 - the fixture

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "target_everflow"


def _ledger_privates(path: pathlib.Path) -> list[str]:
    """``<something named ledger>._name`` uses in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__"):
            continue
        owner = node.value
        name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
        if "ledger" in name.lower():
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {name}.{node.attr}")
    return found


def test_no_module_outside_the_package_reaches_into_a_ledger() -> None:
    outside = [
        p for p in sorted(PACKAGE.rglob("*.py")) if "ledger" not in p.relative_to(PACKAGE).parts[:1]
    ]
    assert outside, PACKAGE
    assert [hit for p in outside for hit in _ledger_privates(p)] == []


def test_the_request_timeout_default_comes_from_the_schema(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(settings.CONFIG_SCHEMA["properties"]["request_timeout"], "default", 12.5)
    assert settings.Settings.from_config({"dry_run": True}).request_timeout == 12.5


# --- the run history's and the operator commands' SQL (ledger/runs.py, ledger/admin.py) -------


@pytest.mark.parametrize("days", [-1, float("nan"), float("inf"), "30", True, None])
def test_forget_and_the_run_history_refuse_an_age_that_is_no_number_of_days(
    backend: Backend, days: t.Any
) -> None:
    ledger = backend.open()
    assert isinstance(ledger, SQLLedger)
    for call in (
        lambda: admin.forget(ledger, days),
        lambda: runs.forget_runs(ledger, days),
        lambda: runs.begin_run(ledger, "r", host="h", pid=1, version="v", retention_days=days),
    ):
        with pytest.raises(LedgerError, match="number of days"):
            call()


def test_the_run_history_refuses_bad_rows(backend: Backend) -> None:
    ledger = backend.open()
    assert isinstance(ledger, SQLLedger)
    counts = dict.fromkeys(runs.RUN_COUNTS, 0)
    with pytest.raises(LedgerError, match="run's id"):
        runs.begin_run(ledger, "", host="h", pid=1, version="v", retention_days=1)
    with pytest.raises(LedgerError, match="pid"):
        runs.begin_run(ledger, "r", host="h", pid=-1, version="v", retention_days=1)
    with pytest.raises(LedgerError, match="exit code"):
        runs.end_run(ledger, "r", "0", counts, "{}")  # type: ignore[arg-type] - on purpose
    with pytest.raises(LedgerError, match="exactly"):
        runs.end_run(ledger, "r", 0, {"delivered": 1}, "{}")
    with pytest.raises(LedgerError, match=">= 0"):
        runs.end_run(ledger, "r", 0, {**counts, "delivered": -1}, "{}")
    for last in (0, -1, runs.MAX_RUNS_READ + 1, 1.5):
        with pytest.raises(LedgerError, match="number of runs"):
            runs.recent_runs(ledger, last)  # type: ignore[arg-type] - on purpose


def test_a_run_is_written_completed_read_and_forgotten(backend: Backend) -> None:
    ledger = backend.open()
    assert isinstance(ledger, SQLLedger)
    runs.begin_run(ledger, "run-1", host="h", pid=7, version="1.0", retention_days=30)
    (row,) = runs.recent_runs(ledger, 5)
    assert (row["run_id"], row["host"], row["pid"], row["exit_code"]) == ("run-1", "h", 7, None)
    counts = {name: i for i, name in enumerate(runs.RUN_COUNTS)}
    runs.end_run(ledger, "run-1", 5, counts, '{"a": 1}')
    (row,) = runs.recent_runs(ledger, 5)
    assert row["exit_code"] == 5 and row["summary"] == '{"a": 1}'
    assert {name: row[name] for name in runs.RUN_COUNTS} == counts
    assert row["ended_at"] >= row["started_at"]
    assert runs.forget_runs(ledger, 1) == 0  # it started just now
    assert admin.forget(ledger, 0) == (0, 1)
    assert runs.recent_runs(ledger, 5) == []


def test_the_admin_queries_use_the_row_statuses(backend: Backend) -> None:
    ledger = backend.open()
    assert isinstance(ledger, SQLLedger)
    now = time.time()
    backend.fake_row("k-sent", owner="gone:1:a", status=SENDING_STATUS, lease_until=now - 5)
    backend.fake_row("k-live", owner="live:1:b", status=PENDING_STATUS, lease_until=now + 600)
    backend.fake_row("k-held", owner="gone:1:c", status=HELD_STATUS, updated_at=now - 10)
    backend.fake_row("k-done", owner="gone:1:d", status=DELIVERED_STATUS)
    counts = admin.key_counts(ledger)
    assert counts.counts == {
        SENDING_STATUS: 1,
        PENDING_STATUS: 1,
        HELD_STATUS: 1,
        DELIVERED_STATUS: 1,
    }
    assert counts.orphaned == 1 and counts.oldest is not None
    assert counts.oldest.delivery_key in ("k-sent", "k-live")
    rows, when = admin.in_doubt_rows(ledger)
    assert [r["delivery_key"] for r in rows] == ["k-held", "k-sent"]
    named, _ = admin.in_doubt_rows(ledger, ["k-live", "k-done", "k-none"])
    assert {r["delivery_key"]: admin.releasable(r, when) for r in named} == {
        "k-live": False,
        "k-done": True,
    }
    with pytest.raises(LedgerError, match="not one text"):
        admin.in_doubt_rows(ledger, "k-live")
    assert admin.release_unchanged(ledger, [*rows, *named]) == {"k-held", "k-sent", "k-done"}
    assert admin.key_counts(ledger).counts == {PENDING_STATUS: 1}
