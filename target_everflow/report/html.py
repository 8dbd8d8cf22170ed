"""The page of ``target-everflow report``: one self-contained HTML file (the command is in
``adapter/commands/report.py``; what it shows is read by ``data.py``; the charts are drawn by
``charts.py``).

One file, no network (no script, no font, no image but inline SVG; a Content-Security-Policy
that allows nothing else). The page is the Jinja2 template ``templates/report.html.j2`` with
autoescape on: every string that comes from a record or the database (event names, error
messages, run ids, currency codes) is text, in the page and in its attributes. Numbers are made
finite before they are shown or drawn (NaN and Infinity never break the page).

Sections: the totals (amounts per currency, never summed across currencies), what needs a
person (in-doubt keys, rejected transactions), per day (conversions by event day by default, or
by send day; dead letters and skips by run day, labelled so), amounts per day and currency,
reconciliation, what was lost to age (skipped as too old, rejected as too late), Everflow's
rejection codes in Everflow's words, per event, per day and event, the last runs.
"""

from __future__ import annotations

import re
import typing as t

import jinja2

from target_everflow.everflow.codes import AGE_CODES, code_name
from target_everflow.ledger import SENDING_STATUS
from target_everflow.report.charts import (
    COLORS,
    LABELS,
    bar_chart,
    column_chart,
    count_text,
    money_text,
)
from target_everflow.report.data import (
    BY_SEND_DAY,
    NO_CURRENCY,
    RECON_STATES,
    Cell,
    Report,
    finite,
    text,
)
from target_everflow.text import clip, took, utc_time

MAX_EVENTS_CHARTED = 12
MAX_CURRENCIES_CHARTED = 8
"""Amount charts drawn at most (one per currency; the table has every currency)."""
MAX_DETAIL_ROWS = 5_000
"""Rows of the per-day-and-event table at most (the latest days first; the rest are counted)."""
MAX_MESSAGE = 160
"""Longest rejection message shown in the needs-action list."""
OUTCOME_SERIES = ("delivered", "dead_lettered", "in_doubt")
AGE_SERIES = ("too_old", "rejected_age")
BY_RUN = ("dead_lettered", "too_old")
"""Series counted by the runs' summaries: they can only be dated by the day the run started."""
RUN_COUNTS = (
    ("records_read", "Read"),
    ("delivered", "Delivered"),
    ("skipped", "Skipped"),
    ("dead_lettered", "Dead-lettered"),
    ("in_doubt", "In doubt"),
    ("requests", "Requests"),
    ("retries", "Retries"),
    ("http_429", "429s"),
)
_SLUG = re.compile(r"^[A-Za-z]{3}$")

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("target_everflow.report", "templates"),
    autoescape=True,  # every value from the ledger or the history is text, in text and attributes
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
"""The page's templates (``templates/`` in this package, shipped in the wheel)."""


def currency_label(currency: str) -> str:
    return currency if currency != NO_CURRENCY else "(no currency)"


def _slugs(currencies: list[str]) -> dict[str, str]:
    """An element-id part per currency: the code, else its position (ids stay plain)."""
    return {
        c: "none" if c == NO_CURRENCY else c.lower() if _SLUG.match(c) else f"c{i}"
        for i, c in enumerate(currencies)
    }


def _card(card_id: str, name: str, value: float, color: str, *, money: bool = False) -> dict:
    value = finite(value)
    return {
        "id": card_id,
        "name": name,
        "value": f"{value:.15g}",
        "shown": money_text(value) if money else count_text(value),
        "color": color,
        "currency": None,
    }


def _keys(names: t.Sequence[str]) -> list[dict[str, str]]:
    return [
        {"label": LABELS[n] + (" (by run day)" if n in BY_RUN else ""), "color": COLORS[n]}
        for n in names
    ]


def render(report: Report, *, version: str = "") -> str:
    """The whole page (``templates/report.html.j2``)."""
    total = report.total()
    days = report.by_day()
    day_labels = list(days)
    events = report.events()
    by_event = report.by_event()
    currencies = report.currencies()
    slugs = _slugs(currencies)

    def series(names: t.Sequence[str], rows: list[Cell]) -> list[tuple[str, list[float]]]:
        """One chart series per name, a value per row (a day, an event)."""
        return [(name, [getattr(row, name) for row in rows]) for name in names]

    cards = [_card("total-delivered", "Delivered", total.delivered, COLORS["delivered"])]
    if report.amounts:
        for currency in currencies or [NO_CURRENCY]:
            card = _card(
                f"total-amount-{slugs.get(currency, 'none')}",
                f"Amount delivered, {currency_label(currency)}",
                total.amounts.get(currency, 0.0),
                COLORS["amount"],
                money=True,
            )
            card["currency"] = currency_label(currency)
            cards.append(card)
    cards.append(
        _card(
            "total-dead-lettered",
            "Dead-lettered (by run day)",
            total.dead_lettered,
            COLORS["dead_lettered"],
        )
    )
    cards.append(_card("total-in-doubt", "In doubt", total.in_doubt, COLORS["in_doubt"]))
    cards.append(
        _card("total-too-old", "Skipped as too old (by run day)", total.too_old, COLORS["too_old"])
    )
    if report.reconciliation:
        for state in ("confirmed", "rejected", "not_found"):
            cards.append(
                _card(
                    f"total-{state.replace('_', '-')}",
                    LABELS[state],
                    total.recon[state],
                    COLORS[state],
                )
            )
        cards.append(
            _card(
                "total-rejected-age",
                "Rejected as too late",
                total.rejected_age,
                COLORS["rejected_age"],
            )
        )

    charted = events[:MAX_EVENTS_CHARTED]
    day_cells = [days[d] for d in day_labels]
    amount_charts = [
        {
            "slug": slugs[currency],
            "label": currency_label(currency),
            "svg": column_chart(
                f"chart-amounts-{slugs[currency]}",
                day_labels,
                [("amount", [cell.amounts.get(currency, 0.0) for cell in day_cells])],
                money=True,
            ),
        }
        for currency in currencies[:MAX_CURRENCIES_CHARTED]
    ]
    charts = {
        "days": column_chart("chart-days", day_labels, series(OUTCOME_SERIES, day_cells)),
        "reconciliation": column_chart(
            "chart-reconciliation",
            day_labels,
            [(state, [cell.recon[state] for cell in day_cells]) for state in RECON_STATES],
        )
        if report.reconciliation
        else "",
        "age": column_chart("chart-age", day_labels, series(AGE_SERIES, day_cells)),
        "events": bar_chart(
            "chart-events", charted, series(OUTCOME_SERIES, [by_event[e] for e in charted])
        )
        if events
        else "",
    }
    return _TEMPLATES.get_template("report.html.j2").render(
        first=report.days[0],
        last=report.days[-1],
        ledger=report.ledger,
        generated=utc_time(report.generated_at),
        version=version,
        dated_by="send day" if report.by == BY_SEND_DAY else "event day",
        cards=cards,
        notes=report.notes,
        history=report.history,
        amounts=report.amounts,
        amount_charts=amount_charts,
        currencies_total=len(currencies),
        reconciliation=report.reconciliation,
        charts=charts,
        legends={
            "outcomes": _keys(OUTCOME_SERIES),
            "recon": _keys(RECON_STATES),
            "age": _keys(AGE_SERIES),
        },
        events=events,
        events_total=len(events),
        events_charted=len(charted),
        action=_needs_action(report),
        codes=_rejection_codes(total),
        detail=_detail_table(report, events, currencies),
        runs=[_run_row(run) for run in report.runs],
        run_counts=[{"name": k, "label": label} for k, label in RUN_COUNTS],
    )


def _needs_action(report: Report) -> dict[str, t.Any]:
    return {
        "in_doubt": [
            {
                "key": text(k.delivery_key),
                "held": k.status != SENDING_STATUS,
                "event": text(k.event),
                "transaction": text(k.transaction_id),
                "since": utc_time(k.updated_at),
            }
            for k in report.in_doubt_keys
        ],
        "in_doubt_more": max(0, report.in_doubt_total - len(report.in_doubt_keys)),
        "rejected": [
            {
                "transaction": text(r.transaction_id),
                "key": text(r.delivery_key),
                "code": "" if r.error_code is None else str(r.error_code),
                "code_name": code_name(r.error_code),
                "age": r.error_code in AGE_CODES,
                "event": text(r.event),
                "sent": utc_time(r.sent_at),
                "message": clip(text(r.error_message), MAX_MESSAGE),
            }
            for r in report.rejected
        ],
        "rejected_more": max(0, report.rejected_total - len(report.rejected)),
    }


def _rejection_codes(total: Cell) -> dict[str, t.Any]:
    """Rejected conversions by Everflow's code: the age codes first, with their subtotal."""

    def row(code: int | None, n: int) -> dict[str, t.Any]:
        return {
            "code": "" if code is None else str(code),
            "name": code_name(code),
            "value": n,
            "shown": count_text(n),
        }

    codes = total.rejected_codes
    age = [row(c, codes[c]) for c in sorted(AGE_CODES) if codes[c]]
    other = [
        row(c, n)
        for c, n in sorted(codes.items(), key=lambda kv: (-kv[1], -1 if kv[0] is None else kv[0]))
        if c not in AGE_CODES and n
    ]
    return {
        "age": age,
        "age_codes": ", ".join(str(c) for c in sorted(AGE_CODES)),
        "age_total": total.rejected_age,
        "age_total_shown": count_text(total.rejected_age),
        "other": other,
        "total": sum(codes.values()),
    }


def _detail_table(report: Report, events: list[str], currencies: list[str]) -> dict[str, t.Any]:
    recon = report.reconciliation
    head: list[tuple[str, bool]] = [("Day", False), ("Event", False), ("Delivered", True)]
    if report.amounts:
        head.append(("Amount", True))
    head += [
        ("Dead-lettered (by run day)", True),
        ("By reason", False),
        ("Skipped as too old (by run day)", True),
        ("In doubt", True),
    ]
    if recon:
        head += [(LABELS[s], True) for s in RECON_STATES]
    rank = {e: i for i, e in enumerate(events)}
    cells = sorted(  # latest day first; in a day, the busiest event first
        ((day, event, cell) for (day, event), cell in report.cells.items() if not cell.empty),
        key=lambda r: (rank.get(r[1], len(rank)), r[1]),
    )
    cells.sort(key=lambda r: r[0], reverse=True)
    more = max(0, len(cells) - MAX_DETAIL_ROWS)
    rows = [
        {
            "day": day,
            "event": event,
            "delivered": count_text(cell.delivered),
            "amounts": [
                {
                    "currency": currency_label(c),
                    "value": f"{finite(cell.amounts[c]):.2f}",
                    "shown": money_text(cell.amounts[c]),
                }
                for c in currencies
                if c in cell.amounts
            ],
            "dead_lettered": count_text(cell.dead_lettered),
            "reasons": [
                {"name": reason, "value": n, "shown": count_text(n)}
                for reason, n in sorted(cell.dead.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
            "too_old": count_text(cell.too_old),
            "in_doubt": count_text(cell.in_doubt),
            "recon": [
                {"name": state, "shown": count_text(cell.recon[state])}
                for state in (RECON_STATES if recon else ())
            ],
        }
        for day, event, cell in cells[:MAX_DETAIL_ROWS]
    ]
    return {
        "head": [{"name": n, "numeric": numeric} for n, numeric in head],
        "rows": rows,
        "more": more,
    }


def _run_row(run: dict[str, t.Any]) -> dict[str, t.Any]:
    """A run of the history; host and PID are in its id (``host:pid:random``)."""
    exit_code = run.get("exit_code")
    return {
        "id": text(run.get("run_id")),
        "started": utc_time(run.get("started_at")),
        "duration": took(run.get("started_at"), run.get("ended_at")),
        "exit": "running" if exit_code is None else text(exit_code),
        "failed": exit_code not in (0, None),
        "counts": [{"name": k, "shown": count_text(run.get(k))} for k, _ in RUN_COUNTS],
        "version": text(run.get("version")),
    }
