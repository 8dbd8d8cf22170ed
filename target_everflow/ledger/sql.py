"""The SQL ledger: what SQLite and PostgreSQL share.

A backend (``sqlite.py``, ``postgres.py``) supplies the connection, the placeholders and the
array parameters. Every database call runs on the ledger's I/O thread (``io.py``); claims are
made in ``claims.py``, marks group-committed in ``marks.py``, leases renewed in ``leases.py``.

Other modules (reconciliation, run history, operator commands, the report) use the public
helpers only: ``transaction``, ``sql``, ``keys_param``, ``now``, ``query``, ``column_names``,
``lock_for_ddl``, ``table``, ``dialect`` and ``real_type``.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from target_everflow.ledger.base import (
    LOG,
    PSYCOPG2_MISSING,
    ClaimStatus,
    Ledger,
    LedgerError,
    default_timeout,
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
from target_everflow.ledger.urls import error_text
from target_everflow.retry import LEDGER_RETRY

_T = TypeVar("_T")
_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

PRUNE_BATCH = 10_000
"""Rows deleted per prune transaction."""


class SQLLedger(Ledger):
    """A ledger in a SQL table; see the module docstring. Use ``open_ledger`` to get one."""

    dialect: str
    """``sqlite`` or ``postgresql``."""
    real_type: str
    """The backend's floating point column type."""

    def __init__(
        self,
        *,
        description: str,
        table: str,
        lease_seconds: float,
        timeout: float | None = None,
        logger: logging.Logger | None = None,
        commit_delay: float = 0.002,
        max_batch: int = 10_000,
    ) -> None:
        if not lease_seconds > 0:
            raise LedgerError(f"the ledger lease must be > 0 seconds, got {lease_seconds!r}")
        timeout = default_timeout() if timeout is None else float(timeout)
        if not timeout > 0:
            raise LedgerError(f"ledger_timeout must be > 0 seconds, got {timeout!r}")
        if not _TABLE_RE.match(table):
            raise LedgerError(
                f"ledger_url {description}: table {table!r} is not a plain SQL identifier"
            )
        self.description = description
        self.owner = new_owner()
        self.scope = machine_scope()
        self.table = table
        """The ledger table (``?table=`` of ledger_url, else ``everflow_ledger``)."""
        self.lease_seconds = float(lease_seconds)
        self.timeout = timeout
        self.log = logger or LOG
        self._conn: Any = None
        self._closed = False
        self._io = LedgerIO(description, timeout, on_hang=self._fail)
        self._marks = MarkQueue(
            commit=self._commit_marks, run=self._io.call, check=self._check, logger=self.log,
            describe=lambda e: f"ledger {description}: could not commit delivered marks: "
            f"{self._describe_error(e)}",
            commit_delay=commit_delay, max_batch=max_batch,
        )  # fmt: skip
        self._leases = Leases(
            description=description, lease_seconds=self.lease_seconds, logger=self.log,
            renew=lambda: self.renew_leases(), hung=lambda: self._io.hung is not None,
            fail=self._fail,
        )  # fmt: skip

    # ---- backend hooks ----------------------------------------------------------------

    @abc.abstractmethod
    def _connect(self) -> None:
        """Open ``self._conn`` (on the I/O thread), with every timeout set."""

    @abc.abstractmethod
    def _begin(self) -> Any:
        """Start a write transaction; return a cursor."""

    @abc.abstractmethod
    def _commit(self) -> None: ...

    @abc.abstractmethod
    def _rollback(self) -> None: ...

    @abc.abstractmethod
    def _close_connection(self) -> None: ...

    @abc.abstractmethod
    def _insert_claims(self, cur: Any, keys: list[str], now: float, lease_until: float) -> set[str]:
        """INSERT pending rows ON CONFLICT DO NOTHING; return the keys actually inserted."""

    @abc.abstractmethod
    def _upsert_delivered(self, cur: Any, marks: list[tuple[str, int]], now: float) -> None:
        """Write ``delivered`` rows (insert or update; ``sent_at`` is ``now`` unless a row has
        one already), one statement for the batch."""

    @abc.abstractmethod
    def _write_metadata(self, cur: Any, rows: list[tuple[str, Mapping[str, Any]]]) -> None:
        """Write :data:`METADATA_COLUMNS` of our own rows (one statement per batch)."""

    def _lock_timed_out(self, exc: BaseException) -> bool:
        return False

    def _retryable(self, exc: BaseException) -> bool:
        """A transaction error worth retrying (deadlock, serialisation failure)."""
        return False

    def _describe_error(self, exc: BaseException) -> str:
        return error_text(exc)

    # ---- public helpers (run history, reconciliation, operator commands, report) ------

    @abc.abstractmethod
    def now(self, cur: Any) -> float:
        """The ledger's clock (epoch seconds; PostgreSQL's server clock)."""

    @abc.abstractmethod
    def sql(self, text: str) -> str:
        """``text`` for this database: ``?`` placeholders, ``{t}`` the ledger table,
        ``{in_keys}`` matched against :meth:`keys_param`."""

    @abc.abstractmethod
    def keys_param(self, keys: Sequence[str]) -> Any:
        """The parameter that ``{in_keys}`` expects."""

    @abc.abstractmethod
    def column_names(self, cur: Any, table: str | None = None) -> set[str]:
        """The column names of ``table`` (default: the ledger table), lower case."""

    def lock_for_ddl(self, cur: Any, name: str) -> None:
        """Serialise a CREATE ... IF NOT EXISTS named ``name`` with other processes until the
        transaction ends (PostgreSQL's catalog can collide; SQLite's BEGIN IMMEDIATE already
        serialises)."""

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
    def writer_commits(self) -> int:
        """The number of group-commit transactions (diagnostics, tests)."""
        return self._marks.commits

    # ---- life cycle -------------------------------------------------------------------

    def open(self, retention_days: int) -> None:
        """Connect, create the schema, prune, start the threads. Errors -> LedgerError."""
        self._io.start()
        try:
            self._io.call(self._connect_or_raise, "connect")
            self.transaction(lambda cur: create(self, cur), "create the ledger table")
            self.transaction(lambda cur: upgrade(self, cur), "upgrade the ledger table")
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
            self._connect()
        except LedgerError:
            raise
        except Exception as e:  # any driver/OS error is reported the same way
            raise LedgerError(self._describe_error(e)) from None

    def _abandon(self) -> None:
        """Give the connection up without waiting: it is closed when the I/O thread is free
        (never, if it is stuck: it is a daemon thread and goes with the process)."""
        self._closed = True
        self._io.stop(last=self._close_quietly)

    def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self._close_connection()
        self._conn = None

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
            if self._conn is None:
                raise LedgerError(f"ledger {self.description} is closed")
            try:
                cur = self._begin()
                result = fn(cur)
                self._commit()
                return result
            except LedgerError:
                self._rollback_quietly()
                raise
            except Exception as e:
                self._rollback_quietly()
                if self._retryable(e) and retry < LEDGER_RETRY.max_retries:
                    retry += 1
                    time.sleep(LEDGER_RETRY.delay(retry))
                    continue
                raise LedgerError(
                    f"ledger {self.description}: could not {what}: {self._describe_error(e)}"
                ) from None

    def _rollback_quietly(self) -> None:
        with contextlib.suppress(Exception):  # the connection may be gone; that is reported
            self._rollback()

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
            lambda cur: claim_rows(self, cur, sorted(ordered), metadata), "claim keys"
        )
        return {k: answers[k] for k in ordered}

    def _owner_is_dead(self, owner: str, scope: str) -> bool:
        """True when ``owner`` ran on this machine and its process no longer exists."""
        return owner_is_dead(owner, scope, self.scope)

    def release(self, keys: Sequence[str]) -> None:
        change_own_claims(self, "", keys, "release claims")

    def mark_held(self, keys: Sequence[str]) -> None:
        ks = sorted(set(keys))
        held = change_own_claims(
            self,
            "status = 'in_doubt', lease_until = NULL, updated_at = ?",
            ks,
            "mark keys held",
            now=True,
        )
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

    def flush(self) -> None:
        if not self._marks.flush() and self._closed:
            raise LedgerError(f"ledger {self.description} is closed")

    def _commit_marks(self, items: list[Mark]) -> set[str]:
        return self.transaction(lambda cur: write_marks(self, cur, items), COMMIT_WHAT)

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
