"""Leases: a live claim never expires, however slow the (rate-limited) batch is.

While a ledger is open a heartbeat thread (``ledger-heartbeat``) extends the lease of all its
pending rows every ``lease_seconds / 3``. Before a postback leaves, an overdue heartbeat (time
since the last renewal, measured on ``CLOCK_BOOTTIME``, which keeps counting through a suspend,
is over half the lease) makes the sender renew every lease first. Leases not renewed for a whole
lease fail the ledger: other processes may have taken this run's claims over.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from target_everflow.ledger.base import LedgerError, lease_clock


class Leases:
    """The heartbeat of one ledger. ``renew()`` extends every lease (one transaction) and
    returns the row count; ``hung()`` says whether the ledger stopped answering; ``fail(error)``
    fails the ledger."""

    def __init__(
        self,
        *,
        description: str,
        lease_seconds: float,
        renew: Callable[[], int],
        hung: Callable[[], bool],
        fail: Callable[[LedgerError], None],
        logger: logging.Logger,
    ) -> None:
        self.description = description
        self.lease_seconds = lease_seconds
        self._renew = renew
        self._hung = hung
        self._fail = fail
        self._log = logger
        self.clock: Callable[[], float] = lease_clock
        self.last_renewal = self.clock()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.last_renewal = self.clock()
        self._thread = threading.Thread(target=self._loop, name="ledger-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the heartbeat (it only waits for the I/O thread, with a deadline: this ends)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3.0):
            if self._hung():
                return  # the ledger stopped answering: the run is failing already
            try:
                self._renew()
            except Exception as e:
                silent_for = self.clock() - self.last_renewal
                self._log.warning("ledger: could not renew leases (%s)", e)
                if silent_for >= self.lease_seconds:
                    self._fail(LedgerError(
                        f"ledger {self.description}: leases not renewed for {silent_for:.0f} s; "
                        f"other processes may take over this run's claims ({e})"
                    ))  # fmt: skip
                    return

    def renew_if_overdue(self) -> None:
        """Before a postback leaves: if the heartbeat is overdue (this process was paused, the
        machine suspended, the ledger slow), renew every lease first."""
        if self.clock() - self.last_renewal < self.lease_seconds / 2:
            return
        with self._lock:
            silent_for = self.clock() - self.last_renewal
            if silent_for < self.lease_seconds / 2:
                return  # another sender renewed meanwhile
            self._log.warning(
                "ledger: leases last renewed %.0f s ago (lease %.0f s; was this process paused "
                "or the machine suspended?): renewing them before sending more",
                silent_for,
                self.lease_seconds,
            )
            self._renew()
