"""The SQL ledger: what SQLite and PostgreSQL share (claims, marks, leases, transactions).

A backend (``sqlite.py``, ``postgres.py``) supplies the connection, the placeholders and the
array parameters; everything else is here. Every database call runs on the ledger's I/O thread
(``io.py``); ``delivered`` marks are group-committed (``marks.py``); claims are in
``claims.py``. A heartbeat thread extends the lease of all this run's pending rows every
``lease_seconds / 3``.

Other modules (reconciliation, run history, operator commands, the report) use the public
helpers only: :meth:`SQLLedger.transaction`, :meth:`~SQLLedger.sql`,
:meth:`~SQLLedger.keys_param`, :meth:`~SQLLedger.now`, :meth:`~SQLLedger.query`,
:meth:`~SQLLedger.column_names`, :meth:`~SQLLedger.lock_for_ddl`, :attr:`~SQLLedger.table`,
:attr:`~SQLLedger.dialect` and :attr:`~SQLLedger.real_type`.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import re
import threading
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
    lease_clock,
    new_owner,
)
from target_everflow.ledger.claims import claim_rows, machine_scope, owner_is_dead
from target_everflow.ledger.io import LedgerIO
from target_everflow.ledger.marks import Mark, MarkQueue
from target_everflow.ledger.schema import create_statements, missing_columns, recon_index
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
        self._timeout = timeout
        self.log = logger or LOG
        self._conn: Any = None
        self._closed = False
        self._io = LedgerIO(description, timeout, on_hang=self._fail)
        self._marks = MarkQueue(
            commit=self._commit_marks, check=self._check, logger=self.log,
            describe=lambda e: f"ledger {description}: could not commit delivered marks: "
            f"{self._describe_error(e)}",
            commit_delay=commit_delay, max_batch=max_batch,
        )  # fmt: skip
        # Leases. Time since the last renewal is measured on a clock that counts a suspend.
        self._clock: Callable[[], float] = lease_clock
        self._stop_heartbeat = threading.Event()
        self._renew_lock = threading.Lock()
        self._last_renewal = self._clock()
        self._heartbeat: threading.Thread | None = None

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
        """Write ``delivered`` rows (insert or update), one transaction for the batch."""

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

    def query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
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
            self.transaction(self._create_schema, "create the ledger table")
            self.transaction(self._upgrade_schema, "upgrade the ledger table")
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
        self._last_renewal = self._clock()
        self._heartbeat = threading.Thread(
            target=self._heartbeat_loop, name="ledger-heartbeat", daemon=True
        )
        self._marks.start()
        self._heartbeat.start()
        self.log.info("ledger %s opened (owner %s)", self.description, self.owner)

    def _connect_or_raise(self) -> None:
        try:
            self._connect()
        except LedgerError:
            raise
        except Exception as e:  # any driver/OS error is reported the same way
            raise LedgerError(self._describe_error(e)) from None

    def _create_schema(self, cur: Any) -> None:
        self.lock_for_ddl(cur, f"target_everflow_ledger:{self.table}")
        for stmt in create_statements(self.table, self.real_type):
            cur.execute(stmt)

    def _upgrade_schema(self, cur: Any) -> None:
        """Add the columns the table lacks: in place, idempotent, no data touched.

        Only a table that lacks a column is altered (an ALTER TABLE locks the whole table, so
        an up-to-date ledger is never locked for it). On PostgreSQL the lock is waited for at
        most ``ledger_timeout`` seconds (the lock timeout of every ledger statement); then opening
        fails with one clear line.
        """
        t = self.table
        missing = missing_columns(self.column_names(cur), self.real_type)
        if missing:
            # Two runs may upgrade at once: PostgreSQL's IF NOT EXISTS makes the second a no-op
            # (SQLite's BEGIN IMMEDIATE already serialises the check and the ALTER).
            add = "ADD COLUMN" if self.dialect == "sqlite" else "ADD COLUMN IF NOT EXISTS"
            try:
                for name, kind in missing:
                    cur.execute(f"ALTER TABLE {t} {add} {name} {kind}")
            except Exception as e:
                if self._lock_timed_out(e):
                    raise LedgerError(
                        f"could not upgrade the ledger table {t} in place (adding "
                        f"{len(missing)} column(s)): another process kept it locked for more "
                        f"than {self._timeout:g} s (ledger_timeout); run again once it has finished"
                    ) from None
                raise
            self.log.info(
                "ledger: table %s upgraded in place (added %s)", t, ", ".join(n for n, _ in missing)
            )
        cur.execute(recon_index(t))

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
        self._stop_heartbeat.set()
        # Both threads only wait for the I/O thread, with a deadline: these joins end.
        lost = self._marks.stop()
        if self._heartbeat is not None:
            self._heartbeat.join()
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

        def tx(cur: Any) -> dict[str, ClaimStatus]:
            # Sorted, so concurrent transactions lock overlapping keys in the same order.
            answers = claim_rows(self, cur, sorted(ordered))
            if metadata:
                ours = sorted(
                    k for k, s in answers.items()
                    if s in (ClaimStatus.CLAIMED, ClaimStatus.IN_DOUBT) and k in metadata
                )
                if ours:
                    self._write_metadata(cur, [(k, metadata[k]) for k in ours])
            return answers

        answers = self.transaction(tx, "claim keys")
        return {k: answers[k] for k in ordered}

    def _owner_is_dead(self, owner: str, scope: str) -> bool:
        """True when ``owner`` ran on this machine and its process no longer exists."""
        return owner_is_dead(owner, scope, self.scope)

    def _own_rows(self, set_sql: str, keys: Sequence[str], what: str, now: bool = False) -> set[str]:
        """``UPDATE {t} SET <set_sql>`` (or DELETE when ``set_sql`` is empty) of our pending or
        sending claims of ``keys``; the keys changed. ``now``: the ledger time is the first
        parameter of ``set_sql``."""
        self._check()
        ks = sorted(set(keys))
        if not ks:
            return set()
        head = f"UPDATE {{t}} SET {set_sql}" if set_sql else "DELETE FROM {t}"

        def tx(cur: Any) -> set[str]:
            cur.execute(
                self.sql(
                    f"{head} WHERE delivery_key {{in_keys}} AND status IN ('pending', 'sending')"
                    " AND owner = ? RETURNING delivery_key"
                ),
                ((self.now(cur),) if now else ()) + (self.keys_param(ks), self.owner),
            )
            return {r[0] for r in cur.fetchall()}

        return self.transaction(tx, what)

    def release(self, keys: Sequence[str]) -> None:
        self._own_rows("", keys, "release claims")

    def mark_held(self, keys: Sequence[str]) -> None:
        ks = set(keys)
        held = self._own_rows(
            "status = 'in_doubt', lease_until = NULL, updated_at = ?", ks, "mark keys held", now=True
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

    def prune(self, retention_days: int) -> int:
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
        self._renew_if_lease_may_have_expired()
        return self._marks.sending(key)

    def mark_delivered(self, key: str, http_status: int) -> None:
        self._marks.delivered(key, http_status)

    def flush(self) -> None:
        if not self._marks.flush() and self._closed:
            raise LedgerError(f"ledger {self.description} is closed")

    def _commit_marks(self, items: list[Mark]) -> set[str]:
        return self.transaction(lambda cur: self._write_marks(cur, items), "commit delivered marks")

    def _write_marks(self, cur: Any, items: list[Mark]) -> set[str]:
        now = self.now(cur)
        sending = sorted({k for k, status in items if status is None})
        marks = [(k, status) for k, status in items if status is not None]
        fenced: set[str] = set()
        if sending:
            # The fence: the owner check and the write are one statement, so a claim another
            # process took over (our lease had expired) changes no row and is not sent. It also
            # renews the claim's lease.
            cur.execute(
                self.sql(
                    "UPDATE {t} SET status = 'sending', lease_until = ?, updated_at = ?"
                    " WHERE delivery_key {in_keys} AND status IN ('pending', 'sending')"
                    " AND owner = ? RETURNING delivery_key"
                ),
                (now + self.lease_seconds, now, self.keys_param(sending), self.owner),
            )
            fenced = {r[0] for r in cur.fetchall()}
        if marks:
            self._upsert_delivered(cur, marks, now)
            cur.execute(  # the first accepted answer's time (a row written by 0.1.0: none)
                self.sql(
                    "UPDATE {t} SET sent_at = ? WHERE delivery_key {in_keys}"
                    " AND status = 'delivered' AND sent_at IS NULL"
                ),
                (now, self.keys_param(sorted({k for k, _ in marks}))),
            )
        return fenced

    # ---- leases -----------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        interval = self.lease_seconds / 3.0
        while not self._stop_heartbeat.wait(interval):
            if self._io.hung is not None:
                return  # the ledger stopped answering: the run is failing already
            try:
                self.renew_leases()
            except Exception as e:
                silent_for = self._clock() - self._last_renewal
                self.log.warning("ledger: could not renew leases (%s)", e)
                if silent_for >= self.lease_seconds:
                    self._fail(LedgerError(
                        f"ledger {self.description}: leases not renewed for {silent_for:.0f} s; "
                        f"other processes may take over this run's claims ({e})"
                    ))  # fmt: skip
                    return

    def renew_leases(self) -> int:
        """Extend the lease of all our pending rows (one UPDATE); return the row count."""
        started = self._clock()

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
        self._last_renewal = started
        return n

    def _renew_if_lease_may_have_expired(self) -> None:
        """Before a postback leaves: if the heartbeat is overdue (this process was paused, the
        machine suspended, the ledger slow), renew every lease first. Time since the last
        renewal is measured on ``lease_clock``, which keeps counting through a suspend."""
        if self._clock() - self._last_renewal < self.lease_seconds / 2:
            return
        with self._renew_lock:
            silent_for = self._clock() - self._last_renewal
            if silent_for < self.lease_seconds / 2:
                return  # another sender renewed meanwhile
            self.log.warning(
                "ledger: leases last renewed %.0f s ago (lease %.0f s; was this process paused "
                "or the machine suspended?): renewing them before sending more",
                silent_for,
                self.lease_seconds,
            )
            self.renew_leases()
