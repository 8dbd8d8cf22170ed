"""The ledger's I/O thread: every database call runs on it, every caller waits with a deadline.

One thread (``ledger-io``) owns the connection. Callers hand it a job and wait at most
``ledger_timeout`` + :data:`ANSWER_MARGIN` seconds (less once the run is stopping). So no thread,
and above all not the main thread (the only one Python runs signal handlers on), is ever stuck
in libpq or in SQLite's busy wait: a ledger that does not answer fails the run
(:class:`LedgerError`, exit 4) naming the wait, and SIGTERM is always handled.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from target_everflow.ledger.base import LedgerError

_T = TypeVar("_T")

ANSWER_MARGIN = 5.0
"""Seconds a caller waits for the ledger beyond ``ledger_timeout`` (the database's own lock and
statement timeouts fire first and say more) before it gives up on an unanswering ledger."""
STOP_FLOOR = 0.5
"""Seconds any ledger call may still take once the stop grace is over."""


class _Job:
    """One piece of ledger I/O for the I/O thread, and its outcome."""

    __slots__ = ("cancelled", "done", "error", "fn", "result", "started")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        # Held until the job has run: the I/O thread releases it, the caller acquires it with
        # a timeout (one lock in C, where an Event is a Condition and a lock per wait).
        self.done = threading.Lock()
        self.done.acquire()
        self.result: Any = None
        self.error: BaseException | None = None
        self.started = False
        self.cancelled = False


class LedgerIO:
    """The I/O thread of one ledger (``description`` names it in errors). ``on_hang`` is told
    the error once a wait ran out; every later :meth:`call` raises it at once."""

    def __init__(
        self, description: str, timeout: float, on_hang: Callable[[LedgerError], None]
    ) -> None:
        self.description = description
        self.timeout = timeout
        self._on_hang = on_hang
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._jobs_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.hung: LedgerError | None = None  # set once a wait ran out: fail fast from then on
        self.waited = 0.0
        """Seconds callers spent waiting for their calls, summed over every thread."""
        self.calls = 0
        """The calls waited for."""
        self._waited_lock = threading.Lock()
        self._give_up_at: float | None = None  # time.monotonic() deadline once the run stops

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ledger-io", daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, last: Callable[[], None] | None = None) -> None:
        """Run ``last`` (if given) when the thread is free, then end it. Does not wait: a thread
        stuck in the driver is a daemon thread and goes with the process."""
        if self.is_alive():
            if last is not None:
                self._jobs.put(_Job(last))
            self._jobs.put(None)

    def stop_waiting_after(self, seconds: float) -> None:
        give_up_at = time.monotonic() + max(0.0, seconds)
        if self._give_up_at is None or give_up_at < self._give_up_at:
            self._give_up_at = give_up_at

    def _loop(self) -> None:
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
            except BaseException as e:  # handed to the waiting caller
                job.error = e
            job.done.release()

    def call(self, fn: Callable[[], _T], what: str) -> _T:
        """Run ``fn()`` on the I/O thread; wait for it at most ``timeout`` + ANSWER_MARGIN
        seconds (less once the run is stopping). The wait is a plain timed wait, so signal
        handlers run on the main thread meanwhile."""
        if threading.current_thread() is self._thread:
            return fn()
        if self.hung is not None:
            raise self.hung
        if not self.is_alive():
            raise LedgerError(f"ledger {self.description} is closed")
        job = _Job(fn)
        self._jobs.put(job)
        limit = self.timeout + ANSWER_MARGIN
        started = time.monotonic()
        deadline = started + limit
        done = False
        try:
            while not done:
                give_up_at = self._give_up_at
                # Stopping: wait until the grace is over, and a healthy ledger's few milliseconds
                # even after that (the last delivered marks are worth recording).
                end = (
                    deadline
                    if give_up_at is None
                    else min(deadline, max(give_up_at, started + STOP_FLOOR))
                )
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                done = job.done.acquire(timeout=min(remaining, 0.2))
        except BaseException:  # a signal handler's exception: the job is not ours any more
            self._cancel(job)
            raise
        with self._waited_lock:
            self.waited += time.monotonic() - started
            self.calls += 1
        if not done:
            done = job.done.acquire(blocking=False)  # (it may have ended just now)
        if not done:
            self._cancel(job)
            raise self._hang(what, limit, stopping=time.monotonic() < deadline)
        if job.error is not None:
            raise job.error
        return cast(_T, job.result)

    def _hang(self, what: str, limit: float, *, stopping: bool) -> LedgerError:
        if self._give_up_at is not None and stopping:
            err = LedgerError(
                f"ledger {self.description}: stopped waiting for the ledger to {what}: "
                "the run is stopping and the ledger did not answer within the grace period"
            )
        else:
            err = LedgerError(
                f"ledger {self.description}: no answer within {limit:g} s while trying to "
                f"{what} (ledger_timeout is {self.timeout:g} s): the database, or the "
                "network to it, is not answering"
            )
        self.hung = err
        self._on_hang(err)
        return err

    def _cancel(self, job: _Job) -> None:
        with self._jobs_lock:
            if not job.started:
                job.cancelled = True
