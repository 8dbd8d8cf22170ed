"""The report's reads of the ledger (target_everflow/ledger/reporting.py), on SQLite and
PostgreSQL (the ``backend`` fixture: a table of its own on PostgreSQL): each function checks its
arguments, aggregates in SQL, and reads the run summaries a page at a time."""

from __future__ import annotations

import ast
import json
import math
import time
from pathlib import Path

import pytest

from target_everflow.ledger import DELIVERED_STATUS, HELD_STATUS, SENDING_STATUS
from target_everflow.ledger.reporting import (
    BY_EVENT_DAY,
    BY_SEND_DAY,
    conversion_groups,
    in_doubt_keys,
    iter_run_summaries,
    ledger_shape,
    recent_runs,
    rejected_conversions,
)
from tests.known_ledger import RUNS_COLUMNS
from tests.ledgers import backend  # noqa: F401 - the fixture

DAY = 86400.0
NOW = 1_780_000_000.0  # a fixed clock: the tests never depend on the calendar
TODAY = math.floor(NOW / DAY)


def insert(ledger, key, status, **values) -> None:
    """A ledger row with the report's columns (``values`` overrides)."""
    row = {
        "delivery_key": key,
        "status": status,
        "owner": "o:1:x",
        "owner_scope": "",
        "lease_until": None,
        "created_at": NOW - 60,
        "updated_at": NOW - 60,
        "event": "Order Completed",
        "transaction_id": f"tx-{key}",
        "event_time": None,
        "sent_at": None,
        "amount": None,
        "currency": None,
        "recon_status": None,
        "recon_error_code": None,
        **values,
    }
    names = ", ".join(row)
    ledger.sql(
        f"INSERT INTO {{t}} ({names}) VALUES ({', '.join('?' if ledger.kind == 'sqlite' else '%s' for _ in row)})",
        tuple(row.values()),
    )


def test_every_function_checks_its_arguments(backend):
    ledger = backend.open()
    shape = ledger_shape(ledger)
    with pytest.raises(ValueError, match="by must be one of"):
        conversion_groups(ledger, shape, since=0, until=DAY, now=NOW, by="weekday")
    with pytest.raises(ValueError, match="since"):
        conversion_groups(ledger, shape, since=DAY, until=0, now=NOW)
    with pytest.raises(ValueError, match="until must be a finite"):
        conversion_groups(ledger, shape, since=0, until=math.inf, now=NOW)
    with pytest.raises(ValueError, match="now must be a finite"):
        in_doubt_keys(ledger, shape, now=math.nan, limit=5)
    with pytest.raises(ValueError, match="limit must be a whole number"):
        in_doubt_keys(ledger, shape, now=NOW, limit=0)
    with pytest.raises(ValueError, match="state must be"):
        rejected_conversions(ledger, shape, state="x'; DROP TABLE t; --", limit=5)
    with pytest.raises(ValueError, match="columns must be column names"):
        recent_runs(ledger, shape, columns=["run_id; DELETE"], last=5)
    with pytest.raises(ValueError, match="page must be a whole number"):
        list(iter_run_summaries(ledger, shape, since=0, until=DAY, max_chars=10, page=True))


def test_conversions_by_event_day_or_send_day_per_currency(backend):
    """A backfill: events of 3 different days, all sent today. By event day they are on their
    days; by send day on today. Amounts per currency, Infinity left out (and counted)."""
    ledger = backend.open()
    sent = TODAY * DAY + 3600
    for i, (days_ago, amount, currency) in enumerate(
        [(5, 10.0, "USD"), (5, 2.5, "EUR"), (3, 4.0, "USD"), (1, math.inf, "USD"), (1, 1.0, None)]
    ):
        insert(
            backend,
            f"k{i}",
            DELIVERED_STATUS,
            event_time=(TODAY - days_ago) * DAY + 60,
            sent_at=sent,
            amount=amount,
            currency=currency,
        )
    insert(backend, "old", DELIVERED_STATUS, event_time=None, sent_at=sent - DAY)  # no event time
    insert(backend, "held", HELD_STATUS, event_time=sent, updated_at=sent)
    insert(backend, "dead", SENDING_STATUS, event_time=sent, lease_until=NOW - 1)
    insert(backend, "live", SENDING_STATUS, event_time=sent, lease_until=NOW + 60)
    shape = ledger_shape(ledger)
    since, until = (TODAY - 9) * DAY, (TODAY + 1) * DAY

    def counts(by, held=False):
        out: dict[tuple[int, str], int] = {}
        for g in conversion_groups(
            ledger, shape, since=since, until=until, now=NOW, by=by, held=held
        ):
            out[TODAY - g.day, g.status] = out.get((TODAY - g.day, g.status), 0) + g.count
        return out

    assert counts(BY_EVENT_DAY) == {
        (5, DELIVERED_STATUS): 2,
        (3, DELIVERED_STATUS): 1,
        (1, DELIVERED_STATUS): 3,  # k3, k4 and "old", dated by its send day
        (0, SENDING_STATUS): 1,  # died sending; the live run's key is not in doubt
    }
    assert counts(BY_SEND_DAY) == {
        (0, DELIVERED_STATUS): 5,
        (1, DELIVERED_STATUS): 1,
        (0, SENDING_STATUS): 1,  # (no sent_at: its last update)
    }
    assert counts(BY_EVENT_DAY, held=True)[0, HELD_STATUS] == 1

    groups = conversion_groups(ledger, shape, since=since, until=until, now=NOW)
    amounts: dict[str | None, float] = {}
    for g in groups:
        if g.amount is not None:
            amounts[g.currency] = amounts.get(g.currency, 0.0) + g.amount
    assert amounts == {"USD": 14.0, "EUR": 2.5, None: 1.0}
    assert sum(g.non_finite for g in groups) == 1
    assert sum(g.count for g in groups if g.by_send_day) == 1  # "old"


def test_in_doubt_keys_and_rejected_conversions_are_bounded_and_counted(backend):
    ledger = backend.open()
    for i in range(7):
        insert(backend, f"h{i}", HELD_STATUS, updated_at=NOW - 100 + i)
    insert(backend, "s", SENDING_STATUS, lease_until=NOW - 5, updated_at=NOW)
    insert(backend, "live", SENDING_STATUS, lease_until=NOW + 60, updated_at=NOW)
    for i in range(4):
        insert(
            backend,
            f"r{i}",
            DELIVERED_STATUS,
            sent_at=NOW - 1000 + i,
            recon_status="rejected",
            recon_error_code=5 + i,
        )
    insert(backend, "ok", DELIVERED_STATUS, sent_at=NOW, recon_status="confirmed")
    shape = ledger_shape(ledger)
    keys, total = in_doubt_keys(ledger, shape, now=NOW, limit=3)
    assert [k.delivery_key for k in keys] == ["s", "h6", "h5"] and total == 8
    assert [k.status for k in keys] == [SENDING_STATUS, HELD_STATUS, HELD_STATUS]
    rejected, total = rejected_conversions(ledger, shape, state="rejected", limit=2)
    assert [(r.transaction_id, r.error_code) for r in rejected] == [("tx-r3", 8), ("tx-r2", 7)]
    assert total == 4


def test_run_summaries_are_read_a_page_at_a_time(backend):
    ledger = backend.open()
    real = "REAL" if backend.kind == "sqlite" else "DOUBLE PRECISION"
    backend.sql(f"CREATE TABLE IF NOT EXISTS {{t}}_runs ({RUNS_COLUMNS.format(real=real)})")
    mark = "?" if backend.kind == "sqlite" else "%s"
    runs = [  # two runs started at the same second: the page boundary falls between them
        ("r1", NOW - 500, json.dumps({"n": 1})),
        ("r2", NOW - 400, json.dumps({"n": 2})),
        ("r3b", NOW - 300, json.dumps({"n": 3})),
        ("r3a", NOW - 300, json.dumps({"n": 4})),
        ("r4", NOW - 200, None),  # still running
        ("r5", NOW - 100, json.dumps({"n": "x" * 100})),  # too long to read
        ("r6", NOW + 100, json.dumps({"n": 6})),  # after the period
        ("r0", NOW - 10_000, json.dumps({"n": 0})),  # before it
    ]
    for run_id, started, summary in runs:
        backend.sql(
            f"INSERT INTO {{t}}_runs (run_id, started_at, summary) VALUES ({mark}, {mark}, {mark})",
            (run_id, started, summary),
        )
    shape = ledger_shape(ledger)
    assert shape.history
    for page in (1, 2, 3, 100):
        read = list(
            iter_run_summaries(ledger, shape, since=NOW - 1000, until=NOW, max_chars=50, page=page)
        )
        assert [r.run_id for r in read] == ["r1", "r2", "r3a", "r3b", "r4", "r5"], page
        assert [r.text and json.loads(r.text)["n"] for r in read[:4]] == [1, 2, 4, 3]
        assert read[4].length is None and read[4].text is None
        assert read[5].length and read[5].length > 50 and read[5].text is None
    latest = recent_runs(ledger, shape, columns=["run_id", "started_at", "nope"], last=2)
    assert latest == [
        {"run_id": "r6", "started_at": NOW + 100},
        {"run_id": "r5", "started_at": NOW - 100},
    ]


def test_the_report_package_holds_no_sql():
    """All of the report's SQL is in ledger/reporting.py: no SQL text, no cursor in report/."""
    package = Path(__file__).resolve().parents[1] / "target_everflow" / "report"
    words = ("SELECT", "INSERT", "UPDATE ", "DELETE", "GROUP BY", "WHERE ", "FROM {t}")
    for path in package.rglob("*"):
        if not path.is_file() or path.suffix not in (".py", ".j2"):
            continue
        source = path.read_text(encoding="utf-8")
        if path.suffix == ".py":
            tree = ast.parse(source)
            names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
            names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
            assert not {"cursor", "cur", "execute", "query", "transaction"} & names, path
            strings = [
                n.value
                for n in ast.walk(tree)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)
            ]
        else:
            strings = [source]
        for text in strings:
            assert not any(w in text for w in words), (path, text[:80])


def test_shape_of_a_ledger_without_run_history(backend):
    ledger = backend.open()
    shape = ledger_shape(ledger)
    assert not shape.history and shape.has("currency") and shape.has("event_time")
    assert recent_runs(ledger, shape, columns=["run_id", "started_at"], last=3) == []
    assert list(iter_run_summaries(ledger, shape, since=0, until=time.time(), max_chars=10)) == []
