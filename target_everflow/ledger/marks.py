"""The ledger's group commit: ``sending`` and ``delivered`` marks, queued and committed together.

Marks are queued, and committed in one transaction by a job of the ledger's I/O thread that
takes every mark queued by the time it runs. ``mark_sending`` (the fence) and ``flush`` queue
that job themselves and wait for it (with the I/O thread's deadline): a sending mark goes from
the sending thread straight to the I/O thread and back, and marks queued meanwhile by other
threads go in the same transaction. ``mark_delivered`` only queues; a writer thread
(``ledger-writer``) commits marks nobody waits for within a few milliseconds. A commit that
fails makes the ledger *failed*: sticky, every later call raises the error, so a mark is never
silently lost and no STATE is emitted past a delivery that is not in the ledger.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from target_everflow.ledger.backend import Backend, Identity
from target_everflow.ledger.base import LedgerError

Mark = tuple[str, "int | None"]
"""(key, HTTP status) for a delivered mark; (key, None) for a sending mark."""

FOLLOW_WAIT = 0.2
"""Seconds between looks of a caller waiting for a commit job another caller queued (that
caller's wait has the deadline, and wakes the others when it ends)."""
COMMIT_WHAT = "commit delivered marks"
"""What a mark commit is called in errors ("... while trying to commit delivered marks")."""


class MarkQueue:
    """The queue of marks, the commit job and the writer thread.

    ``commit(marks)`` writes one batch in one transaction and returns the keys whose sending
    mark proved the claim still ours; ``run(job, what)`` runs ``job`` on the I/O thread and
    waits for it with a deadline (``LedgerIO.call``); ``describe(error)`` is the message of a
    commit that failed other than with a :class:`LedgerError`. ``check()`` raises when the
    ledger cannot take marks (it is called with the queue's lock held). Also holds the ledger's
    sticky failure (:attr:`failed`).
    """

    def __init__(
        self,
        *,
        commit: Callable[[list[Mark]], set[str]],
        run: Callable[[Callable[[], None], str], None],
        check: Callable[[], None],
        describe: Callable[[Exception], str],
        logger: logging.Logger,
        commit_delay: float,
        max_batch: int,
    ) -> None:
        self._commit = commit
        self._run = run
        self._check = check
        self._describe = describe
        self._log = logger
        self._commit_delay = commit_delay
        self._max_batch = max_batch
        # All guarded by _cond. The writer waits on _wake (the same lock): it is woken when
        # marks wait that no caller is committing (or the queue stops or fails), not by every
        # commit, which made each commit one more thread switch.
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        self._wake = threading.Condition(lock)
        self._queue: list[Mark] = []
        self._enqueued = 0
        self._committed = 0
        self._stopping = False
        self.failed: LedgerError | None = None
        self._fenced: dict[str, bool] = {}  # sending marks' answers, by key
        self._job: object | None = None  # the commit job queued on the I/O thread, not started
        self.commits = 0  # number of mark transactions (diagnostics, tests)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ledger-writer", daemon=True)
        self._thread.start()

    def stop(self) -> int:
        """Commit what is queued, end the writer; return the number of marks not committed."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            self._wake.notify_all()
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
            self._wake.notify_all()

    def sending(self, key: str) -> bool:
        """Queue a sending mark and wait for its commit; whether the claim was still ours."""
        with self._cond:
            self._check()
            self._queue.append((key, None))
            self._enqueued += 1
            target = self._enqueued
        self._commit_up_to(target)
        with self._cond:
            return self._fenced.pop(key, False)

    def fence(self, keys: Sequence[str], delivered: Sequence[tuple[str, int]]) -> set[str]:
        """Queue ``delivered`` marks and sending marks of ``keys`` together and, when there are
        keys, commit them (one transaction, with whatever else is queued); the keys whose claim
        was still ours. Without keys the delivered marks are left to the writer."""
        with self._cond:
            self._check()
            self._queue.extend((key, int(status)) for key, status in delivered)
            self._queue.extend((key, None) for key in keys)
            self._enqueued += len(delivered) + len(keys)
            target = self._enqueued
            if not keys:
                if delivered:
                    self._wake.notify()  # the writer commits them within a few ms
                return set()
        self._commit_up_to(target)
        with self._cond:
            return {key for key in keys if self._fenced.pop(key, False)}

    def delivered(self, key: str, http_status: int) -> None:
        with self._cond:
            self._check()
            self._queue.append((key, int(http_status)))
            self._enqueued += 1
            if len(self._queue) == 1 or len(self._queue) >= self._max_batch:
                self._wake.notify()

    def flush(self) -> bool:
        """Wait until every mark queued so far is committed; False if there was none."""
        with self._cond:
            if self.failed is not None:
                raise self.failed
            target = self._enqueued
            if self._committed >= target:
                return False
        self._commit_up_to(target)
        return True

    def _commit_up_to(self, target: int) -> None:
        """Commit until the first ``target`` marks are committed, on the I/O thread.

        At most one commit job waits in the I/O thread's queue: a caller that finds one there
        lets it take its mark too and waits for it, instead of queuing a job of its own (which
        would find nothing left to commit). The caller that queued the job waits for it with the
        I/O thread's deadline, and wakes the others however its wait ends, so theirs end too."""
        while True:
            with self._cond:
                if self.failed is not None:
                    raise self.failed
                if self._committed >= target:
                    return
                if self._job is not None:  # queued and not started yet: it takes our mark
                    self._cond.wait(FOLLOW_WAIT)
                    continue
                job = self._job = object()
            try:
                self._run(functools.partial(self._commit_queued, job), COMMIT_WHAT)
            except LedgerError as e:
                self.fail(e)  # (a wait that ran out has failed the ledger already)
                raise
            finally:
                with self._cond:
                    if self._job is job:  # never started (the wait was cut short)
                        self._job = None
                    self._cond.notify_all()

    def _commit_queued(self, job: object) -> None:
        """On the I/O thread: commit up to ``max_batch`` of the queued marks (oldest first).

        Jobs run one at a time, so marks taken by an earlier job are committed (or the ledger
        failed) before the next job looks."""
        with self._cond:
            if self._job is job:
                self._job = None  # started: marks queued from now on need another job
            if self.failed is not None:
                raise self.failed
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
        if not batch:
            return
        try:
            fenced = self._commit(batch)
        except Exception as e:
            err = e if isinstance(e, LedgerError) else LedgerError(self._describe(e))
            self.fail(err)  # sticky: every later call raises; no mark is silently dropped
            raise err from None
        with self._cond:
            for key, status in batch:
                if status is None:
                    self._fenced[key] = key in fenced
            self._committed += len(batch)
            self.commits += 1
            self._cond.notify_all()
            if self._queue:  # (more than one commit's worth): the writer sees to the rest
                self._wake.notify()

    def _gathered(self) -> bool:
        """Wait for marks and gather them for a few milliseconds; False: stopping, all
        committed."""
        with self._cond:
            while not self._queue and not self._stopping and self.failed is None:
                self._wake.wait()
            if self.failed is not None or not self._queue:
                return False
            deadline = time.monotonic() + self._commit_delay
            while len(self._queue) < self._max_batch and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.wait(remaining)
            return bool(self._queue)

    def _loop(self) -> None:
        """The writer: commits the marks nobody waits for (``mark_delivered``), a few
        milliseconds after the first of them was queued."""
        while True:
            if not self._gathered():
                with self._cond:
                    if self._stopping or self.failed is not None:
                        return
                continue
            with self._cond:
                target = self._enqueued
            try:
                self._commit_up_to(target)  # (or rides on a job a sending mark queued)
            except LedgerError as e:
                self._log.error("%s", e)
                return


def write_marks(backend: Backend, who: Identity, cur: Any, items: list[Mark]) -> set[str]:
    """Write ``items`` of ``who`` (in the caller's transaction); return the keys whose sending
    mark found the claim still ours."""
    now = backend.now(cur)
    sending = sorted({k for k, status in items if status is None})
    marks = [(k, status) for k, status in items if status is not None]
    fenced: set[str] = set()
    if sending:
        # The fence: the owner check and the write are one statement, so a claim another
        # process took over (our lease had expired) changes no row and is not sent. It also
        # renews the claim's lease.
        keys = backend.keys_param(sending)
        cur.execute(
            backend.sql(
                "UPDATE {t} SET status = 'sending', lease_until = ?, updated_at = ?"
                " WHERE delivery_key {in_keys} AND status IN ('pending', 'sending') AND {owner} = ?"
            ),
            (now + who.lease_seconds, now, keys, who.owner),
        )
        if cur.rowcount == len(sending):  # every claim still ours (no RETURNING: a row each,
            fenced = set(sending)  # and SQLite lets the GIL go for each row it steps through)
        else:  # some were taken over: those still ours are the ones just marked
            cur.execute(
                backend.sql(
                    "SELECT delivery_key FROM {t} WHERE delivery_key {in_keys}"
                    " AND status = 'sending' AND {owner} = ?"
                ),
                (keys, who.owner),
            )
            fenced = {r[0] for r in cur.fetchall()}
    if marks:  # (with sent_at: the first accepted answer's time)
        backend.upsert_delivered(cur, who, marks, now)
    return fenced
