"""The ledger's group commit: ``sending`` and ``delivered`` marks, queued and committed together.

``mark_delivered`` only queues; a writer thread (``ledger-writer``) commits every queued mark
within a few milliseconds in one transaction. ``mark_sending`` (the fence) and ``flush`` wait
for their marks to be committed. A commit that fails makes the ledger *failed*: sticky, every
later call raises the error, so a mark is never silently lost and no STATE is emitted past a
delivery that is not in the ledger.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from target_everflow.ledger.base import LedgerError

if TYPE_CHECKING:
    from target_everflow.ledger.sql import SQLLedger

Mark = tuple[str, "int | None"]
"""(key, HTTP status) for a delivered mark; (key, None) for a sending mark."""


class MarkQueue:
    """The queue of marks and the writer thread that commits them.

    ``commit(marks)`` writes one batch in one transaction and returns the keys whose sending
    mark proved the claim still ours; ``describe(error)`` is the message of a commit that failed
    other than with a :class:`LedgerError`. ``check()`` raises when the ledger cannot take marks (it
    is called with the queue's lock held). Also holds the ledger's sticky failure
    (:attr:`failed`).
    """

    def __init__(
        self,
        *,
        commit: Callable[[list[Mark]], set[str]],
        check: Callable[[], None],
        describe: Callable[[Exception], str],
        logger: logging.Logger,
        commit_delay: float,
        max_batch: int,
    ) -> None:
        self._commit = commit
        self._check = check
        self._describe = describe
        self._log = logger
        self._commit_delay = commit_delay
        self._max_batch = max_batch
        # All guarded by _cond.
        self._cond = threading.Condition()
        self._queue: list[Mark] = []
        self._enqueued = 0
        self._committed = 0
        self._flush_waiters = 0
        self._stopping = False
        self.failed: LedgerError | None = None
        self._fenced: dict[str, bool] = {}  # sending marks' answers, by key
        self.commits = 0  # number of writer transactions (diagnostics, tests)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ledger-writer", daemon=True)
        self._thread.start()

    def stop(self) -> int:
        """Commit what is queued, end the writer; return the number of marks not committed."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:  # the writer only waits for the I/O thread, with a deadline
            self._thread.join()
        with self._cond:
            return self._enqueued - self._committed

    def fail(self, err: LedgerError) -> None:
        """Make the ledger failed (the first error stays) and wake every waiter."""
        with self._cond:
            if self.failed is None:
                self.failed = err
            self._cond.notify_all()

    def sending(self, key: str) -> bool:
        """Queue a sending mark and wait for its commit; whether the claim was still ours."""
        with self._cond:
            self._check()
            self._queue.append((key, None))
            self._enqueued += 1
            self._wait_committed(self._enqueued)
            return self._fenced.pop(key, False)

    def delivered(self, key: str, http_status: int) -> None:
        with self._cond:
            self._check()
            self._queue.append((key, int(http_status)))
            self._enqueued += 1
            if len(self._queue) == 1 or len(self._queue) >= self._max_batch:
                self._cond.notify_all()

    def flush(self) -> bool:
        """Wait until every mark queued so far is committed; False if there was none."""
        with self._cond:
            if self.failed is not None:
                raise self.failed
            target = self._enqueued
            if self._committed >= target:
                return False
            self._wait_committed(target)
            return True

    def _wait_committed(self, target: int) -> None:
        """Wait (holding ``_cond``) until the first ``target`` marks are committed.

        A waiter makes the writer commit at once instead of gathering more marks. The writer
        commits or fails within its own deadline (it waits for the I/O thread), so this ends.
        """
        self._flush_waiters += 1
        self._cond.notify_all()
        try:
            while self._committed < target and self.failed is None:
                self._cond.wait()
        finally:
            self._flush_waiters -= 1
        if self.failed is not None:
            raise self.failed

    def _next_batch(self) -> list[Mark] | None:
        """The next marks to commit (None: stopping, all committed), gathered for a few
        milliseconds unless someone is waiting for them."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
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
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                fenced = self._commit(batch)
            except Exception as e:
                err = e if isinstance(e, LedgerError) else LedgerError(self._describe(e))
                self._log.error("%s", err)
                self.fail(err)  # sticky: every later call raises; no mark is silently dropped
                return
            with self._cond:
                for key, status in batch:
                    if status is None:
                        self._fenced[key] = key in fenced
                self._committed += len(batch)
                self.commits += 1
                self._cond.notify_all()


def write_marks(ledger: SQLLedger, cur: Any, items: list[Mark]) -> set[str]:
    """Commit ``items`` (one transaction, the caller's); return the keys whose sending mark
    found the claim still ours."""
    now = ledger.now(cur)
    sending = sorted({k for k, status in items if status is None})
    marks = [(k, status) for k, status in items if status is not None]
    fenced: set[str] = set()
    if sending:
        # The fence: the owner check and the write are one statement, so a claim another
        # process took over (our lease had expired) changes no row and is not sent. It also
        # renews the claim's lease.
        cur.execute(
            ledger.sql(
                "UPDATE {t} SET status = 'sending', lease_until = ?, updated_at = ?"
                " WHERE delivery_key {in_keys} AND status IN ('pending', 'sending')"
                " AND owner = ? RETURNING delivery_key"
            ),
            (now + ledger.lease_seconds, now, ledger.keys_param(sending), ledger.owner),
        )
        fenced = {r[0] for r in cur.fetchall()}
    if marks:
        ledger._upsert_delivered(cur, marks, now)
        cur.execute(  # the first accepted answer's time (a row written by 0.1.0: none)
            ledger.sql(
                "UPDATE {t} SET sent_at = ? WHERE delivery_key {in_keys}"
                " AND status = 'delivered' AND sent_at IS NULL"
            ),
            (now, ledger.keys_param(sorted({k for k, _ in marks}))),
        )
    return fenced
