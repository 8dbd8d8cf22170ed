"""The ledger table's schema: created when missing, upgraded in place (columns only added)."""

from __future__ import annotations

import logging
from typing import Any

from target_everflow.ledger.backend import Backend
from target_everflow.ledger.base import LedgerError

# Columns added after release 0.1.0, all nullable, added in place when a ledger is opened (an
# older release keeps working on an upgraded table: it never names them). "{real}" is the
# backend's floating point type. Times are epoch seconds.
ADDED_COLUMNS: tuple[tuple[str, str], ...] = (
    # what was sent, written at claim time (so held and in-doubt keys have them too)
    ("stream", "TEXT"),
    ("event", "TEXT"),  # the Segment event name
    ("transaction_id", "TEXT"),
    ("message_id", "TEXT"),  # Segment messageId, may be NULL
    ("adv_event_id", "INTEGER"),  # 0 = the base conversion
    ("order_id", "TEXT"),  # as sent, NULL when not sent
    ("amount", "{real}"),  # as sent, NULL when not sent
    ("event_time", "{real}"),  # NULL if the event had none
    ("sent_at", "{real}"),  # written when delivered: the accepted answer
    ("currency", "TEXT"),  # the ISO 4217 code sent with the amount, NULL when none was sent
    # what Everflow made of it (target_everflow/reconcile/); recon_status NULL = unchecked
    ("recon_status", "TEXT"),  # confirmed, pending, rejected, not_found
    ("recon_error_code", "INTEGER"),
    ("recon_error_message", "TEXT"),
    ("recon_checked_at", "{real}"),
    ("recon_owner", "TEXT"),  # the run reconciling the key right now, with a lease
    ("recon_lease_until", "{real}"),
    ("recon_reported_at", "{real}"),  # when a completed reconcile reported the rejection/not_found
)


def create_statements(t: str, real: str) -> list[str]:
    # A new table gets the added columns at once: only an older table is upgraded (and logged).
    added = "".join(f",\n            {name} {kind}" for name, kind in missing_columns(set(), real))
    return [
        f"""CREATE TABLE IF NOT EXISTS {t} (
            delivery_key TEXT PRIMARY KEY,
            status TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'delivered', 'in_doubt')),
            owner TEXT NOT NULL,
            owner_scope TEXT NOT NULL DEFAULT '',
            lease_until {real},
            http_status INTEGER,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL{added}
        )""",
        f"CREATE INDEX IF NOT EXISTS {t}_pending_owner ON {t} (owner)"
        " WHERE status IN ('pending', 'sending')",
        f"CREATE INDEX IF NOT EXISTS {t}_updated_at ON {t} (updated_at)",
    ]


def missing_columns(have: set[str], real: str) -> list[tuple[str, str]]:
    """The :data:`ADDED_COLUMNS` a table with the columns ``have`` lacks, with their SQL types
    (``real``: the backend's floating point type)."""
    return [(name, kind.format(real=real)) for name, kind in ADDED_COLUMNS if name not in have]


def recon_index(t: str) -> str:
    """The reconciliation's work list: delivered keys not yet settled, by sent time."""
    return (
        f"CREATE INDEX IF NOT EXISTS {t}_recon_due ON {t} (sent_at)"
        " WHERE status = 'delivered' AND transaction_id IS NOT NULL"
        " AND (recon_status IS NULL OR recon_status = 'pending')"
    )


def create(backend: Backend, cur: Any) -> None:
    """Create the table and its indexes where missing."""
    backend.lock_for_ddl(cur, f"target_everflow_ledger:{backend.table}")
    for stmt in create_statements(backend.table, backend.real_type):
        cur.execute(stmt)


def upgrade(backend: Backend, cur: Any, log: logging.Logger) -> None:
    """Add the columns the table lacks: in place, idempotent, no data touched.

    Only a table that lacks a column is altered (an ALTER TABLE locks the whole table, so
    an up-to-date ledger is never locked for it). On PostgreSQL the lock is waited for at
    most ``ledger_timeout`` seconds (the lock timeout of every ledger statement); then opening
    fails with one clear line.
    """
    t = backend.table
    # Serialised with every other opener of this table, as create() is: PostgreSQL's CREATE
    # INDEX IF NOT EXISTS is not safe against a concurrent one (two runs starting at once on a
    # new ledger collide in pg_class with a unique violation).
    backend.lock_for_ddl(cur, f"target_everflow_ledger:{t}")
    missing = missing_columns(backend.column_names(cur), backend.real_type)
    if missing:
        # Two runs may upgrade at once: PostgreSQL's IF NOT EXISTS makes the second a no-op
        # (SQLite's BEGIN IMMEDIATE already serialises the check and the ALTER).
        add = "ADD COLUMN" if backend.dialect == "sqlite" else "ADD COLUMN IF NOT EXISTS"
        try:
            for name, kind in missing:
                cur.execute(f"ALTER TABLE {t} {add} {name} {kind}")
        except Exception as e:
            if backend.lock_timed_out(e):
                raise LedgerError(
                    f"could not upgrade the ledger table {t} in place (adding "
                    f"{len(missing)} column(s)): another process kept it locked for more "
                    f"than {backend.timeout:g} s (ledger_timeout); run again once it has finished"
                ) from None
            raise
        log.info(
            "ledger: table %s upgraded in place (added %s)", t, ", ".join(n for n, _ in missing)
        )
    cur.execute(recon_index(t))
