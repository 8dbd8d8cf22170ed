"""The SQL ledger: one object with a backend.

:class:`SQLLedger` owns a :class:`~target_everflow.ledger.backend.Backend` (``sqlite.py``,
``postgres.py``: the connection, the placeholders, the array parameters, what the database's
errors mean). Every database call runs on the ledger's I/O thread (``io.py``); the claim
statements are in ``claims.py``, the group commit of marks in ``marks.py``, the heartbeat in
``leases.py``, the schema in ``schema.py``: each gets the backend and the ledger's
:class:`~target_everflow.ledger.backend.Identity` as arguments and uses their public names only.

Other modules (reconciliation, run history, operator commands, the report) use the public
helpers only: ``transaction``, ``sql``, ``keys_param``, ``now``, ``query``, ``column_names``,
``lock_for_ddl``, ``table``, ``dialect`` and ``real_type``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from target_everflow.ledger.backend import Backend, Identity
from target_everflow.ledger.base import (
    LOG,
    PSYCOPG2_MISSING,
    ClaimStatus,
    Ledger,
    LedgerError,
    new_owner,
)
from target_everflow.ledger.claims import (
    change_own_claims,
    claim_rows,
    machine_scope,
    owner_is_dead,
)
from target_everflow.ledger.io import LedgerIO
from target_everflow.ledger.leases import Leases
from target_everflow.ledger.marks import COMMIT_WHAT, Mark, MarkQueue, write_marks
from target_everflow.ledger.schema import create, upgrade
from target_everflow.retry import LEDGER_RETRY

_T = TypeVar("_T")

PRUNE_BATCH = 10_000
"""Rows deleted per prune transaction."""


class SQLLedger(Ledger):
    """A ledger in a SQL table, on ``backend``; see the module docstring. Use ``open_ledger``
    to get one."""

    def __init__(
        self,
        backend: Backend,
        *,
        lease_seconds: float,
        logger: logging.Logger | None = None,
        commit_delay: float = 0.002,
        max_batch: int = 10_000,
    ) -> None:
        if not lease_seconds > 0:
            raise LedgerError(f"the ledger lease must be > 0 seconds, got {lease_seconds!r}")
        self.backend = backend
        """The database: connection and dialect (used on the I/O thread only)."""
        self.description = description = backend.description
        self.owner = new_owner()
        self.scope = machine_scope()
        self.lease_seconds = float(lease_seconds)
        self.identity = Identity(self.owner, self.scope, self.lease_seconds)
        """What the claim and mark statements write as this run's."""
        self.timeout = backend.timeout
        self.log = logger or LOG
        self._closed = False
        self._io = LedgerIO(description, self.timeout, on_hang=self._fail)
        self._marks = MarkQueue(
            commit=self._commit_marks, run=self._io.call, check=self._check, logger=self.log,
            describe=lambda e: f"ledger {description}: could not commit delivered marks: "
            f"{backend.describe_error(e)}",
            commit_delay=commit_delay, max_batch=max_batch,
        )  # fmt: skip
        self._leases = Leases(
            description=description, lease_seconds=self.lease_seconds, logger=self.log,
            renew=lambda: self.renew_leases(), hung=lambda: self._io.hung is not None,
            fail=self._fail,
        )  # fmt: skip

    @property
    def table(self) -> str:
        """The ledger table (``?table=`` of ledger_url, else ``everflow_ledger``)."""
        return self.backend.table

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.backend.dialect

    @property
    def real_type(self) -> str:
        """The backend's floating point column type."""
        return self.backend.real_type

    # ---- public helpers (run history, reconciliation, operator commands, report) ------

    def now(self, cur: Any) -> float:
        """The ledger's clock (epoch seconds; PostgreSQL's server clock)."""
        return self.backend.now(cur)

    def sql(self, text: str) -> str:
        """``text`` for this database: ``?`` placeholders, ``{t}`` the ledger table,
        ``{in_keys}`` matched against :meth:`keys_param`, ``{owner}`` the owner column where
        ``delivery_key {in_keys}`` picks the rows (no index on the owner used for them)."""
        return self.backend.sql(text)

    def keys_param(self, keys: Sequence[str]) -> Any:
        """The parameter that ``{in_keys}`` expects."""
        return self.backend.keys_param(keys)

    def column_names(self, cur: Any, table: str | None = None) -> set[str]:
        """The column names of ``table`` (default: the ledger table), lower case."""
        return self.backend.column_names(cur, table)

    def lock_for_ddl(self, cur: Any, name: str) -> None:
        """Serialise a CREATE ... IF NOT EXISTS named ``name`` with other processes until the
        transaction ends (PostgreSQL's catalog can collide; SQLite's BEGIN IMMEDIATE already
        serialises)."""
        self.backend.lock_for_ddl(cur, name)

    def transaction(self, fn: Callable[[Any], _T], what: str) -> _T:
        """Run ``fn(cursor)`` in one transaction on the I/O thread (retried on deadlock);
        errors -> :class:`LedgerError` saying it could not ``what``. Write its SQL through
        :meth:`sql`."""
        return self._io.call(lambda: self._transaction(fn, what), what)

    def query(
        self, sql: str, params: Sequence[Any] = ()
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """One read-only statement for an operator command (``{t}`` is the ledger table, ``?``
        the placeholders); returns the column names and the rows."""
        self._check()

        def tx(cur: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
            cur.execute(self.sql(sql), tuple(params))
            names = [d[0] for d in cur.description or ()]
            return names, [tuple(r) for r in cur.fetchall()]

        return self.transaction(tx, "read the ledger")

    @property
    def failure(self) -> LedgerError | None:
        """The error that failed this ledger (every later call raises it), or None."""
        return self._marks.failed

    @property
    def waited(self) -> float:
        """Seconds this run's threads waited for the ledger, summed (the benchmark's "ledger
        wait"; the ledger logs it when closed)."""
        return self._io.waited

    @property
    def writer_commits(self) -> int:
        """The number of group-commit transactions (diagnostics, tests)."""
        return self._marks.commits

    # ---- life cycle -------------------------------------------------------------------

    def open(self, retention_days: int) -> None:
        """Connect, create the schema, prune, start the threads. Errors -> LedgerError."""
        self._io.start()
        try:
            self._io.call(self._connect_or_raise, "connect")
            self.transaction(lambda cur: create(self.backend, cur), "create the ledger table")
            self.transaction(
                lambda cur: upgrade(self.backend, cur, self.log), "upgrade the ledger table"
            )
            if retention_days > 0:
                self.prune(retention_days)
        except LedgerError as e:
            self._abandon()
            if str(e) == PSYCOPG2_MISSING:
                raise
            reason = str(e).removeprefix(f"ledger {self.description}: ")
            raise LedgerError(
                f"cannot open the ledger (ledger_url={self.description}): {reason}"
            ) from None
        except BaseException:  # e.g. SIGTERM's exception while waiting: not a ledger error
            self._abandon()
            raise
        self._marks.start()
        self._leases.start()
        self.log.info("ledger %s opened (owner %s)", self.description, self.owner)

    def _connect_or_raise(self) -> None:
        try:
            self.backend.connect(self.log)
        except LedgerError:
            raise
        except Exception as e:  # any driver/OS error is reported the same way
            raise LedgerError(self.backend.describe_error(e)) from None

    def _abandon(self) -> None:
        """Give the connection up without waiting: it is closed when the I/O thread is free
        (never, if it is stuck: it is a daemon thread and goes with the process)."""
        self._closed = True
        self._io.stop(last=self._close_quietly)

    def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self.backend.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Both threads only wait for the I/O thread, with a deadline: these joins end.
        self._leases.stop()
        lost = self._marks.stop()
        with contextlib.suppress(LedgerError):
            self._io.call(self._close_quietly, "close the connection")
        self._io.stop()
        self.log.info(
            "ledger %s closed: %d call(s), %.3f s waited for them, %d mark commit(s)",
            self.description, self._io.calls, self._io.waited, self._marks.commits,
        )  # fmt: skip
        failed = self._marks.failed
        if failed is not None:
            suffix = f" ({lost} delivered mark(s) not committed)" if lost else ""
            raise LedgerError(f"{failed}{suffix}")

    def stop_waiting_after(self, seconds: float) -> None:
        self._io.stop_waiting_after(seconds)

    # ---- transactions -----------------------------------------------------------------

    def _fail(self, err: LedgerError) -> None:
        self._marks.fail(err)

    def _check(self) -> None:
        if self._marks.failed is not None:
            raise self._marks.failed
        if self._closed:
            raise LedgerError(f"ledger {self.description} is closed")

    def _transaction(self, fn: Callable[[Any], _T], what: str) -> _T:
        retry = 0
        while True:
            if not self.backend.connected:
                raise LedgerError(f"ledger {self.description} is closed")
            try:
                cur = self.backend.begin()
                result = fn(cur)
                self.backend.commit()
                return result
            except LedgerError:
                self._rollback_quietly()
                raise
            except Exception as e:
                self._rollback_quietly()
                if self.backend.retryable(e) and retry < LEDGER_RETRY.max_retries:
                    retry += 1
                    time.sleep(LEDGER_RETRY.delay(retry))
                    continue
                raise LedgerError(
                    f"ledger {self.description}: could not {what}: {self.backend.describe_error(e)}"
                ) from None

    def _rollback_quietly(self) -> None:
        with contextlib.suppress(Exception):  # the connection may be gone; that is reported
            self.backend.rollback()

    # ---- claims -----------------------------------------------------------------------

    def claim(
        self, keys: Sequence[str], metadata: Mapping[str, Mapping[str, Any]] | None = None
    ) -> dict[str, ClaimStatus]:
        self._check()
        if isinstance(keys, str):
            raise TypeError("claim() takes a sequence of keys, not one string")
        ordered = list(dict.fromkeys(keys))
        if not ordered:
            return {}

        # Sorted, so concurrent transactions lock overlapping keys in the same order.
        answers = self.transaction(
            lambda cur: claim_rows(
                self.backend, self.identity, cur, sorted(ordered), metadata,
                owner_is_dead=self._owner_is_dead, log=self.log,
            ),
            "claim keys",
        )  # fmt: skip
        return {k: answers[k] for k in ordered}

    def _owner_is_dead(self, owner: str, scope: str) -> bool:
        """True when ``owner`` ran on this machine and its process no longer exists."""
        return owner_is_dead(owner, scope, self.scope)

    def _change_own_claims(
        self, set_sql: str, keys: Sequence[str], what: str, *, now: bool = False
    ) -> set[str]:
        """Change (or, ``set_sql`` empty, delete) our pending or sending claims of ``keys``;
        the keys changed (see ``claims.change_own_claims``)."""
        self._check()
        ks = sorted(set(keys))
        if not ks:
            return set()
        return self.transaction(
            lambda cur: change_own_claims(self.backend, self.identity, cur, set_sql, ks, now=now),
            what,
        )

    def release(self, keys: Sequence[str]) -> None:
        self._change_own_claims("", keys, "release claims")

    def mark_held(self, keys: Sequence[str]) -> None:
        ks = sorted(set(keys))
        held = self._change_own_claims(
            "status = 'in_doubt', lease_until = NULL, updated_at = ?", ks, "mark keys held",
            now=True,
        )  # fmt: skip
        if len(held) != len(ks):
            self.log.warning(
                "ledger: %d of %d key(s) to hold were no longer pending under this run",
                len(ks) - len(held),
                len(ks),
            )

    def status(self, key: str) -> str | None:
        self._check()

        def tx(cur: Any) -> str | None:
            cur.execute(self.sql("SELECT status FROM {t} WHERE delivery_key = ?"), (key,))
            row = cur.fetchone()
            return None if row is None else str(row[0])

        return self.transaction(tx, "read a key")

    def prune(self, retention_days: float) -> int:
        """Delete delivered and held rows not updated for ``retention_days``; return the count.

        In transactions of at most :data:`PRUNE_BATCH` rows, so that no statement of a large,
        long-unpruned ledger runs into the statement timeout."""

        def tx(cur: Any) -> int:
            cutoff = self.now(cur) - retention_days * 86400.0
            cur.execute(
                self.sql(
                    "DELETE FROM {t} WHERE delivery_key IN (SELECT delivery_key FROM {t}"
                    " WHERE status IN ('delivered', 'in_doubt') AND updated_at < ? LIMIT ?)"
                ),
                (cutoff, PRUNE_BATCH),
            )
            return int(cur.rowcount or 0)

        total = 0
        while True:
            n = self.transaction(tx, "prune old rows")
            total += n
            if n < PRUNE_BATCH:
                break
        if total:
            self.log.info("ledger: pruned %d row(s) older than %d days", total, retention_days)
        return total

    # ---- group-committed marks (marks.py) ----------------------------------------------

    def mark_sending(self, key: str) -> bool:
        self._leases.renew_if_overdue()
        return self._marks.sending(key)

    def mark_delivered(self, key: str, http_status: int) -> None:
        self._marks.delivered(key, http_status)

    def fence(self, keys: Sequence[str], delivered: Sequence[tuple[str, int]] = ()) -> set[str]:
        if keys:
            self._leases.renew_if_overdue()
        return self._marks.fence(keys, delivered)

    def flush(self) -> None:
        if not self._marks.flush() and self._closed:
            raise LedgerError(f"ledger {self.description} is closed")

    def _commit_marks(self, items: list[Mark]) -> set[str]:
        return self.transaction(
            lambda cur: write_marks(self.backend, self.identity, cur, items), COMMIT_WHAT
        )

    # ---- leases (leases.py) -----------------------------------------------------------

    def renew_leases(self) -> int:
        """Extend the lease of all our pending rows (one UPDATE); return the row count."""
        started = self._leases.clock()

        def tx(cur: Any) -> int:
            cur.execute(
                self.sql(
                    "UPDATE {t} SET lease_until = ?"
                    " WHERE owner = ? AND status IN ('pending', 'sending')"
                ),
                (self.now(cur) + self.lease_seconds, self.owner),
            )
            return int(cur.rowcount or 0)

        n = self.transaction(tx, "renew leases")
        self._leases.last_renewal = started
        return n
