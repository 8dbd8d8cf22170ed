"""When to try again: the one retry policy (backoff, jitter, ``Retry-After``) and its users' values.

Each user has its own parameters:

* postbacks (``delivery/engine.py``): ``RetryPolicy(max_retries=<setting max_retries>)``: exponential
  backoff from 0.5 s, at most 30 s, full jitter; a ``Retry-After`` is waited for at least (at
  most 300 s);
* the Everflow REST API (``everflow/api.py``: the pre-flight check and reconcile):
  :data:`API_RETRY`: 4 attempts, exponential backoff from 1 s, at most 8 s, equal jitter; a
  ``Retry-After`` replaces the backoff, and one longer than 60 s is not waited for (the caller
  fails instead, see :meth:`RetryPolicy.waits_for`);
* the ledger's deadlocks and serialisation failures (``ledger/sql.py``): :data:`LEDGER_RETRY`:
  6 retries, linear backoff of 20 ms per retry, the lower quarter of each step left out.

And the one reading of a ``Retry-After`` header: :func:`retry_after_seconds`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class RetryPolicy:
    """Retry number ``retry`` (1-based) waits a random time up to a ceiling that grows with
    ``retry`` (doubling from ``backoff_base``, or ``backoff_base`` per retry when not
    ``exponential``), at most ``backoff_max``. ``jitter`` is the share of the ceiling drawn at
    random: 1.0 is full jitter (0 up to the ceiling), 0.5 equal jitter (half up to the ceiling).

    A server's ``Retry-After`` is waited for at least (``retry_after_exact`` False: the longer of
    it and the backoff) or exactly (True), never longer than ``retry_after_max``. The defaults
    other than ``max_retries`` are the postbacks' (``delivery/engine.py``)."""

    max_retries: int
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 300.0
    jitter: float = 1.0
    exponential: bool = True
    retry_after_exact: bool = False

    @property
    def max_attempts(self) -> int:
        """The first try and every retry."""
        return self.max_retries + 1

    def _growth(self, retry: int) -> float:
        return self.backoff_base * (2 ** (retry - 1) if self.exponential else retry)

    def ceiling(self, retry: int) -> float:
        """The longest backoff before retry number ``retry`` (1-based)."""
        return min(self.backoff_max, self._growth(retry))

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """A random backoff before retry number ``retry``, within the jitter's range."""
        ceiling = self.ceiling(retry)
        return ceiling * (1.0 - self.jitter) + (rng or random).uniform(0, ceiling * self.jitter)

    def waits_for(self, retry_after: float) -> bool:
        """Whether a ``Retry-After`` of this many seconds is within the cap."""
        return retry_after <= self.retry_after_max

    def delay(
        self, retry: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        if retry_after is not None and self.retry_after_exact:
            return min(self.retry_after_max, retry_after)
        jittered = self.backoff(retry, rng)
        if retry_after is not None:
            return min(self.retry_after_max, max(retry_after, jittered))
        return jittered

    def worst_case_seconds(self, timeout: float) -> float:
        """How long one call can take at most: every attempt times out, every wait maxed."""
        waits = sum(
            min(self.retry_after_max, max(self.backoff_max, self._growth(i)))
            for i in range(1, self.max_retries + 1)
        )
        return timeout * self.max_attempts + waits


API_RETRY = RetryPolicy(
    max_retries=3,
    backoff_base=1.0,
    backoff_max=8.0,
    retry_after_max=60.0,
    jitter=0.5,
    retry_after_exact=True,
)
"""The Everflow REST API's calls (the pre-flight check, reconcile)."""

LEDGER_RETRY = RetryPolicy(
    max_retries=6,
    backoff_base=0.02,
    backoff_max=0.12,
    retry_after_max=0.0,
    jitter=0.75,
    exponential=False,
)
"""A ledger transaction rolled back by a deadlock or a serialisation failure."""


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # an HTTP date is always GMT
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, moment.timestamp() - (now if now is not None else time.time()))
