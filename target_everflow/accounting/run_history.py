"""The run history: one row per run, in the ledger's database (table ``<ledger table>_runs``).

A run writes its row when it starts (``exit_code`` NULL while it runs) and completes it when it
ends: the summary counts, requests, retries, 429s and the exit code. A row that never got its end
is a run still going, or one that was killed (SIGKILL, a crash) before it could record it. Dry
runs dedupe in memory and record no history. Rows older than ``ledger_retention_days`` are
pruned when a run starts, like delivered keys. ``target-everflow history`` shows them
(``adapter/commands/history.py``); ``ledger forget`` prunes them. This module decides what a
run records; the SQL that stores and reads it is ``ledger/runs.py``.
"""

from __future__ import annotations

import json
import os
import socket
import typing as t
from importlib import metadata

from target_everflow.accounting.summary import dumps
from target_everflow.ledger.runs import RUN_COLUMNS, RUN_COUNTS, begin_run, end_run
from target_everflow.ledger.runs import recent_runs as read_runs

if t.TYPE_CHECKING:
    from target_everflow.ledger import SQLLedger

COUNTS = RUN_COUNTS
COLUMNS = RUN_COLUMNS
DEFAULT_LAST = 20


def target_version() -> str:
    try:
        return metadata.version("target-everflow")
    except metadata.PackageNotFoundError:
        return "unknown"


class RunHistory:
    """This run's row in the history."""

    def __init__(self, ledger: SQLLedger) -> None:
        self.ledger = ledger
        self.run_id = ledger.owner

    @classmethod
    def begin(cls, ledger: SQLLedger, retention_days: int) -> RunHistory:
        """Record the start of this run (and prune runs older than ``retention_days``)."""
        history = cls(ledger)
        begin_run(
            ledger,
            history.run_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=target_version(),
            retention_days=retention_days,
        )
        return history

    def end(self, exit_code: int, summary: dict[str, t.Any]) -> None:
        """Record the end: the exit code, the counts and the summary as written to summary_path."""
        counts = {
            "records_read": summary["records_read"],
            "delivered": summary["delivered"],
            "skipped": sum(summary["skipped"].values()),
            "dead_lettered": sum(summary["dead_lettered"].values()),
            "in_doubt": summary["in_doubt"],
            "requests": summary["requests"],
            "retries": summary["retries"],
            "http_429": summary["http_429"],
        }
        end_run(self.ledger, self.run_id, exit_code, counts, dumps(summary))


def recent_runs(ledger: SQLLedger, last: int) -> list[dict[str, t.Any]]:
    """The last ``last`` runs, newest first, each a dict of :data:`COLUMNS` (summary parsed)."""
    runs = read_runs(ledger, last)
    for run in runs:
        try:
            run["summary"] = json.loads(run["summary"]) if run["summary"] else None
        except ValueError:
            run["summary"] = None
    return runs
