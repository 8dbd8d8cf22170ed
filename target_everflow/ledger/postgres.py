"""The PostgreSQL ledger: one table shared by any number of processes and machines."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from target_everflow.ledger.backend import Identity, checked_table, checked_timeout
from target_everflow.ledger.base import METADATA_COLUMNS, PSYCOPG2_MISSING, LedgerError
from target_everflow.ledger.sql import SQLLedger
from target_everflow.ledger.urls import HIDDEN_URL, error_text, pg_params, redact_url, url_secrets
from target_everflow.masking import mask

LOCK_NOT_AVAILABLE = "55P03"
"""SQLSTATE of a lock wait that ran into ``lock_timeout``."""
RETRYABLE = ("40P01", "40001")
"""SQLSTATEs of a transaction rolled back by the server and worth running again:
deadlock_detected, serialization_failure."""


class PostgresBackend:
    """The :class:`~target_everflow.ledger.backend.Backend` of a PostgreSQL database."""

    _IN_KEYS = "= ANY(%s)"
    dialect = "postgresql"
    real_type = "DOUBLE PRECISION"

    def __init__(self, url: str, *, table: str | None, timeout: float | None) -> None:
        """``url``: a ``postgresql://`` URL or a libpq keyword/value connection string."""
        self.description = redact_url(url)
        self._params, url_table = pg_params(url)
        self._secrets = url_secrets(url)
        # When the URL cannot be shown, nothing the driver says about it can be either.
        self._hide_driver_text = self.description == HIDDEN_URL
        self.timeout = checked_timeout(timeout)
        self.table = checked_table(self.description, table or url_table)
        self.conn: Any = None

    @property
    def connected(self) -> bool:
        return self.conn is not None

    def describe_error(self, exc: BaseException) -> str:
        code = getattr(exc, "pgcode", None)
        if self._hide_driver_text:
            text = type(exc).__name__ + (f" (SQLSTATE {code})" if code else "")
        else:
            text = mask(error_text(exc), self._secrets)
        if code == LOCK_NOT_AVAILABLE:
            return (
                f"gave up after {self.timeout:g} s (lock_timeout) waiting for a lock on the "
                f"ledger table {self.table} that another connection holds (an open "
                f"transaction, e.g. a DELETE in psql not yet committed?): {text}"
            )
        if code == "57014":  # query_canceled: our statement_timeout
            return (
                f"a ledger statement ran longer than {self.timeout + 1:g} s "
                f"(statement_timeout): {text}"
            )
        if code == "25P03":  # idle_in_transaction_session_timeout: this process was stalled
            return (
                f"the server ended this run's ledger session (it stalled mid-transaction): {text}"
            )
        if "timeout expired" in text:
            return f"could not connect within {self._connect_timeout()} s (connect_timeout): {text}"
        return text

    def _connect_timeout(self) -> str:
        return self._params.get("connect_timeout") or str(max(2, math.ceil(self.timeout)))

    def connect(self, log: logging.Logger) -> None:
        try:
            import psycopg2  # optional: only a PostgreSQL ledger needs it
        except ImportError:
            raise LedgerError(PSYCOPG2_MISSING) from None
        timeout = self.timeout
        params: dict[str, Any] = {
            "application_name": "target-everflow ledger",
            "connect_timeout": self._connect_timeout(),
            # A peer that vanished (host down, NAT state dropped) is noticed within about
            # ledger_timeout: keepalives while idle, tcp_user_timeout while data is unacknowledged.
            "keepalives": "1",
            "keepalives_idle": str(max(1, int(timeout // 3))),
            "keepalives_interval": str(max(1, int(timeout // 6))),
            "keepalives_count": "3",
            "tcp_user_timeout": str(int(timeout * 1000)),
            **self._params,
        }
        self.conn = psycopg2.connect(**params)
        # Server-side bounds for every statement of this session. idle_in_transaction: if this
        # process stalls inside a transaction (SIGSTOP, a suspended VM), the server ends the
        # session and its row locks do not block every other run.
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT set_config('lock_timeout', %s, false),"
                " set_config('statement_timeout', %s, false),"
                " set_config('idle_in_transaction_session_timeout', %s, false)",
                (
                    f"{int(timeout * 1000)}ms",
                    f"{int((timeout + 1) * 1000)}ms",
                    f"{int(max(2 * timeout, 10) * 1000)}ms",
                ),
            )
        self.conn.commit()

    def lock_for_ddl(self, cur: Any, name: str) -> None:
        # Concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog; serialise it.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (name,))

    def column_names(self, cur: Any, table: str | None = None) -> set[str]:
        cur.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s)"
            " AND attnum > 0 AND NOT attisdropped",
            (table or self.table,),
        )
        return {str(r[0]).lower() for r in cur.fetchall()}

    def lock_timed_out(self, exc: BaseException) -> bool:
        return getattr(exc, "pgcode", None) == LOCK_NOT_AVAILABLE

    def write_metadata(
        self, cur: Any, who: Identity, rows: list[tuple[str, Mapping[str, Any]]]
    ) -> None:
        types = {"adv_event_id": "integer", "amount": "double precision",
                 "event_time": "double precision"}  # fmt: skip
        record = ", ".join(f"{c} {types.get(c, 'text')}" for c in METADATA_COLUMNS)
        sets = ", ".join(f"{c} = m.{c}" for c in METADATA_COLUMNS)
        cur.execute(
            f"UPDATE {self.table} AS l SET {sets}"
            f" FROM json_to_recordset(%s::json) AS m(key text, {record})"
            " WHERE l.delivery_key = m.key AND l.owner = %s",
            (json.dumps([{**m, "key": k} for k, m in rows]), who.owner),
        )

    def retryable(self, exc: BaseException) -> bool:
        return getattr(exc, "pgcode", None) in RETRYABLE

    def begin(self) -> Any:
        return self.conn.cursor()  # psycopg2 opens the transaction on the first statement

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.rollback()

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.closed:
            conn.close()

    def now(self, cur: Any) -> float:
        cur.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8")
        return float(cur.fetchone()[0])

    def sql(self, text: str) -> str:
        return text.replace("?", "%s").format(t=self.table, in_keys=self._IN_KEYS, owner="owner")

    def keys_param(self, keys: Sequence[str]) -> Any:
        return list(keys)

    def insert_claims(
        self, cur: Any, who: Identity, keys: list[str], now: float, lease_until: float
    ) -> set[str]:
        # WITH ORDINALITY ... ORDER BY: rows are inserted (and locked) in the sorted key order.
        cur.execute(
            f"INSERT INTO {self.table} (delivery_key, status, owner, owner_scope, lease_until,"
            " created_at, updated_at)"
            " SELECT u.k, 'pending', %s, %s, %s, %s, %s"
            " FROM unnest(%s::text[]) WITH ORDINALITY AS u(k, i) ORDER BY u.i"
            " ON CONFLICT (delivery_key) DO NOTHING RETURNING delivery_key",
            (who.owner, who.scope, lease_until, now, now, keys),
        )
        return {r[0] for r in cur.fetchall()}

    def upsert_delivered(
        self, cur: Any, who: Identity, marks: list[tuple[str, int]], now: float
    ) -> None:
        # One statement per batch. ON CONFLICT DO UPDATE may touch a row only once per
        # statement, so duplicates are collapsed (last mark wins); sorted to lock in key order.
        latest = dict(marks)
        keys = sorted(latest)
        t = self.table
        cur.execute(
            f"INSERT INTO {t} (delivery_key, status, owner, owner_scope, lease_until,"
            " http_status, created_at, updated_at, sent_at)"
            " SELECT u.k, 'delivered', %s, %s, NULL, u.h, %s, %s, %s"
            " FROM unnest(%s::text[], %s::int[]) WITH ORDINALITY AS u(k, h, i) ORDER BY u.i"
            " ON CONFLICT (delivery_key) DO UPDATE SET status = 'delivered',"
            " owner = EXCLUDED.owner, owner_scope = EXCLUDED.owner_scope, lease_until = NULL,"
            " http_status = EXCLUDED.http_status, updated_at = EXCLUDED.updated_at,"
            f" sent_at = COALESCE({t}.sent_at, EXCLUDED.sent_at)"
            f" WHERE {t}.status <> 'delivered'",
            (who.owner, who.scope, now, now, now, keys, [latest[k] for k in keys]),
        )


class PostgresLedger(SQLLedger):
    """A ledger in a PostgreSQL table, shared by any number of processes and machines."""

    backend: PostgresBackend

    def __init__(
        self, url: str, *, table: str | None = None, timeout: float | None = None, **kwargs: Any
    ) -> None:
        """``url``: a ``postgresql://`` URL or a libpq keyword/value connection string."""
        super().__init__(PostgresBackend(url, table=table, timeout=timeout), **kwargs)
