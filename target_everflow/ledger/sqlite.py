"""The SQLite ledger: a local file (WAL), shared by the processes of one machine."""

from __future__ import annotations

import json
import logging
import pathlib
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

from target_everflow.ledger.backend import Identity, checked_table, checked_timeout
from target_everflow.ledger.base import DEFAULT_TABLE, METADATA_COLUMNS, LedgerError
from target_everflow.ledger.sql import SQLLedger
from target_everflow.ledger.urls import error_text


class SQLiteBackend:
    """The :class:`~target_everflow.ledger.backend.Backend` of a local SQLite file (WAL)."""

    _IN_KEYS = "IN (SELECT value FROM json_each(?))"
    _OWNER = "+owner"
    """The unary plus keeps SQLite's planner off the partial index on ``owner`` (which it
    prefers, without statistics, to the keys' primary-key lookups): a statement on a few keys
    of this run would otherwise step through every claim the run holds (a batch: thousands)."""
    dialect = "sqlite"
    real_type = "REAL"

    def __init__(self, path: pathlib.Path, *, table: str, timeout: float | None) -> None:
        self.path = pathlib.Path(path).expanduser().absolute()
        self.description = f"sqlite:///{self.path}"
        self.timeout = checked_timeout(timeout)
        self.table = checked_table(self.description, table)
        self.conn: Any = None

    @property
    def connected(self) -> bool:
        return self.conn is not None

    def connect(self, log: logging.Logger) -> None:
        if sqlite3.sqlite_version_info < (3, 35, 0):
            raise LedgerError(
                f"SQLite {sqlite3.sqlite_version} is too old (3.35+ needed for RETURNING)"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection, used by the I/O thread only. isolation_level=None: we issue BEGIN
        # IMMEDIATE ourselves (the write lock is taken up front, so concurrent processes
        # serialise instead of failing on lock upgrade). timeout: SQLite's busy wait for
        # another process's transaction, ledger_timeout seconds (then "database is locked").
        self.conn = sqlite3.connect(
            str(self.path), timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        mode = str(self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
        if mode != "wal":
            log.warning("ledger %s: WAL mode unavailable (journal_mode=%s)", self.description, mode)
        # synchronous=FULL, not NORMAL: in WAL mode NORMAL survives a process crash but may lose
        # the last commits on power loss / OS crash. A lost "delivered" commit would turn into
        # an in-doubt key (and, with in_doubt=resend, a duplicate conversion), so every commit
        # is fsynced. The cost is one fsync per transaction, which batch claims and the group
        # commit of marks keep to a few per batch.
        self.conn.execute("PRAGMA synchronous=FULL")

    def column_names(self, cur: Any, table: str | None = None) -> set[str]:
        cur.execute(f"PRAGMA table_info({table or self.table})")
        return {str(r[1]).lower() for r in cur.fetchall()}

    def lock_for_ddl(self, cur: Any, name: str) -> None:
        """Nothing to do: BEGIN IMMEDIATE already serialises."""

    def write_metadata(
        self, cur: Any, who: Identity, rows: list[tuple[str, Mapping[str, Any]]]
    ) -> None:
        sets = ", ".join(f"{c} = ?" for c in METADATA_COLUMNS)
        cur.executemany(  # one prepared statement, in process
            f"UPDATE {self.table} SET {sets} WHERE delivery_key = ? AND owner = ?",
            [(*(m.get(c) for c in METADATA_COLUMNS), k, who.owner) for k, m in rows],
        )

    def lock_timed_out(self, exc: BaseException) -> bool:
        return False  # (the busy wait ends in "database is locked": see describe_error)

    def retryable(self, exc: BaseException) -> bool:
        return False

    def describe_error(self, exc: BaseException) -> str:
        text = error_text(exc)
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower():
            return (
                f"waited {self.timeout:g} s (ledger_timeout) for another process to release "
                f"its lock on the SQLite file {self.path}: {text}"
            )
        return text

    def begin(self) -> Any:
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        return cur

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn is not None and self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    def now(self, cur: Any) -> float:
        return time.time()

    def sql(self, text: str) -> str:
        return text.format(t=self.table, in_keys=self._IN_KEYS, owner=self._OWNER)

    def keys_param(self, keys: Sequence[str]) -> Any:
        return json.dumps(list(keys))

    def insert_claims(
        self, cur: Any, who: Identity, keys: list[str], now: float, lease_until: float
    ) -> set[str]:
        # "WHERE true" resolves SQLite's INSERT ... SELECT ... ON CONFLICT parsing ambiguity.
        cur.execute(
            f"INSERT INTO {self.table} (delivery_key, status, owner, owner_scope, lease_until,"
            " created_at, updated_at)"
            " SELECT value, 'pending', ?, ?, ?, ?, ? FROM json_each(?) WHERE true"
            " ON CONFLICT (delivery_key) DO NOTHING RETURNING delivery_key",
            (who.owner, who.scope, lease_until, now, now, json.dumps(keys)),
        )
        return {r[0] for r in cur.fetchall()}

    def upsert_delivered(
        self, cur: Any, who: Identity, marks: list[tuple[str, int]], now: float
    ) -> None:
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
            (who.owner, who.scope, now, now, now, json.dumps(marks)),
        )


class SQLiteLedger(SQLLedger):
    """A ledger in a local SQLite file (WAL). Several processes on one machine may share it."""

    backend: SQLiteBackend

    def __init__(
        self,
        path: pathlib.Path,
        *,
        table: str = DEFAULT_TABLE,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(SQLiteBackend(path, table=table, timeout=timeout), **kwargs)

    @property
    def path(self) -> pathlib.Path:
        """The SQLite file."""
        return self.backend.path
