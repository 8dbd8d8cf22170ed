"""The ledger upgrades in place: a ledger written by release 0.1.0 gains the columns of issue 13
(what was sent, and Everflow's verdict) when it is opened, with nothing lost, and 0.1.0 keeps
working on the upgraded table. The conversion's metadata is written at claim time.

``tests/fixtures/ledger_v0_1_0.sqlite3`` was written by 0.1.0's own code (see
``tests/fixtures/make_ledger_v0_1_0.py``). For PostgreSQL the 0.1.0 table is created with 0.1.0's
DDL, copied below with 0.1.0's statements, as an older process would run them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from target_everflow.ledger import ADDED_COLUMNS, ClaimStatus, LedgerError, open_ledger
from tests.conftest import postgres_url, run_in_process, singer_lines, track
from tests.receiver import Receiver

FIXTURE = Path(__file__).parent / "fixtures" / "ledger_v0_1_0.sqlite3"
OLD_COLUMNS = [
    "delivery_key", "status", "owner", "owner_scope", "lease_until", "http_status", "created_at",
    "updated_at",
]  # fmt: skip
NEW_COLUMNS = [name for name, _ in ADDED_COLUMNS]

# --- release 0.1.0's SQL, verbatim (an older process still runs exactly this) ---------------

V010_DDL = """CREATE TABLE IF NOT EXISTS {t} (
            delivery_key TEXT PRIMARY KEY,
            status TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'delivered', 'in_doubt')),
            owner TEXT NOT NULL,
            owner_scope TEXT NOT NULL DEFAULT '',
            lease_until {real},
            http_status INTEGER,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL
        )"""
V010_SQLITE_CLAIM = (
    "INSERT INTO {t} (delivery_key, status, owner, owner_scope, lease_until,"
    " created_at, updated_at)"
    " SELECT value, 'pending', ?, ?, ?, ?, ? FROM json_each(?) WHERE true"
    " ON CONFLICT (delivery_key) DO NOTHING RETURNING delivery_key"
)
V010_SQLITE_DELIVERED = (
    "INSERT INTO {t} (delivery_key, status, owner, owner_scope, lease_until,"
    " http_status, created_at, updated_at)"
    " SELECT json_extract(value, '$[0]'), 'delivered', ?, ?, NULL,"
    " json_extract(value, '$[1]'), ?, ? FROM json_each(?) WHERE true"
    " ON CONFLICT (delivery_key) DO UPDATE SET status = 'delivered',"
    " owner = excluded.owner, owner_scope = excluded.owner_scope, lease_until = NULL,"
    " http_status = excluded.http_status, updated_at = excluded.updated_at"
    " WHERE {t}.status <> 'delivered'"
)
V010_PG_CLAIM = (
    "INSERT INTO {t} (delivery_key, status, owner, owner_scope, lease_until,"
    " created_at, updated_at)"
    " SELECT u.k, 'pending', %s, %s, %s, %s, %s"
    " FROM unnest(%s::text[]) WITH ORDINALITY AS u(k, i) ORDER BY u.i"
    " ON CONFLICT (delivery_key) DO NOTHING RETURNING delivery_key"
)
V010_PG_DELIVERED = (
    "INSERT INTO {t} (delivery_key, status, owner, owner_scope, lease_until,"
    " http_status, created_at, updated_at)"
    " SELECT u.k, 'delivered', %s, %s, NULL, u.h, %s, %s"
    " FROM unnest(%s::text[], %s::int[]) WITH ORDINALITY AS u(k, h, i) ORDER BY u.i"
    " ON CONFLICT (delivery_key) DO UPDATE SET status = 'delivered',"
    " owner = EXCLUDED.owner, owner_scope = EXCLUDED.owner_scope, lease_until = NULL,"
    " http_status = EXCLUDED.http_status, updated_at = EXCLUDED.updated_at"
    " WHERE {t}.status <> 'delivered'"
)
V010_HELD = (
    "UPDATE {t} SET status = 'in_doubt', lease_until = NULL, updated_at = ?"
    " WHERE delivery_key = ? AND status IN ('pending', 'sending') AND owner = ?"
)


def _open(url: str, tmp_path: Path, **kw: Any) -> Any:
    return open_ledger(url, default_dir=tmp_path, lease_seconds=30, retention_days=400, **kw)


def _sqlite_rows(path: Path, columns: list[str]) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute(
            f"SELECT {', '.join(columns)} FROM everflow_ledger ORDER BY delivery_key"
        ).fetchall()
    finally:
        con.close()


def _sqlite_columns(path: Path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return [r[1] for r in con.execute("PRAGMA table_info(everflow_ledger)")]
    finally:
        con.close()


# --- SQLite: the file 0.1.0 wrote --------------------------------------------------------------


def test_the_fixture_is_a_0_1_0_ledger() -> None:
    assert _sqlite_columns(FIXTURE) == OLD_COLUMNS
    statuses = [r[1] for r in _sqlite_rows(FIXTURE, ["delivery_key", "status"])]
    assert statuses == ["delivered", "delivered", "in_doubt", "pending", "sending"]


def test_a_0_1_0_sqlite_ledger_upgrades_in_place_with_nothing_lost(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    shutil.copy(FIXTURE, path)
    before = _sqlite_rows(path, OLD_COLUMNS)

    ledger = _open(f"sqlite:///{path}", tmp_path)
    try:
        assert _sqlite_columns(path) == OLD_COLUMNS + NEW_COLUMNS
        assert _sqlite_rows(path, OLD_COLUMNS) == before  # not one value changed
        assert all(v is None for row in _sqlite_rows(path, NEW_COLUMNS) for v in row)
        # The upgraded ledger still knows what 0.1.0 recorded.
        answers = ledger.claim(["msg-delivered-1", "msg-held-1", "msg-sending-1", "new"])
        assert answers == {
            "msg-delivered-1": ClaimStatus.DELIVERED,
            "msg-held-1": ClaimStatus.HELD,
            "msg-sending-1": ClaimStatus.TAKEN_OVER,  # 0.1.0's lease expired long ago
            "new": ClaimStatus.CLAIMED,
        }
    finally:
        ledger.close()

    # Opening again changes nothing (idempotent), and an old run's statements still work.
    _open(f"sqlite:///{path}", tmp_path).close()
    assert _sqlite_columns(path) == OLD_COLUMNS + NEW_COLUMNS
    con = sqlite3.connect(path, isolation_level=None)
    try:
        now = time.time()
        t = "everflow_ledger"
        got = con.execute(
            V010_SQLITE_CLAIM.format(t=t),
            ("old:1:x", "", now + 60, now, now, '["o1", "o2", "new"]'),
        ).fetchall()
        assert sorted(r[0] for r in got) == ["o1", "o2"]  # "new" is taken
        con.execute(V010_SQLITE_DELIVERED.format(t=t), ("old:1:x", "", now, now, '[["o1", 200]]'))
        con.execute(V010_HELD.format(t=t), (now, "o2", "old:1:x"))
        rows = dict(con.execute(f"SELECT delivery_key, status FROM {t}").fetchall())
    finally:
        con.close()
    assert rows["o1"] == "delivered" and rows["o2"] == "in_doubt"
    with contextlib.closing(_open(f"sqlite:///{path}", tmp_path)) as again:
        assert again.claim(["o1", "o2"]) == {"o1": ClaimStatus.DELIVERED, "o2": ClaimStatus.HELD}


def test_the_upgrade_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ledger.sqlite3"
    shutil.copy(FIXTURE, path)
    caplog.set_level("INFO")
    _open(f"sqlite:///{path}", tmp_path).close()
    _open(f"sqlite:///{path}", tmp_path).close()
    upgraded = [m for m in caplog.messages if "upgraded in place" in m]
    assert len(upgraded) == 1 and "transaction_id" in upgraded[0]


def test_a_new_ledger_is_created_whole_not_upgraded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A brand-new table has every column from the start: nothing is "upgraded in place"."""
    path = tmp_path / "new.sqlite3"
    caplog.set_level("INFO")
    _open(f"sqlite:///{path}", tmp_path).close()
    assert _sqlite_columns(path) == OLD_COLUMNS + NEW_COLUMNS
    assert not [m for m in caplog.messages if "upgraded" in m], caplog.messages


# --- PostgreSQL: a table 0.1.0 created -----------------------------------------------------------


@pytest.fixture
def pg_table() -> Iterator[tuple[str, str]]:
    """(ledger URL, table) of a fresh table created and filled the way 0.1.0 does it."""
    import psycopg2

    base = postgres_url()
    table = f"tup_{uuid.uuid4().hex[:12]}"
    con = psycopg2.connect(base)
    con.autocommit = True
    now = time.time()
    with con.cursor() as cur:
        cur.execute(V010_DDL.format(t=table, real="DOUBLE PRECISION"))
        cur.execute(
            V010_PG_CLAIM.format(t=table),
            ("old:1:x", "", now - 1, now, now, ["d1", "d2", "h1", "p1"]),
        )
        cur.execute(
            V010_PG_DELIVERED.format(t=table), ("old:1:x", "", now, now, ["d1", "d2"], [200, 200])
        )
        cur.execute(V010_HELD.format(t=table).replace("?", "%s"), (now, "h1", "old:1:x"))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}table={table}", table
    finally:
        with con.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        con.close()


def _pg(sql: str, params: tuple = ()) -> list[tuple]:
    import psycopg2

    con = psycopg2.connect(postgres_url())
    con.autocommit = True
    try:
        with con.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        con.close()


def _pg_columns(table: str) -> list[str]:
    return [
        r[0]
        for r in _pg(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0"
            " AND NOT attisdropped ORDER BY attnum",
            (table,),
        )
    ]


@pytest.mark.postgres
def test_a_0_1_0_postgres_ledger_upgrades_in_place_with_nothing_lost(
    pg_table: tuple[str, str], tmp_path: Path
) -> None:
    url, table = pg_table
    before = _pg(f"SELECT {', '.join(OLD_COLUMNS)} FROM {table} ORDER BY delivery_key")
    ledger = _open(url, tmp_path)
    try:
        assert _pg_columns(table) == OLD_COLUMNS + NEW_COLUMNS
        assert _pg(f"SELECT {', '.join(OLD_COLUMNS)} FROM {table} ORDER BY delivery_key") == before
        assert ledger.claim(["d1", "h1", "p1"]) == {
            "d1": ClaimStatus.DELIVERED, "h1": ClaimStatus.HELD, "p1": ClaimStatus.CLAIMED,
        }  # fmt: skip
    finally:
        ledger.close()
    _open(url, tmp_path).close()
    assert _pg_columns(table) == OLD_COLUMNS + NEW_COLUMNS
    # 0.1.0's statements on the upgraded table
    now = time.time()
    got = _pg(V010_PG_CLAIM.format(t=table), ("old:2:y", "", now + 60, now, now, ["o1", "d1"]))
    assert got == [("o1",)]
    _pg(V010_PG_DELIVERED.format(t=table), ("old:2:y", "", now, now, ["o1"], [200]))
    assert _pg(f"SELECT status FROM {table} WHERE delivery_key = 'o1'") == [("delivered",)]


@pytest.mark.postgres
def test_the_postgres_upgrade_gives_up_on_a_held_lock_with_one_line(
    pg_table: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg2

    url, table = pg_table
    holder = psycopg2.connect(postgres_url())  # an old run in the middle of a transaction
    try:
        with holder.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")  # holds ACCESS SHARE until rollback
        started = time.monotonic()
        with pytest.raises(LedgerError) as info:
            _open(url, tmp_path, timeout=0.5)  # ledger_timeout: the lock timeout of every statement
        assert time.monotonic() - started < 30  # bounded (0.5 s asked for)
    finally:
        holder.rollback()
        holder.close()
    message = str(info.value)
    assert "\n" not in message
    assert f"could not upgrade the ledger table {table} in place" in message
    assert "kept it locked for more than 0.5 s (ledger_timeout)" in message
    assert "postgres:postgres@" not in message  # the password stays masked
    assert _pg_columns(table) == OLD_COLUMNS  # nothing half-done
    # Once the lock is gone the upgrade goes through.
    _open(url, tmp_path).close()
    assert _pg_columns(table) == OLD_COLUMNS + NEW_COLUMNS


# --- what the ledger now remembers ----------------------------------------------------------


META = [
    "stream",
    "event",
    "transaction_id",
    "message_id",
    "adv_event_id",
    "order_id",
    "amount",
    "event_time",
]


def test_a_delivery_writes_what_was_sent_at_claim_and_sent_at_when_delivered(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite3"
    sub = track(2, event="Subscription Started", total=None)
    del sub["properties"]["orderId"]
    sub["properties"].pop("total")
    records = [track(1), sub]
    with Receiver() as rx:
        config = {
            "postback_url": rx.url, "network_id": 1, "advertiser_id": 7,
            "event_mapping": {"Order Completed": 0, "Subscription Started": 24},
            "ledger_url": f"sqlite:///{path}", "dead_letter_path": str(tmp_path / "dl.jsonl"),
            "progress_interval": 0,
        }  # fmt: skip
        before = time.time()
        code, _ = run_in_process(config, singer_lines("orders", records))
        after = time.time()
    assert code == 0
    rows = {
        r[0]: r[1:] for r in _sqlite_rows(path, ["delivery_key", *META, "sent_at", "recon_status"])
    }
    event_time = 1795198448.0  # 2026-11-20T18:14:08.612Z
    assert rows["m:msg-1"][:-2] == (
        "orders",
        "Order Completed",
        "tx-1",
        "msg-1",
        0,
        "1001",
        11.0,
        event_time,
    )
    assert rows["m:msg-2"][:-2] == (
        "orders",
        "Subscription Started",
        "tx-2",
        "msg-2",
        24,
        None,
        None,
        event_time,
    )
    for key in ("m:msg-1", "m:msg-2"):
        assert before <= rows[key][-2] <= after  # sent_at
        assert rows[key][-1] is None  # unchecked


def test_held_and_in_doubt_keys_have_their_metadata(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    with contextlib.closing(_open(url, tmp_path)) as a:
        a.claim(["k1", "k2"], {"k1": {"transaction_id": "tx-1", "event": "E", "adv_event_id": 0}})
        a.mark_sending("k2")
        a._owner_is_dead = lambda owner, scope: True
    b = _open(url, tmp_path)
    b._owner_is_dead = lambda owner, scope: owner != b.owner  # a's process is gone
    try:
        meta = {"k2": {"stream": "s", "event": "Order Completed", "transaction_id": "tx-2",
                       "message_id": None, "adv_event_id": 24, "order_id": "7", "amount": 9.5,
                       "event_time": 1.0}}  # fmt: skip
        assert b.claim(["k2"], meta) == {"k2": ClaimStatus.TAKEN_OVER}
        b.mark_held(["k2"])
    finally:
        b.close()
    rows = {
        r[0]: r[1:]
        for r in _sqlite_rows(tmp_path / "l.db", ["delivery_key", "status", *META, "sent_at"])
    }
    assert rows["k1"][:4] == ("pending", None, "E", "tx-1")
    assert rows["k2"] == ("in_doubt", "s", "Order Completed", "tx-2", None, 24, "7", 9.5, 1.0, None)


@pytest.mark.postgres
def test_postgres_writes_the_metadata_too(tmp_path: Path) -> None:
    base = postgres_url()
    table = f"tmeta_{uuid.uuid4().hex[:12]}"
    url = f"{base}{'&' if '?' in base else '?'}table={table}"
    try:
        with contextlib.closing(_open(url, tmp_path)) as ledger:
            meta = {"k": {"stream": "s", "event": "Order Completed", "transaction_id": "tx",
                          "message_id": "m", "adv_event_id": 0, "order_id": None, "amount": 12.25,
                          "event_time": 1795198448.0}}  # fmt: skip
            assert ledger.claim(["k", "bare"], meta) == {
                "k": ClaimStatus.CLAIMED,
                "bare": ClaimStatus.CLAIMED,
            }
            ledger.mark_delivered("k", 200)
            ledger.flush()
        rows = _pg(
            f"SELECT delivery_key, {', '.join(META)}, sent_at IS NOT NULL FROM {table} ORDER BY 1"
        )
        assert rows == [
            ("bare", None, None, None, None, None, None, None, None, False),
            ("k", "s", "Order Completed", "tx", "m", 0, None, 12.25, 1795198448.0, True),
        ]
    finally:
        _pg(f"DROP TABLE IF EXISTS {table}")


def test_a_fresh_ledger_has_every_column(tmp_path: Path) -> None:
    _open(f"sqlite:///{tmp_path / 'fresh.db'}", tmp_path).close()
    con = sqlite3.connect(tmp_path / "fresh.db")
    try:
        columns = [r[1] for r in con.execute("PRAGMA table_info(everflow_ledger)")]
    finally:
        con.close()
    assert columns == OLD_COLUMNS + NEW_COLUMNS
    assert os.path.exists(tmp_path / "fresh.db")


@pytest.mark.postgres
def test_record_text_postgres_cannot_store_is_escaped_not_fatal(tmp_path: Path) -> None:
    """A NUL or a lone surrogate in a transaction id or message id (PostgreSQL text refuses
    both) is kept escaped; the conversion is delivered all the same."""
    base = postgres_url()
    table = f"tnul_{uuid.uuid4().hex[:12]}"
    record = track(1, tid="tx\x00nul")
    record["messageId"] = "msg-\ud800-1"
    try:
        with Receiver() as rx:
            config = {
                "postback_url": rx.url, "network_id": 1, "progress_interval": 0,
                "ledger_url": f"{base}{'&' if '?' in base else '?'}table={table}",
                "dead_letter_path": str(tmp_path / "dl.jsonl"),
            }  # fmt: skip
            code, _ = run_in_process(config, singer_lines("orders", [record]))
            assert code == 0 and len(rx.accepted) == 1
        rows = _pg(f"SELECT status, transaction_id, message_id FROM {table}")
        assert rows == [("delivered", "tx\\x00nul", "msg-\\ud800-1")]
    finally:
        _pg(f"DROP TABLE IF EXISTS {table}")
