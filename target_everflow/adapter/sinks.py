"""The sink: wires mapping, delivery and accounting for the records of one stream."""

from __future__ import annotations

import time
import typing as t
from datetime import date
from datetime import time as dt_time

from singer_sdk.exceptions import InvalidRecord
from singer_sdk.sinks import BatchSink

from target_everflow.fields import Mismatch
from target_everflow.mapping import Conversion
from target_everflow.mapping import event_time as _event_time
from target_everflow.outcomes import (
    DEAD_LETTER,
    DUPLICATE,
    INVALID_RECORD,
    SKIPPED,
    UNKNOWN_EVENT,
    Outcome,
)
from target_everflow.settings import CONFIG_SCHEMA
from target_everflow.text import kind_of

if t.TYPE_CHECKING:
    from singer_sdk.target_base import Target

    from target_everflow.run import Run


class SinkHost(t.Protocol):
    """What a sink needs of its target (``adapter/target.py``, which imports this module)."""

    run: Run
    sinks: t.MutableSet[EverflowSink]

    def batch_settled(self) -> None: ...


DATELIKE_FORMATS = frozenset({"date-time", "date", "time"})


def _datelike(prop: t.Any) -> str | None:
    """``date-time``, ``date`` or ``time`` when a property declares that format (or an
    ``anyOf`` branch does), else None."""
    if not isinstance(prop, dict):
        return None
    if prop.get("format") in DATELIKE_FORMATS:
        return t.cast("str", prop["format"])
    for branch in prop.get("anyOf", ()):
        if isinstance(branch, dict) and branch.get("format") in DATELIKE_FORMATS:
            return t.cast("str", branch["format"])
    return None


def without_datelike_formats(schema: t.Any) -> t.Any:
    """A copy of a JSON schema that declares no date/time formats: the SDK then parses no
    timestamp, and every record stays as it was received (a dead letter holds it verbatim)."""
    if isinstance(schema, dict):
        return {
            k: without_datelike_formats(v)
            for k, v in schema.items()
            if not (k == "format" and v in DATELIKE_FORMATS)
        }
    if isinstance(schema, list):
        return [without_datelike_formats(v) for v in schema]
    return schema


def _not_datelike(kind: str, value: t.Any) -> str | None:
    """What is wrong with a value of a column declared ``kind`` (None: it parses)."""
    if not isinstance(value, str):
        return f"{kind_of(value)}, not a {kind} text"
    try:
        if kind == "date":
            date.fromisoformat(value)
        elif kind == "time":
            dt_time.fromisoformat(value)
        else:
            _event_time(value)
    except (ValueError, TypeError, OverflowError, Mismatch):
        return f"{value[:40]!r} is not a {kind}"
    return None


class EverflowSink(BatchSink):
    """Maps each record as it arrives; delivers the batch's conversions when drained.

    Skips are final at once; dead letters are written at once and made durable before the
    batch returns; conversions wait for ``process_batch``. The SDK emits STATE only after every
    sink's ``process_batch`` returned, so STATE never covers a record without its outcome.
    Records reach ``process_record`` as they were received: the SDK is shown the schema
    without date/time formats (so it parses no timestamp) and validates nothing; the sink
    checks ``validate_records`` and key properties itself.
    """

    # records per batch when the config was not validated (which fills in the schema default)
    MAX_SIZE_DEFAULT = CONFIG_SCHEMA["properties"]["batch_size_rows"]["default"]

    def __init__(
        self,
        target: Target,
        stream_name: str,
        schema: dict,
        key_properties: t.Sequence[str] | None,
    ) -> None:
        # The SDK is given no key properties (it would raise for a record that lacks one);
        # ``key_properties`` answers with the stream's own, and ``check_record`` checks them.
        self.stream_key_properties = list(key_properties or [])
        super().__init__(target, stream_name, schema, None)
        self.target_everflow = t.cast("SinkHost", target)
        self.run: Run = self.target_everflow.run
        self.record_validator: t.Any = None
        self.columns: frozenset[str] | None = None
        """The columns the schema declares when it allows no others (None: it allows any)."""
        self.warned_columns: set[str] = set()
        self.datelike_columns: dict[str, str] = {}
        self.holding = 0
        """Records taken since the last batch settled (they have no final outcome yet)."""
        self.pending_since: float | None = None
        """``time.monotonic()`` when the oldest record of the current batch was read."""

    def setup(self) -> None:
        super().setup()
        self.run.open()  # programmatic use: resources open before the first record
        # Validated (validate_records) against the schema as the tap declared it; the SDK sees
        # no date/time formats, so it parses no timestamp.
        self.record_validator = super().get_validator()
        properties = self.original_schema.get("properties", {})
        self.datelike_columns = {
            key: kind for key, prop in properties.items() if (kind := _datelike(prop)) is not None
        }
        """Columns the tap declares date, time or date-time (checked with validate_records)."""
        self.schema = without_datelike_formats(self.schema)
        if not self.schema.get("additionalProperties", False):
            self.columns = frozenset(self.schema.get("properties", {}))
        self.target_everflow.sinks.add(self)

    @property
    def key_properties(self) -> t.Sequence[str]:
        """The stream's key properties, as its SCHEMA message names them."""
        return self.stream_key_properties

    def get_validator(self) -> None:
        """None: the SDK validates nothing (``check_record`` does, a bad record is dead-lettered)."""
        return None

    @property
    def include_sdc_metadata_properties(self) -> bool:
        """Never: _sdc_* columns mean nothing to a postback (``add_record_metadata`` is ignored)."""
        return False

    # A record that breaks its stream's schema (validate_records) or lacks a key property is
    # one bad record, not a broken run: it is dead-lettered (invalid_record) and the run goes
    # on. (The SDK would raise, or log a traceback per record and deliver it anyway.)

    def check_record(self, record: dict) -> tuple[str, str | None] | None:
        """Why a record is invalid (message, field), or None."""
        if self.record_validator is not None:
            try:
                self.record_validator.validate(record)
            except InvalidRecord as exc:
                cause = exc.__cause__
                path = ".".join(str(p) for p in getattr(cause, "absolute_path", ()))
                return (
                    f"the record does not match stream {self.stream_name}'s schema"
                    + (f" at {path}" if path else "")
                    + f": {exc.error_message[:300]}",
                    path or None,
                )
            problems = [
                (key, problem)
                for key, kind in self.datelike_columns.items()
                if (value := record.get(key)) is not None
                and (problem := _not_datelike(kind, value))
            ]
            if problems:
                order = {key: i for i, key in enumerate(record)}
                key, problem = min(problems, key=lambda found: order.get(found[0], 0))
                return (
                    f"the record does not match stream {self.stream_name}'s schema at {key}: "
                    f"{problem}",
                    key,
                )
        missing = (
            [k for k in self.stream_key_properties if k not in record]
            if self.stream_key_properties
            else None
        )
        if missing:
            return (
                f"the record lacks key properties of stream {self.stream_name}: {', '.join(missing)}",
                missing[0],
            )
        return None

    def dead_letter_unreadable(self, record: t.Any, message: str) -> None:
        """A RECORD message whose record is not an object: dead-lettered at once, made durable."""
        self.run.count_read()
        self.run.account(
            self.stream_name,
            Outcome(DEAD_LETTER, INVALID_RECORD, message, "record", event=UNKNOWN_EVENT),
            record,
        )
        self.run.flush_dead_letters()  # durable before any STATE that follows it

    def take(self, record: dict) -> None:
        """A record from the target (``TargetEverflow._process_record_message``): the SDK's
        per-record steps that do something for this sink, in the SDK's order. Left out: record
        validation and timestamp parsing (``get_validator`` is None and the schema declares no
        date/time format: ``check_record`` validates), ``preprocess_record`` (not overridden:
        the record as it is), the key-property check (the SDK is given none) and a debug line
        per record."""
        context = self._get_context(record)
        self._remove_sdc_metadata_from_record(record)  # add_record_metadata is ignored
        if self.columns is not None and not self.columns.issuperset(record):
            self.warn_unknown_columns(record)
        self.tally_record_read()
        self.process_record(record, context)
        self.record_counter_metric.increment()

    def warn_unknown_columns(self, record: dict) -> None:
        """The SDK's warning, once per column, for a value in a column the stream's schema does
        not declare (when it allows no other columns)."""
        assert self.columns is not None
        for key, value in record.items():
            if key not in self.columns and value is not None and key not in self.warned_columns:
                self.logger.warning("No schema for record field '%s'", key)
                self.warned_columns.add(key)

    def process_record(self, record: dict, context: dict) -> None:
        if self.pending_since is None:
            self.pending_since = time.monotonic()
        run = self.run
        self.holding += 1
        event = run.view(record, self.stream_name)  # the record's one view
        invalid = self.check_record(record)
        if invalid is not None:
            message, field = invalid
            run.account(
                self.stream_name,
                Outcome(
                    DEAD_LETTER,
                    INVALID_RECORD,
                    message,
                    field,
                    event=event.label,
                    message_id=event.message_id,
                ),
                record,
            )
            return
        result = run.map(event)
        if isinstance(result, Outcome):
            run.account(self.stream_name, result, record)
            return
        batch: dict[str, Conversion] = context.setdefault("conversions", {})
        if result.key in batch:  # the same conversion twice in one batch
            run.account(
                self.stream_name,
                Outcome(SKIPPED, DUPLICATE, event=result.event, message_id=result.message_id),
                record,
            )
            return
        batch[result.key] = result

    def start_drain(self) -> dict:
        self.pending_since = None  # records read from now on start the next batch
        return super().start_drain()

    def process_batch(self, context: dict) -> None:
        conversions: dict[str, Conversion] = context.get("conversions", {})
        self.run.deliver(list(conversions.values()))
        self.holding = 0
        self.target_everflow.batch_settled()
