"""Reconciliation's reads and writes of the ledger table (SQLite or PostgreSQL).

The reconciliation columns (``recon_*``, see ``ledger.ADDED_COLUMNS``) are used with the same
claim discipline as delivery, so several processes sharing one PostgreSQL ledger split the work
and never check one key at the same time:

* :meth:`ReconcileStore.claim_due` takes a chunk of due keys in one transaction: delivered,
  with a transaction id, unchecked (``recon_status`` NULL) or ``pending``, sent at least
  ``reconcile_after_minutes`` ago, not checked within as long (nor earlier in this run), and
  not held by a live reconciler (``recon_owner`` with an unexpired ``recon_lease_until``). It
  sets ``recon_owner`` to this run's owner string and a lease. On PostgreSQL the candidates are
  locked ``FOR UPDATE SKIP LOCKED``; a SQLite file is serialised by ``BEGIN IMMEDIATE``.
* :meth:`renew` extends the lease before every request, so a slow (rate limited) check is not
  taken over; a reconciler that died leaves leases that expire.
* :meth:`record` writes the verdicts and gives the keys up, only where this run still owns them
  (a key taken over after an expired lease is not overwritten).

Everything runs through the ledger's public SQL helpers (``SQLLedger.transaction``: one
connection, retried on deadlocks, errors as ``LedgerError`` with the password masked; ``sql``,
``keys_param``) and its clock (``now``: PostgreSQL's server clock, so skewed hosts agree on
leases).
"""

from __future__ import annotations

import json
import typing as t
from dataclasses import dataclass

from target_everflow.ledger import Ledger, LedgerError, SQLLedger

CONFIRMED = "confirmed"
PENDING = "pending"
REJECTED = "rejected"
NOT_FOUND = "not_found"
PROBLEMS = (REJECTED, NOT_FOUND)

_DUE_COLUMNS = (
    "delivery_key, stream, event, transaction_id, message_id, adv_event_id, order_id, amount,"
    " event_time, sent_at"
)
_EARLIEST = (  # the earlier of event time and sent time (DueKey.earliest)
    "CASE WHEN event_time IS NOT NULL AND event_time < sent_at THEN event_time ELSE sent_at END"
)
_REPORT_COLUMNS = (
    f"{_DUE_COLUMNS}, recon_status, recon_error_code, recon_error_message, recon_checked_at"
)


@dataclass(frozen=True, slots=True)
class DueKey:
    """A delivered conversion to check, as the ledger remembers it."""

    key: str
    stream: str | None
    event: str | None
    transaction_id: str
    message_id: str | None
    adv_event_id: int
    order_id: str | None
    amount: float | None
    event_time: float | None
    sent_at: float

    @property
    def earliest(self) -> float:
        """The earlier of event time and sent time (a backfill is recorded on the event day)."""
        return min(self.sent_at, self.event_time) if self.event_time is not None else self.sent_at

    @classmethod
    def from_row(cls, row: t.Sequence[t.Any]) -> DueKey:
        return cls(
            key=str(row[0]),
            stream=row[1],
            event=row[2],
            transaction_id=str(row[3]),
            message_id=row[4],
            adv_event_id=int(row[5] or 0),
            order_id=row[6],
            amount=None if row[7] is None else float(row[7]),
            event_time=None if row[8] is None else float(row[8]),
            sent_at=float(row[9]),
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to write for one key: a status (``None``: still missing, not yet not_found)."""

    key: str
    status: str | None
    error_code: int | None = None
    error_message: str | None = None


class ReconcileStore:
    """The reconciliation's SQL over an open SQL ledger; see the module docstring."""

    def __init__(self, ledger: Ledger, *, lease_seconds: float) -> None:
        if not isinstance(ledger, SQLLedger):
            raise LedgerError(
                "ledger_url is none: no ledger records what was delivered, so there is nothing "
                "to reconcile"
            )
        self.ledger = ledger
        self.owner = ledger.owner
        self.lease = float(lease_seconds)
        self._pg = ledger.dialect == "postgresql"
        self.run_started = self.now()

    # -- helpers ---------------------------------------------------------------------------

    def _run(self, fn: t.Callable[[t.Any], t.Any], what: str) -> t.Any:
        return self.ledger.transaction(fn, what)

    def _sql(self, sql: str) -> str:
        return self.ledger.sql(sql)

    def _now(self, cur: t.Any) -> float:
        return self.ledger.now(cur)

    def now(self) -> float:
        """The ledger's clock."""
        return float(self._run(self._now, "read the clock"))

    # -- claims ----------------------------------------------------------------------------

    def claim_due(
        self,
        *,
        after_seconds: float,
        limit: int,
        exclude_owner: str | None = None,
    ) -> tuple[float, list[DueKey]]:
        """Claim up to ``limit`` due keys, earliest (event or sent) first; return (ledger time,
        the keys, in that order)."""

        def tx(cur: t.Any) -> tuple[float, list[DueKey]]:
            now = self._now(cur)
            due_before = now - after_seconds
            lock = " FOR UPDATE SKIP LOCKED" if self._pg else ""
            cur.execute(
                self._sql(
                    "UPDATE {t} SET recon_owner = ?, recon_lease_until = ?"
                    " WHERE delivery_key IN ("
                    "  SELECT delivery_key FROM {t}"
                    "  WHERE status = 'delivered' AND transaction_id IS NOT NULL"
                    "  AND (recon_status IS NULL OR recon_status = 'pending')"
                    "  AND sent_at <= ?"
                    "  AND (recon_checked_at IS NULL"
                    "       OR (recon_checked_at <= ? AND recon_checked_at < ?))"
                    "  AND (recon_owner IS NULL OR recon_lease_until IS NULL"
                    "       OR recon_lease_until <= ?)"
                    "  AND owner <> ?"
                    f"  ORDER BY {_EARLIEST}, delivery_key LIMIT ?{lock})"
                    " AND (recon_owner IS NULL OR recon_lease_until IS NULL"
                    "      OR recon_lease_until <= ?)"
                    f" RETURNING {_DUE_COLUMNS}"
                ),
                (
                    self.owner,
                    now + self.lease,
                    due_before,
                    due_before,
                    self.run_started,
                    now,
                    exclude_owner or "",
                    int(limit),
                    now,
                ),
            )
            keys = [DueKey.from_row(r) for r in cur.fetchall()]
            keys.sort(key=lambda k: (k.earliest, k.key))
            return now, keys

        return t.cast(tuple[float, list[DueKey]], self._run(tx, "claim keys to reconcile"))

    def renew(self) -> float:
        """Extend the lease of every key this run holds; return the ledger time."""

        def tx(cur: t.Any) -> float:
            now = self._now(cur)
            cur.execute(
                self._sql("UPDATE {t} SET recon_lease_until = ? WHERE recon_owner = ?"),
                (now + self.lease, self.owner),
            )
            return now

        return float(self._run(tx, "renew reconcile leases"))

    def give_back(self, keys: t.Sequence[str]) -> None:
        """Give up these keys unchecked (a later claim takes them again)."""

        def tx(cur: t.Any) -> None:
            cur.execute(
                self._sql(
                    "UPDATE {t} SET recon_owner = NULL, recon_lease_until = NULL"
                    " WHERE delivery_key {in_keys} AND recon_owner = ?"
                ),
                (self.ledger.keys_param(sorted(keys)), self.owner),
            )

        if keys:
            self._run(tx, "give back reconcile claims")

    def release(self) -> None:
        """Give up every key this run still holds (unchecked: a later run checks them)."""

        def tx(cur: t.Any) -> None:
            cur.execute(
                self._sql(
                    "UPDATE {t} SET recon_owner = NULL, recon_lease_until = NULL"
                    " WHERE recon_owner = ?"
                ),
                (self.owner,),
            )

        self._run(tx, "release reconcile claims")

    def record(self, verdicts: t.Sequence[Verdict]) -> None:
        """Write the verdicts of keys this run holds and give them up (one statement)."""
        if not verdicts:
            return
        items = sorted(verdicts, key=lambda v: v.key)  # lock in key order
        data = json.dumps(
            [{"k": v.key, "s": v.status, "c": v.error_code, "m": v.error_message} for v in items]
        )
        if self._pg:
            source = "json_to_recordset(?::json) AS j(k text, s text, c integer, m text)"
            col = {name: f"j.{name}" for name in "kscm"}
        else:
            source = "json_each(?) AS j"
            col = {name: f"json_extract(j.value, '$.{name}')" for name in "kscm"}
        # A missing key (s NULL) keeps its status: unchecked, or pending as Everflow said.
        sql = self._sql(
            f"UPDATE {{t}} SET recon_status = COALESCE({col['s']}, {{t}}.recon_status),"
            f" recon_error_code = CASE WHEN {col['s']} IS NULL THEN {{t}}.recon_error_code"
            f" ELSE {col['c']} END,"
            f" recon_error_message = CASE WHEN {col['s']} IS NULL"
            f" THEN {{t}}.recon_error_message ELSE {col['m']} END,"
            " recon_checked_at = ?, recon_owner = NULL, recon_lease_until = NULL"
            f" FROM {source} WHERE {{t}}.delivery_key = {col['k']} AND {{t}}.recon_owner = ?"
        )

        def tx(cur: t.Any) -> None:
            cur.execute(sql, (self._now(cur), data, self.owner))

        self._run(tx, "record reconcile verdicts")

    # -- what the report lists -------------------------------------------------------------

    def problems(self) -> list[tuple[DueKey, str, int | None, str | None, float | None]]:
        """Every rejected and not-found conversion in the ledger, most recently sent first:
        (the key, status, error code, error message, checked at)."""

        def tx(cur: t.Any) -> list[t.Any]:
            cur.execute(
                self._sql(
                    f"SELECT {_REPORT_COLUMNS} FROM {{t}}"
                    " WHERE recon_status IN ('rejected', 'not_found')"
                    " ORDER BY sent_at DESC, delivery_key"
                )
            )
            return list(cur.fetchall())

        rows = self._run(tx, "read the reconcile report")
        return [
            (DueKey.from_row(r[:10]), str(r[10]), None if r[11] is None else int(r[11]), r[12],
             None if r[13] is None else float(r[13]))
            for r in rows
        ]  # fmt: skip

    def uncheckable(self) -> int:
        """Delivered keys without a transaction id: delivered by a release before 0.2.0."""

        def tx(cur: t.Any) -> int:
            cur.execute(
                self._sql(
                    "SELECT count(*) FROM {t} WHERE status = 'delivered' AND transaction_id IS NULL"
                )
            )
            return int(cur.fetchone()[0])

        return int(self._run(tx, "count unreconcilable keys"))
