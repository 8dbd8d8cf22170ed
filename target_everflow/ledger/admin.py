"""The operator commands' SQL (``target-everflow ledger status | in-doubt | release | forget``):
counting keys, listing the keys in doubt, releasing keys, forgetting old keys and runs. The
commands (``adapter/commands/ledger.py``) print; this module reads and writes the ledger,
through its public helpers only.
"""

from __future__ import annotations

import typing as t

from target_everflow.ledger.base import (
    DELIVERED_STATUS,
    HELD_STATUS,
    PENDING_STATUS,
    SENDING_STATUS,
    LedgerError,
)
from target_everflow.ledger.runs import check_days, forget_runs

if t.TYPE_CHECKING:
    from collections.abc import Sequence

    from target_everflow.ledger.sql import SQLLedger

CLAIM_COLUMNS = ("stream", "event", "transaction_id")
"""Written at claim time by target versions that record them (reconciliation); read where the
ledger table has them, None where it does not."""
ROW_COLUMNS = ("delivery_key", "status", "owner", "lease_until", "updated_at", *CLAIM_COLUMNS)
"""The keys of each row :func:`in_doubt_rows` gives."""
MAX_LISTED = 10_000
"""Most in-doubt keys listed or released at once (a crash leaves at most max_concurrency)."""
MAX_KEYS = 100_000
"""Most keys one call of :func:`in_doubt_rows` or :func:`release_unchanged` takes."""


class PendingClaim(t.NamedTuple):
    """The oldest claim not yet delivered."""

    delivery_key: str
    status: str
    owner: str
    created_at: float
    lease_until: float | None


class KeyCounts(t.NamedTuple):
    """What ``ledger status`` shows."""

    counts: dict[str, int]
    """Keys by status (the statuses present in the table)."""
    oldest: PendingClaim | None
    orphaned: int
    """*sending* keys whose lease ran out: their runs died after a postback may have left."""
    now: float
    """The ledger's clock when they were read."""


def _keys(keys: Sequence[str]) -> list[str]:
    if isinstance(keys, str):
        raise LedgerError("expected a sequence of delivery keys, not one text")
    listed = list(keys)
    if len(listed) > MAX_KEYS:
        raise LedgerError(f"at most {MAX_KEYS} keys at once, got {len(listed)}")
    if not all(isinstance(k, str) and k for k in listed):
        raise LedgerError("every delivery key must be a non-empty text")
    return listed


def key_counts(ledger: SQLLedger) -> KeyCounts:
    """Keys by status, the oldest pending or sending claim, and the orphaned sending keys."""

    def tx(cur: t.Any) -> KeyCounts:
        now = ledger.now(cur)
        cur.execute(ledger.sql("SELECT status, COUNT(*) FROM {t} GROUP BY status"))
        counts = {str(status): int(n) for status, n in cur.fetchall()}
        cur.execute(
            ledger.sql(
                "SELECT delivery_key, status, owner, created_at, lease_until FROM {t}"
                " WHERE status IN (?, ?) ORDER BY created_at, delivery_key LIMIT 1"
            ),
            (PENDING_STATUS, SENDING_STATUS),
        )
        row = cur.fetchone()
        cur.execute(
            ledger.sql(
                "SELECT COUNT(*) FROM {t} WHERE status = ?"
                " AND (lease_until IS NULL OR lease_until <= ?)"
            ),
            (SENDING_STATUS, now),
        )
        orphaned = int(cur.fetchone()[0])
        oldest = None if row is None else PendingClaim(*row)
        return KeyCounts(counts, oldest, orphaned, now)

    return ledger.transaction(tx, "count keys")


def in_doubt_rows(
    ledger: SQLLedger, keys: Sequence[str] | None = None
) -> tuple[list[dict[str, t.Any]], float]:
    """Rows in doubt, oldest first (at most :data:`MAX_LISTED` + 1, so a caller can tell there
    are more): held, or *sending* under an expired lease. With ``keys``: those keys' rows
    whatever their status. Each row a dict of :data:`ROW_COLUMNS`; with the ledger's clock."""
    wanted = None if keys is None else _keys(keys)

    def tx(cur: t.Any) -> tuple[list[dict[str, t.Any]], float]:
        now = ledger.now(cur)
        present = ledger.column_names(cur)
        extra = [c if c in present else "NULL" for c in CLAIM_COLUMNS]
        columns = ["delivery_key", "status", "owner", "lease_until", "updated_at", *extra]
        select = f"SELECT {', '.join(columns)} FROM {{t}}"
        if wanted is None:
            cur.execute(
                ledger.sql(
                    select + " WHERE status = ? OR (status = ?"
                    " AND (lease_until IS NULL OR lease_until <= ?))"
                    " ORDER BY updated_at, delivery_key LIMIT ?"
                ),
                (HELD_STATUS, SENDING_STATUS, now, MAX_LISTED + 1),
            )
        else:
            cur.execute(
                ledger.sql(select + " WHERE delivery_key {in_keys}"), (ledger.keys_param(wanted),)
            )
        return [dict(zip(ROW_COLUMNS, r)) for r in cur.fetchall()], now

    return ledger.transaction(tx, "read in-doubt keys")


def releasable(row: t.Mapping[str, t.Any], now: float) -> bool:
    """Whether ``row`` (of :func:`in_doubt_rows`) may be released: delivered, held, or a
    claim whose run is gone (no live lease)."""
    if row["status"] in (DELIVERED_STATUS, HELD_STATUS):
        return True
    return row["lease_until"] is None or row["lease_until"] <= now


def release_unchanged(ledger: SQLLedger, rows: Sequence[t.Mapping[str, t.Any]]) -> set[str]:
    """Delete each row (of :func:`in_doubt_rows`) if it is still as it was read: same status
    and owner, and a pending or sending one still without a live lease. The keys deleted."""
    if len(rows) > MAX_KEYS:
        raise LedgerError(f"at most {MAX_KEYS} keys at once, got {len(rows)}")
    wanted = [(str(r["delivery_key"]), str(r["status"]), str(r["owner"])) for r in rows]

    def tx(cur: t.Any) -> set[str]:
        now = ledger.now(cur)
        deleted: set[str] = set()
        for key, status, owner in wanted:
            cur.execute(
                ledger.sql(
                    "DELETE FROM {t} WHERE delivery_key = ? AND status = ? AND owner = ?"
                    " AND (status IN (?, ?) OR lease_until IS NULL OR lease_until <= ?)"
                    " RETURNING delivery_key"
                ),
                (key, status, owner, DELIVERED_STATUS, HELD_STATUS, now),
            )
            deleted.update(r[0] for r in cur.fetchall())
        return deleted

    return ledger.transaction(tx, "release keys")


def forget(ledger: SQLLedger, days: float) -> tuple[int, int]:
    """Prune delivered and held keys not updated for ``days`` days (finite, >= 0), and the
    runs of the history that started before then; (keys, runs) forgotten."""
    days = check_days(days, "the age to forget")
    keys = ledger.prune(days)
    return keys, forget_runs(ledger, days)
