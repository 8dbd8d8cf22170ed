"""The report of ``target-everflow report``: the ledger and the run history as one self-contained
HTML page (the command itself is in ``report.py``).

One file, no network (no script, no font, no image but inline SVG; a Content-Security-Policy
that allows nothing else), charts drawn here without a plotting library. Per UTC day and per
event it shows:

- conversions **delivered** and their **amounts**, from the ledger (the day of ``sent_at``);
- conversions **in doubt**, from the ledger: kept for a person (status ``in_doubt``), or left
  ``sending`` by a run that died (its lease ran out; the next run decides);
- records **dead-lettered**, by reason, from the run history (``{table}_runs``): mapping-time dead
  letters never reach the ledger, so the counts are each run's summary, on the day it started;
- once reconciliation has run (ledger column ``recon_status``): **confirmed**, **pending**,
  **rejected**, **not found** and unchecked, among the delivered conversions;
- the last runs of the history.

Older ledgers degrade gracefully: without the ``event``/``amount`` columns the delivered counts
are not split by event, without ``recon_status`` there is no reconciliation section, and without
a run history table the page says "no run history yet". The ledger is found from the settings
exactly as a run finds it (``ledger_url``, default next to the dead letters), on SQLite or
PostgreSQL; the report only reads it. Every string that comes from a record or the database is
HTML-escaped.
"""

from __future__ import annotations

import html
import json
import logging
import math
import time
import typing as t
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from target_everflow.accounting.run_history import COLUMNS
from target_everflow.errors import TargetEverflowError
from target_everflow.ledger import SQLLedger, open_ledger
from target_everflow.outcomes import DEAD_LETTER
from target_everflow.text import clip, took, utc_time

DAY = 86400.0
RECON_STATES = ("confirmed", "pending", "rejected", "not_found", "unchecked")
RUN_COLUMNS = tuple(c for c in COLUMNS if c != "summary")
"""The run history's columns the runs table shows (the summary is read per day instead)."""
NO_EVENT = "(event not recorded)"
"""Ledger rows written before the ledger had an ``event`` column."""
MAX_GROUPS = 100_000
"""Rows of the ledger's GROUP BY read at most (day x event x status x reconciliation)."""
MAX_RUNS_SCANNED = 5_000
"""Runs of the period whose summaries are read for the dead-letter counts."""
MAX_SUMMARY_CHARS = 1_000_000
"""A run summary longer than this is not read (its dead letters are left out, with a note)."""
MAX_TEXT = 200
"""Longest host, version, run id or event name shown."""
MAX_EVENTS_CHARTED = 12

COLORS = {
    "delivered": "#2e7d32",
    "dead_lettered": "#c62828",
    "in_doubt": "#ef8f00",
    "confirmed": "#1565c0",
    "pending": "#90a4ae",
    "rejected": "#c62828",
    "not_found": "#6a1b9a",
    "unchecked": "#d5dbe0",
    "amount": "#00796b",
}
LABELS = {
    "delivered": "Delivered",
    "dead_lettered": "Dead-lettered",
    "in_doubt": "In doubt",
    "confirmed": "Confirmed",
    "pending": "Pending",
    "rejected": "Rejected",
    "not_found": "Not found",
    "unchecked": "Unchecked",
    "amount": "Amount",
}


# --------------------------------------------------------------------------------------------
# What the page shows


@dataclass
class Cell:
    """One day and event (or a total of several)."""

    delivered: int = 0
    amount: float = 0.0
    in_doubt: int = 0
    dead: Counter[str] = field(default_factory=Counter)
    """Dead letters by reason."""
    recon: Counter[str] = field(default_factory=Counter)
    """Delivered conversions by reconciliation state."""
    confirmed_amount: float = 0.0

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead.values())

    def add(self, other: Cell) -> None:
        self.delivered += other.delivered
        self.amount += other.amount
        self.in_doubt += other.in_doubt
        self.dead.update(other.dead)
        self.recon.update(other.recon)
        self.confirmed_amount += other.confirmed_amount

    @property
    def empty(self) -> bool:
        return not (self.delivered or self.in_doubt or self.dead_lettered or self.amount)


@dataclass
class Report:
    ledger: str
    """The ledger's description (its URL, password masked)."""
    generated_at: float
    days: list[str]
    """Every UTC day of the period, oldest first (YYYY-MM-DD)."""
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    per_event: bool = True
    """The ledger records each conversion's event (else delivered counts are not split)."""
    amounts: bool = True
    reconciliation: bool = False
    history: bool = False
    runs: list[dict[str, t.Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def cell(self, day: str, event: str) -> Cell:
        return self.cells.setdefault((day, event), Cell())

    def events(self) -> list[str]:
        """Events with anything to show, busiest first."""
        volume: Counter[str] = Counter()
        for (_, event), cell in self.cells.items():
            if not cell.empty:
                volume[event] += cell.delivered + cell.dead_lettered + cell.in_doubt
        return sorted(volume, key=lambda e: (-volume[e], e))

    def by_day(self) -> dict[str, Cell]:
        out = {day: Cell() for day in self.days}
        for (day, _), cell in self.cells.items():
            if day in out:
                out[day].add(cell)
        return out

    def by_event(self) -> dict[str, Cell]:
        out: dict[str, Cell] = {}
        for (_, event), cell in self.cells.items():
            out.setdefault(event, Cell()).add(cell)
        return out

    def total(self) -> Cell:
        out = Cell()
        for cell in self.cells.values():
            out.add(cell)
        return out


def _date(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).date().isoformat()


def _text(value: t.Any) -> str:
    text = "" if value is None else str(value)
    return clip(text, MAX_TEXT)


# --------------------------------------------------------------------------------------------
# Reading the ledger


class _Reader:
    """Read-only queries on an open SQL ledger, in the backend's dialect."""

    def __init__(self, ledger: SQLLedger) -> None:
        self.ledger = ledger
        self.sqlite = ledger.dialect == "sqlite"

    def rows(self, sql: str, params: t.Sequence[t.Any] = ()) -> list[tuple[t.Any, ...]]:
        return self.ledger.query(sql, params)[1]

    def day(self, column: str) -> str:
        """The UTC day number (epoch days) of an epoch-seconds column."""
        if self.sqlite:
            return f"CAST(({column}) / 86400 AS INTEGER)"
        return f"CAST(FLOOR(({column}) / 86400) AS BIGINT)"

    def table_exists(self, table: str) -> bool:
        if self.sqlite:
            sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?"
        else:
            sql = "SELECT to_regclass(CAST(? AS text))::text"
        found = self.rows(sql, (table,))
        return bool(found and found[0][0])

    def columns(self, table: str) -> set[str]:
        return {c.lower() for c in self.ledger.query(f"SELECT * FROM {table} WHERE 1 = 0")[0]}


def read_report(ledger: SQLLedger, *, days: int, runs: int, now: float | None = None) -> Report:
    """Everything the page shows, from an open ledger (see the module docstring)."""
    now = time.time() if now is None else now
    today = math.floor(now / DAY)
    first = today - days + 1
    since = first * DAY
    report = Report(
        ledger=ledger.description,
        generated_at=now,
        days=[_date((first + i) * DAY) for i in range(days)],
    )
    reader = _Reader(ledger)
    _read_conversions(reader, report, since=since, now=now)
    runs_table = f"{ledger.table}_runs"
    report.history = reader.table_exists(runs_table)
    if report.history:
        _read_dead_letters(reader, report, since=since)
        _read_runs(reader, report, last=runs)
    return report


def _read_conversions(reader: _Reader, report: Report, *, since: float, now: float) -> None:
    columns = reader.columns("{t}")
    report.per_event = "event" in columns
    report.amounts = "amount" in columns
    report.reconciliation = "recon_status" in columns
    stamp = "COALESCE(sent_at, updated_at)" if "sent_at" in columns else "updated_at"
    select = [reader.day(stamp), "status"]
    if report.per_event:
        select.append("event")
    if report.reconciliation:
        select.append("recon_status")
    groups = ", ".join(str(i + 1) for i in range(len(select)))
    select.append("COUNT(*)")
    select.append("SUM(amount)" if report.amounts else "0")
    rows = reader.rows(
        f"SELECT {', '.join(select)} FROM {{t}}"
        f" WHERE {stamp} >= ? AND (status IN ('delivered', 'in_doubt')"
        "  OR (status = 'sending' AND (lease_until IS NULL OR lease_until < ?)))"
        f" GROUP BY {groups} LIMIT {MAX_GROUPS}",
        (since, now),
    )
    if len(rows) >= MAX_GROUPS:
        report.notes.append(f"Only the first {MAX_GROUPS:,} groups of ledger rows are shown.")
    for row in rows:
        values = list(row)
        day_number, status = values.pop(0), values.pop(0)
        event = (_text(values.pop(0)) or NO_EVENT) if report.per_event else NO_EVENT
        recon = (values.pop(0) or "unchecked") if report.reconciliation else None
        count, amount = int(values[0]), float(values[1] or 0)
        cell = report.cell(_date(int(day_number) * DAY), event)
        if status == "delivered":
            cell.delivered += count
            cell.amount += amount
            if recon is not None:
                state = recon if recon in RECON_STATES else "unchecked"
                cell.recon[state] += count
                if state == "confirmed":
                    cell.confirmed_amount += amount
        else:
            cell.in_doubt += count
    if report.reconciliation and not any(
        state != "unchecked" and n for c in report.cells.values() for state, n in c.recon.items()
    ):
        report.reconciliation = False  # the columns exist (upgraded ledger), reconcile never ran
    if report.per_event and report.cells and all(e == NO_EVENT for _, e in report.cells):
        report.per_event = False  # the column exists (upgraded ledger), no row has an event yet
    if not report.per_event:
        report.notes.append(
            "This ledger does not record each conversion's event yet (written by an older "
            "release): delivered and in-doubt conversions are not split by event."
        )


def _read_dead_letters(reader: _Reader, report: Report, *, since: float) -> None:
    rows = reader.rows(
        "SELECT started_at, LENGTH(summary), CASE WHEN LENGTH(summary) <= ? THEN summary END"
        f" FROM {{t}}_runs WHERE started_at >= ? ORDER BY started_at DESC LIMIT {MAX_RUNS_SCANNED}",
        (MAX_SUMMARY_CHARS, since),
    )
    if len(rows) >= MAX_RUNS_SCANNED:
        report.notes.append(
            f"Dead letters are counted from the latest {MAX_RUNS_SCANNED:,} runs of the period only."
        )
    missing = unread = 0
    for started_at, length, text in rows:
        if length is None:  # running, or stopped before it wrote its summary
            missing += 1
            continue
        try:
            summary = json.loads(text) if text else None
        except ValueError:
            summary = None
        streams = summary.get("streams") if isinstance(summary, dict) else None
        if not isinstance(streams, dict) or started_at is None:
            unread += 1
            continue
        day = _date(float(started_at))
        for events in streams.values():
            if not isinstance(events, dict):
                continue
            for event, entry in events.items():
                dead = entry.get(DEAD_LETTER) if isinstance(entry, dict) else None
                if not isinstance(dead, dict):
                    continue
                for reason, n in dead.items():
                    if isinstance(n, int) and n > 0:
                        report.cell(day, _text(event)).dead[_text(reason)] += n
    if missing:
        report.notes.append(
            f"{missing} run(s) of the period have no summary yet (running, or stopped before the "
            "end): their dead letters are not counted."
        )
    if unread:
        report.notes.append(
            f"{unread} run(s) of the period have a summary too large or not readable: their dead "
            "letters are not counted."
        )


def _read_runs(reader: _Reader, report: Report, *, last: int) -> None:
    available = reader.columns("{t}_runs")
    wanted = [c for c in RUN_COLUMNS if c in available]
    if "started_at" not in wanted:
        report.notes.append("The run history table has no started_at column: runs are not listed.")
        return
    rows = reader.rows(
        f"SELECT {', '.join(wanted)} FROM {{t}}_runs ORDER BY started_at DESC LIMIT ?", (last,)
    )
    report.runs = [dict(zip(wanted, row)) for row in rows]


def build_report(
    ledger_url: str | None,
    *,
    default_dir: Path,
    days: int,
    runs: int,
    timeout: float | None = None,
    now: float | None = None,
) -> Report:
    """Open the ledger named by ``ledger_url`` (as a run does), read it, close it."""
    log = logging.getLogger("target_everflow.adapter.commands.report")
    log.setLevel(
        logging.ERROR
    )  # not a run: the ledger's "opened" and "none is unsafe" lines do not apply
    ledger = open_ledger(
        ledger_url,
        default_dir=default_dir,
        lease_seconds=60.0,
        retention_days=0,  # never prunes
        timeout=timeout,
        logger=log,
    )
    try:
        if not isinstance(ledger, SQLLedger):
            raise TargetEverflowError(
                "ledger_url is none: there is no ledger to report on (set ledger_url to the "
                "ledger your runs use)"
            )
        return read_report(ledger, days=days, runs=runs, now=now)
    finally:
        ledger.close()


# --------------------------------------------------------------------------------------------
# Drawing


def esc(value: t.Any) -> str:
    """HTML-escaped text (quotes too: safe in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def _count(n: float) -> str:
    return f"{int(n):,}"


def _money(x: float) -> str:
    return f"{x:,.2f}"


def _axis(value: float, *, whole: bool) -> float:
    """The top of a 4-step axis at or above ``value``: 4 x a 1, 2, 2.5 or 5 x 10^k step (a
    whole number of at least 1 for counts)."""
    if value <= 0:
        return 4.0
    wanted = value / 4
    power = 10 ** math.floor(math.log10(wanted))
    for factor in (1, 2, 2.5, 5, 10):
        step = factor * power
        if whole and (step < 1 or step != int(step)):
            continue
        if step >= wanted - 1e-9:
            return 4 * step
    return 40 * power if not whole else 4 * max(1, math.ceil(wanted))


def _legend(names: t.Sequence[str]) -> str:
    items = "".join(
        f'<span class="key"><i style="background:{COLORS[n]}"></i>{esc(LABELS[n])}</span>'
        for n in names
    )
    return f'<div class="legend">{items}</div>'


def column_chart(
    chart_id: str,
    labels: list[str],
    series: list[tuple[str, list[float]]],
    *,
    money: bool = False,
    height: int = 240,
) -> str:
    """Stacked columns, one per label (a day), one colour per series; inline SVG."""
    width, left, right, top, bottom = 960, 64, 12, 12, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values[i] for _, values in series) for i in range(len(labels))]
    ceiling = _axis(max(totals, default=0), whole=not money)
    fmt = _money if money else _count
    parts = [
        f'<svg id="{esc(chart_id)}" class="chart" viewBox="0 0 {width} {height}" '
        f'preserveAspectRatio="xMidYMid meet" role="img" xmlns="http://www.w3.org/2000/svg">'
    ]
    for k in range(5):
        y = top + plot_h - plot_h * k / 4
        value = ceiling * k / 4
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        label = _money(value) if money else f"{value:,.0f}"
        parts.append(
            f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(label)}</text>'
        )
    slot = plot_w / max(len(labels), 1)
    bar = max(1.0, min(slot * 0.72, 48.0))
    every = max(1, math.ceil(len(labels) / 12))
    for i, label in enumerate(labels):
        x = left + slot * i + (slot - bar) / 2
        base: float = top + plot_h
        for name, values in series:
            value = values[i]
            if value <= 0:
                continue
            h = plot_h * value / ceiling
            base -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{COLORS[name]}" data-series="{esc(name)}" data-label="{esc(label)}" '
                f'data-value="{value:g}"><title>{esc(label)}: {esc(fmt(value))} '
                f"{esc(LABELS[name].lower())}</title></rect>"
            )
        if i % every == 0 or i == len(labels) - 1 and len(labels) <= 12:
            parts.append(
                f'<text class="axis" x="{left + slot * i + slot / 2:.1f}" y="{height - 12}" '
                f'text-anchor="middle">{esc(label[5:] if len(label) == 10 else label)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(chart_id: str, labels: list[str], series: list[tuple[str, list[float]]]) -> str:
    """Stacked horizontal bars, one per label (an event); inline SVG."""
    row, left, right, top = 28, 220, 70, 6
    width = 960
    height = top * 2 + row * max(len(labels), 1)
    plot_w = width - left - right
    totals = [sum(values[i] for _, values in series) for i in range(len(labels))]
    ceiling = max(totals, default=0) or 1
    parts = [
        f'<svg id="{esc(chart_id)}" class="chart" viewBox="0 0 {width} {height}" '
        f'preserveAspectRatio="xMidYMid meet" role="img" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, label in enumerate(labels):
        y = top + row * i
        shown = label if len(label) <= 32 else label[:31] + "\u2026"
        parts.append(
            f'<text class="axis" x="{left - 8}" y="{y + row / 2 + 4:.1f}" text-anchor="end">'
            f"<title>{esc(label)}</title>{esc(shown)}</text>"
        )
        x = float(left)
        for name, values in series:
            value = values[i]
            if value <= 0:
                continue
            w = plot_w * value / ceiling
            parts.append(
                f'<rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{row - 8}" '
                f'fill="{COLORS[name]}" data-series="{esc(name)}" data-label="{esc(label)}" '
                f'data-value="{value:g}"><title>{esc(label)}: {esc(_count(value))} '
                f"{esc(LABELS[name].lower())}</title></rect>"
            )
            x += w
        parts.append(
            f'<text class="axis" x="{x + 6:.1f}" y="{y + row / 2 + 4:.1f}">{esc(_count(totals[i]))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


STYLE = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1f2933; background: #f4f6f8; }
header { background: #1f2933; color: #fff; padding: 20px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header p { margin: 0; color: #c4cdd5; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 32px 40px; }
section { background: #fff; border-radius: 8px; padding: 16px 20px; margin: 0 0 18px;
          box-shadow: 0 1px 2px rgba(0,0,0,.08); }
h2 { font-size: 16px; margin: 0 0 10px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(130px, 1fr)); gap: 12px;
         margin: 0 0 18px; }
.card { background: #fff; border-radius: 8px; padding: 12px 16px; box-shadow: 0 1px 2px rgba(0,0,0,.08);
        border-top: 4px solid #9aa5b1; }
.card .value { font-size: 21px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .name { color: #52606d; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.chart { width: 100%; height: auto; display: block; }
.chart .grid { stroke: #e4e7eb; stroke-width: 1; }
.chart .axis { fill: #52606d; font-size: 12px; }
.legend { margin: 6px 0 0; color: #3e4c59; font-size: 13px; }
.key { margin-right: 16px; white-space: nowrap; }
.key i { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 5px;
         vertical-align: -1px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 7px; border-bottom: 1px solid #e4e7eb; vertical-align: top; }
th { color: #52606d; font-weight: 600; background: #f9fafb; }
td.day, td.when { white-space: nowrap; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.reasons { color: #7b3b3b; font-size: 12px; }
.note { color: #52606d; margin: 4px 0; }
.empty { color: #7b8794; font-style: italic; }
.wide { overflow-x: auto; }
footer { color: #7b8794; font-size: 12px; text-align: center; padding: 0 0 24px; }
"""


def _card(card_id: str, name: str, value: float, color: str, *, money: bool = False) -> str:
    shown = _money(value) if money else _count(value)
    return (
        f'<div class="card" style="border-top-color:{color}"><div class="value" id="{card_id}" '
        f'data-value="{value:g}">{esc(shown)}</div><div class="name">{esc(name)}</div></div>'
    )


def _reasons(dead: Counter[str]) -> str:
    if not dead:
        return ""
    return ", ".join(
        f'<span data-reason="{esc(reason)}" data-value="{n}">{esc(reason)}: {n:,}</span>'
        for reason, n in sorted(dead.items(), key=lambda kv: (-kv[1], kv[0]))
    )


def render(report: Report, *, version: str = "") -> str:
    """The whole page."""
    total = report.total()
    days = report.by_day()
    day_labels = list(days)
    events = report.events()
    by_event = report.by_event()
    first, last = report.days[0], report.days[-1]
    out: list[str] = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Everflow conversions {esc(first)} to {esc(last)}</title>",
        f"<style>{STYLE}</style></head><body>",
        "<header><h1>Everflow conversions</h1>",
        f'<p>{esc(first)} to {esc(last)} (UTC) &middot; ledger <code id="ledger">{esc(report.ledger)}'
        f"</code> &middot; generated {esc(utc_time(report.generated_at))} UTC</p></header><main>",
        '<div class="cards">',
        _card("total-delivered", "Delivered", total.delivered, COLORS["delivered"]),
    ]
    if report.amounts:
        out.append(
            _card("total-amount", "Amount delivered", total.amount, COLORS["amount"], money=True)
        )
    out.append(
        _card("total-dead-lettered", "Dead-lettered", total.dead_lettered, COLORS["dead_lettered"])
    )
    out.append(_card("total-in-doubt", "In doubt", total.in_doubt, COLORS["in_doubt"]))
    if report.reconciliation:
        for state in ("confirmed", "rejected", "not_found"):
            out.append(
                _card(
                    f"total-{state.replace('_', '-')}",
                    LABELS[state],
                    total.recon[state],
                    COLORS[state],
                )
            )
    out.append("</div>")
    for note in report.notes:
        out.append(f'<p class="note">{esc(note)}</p>')

    outcome_series = ["delivered", "dead_lettered", "in_doubt"]

    def outcome_columns(rows: list[Cell]) -> list[tuple[str, list[float]]]:
        """One chart series per outcome, a value per row (a day, an event)."""
        return [(name, [getattr(row, name) for row in rows]) for name in outcome_series]

    out.append('<section id="per-day"><h2>Per day</h2>')
    out.append(
        column_chart(
            "chart-days",
            day_labels,
            outcome_columns([days[d] for d in day_labels]),
        )
    )
    out.append(_legend(outcome_series))
    if not report.history:
        out.append(
            '<p class="note">Dead letters are counted from the run history, and there is '
            "no run history yet.</p>"
        )
    out.append("</section>")

    if report.amounts:
        out.append('<section id="amounts"><h2>Amount delivered per day</h2>')
        out.append(
            column_chart(
                "chart-amounts",
                day_labels,
                [("amount", [days[d].amount for d in day_labels])],
                money=True,
            )
        )
        out.append("</section>")

    out.append('<section id="reconciliation"><h2>Reconciliation</h2>')
    if report.reconciliation:
        out.append(
            column_chart(
                "chart-reconciliation",
                day_labels,
                [(state, [days[d].recon[state] for d in day_labels]) for state in RECON_STATES],
            )
        )
        out.append(_legend(RECON_STATES))
        out.append(
            '<p class="note">Delivered conversions by what Everflow\'s conversion report '
            "says about them (unchecked: not reconciled yet).</p>"
        )
    else:
        out.append(
            '<p class="empty">No reconciliation data: reconcile has not checked any '
            "conversion in this ledger yet.</p>"
        )
    out.append("</section>")

    out.append('<section id="per-event"><h2>Per event</h2>')
    if events:
        charted = events[:MAX_EVENTS_CHARTED]
        out.append(
            bar_chart(
                "chart-events",
                charted,
                outcome_columns([by_event[e] for e in charted]),
            )
        )
        out.append(_legend(outcome_series))
        if len(events) > len(charted):
            out.append(
                f'<p class="note">The {len(charted)} busiest of {len(events)} events; '
                "the table below has them all.</p>"
            )
    else:
        out.append(
            '<p class="empty">Nothing delivered, dead-lettered or in doubt in this period.</p>'
        )
    out.append("</section>")

    out.append(_detail_table(report, events))
    out.append(_runs_table(report))
    out.append(
        "</main><footer>target-everflow"
        + (f" {esc(version)}" if version else "")
        + " &middot; one self-contained file: no scripts, no network</footer></body></html>\n"
    )
    return "".join(out)


def _detail_table(report: Report, events: list[str]) -> str:
    recon = report.reconciliation
    head = ["Day", "Event", "Delivered"] + (["Amount"] if report.amounts else [])
    head += ["Dead-lettered", "By reason", "In doubt"]
    if recon:
        head += [LABELS[s] for s in RECON_STATES]
    out = [
        '<section id="details"><h2>Per day and event</h2><div class="wide"><table id="detail-table"><thead><tr>'
    ]
    for name in head:
        numeric = name not in ("Day", "Event", "By reason")
        out.append(f"<th{' class=n' if numeric else ''}>{esc(name)}</th>")
    out.append("</tr></thead><tbody>")
    rank = {e: i for i, e in enumerate(events)}
    rows = sorted(  # latest day first; in a day, the busiest event first
        ((day, event, cell) for (day, event), cell in report.cells.items() if not cell.empty),
        key=lambda r: (rank.get(r[1], len(rank)), r[1]),
    )
    rows.sort(key=lambda r: r[0], reverse=True)
    for day, event, cell in rows:
        out.append(
            f'<tr data-day="{esc(day)}" data-event="{esc(event)}"><td class="day">{esc(day)}</td><td>{esc(event)}</td>'
        )
        out.append(f'<td class="n" data-metric="delivered">{cell.delivered:,}</td>')
        if report.amounts:
            out.append(
                f'<td class="n" data-metric="amount" data-value="{cell.amount:.2f}">{_money(cell.amount)}</td>'
            )
        out.append(f'<td class="n" data-metric="dead_lettered">{cell.dead_lettered:,}</td>')
        out.append(f'<td class="reasons">{_reasons(cell.dead)}</td>')
        out.append(f'<td class="n" data-metric="in_doubt">{cell.in_doubt:,}</td>')
        if recon:
            for state in RECON_STATES:
                out.append(f'<td class="n" data-metric="{state}">{cell.recon[state]:,}</td>')
        out.append("</tr>")
    if not rows:
        out.append(
            f'<tr><td colspan="{len(head)}" class="empty">No conversions in this period.</td></tr>'
        )
    out.append("</tbody></table></div></section>")
    return "".join(out)


def _runs_table(report: Report) -> str:
    out = ['<section id="runs"><h2>Last runs</h2>']
    if not report.history:
        out.append('<p class="empty" id="no-history">No run history yet.</p></section>')
        return "".join(out)
    if not report.runs:
        out.append(
            '<p class="empty" id="no-history">No run history yet: no run has been recorded.</p></section>'
        )
        return "".join(out)
    numeric = [
        ("records_read", "Read"),
        ("delivered", "Delivered"),
        ("skipped", "Skipped"),
        ("dead_lettered", "Dead-lettered"),
        ("in_doubt", "In doubt"),
        ("requests", "Requests"),
        ("retries", "Retries"),
        ("http_429", "429s"),
    ]
    out.append(
        '<div class="wide"><table id="runs-table"><thead><tr><th>Started (UTC)</th>'
        "<th>Duration</th><th class=n>Exit</th>"
    )
    out.extend(f"<th class=n>{esc(label)}</th>" for _, label in numeric)
    out.append(
        "<th>Host</th><th class=n>PID</th><th>Version</th><th>Run id</th></tr></thead><tbody>"
    )
    for run in report.runs:
        exit_code = run.get("exit_code")
        exit_text = "running" if exit_code is None else str(exit_code)
        css = "" if exit_code in (0, None) else ' style="color:#c62828;font-weight:600"'
        out.append(
            f'<tr data-run="{esc(_text(run.get("run_id")))}"><td class="when">{esc(utc_time(run.get("started_at")))}</td>'
            f"<td>{esc(took(run.get('started_at'), run.get('ended_at')))}</td>"
            f'<td class="n" data-metric="exit_code"{css}>{esc(exit_text)}</td>'
        )
        for key, _ in numeric:
            value = run.get(key)
            shown = "" if value is None else f"{int(value):,}"
            out.append(f'<td class="n" data-metric="{key}">{esc(shown)}</td>')
        out.append(
            f'<td>{esc(_text(run.get("host")))}</td><td class="n">{esc(_text(run.get("pid")))}</td>'
            f'<td>{esc(_text(run.get("version")))}</td><td class="when"><code>{esc(_text(run.get("run_id")))}</code></td></tr>'
        )
    out.append("</tbody></table></div></section>")
    return "".join(out)
