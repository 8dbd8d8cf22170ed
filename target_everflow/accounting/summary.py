"""Accounting for every record: the dead-letter file and the run summary.

Dead letters are written as a Singer stream, so that after fixing the cause the file replays
through the target as it is::

    mv .target-everflow/dead_letter.jsonl retry.jsonl
    target-everflow --config config.json --input retry.jsonl

Each record line is a Singer ``RECORD`` message (the record as received; the SDK's parsed
datetimes written back as ISO-8601, numbers exactly as read) with the dead-letter facts beside
it: ``reason``, ``message``, ``field``, ``at`` and, for answers from Everflow, ``status``. The
first dead letter of a stream in a run is preceded by that stream's ``SCHEMA`` message.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
import typing as t
from collections import Counter, defaultdict
from datetime import date, datetime, timezone
from pathlib import Path

import simplejson

from target_everflow.errors import OutputError, TargetEverflowError
from target_everflow.outcomes import DEAD_LETTER, DELIVERED, SKIPPED
from target_everflow.text import clip


def json_default(value: t.Any) -> t.Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def dumps(obj: t.Any) -> str:
    """JSON for our files: Decimals exactly as read, datetimes as ISO-8601, NaN as null.

    Any depth: a value nested deeper than the encoder's recursion allows (the reader accepts
    records nested ~990 levels, and writing one happens deeper in the call stack than reading
    it) is written by ``_dumps_deep``, the same JSON without recursion.
    """
    try:
        return simplejson.dumps(
            obj,
            use_decimal=True,
            default=json_default,
            ensure_ascii=False,
            ignore_nan=True,
            separators=(",", ":"),
        )
    except RecursionError:
        return _dumps_deep(obj)


def _dumps_deep(obj: t.Any) -> str:
    """``dumps`` with an explicit stack instead of recursion: objects and lists are opened and
    closed here, every other value (a leaf) goes through ``dumps``."""
    parts: list[str] = []
    stack: list[list[t.Any]] = []  # [iterator, is_object, first_item]

    def open_value(value: t.Any) -> None:
        if isinstance(value, dict):
            parts.append("{")
            stack.append([iter(value.items()), True, True])
        elif isinstance(value, (list, tuple)):
            parts.append("[")
            stack.append([iter(value), False, True])
        else:
            parts.append(dumps(value))

    open_value(obj)
    while stack:
        frame = stack[-1]
        item: t.Any = next(frame[0], _END)
        if item is _END:
            parts.append("}" if frame[1] else "]")
            stack.pop()
            continue
        if not frame[2]:
            parts.append(",")
        frame[2] = False
        if frame[1]:
            key, value = item
            parts.append(dumps(key if isinstance(key, str) else _key_text(key)) + ":")
            open_value(value)
        else:
            open_value(item)
    return "".join(parts)


_END = object()


def _key_text(key: t.Any) -> str:
    """A non-string object key as JSON encoders write it (``true``, ``null``, ``1``)."""
    return dumps(key) if isinstance(key, (bool, int, float)) or key is None else str(key)


# --- log lines ---------------------------------------------------------------------------


def shown(value: t.Any, limit: int = 200) -> str:
    """A record-derived value for a log line: as it is when it is plain printable text, else
    escaped repr-style (``'a\\nb'``), so that no value can start a log line of its own or
    move the cursor; at most about ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    text = clip(text, limit)
    return text if text.isprintable() else repr(text)


def escape_control(text: str) -> str:
    """``text`` with every non-printable character (line breaks, control characters, line
    separators, lone surrogates) written as its escape; printable text stays as it is."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class _EscapedRecord(logging.LogRecord):
    """A log record whose message is always one line: the backstop under ``shown``.

    Whatever a message was built from (a record value the call site did not escape, a
    server's answer, a stream name the SDK logs), a newline in it is written as ``\\n``; so is
    one in the logger's name. A traceback (``exc_info``) is the formatter's, after the message:
    unchanged.
    """

    escapes = True

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = escape_control(self.name)  # (the SDK names a sink's logger after its stream)

    def getMessage(self) -> str:  # logging's name
        return escape_control(super().getMessage())


def escape_log_records() -> None:
    """Make every log record of this process escape its message (idempotent)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "escapes", False):
        return
    if previous is logging.LogRecord:
        logging.setLogRecordFactory(_EscapedRecord)
        return

    def factory(*args: t.Any, **kwargs: t.Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.name = escape_control(record.name)
        message = record.getMessage
        record.getMessage = lambda: escape_control(message())  # type: ignore[method-assign]  # escape every message
        return record

    factory.escapes = True  # type: ignore[attr-defined]  # marks the factory as installed
    logging.setLogRecordFactory(factory)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line left unfinished by a run that was killed while writing it.

    Such a line was never made durable, so no STATE covers its record: the tap sends the record
    again and the next run dead-letters it again. Appending after it would glue the next line to
    it and break the file (it could no longer be replayed).
    """
    try:
        handle = path.open("rb+")
    except FileNotFoundError:
        return
    with handle:
        end = handle.seek(0, os.SEEK_END)
        if end == 0:
            return
        handle.seek(end - 1)
        if handle.read(1) == b"\n":
            return
        position = end
        while position > 0:
            start = max(0, position - 65536)
            handle.seek(start)
            chunk = handle.read(position - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                handle.truncate(start + newline + 1)
                return
            position = start
        handle.truncate(0)


def check_output(setting: str, path: Path) -> None:
    """Fail at start-up, naming the setting, when the file ``path`` cannot be written (a
    directory, a parent that is a file, no permission); leaves no file behind."""
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        with path.open("a", encoding="utf-8"):
            pass
        if not existed:
            path.unlink()
    except OSError as exc:
        raise TargetEverflowError(
            f"Setting '{setting}': cannot write {path}: {exc.strerror or exc}"
        ) from None


UNWRITABLE = "_target_everflow_unwritable"
"""The key of the stand-in written for a record that cannot be written as JSON at all."""


def _stand_in(why: str, message_id: str | None) -> dict[str, t.Any]:
    """What the dead-letter file keeps of a record it cannot write: why, and its message id."""
    stand_in: dict[str, t.Any] = {UNWRITABLE: why}
    if message_id is not None:
        try:
            dumps(message_id)  # a message id that cannot be written either is left out
            stand_in["messageId"] = message_id
        except Exception:  # the stand-in itself must always be writable
            pass
    return stand_in


class DeadLetters:
    """The dead-letter file. Thread-safe; ``flush()`` makes every written line durable.

    Lines are written whole or not at all: each goes to the file in ``os.write`` calls, and a
    write that fails part-way (disk full) is cut back off, so the file stays replayable and
    ``count`` is exactly the records whose line is in the file. After a failed write the file
    takes no more lines: ``write`` raises ``OutputError`` (the run stops; records without an
    outcome come again from the last STATE).
    """

    def __init__(self, path: Path, schemas: t.Callable[[str], dict | None]) -> None:
        self.path = path
        self._schemas = schemas
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._streams_announced: set[str] = set()
        self._dirty = False
        self.count = 0
        self.failed: OutputError | None = None

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _drop_torn_tail(self.path)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, 0o666)
        return self._fd

    def write(
        self,
        stream: str,
        record: t.Any,
        reason: str,
        message: str,
        *,
        field: str | None = None,
        status: int | None = None,
        message_id: str | None = None,
    ) -> None:
        """Append one dead letter (and its stream's SCHEMA first, once); ``OutputError`` when
        the file cannot take it. ``message_id`` (the record's, read once at the door) is kept
        in a stand-in for a record that cannot be written as JSON."""
        line: dict[str, t.Any] = {
            "type": "RECORD",
            "stream": stream,
            "record": record,
            "reason": reason,
            "message": message,
        }
        if field:
            line["field"] = field
        if status is not None:
            line["status"] = status
        line["at"] = _now_iso()
        try:
            text = dumps(line)
        except Exception as exc:  # whatever it is, the record is still kept
            why = f"the record cannot be written as JSON ({type(exc).__name__}: {str(exc)[:200]})"
            line["record"] = _stand_in(why, message_id)
            text = dumps(line)
        with self._lock:
            if self.failed is not None:
                raise self.failed
            schema_line = ""
            if stream not in self._streams_announced:
                schema = self._schemas(stream) or {"type": "object", "properties": {}}
                announce = {
                    "type": "SCHEMA",
                    "stream": stream,
                    "schema": schema,
                    "key_properties": [],
                }
                schema_line = dumps(announce) + "\n"
            # backslashreplace: a lone surrogate (a "\ud800" JSON escape in the input) is written
            # as that same JSON escape, so the record is kept exactly instead of failing the write.
            self._append((schema_line + text + "\n").encode("utf-8", "backslashreplace"))
            self._streams_announced.add(stream)
            self._dirty = True
            self.count += 1

    def _append(self, data: bytes) -> None:
        """Write ``data`` whole, or cut off what part of it was written and raise."""
        written = 0
        try:
            fd = self._open()
            view = memoryview(data)
            while written < len(data):
                written += os.write(fd, view[written:])
        except OSError as exc:
            if written and self._fd is not None:  # a torn line: cut it off (never durable)
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, max(0, os.fstat(self._fd).st_size - written))
            self.failed = OutputError(
                f"Cannot write the dead-letter file {self.path}: {exc.strerror or exc}. Stopping: "
                f"{records_kept(self.count)} in it; records without an outcome were not "
                "dead-lettered, the next run resumes from the last STATE."
            )
            raise self.failed from None

    def flush(self) -> None:
        with self._lock:
            if self._fd is not None and self._dirty:
                try:
                    os.fsync(self._fd)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:  # (not a file that can be synced: /dev/null)
                        self.failed = self.failed or OutputError(
                            f"Cannot make the dead-letter file {self.path} durable: "
                            f"{exc.strerror or exc}. Stopping: the next run resumes from the last STATE."
                        )
                        raise self.failed from None
                self._dirty = False

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._lock:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None


MAX_LABEL = 120
"""Longest stream or event name the summary keeps (a 1 MB event name is counted shortened)."""


def label(name: str) -> str:
    """A stream or event name as the summary shows it: bounded, and always valid UTF-8."""
    name = clip(name, MAX_LABEL)
    if not name.isascii():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: shown as their escapes
            name = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return name


OTHER_EVENTS = "(other events)"
"""The summary row that counts the records of every event name without a row of its own."""
MAX_OTHER_EVENTS = 50
"""Rows for events that are not mapped: the most frequent names, at most this many."""
_TRACKED_OTHER_EVENTS = 1000
"""Unmapped (stream, event) names followed with their own counts; when twice as many are
followed, the less frequent half is folded into OTHER_EVENTS (memory stays flat)."""

_REMEMBERED_NAMES = 1000
"""(stream, event) names whose labels and row ``RunSummary`` remembers (then it starts over)."""

_Row = dict[tuple[str, str], int]
"""(kind, reason) -> records."""


class RunSummary:
    """Counts of every outcome, per stream and event. Thread-safe.

    Rows, per stream: one for each mapped event (``mapped`` names the row of a mapped event
    name, ``None`` for any other name), the most frequent other names up to
    ``MAX_OTHER_EVENTS`` over all streams, and ``OTHER_EVENTS`` for the rest. Every record is
    counted in exactly one row, so the totals are exact; memory does not grow with the number of
    distinct event names (at most ``2 * _TRACKED_OTHER_EVENTS`` other names are followed).
    """

    def __init__(self, mapped: t.Callable[[str], str | None] | None = None) -> None:
        self._lock = threading.Lock()
        self._mapped = mapped or (lambda _name: None)
        self.started = time.monotonic()
        self.outcomes: Counter[tuple[str, str, str, str]] = Counter()
        """(stream, row, kind, reason) -> records, for mapped events and OTHER_EVENTS."""
        self._others: dict[tuple[str, str], Counter[tuple[str, str]]] = {}
        """(stream, event) -> (kind, reason) -> records, for the other names followed."""
        self._totals: Counter[tuple[str, str]] = Counter()
        """(kind, reason) -> records, over every row."""
        self.dropped: Counter[tuple[str, str, str]] = Counter()
        """(stream, event, parameter) -> times an optional field was left out."""
        self.delivery: Counter[str] = Counter()
        """requests, retries, http_429, in_doubt, ... from the delivery engine."""
        self.records_read = 0
        self._seen: dict[tuple[str, str], tuple[str, str | None, str]] = {}

    def count_read(self, count: int = 1) -> None:
        with self._lock:
            self.records_read += count

    def _row(self, event: str) -> str | None:
        """The row of a mapped event name, else None."""
        try:
            row = self._mapped(event)
        except Exception:  # a name the mapper cannot judge is another name
            return None
        return None if row is None else label(row)

    def _labels(self, stream: str, event: str) -> tuple[str, str | None, str]:
        """The stream's label, the event's row (None: not mapped) and the event's label,
        remembered for the names seen last (a few names repeat millions of times)."""
        found = self._seen.get((stream, event))
        if found is None:
            if len(self._seen) >= _REMEMBERED_NAMES:
                self._seen.clear()
            found = self._seen[stream, event] = (label(stream), self._row(event), label(event))
        return found

    def count(self, stream: str, event: str, kind: str, reason: str = "", n: int = 1) -> None:
        stream, row, event = self._labels(stream, event)
        with self._lock:
            self._totals[kind, reason] += n
            if row is not None:
                self.outcomes[stream, row, kind, reason] += n
                return
            counts = self._others.get((stream, event))
            if counts is None:
                if len(self._others) >= 2 * _TRACKED_OTHER_EVENTS:
                    self._fold_others(_TRACKED_OTHER_EVENTS)
                counts = self._others[stream, event] = Counter()
            counts[kind, reason] += n

    def _fold_others(self, keep: int) -> None:
        """Keep the ``keep`` most frequent other names; fold the rest into OTHER_EVENTS."""
        ranked = sorted(self._others.items(), key=lambda item: (-item[1].total(), item[0]))
        for (stream, _), counts in ranked[keep:]:
            for (kind, reason), n in counts.items():
                self.outcomes[stream, OTHER_EVENTS, kind, reason] += n
        self._others = dict(ranked[:keep])

    def drop(self, stream: str, event: str, param: str) -> None:
        row = self._row(event) or OTHER_EVENTS  # (only conversions drop fields: mapped events)
        key = (label(stream), row, param)
        with self._lock:
            self.dropped[key] += 1

    def bump(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.delivery[name] += n

    def totals(self) -> dict[str, int]:
        with self._lock:
            totals: Counter[str] = Counter()
            for (kind, _), n in self._totals.items():
                totals[kind] += n
            return {k: totals.get(k, 0) for k in (DELIVERED, SKIPPED, DEAD_LETTER)}

    def _rows(self) -> Counter[tuple[str, str, str, str]]:
        """Every row: mapped events, the most frequent other names, OTHER_EVENTS."""
        rows = Counter(self.outcomes)
        ranked = sorted(self._others.items(), key=lambda item: (-item[1].total(), item[0]))
        for rank, ((stream, event), counts) in enumerate(ranked):
            shown_as = event if rank < MAX_OTHER_EVENTS else OTHER_EVENTS
            for (kind, reason), n in counts.items():
                rows[stream, shown_as, kind, reason] += n
        return rows

    def as_dict(self, *, dry_run: bool = False) -> dict[str, t.Any]:
        with self._lock:
            wall = time.monotonic() - self.started
            streams: dict[str, dict[str, dict[str, t.Any]]] = defaultdict(dict)
            rows = self._rows()
            for (stream, event, kind, reason), n in sorted(rows.items(), key=_row_order):
                entry = streams[stream].setdefault(
                    event, {DELIVERED: 0, SKIPPED: {}, DEAD_LETTER: {}, "dropped_fields": {}}
                )
                if kind == DELIVERED:
                    entry[DELIVERED] += n
                else:
                    entry[kind][reason] = entry[kind].get(reason, 0) + n
            for (stream, event, param), n in sorted(self.dropped.items()):
                entry = streams[stream].setdefault(
                    event, {DELIVERED: 0, SKIPPED: {}, DEAD_LETTER: {}, "dropped_fields": {}}
                )
                entry["dropped_fields"][param] = n
            totals: Counter[str] = Counter()
            reasons: dict[str, Counter[str]] = {SKIPPED: Counter(), DEAD_LETTER: Counter()}
            for (kind, reason), n in self._totals.items():
                totals[kind] += n
                if kind in reasons:
                    reasons[kind][reason] += n
            requests = self.delivery.get("requests", 0)
            return {
                "dry_run": dry_run,
                "records_read": self.records_read,
                # A dry run's "delivered" are its planned postbacks: "planned" says so (the key
                # "delivered" stays, for the scripts and thresholds that read it).
                "delivered": totals.get(DELIVERED, 0),
                "planned": totals.get(DELIVERED, 0) if dry_run else 0,
                "skipped": dict(sorted(reasons[SKIPPED].items())),
                "dead_lettered": dict(sorted(reasons[DEAD_LETTER].items())),
                "dropped_fields": sum(self.dropped.values()),
                "requests": requests,
                "retries": self.delivery.get("retries", 0),
                "http_429": self.delivery.get("http_429", 0),
                "in_doubt": self.delivery.get("in_doubt", 0),
                "wall_seconds": round(wall, 3),
                "requests_per_second": round(requests / wall, 1) if wall > 0 else 0.0,
                "streams": {s: dict(e) for s, e in streams.items()},
            }

    def accounted(self) -> int:
        with self._lock:
            return sum(self._totals.values())

    def lines(self, *, dry_run: bool = False) -> list[str]:
        """The human run summary."""
        data = self.as_dict(dry_run=dry_run)
        verb = "planned" if dry_run else "delivered"
        skipped = sum(data["skipped"].values())
        dead = sum(data["dead_lettered"].values())
        out = [
            f"Run summary: {data['records_read']} records read: {data['delivered']} {verb}, "
            f"{skipped} skipped, {dead} dead-lettered, {data['dropped_fields']} optional fields "
            f"dropped; {data['requests']} requests ({data['retries']} retries, "
            f"{data['http_429']} answered 429, {data['in_doubt']} in doubt) in "
            f"{data['wall_seconds']:.1f} s ({data['requests_per_second']} requests/s)"
        ]
        for stream, events in data["streams"].items():
            for event, entry in events.items():
                parts = [f"{entry[DELIVERED]} {verb}"]
                parts += [f"{n} skipped ({r})" for r, n in entry[SKIPPED].items()]
                parts += [f"{n} dead-lettered ({r})" for r, n in entry[DEAD_LETTER].items()]
                parts += [f"{n} dropped {p}" for p, n in entry["dropped_fields"].items()]
                out.append(
                    f"  {escape_control(stream)} / {escape_control(event)}: " + ", ".join(parts)
                )
        return out


def records_kept(count: int) -> str:
    """``1 record was kept`` / ``3 records were kept``."""
    return f"{count} record was kept" if count == 1 else f"{count} records were kept"


def _row_order(item: tuple[tuple[str, str, str, str], int]) -> tuple[t.Any, ...]:
    """Rows by stream and name, OTHER_EVENTS last in its stream."""
    (stream, event, kind, reason), _ = item
    return (stream, event == OTHER_EVENTS, event, kind, reason)
