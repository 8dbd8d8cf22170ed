"""``target-everflow history``: the last runs, from the run history in the ledger's database.

``target-everflow history --config config.json`` prints the last runs (``--last N``, default 20)
as a table, or ``--json``. The history itself (what a run records, where): ``target_everflow/accounting/run_history.py``, its SQL ``target_everflow/ledger/runs.py``.
"""

from __future__ import annotations

import json
import typing as t

import click

from target_everflow.accounting.run_history import COUNTS, DEFAULT_LAST, recent_runs
from target_everflow.adapter.commands.ledger import configured_ledger, format_table
from target_everflow.adapter.commands.options import (
    PROG,
    config_option,
    json_option,
    number_option,
)
from target_everflow.text import took, utc_time


def _count(value: t.Any) -> str:
    return "" if value is None else str(value)


def history_table(runs: list[dict[str, t.Any]]) -> str:
    headers = [
        "Started (UTC)",
        "Took",
        "Exit",
        "Read",
        "Delivered",
        "Skipped",
        "Dead letters",
        "In doubt",
        "Requests",
        "Retries",
        "429s",
        "Version",
        "Host",
        "PID",
        "Run",
    ]
    rows = [
        [
            utc_time(run["started_at"]),
            took(run["started_at"], run["ended_at"]),
            "running?" if run["exit_code"] is None else str(run["exit_code"]),
            *(_count(run[name]) for name in COUNTS),
            run["version"] or "",
            run["host"] or "",
            _count(run["pid"]),
            run["run_id"],
        ]
        for run in runs
    ]
    return format_table(headers, rows, right=[1, *range(3, 11), 13])


@click.command("history")
@config_option
@number_option(
    "--last",
    "last",
    integer=True,
    minimum=1,
    maximum=100_000,
    default=DEFAULT_LAST,
    show_default=True,
    metavar="N",
    help="How many runs to show, newest first.",
)
@json_option("the runs as a JSON array")
def history_command(config: tuple[str, ...], last: int, as_json: bool) -> None:
    """The last runs: start, duration, exit code, counts, requests, retries and 429s.

    A run without an exit code is still going, or was killed before it could record its end.
    """
    with configured_ledger(config) as ledger:
        runs = recent_runs(ledger, last)
        where = ledger.description
    if as_json:
        click.echo(json.dumps(runs, indent=2))
        return
    if not runs:
        click.echo(f"No runs recorded in ledger {where} yet.")
        return
    click.echo(f"The last {len(runs)} run(s) recorded in ledger {where}, newest first:")
    click.echo(history_table(runs))
    if any(run["exit_code"] is None for run in runs):
        click.echo(
            f"running?: no end recorded: still running, or killed before it could record it "
            f"(see {PROG} ledger status)."
        )
