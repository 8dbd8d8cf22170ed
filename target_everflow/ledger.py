"""The idempotency ledger: every Everflow postback is sent at most once per delivery key.

How the exactly-once guarantee is built
=======================================

Each conversion has a *delivery key* (computed by ``mapping.py``). The delivery engine uses the
ledger like this, for one batch::

    statuses = ledger.claim(keys)          # ONE transaction for the whole batch
    # CLAIMED   -> send it, each attempt after ledger.mark_sending(key) returned True (the fence)
    # DELIVERED -> skip, reason duplicate  (an earlier run or another process delivered it)
    # HELD      -> skip, reason duplicate  (an earlier in-doubt key kept for a person)
    # IN_DOUBT  -> a dead owner's claim was taken over: setting ``in_doubt`` decides:
    #              resend -> send it; dead_letter -> dead-letter it and call mark_held(keys)
    # BUSY      -> another live process (or an earlier claim of ours) holds it: claim again later
    ledger.mark_delivered(key, http_status)  # Everflow accepted it (queued, group commit)
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
  password=...``) works too. The URL is read by this module (:func:`_pg_params`) and handed to
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
"""

from __future__ import annotations

import abc
import collections
import contextlib
import enum
import functools
import json
import logging
import math
import os
import pathlib
import queue
import random
import re
import secrets
import socket
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple, TypeVar, cast

from target_everflow.masking import mask

__all__ = [
    "ClaimStatus",
    "Ledger",
    "LedgerError",
    "NullLedger",
    "PostgresLedger",
    "SQLiteLedger",
    "open_ledger",
    "redact_url",
]

_LOG = logging.getLogger(__name__)

DEFAULT_TABLE = "everflow_ledger"
DEFAULT_SQLITE_RELPATH = pathlib.Path("ledger.sqlite3")
PSYCOPG2_MISSING = (
    "ledger_url is PostgreSQL but psycopg2 is not installed: "
    "pip install 'target-everflow[postgres]'"
)

# Row statuses (the ``status`` column).
PENDING = "pending"
SENDING = "sending"  # a postback for it may have left: after a crash it is in doubt
DELIVERED = "delivered"
HELD = "in_doubt"  # terminal: an in-doubt key that was dead-lettered and is kept for a person

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
    # what Everflow made of it (target_everflow/reconcile.py); recon_status NULL = unchecked
    ("recon_status", "TEXT"),  # confirmed, pending, rejected, not_found
    ("recon_error_code", "INTEGER"),
    ("recon_error_message", "TEXT"),
    ("recon_checked_at", "{real}"),
    ("recon_owner", "TEXT"),  # the run reconciling the key right now, with a lease
    ("recon_lease_until", "{real}"),
)
METADATA_COLUMNS = (
    "stream", "event", "transaction_id", "message_id", "adv_event_id", "order_id", "amount",
    "event_time",
)
"""What ``claim(keys, metadata)`` writes for each key (the metadata mapping's keys)."""

_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_T = TypeVar("_T")

ANSWER_MARGIN = 5.0
"""Seconds a caller waits for the ledger beyond ``ledger_timeout`` (the database's own lock and
statement timeouts fire first and say more) before it gives up on an unanswering ledger."""
STOP_FLOOR = 0.5
"""Seconds any ledger call may still take once the stop grace is over."""
PRUNE_BATCH = 10_000
"""Rows deleted per prune transaction."""


def _pick_lease_clock() -> Callable[[], float]:
    """CLOCK_BOOTTIME where there is one (Linux): unlike ``time.monotonic`` it keeps counting
    while the machine is suspended, which is exactly when a lease runs out unnoticed."""
    clock_id = getattr(time, "CLOCK_BOOTTIME", None)
    if clock_id is not None:
        try:
            time.clock_gettime(clock_id)
        except OSError:
            pass
        else:
            return functools.partial(time.clock_gettime, clock_id)
    return time.monotonic


lease_clock = _pick_lease_clock()
"""Seconds on the clock that measures time since the last lease renewal."""


def _default_timeout() -> float:
    """Setting ``ledger_timeout``'s default, from the config schema (the one place defaults live)."""
    from target_everflow.settings import CONFIG_SCHEMA  # noqa: PLC0415 - settings pulls in the SDK

    return float(CONFIG_SCHEMA["properties"]["ledger_timeout"]["default"])


class ClaimStatus(enum.Enum):
    """The answer of :meth:`Ledger.claim` for one key."""

    CLAIMED = "claimed"  # ours now: send it
    DELIVERED = "delivered"  # already delivered: skip as duplicate
    HELD = "held"  # an in-doubt key kept for a person (terminal): skip as duplicate
    IN_DOUBT = "in_doubt"  # a dead owner's claim, now ours: apply setting in_doubt
    BUSY = "busy"  # pending under another live owner: claim again later


class LedgerError(Exception):
    """The ledger cannot be used. The message is user-facing and never contains a password."""


# --------------------------------------------------------------------------------------------
# URLs and secrets
#
# ``ledger_url`` leaves the process only through :func:`redact_url`, which fails closed: when it
# cannot tell for sure where the password is, it prints ``<ledger_url hidden>``. Connections are
# made from the same reading of the URL (:func:`_pg_params`), never by handing the raw text to
# libpq, so libpq's own error messages cannot echo a piece of a password that we read
# differently (an unencoded ``/`` makes libpq take part of the password for the host).

HIDDEN_URL = "<ledger_url hidden>"
_SECRET_KEYS = frozenset({"password", "pass", "passwd", "pwd", "sslpassword"})
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")
_KEYWORD_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")
_PG_SCHEMES = frozenset({"postgresql", "postgres"})


class _Reading(NamedTuple):
    """One reading of a ``ledger_url``: what may be shown, and every secret-looking value."""

    shown: str
    secrets: frozenset[str]


def redact_url(url: str | None) -> str:
    """``ledger_url`` as it may be printed: passwords shown as ``***``; ``<ledger_url hidden>``
    when the URL cannot be read with certainty. The only way ``ledger_url`` reaches any output.

    >>> redact_url("postgresql://user:s3cret@db.example:5432/app?sslmode=require")
    'postgresql://user:***@db.example:5432/app?sslmode=require'
    >>> redact_url("host=db port=5432 dbname=app password='s3 cret'")
    'host=db port=5432 dbname=app password=***'
    """
    try:
        return _read_url(url or "").shown
    except Exception:  # noqa: BLE001 - fail closed, whatever went wrong
        return HIDDEN_URL


def _url_secrets(url: str) -> frozenset[str]:
    """Every value of ``url`` that may be a password (raw, percent-decoded, each reading of an
    ambiguous URL), to scrub from driver error texts."""
    try:
        return _read_url(url).secrets
    except Exception:  # noqa: BLE001
        return frozenset({url})


def _read_url(url: str) -> _Reading:
    text = url.strip()
    if not text or text.lower() == "none":
        return _Reading(text, frozenset())
    scheme_match = _SCHEME_RE.match(text)
    if scheme_match is None:
        pairs = _parse_keywords(text) if _KEYWORD_RE.match(text) else None
        if pairs is None:  # neither a URL nor a libpq connection string: say nothing of it
            return _Reading(HIDDEN_URL, frozenset({text}))
        found = {v for k, v, _ in pairs if k.lower() in _SECRET_KEYS}
        found |= {raw for k, _, raw in pairs if k.lower() in _SECRET_KEYS}
        shown = " ".join(
            f"{k}=***" if k.lower() in _SECRET_KEYS else f"{k}={_keyword_quote(v)}"
            for k, v, _ in pairs
        )
        return _Reading(shown, frozenset(found))
    scheme = scheme_match.group(1)
    rest = text[scheme_match.end() :]
    if scheme.lower() == "sqlite":  # sqlite:///path: no authority, and a path is no secret
        if rest.partition("/")[0]:
            return _Reading(HIDDEN_URL, frozenset({rest}))
        base, question, query = rest.partition("?")
        shown_query, query_secrets = _mask_query(query)
        shown = f"{scheme}://{base}" + (f"?{shown_query}" if question else "")
        return _Reading(shown, frozenset(query_secrets))
    found: set[str] = set()
    # The userinfo ends at the LAST "@": a password with an unencoded "@" is masked whole.
    userinfo, at, hostpart = rest.rpartition("@")
    unsure = False
    if at:
        # Every other reading of the "@"s too, for the scrub of error texts.
        for i, char in enumerate(rest):
            if char == "@" and ":" in rest[:i]:
                candidate = rest[:i].split(":", 1)[1]
                found |= {candidate, urllib.parse.unquote(candidate)}
        user, colon, password = userinfo.partition(":")
        if colon:
            found |= {password, urllib.parse.unquote(password)}
        # A "/", "?" or "#" before the ":", or between two "@"s, means an "@" may belong to a
        # path or a query rather than end the password: which one is not certain.
        between = rest[rest.index("@") : len(userinfo)]
        unsure = any(c in user or c in between for c in "/?#")
        authority = f"{user}:***@" if colon else f"{user}@"
    else:
        authority = ""
    base, question, query = hostpart.partition("?")
    shown_query, query_secrets = _mask_query(query)
    found |= query_secrets
    if unsure:
        return _Reading(HIDDEN_URL, frozenset(found))
    shown = f"{scheme}://{authority}{base}" + (f"?{shown_query}" if question else "")
    if scheme.lower() in _PG_SCHEMES and rest.count("@") <= 1 and not query_secrets:
        shown = _sqlalchemy_shown(text, found, shown)
    return _Reading(shown, frozenset(found))


def _sqlalchemy_shown(text: str, secrets: set[str], ours: str) -> str:
    """SQLAlchemy's rendering of a plain URL, if it reads the password as we do and shows no
    secret more often than our own rendering does (ours has every password-like value masked,
    so a secret shows there only where it is also something else, e.g. a user named alike)."""
    try:
        from sqlalchemy.engine import make_url  # noqa: PLC0415 - only needed here

        parsed = make_url(text)
        if parsed.password is not None and str(parsed.password) not in secrets:
            return ours
        shown = parsed.render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not SQLAlchemy's idea of a URL: ours stands
        return ours
    visible, baseline = shown.replace("***", "\0"), ours.replace("***", "\0")
    if any(visible.count(s) > baseline.count(s) for s in secrets if s):
        return ours
    return shown


def _mask_query(query: str) -> tuple[str, set[str]]:
    """A URL query with its password-like values shown as ``***`` (raw pieces kept as
    written), and those values. The whole rest of a piece is the value, ``#`` included."""
    if not query:
        return query, set()
    pieces, secrets = [], set()
    for piece in query.split("&"):
        key, eq, value = piece.partition("=")
        if urllib.parse.unquote_plus(key).lower() in _SECRET_KEYS:
            secrets |= {value, urllib.parse.unquote(value), urllib.parse.unquote_plus(value)}
            pieces.append(f"{key}=***" if eq else key)
        else:
            pieces.append(piece)
    return "&".join(pieces), {s for s in secrets if s}


def _parse_keywords(text: str) -> list[tuple[str, str, str]] | None:
    """A libpq keyword/value connection string (``host=h dbname=d password='a b'``) as
    ``(key, value, raw value)`` triples, or None when it is not one (libpq's quoting rules:
    single quotes, backslash escapes)."""
    pairs: list[tuple[str, str, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i == n:
            return pairs or None
        match = _KEYWORD_RE.match(text, i)
        if match is None:
            return None
        i = start = match.end()
        chars: list[str] = []
        quoted = i < n and text[i] == "'"
        if quoted:
            i += 1
        while True:
            if i >= n:
                if quoted:
                    return None  # unterminated quote
                break
            char = text[i]
            if char == "\\" and i + 1 < n:
                chars.append(text[i + 1])
                i += 2
                continue
            if quoted and char == "'":
                i += 1
                break
            if not quoted and char.isspace():
                break
            chars.append(char)
            i += 1
        if not quoted and not chars:
            return None  # "key=" with nothing: libpq would read the next word as the value
        pairs.append((match.group(1), "".join(chars), text[start:i]))


def _keyword_quote(value: str) -> str:
    if value and not any(c.isspace() or c in "'\\" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _pg_params(text: str) -> tuple[dict[str, str], str]:
    """The libpq connection keywords of a PostgreSQL ``ledger_url`` (a URL or a keyword/value
    string) read exactly as :func:`redact_url` reads it, and the ledger table (``table=``).
    Raises :class:`LedgerError` (saying nothing of the URL) when it cannot be read."""
    table = DEFAULT_TABLE
    params: dict[str, str] = {}
    scheme_match = _SCHEME_RE.match(text)
    if scheme_match is None:
        pairs = _parse_keywords(text)
        if pairs is None:
            raise LedgerError("ledger_url is not a PostgreSQL URL or connection string")
        for key, value, _ in pairs:
            params[key] = value
    else:
        rest = text[scheme_match.end() :]
        userinfo, at, hostpart = rest.rpartition("@")
        if at:
            user, colon, password = userinfo.partition(":")
            if user:
                params["user"] = urllib.parse.unquote(user)
            if colon:
                params["password"] = urllib.parse.unquote(password)
        base, _, query = hostpart.partition("?")
        hosts, _, dbname = base.partition("/")
        names, ports = [], []
        for host in hosts.split(",") if hosts else []:
            if host.startswith("["):  # [IPv6]:port
                name, _, after = host[1:].partition("]")
                port = after[1:] if after.startswith(":") else ""
            else:
                name, _, port = host.partition(":")
            names.append(urllib.parse.unquote(name))
            ports.append(urllib.parse.unquote(port))
        if any(names):
            params["host"] = ",".join(names)
        if any(ports):
            params["port"] = ",".join(ports)
        if dbname:
            params["dbname"] = urllib.parse.unquote(dbname)
        for piece in query.split("&") if query else []:
            key, _, value = piece.partition("=")
            params[urllib.parse.unquote(key)] = urllib.parse.unquote(value)
    table = params.pop("table", table)
    return params, table


def _scrub(text: str, secret_values: set[str]) -> str:
    return mask(text, secret_values)


def _error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # libpq messages span lines
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# Owners


def _machine_scope() -> str:
    """What must match, besides the hostname, for a pid to be meaningful to us.

    Containers using the host's network (``--network host``, ``hostNetwork: true``) share the
    hostname but not the PID namespace; a pid from another namespace would look dead to us. A
    reboot also recycles pids. So the fast "owner's pid is gone" takeover applies only when the
    boot id and the PID namespace match too (where they cannot be read, both sides record "").
    """
    try:
        boot = pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except (OSError, AttributeError):
        pidns = ""
    return f"{boot}|{pidns}" if (boot or pidns) else ""


def _pid_alive(pid: int) -> bool:
    """False only when we are sure the process is gone."""
    if pid <= 0 or os.name != "posix":  # on Windows os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: exists under another user
        return True
    return True


def _parse_owner(owner: str) -> tuple[str, int] | None:
    host, sep, _random = owner.rpartition(":")
    if not sep:
        return None
    host, sep, pid = host.rpartition(":")
    if not sep or not pid.isdigit():
        return None
    return host, int(pid)


# --------------------------------------------------------------------------------------------
# The interface


class Ledger(abc.ABC):
    """The idempotency ledger shared by :class:`SQLiteLedger`, :class:`PostgresLedger` and
    :class:`NullLedger`. Thread-safe. Use :func:`open_ledger` to get one."""

    description: str
    owner: str

    @abc.abstractmethod
    def claim(
        self, keys: Sequence[str], metadata: Mapping[str, Mapping[str, Any]] | None = None
    ) -> dict[str, ClaimStatus]:
        """Claim a whole batch in one transaction; one answer per distinct key, in input order.

        ``metadata`` (key -> :data:`METADATA_COLUMNS` values) is written, in the same
        transaction, to the rows this call made ours (claimed or in doubt), so held and
        in-doubt keys know what they were too.
        """

    @abc.abstractmethod
    def mark_delivered(self, key: str, http_status: int) -> None:
        """Queue ``key`` as delivered; committed by the writer thread within a few ms."""

    def mark_sending(self, key: str) -> bool:
        """Record, durably, that a postback for ``key`` is about to leave; blocks until committed.

        The fence: True only when the committed write proved that this process still holds the
        claim (one statement: our owner, still pending or sending; its lease renewed). False:
        another process took the claim over (our lease expired while we were paused, suspended
        or cut off) or it is no longer pending: the postback must not be sent. Called before
        every attempt.

        Only a claim marked sending can be *in doubt* after a crash: claims a dead run never
        got to send are taken over as plain claims, so in-doubt keys stay few (at most the
        dead run's requests in flight).
        """
        return True

    def stop_waiting_after(self, seconds: float) -> None:
        """The run is stopping (a signal): every wait for the ledger, current or later, ends
        within ``seconds`` (a :class:`LedgerError` if the ledger has not answered by then)."""

    @abc.abstractmethod
    def release(self, keys: Sequence[str]) -> None:
        """Delete our pending claims of ``keys`` (send failed or dead-lettered): retried later."""

    @abc.abstractmethod
    def mark_held(self, keys: Sequence[str]) -> None:
        """Make our pending claims of ``keys`` terminal ``in_doubt`` (kept for a person)."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Block until every queued mark is committed; raise :class:`LedgerError` if one failed."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush, stop the threads, close the connection. Pending claims stay pending."""

    @abc.abstractmethod
    def status(self, key: str) -> str | None:
        """The committed row status (``pending``/``delivered``/``in_doubt``) or None."""

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:  # do not mask the exception that is already propagating
            self.close()
        except LedgerError as close_error:
            _LOG.error("ledger %s: %s", self.description, close_error)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description} owner={self.owner}>"


def _new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class NullLedger(Ledger):
    """``ledger_url: none``: nothing is kept across runs.

    UNSAFE for re-runs: a replayed or re-read conversion is sent again. Within one run it still
    dedupes (two records with one key are one conversion), in memory.
    """

    def __init__(self) -> None:
        self.description = "none"
        self.owner = _new_owner()
        self._claimed: set[str] = set()
        self._delivered: set[str] = set()

    def claim(
        self, keys: Sequence[str], metadata: Mapping[str, Mapping[str, Any]] | None = None
    ) -> dict[str, ClaimStatus]:
        result: dict[str, ClaimStatus] = {}
        for key in keys:
            if key in result:
                continue
            if key in self._delivered:
                result[key] = ClaimStatus.DELIVERED
            elif key in self._claimed:
                result[key] = ClaimStatus.BUSY
            else:
                self._claimed.add(key)
                result[key] = ClaimStatus.CLAIMED
        return result

    def mark_delivered(self, key: str, http_status: int) -> None:
        self._claimed.discard(key)
        self._delivered.add(key)

    def release(self, keys: Sequence[str]) -> None:
        self._claimed.difference_update(keys)

    def mark_held(self, keys: Sequence[str]) -> None:
        self.release(keys)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def status(self, key: str) -> str | None:
        if key in self._delivered:
            return "delivered"
        return "pending" if key in self._claimed else None


# --------------------------------------------------------------------------------------------
# The SQL ledger (shared logic; the two backends differ in connection, placeholders and arrays)


class _Job:
    """One piece of ledger I/O for the I/O thread, and its outcome."""

    __slots__ = ("cancelled", "done", "error", "fn", "result", "started")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.started = False
        self.cancelled = False


class _SQLLedger(Ledger):
    """Claims, the group-commit writer thread and the lease heartbeat thread.

    Every database call runs on one I/O thread (``ledger-io``), which owns the connection;
    callers wait for it with a deadline (``timeout`` + :data:`ANSWER_MARGIN`). So no thread,
    and above all not the main thread (the only one Python runs signal handlers on), is ever
    stuck in libpq or in SQLite's busy wait: a ledger that does not answer fails the run
    (:class:`LedgerError`, exit 4) naming the wait, and SIGTERM is always handled.
    """

    #: SQL fragment matching ``delivery_key`` against one list parameter.
    _IN_KEYS: str

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
        timeout = _default_timeout() if timeout is None else float(timeout)
        if not timeout > 0:
            raise LedgerError(f"ledger_timeout must be > 0 seconds, got {timeout!r}")
        if not _TABLE_RE.match(table):
            raise LedgerError(
                f"ledger_url {description}: table {table!r} is not a plain SQL identifier"
            )
        self.description = description
        self.owner = _new_owner()
        self._hostname = socket.gethostname()
        self._scope = _machine_scope()
        self._table = table
        self._lease = float(lease_seconds)
        self._timeout = timeout
        self._log = logger or _LOG
        self._commit_delay = commit_delay
        self._max_batch = max_batch

        self._conn: Any = None
        self._closed = False

        # The I/O thread and its jobs.
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._jobs_lock = threading.Lock()
        self._io: threading.Thread | None = None
        self._hung: LedgerError | None = None  # set once a wait ran out: fail fast from then on
        self._give_up_at: float | None = None  # time.monotonic() deadline once the run stops

        # Writer state, all guarded by _cond.
        self._cond = threading.Condition()
        self._queue: list[tuple[str, int | None]] = []  # (key, http status) or (key, None) = sending
        self._enqueued = 0
        self._committed = 0
        self._flush_waiters = 0
        self._stopping = False
        self._failed: LedgerError | None = None
        self._fenced: dict[str, bool] = {}  # mark_sending's answers, by key
        self.writer_commits = 0  # number of writer transactions (diagnostics, tests)

        # Leases. Time since the last renewal is measured on a clock that counts a suspend.
        self._clock: Callable[[], float] = lease_clock
        self._stop_heartbeat = threading.Event()
        self._renew_lock = threading.Lock()
        self._last_renewal = self._clock()
        self._writer: threading.Thread | None = None
        self._heartbeat: threading.Thread | None = None

    # ---- backend hooks ----------------------------------------------------------------

    @abc.abstractmethod
    def _connect(self) -> None:
        """Open ``self._conn`` (on the I/O thread), with every timeout set."""

    @abc.abstractmethod
    def _create_schema(self, cur: Any) -> None:
        """CREATE TABLE / INDEX IF NOT EXISTS (inside a transaction)."""

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
    def _now(self, cur: Any) -> float:
        """The ledger clock, epoch seconds."""

    @abc.abstractmethod
    def _sql(self, sql: str) -> str:
        """Fill ``{t}``/``{in_keys}`` and convert ``?`` placeholders for the driver."""

    @abc.abstractmethod
    def _keys_param(self, keys: Sequence[str]) -> Any:
        """The parameter that ``{in_keys}`` expects."""

    @abc.abstractmethod
    def _insert_claims(self, cur: Any, keys: list[str], now: float, lease_until: float) -> set[str]:
        """INSERT pending rows ON CONFLICT DO NOTHING; return the keys actually inserted."""

    @abc.abstractmethod
    def _upsert_delivered(self, cur: Any, marks: list[tuple[str, int]], now: float) -> None:
        """Write ``delivered`` rows (insert or update), one transaction for the batch."""

    @abc.abstractmethod
    def _column_names(self, cur: Any) -> set[str]:
        """The ledger table's column names, lower case."""

    @abc.abstractmethod
    def _write_metadata(self, cur: Any, rows: list[tuple[str, Mapping[str, Any]]]) -> None:
        """Write :data:`METADATA_COLUMNS` of our own rows (one statement per batch)."""

    def _lock_timed_out(self, exc: BaseException) -> bool:
        return False

    def _retryable(self, exc: BaseException) -> bool:
        """A transaction error worth retrying (deadlock, serialisation failure)."""
        return False

    def _upgrade_schema(self, cur: Any) -> None:
        """Add the :data:`ADDED_COLUMNS` the table lacks: in place, idempotent, no data touched.

        Only a table that lacks a column is altered (an ALTER TABLE locks the whole table, so
        an up-to-date ledger is never locked for it). On PostgreSQL the lock is waited for at
        most ``ledger_timeout`` seconds (the lock timeout of every ledger statement); then opening
        fails with one clear line.
        """
        t = self._table
        have = self._column_names(cur)
        missing = [(name, kind) for name, kind in ADDED_COLUMNS if name not in have]
        if missing:
            sqlite = isinstance(self, SQLiteLedger)
            real = "REAL" if sqlite else "DOUBLE PRECISION"
            # Two runs may upgrade at once: PostgreSQL's IF NOT EXISTS makes the second a no-op
            # (SQLite's BEGIN IMMEDIATE already serialises the check and the ALTER).
            add = "ADD COLUMN" if sqlite else "ADD COLUMN IF NOT EXISTS"
            try:
                for name, kind in missing:
                    cur.execute(f"ALTER TABLE {t} {add} {name} {kind.format(real=real)}")
            except Exception as e:
                if self._lock_timed_out(e):
                    raise LedgerError(
                        f"could not upgrade the ledger table {t} in place (adding "
                        f"{len(missing)} column(s)): another process kept it locked for more "
                        f"than {self._timeout:g} s (ledger_timeout); run again once it has finished"
                    ) from None
                raise
            self._log.info(
                "ledger: table %s upgraded in place (added %s)", t, ", ".join(n for n, _ in missing)
            )
        # The reconciliation's work list: delivered keys not yet settled, by sent time.
        cur.execute(
            f"CREATE INDEX IF NOT EXISTS {t}_recon_due ON {t} (sent_at)"
            " WHERE status = 'delivered' AND transaction_id IS NOT NULL"
            " AND (recon_status IS NULL OR recon_status = 'pending')"
        )

    def _describe_error(self, exc: BaseException) -> str:
        return _error_text(exc)

    # ---- life cycle -------------------------------------------------------------------

    def open(self, retention_days: int) -> None:
        """Connect, create the schema, prune, start the threads. Errors -> LedgerError."""
        self._io = threading.Thread(target=self._io_loop, name="ledger-io", daemon=True)
        self._io.start()
        try:
            self._call(self._connect_or_raise, "connect")
            self._run(self._create_schema, "create the ledger table")
            self._run(self._upgrade_schema, "upgrade the ledger table")
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
        self._writer = threading.Thread(target=self._writer_loop, name="ledger-writer", daemon=True)
        self._heartbeat = threading.Thread(
            target=self._heartbeat_loop, name="ledger-heartbeat", daemon=True
        )
        self._writer.start()
        self._heartbeat.start()
        self._log.info("ledger %s opened (owner %s)", self.description, self.owner)

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
        if self._io is not None and self._io.is_alive():
            self._jobs.put(_Job(self._close_quietly))
            self._jobs.put(None)

    def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self._close_connection()
        self._conn = None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._stop_heartbeat.set()
        # Both threads only wait for the I/O thread, with a deadline: these joins end.
        if self._writer is not None:
            self._writer.join()
        if self._heartbeat is not None:
            self._heartbeat.join()
        with contextlib.suppress(LedgerError):
            self._call(self._close_quietly, "close the connection")
        self._jobs.put(None)
        with self._cond:
            failed = self._failed
            lost = self._enqueued - self._committed
        if failed is not None:
            suffix = f" ({lost} delivered mark(s) not committed)" if lost else ""
            raise LedgerError(f"{failed}{suffix}")

    def stop_waiting_after(self, seconds: float) -> None:
        give_up_at = time.monotonic() + max(0.0, seconds)
        if self._give_up_at is None or give_up_at < self._give_up_at:
            self._give_up_at = give_up_at

    # ---- the I/O thread -----------------------------------------------------------------

    def _io_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._jobs_lock:
                if job.cancelled:
                    continue
                job.started = True
            try:
                job.result = job.fn()
            except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
                job.error = e
            job.done.set()

    def _call(self, fn: Callable[[], _T], what: str) -> _T:
        """Run ``fn()`` on the I/O thread; wait for it at most ``timeout`` + ANSWER_MARGIN
        seconds (less once the run is stopping). The wait is a plain timed wait, so signal
        handlers run on the main thread meanwhile."""
        if threading.current_thread() is self._io:
            return fn()
        if self._hung is not None:
            raise self._hung
        if self._io is None or not self._io.is_alive():
            raise LedgerError(f"ledger {self.description} is closed")
        job = _Job(fn)
        self._jobs.put(job)
        limit = self._timeout + ANSWER_MARGIN
        started = time.monotonic()
        deadline = started + limit
        try:
            while not job.done.is_set():
                give_up_at = self._give_up_at
                # Stopping: wait until the grace is over, and a healthy ledger's few milliseconds
                # even after that (the last delivered marks are worth recording).
                end = deadline if give_up_at is None else min(deadline, max(give_up_at, started + STOP_FLOOR))
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                job.done.wait(min(remaining, 0.2))
        except BaseException:  # a signal handler's exception: the job is not ours any more
            self._cancel(job)
            raise
        if not job.done.is_set():
            self._cancel(job)
            if self._give_up_at is not None and time.monotonic() < deadline:
                err = LedgerError(
                    f"ledger {self.description}: stopped waiting for the ledger to {what}: "
                    "the run is stopping and the ledger did not answer within the grace period"
                )
            else:
                err = LedgerError(
                    f"ledger {self.description}: no answer within {limit:g} s while trying to "
                    f"{what} (ledger_timeout is {self._timeout:g} s): the database, or the "
                    "network to it, is not answering"
                )
            self._hung = err
            with self._cond:
                if self._failed is None:
                    self._failed = err
                self._cond.notify_all()
            raise err
        if job.error is not None:
            raise job.error
        return cast(_T, job.result)

    def _cancel(self, job: _Job) -> None:
        with self._jobs_lock:
            if not job.started:
                job.cancelled = True

    # ---- transactions -----------------------------------------------------------------

    def _check(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._closed:
            raise LedgerError(f"ledger {self.description} is closed")

    def _run(self, fn: Callable[[Any], _T], what: str) -> _T:
        """Run ``fn(cursor)`` in one transaction on the I/O thread (retried on deadlock);
        errors -> LedgerError."""
        return self._call(lambda: self._transaction(fn, what), what)

    def _transaction(self, fn: Callable[[Any], _T], what: str) -> _T:
        attempt = 0
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
                if self._retryable(e) and attempt < 6:
                    attempt += 1
                    time.sleep(random.uniform(0.005, 0.02) * attempt)
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

        def tx(cur: Any) -> dict[str, ClaimStatus]:
            answers = self._claim_tx(cur, sorted(ordered))
            if metadata:
                ours = sorted(
                    k for k, s in answers.items()
                    if s in (ClaimStatus.CLAIMED, ClaimStatus.IN_DOUBT) and k in metadata
                )
                if ours:
                    self._write_metadata(cur, [(k, metadata[k]) for k in ours])
            return answers

        answers = self._run(tx, "claim keys")
        return {k: answers[k] for k in ordered}

    def _claim_tx(self, cur: Any, keys: list[str]) -> dict[str, ClaimStatus]:
        now = self._now(cur)
        lease_until = now + self._lease
        out: dict[str, ClaimStatus] = {}
        dead_cache: dict[tuple[str, str], bool] = {}
        todo = keys
        for _ in range(3):
            inserted = self._insert_claims(cur, todo, now, lease_until)
            for k in inserted:
                out[k] = ClaimStatus.CLAIMED
            rest = [k for k in todo if k not in inserted]
            if not rest:
                return out
            cur.execute(
                self._sql(
                    "SELECT delivery_key, status, owner, owner_scope, lease_until"
                    " FROM {t} WHERE delivery_key {in_keys}"
                ),
                (self._keys_param(rest),),
            )
            rows = {r[0]: r[1:] for r in cur.fetchall()}
            takeovers: dict[tuple[str, bool], list[str]] = collections.defaultdict(list)
            was_sending: dict[str, bool] = {}
            missing: list[str] = []
            for k in rest:
                row = rows.get(k)
                if row is None:  # released by its owner after our INSERT saw it: insert again
                    missing.append(k)
                    continue
                status, owner, scope, row_lease = row
                if status == DELIVERED:
                    out[k] = ClaimStatus.DELIVERED
                elif status == HELD:
                    out[k] = ClaimStatus.HELD
                elif owner == self.owner:  # our own claim from an earlier call, still in flight
                    out[k] = ClaimStatus.BUSY
                else:
                    cache_key = (owner, scope or "")
                    if cache_key not in dead_cache:
                        dead_cache[cache_key] = self._owner_is_dead(owner, scope or "")
                    dead = dead_cache[cache_key]
                    if dead or row_lease is None or row_lease <= now:
                        takeovers[(owner, dead)].append(k)
                        was_sending[k] = status == SENDING
                    else:
                        out[k] = ClaimStatus.BUSY
            for (old_owner, dead), ks in takeovers.items():
                # Compare-and-swap on the owner; the lease is re-checked by the database, so a
                # concurrent heartbeat or takeover makes this a no-op (-> BUSY, claim later).
                cur.execute(
                    self._sql(
                        "UPDATE {t} SET status = 'pending', owner = ?, owner_scope = ?,"
                        " lease_until = ?, updated_at = ?"
                        " WHERE delivery_key {in_keys} AND status IN ('pending', 'sending')"
                        " AND owner = ?"
                        " AND (? OR lease_until IS NULL OR lease_until <= ?)"
                        " RETURNING delivery_key"
                    ),
                    (
                        self.owner,
                        self._scope,
                        lease_until,
                        now,
                        self._keys_param(ks),
                        old_owner,
                        dead,
                        now,
                    ),
                )
                taken = {r[0] for r in cur.fetchall()}
                for k in ks:
                    if k not in taken:
                        out[k] = ClaimStatus.BUSY
                    elif was_sending[k]:
                        out[k] = ClaimStatus.IN_DOUBT
                    else:  # claimed by the dead run but never sent: an ordinary claim
                        out[k] = ClaimStatus.CLAIMED
                if taken:
                    doubtful = sum(1 for k in taken if was_sending[k])
                    self._log.info(
                        "ledger: took over %d claim(s) of %s (%s), %d of them in doubt",
                        len(taken),
                        old_owner,
                        "process gone" if dead else "lease expired",
                        doubtful,
                    )
            if not missing:
                return out
            todo = missing
        for k in todo:  # still racing with another process: let the caller claim again
            out[k] = ClaimStatus.BUSY
        return out

    def _owner_is_dead(self, owner: str, scope: str) -> bool:
        """True when ``owner`` ran on this machine and its process no longer exists."""
        parsed = _parse_owner(owner)
        if parsed is None:
            return False
        host, pid = parsed
        if host != self._hostname or scope != self._scope or pid == os.getpid():
            return False
        return not _pid_alive(pid)

    def release(self, keys: Sequence[str]) -> None:
        self._check()
        ks = sorted(set(keys))
        if not ks:
            return

        def tx(cur: Any) -> None:
            cur.execute(
                self._sql(
                    "DELETE FROM {t} WHERE delivery_key {in_keys}"
                    " AND status IN ('pending', 'sending') AND owner = ?"
                ),
                (self._keys_param(ks), self.owner),
            )

        self._run(tx, "release claims")

    def mark_held(self, keys: Sequence[str]) -> None:
        self._check()
        ks = sorted(set(keys))
        if not ks:
            return

        def tx(cur: Any) -> set[str]:
            now = self._now(cur)
            cur.execute(
                self._sql(
                    "UPDATE {t} SET status = 'in_doubt', lease_until = NULL, updated_at = ?"
                    " WHERE delivery_key {in_keys} AND status IN ('pending', 'sending')"
                    " AND owner = ?"
                    " RETURNING delivery_key"
                ),
                (now, self._keys_param(ks), self.owner),
            )
            return {r[0] for r in cur.fetchall()}

        held = self._run(tx, "mark keys held")
        if len(held) != len(ks):
            self._log.warning(
                "ledger: %d of %d key(s) to hold were no longer pending under this run",
                len(ks) - len(held),
                len(ks),
            )

    def status(self, key: str) -> str | None:
        self._check()

        def tx(cur: Any) -> str | None:
            cur.execute(self._sql("SELECT status FROM {t} WHERE delivery_key = ?"), (key,))
            row = cur.fetchone()
            return None if row is None else str(row[0])

        return self._run(tx, "read a key")

    def query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[tuple[Any, ...]]]:
        """One read-only statement for an operator command (``{t}`` is the ledger table, ``?``
        the placeholders); returns the column names and the rows."""
        self._check()

        def tx(cur: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
            cur.execute(self._sql(sql), tuple(params))
            names = [d[0] for d in cur.description or ()]
            return names, [tuple(r) for r in cur.fetchall()]

        return self._run(tx, "read the ledger")

    def prune(self, retention_days: int) -> int:
        """Delete delivered and held rows not updated for ``retention_days``; return the count.

        In transactions of at most :data:`PRUNE_BATCH` rows, so that no statement of a large,
        long-unpruned ledger runs into the statement timeout."""

        def tx(cur: Any) -> int:
            cutoff = self._now(cur) - retention_days * 86400.0
            cur.execute(
                self._sql(
                    "DELETE FROM {t} WHERE delivery_key IN (SELECT delivery_key FROM {t}"
                    " WHERE status IN ('delivered', 'in_doubt') AND updated_at < ? LIMIT ?)"
                ),
                (cutoff, PRUNE_BATCH),
            )
            return int(cur.rowcount or 0)

        total = 0
        while True:
            n = self._run(tx, "prune old rows")
            total += n
            if n < PRUNE_BATCH:
                break
        if total:
            self._log.info("ledger: pruned %d row(s) older than %d days", total, retention_days)
        return total

    # ---- for the run history and the operator commands (history.py, ledger_commands.py) --

    @property
    def table(self) -> str:
        """The ledger table (``?table=`` of ledger_url, else ``everflow_ledger``)."""
        return self._table

    def transaction(self, fn: Callable[[Any], _T], what: str) -> _T:
        """Run ``fn(cursor)`` in one transaction on the ledger's connection (errors ->
        :class:`LedgerError` saying it could not ``what``). Write its SQL through :meth:`sql`."""
        return self._run(fn, what)

    def sql(self, text: str) -> str:
        """``text`` for this database: ``?`` placeholders, ``{t}`` the ledger table,
        ``{in_keys}`` matched against :meth:`keys_param`."""
        return self._sql(text)

    def keys_param(self, keys: Sequence[str]) -> Any:
        return self._keys_param(keys)

    def now(self, cur: Any) -> float:
        """The ledger's clock (epoch seconds; PostgreSQL's server clock)."""
        return self._now(cur)

    # ---- group-committed marks --------------------------------------------------------

    def mark_sending(self, key: str) -> bool:
        self._renew_if_lease_may_have_expired()
        with self._cond:
            self._check()
            self._queue.append((key, None))
            self._enqueued += 1
            self._wait_committed(self._enqueued)
            return self._fenced.pop(key, False)

    def mark_delivered(self, key: str, http_status: int) -> None:
        with self._cond:
            self._check()
            self._queue.append((key, int(http_status)))
            self._enqueued += 1
            if len(self._queue) == 1 or len(self._queue) >= self._max_batch:
                self._cond.notify_all()

    def flush(self) -> None:
        with self._cond:
            if self._failed is not None:
                raise self._failed
            target = self._enqueued
            if self._committed >= target:
                if self._closed:
                    raise LedgerError(f"ledger {self.description} is closed")
                return
            self._wait_committed(target)

    def _wait_committed(self, target: int) -> None:
        """Wait (holding ``_cond``) until the first ``target`` marks are committed.

        A waiter makes the writer commit at once instead of gathering more marks. The writer
        commits or fails within its own deadline (it waits for the I/O thread), so this ends.
        """
        self._flush_waiters += 1
        self._cond.notify_all()
        try:
            while self._committed < target and self._failed is None:
                self._cond.wait()
        finally:
            self._flush_waiters -= 1
        if self._failed is not None:
            raise self._failed

    def _writer_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return  # stopping, all committed
                # Gather marks for a few milliseconds unless someone is waiting for them.
                deadline = time.monotonic() + self._commit_delay
                while (
                    len(self._queue) < self._max_batch
                    and not self._flush_waiters
                    and not self._stopping
                ):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]

            def write(cur: Any, items: list[tuple[str, int | None]] = batch) -> set[str]:
                now = self._now(cur)
                sending = sorted({k for k, status in items if status is None})
                marks = [(k, status) for k, status in items if status is not None]
                fenced: set[str] = set()
                if sending:
                    # The fence: the owner check and the write are one statement, so a claim
                    # another process took over (our lease had expired) changes no row and is
                    # not sent. It also renews the claim's lease.
                    cur.execute(
                        self._sql(
                            "UPDATE {t} SET status = 'sending', lease_until = ?, updated_at = ?"
                            " WHERE delivery_key {in_keys} AND status IN ('pending', 'sending')"
                            " AND owner = ? RETURNING delivery_key"
                        ),
                        (now + self._lease, now, self._keys_param(sending), self.owner),
                    )
                    fenced = {r[0] for r in cur.fetchall()}
                if marks:
                    self._upsert_delivered(cur, marks, now)
                    cur.execute(  # the first accepted answer's time (a row written by 0.1.0: none)
                        self._sql(
                            "UPDATE {t} SET sent_at = ? WHERE delivery_key {in_keys}"
                            " AND status = 'delivered' AND sent_at IS NULL"
                        ),
                        (now, self._keys_param(sorted({k for k, _ in marks}))),
                    )
                return fenced

            try:
                fenced = self._run(write, "commit delivered marks")
            except Exception as e:
                err = (
                    e
                    if isinstance(e, LedgerError)
                    else LedgerError(
                        f"ledger {self.description}: could not commit delivered marks: "
                        f"{self._describe_error(e)}"
                    )
                )
                self._log.error("%s", err)
                with self._cond:
                    # Sticky: every later call raises; the marks are not silently dropped.
                    if self._failed is None:
                        self._failed = err
                    self._cond.notify_all()
                return
            with self._cond:
                for key, status in batch:
                    if status is None:
                        self._fenced[key] = key in fenced
                self._committed += len(batch)
                self.writer_commits += 1
                self._cond.notify_all()

    # ---- leases -----------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        interval = self._lease / 3.0
        while not self._stop_heartbeat.wait(interval):
            if self._hung is not None:
                return  # the ledger stopped answering: the run is failing already
            try:
                self.renew_leases()
            except Exception as e:
                silent_for = self._clock() - self._last_renewal
                self._log.warning("ledger: could not renew leases (%s)", e)
                if silent_for >= self._lease:
                    with self._cond:
                        if self._failed is None:
                            self._failed = LedgerError(
                                f"ledger {self.description}: leases not renewed for "
                                f"{silent_for:.0f} s; other processes may take over this "
                                f"run's claims ({e})"
                            )
                        self._cond.notify_all()
                    return

    def renew_leases(self) -> int:
        """Extend the lease of all our pending rows (one UPDATE); return the row count."""
        started = self._clock()

        def tx(cur: Any) -> int:
            cur.execute(
                self._sql(
                    "UPDATE {t} SET lease_until = ?"
                    " WHERE owner = ? AND status IN ('pending', 'sending')"
                ),
                (self._now(cur) + self._lease, self.owner),
            )
            return int(cur.rowcount or 0)

        n = self._run(tx, "renew leases")
        self._last_renewal = started
        return n

    def _renew_if_lease_may_have_expired(self) -> None:
        """Before a postback leaves: if the heartbeat is overdue (this process was paused, the
        machine suspended, the ledger slow), renew every lease first. Time since the last
        renewal is measured on ``lease_clock``, which keeps counting through a suspend."""
        if self._clock() - self._last_renewal < self._lease / 2:
            return
        with self._renew_lock:
            silent_for = self._clock() - self._last_renewal
            if silent_for < self._lease / 2:
                return  # another sender renewed meanwhile
            self._log.warning(
                "ledger: leases last renewed %.0f s ago (lease %.0f s; was this process paused "
                "or the machine suspended?): renewing them before sending more",
                silent_for,
                self._lease,
            )
            self.renew_leases()


def _schema_statements(t: str, real: str) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS {t} (
            delivery_key TEXT PRIMARY KEY,
            status TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'delivered', 'in_doubt')),
            owner TEXT NOT NULL,
            owner_scope TEXT NOT NULL DEFAULT '',
            lease_until {real},
            http_status INTEGER,
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL
        )""",
        f"CREATE INDEX IF NOT EXISTS {t}_pending_owner ON {t} (owner)"
        " WHERE status IN ('pending', 'sending')",
        f"CREATE INDEX IF NOT EXISTS {t}_updated_at ON {t} (updated_at)",
    ]


# --------------------------------------------------------------------------------------------
# SQLite


class SQLiteLedger(_SQLLedger):
    """A ledger in a local SQLite file (WAL). Several processes on one machine may share it."""

    _IN_KEYS = "IN (SELECT value FROM json_each(?))"

    def __init__(self, path: pathlib.Path, *, table: str = DEFAULT_TABLE, **kwargs: Any) -> None:
        self.path = pathlib.Path(path).expanduser().absolute()
        super().__init__(description=f"sqlite:///{self.path}", table=table, **kwargs)

    def _connect(self) -> None:
        if sqlite3.sqlite_version_info < (3, 35, 0):
            raise LedgerError(
                f"SQLite {sqlite3.sqlite_version} is too old (3.35+ needed for RETURNING)"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection, used by the I/O thread only. isolation_level=None: we issue BEGIN
        # IMMEDIATE ourselves (the write lock is taken up front, so concurrent processes
        # serialise instead of failing on lock upgrade). timeout: SQLite's busy wait for
        # another process's transaction, ledger_timeout seconds (then "database is locked").
        self._conn = sqlite3.connect(
            str(self.path), timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        mode = str(self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
        if mode != "wal":
            self._log.warning(
                "ledger %s: WAL mode unavailable (journal_mode=%s)", self.description, mode
            )
        # synchronous=FULL, not NORMAL: in WAL mode NORMAL survives a process crash but may lose
        # the last commits on power loss / OS crash. A lost "delivered" commit would turn into
        # an in-doubt key (and, with in_doubt=resend, a duplicate conversion), so every commit
        # is fsynced. The cost is one fsync per transaction, which batch claims and the group
        # commit of marks keep to a few per batch.
        self._conn.execute("PRAGMA synchronous=FULL")

    def _create_schema(self, cur: Any) -> None:
        for stmt in _schema_statements(self._table, "REAL"):
            cur.execute(stmt)

    def _column_names(self, cur: Any) -> set[str]:
        cur.execute(f"PRAGMA table_info({self._table})")
        return {str(r[1]).lower() for r in cur.fetchall()}

    def _write_metadata(self, cur: Any, rows: list[tuple[str, Mapping[str, Any]]]) -> None:
        sets = ", ".join(f"{c} = ?" for c in METADATA_COLUMNS)
        cur.executemany(  # one prepared statement, in process
            f"UPDATE {self._table} SET {sets} WHERE delivery_key = ? AND owner = ?",
            [(*(m.get(c) for c in METADATA_COLUMNS), k, self.owner) for k, m in rows],
        )
    def _describe_error(self, exc: BaseException) -> str:
        text = _error_text(exc)
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc).lower():
            return (
                f"waited {self._timeout:g} s (ledger_timeout) for another process to release "
                f"its lock on the SQLite file {self.path}: {text}"
            )
        return text

    def _begin(self) -> Any:
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        return cur

    def _commit(self) -> None:
        self._conn.execute("COMMIT")

    def _rollback(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def _now(self, cur: Any) -> float:
        return time.time()

    def _sql(self, sql: str) -> str:
        return sql.format(t=self._table, in_keys=self._IN_KEYS)

    def _keys_param(self, keys: Sequence[str]) -> Any:
        return json.dumps(list(keys))

    def _insert_claims(self, cur: Any, keys: list[str], now: float, lease_until: float) -> set[str]:
        # "WHERE true" resolves SQLite's INSERT ... SELECT ... ON CONFLICT parsing ambiguity.
        cur.execute(
            f"INSERT INTO {self._table} (delivery_key, status, owner, owner_scope, lease_until,"
            " created_at, updated_at)"
            " SELECT value, 'pending', ?, ?, ?, ?, ? FROM json_each(?) WHERE true"
            " ON CONFLICT (delivery_key) DO NOTHING RETURNING delivery_key",
            (self.owner, self._scope, lease_until, now, now, json.dumps(keys)),
        )
        return {r[0] for r in cur.fetchall()}

    def _upsert_delivered(self, cur: Any, marks: list[tuple[str, int]], now: float) -> None:
        # One statement for the batch (a JSON array of [key, http_status] pairs).
        t = self._table
        cur.execute(
            f"INSERT INTO {t} (delivery_key, status, owner, owner_scope, lease_until,"
            " http_status, created_at, updated_at)"
            " SELECT json_extract(value, '$[0]'), 'delivered', ?, ?, NULL,"
            " json_extract(value, '$[1]'), ?, ? FROM json_each(?) WHERE true"
            " ON CONFLICT (delivery_key) DO UPDATE SET status = 'delivered',"
            " owner = excluded.owner, owner_scope = excluded.owner_scope, lease_until = NULL,"
            " http_status = excluded.http_status, updated_at = excluded.updated_at"
            f" WHERE {t}.status <> 'delivered'",
            (self.owner, self._scope, now, now, json.dumps(marks)),
        )


# --------------------------------------------------------------------------------------------
# PostgreSQL


class PostgresLedger(_SQLLedger):
    """A ledger in a PostgreSQL table, shared by any number of processes and machines."""

    _IN_KEYS = "= ANY(%s)"

    def __init__(self, url: str, *, table: str | None = None, **kwargs: Any) -> None:
        """``url``: a ``postgresql://`` URL or a libpq keyword/value connection string."""
        description = redact_url(url)
        self._params, url_table = _pg_params(url)
        self._secrets = _url_secrets(url)
        # When the URL cannot be shown, nothing the driver says about it can be either.
        self._hide_driver_text = description == HIDDEN_URL
        self._psycopg2: Any = None
        super().__init__(description=description, table=table or url_table, **kwargs)

    def _describe_error(self, exc: BaseException) -> str:
        code = getattr(exc, "pgcode", None)
        if self._hide_driver_text:
            text = type(exc).__name__ + (f" (SQLSTATE {code})" if code else "")
        else:
            text = _scrub(_error_text(exc), self._secrets)
        if code == "55P03":  # lock_not_available
            return (
                f"gave up after {self._timeout:g} s (lock_timeout) waiting for a lock on the "
                f"ledger table {self._table} that another connection holds (an open "
                f"transaction, e.g. a DELETE in psql not yet committed?): {text}"
            )
        if code == "57014":  # query_canceled: our statement_timeout
            return (
                f"a ledger statement ran longer than {self._timeout + 1:g} s "
                f"(statement_timeout): {text}"
            )
        if code == "25P03":  # idle_in_transaction_session_timeout: this process was stalled
            return f"the server ended this run's ledger session (it stalled mid-transaction): {text}"
        if "timeout expired" in text:
            return f"could not connect within {self._connect_timeout()} s (connect_timeout): {text}"
        return text

    def _connect_timeout(self) -> str:
        return self._params.get("connect_timeout") or str(max(2, math.ceil(self._timeout)))

    def _connect(self) -> None:
        try:
            import psycopg2
        except ImportError:
            raise LedgerError(PSYCOPG2_MISSING) from None
        self._psycopg2 = psycopg2
        timeout = self._timeout
        params = {
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
        self._conn = psycopg2.connect(**params)
        # Server-side bounds for every statement of this session. idle_in_transaction: if this
        # process stalls inside a transaction (SIGSTOP, a suspended VM), the server ends the
        # session and its row locks do not block every other run.
        with self._conn.cursor() as cur:
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
        self._conn.commit()

    def _create_schema(self, cur: Any) -> None:
        # Concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog; serialise it.
        cur.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"target_everflow_ledger:{self._table}",)
        )
        for stmt in _schema_statements(self._table, "DOUBLE PRECISION"):
            cur.execute(stmt)

    def _column_names(self, cur: Any) -> set[str]:
        cur.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s)"
            " AND attnum > 0 AND NOT attisdropped",
            (self._table,),
        )
        return {str(r[0]).lower() for r in cur.fetchall()}

    def _lock_timed_out(self, exc: BaseException) -> bool:
        return getattr(exc, "pgcode", None) == "55P03"  # lock_not_available

    def _write_metadata(self, cur: Any, rows: list[tuple[str, Mapping[str, Any]]]) -> None:
        types = {"adv_event_id": "integer", "amount": "double precision",
                 "event_time": "double precision"}  # fmt: skip
        record = ", ".join(f"{c} {types.get(c, 'text')}" for c in METADATA_COLUMNS)
        sets = ", ".join(f"{c} = m.{c}" for c in METADATA_COLUMNS)
        cur.execute(
            f"UPDATE {self._table} AS l SET {sets}"
            f" FROM json_to_recordset(%s::json) AS m(key text, {record})"
            " WHERE l.delivery_key = m.key AND l.owner = %s",
            (json.dumps([{**m, "key": k} for k, m in rows]), self.owner),
        )

    def _retryable(self, exc: BaseException) -> bool:
        # 40P01 deadlock_detected, 40001 serialization_failure: the transaction was rolled back.
        return getattr(exc, "pgcode", None) in ("40P01", "40001")

    def _begin(self) -> Any:
        return self._conn.cursor()  # psycopg2 opens the transaction on the first statement

    def _commit(self) -> None:
        self._conn.commit()

    def _rollback(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.rollback()

    def _close_connection(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()

    def _now(self, cur: Any) -> float:
        cur.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8")
        return float(cur.fetchone()[0])

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s").format(t=self._table, in_keys=self._IN_KEYS)

    def _keys_param(self, keys: Sequence[str]) -> Any:
        return list(keys)

    def _insert_claims(self, cur: Any, keys: list[str], now: float, lease_until: float) -> set[str]:
        # WITH ORDINALITY ... ORDER BY: rows are inserted (and locked) in the sorted key order.
        cur.execute(
            f"INSERT INTO {self._table} (delivery_key, status, owner, owner_scope, lease_until,"
            " created_at, updated_at)"
            " SELECT u.k, 'pending', %s, %s, %s, %s, %s"
            " FROM unnest(%s::text[]) WITH ORDINALITY AS u(k, i) ORDER BY u.i"
            " ON CONFLICT (delivery_key) DO NOTHING RETURNING delivery_key",
            (self.owner, self._scope, lease_until, now, now, keys),
        )
        return {r[0] for r in cur.fetchall()}

    def _upsert_delivered(self, cur: Any, marks: list[tuple[str, int]], now: float) -> None:
        # One statement per batch. ON CONFLICT DO UPDATE may touch a row only once per
        # statement, so duplicates are collapsed (last mark wins); sorted to lock in key order.
        latest = dict(marks)
        keys = sorted(latest)
        t = self._table
        cur.execute(
            f"INSERT INTO {t} (delivery_key, status, owner, owner_scope, lease_until,"
            " http_status, created_at, updated_at)"
            " SELECT u.k, 'delivered', %s, %s, NULL, u.h, %s, %s"
            " FROM unnest(%s::text[], %s::int[]) WITH ORDINALITY AS u(k, h, i) ORDER BY u.i"
            " ON CONFLICT (delivery_key) DO UPDATE SET status = 'delivered',"
            " owner = EXCLUDED.owner, owner_scope = EXCLUDED.owner_scope, lease_until = NULL,"
            " http_status = EXCLUDED.http_status, updated_at = EXCLUDED.updated_at"
            f" WHERE {t}.status <> 'delivered'",
            (self.owner, self._scope, now, now, keys, [latest[k] for k in keys]),
        )


# --------------------------------------------------------------------------------------------
# Opening


def _split_table(url: str) -> tuple[str, str]:
    """Remove ``table=`` from the URL's query; return (url without it, table)."""
    base, sep, query = url.partition("?")
    if not sep:
        return url, DEFAULT_TABLE
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    table = DEFAULT_TABLE
    kept = []
    for k, v in pairs:
        if k == "table":
            table = v
        else:
            kept.append((k, v))
    rest = urllib.parse.urlencode(kept)
    return (f"{base}?{rest}" if rest else base), table


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
    log = logger or _LOG
    text = (url or "").strip()
    kwargs: dict[str, Any] = {"lease_seconds": lease_seconds, "timeout": timeout, "logger": log}
    ledger: _SQLLedger
    if text.lower() == "none":
        log.warning(
            "ledger_url is none: no idempotency ledger; a re-run or replay will send the same "
            "conversions to Everflow again"
        )
        return NullLedger()
    scheme_match = _SCHEME_RE.match(text)
    scheme = scheme_match.group(1).lower().partition("+")[0] if scheme_match else ""
    if not text:
        ledger = SQLiteLedger(pathlib.Path(default_dir) / DEFAULT_SQLITE_RELPATH, **kwargs)
    elif scheme == "sqlite":
        if redact_url(text) == HIDDEN_URL:  # e.g. sqlite://user:pass@host/...: not a file
            raise LedgerError(
                f"ledger_url {HIDDEN_URL} is not a valid SQLite URL (expected sqlite:///path/ledger.db)"
            )
        base, table = _split_table(text)
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
    elif scheme in _PG_SCHEMES or (not scheme_match and _parse_keywords(text) is not None):
        ledger = PostgresLedger(text, **kwargs)
    else:
        raise LedgerError(
            f"ledger_url {redact_url(text)} is not supported: expected "
            "sqlite:///path/ledger.db, postgresql://user:password@host:port/db, a PostgreSQL "
            "connection string (host=... dbname=...) or none"
        )
    ledger.open(retention_days)
    return ledger
