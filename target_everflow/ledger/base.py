"""The ledger's contract: :class:`Ledger` (the interface the delivery engine uses), its answers
(:class:`ClaimStatus`), its one error (:class:`LedgerError`), the stored row statuses, and
:class:`NullLedger` (``ledger_url: none``). See the package docstring for how it is used.
"""

from __future__ import annotations

import abc
import enum
import functools
import logging
import os
import pathlib
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from target_everflow.ledger.keyset import MEMORY_KEYS, KeySet
from target_everflow.settings import schema_default

LOG = logging.getLogger("target_everflow.ledger")

DEFAULT_TABLE = "everflow_ledger"
DEFAULT_SQLITE_RELPATH = pathlib.Path("ledger.sqlite3")
PSYCOPG2_MISSING = (
    "ledger_url is PostgreSQL but psycopg2 is not installed: "
    "pip install 'target-everflow[postgres]'"
)

# Row statuses (the ``status`` column).
PENDING_STATUS = "pending"
SENDING_STATUS = "sending"  # a postback for it may have left: after a crash it is in doubt
DELIVERED_STATUS = "delivered"
HELD_STATUS = (
    "in_doubt"  # terminal: an in-doubt key that was dead-lettered and is kept for a person
)

METADATA_COLUMNS = (
    "stream",
    "event",
    "transaction_id",
    "message_id",
    "adv_event_id",
    "order_id",
    "amount",
    "event_time",
    "currency",
)
"""What ``claim(keys, metadata)`` writes for each key (the metadata mapping's keys)."""


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


def default_timeout() -> float:
    """Setting ``ledger_timeout``'s default, from the config schema (the one place defaults live)."""
    return float(schema_default("ledger_timeout"))


class ClaimStatus(enum.Enum):
    """The answer of :meth:`Ledger.claim` for one key."""

    CLAIMED = "claimed"  # ours now: send it
    DELIVERED = "delivered"  # already delivered: skip as duplicate
    HELD = "held"  # an in-doubt key kept for a person (terminal): skip as duplicate
    TAKEN_OVER = "in_doubt"  # a dead owner's claim, now ours (maybe sent): apply setting in_doubt
    BUSY = "busy"  # pending under another live owner: claim again later


class LedgerError(Exception):
    """The ledger cannot be used. The message is user-facing and never contains a password."""


class Ledger(abc.ABC):
    """The idempotency ledger shared by :class:`SQLiteLedger`, :class:`PostgresLedger` and
    :class:`NullLedger`. Thread-safe. Use :func:`open_ledger` to get one."""

    description: str
    owner: str

    keeps_metadata = True
    """Whether :meth:`claim` stores the ``metadata`` it is given (callers skip building it)."""

    fences_commit = True
    """Whether :meth:`fence` is a durable commit (worth gathering several marks into); a
    :class:`NullLedger`'s fence costs nothing, so the delivery engine does not space them."""

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

    def fence(self, keys: Sequence[str], delivered: Sequence[tuple[str, int]] = ()) -> set[str]:
        """:meth:`mark_delivered` for each of ``delivered`` and :meth:`mark_sending` for each
        of ``keys``, in one commit (a dispatcher's tick: the answers of the slots that freed
        up, the fences of the conversions that take them); the keys whose claim is still ours
        (send those only). With no ``keys`` the delivered marks are only queued."""
        for key, http_status in delivered:
            self.mark_delivered(key, http_status)
        return {key for key in keys if self.mark_sending(key)}

    def stop_waiting_after(self, seconds: float) -> None:  # noqa: B027 - optional: NullLedger never waits
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
            LOG.error("ledger %s: %s", self.description, close_error)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description} owner={self.owner}>"


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class NullLedger(Ledger):
    """``ledger_url: none``: nothing is kept across runs.

    UNSAFE for re-runs: a replayed or re-read conversion is sent again. Within one run it still
    dedupes (two records with one key are one conversion), with bounded memory (``KeySet``).
    Dry run uses one too, whatever ``ledger_url`` says: it never touches the real ledger.
    """

    keeps_metadata = False
    fences_commit = False

    def __init__(self, description: str = "none", *, memory_keys: int = MEMORY_KEYS) -> None:
        self.description = description
        self.owner = new_owner()
        self._claimed: set[str] = set()
        self._delivered = KeySet(memory_keys)

    def claim(
        self, keys: Sequence[str], metadata: Mapping[str, Mapping[str, Any]] | None = None
    ) -> dict[str, ClaimStatus]:
        delivered = self._delivered.among(keys)
        result: dict[str, ClaimStatus] = {}
        for key in keys:
            if key in result:
                continue
            if key in delivered:
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
        self._delivered.close()

    def status(self, key: str) -> str | None:
        if key in self._delivered:
            return "delivered"
        return "pending" if key in self._claimed else None
