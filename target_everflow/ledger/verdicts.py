"""Reconcile's reads and writes of the ledger table (SQLite or PostgreSQL): its claims, its
verdicts, what it reported.

The reconciliation columns (``recon_*``, see ``schema.ADDED_COLUMNS``) are used with the same
claim discipline as delivery, so several processes sharing one PostgreSQL ledger split the work
and never check one key at the same time:

* :meth:`ReconcileStore.claim_due` takes a chunk of due keys in one transaction: delivered,
  with a transaction id, unchecked (``recon_status`` NULL) or ``pending``, sent at least
  ``reconcile_after_minutes`` ago, not checked within as long (nor earlier in this run), and
  not held by a live reconciler (``recon_owner`` with an unexpired ``recon_lease_until``). It
  sets ``recon_owner`` to this run's owner string and a lease. On PostgreSQL the candidates are
  locked ``FOR UPDATE SKIP LOCKED``; a SQLite file is serialised by ``BEGIN IMMEDIATE``.
* :meth:`renew` extends the lease before every request, so a slow (rate limited) check is not
  taken over; a reconciler that died leaves leases that expire (:meth:`overview` says until
  when).
* :meth:`record` writes the verdicts and gives the keys up, only where this run still owns them
  (a key taken over after an expired lease is not overwritten). A written verdict is not yet
  reported (``recon_reported_at`` NULL) until :meth:`mark_reported`: a rejected or not-found
  conversion is reported by every reconcile until one printed it and completed.

Every value is validated before it is written (:class:`Verdict`): a status reconcile knows, an
error code within PostgreSQL's INTEGER, a message without NUL or control characters and at most
:data:`MESSAGE_LIMIT` characters. Everything runs through the ledger's public SQL helpers
(``transaction``, ``sql``, ``keys_param``, ``now``: PostgreSQL's server clock, so skewed hosts
agree on leases).
"""

from __future__ import annotations

import json
import math
import typing as t
from dataclasses import dataclass

from target_everflow.ledger import DELIVERED_STATUS, Ledger, LedgerError, SQLLedger

# Reconcile's statuses (the ``recon_status`` column; NULL = unchecked).
CONFIRMED = "confirmed"
PENDING = "pending"
REJECTED = "rejected"
NOT_FOUND = "not_found"
RECON_STATUSES = (CONFIRMED, PENDING, REJECTED, NOT_FOUND)
PROBLEMS = (REJECTED, NOT_FOUND)

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
"""The range of an INTEGER column (PostgreSQL's is 32-bit)."""
MESSAGE_LIMIT = 1000
"""Characters of an error message the ledger keeps at most."""

_DUE_COLUMNS = (
    "delivery_key, stream, event, transaction_id, message_id, adv_event_id, order_id, amount,"
    " event_time, sent_at, currency"
)
_EARLIEST = (  # the earlier of event time and sent time (DueKey.earliest)
    "CASE WHEN event_time IS NOT NULL AND event_time < sent_at THEN event_time ELSE sent_at END"
)
_REPORT_COLUMNS = (
    f"{_DUE_COLUMNS}, recon_status, recon_error_code, recon_error_message, recon_checked_at,"
    " recon_reported_at"
)
_UNSETTLED = (  # delivered, checkable, not settled: what reconcile still has to check
    f"status = '{DELIVERED_STATUS}' AND transaction_id IS NOT NULL"
    f" AND (recon_status IS NULL OR recon_status = '{PENDING}')"
)
_PROBLEM_IN = "(" + ", ".join(f"'{s}'" for s in PROBLEMS) + ")"


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
    currency: str | None = None

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
            currency=row[10],
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to write for one key: a status (``None``: still missing, not yet not_found), and
    for a rejection Everflow's code and message. Validated when made (``ValueError``)."""

    key: str
    status: str | None
    error_code: int | None = None
    error_message: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"a verdict needs a delivery key, got {self.key!r}")
        if self.status is not None and self.status not in RECON_STATUSES:
            raise ValueError(f"unknown reconcile status {self.status!r}")
        code = self.error_code
        if code is not None and (
            isinstance(code, bool)
            or not isinstance(code, int)
            or not INT32_MIN <= code <= INT32_MAX
        ):
            raise ValueError(f"error code {code!r} is not a 32-bit integer")
        message = self.error_message
        if message is not None and (
            not isinstance(message, str)
            or len(message) > MESSAGE_LIMIT
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in message)
        ):
            raise ValueError("an error message must be one line of text, at most 1000 characters")


@dataclass(frozen=True, slots=True)
class Problem:
    """A rejected or not-found conversion as the ledger keeps it."""

    key: DueKey
    status: str
    error_code: int | None
    error_message: str | None
    checked_at: float | None
    reported_at: float | None


@dataclass(frozen=True, slots=True)
class DueOverview:
    """Where the unsettled keys stand (ledger time ``now``): ``due`` now, ``waiting`` for
    ``reconcile_after_minutes`` (since sent or last checked), ``held`` by another reconciler's
    live lease, which runs out at ``held_until`` at the latest."""

    now: float
    due: int
    waiting: int
    held: int
    held_until: float | None


def _finite(name: str, value: float, *, positive: bool = False) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0")
    return number


class ReconcileStore:
    """Reconcile's SQL over an open SQL ledger; see the module docstring."""

    def __init__(self, ledger: Ledger, *, lease_seconds: float) -> None:
        if not isinstance(ledger, SQLLedger):
            raise LedgerError(
                "ledger_url is none: no ledger records what was delivered, so there is nothing "
                "to reconcile"
            )
        self.ledger = ledger
        self.owner = ledger.owner
        self.lease = _finite("lease_seconds", lease_seconds, positive=True)
        self._pg = ledger.dialect == "postgresql"
        self.run_started = self.now()

    def _run(self, fn: t.Callable[[t.Any], t.Any], what: str) -> t.Any:
        return self.ledger.transaction(fn, what)

    def _sql(self, sql: str) -> str:
        return self.ledger.sql(sql)

    def now(self) -> float:
        """The ledger's clock."""
        return float(self._run(self.ledger.now, "read the clock"))

    # -- claims ----------------------------------------------------------------------------

    def claim_due(
        self, *, after_seconds: float, limit: int, exclude_owner: str | None = None
    ) -> tuple[float, list[DueKey]]:
        """Claim up to ``limit`` due keys, earliest (event or sent) first; return (ledger time,
        the keys, in that order). ``exclude_owner``: keys a run of that owner delivered stay."""
        after = _finite("after_seconds", after_seconds)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")

        def tx(cur: t.Any) -> tuple[float, list[DueKey]]:
            now = self.ledger.now(cur)
            due_before = now - after
            lock = " FOR UPDATE SKIP LOCKED" if self._pg else ""
            cur.execute(
                self._sql(
                    "UPDATE {t} SET recon_owner = ?, recon_lease_until = ?"
                    " WHERE delivery_key IN ("
                    f"  SELECT delivery_key FROM {{t}} WHERE {_UNSETTLED}"
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
                (self.owner, now + self.lease, due_before, due_before, self.run_started, now,
                 exclude_owner or "", limit, now),
            )  # fmt: skip
            keys = [DueKey.from_row(r) for r in cur.fetchall()]
            keys.sort(key=lambda k: (k.earliest, k.key))
            return now, keys

        return t.cast(tuple[float, list[DueKey]], self._run(tx, "claim keys to reconcile"))

    def renew(self) -> float:
        """Extend the lease of every key this run holds; return the ledger time."""

        def tx(cur: t.Any) -> float:
            now = self.ledger.now(cur)
            cur.execute(
                self._sql("UPDATE {t} SET recon_lease_until = ? WHERE recon_owner = ?"),
                (now + self.lease, self.owner),
            )
            return now

        return float(self._run(tx, "renew reconcile leases"))

    def give_back(self, keys: t.Sequence[str]) -> None:
        """Give up these keys unchecked (a later claim takes them again)."""
        if not all(isinstance(k, str) for k in keys):
            raise ValueError("delivery keys are strings")

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
        """Write the verdicts of keys this run holds and give them up (one statement). A key
        given a status is not reported yet (``recon_reported_at`` NULL)."""
        if not verdicts:
            return
        if not all(isinstance(v, Verdict) for v in verdicts):
            raise ValueError("record() takes Verdict objects")
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
            f" recon_reported_at = CASE WHEN {col['s']} IS NULL"
            f" THEN {{t}}.recon_reported_at ELSE NULL END,"
            " recon_checked_at = ?, recon_owner = NULL, recon_lease_until = NULL"
            f" FROM {source} WHERE {{t}}.delivery_key = {col['k']} AND {{t}}.recon_owner = ?"
        )

        def tx(cur: t.Any) -> None:
            cur.execute(sql, (self.ledger.now(cur), data, self.owner))

        self._run(tx, "record reconcile verdicts")

    # -- what is reported ------------------------------------------------------------------

    def problems(self, *, unreported_only: bool = False) -> list[Problem]:
        """The rejected and not-found conversions in the ledger (``unreported_only``: those no
        completed reconcile reported yet), most recently sent first."""
        unreported = " AND recon_reported_at IS NULL" if unreported_only else ""

        def tx(cur: t.Any) -> list[t.Any]:
            cur.execute(
                self._sql(
                    f"SELECT {_REPORT_COLUMNS} FROM {{t}}"
                    f" WHERE recon_status IN {_PROBLEM_IN}{unreported}"
                    " ORDER BY sent_at DESC, delivery_key"
                )
            )
            return list(cur.fetchall())

        rows = self._run(tx, "read the reconcile report")
        return [
            Problem(DueKey.from_row(r[:11]), str(r[11]), None if r[12] is None else int(r[12]),
                    r[13], None if r[14] is None else float(r[14]),
                    None if r[15] is None else float(r[15]))
            for r in rows
        ]  # fmt: skip

    def mark_reported(self, keys: t.Sequence[str]) -> int:
        """Mark these rejected or not-found keys reported (a completed reconcile printed them);
        returns how many were marked."""
        if not all(isinstance(k, str) for k in keys):
            raise ValueError("delivery keys are strings")
        if not keys:
            return 0

        def tx(cur: t.Any) -> int:
            cur.execute(
                self._sql(
                    "UPDATE {t} SET recon_reported_at = ? WHERE delivery_key {in_keys}"
                    f" AND recon_status IN {_PROBLEM_IN} AND recon_reported_at IS NULL"
                ),
                (self.ledger.now(cur), self.ledger.keys_param(sorted(keys))),
            )
            return int(cur.rowcount or 0)

        return int(self._run(tx, "mark reconcile findings reported"))

    def overview(self, *, after_seconds: float) -> DueOverview:
        """Where the unsettled keys stand now: see :class:`DueOverview`."""
        after = _finite("after_seconds", after_seconds)

        def tx(cur: t.Any) -> DueOverview:
            now = self.ledger.now(cur)
            held = "recon_owner IS NOT NULL AND recon_owner <> ? AND recon_lease_until > ?"
            waiting = "sent_at > ? OR (recon_checked_at IS NOT NULL AND recon_checked_at > ?)"
            cur.execute(
                self._sql(
                    f"SELECT sum(CASE WHEN {held} THEN 1 ELSE 0 END),"
                    f" max(CASE WHEN {held} THEN recon_lease_until END),"
                    f" sum(CASE WHEN NOT ({held}) AND ({waiting}) THEN 1 ELSE 0 END),"
                    " count(*)"
                    f" FROM {{t}} WHERE {_UNSETTLED}"
                ),
                (self.owner, now, self.owner, now, self.owner, now, now - after, now - after),
            )
            n_held, until, n_waiting, total = cur.fetchone()
            n_held, n_waiting, total = int(n_held or 0), int(n_waiting or 0), int(total or 0)
            return DueOverview(
                now=now,
                due=total - n_held - n_waiting,
                waiting=n_waiting,
                held=n_held,
                held_until=None if until is None else float(until),
            )

        return t.cast(DueOverview, self._run(tx, "count the keys reconcile has to check"))

    def uncheckable(self) -> int:
        """Delivered keys without a transaction id: delivered by a release before 0.2.0."""

        def tx(cur: t.Any) -> int:
            cur.execute(
                self._sql(
                    f"SELECT count(*) FROM {{t}} WHERE status = '{DELIVERED_STATUS}'"
                    " AND transaction_id IS NULL"
                )
            )
            return int(cur.fetchone()[0])

        return int(self._run(tx, "count unreconcilable keys"))
