"""The sink: wires mapping, delivery and accounting for the records of one stream."""

from __future__ import annotations

import time
import typing as t

from singer_sdk.exceptions import InvalidRecord
from singer_sdk.helpers._compat import (
    date_fromisoformat,
    datetime_fromisoformat,
    time_fromisoformat,
)
from singer_sdk.helpers._typing import get_datelike_property_type
from singer_sdk.sinks import BatchSink

from target_everflow.accounting import shown
from target_everflow.mapping import (
    DEAD_LETTER,
    DUPLICATE,
    INVALID_RECORD,
    SKIPPED,
    Conversion,
    Outcome,
)
from target_everflow.metrics import log_fields
from target_everflow.settings import CONFIG_SCHEMA

if t.TYPE_CHECKING:
    from target_everflow.run import Run
    from target_everflow.target import TargetEverflow


def _kind(value: t.Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)) or type(value).__name__ == "Decimal":
        return "a number"
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else "a value"


class EverflowSink(BatchSink):
    """Maps each record as it arrives; delivers the batch's conversions when drained.

    Skips are final at once; dead letters are written at once and made durable before the
    batch returns; conversions wait for ``process_batch``. The SDK emits STATE only after every
    sink's ``process_batch`` returned, so STATE never covers a record without its outcome.
    """

    # records per batch when the config was not validated (which fills in the schema default)
    MAX_SIZE_DEFAULT = CONFIG_SCHEMA["properties"]["batch_size_rows"]["default"]

    def __init__(self, target: TargetEverflow, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(target, *args, **kwargs)
        self.run: Run = target.run
        self._invalid: tuple[int, str, str | None] | None = None
        self.pending_since: float | None = None
        """``time.monotonic()`` when the oldest record of the current batch was read."""

    @property
    def include_sdc_metadata_properties(self) -> bool:
        """Never: _sdc_* columns mean nothing to a postback (``add_record_metadata`` is ignored)."""
        return False

    # A record that breaks its stream's schema (validate_records) or lacks a key property is
    # one bad record, not a broken run: it is dead-lettered (invalid_record) and the run goes
    # on. (The SDK would raise, or log a traceback per record and deliver it anyway.)

    def _validate_and_parse(self, record: dict) -> dict:
        if self._validator is not None:
            try:
                self._validator.validate(record)
            except InvalidRecord as exc:
                cause = exc.__cause__
                path = ".".join(str(p) for p in getattr(cause, "absolute_path", ()))
                self._invalid = (
                    id(record),
                    f"the record does not match stream {self.stream_name}'s schema"
                    + (f" at {path}" if path else "") + f": {exc.error_message[:300]}",
                    path or None,
                )
                return record
        try:
            self._parse_timestamps_in_record(
                record=record, schema=self.schema, treatment=self.datetime_error_treatment
            )
        except (ValueError, TypeError, OverflowError):
            self._parse_timestamps_leniently(record)
        return record

    def _parse_timestamps_leniently(self, record: dict) -> None:
        """A column the SCHEMA declares date-time holds something else (``12345``, ``"soon"``).

        With ``validate_records`` the record breaks its schema: dead-lettered (invalid_record).
        Without, the schema is not trusted (README): the values that parse are parsed, the others
        stay as they came, and the mapper judges them by Segment's rules (a bad ``timestamp`` is
        a dropped field, or a type_mismatch with ``strict_types``).
        """
        for key, value in record.items():
            prop = self.schema["properties"].get(key)
            if value is None or not isinstance(prop, dict):
                continue
            kind = get_datelike_property_type(prop)
            if kind is None or not isinstance(value, str):
                problem = None if kind is None else f"{_kind(value)}, not a {kind} text"
            else:
                parse = {"date": date_fromisoformat, "time": time_fromisoformat}.get(
                    kind, datetime_fromisoformat
                )
                try:
                    record[key] = parse(value)
                    problem = None
                except (ValueError, TypeError, OverflowError):
                    problem = f"{value[:40]!r} is not a {kind}"
            if problem and self._validator is not None and self._invalid is None:
                self._invalid = (
                    id(record),
                    f"the record does not match stream {self.stream_name}'s schema at {key}: "
                    f"{problem}",
                    key,
                )

    def _singer_validate_message(self, record: dict) -> None:
        missing = [k for k in self._key_properties if k not in record]
        if missing and self._invalid is None:
            self._invalid = (
                id(record),
                f"the record lacks key properties of stream {self.stream_name}: {', '.join(missing)}",
                missing[0],
            )

    def dead_letter_unreadable(self, record: t.Any, message: str) -> None:
        """A RECORD message whose record is not an object: dead-lettered at once, made durable."""
        self.run.summary.read()
        self._account(Outcome(DEAD_LETTER, INVALID_RECORD, message, "record"), record)
        self.run.dead_letters.flush()  # durable before any STATE that follows it

    def process_record(self, record: dict, context: dict) -> None:
        if self.pending_since is None:
            self.pending_since = time.monotonic()
        run = self.run
        run.summary.read()
        if self._invalid is not None:
            _, message, field = self._invalid
            self._invalid = None
            self._account(Outcome(DEAD_LETTER, INVALID_RECORD, message, field), record)
            return
        result = run.mapper.map(record, self.stream_name)
        if isinstance(result, Outcome):
            self._account(result, record)
            return
        for param, why in result.dropped:
            run.summary.drop(self.stream_name, result.event, param)
            run.warn_dropped(self.stream_name, result, param, why)
        batch: dict[str, Conversion] = context.setdefault("conversions", {})
        if result.key in batch:  # the same conversion twice in one batch
            run.summary.count(self.stream_name, result.event, SKIPPED, DUPLICATE)
            return
        batch[result.key] = result

    def _account(self, outcome: Outcome, record: dict) -> None:
        run = self.run
        event = outcome.event or run.event_label(record, self.stream_name)
        if outcome.kind == DEAD_LETTER:
            # Written first, counted after: a dead letter the file could not take (OutputError:
            # the run stops) is not counted, and its record comes again from the last STATE.
            run.dead_letters.write(
                self.stream_name, record, outcome.reason, outcome.message, field=outcome.field
            )
            message_id = run.message_id(record)
            run.logger.warning(
                "Dead-lettered a record of stream %s (message id %s): %s: %s",
                shown(self.stream_name), message_id, outcome.reason, outcome.message,
                extra=log_fields(stream=self.stream_name, event=event, reason=outcome.reason,
                                 message_id=message_id, field=outcome.field),
            )
        run.summary.count(self.stream_name, event, outcome.kind, outcome.reason)

    def start_drain(self) -> dict:
        self.pending_since = None  # records read from now on start the next batch
        return super().start_drain()

    def process_batch(self, context: dict) -> None:
        conversions: dict[str, Conversion] = context.get("conversions", {})
        with self.run.batch():
            try:
                self.run.engine.deliver(list(conversions.values()))
            finally:
                self.run.dead_letters.flush()  # the mapping's dead letters of this batch too
