"""The run history's SQL: one row per run in table ``<ledger table>_runs``, beside the ledger.

A run writes its row when it starts (:func:`begin_run`, ``exit_code`` NULL while it runs) and
completes it when it ends (:func:`end_run`); :func:`recent_runs` reads the last rows and
:func:`forget_runs` prunes old ones. What a run records is decided by
``accounting/run_history.py``; this module only stores it, through the ledger's public helpers.
"""

from __future__ import annotations

import math
import typing as t

from target_everflow.ledger.base import LedgerError

if t.TYPE_CHECKING:
    from collections.abc import Mapping

    from target_everflow.ledger.sql import SQLLedger

RUN_COUNTS = (
    "records_read",
    "delivered",
    "skipped",
    "dead_lettered",
    "in_doubt",
    "requests",
    "retries",
    "http_429",
)
"""The counts a run's row holds, each an INTEGER column."""
RUN_COLUMNS = (
    "run_id",
    "started_at",
    "ended_at",
    "host",
    "pid",
    "version",
    "exit_code",
    *RUN_COUNTS,
    "summary",
)
"""The columns of a run's row, in the order :func:`recent_runs` gives them."""
MAX_RUNS_READ = 100_000
"""Most runs :func:`recent_runs` reads at once."""
DAY = 86400.0


def runs_table(ledger: SQLLedger) -> str:
    """The run history's table: ``<ledger table>_runs``."""
    return f"{ledger.table}_runs"


def check_days(value: float, what: str) -> float:
    """``value`` as a number of days: finite and >= 0, else a :class:`LedgerError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LedgerError(f"{what} must be a number of days, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise LedgerError(f"{what} must be a finite number of days >= 0, got {value!r}")
    return float(value)


def _text(value: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise LedgerError(f"{what} must be a non-empty text, got {value!r}")
    return value


def _create(ledger: SQLLedger, cur: t.Any) -> None:
    runs = runs_table(ledger)
    ledger.lock_for_ddl(cur, f"target_everflow_runs:{runs}")
    counts = ",\n".join(f"            {name} INTEGER" for name in RUN_COUNTS)
    cur.execute(
        f"""CREATE TABLE IF NOT EXISTS {runs} (
            run_id TEXT PRIMARY KEY,
            started_at {ledger.real_type} NOT NULL,
            ended_at {ledger.real_type},
            host TEXT,
            pid INTEGER,
            version TEXT,
            exit_code INTEGER,
{counts},
            summary TEXT
        )"""
    )
    cur.execute(f"CREATE INDEX IF NOT EXISTS {runs}_started_at ON {runs} (started_at)")


def begin_run(
    ledger: SQLLedger, run_id: str, *, host: str, pid: int, version: str, retention_days: float
) -> None:
    """Record the start of run ``run_id`` (the ledger's clock), in one transaction with the
    pruning of runs that started more than ``retention_days`` days ago."""
    _text(run_id, "a run's id")
    keep = check_days(retention_days, "the run history's retention")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
        raise LedgerError(f"a run's pid must be an integer >= 0, got {pid!r}")
    runs = runs_table(ledger)

    def tx(cur: t.Any) -> None:
        _create(ledger, cur)
        now = ledger.now(cur)
        cur.execute(ledger.sql(f"DELETE FROM {runs} WHERE started_at < ?"), (now - keep * DAY,))
        cur.execute(
            ledger.sql(
                f"INSERT INTO {runs} (run_id, started_at, host, pid, version)"
                " VALUES (?, ?, ?, ?, ?)"
            ),
            (run_id, now, str(host), pid, str(version)),
        )

    ledger.transaction(tx, "record the run's start in the run history")


def end_run(
    ledger: SQLLedger, run_id: str, exit_code: int, counts: Mapping[str, int], summary: str
) -> None:
    """Record the end of run ``run_id``: its exit code, :data:`RUN_COUNTS` and its summary
    (JSON text, as written to summary_path)."""
    _text(run_id, "a run's id")
    if isinstance(exit_code, bool) or not isinstance(exit_code, int):
        raise LedgerError(f"a run's exit code must be an integer, got {exit_code!r}")
    if set(counts) != set(RUN_COUNTS):
        raise LedgerError(f"a run's counts must be exactly {', '.join(RUN_COUNTS)}")
    bad = [n for n in RUN_COUNTS if isinstance(counts[n], bool) or not isinstance(counts[n], int)]
    if bad or any(counts[n] < 0 for n in RUN_COUNTS):
        raise LedgerError(f"a run's counts must be integers >= 0, got {dict(counts)!r}")
    if not isinstance(summary, str):
        raise LedgerError("a run's summary must be JSON text")
    assignments = ", ".join(f"{name} = ?" for name in RUN_COUNTS)

    def tx(cur: t.Any) -> None:
        cur.execute(
            ledger.sql(
                f"UPDATE {runs_table(ledger)} SET ended_at = ?, exit_code = ?, {assignments},"
                " summary = ? WHERE run_id = ?"
            ),
            (ledger.now(cur), exit_code, *(counts[n] for n in RUN_COUNTS), summary, run_id),
        )

    ledger.transaction(tx, "record the run's end in the run history")


def recent_runs(ledger: SQLLedger, last: int) -> list[dict[str, t.Any]]:
    """The last ``last`` runs (1 to :data:`MAX_RUNS_READ`), newest first, each a dict of
    :data:`RUN_COLUMNS` (``summary`` the JSON text as stored, or None)."""
    if isinstance(last, bool) or not isinstance(last, int) or not 1 <= last <= MAX_RUNS_READ:
        raise LedgerError(f"the number of runs to read must be 1 to {MAX_RUNS_READ}, got {last!r}")

    def tx(cur: t.Any) -> list[tuple[t.Any, ...]]:
        _create(ledger, cur)
        cur.execute(
            ledger.sql(
                f"SELECT {', '.join(RUN_COLUMNS)} FROM {runs_table(ledger)}"
                " ORDER BY started_at DESC, run_id LIMIT ?"
            ),
            (last,),
        )
        return cur.fetchall()

    return [dict(zip(RUN_COLUMNS, row)) for row in ledger.transaction(tx, "read the run history")]


def forget_runs(ledger: SQLLedger, days: float) -> int:
    """Delete the runs that started more than ``days`` days ago (finite, >= 0); how many."""
    keep = check_days(days, "the age of the runs to forget")

    def tx(cur: t.Any) -> int:
        _create(ledger, cur)
        cur.execute(
            ledger.sql(f"DELETE FROM {runs_table(ledger)} WHERE started_at < ?"),
            (ledger.now(cur) - keep * DAY,),
        )
        return int(cur.rowcount or 0)

    return ledger.transaction(tx, "prune the run history")
