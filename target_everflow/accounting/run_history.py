"""The run history: one row per run, in the ledger's database (table ``<ledger table>_runs``).

A run writes its row when it starts (``exit_code`` NULL while it runs) and completes it when it
ends: the summary counts, requests, retries, 429s and the exit code. A row that never got its end
is a run still going, or one that was killed (SIGKILL, a crash) before it could record it. Dry
runs dedupe in memory and record no history. Rows older than ``ledger_retention_days`` are
pruned when a run starts, like delivered keys. ``target-everflow history`` shows them
(``history.py``); ``ledger forget`` prunes them.
"""

from __future__ import annotations

import json
import os
import socket
import typing as t
from importlib import metadata

from target_everflow.accounting.summary import dumps

if t.TYPE_CHECKING:
    from target_everflow.ledger import SQLLedger

COUNTS = (
    "records_read",
    "delivered",
    "skipped",
    "dead_lettered",
    "in_doubt",
    "requests",
    "retries",
    "http_429",
)
COLUMNS = (
    "run_id",
    "started_at",
    "ended_at",
    "host",
    "pid",
    "version",
    "exit_code",
    *COUNTS,
    "summary",
)
DEFAULT_LAST = 20


def runs_table(ledger: SQLLedger) -> str:
    return f"{ledger.table}_runs"


def target_version() -> str:
    try:
        return metadata.version("target-everflow")
    except metadata.PackageNotFoundError:
        return "unknown"


def _create(ledger: SQLLedger, cur: t.Any) -> None:
    runs = runs_table(ledger)
    real = ledger.real_type
    ledger.lock_for_ddl(cur, f"target_everflow_runs:{runs}")
    counts = ",\n".join(f"            {name} INTEGER" for name in COUNTS)
    cur.execute(
        f"""CREATE TABLE IF NOT EXISTS {runs} (
            run_id TEXT PRIMARY KEY,
            started_at {real} NOT NULL,
            ended_at {real},
            host TEXT,
            pid INTEGER,
            version TEXT,
            exit_code INTEGER,
{counts},
            summary TEXT
        )"""
    )
    cur.execute(f"CREATE INDEX IF NOT EXISTS {runs}_started_at ON {runs} (started_at)")


class RunHistory:
    """This run's row in the history."""

    def __init__(self, ledger: SQLLedger) -> None:
        self.ledger = ledger
        self.run_id = ledger.owner

    @classmethod
    def begin(cls, ledger: SQLLedger, retention_days: int) -> RunHistory:
        """Record the start of this run (and prune runs older than ``retention_days``)."""
        history = cls(ledger)
        runs = runs_table(ledger)

        def tx(cur: t.Any) -> None:
            _create(ledger, cur)
            now = ledger.now(cur)
            cur.execute(
                ledger.sql(f"DELETE FROM {runs} WHERE started_at < ?"),
                (now - retention_days * 86400.0,),
            )
            cur.execute(
                ledger.sql(
                    f"INSERT INTO {runs} (run_id, started_at, host, pid, version) VALUES (?, ?, ?, ?, ?)"
                ),
                (history.run_id, now, socket.gethostname(), os.getpid(), target_version()),
            )

        ledger.transaction(tx, "record the run's start in the run history")
        return history

    def end(self, exit_code: int, summary: dict[str, t.Any]) -> None:
        """Record the end: the exit code, the counts and the summary as written to summary_path."""
        ledger = self.ledger
        values = {
            "records_read": summary["records_read"],
            "delivered": summary["delivered"],
            "skipped": sum(summary["skipped"].values()),
            "dead_lettered": sum(summary["dead_lettered"].values()),
            "in_doubt": summary["in_doubt"],
            "requests": summary["requests"],
            "retries": summary["retries"],
            "http_429": summary["http_429"],
        }

        def tx(cur: t.Any) -> None:
            cur.execute(
                ledger.sql(
                    f"UPDATE {runs_table(ledger)} SET ended_at = ?, exit_code = ?, "
                    + ", ".join(f"{name} = ?" for name in COUNTS)
                    + ", summary = ? WHERE run_id = ?"
                ),
                (
                    ledger.now(cur),
                    exit_code,
                    *(values[n] for n in COUNTS),
                    dumps(summary),
                    self.run_id,
                ),
            )

        ledger.transaction(tx, "record the run's end in the run history")


def recent_runs(ledger: SQLLedger, last: int) -> list[dict[str, t.Any]]:
    """The last ``last`` runs, newest first, each a dict of :data:`COLUMNS` (summary parsed)."""

    def tx(cur: t.Any) -> list[tuple[t.Any, ...]]:
        _create(ledger, cur)
        cur.execute(
            ledger.sql(
                f"SELECT {', '.join(COLUMNS)} FROM {runs_table(ledger)}"
                " ORDER BY started_at DESC, run_id LIMIT ?"
            ),
            (last,),
        )
        return cur.fetchall()

    runs = []
    for row in ledger.transaction(tx, "read the run history"):
        run = dict(zip(COLUMNS, row))
        try:
            run["summary"] = json.loads(run["summary"]) if run["summary"] else None
        except ValueError:
            run["summary"] = None
        runs.append(run)
    return runs


def forget_runs(ledger: SQLLedger, days: float) -> int:
    """Delete runs that started more than ``days`` days ago; return how many."""

    def tx(cur: t.Any) -> int:
        _create(ledger, cur)
        cur.execute(
            ledger.sql(f"DELETE FROM {runs_table(ledger)} WHERE started_at < ?"),
            (ledger.now(cur) - days * 86400.0,),
        )
        return int(cur.rowcount or 0)

    return ledger.transaction(tx, "prune the run history")
