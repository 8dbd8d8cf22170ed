"""``target-everflow report --config config.json --output report.html [--by send-day]``: one
self-contained HTML page about the ledger and the run history (read by
``target_everflow/report/data.py``, drawn by ``target_everflow/report/html.py``)."""

from __future__ import annotations

import os
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import click

from target_everflow.adapter.commands.options import (
    config_option,
    fail,
    load_target,
    number_option,
)
from target_everflow.errors import LedgerUnavailable, TargetEverflowError
from target_everflow.ledger import LedgerError
from target_everflow.report.data import BY_EVENT_DAY, DATE_BASES, build_report
from target_everflow.report.html import render


def write_atomically(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a reader never sees half a page)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@click.command("report")
@config_option
@click.option(
    "--output",
    "-o",
    "output",
    default="everflow_report.html",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HTML file to write.",
)
@number_option(
    "--days",
    integer=True,
    minimum=1,
    maximum=3660,
    default=30,
    show_default=True,
    help="UTC days shown, ending today.",
)
@number_option(
    "--runs",
    integer=True,
    minimum=1,
    maximum=1000,
    default=20,
    show_default=True,
    help="Runs listed in the run table, latest first.",
)
@click.option(
    "--by",
    "by",
    default=BY_EVENT_DAY,
    show_default=True,
    type=click.Choice(DATE_BASES),
    help="Date delivered, in-doubt and reconciled conversions by the day of their event "
    "(event-day: a backfill shows on the days its events happened) or by the day Everflow "
    "accepted them (send-day). Dead letters and skips are counted by the runs and always "
    "dated by the day the run started.",
)
def report_command(config: tuple[str, ...], output: Path, days: int, runs: int, by: str) -> None:
    """Write an HTML report of delivered, dead-lettered and in-doubt conversions per day and
    event: amounts per currency, what needs action (in-doubt keys, rejected transactions),
    Everflow's rejection codes, what was lost to age, the last runs."""
    settings = load_target(config).settings
    try:
        report = build_report(
            settings.ledger_url,
            default_dir=settings.state_dir,
            days=days,
            runs=runs,
            by=by,
            timeout=settings.ledger_timeout,
        )
    except LedgerError as exc:
        fail(LedgerUnavailable(str(exc)))
    except TargetEverflowError as exc:
        fail(exc)
    try:
        release = version("target-everflow")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        release = ""
    try:
        write_atomically(output, render(report, version=release))
    except OSError as exc:
        fail(TargetEverflowError(f"cannot write the report to {output}: {exc.strerror or exc}"))
    total = report.total()
    click.echo(
        f"Report written to {output}: {report.days[0]} to {report.days[-1]}, "
        f"{total.delivered:,} delivered, {total.dead_lettered:,} dead-lettered, "
        f"{total.in_doubt:,} in doubt, {len(report.runs)} runs listed."
    )
