"""The idempotency ledger: every Everflow postback is sent at most once per delivery key.

How the exactly-once guarantee is built
=======================================

Each conversion has a *delivery key* (computed by ``mapping.py``). The delivery engine uses the
ledger like this, for one batch::

    statuses = ledger.claim(keys)          # ONE transaction per chunk (max_concurrency keys)
    # CLAIMED   -> send it, each attempt after its fence returned True (ledger.fence for a
    #              dispatcher tick's freed slots, ledger.mark_sending(key) for one retry)
    # DELIVERED -> skip, reason duplicate  (an earlier run or another process delivered it)
    # HELD      -> skip, reason duplicate  (an earlier in-doubt key kept for a person)
    # TAKEN_OVER -> a dead owner's claim was taken over: setting ``in_doubt`` decides:
    #              resend -> send it; dead_letter -> dead-letter it and call mark_held(keys)
    # BUSY      -> another live process (or an earlier claim of ours) holds it: claim again later
    ledger.fence(next_keys, [(key, http_status), ...])  # Everflow accepted those: delivered,
                                             # and the next ones fenced, in ONE commit
    ledger.release(keys)                     # the send failed / was dead-lettered: retry later
    ledger.flush()                           # before Singer STATE is emitted

* Claims are atomic: the key is the primary key, new keys are claimed with
  ``INSERT ... ON CONFLICT DO NOTHING ... RETURNING`` and stale claims are taken over with a
  conditional ``UPDATE ... WHERE owner = <the stale owner> ... RETURNING``. There is no
  check-then-insert, so two processes sharing one PostgreSQL ledger never both own a key (and a
  SQLite file is additionally serialised by ``BEGIN IMMEDIATE``).
* A claim is *pending* with an owner (``f"{hostname}:{pid}:{random}"``) and a lease
  (``lease_until``). While a ledger is open a heartbeat thread extends the lease of all its
  pending rows every ``lease_seconds / 3``, so a live claim never expires, however slow the
  (rate-limited) batch is.
* A pending row whose owner died is *in doubt*: Everflow may or may not have received it. It
  is taken over when its lease has expired or, immediately, when the owner ran on this machine
  (same hostname and same boot / PID namespace) and its pid no longer exists (fast restart after
  a crash).
* ``mark_sending`` is the fence: one ``UPDATE ... WHERE owner = <us> ... RETURNING`` that marks
  the claim *sending* and renews its lease; it answers False when another process took the
  claim over (our lease expired while this one was paused, suspended or cut off), and then the
  postback is not sent. When the heartbeat is overdue (time since the last renewal, measured on
  ``CLOCK_BOOTTIME``, which keeps counting through a suspend, is over half the lease) the
  caller renews every lease before its postback leaves.
* ``mark_delivered`` is committed by a background writer within a few milliseconds, batching
  all queued marks into one transaction; ``flush()`` waits for them and raises
  :class:`LedgerError` if a commit failed, so a mark is never silently lost and no STATE is
  emitted past a delivery that is not in the ledger.

* Every database call runs on one I/O thread that owns the connection; callers wait for it
  with a deadline (``ledger_timeout`` + 5 s). PostgreSQL connections get connect, lock, statement
  and idle-in-transaction timeouts and TCP keepalives; SQLite's busy wait is ``ledger_timeout``.
  A ledger that does not answer raises :class:`LedgerError` naming the wait, and the main
  thread never blocks in libpq or SQLite, so SIGTERM is always handled
  (:meth:`Ledger.stop_waiting_after` bounds every wait to the stop grace).

Therefore a conversion is sent twice **only** if the process died (or lost its database)
between Everflow's answer and the ledger commit of ``delivered`` (a few milliseconds), and only
when ``in_doubt=resend``; with ``in_doubt=dead_letter`` such a conversion is never re-sent
automatically, it is dead-lettered and held for a person.

Backends (``ledger_url``)
=========================

* unset / empty: SQLite at ``<default_dir>/ledger.sqlite3`` (the caller passes the state directory, next to the dead letters).
* ``sqlite:///relative/path.db`` (relative to the working directory) or
  ``sqlite:////absolute/path.db``, as SQLAlchemy writes them. One machine; several processes may share the file (WAL mode, local disks only).
* ``postgresql://user:pass@host:port/db`` or ``postgres://...``: shared by many processes and
  machines; needs ``pip install 'target-everflow[postgres]'``. Other query parameters
  (``sslmode=...``) are passed to libpq. A libpq keyword/value string (``host=... dbname=...
  password=...``) works too. The URL is read by ``urls.py`` (``pg_params``) and handed to
  libpq as keywords; it is printed only through :func:`redact_url`, which fails closed.
* ``none``: no ledger (:class:`NullLedger`); every key is claimable, so a re-run re-sends
  everything. Unsafe except for one-off loads.

Both SQL backends accept ``?table=<identifier>`` in the URL to use another table than
``everflow_ledger`` (tests use it to isolate runs; it also lets several pipelines share one
database with separate ledgers).

Times are epoch seconds stored as floating point columns. SQLite uses the local clock;
PostgreSQL uses the *server's* clock (``clock_timestamp()``), so hosts with skewed clocks agree
on lease expiry.

Delivered and held rows older than ``retention_days`` (updated_at) are pruned when a ledger is
opened; a conversion replayed after that is no longer recognised as a duplicate.

The package
===========

* ``base.py``: the contract: :class:`Ledger`, :class:`ClaimStatus`, :class:`LedgerError`, the
  row statuses, :class:`NullLedger`;
* ``urls.py``: reading ``ledger_url`` (SQLite path, libpq keywords, ``table=``) and
  :func:`redact_url`;
* ``backend.py``: :class:`Backend`, what a database must provide (the connection,
  placeholders, array parameters, the statements written differently, what its errors mean),
  and :class:`Identity` (this run's owner, scope and lease);
* ``sql.py``: :class:`SQLLedger`, the ledger: one object owning one backend, and the public
  helpers the run history, reconciliation, operator commands and report use (``transaction``,
  ``sql``, ``keys_param``, ``now``, ``query``, ``column_names``, ``lock_for_ddl``, ``table``,
  ``dialect``, ``real_type``);
* ``io.py`` (the I/O thread and its deadlines), ``marks.py`` (the group commit),
  ``claims.py`` (owners and the claim statements), ``schema.py`` (create, upgrade in place),
  ``leases.py`` (the heartbeat): functions of a backend and an identity, called by the ledger;
* ``sqlite.py``, ``postgres.py``: the backends (:class:`SQLiteBackend`,
  :class:`PostgresBackend`) and the ledgers on them; :func:`open_ledger` (here) picks one.

No module of the package uses another's private names, and none imports another in a cycle.
"""

from __future__ import annotations

import logging
import pathlib
import urllib.parse
from typing import Any

from target_everflow.ledger.backend import Backend, Identity
from target_everflow.ledger.base import (
    DEFAULT_SQLITE_RELPATH,
    DEFAULT_TABLE,
    DELIVERED_STATUS,
    HELD_STATUS,
    LOG,
    METADATA_COLUMNS,
    PENDING_STATUS,
    PSYCOPG2_MISSING,
    SENDING_STATUS,
    ClaimStatus,
    Ledger,
    LedgerError,
    NullLedger,
    lease_clock,
)
from target_everflow.ledger.io import ANSWER_MARGIN, STOP_FLOOR
from target_everflow.ledger.postgres import PostgresBackend, PostgresLedger
from target_everflow.ledger.schema import ADDED_COLUMNS
from target_everflow.ledger.sql import PRUNE_BATCH, SQLLedger
from target_everflow.ledger.sqlite import SQLiteBackend, SQLiteLedger
from target_everflow.ledger.urls import (
    HIDDEN_URL,
    is_postgres,
    redact_url,
    scheme_of,
    split_table,
    url_secrets,
)

_url_secrets = url_secrets  # the name before the package (tests use it)

__all__ = [
    "ADDED_COLUMNS",
    "ANSWER_MARGIN",
    "Backend",
    "DEFAULT_SQLITE_RELPATH",
    "DEFAULT_TABLE",
    "DELIVERED_STATUS",
    "HELD_STATUS",
    "HIDDEN_URL",
    "Identity",
    "METADATA_COLUMNS",
    "PENDING_STATUS",
    "PRUNE_BATCH",
    "PSYCOPG2_MISSING",
    "SENDING_STATUS",
    "STOP_FLOOR",
    "ClaimStatus",
    "Ledger",
    "LedgerError",
    "NullLedger",
    "PostgresBackend",
    "PostgresLedger",
    "SQLLedger",
    "SQLiteBackend",
    "SQLiteLedger",
    "lease_clock",
    "open_ledger",
    "redact_url",
    "url_secrets",
]


def open_ledger(
    url: str | None,
    *,
    default_dir: pathlib.Path,
    lease_seconds: float,
    retention_days: int,
    timeout: float | None = None,
    logger: logging.Logger | None = None,
) -> Ledger:
    """Open the ledger named by setting ``ledger_url``.

    ``None``/``""`` -> SQLite at ``default_dir/ledger.sqlite3``;
    ``"none"`` -> :class:`NullLedger`; ``sqlite://...``; ``postgresql://...``/``postgres://...``
    (optionally ``?table=name``) or a libpq keyword/value string (``host=... dbname=...``,
    optionally ``table=name``). Creates the schema, prunes delivered/held rows older than
    ``retention_days`` (``<= 0``: keep everything) and starts the writer and heartbeat threads.
    ``timeout``: setting ``ledger_timeout`` (None: its default).

    Raises :class:`LedgerError` naming ``ledger_url`` (through :func:`redact_url`) when it
    cannot be opened.
    """
    log = logger or LOG
    text = (url or "").strip()
    kwargs: dict[str, Any] = {"lease_seconds": lease_seconds, "timeout": timeout, "logger": log}
    ledger: SQLLedger
    if text.lower() == "none":
        log.warning(
            "ledger_url is none: no idempotency ledger; a re-run or replay will send the same "
            "conversions to Everflow again"
        )
        return NullLedger()
    scheme = scheme_of(text)
    if not text:
        ledger = SQLiteLedger(pathlib.Path(default_dir) / DEFAULT_SQLITE_RELPATH, **kwargs)
    elif scheme == "sqlite":
        if redact_url(text) == HIDDEN_URL:  # e.g. sqlite://user:pass@host/...: not a file
            raise LedgerError(
                f"ledger_url {HIDDEN_URL} is not a valid SQLite URL (expected sqlite:///path/ledger.db)"
            )
        base, table = split_table(text)
        raw_path = base[len("sqlite:") :]
        # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute/path.db
        if raw_path.startswith("//"):
            raw_path = raw_path[2:]
        if raw_path.startswith("/"):
            raw_path = raw_path[1:]
        if not raw_path:
            raise LedgerError(
                f"ledger_url {redact_url(text)} has no file path (expected sqlite:///path/ledger.db)"
            )
        ledger = SQLiteLedger(pathlib.Path(urllib.parse.unquote(raw_path)), table=table, **kwargs)
    elif is_postgres(text):
        ledger = PostgresLedger(text, **kwargs)
    else:
        raise LedgerError(
            f"ledger_url {redact_url(text)} is not supported: expected "
            "sqlite:///path/ledger.db, postgresql://user:password@host:port/db, a PostgreSQL "
            "connection string (host=... dbname=...) or none"
        )
    ledger.open(retention_days)
    return ledger
