"""A ledger with known contents, written with plain SQL as docs/contracts describe its tables:
the ledger table with the per-conversion and reconciliation columns, and ``{table}_runs``.

The report tests render it and check every number against :data:`EXPECTED`.
"""

from __future__ import annotations

import json
import sqlite3
import time
import typing as t
import uuid
from datetime import datetime, timezone
from pathlib import Path

XSS_EVENT = '<script>alert("x")</script> & Co\'s'
XSS_HOST = "<b>build-host</b>"
XSS_VERSION = "<i>0.1.0</i>"
XSS_MESSAGE = '<img src=x onerror="alert(1)"> too late'

LEDGER_COLUMNS = (
    "delivery_key TEXT PRIMARY KEY, status TEXT NOT NULL, owner TEXT NOT NULL,"
    " owner_scope TEXT NOT NULL DEFAULT '', lease_until {real}, http_status INTEGER,"
    " created_at {real} NOT NULL, updated_at {real} NOT NULL,"
    " stream TEXT, event TEXT, transaction_id TEXT, message_id TEXT, adv_event_id INTEGER,"
    " order_id TEXT, amount {real}, event_time {real}, sent_at {real},"
    " recon_status TEXT, recon_error_code INTEGER, recon_error_message TEXT,"
    " recon_checked_at {real}, recon_owner TEXT, recon_lease_until {real}, currency TEXT,"
    " recon_reported_at {real}"
)
RUNS_COLUMNS = (
    "run_id TEXT PRIMARY KEY, started_at {real}, ended_at {real}, host TEXT, pid INTEGER,"
    " version TEXT, exit_code INTEGER, records_read INTEGER, delivered INTEGER, skipped INTEGER,"
    " dead_lettered INTEGER, in_doubt INTEGER, requests INTEGER, retries INTEGER,"
    " http_429 INTEGER, summary TEXT"
)


def day_start(days_ago: int, now: float) -> float:
    return (int(now // 86400) - days_ago) * 86400.0


def day_name(days_ago: int, now: float) -> str:
    return datetime.fromtimestamp(day_start(days_ago, now), timezone.utc).date().isoformat()


def _summary(streams: dict) -> str:
    return json.dumps(
        {
            "dry_run": False,
            "records_read": 10,
            "delivered": 0,
            "skipped": {},
            "dead_lettered": {},
            "streams": streams,
        }
    )


def rows(now: float) -> tuple[list[tuple], list[tuple]]:
    """(ledger rows, run rows): two days ago (A), yesterday (B), today (C), and one row long ago."""
    a, b, c = (day_start(n, now) + 3600 * 9 for n in (2, 1, 0))
    dead_owner = "gone-host:1:dead"
    live_owner = "live-host:2:live"
    ledger = []

    def row(
        key,
        status,
        event,
        amount=None,
        recon=None,
        *,
        at,
        sent=True,
        owner="run-a",
        lease=None,
        currency="USD",
        code=None,
        message=None,
    ):
        ledger.append(
            (
                key,
                status,
                owner,
                "",
                lease,
                200 if status == "delivered" else None,
                at,
                at,
                "orders",
                event,
                f"tx-{key}",
                f"msg-{key}",
                0,
                f"o-{key}",
                amount,
                at - 60,
                at if sent and status == "delivered" else None,
                recon,
                code,
                message,
                None,
                None,
                None,
                currency if amount is not None else None,
                None,  # recon_reported_at
            )
        )

    row("a1", "delivered", "Order Completed", 10.5, "confirmed", at=a)
    row("a2", "delivered", "Order Completed", 20.0, "confirmed", at=a + 10)
    row(
        "a3",
        "delivered",
        "Order Completed",
        30.0,
        "rejected",
        at=a + 20,
        currency="EUR",
        code=13,
        message=XSS_MESSAGE,
    )
    row("a4", "delivered", "Subscription Started", None, None, at=a + 30)
    row("b1", "delivered", "Order Completed", 5.0, "not_found", at=b)
    row("b2", "delivered", "Order Completed", 7.0, "pending", at=b + 10, currency=None)
    row("b3", "in_doubt", "Order Completed", 9.0, None, at=b + 20)  # held
    row(
        "b4", "sending", "Order Completed", 9.0, None, at=b + 30, owner=dead_owner, lease=b + 90
    )  # died sending
    row(
        "b5", "pending", "Order Completed", 9.0, None, at=b + 40, owner=live_owner, lease=now + 3600
    )  # being sent
    row(
        "b6", "sending", "Order Completed", 9.0, None, at=b + 50, owner=live_owner, lease=now + 3600
    )  # being sent
    row("c1", "delivered", XSS_EVENT, 1.25, "confirmed", at=c)
    row("old", "delivered", "Order Completed", 999.0, "confirmed", at=day_start(100, now))

    runs = [
        (
            "run-a",
            a - 100,
            a + 200,
            "host-1",
            101,
            "0.1.0",
            0,
            12,
            4,
            2,
            4,
            0,
            7,
            1,
            0,
            _summary(
                {
                    "orders": {
                        "Order Completed": {
                            "delivered": 3,
                            "skipped": {"too_old": 2},
                            "dead_letter": {"rejected": 2, "missing_required_field": 1},
                            "dropped_fields": {},
                        }
                    },
                    "tracks": {
                        "Order Completed": {
                            "delivered": 0,
                            "skipped": {"duplicate": 3},
                            "dead_letter": {"rejected": 1},
                            "dropped_fields": {},
                        }
                    },
                }
            ),
        ),
        (
            "run-b",
            b - 100,
            b + 300,
            XSS_HOST,
            102,
            XSS_VERSION,
            3,
            9,
            2,
            0,
            1,
            1,
            5,
            2,
            1,
            _summary(
                {
                    "orders": {
                        "Order Completed": {
                            "delivered": 2,
                            "skipped": {},
                            "dead_letter": {"in_doubt": 1},  # b3, held for a person
                            "dropped_fields": {},
                        },
                        "Subscription Started": {
                            "delivered": 0,
                            "skipped": {},
                            "dead_letter": {"http_400": 1},
                            "dropped_fields": {},
                        },
                    },
                }
            ),
        ),
        (
            "run-c",
            c - 100,
            None,
            "host-1",
            103,
            "0.2.0",
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        ),
        (
            "run-old",
            day_start(100, now),
            day_start(100, now) + 5,
            "host-1",
            99,
            "0.0.9",
            0,
            1,
            1,
            0,
            0,
            0,
            1,
            0,
            0,
            _summary({"orders": {"Order Completed": {"dead_letter": {"rejected": 50}}}}),
        ),
    ]
    return ledger, runs


EXPECTED_TOTALS = {
    "total-delivered": 7,
    "total-amount-usd": 36.75,  # amounts per currency, never summed across currencies
    "total-amount-eur": 30.0,
    "total-amount-none": 7.0,
    "total-dead-lettered": 6,  # b3 (held) once: the run summary's dead letter (in_doubt)
    "total-in-doubt": 1,  # b4: left sending by a run that died
    "total-too-old": 2,
    "total-confirmed": 3,
    "total-rejected": 1,
    "total-not-found": 1,
    "total-rejected-age": 1,
}
EXPECTED_IN_DOUBT = ["b4", "b3"]
"""The needs-action list of in-doubt keys, latest first (b5, b6: live runs are sending them)."""
EXPECTED_REJECTED = [("tx-a3", "13")]


def expected_cells(now: float) -> dict[tuple[str, str], dict[str, t.Any]]:
    """(day, event) -> the numbers its table row shows (metrics not listed are 0)."""
    a, b, c = (day_name(n, now) for n in (2, 1, 0))
    return {
        (a, "Order Completed"): {
            "delivered": 3,
            "amounts": {"USD": "30.50", "EUR": "30.00"},
            "dead_lettered": 4,
            "too_old": 2,
            "confirmed": 2,
            "rejected": 1,
            "reasons": {"rejected": 3, "missing_required_field": 1},
        },
        (a, "Subscription Started"): {"delivered": 1, "amounts": {}, "unchecked": 1},
        (b, "Order Completed"): {
            "delivered": 2,
            "amounts": {"USD": "5.00", "(no currency)": "7.00"},
            "dead_lettered": 1,
            "in_doubt": 1,
            "not_found": 1,
            "pending": 1,
            "reasons": {"in_doubt": 1},
        },
        (b, "Subscription Started"): {
            "dead_lettered": 1,
            "amounts": {},
            "reasons": {"http_400": 1},
        },
        (c, XSS_EVENT): {"delivered": 1, "amounts": {"USD": "1.25"}, "confirmed": 1},
    }


EXPECTED_RUNS = ["run-c", "run-b", "run-a", "run-old"]
"""The run table, latest first."""


class KnownLedger(t.NamedTuple):
    url: str
    table: str
    now: float


def _statements(table: str, real: str) -> list[str]:
    return [
        f"CREATE TABLE {table} ({LEDGER_COLUMNS.format(real=real)})",
        f"CREATE TABLE {table}_runs ({RUNS_COLUMNS.format(real=real)})",
    ]


def build_sqlite(
    path: Path, *, table: str = "everflow_ledger", now: float | None = None
) -> KnownLedger:
    now = time.time() if now is None else now
    ledger_rows, run_rows = rows(now)
    con = sqlite3.connect(path)
    try:
        for stmt in _statements(table, "REAL"):
            con.execute(stmt)
        con.executemany(
            f"INSERT INTO {table} VALUES ({','.join('?' * 25)})",
            ledger_rows,
        )
        con.executemany(f"INSERT INTO {table}_runs VALUES ({','.join('?' * 16)})", run_rows)
        con.commit()
    finally:
        con.close()
    suffix = "" if table == "everflow_ledger" else f"?table={table}"
    return KnownLedger(f"sqlite:///{path}{suffix}", table, now)


def build_postgres(base_url: str, *, now: float | None = None) -> KnownLedger:
    import psycopg2

    now = time.time() if now is None else now
    table = f"rep_{uuid.uuid4().hex[:10]}"
    ledger_rows, run_rows = rows(now)
    con = psycopg2.connect(base_url)
    try:
        with con, con.cursor() as cur:
            for stmt in _statements(table, "DOUBLE PRECISION"):
                cur.execute(stmt)
            cur.executemany(
                f"INSERT INTO {table} VALUES ({','.join(['%s'] * 25)})",
                ledger_rows,
            )
            cur.executemany(f"INSERT INTO {table}_runs VALUES ({','.join(['%s'] * 16)})", run_rows)
    finally:
        con.close()
    return KnownLedger(f"{base_url}?table={table}", table, now)


def drop_postgres(base_url: str, table: str) -> None:
    import psycopg2

    con = psycopg2.connect(base_url)
    try:
        with con, con.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}_runs")
            cur.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        con.close()
