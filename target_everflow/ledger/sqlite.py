"""The SQLite ledger: a local file (WAL), shared by the processes of one machine."""

from __future__ import annotations

import json
import pathlib
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

from target_everflow.ledger.base import DEFAULT_TABLE, METADATA_COLUMNS, LedgerError
from target_everflow.ledger.sql import SQLLedger
from target_everflow.ledger.urls import error_text


class SQLiteLedger(SQLLedger):
    """A ledger in a local SQLite file (WAL). Several processes on one machine may share it."""

    _IN_KEYS = "IN (SELECT value FROM json_each(?))"
    dialect = "sqlite"
    real_type = "REAL"

    def __init__(self, path: pathlib.Path, *, table: str = DEFAULT_TABLE, **kwargs: Any) -> None:
        self.path = pathlib.Path(path).expanduser().absolute()
        super().__init__(description=f"sqlite:///{self.path}", table=table, **kwargs)

    def _connect(self) -> None:
        if sqlite3.sqlite_version_info < (3, 35, 0):
            raise LedgerError(
                f"SQLite {sqlite3.sqlite_version} is too old (3.35+ needed for RETURNING)"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection, used by the I/O thread only. isolation_level=None: we issue BEGIN
        # IMMEDIATE ourselves (the write lock is taken up front, so concurrent processes
        # serialise instead of failing on lock upgrade). timeout: SQLite's busy wait for
        # another process's transaction, ledger_timeout seconds (then "database is locked").
        self._conn = sqlite3.connect(
            str(self.path), timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        mode = str(self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
        if mode != "wal":
            self.log.warning(
                "ledger %s: WAL mode unavailable (journal_mode=%s)", self.description, mode
            )
        # synchronous=FULL, not NORMAL: in WAL mode NORMAL survives a process crash but may lose
        # the last commits on power loss / OS crash. A lost "delivered" commit would turn into
        # an in-doubt key (and, with in_doubt=resend, a duplicate conversion), so every commit
        # is fsynced. The cost is one fsync per transaction, which batch claims and the group
        # commit of marks keep to a few per batch.
        self._conn.execute("PRAGMA synchronous=FULL")

    def column_names(self, cur: Any, table: str | None = None) -> set[str]:
        cur.execute(f"PRAGMA table_info({table or self.table})")
        return {str(r[1]).lower() for r in cur.fetchall()}

    def _write_metadata(self, cur: Any, rows: list[tuple[str, Mapping[str, Any]]]) -> None:
        sets = ", ".join(f"{c} = ?" for c in METADATA_COLUMNS)
        cur.executemany(  # one prepared statement, in process
            f"UPDATE {self.table} SET {sets} WHERE delivery_key = ? AND owner = ?",
            [(*(m.get(c) for c in METADATA_COLUMNS), k, self.owner) for k, m in rows],
        )

    def _describe_error(self, exc: BaseException) -> str:
        text = error_text(exc)
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower():
            return (
                f"waited {self.timeout:g} s (ledger_timeout) for another process to release "
                f"its lock on the SQLite file {self.path}: {text}"
            )
        return text

    def _begin(self) -> Any:
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        return cur

    def _commit(self) -> None:
        self._conn.execute("COMMIT")

    def _rollback(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def now(self, cur: Any) -> float:
        return time.time()

    def sql(self, sql: str) -> str:
        return sql.format(t=self.table, in_keys=self._IN_KEYS)

    def keys_param(self, keys: Sequence[str]) -> Any:
        return json.dumps(list(keys))

    def _insert_claims(self, cur: Any, keys: list[str], now: float, lease_until: float) -> set[str]:
        # "WHERE true" resolves SQLite's INSERT ... SELECT ... ON CONFLICT parsing ambiguity.
        cur.execute(
            f"INSERT INTO {self.table} (delivery_key, status, owner, owner_scope, lease_until,"
            " created_at, updated_at)"
            " SELECT value, 'pending', ?, ?, ?, ?, ? FROM json_each(?) WHERE true"
            " ON CONFLICT (delivery_key) DO NOTHING RETURNING delivery_key",
            (self.owner, self.scope, lease_until, now, now, json.dumps(keys)),
        )
        return {r[0] for r in cur.fetchall()}

    def _upsert_delivered(self, cur: Any, marks: list[tuple[str, int]], now: float) -> None:
        # One statement for the batch (a JSON array of [key, http_status] pairs).
        t = self.table
        cur.execute(
            f"INSERT INTO {t} (delivery_key, status, owner, owner_scope, lease_until,"
            " http_status, created_at, updated_at, sent_at)"
            " SELECT json_extract(value, '$[0]'), 'delivered', ?, ?, NULL,"
            " json_extract(value, '$[1]'), ?, ?, ? FROM json_each(?) WHERE true"
            " ON CONFLICT (delivery_key) DO UPDATE SET status = 'delivered',"
            " owner = excluded.owner, owner_scope = excluded.owner_scope, lease_until = NULL,"
            " http_status = excluded.http_status, updated_at = excluded.updated_at,"
            f" sent_at = COALESCE({t}.sent_at, excluded.sent_at)"
            f" WHERE {t}.status <> 'delivered'",
            (self.owner, self.scope, now, now, now, json.dumps(marks)),
        )
