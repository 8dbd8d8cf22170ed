"""The ledger's backend: what differs between SQLite and PostgreSQL.

A :class:`Backend` owns the connection and knows its database's dialect: the placeholders, the
array parameters, the statements that are written differently (claim inserts, delivered
upserts, metadata writes) and what its errors mean (lock timeout, deadlock, the user-facing
text). The ledger (``sql.SQLLedger``) owns one backend, the way an SDK ``SQLSink`` owns its
connector, and calls only the methods below; the claim, mark and schema code (``claims.py``,
``marks.py``, ``schema.py``) get the backend and the ledger's identity (:class:`Identity`) as
arguments. Every method is called on the ledger's I/O thread (``io.py``).

This module imports nothing of the ledger but ``base.py``, so no module of the package imports
another in a cycle.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from target_everflow.ledger.base import LedgerError, default_timeout

_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Identity:
    """Who writes to the ledger: the run's ``owner`` (``host:pid:random``), its machine
    ``scope`` (see ``claims.machine_scope``) and the lease every claim it makes gets."""

    owner: str
    scope: str
    lease_seconds: float


class Backend(Protocol):
    """One database connection and its dialect; see the module docstring."""

    dialect: str
    """``sqlite`` or ``postgresql``."""
    real_type: str
    """The floating point column type."""
    table: str
    """The ledger table (a plain SQL identifier)."""
    description: str
    """The ledger URL as it may be shown (passwords masked)."""
    timeout: float
    """Setting ``ledger_timeout``: the database's lock, busy and statement waits."""

    @property
    def connected(self) -> bool:
        """Whether a connection is open (:meth:`connect` done, :meth:`close` not yet)."""

    def connect(self, log: logging.Logger) -> None:
        """Open the connection, with every timeout set."""

    def begin(self) -> Any:
        """Start a write transaction; return a cursor."""

    def commit(self) -> None: ...

    def rollback(self) -> None:
        """Roll back the open transaction, if any."""

    def close(self) -> None:
        """Close the connection (idempotent)."""

    def now(self, cur: Any) -> float:
        """The ledger's clock (epoch seconds; PostgreSQL's server clock)."""

    def sql(self, text: str) -> str:
        """``text`` for this database: ``?`` placeholders, ``{t}`` the ledger table,
        ``{in_keys}`` matched against :meth:`keys_param`, ``{owner}`` the owner column where
        ``delivery_key {in_keys}`` picks the rows (no index on the owner used for them)."""

    def keys_param(self, keys: Sequence[str]) -> Any:
        """The parameter that ``{in_keys}`` expects."""

    def column_names(self, cur: Any, table: str | None = None) -> set[str]:
        """The column names of ``table`` (default: the ledger table), lower case."""

    def lock_for_ddl(self, cur: Any, name: str) -> None:
        """Serialise a CREATE ... IF NOT EXISTS named ``name`` with other processes until the
        transaction ends."""

    def insert_claims(
        self, cur: Any, who: Identity, keys: list[str], now: float, lease_until: float
    ) -> set[str]:
        """INSERT pending rows of ``who`` ON CONFLICT DO NOTHING; the keys actually inserted."""

    def upsert_delivered(
        self, cur: Any, who: Identity, marks: list[tuple[str, int]], now: float
    ) -> None:
        """Write ``delivered`` rows (insert or update; ``sent_at`` is ``now`` unless a row has
        one already), one statement for the batch."""

    def write_metadata(
        self, cur: Any, who: Identity, rows: list[tuple[str, Mapping[str, Any]]]
    ) -> None:
        """Write ``METADATA_COLUMNS`` of ``who``'s rows (one statement per batch)."""

    def lock_timed_out(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the database giving up waiting for a lock (``ledger_timeout``)."""

    def retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` rolled back a transaction worth running again (deadlock,
        serialisation failure)."""

    def describe_error(self, exc: BaseException) -> str:
        """``exc`` in one user-facing line (no password)."""


def checked_timeout(timeout: float | None) -> float:
    """Setting ``ledger_timeout`` (None: its default), which must be > 0."""
    value = default_timeout() if timeout is None else float(timeout)
    if not value > 0:
        raise LedgerError(f"ledger_timeout must be > 0 seconds, got {timeout!r}")
    return value


def checked_table(description: str, table: str) -> str:
    """``table`` when it is a plain SQL identifier (it is written into statements)."""
    if not _TABLE_RE.match(table):
        raise LedgerError(
            f"ledger_url {description}: table {table!r} is not a plain SQL identifier"
        )
    return table
