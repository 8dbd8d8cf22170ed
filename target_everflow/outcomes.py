"""The outcome vocabulary: every record read ends in exactly one :class:`Outcome` kind, with a
reason when it is not delivered. The values are user-visible (run summary, dead-letter lines,
METRIC tags, the run history), so they never change; each name has one meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

# Outcome kinds (the run summary counts these).
DELIVERED = "delivered"
"""Everflow accepted the postback (in a dry run: planned)."""
SKIPPED = "skipped"
DEAD_LETTER = "dead_letter"

# Why a record was skipped.
NOT_TRACK = "not_track"
UNMAPPED_EVENT = "unmapped_event"
NO_TRANSACTION_ID = "no_transaction_id"
DUPLICATE = "duplicate"
CLAIMED_ELSEWHERE = "claimed_elsewhere"
"""Skipped: another run took the claim over (this run's lease had expired) and sends it."""
TOO_OLD = "too_old"
"""Skipped at mapping: the event is older than ``max_conversion_age_days`` when it would be sent;
no click that old can still convert (Everflow credits a conversion within 90 days of its click)."""

# Why a record was dead-lettered (besides the postback's ``rejected`` / ``http_<status>``,
# see ``postback.Answer.reason``).
MISSING_REQUIRED_FIELD = "missing_required_field"
TYPE_MISMATCH = "type_mismatch"
INVALID_RECORD = "invalid_record"
IN_DOUBT_REASON = "in_doubt"
"""Dead-lettered under ``in_doubt: dead_letter``: a postback may have reached Everflow with no
answer recorded, so a person checks it before a replay."""

IN_DOUBT_COUNT = "in_doubt"
"""The run summary's delivery counter of conversions found in doubt (resent or dead-lettered)."""

UNKNOWN_EVENT = "(unknown)"
"""The event name counted for a record whose event cannot be read."""


@dataclass(slots=True)
class Outcome:
    """The final fate of a record that is not (or not yet) a conversion."""

    kind: str
    reason: str
    message: str = ""
    field: str | None = None
    event: str = ""
    """The event name, where it is known (the summary counts per event)."""
    message_id: str | None = None
    """The record's message id, where it has one (log lines name it)."""
