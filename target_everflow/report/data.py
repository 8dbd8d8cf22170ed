"""What the report shows, read from the ledger and its run history (the SQL is in
``ledger/reporting.py``; the page is drawn by ``html.py``).

Per UTC day and per event:

- conversions **delivered**, their **amounts per currency** (never summed across currencies;
  amounts sent without one are their own ``(no currency)`` figure), the **reconciliation** states
  and Everflow's **rejection codes**: from the ledger, dated by the event's day (``event_time``)
  or, on request, by the day Everflow accepted them (``sent_at``);
- conversions **in doubt**: left ``sending`` by a run that died (its lease ran out; the next run
  decides), from the ledger, dated the same way (and, in a ledger without a run history, the
  keys held for a person, which no run summary counts there);
- records **dead-lettered** (by reason) and conversions **skipped as too old**: from each run's
  summary, which is the only place they are counted, so they are dated by the day the run
  started. A key held for a person (``in_doubt: dead_letter``) is counted there once, as a dead
  letter with reason ``in_doubt``, and not again from the ledger;
- what needs a person: the in-doubt keys and the rejected transactions of the whole ledger (at
  most :data:`MAX_ACTION_ITEMS` each, with the count of the rest);
- the last runs.

Memory: the ledger is aggregated in SQL, and the run summaries are folded one at a time as they
are read a page at a time (``iter_run_summaries``), so the report holds one page of summaries and
the per-day counts, whatever the number of runs in the period.
"""

from __future__ import annotations

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
from target_everflow.everflow.codes import AGE_CODES
from target_everflow.ledger import DELIVERED_STATUS, SQLLedger, open_ledger
from target_everflow.ledger.reporting import (
    BY_EVENT_DAY,
    BY_SEND_DAY,
    DATE_BASES,
    DAY,
    InDoubtKey,
    LedgerShape,
    RejectedConversion,
    conversion_groups,
    in_doubt_keys,
    iter_run_summaries,
    ledger_shape,
    recent_runs,
    rejected_conversions,
)
from target_everflow.outcomes import DEAD_LETTER, SKIPPED, TOO_OLD
from target_everflow.reconcile.store import CONFIRMED, NOT_FOUND, PENDING, REJECTED
from target_everflow.text import clip

try:
    import msgspec
except ImportError:  # pragma: no cover - msgspec comes with singer-sdk[msgspec]
    msgspec = None  # type: ignore[assignment]  # json.loads reads every summary then

__all__ = ["BY_EVENT_DAY", "BY_SEND_DAY", "DATE_BASES", "Cell", "Report", "build_report"]

UNCHECKED = "unchecked"
"""A delivered conversion reconcile has not checked yet (``recon_status`` NULL)."""
RECON_STATES = (CONFIRMED, PENDING, REJECTED, NOT_FOUND, UNCHECKED)
RUN_COLUMNS = tuple(c for c in COLUMNS if c != "summary")
"""The run history's columns the runs table may show (the summary is folded per day instead)."""
NO_EVENT = "(event not recorded)"
"""Ledger rows written before the ledger had an ``event`` column."""
NO_CURRENCY = ""
"""The currency key of amounts sent without a currency (shown as ``(no currency)``)."""
MAX_GROUPS = 100_000
"""Groups of the ledger's aggregate read at most (day x event x status x reconciliation x ...)."""
MAX_SUMMARY_CHARS = 1_000_000
"""A run summary longer than this is not read (its counts are left out, with a note)."""
MAX_COUNT = 10**15
"""A count in a run summary above this (or not a whole number) is not a count: left out."""
MAX_TEXT = 200
"""Longest host, version, run id, event name or message shown."""
MAX_ACTION_ITEMS = 50
"""In-doubt keys and rejected transactions listed at most (the rest are counted)."""


def finite(value: t.Any) -> float:
    """``value`` as a finite float; anything else (NaN, Infinity, not a number) is 0.0."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _is_count(value: t.Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_COUNT


@dataclass
class Cell:
    """One day and event (or a total of several)."""

    delivered: int = 0
    amounts: dict[str, float] = field(default_factory=dict)
    """Currency (:data:`NO_CURRENCY`: none) -> the sum of the amounts delivered."""
    in_doubt: int = 0
    dead: Counter[str] = field(default_factory=Counter)
    """Dead letters by reason (from run summaries: dated by run)."""
    too_old: int = 0
    """Skipped as too old (from run summaries: dated by run)."""
    recon: Counter[str] = field(default_factory=Counter)
    """Delivered conversions by reconciliation state."""
    rejected_codes: Counter[int | None] = field(default_factory=Counter)
    """Rejected conversions by Everflow's error code (None: no code recorded)."""

    @property
    def dead_lettered(self) -> int:
        return sum(self.dead.values())

    @property
    def rejected_age(self) -> int:
        """Rejected by Everflow as too late for the click (codes 5, 13, 20)."""
        return sum(n for code, n in self.rejected_codes.items() if code in AGE_CODES)

    def add(self, other: Cell) -> None:
        self.delivered += other.delivered
        for currency, amount in other.amounts.items():
            self.amounts[currency] = self.amounts.get(currency, 0.0) + amount
        self.in_doubt += other.in_doubt
        self.dead.update(other.dead)
        self.too_old += other.too_old
        self.recon.update(other.recon)
        self.rejected_codes.update(other.rejected_codes)

    @property
    def empty(self) -> bool:
        return not (self.delivered or self.in_doubt or self.dead_lettered or self.too_old)


@dataclass
class Report:
    ledger: str
    """The ledger's description (its URL, password masked)."""
    generated_at: float
    days: list[str]
    """Every UTC day of the period, oldest first (YYYY-MM-DD)."""
    by: str = BY_EVENT_DAY
    """How conversions are dated: :data:`BY_EVENT_DAY` or :data:`BY_SEND_DAY`."""
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    per_event: bool = True
    """The ledger records each conversion's event (else delivered counts are not split)."""
    amounts: bool = True
    reconciliation: bool = False
    history: bool = False
    runs: list[dict[str, t.Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    in_doubt_keys: list[InDoubtKey] = field(default_factory=list)
    in_doubt_total: int = 0
    rejected: list[RejectedConversion] = field(default_factory=list)
    rejected_total: int = 0

    def cell(self, day: str, event: str) -> Cell:
        found = self.cells.get((day, event))
        if found is None:
            found = self.cells[day, event] = Cell()
        return found

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

    def currencies(self) -> list[str]:
        """The currencies amounts were delivered in, by code, :data:`NO_CURRENCY` last."""
        seen = {c for cell in self.cells.values() for c in cell.amounts}
        return sorted(seen, key=lambda c: (c == NO_CURRENCY, c))


def day_name(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).date().isoformat()


def text(value: t.Any) -> str:
    """A value from the ledger or the history as bounded text ("" for None)."""
    return clip("" if value is None else str(value), MAX_TEXT)


# --------------------------------------------------------------------------------------------
# Reading


def read_report(
    ledger: SQLLedger, *, days: int, runs: int, now: float | None = None, by: str = BY_EVENT_DAY
) -> Report:
    """Everything the page shows, from an open ledger (see the module docstring)."""
    if by not in DATE_BASES:
        raise ValueError(f"by must be one of {', '.join(DATE_BASES)}, got {by!r}")
    now = time.time() if now is None else now
    today = math.floor(now / DAY)
    first = today - days + 1
    since, until = first * DAY, (today + 1) * DAY
    report = Report(
        ledger=ledger.description,
        generated_at=now,
        days=[day_name((first + i) * DAY) for i in range(days)],
        by=by,
    )
    shape = ledger_shape(ledger)
    _read_conversions(ledger, shape, report, since=since, until=until, now=now)
    report.in_doubt_keys, report.in_doubt_total = in_doubt_keys(
        ledger, shape, now=now, limit=MAX_ACTION_ITEMS
    )
    report.rejected, report.rejected_total = rejected_conversions(
        ledger, shape, state=REJECTED, limit=MAX_ACTION_ITEMS
    )
    report.history = shape.history
    if report.history:
        _read_summaries(ledger, shape, report, since=since, until=until)
        if "started_at" not in shape.run_columns:
            report.notes.append(
                "The run history table has no started_at column: runs are not listed."
            )
        report.runs = recent_runs(ledger, shape, columns=RUN_COLUMNS, last=runs)
    return report


def _read_conversions(
    ledger: SQLLedger, shape: LedgerShape, report: Report, *, since: float, until: float, now: float
) -> None:
    report.per_event = shape.has("event")
    report.amounts = shape.has("amount")
    report.reconciliation = shape.has("recon_status")
    groups = conversion_groups(
        ledger,
        shape,
        since=since,
        until=until,
        now=now,
        by=report.by,
        held=not shape.history,  # no run summary counts the held keys: the ledger does
        max_groups=MAX_GROUPS,
    )
    if len(groups) >= MAX_GROUPS:
        report.notes.append(f"Only the first {MAX_GROUPS:,} groups of ledger rows are shown.")
    undated = non_finite = 0
    for group in groups:
        event = (text(group.event) or NO_EVENT) if report.per_event else NO_EVENT
        cell = report.cell(day_name(group.day * DAY), event)
        non_finite += group.non_finite
        if group.by_send_day:
            undated += group.count
        if group.status != DELIVERED_STATUS:
            cell.in_doubt += group.count
            continue
        cell.delivered += group.count
        if group.amount is not None:
            currency = text(group.currency) if group.currency else NO_CURRENCY
            cell.amounts[currency] = cell.amounts.get(currency, 0.0) + finite(group.amount)
        if report.reconciliation:
            state = group.recon_status if group.recon_status in RECON_STATES else UNCHECKED
            cell.recon[state] += group.count
            if state == REJECTED:
                cell.rejected_codes[group.recon_error_code] += group.count
    if report.reconciliation and not any(
        state != UNCHECKED and n for c in report.cells.values() for state, n in c.recon.items()
    ):
        report.reconciliation = False  # the columns exist (upgraded ledger), reconcile never ran
    if report.per_event and report.cells and all(e == NO_EVENT for _, e in report.cells):
        report.per_event = False  # the column exists (upgraded ledger), no row has an event yet
    if not report.per_event:
        report.notes.append(
            "This ledger does not record each conversion's event yet (written by an older "
            "release): delivered and in-doubt conversions are not split by event."
        )
    if report.by == BY_EVENT_DAY and undated:
        report.notes.append(
            f"{undated:,} conversion(s) have no event time (written by an older release, or the "
            "event had none): they are dated by the day they were sent."
        )
    if non_finite:
        report.notes.append(
            f"{non_finite:,} amount(s) in the ledger are not finite numbers (NaN, Infinity): "
            "they are left out of the amounts."
        )


def _read_summaries(
    ledger: SQLLedger, shape: LedgerShape, report: Report, *, since: float, until: float
) -> None:
    """Fold each run's summary into the cells of the day the run started, one at a time."""
    missing = unread = 0
    for run in iter_run_summaries(
        ledger, shape, since=since, until=until, max_chars=MAX_SUMMARY_CHARS
    ):
        if run.length is None:  # running, or stopped before it wrote its summary
            missing += 1
            continue
        if not _fold_summary(report, day_name(run.started_at), _parse(run.text)):
            unread += 1
    if missing:
        report.notes.append(
            f"{missing} run(s) of the period have no summary yet (running, or stopped before the "
            "end): their dead letters and skips are not counted."
        )
    if unread:
        report.notes.append(
            f"{unread} run(s) of the period have a summary too large or not readable: their dead "
            "letters and skips are not counted."
        )


if msgspec is not None:

    class _Entry(msgspec.Struct):
        """The parts of a summary's event row the report counts (the rest is skipped unread)."""

        dead_letter: dict[str, t.Any] = {}
        skipped: dict[str, t.Any] = {}

    class _Summary(msgspec.Struct):
        streams: dict[str, dict[str, _Entry]]

    _DECODE = msgspec.json.Decoder(_Summary).decode


def _parse(text: str | None) -> t.Any:
    """A run summary as dicts, or None when it is not JSON. msgspec reads the counted parts
    only (several times faster than json for a 300 KB summary); a summary it refuses (NaN,
    a value of an unexpected type) is read by json, and judged part by part."""
    if not text:
        return None
    if msgspec is not None:
        try:
            parsed = _DECODE(text)
        except (msgspec.DecodeError, ValueError):
            pass
        else:
            return {
                "streams": {
                    stream: {
                        event: {DEAD_LETTER: entry.dead_letter, SKIPPED: entry.skipped}
                        for event, entry in events.items()
                    }
                    for stream, events in parsed.streams.items()
                }
            }
    try:
        return json.loads(text)
    except ValueError:
        return None


def _fold_summary(report: Report, day: str, summary: t.Any) -> bool:
    """Add one run summary's dead letters and too-old skips, per event; False: not readable."""
    streams = summary.get("streams") if isinstance(summary, dict) else None
    if not isinstance(streams, dict):
        return False
    for events in streams.values():
        if not isinstance(events, dict):
            continue
        for event, entry in events.items():
            if not isinstance(entry, dict):
                continue
            dead = entry.get(DEAD_LETTER)
            if isinstance(dead, dict):
                for reason, n in dead.items():
                    if _is_count(n):
                        report.cell(day, text(event)).dead[text(reason)] += n
            skipped = entry.get(SKIPPED)
            too_old = skipped.get(TOO_OLD) if isinstance(skipped, dict) else None
            if _is_count(too_old):
                report.cell(day, text(event)).too_old += t.cast(int, too_old)
    return True


def build_report(
    ledger_url: str | None,
    *,
    default_dir: Path,
    days: int,
    runs: int,
    by: str = BY_EVENT_DAY,
    timeout: float | None = None,
    now: float | None = None,
) -> Report:
    """Open the ledger named by ``ledger_url`` (as a run does), read it, close it."""
    log = logging.getLogger("target_everflow.adapter.commands.report")
    # not a run: the ledger's "opened" and "none is unsafe" lines do not apply
    log.setLevel(logging.ERROR)
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
        return read_report(ledger, days=days, runs=runs, now=now, by=by)
    finally:
        ledger.close()
