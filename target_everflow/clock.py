"""The wall clock a conversion's age is judged against (``max_conversion_age_days``).

Read once per record (a streaming run lasts weeks), never once per run. It can be pinned with
the environment variable ``TARGET_EVERFLOW_CLOCK=<ISO-8601 time>``, so that a test, the demo,
the benchmarks or a pipeline replaying dated data give the same outcomes whatever the date is:
the pinned time is then "now" for the whole run.
"""

from __future__ import annotations

import os
import time
import typing as t
from dataclasses import dataclass
from datetime import datetime, timezone

CLOCK_ENV = "TARGET_EVERFLOW_CLOCK"
"""The environment variable that pins the clock."""

EXAMPLE = "2026-11-21T00:00:00Z"


class InvalidClock(ValueError):
    """``TARGET_EVERFLOW_CLOCK`` is set but is not an ISO-8601 time; the message says so in
    one line (never a traceback)."""


@dataclass(frozen=True)
class Clock:
    """Now, in Unix seconds: the system's clock, or a pinned time."""

    pinned: float | None = None

    def now(self) -> float:
        return time.time() if self.pinned is None else self.pinned

    @property
    def is_pinned(self) -> bool:
        return self.pinned is not None

    def describe(self) -> str:
        """The pinned time as ISO-8601 UTC text (the start-up line shows it)."""
        if self.pinned is None:
            return "the system clock"
        return datetime.fromtimestamp(self.pinned, timezone.utc).isoformat().replace("+00:00", "Z")


SYSTEM_CLOCK = Clock()


def parse_time(text: str) -> float:
    """Unix seconds of an ISO-8601 time (``Z`` or an offset; no zone means UTC)."""
    candidate = text.strip()
    if candidate[-1:] in {"Z", "z"}:
        candidate = candidate[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(candidate)
    except ValueError:
        raise InvalidClock(
            f"{CLOCK_ENV}={text[:60]!r} is not an ISO-8601 time (e.g. {CLOCK_ENV}={EXAMPLE})"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def from_environment(environ: t.Mapping[str, str] | None = None) -> Clock:
    """The clock the environment asks for: pinned when ``TARGET_EVERFLOW_CLOCK`` is set (and
    not empty), else the system clock. ``InvalidClock`` when it is set to something else."""
    text = (os.environ if environ is None else environ).get(CLOCK_ENV, "")
    if not text.strip():
        return SYSTEM_CLOCK
    return Clock(parse_time(text))
