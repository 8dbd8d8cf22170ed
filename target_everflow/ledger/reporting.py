"""The report's reads of the ledger and of its run history (``target-everflow report``).

Every statement the HTML report runs is here, read-only, through the ledger's public helpers
(``transaction``, ``sql``, ``column_names``, ``table``, ``dialect``); ``report/`` holds no SQL.
Each function checks its arguments (:class:`ValueError` names the bad one) and answers typed
rows. Older ledgers degrade: a column the table lacks reads as NULL (:class:`LedgerShape` says
which exist), a missing run history table as "no history".

Memory is bounded whatever the size of the history: the conversions are aggregated in SQL
(at most ``max_groups`` groups), the lists are bounded by ``limit``, and the run summaries are
read a page of :data:`SUMMARY_PAGE` runs at a time by :func:`iter_run_summaries` (keyset
pagination, one short transaction per page), so the caller folds one summary at a time.
"""

from __future__ import annotations

import math
import re
import typing as t
from dataclasses import dataclass

from target_everflow.ledger.base import DELIVERED_STATUS, HELD_STATUS, SENDING_STATUS

if t.TYPE_CHECKING:
    from target_everflow.ledger.sql import SQLLedger

DAY = 86400.0
BY_EVENT_DAY = "event-day"
"""Date a conversion by its event's time (``event_time``; the send day where it has none)."""
BY_SEND_DAY = "send-day"
"""Date a conversion by the day Everflow accepted it (``sent_at``)."""
DATE_BASES = (BY_EVENT_DAY, BY_SEND_DAY)

SUMMARY_PAGE = 8
"""Run summaries read per transaction: at most ``SUMMARY_PAGE * max_chars`` characters held."""
FINITE = "1.0e308"
"""An amount outside +-this (Infinity, NaN on PostgreSQL) is not a number to add up."""
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _check_time(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of epoch seconds, got {value!r}")
    return float(value)


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def _check_period(since: float, until: float) -> tuple[float, float]:
    since, until = _check_time("since", since), _check_time("until", until)
    if not since < until:
        raise ValueError(f"since ({since!r}) must be before until ({until!r})")
    return since, until


def runs_table(ledger: SQLLedger) -> str:
    """The run history's table (``<ledger table>_runs``)."""
    return f"{ledger.table}_runs"


# --- the shape of the tables -----------------------------------------------------------------


@dataclass(frozen=True)
class LedgerShape:
    """Which columns the ledger table and its run history have (older releases lack some)."""

    columns: frozenset[str]
    run_columns: frozenset[str]
    """Empty when there is no run history table."""

    def has(self, column: str) -> bool:
        return column in self.columns

    @property
    def history(self) -> bool:
        return bool(self.run_columns)


def ledger_shape(ledger: SQLLedger) -> LedgerShape:
    """The columns of the ledger table and of the run history table (none: no history)."""

    def tx(cur: t.Any) -> LedgerShape:
        return LedgerShape(
            frozenset(ledger.column_names(cur)),
            frozenset(ledger.column_names(cur, runs_table(ledger))),
        )

    return ledger.transaction(tx, "read the ledger's columns")


def _column(shape: LedgerShape, name: str) -> str:
    return name if shape.has(name) else "NULL"


def _day_number(ledger: SQLLedger, column: str) -> str:
    """The UTC day number (epoch days) of an epoch-seconds expression."""
    if ledger.dialect == "sqlite":
        return f"CAST(({column}) / 86400 AS INTEGER)"
    return f"CAST(FLOOR(({column}) / 86400) AS BIGINT)"


def _in_doubt(shape: LedgerShape, now: float) -> tuple[str, list[t.Any]]:
    """Rows a run marked sending and then died with (their lease ran out): undecided."""
    if not shape.has("lease_until"):
        return "status = ?", [SENDING_STATUS]
    return "(status = ? AND (lease_until IS NULL OR lease_until < ?))", [SENDING_STATUS, now]


# --- conversions per day ---------------------------------------------------------------------


@dataclass(frozen=True)
class ConversionGroup:
    """Conversions of one day, status, event, reconciliation state, rejection code, currency."""

    day: int
    """UTC day number (epoch seconds // 86400)."""
    status: str
    """:data:`DELIVERED_STATUS`; :data:`SENDING_STATUS` for a run that died sending (in doubt);
    :data:`HELD_STATUS` (asked for with ``held``)."""
    event: str | None
    recon_status: str | None
    recon_error_code: int | None
    currency: str | None
    by_send_day: bool
    """Dated by the send day although the event day was asked for (no event time)."""
    count: int
    amount: float | None
    """The sum of the group's finite amounts (None when none has one)."""
    non_finite: int
    """Amounts that are not finite numbers (Infinity, NaN): left out of ``amount``."""


def conversion_groups(
    ledger: SQLLedger,
    shape: LedgerShape,
    *,
    since: float,
    until: float,
    now: float,
    by: str = BY_EVENT_DAY,
    held: bool = False,
    max_groups: int = 100_000,
) -> list[ConversionGroup]:
    """Delivered conversions, and those a run died sending (in doubt), dated in
    ``[since, until)`` by ``by`` (:data:`DATE_BASES`), counted and summed per group (SQL's
    GROUP BY; at most ``max_groups`` groups). Keys held for a person (:data:`HELD_STATUS`)
    are among them only with ``held``: a run summary counts them dead-lettered (reason
    ``in_doubt``), so they are read from the ledger only where there is no run history."""
    since, until = _check_period(since, until)
    now = _check_time("now", now)
    _check_count("max_groups", max_groups)
    if by not in DATE_BASES:
        raise ValueError(f"by must be one of {', '.join(DATE_BASES)}, got {by!r}")
    sent = "COALESCE(sent_at, updated_at)" if shape.has("sent_at") else "updated_at"
    if by == BY_EVENT_DAY and shape.has("event_time"):
        stamp = f"COALESCE(event_time, {sent})"
        undated = "CASE WHEN event_time IS NULL THEN 1 ELSE 0 END"
    else:
        stamp = sent
        undated = "1" if by == BY_EVENT_DAY else "0"
    if shape.has("amount"):
        finite = f"amount BETWEEN -{FINITE} AND {FINITE}"
        sums = (
            f"SUM(CASE WHEN {finite} THEN amount END),"
            f" SUM(CASE WHEN amount IS NOT NULL AND NOT ({finite}) THEN 1 ELSE 0 END)"
        )
    else:
        sums = "NULL, 0"
    keys = [
        _day_number(ledger, stamp),
        "status",
        _column(shape, "event"),
        _column(shape, "recon_status"),
        _column(shape, "recon_error_code"),
        _column(shape, "currency"),
        undated,
    ]
    grouped = [str(i + 1) for i, key in enumerate(keys) if key not in ("NULL", "0", "1")]
    in_doubt, in_doubt_params = _in_doubt(shape, now)
    if held:
        in_doubt, in_doubt_params = f"status = ? OR {in_doubt}", [HELD_STATUS, *in_doubt_params]
    params: list[t.Any] = [since, until, DELIVERED_STATUS, *in_doubt_params]
    sql = (
        f"SELECT {', '.join(keys)}, COUNT(*), {sums}"
        f" FROM {{t}} WHERE {stamp} >= ? AND {stamp} < ?"
        f" AND (status = ? OR {in_doubt})"
        f" GROUP BY {', '.join(grouped)} LIMIT {max_groups}"
    )

    def tx(cur: t.Any) -> list[tuple[t.Any, ...]]:
        cur.execute(ledger.sql(sql), params)
        return [tuple(r) for r in cur.fetchall()]

    return [
        ConversionGroup(
            day=int(day),
            status=str(status),
            event=None if event is None else str(event),
            recon_status=None if recon is None else str(recon),
            recon_error_code=_int_or_none(code),
            currency=None if currency is None else str(currency),
            by_send_day=bool(flag),
            count=int(count),
            amount=None if total is None else float(total),
            non_finite=int(bad or 0),
        )
        for day, status, event, recon, code, currency, flag, count, total, bad in ledger.transaction(
            tx, "read the ledger's conversions per day"
        )
    ]


def _int_or_none(value: t.Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError, OverflowError):
        return None


# --- what needs a person ---------------------------------------------------------------------


@dataclass(frozen=True)
class InDoubtKey:
    delivery_key: str
    status: str
    """:data:`HELD_STATUS` (held for a person) or :data:`SENDING_STATUS` (a run died sending)."""
    event: str | None
    transaction_id: str | None
    updated_at: float | None


def in_doubt_keys(
    ledger: SQLLedger, shape: LedgerShape, *, now: float, limit: int
) -> tuple[list[InDoubtKey], int]:
    """The in-doubt keys of the whole ledger (held, or left sending by a run that died), the
    latest first: at most ``limit`` of them, and how many there are in all."""
    now = _check_time("now", now)
    _check_count("limit", limit)
    in_doubt, in_doubt_params = _in_doubt(shape, now)
    where = f"status = ? OR {in_doubt}"
    params: list[t.Any] = [HELD_STATUS, *in_doubt_params]
    select = ", ".join(
        ["delivery_key", "status", _column(shape, "event"), _column(shape, "transaction_id")]
    )

    rows, total = _first_and_count(
        ledger, f"{select}, updated_at", where, params, "updated_at DESC, delivery_key", limit,
        "read the ledger's in-doubt keys",
    )  # fmt: skip
    return [
        InDoubtKey(
            str(key),
            str(status),
            None if event is None else str(event),
            None if tx_id is None else str(tx_id),
            _float_or_none(at),
        )
        for key, status, event, tx_id, at in rows
    ], total


def _first_and_count(
    ledger: SQLLedger,
    select: str,
    where: str,
    params: t.Sequence[t.Any],
    order: str,
    limit: int,
    what: str,
) -> tuple[list[tuple[t.Any, ...]], int]:
    """The first ``limit`` rows matching ``where`` in ``order``, and how many match, read in one
    transaction (so that the count is that of the rows shown)."""

    def tx(cur: t.Any) -> tuple[list[tuple[t.Any, ...]], int]:
        cur.execute(
            ledger.sql(f"SELECT {select} FROM {{t}} WHERE {where} ORDER BY {order} LIMIT ?"),
            (*params, limit),
        )
        rows = [tuple(r) for r in cur.fetchall()]
        cur.execute(ledger.sql(f"SELECT COUNT(*) FROM {{t}} WHERE {where}"), tuple(params))
        return rows, int(cur.fetchone()[0])

    return ledger.transaction(tx, what)


@dataclass(frozen=True)
class RejectedConversion:
    transaction_id: str | None
    delivery_key: str
    event: str | None
    error_code: int | None
    error_message: str | None
    sent_at: float | None


def rejected_conversions(
    ledger: SQLLedger, shape: LedgerShape, *, state: str, limit: int
) -> tuple[list[RejectedConversion], int]:
    """The delivered conversions whose reconciliation state is ``state`` (reconcile's word for
    rejected), in the whole ledger, the latest sent first: at most ``limit``, and the count."""
    _check_count("limit", limit)
    if not isinstance(state, str) or not _IDENTIFIER.match(state):
        raise ValueError(f"state must be a reconciliation state, got {state!r}")
    if not shape.has("recon_status"):
        return [], 0
    sent = "COALESCE(sent_at, updated_at)" if shape.has("sent_at") else "updated_at"
    select = ", ".join(
        [
            _column(shape, "transaction_id"),
            "delivery_key",
            _column(shape, "event"),
            _column(shape, "recon_error_code"),
            _column(shape, "recon_error_message"),
            sent,
        ]
    )
    where = "status = ? AND recon_status = ?"
    params = (DELIVERED_STATUS, state)

    rows, total = _first_and_count(
        ledger, select, where, params, "6 DESC, delivery_key", limit,
        "read the ledger's rejected conversions",
    )  # fmt: skip
    return [
        RejectedConversion(
            None if tx_id is None else str(tx_id),
            str(key),
            None if event is None else str(event),
            _int_or_none(code),
            None if message is None else str(message),
            _float_or_none(at),
        )
        for tx_id, key, event, code, message, at in rows
    ], total


def _float_or_none(value: t.Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# --- the run history -------------------------------------------------------------------------


def recent_runs(
    ledger: SQLLedger, shape: LedgerShape, *, columns: t.Sequence[str], last: int
) -> list[dict[str, t.Any]]:
    """The last ``last`` runs, newest first, each a dict of those ``columns`` the run history
    has (``started_at`` is needed to order them: without it, or without a history, none)."""
    _check_count("last", last)
    for name in columns:
        if not isinstance(name, str) or not _IDENTIFIER.match(name):
            raise ValueError(f"columns must be column names, got {name!r}")
    wanted = [c for c in columns if c in shape.run_columns]
    if "started_at" not in shape.run_columns or not wanted:
        return []

    def tx(cur: t.Any) -> list[tuple[t.Any, ...]]:
        cur.execute(
            ledger.sql(
                f"SELECT {', '.join(wanted)} FROM {runs_table(ledger)}"
                " ORDER BY started_at DESC, run_id LIMIT ?"
            ),
            (last,),
        )
        return [tuple(r) for r in cur.fetchall()]

    return [dict(zip(wanted, row)) for row in ledger.transaction(tx, "read the run history")]


@dataclass(frozen=True)
class RunSummaryText:
    """One run's summary as stored (JSON text), or None: not written yet, or too long."""

    run_id: str
    started_at: float
    length: int | None
    """The summary's length in characters; None when the run has not written one."""
    text: str | None
    """The summary; None when there is none or it is longer than ``max_chars``."""


def iter_run_summaries(
    ledger: SQLLedger,
    shape: LedgerShape,
    *,
    since: float,
    until: float,
    max_chars: int,
    page: int = SUMMARY_PAGE,
) -> t.Iterator[RunSummaryText]:
    """The summaries of the runs started in ``[since, until)``, oldest first, read ``page``
    runs per transaction (keyset pagination on ``started_at, run_id``): the caller holds one
    page, never the whole history. A summary longer than ``max_chars`` comes without its text."""
    since, until = _check_period(since, until)
    _check_count("max_chars", max_chars)
    _check_count("page", page)
    if not {"run_id", "started_at", "summary"} <= shape.run_columns:
        return
    runs = runs_table(ledger)
    select = (
        "SELECT run_id, started_at, LENGTH(summary),"
        f" CASE WHEN LENGTH(summary) <= ? THEN summary END FROM {runs}"
        " WHERE started_at >= ? AND started_at < ?"
    )
    order = f" ORDER BY started_at, run_id LIMIT {page}"
    after: tuple[float, str] | None = None
    params: tuple[t.Any, ...]
    while True:
        if after is None:
            sql, params = select + order, (max_chars, since, until)
        else:
            sql = select + " AND (started_at > ? OR (started_at = ? AND run_id > ?))" + order
            params = (max_chars, since, until, after[0], after[0], after[1])

        def tx(cur: t.Any, sql: str = sql, params: tuple[t.Any, ...] = params) -> list[t.Any]:
            cur.execute(ledger.sql(sql), params)
            return [tuple(r) for r in cur.fetchall()]

        rows = ledger.transaction(tx, "read the run history's summaries")
        for run_id, started_at, length, text in rows:
            yield RunSummaryText(
                str(run_id),
                float(started_at),
                None if length is None else int(length),
                None if text is None else str(text),
            )
        if len(rows) < page:
            return
        after = (float(rows[-1][1]), str(rows[-1][0]))
