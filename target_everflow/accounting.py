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

import os
import threading
import time
import typing as t
from collections import Counter, defaultdict
from datetime import date, datetime, timezone
from pathlib import Path

import simplejson

from target_everflow.mapping import DEAD_LETTER, DELIVERED, SKIPPED


def json_default(value: t.Any) -> t.Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def dumps(obj: t.Any) -> str:
    """JSON for our files: Decimals exactly as read, datetimes as ISO-8601, NaN as null."""
    return simplejson.dumps(
        obj,
        use_decimal=True,
        default=json_default,
        ensure_ascii=False,
        ignore_nan=True,
        separators=(",", ":"),
    )


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


class DeadLetters:
    """The dead-letter file. Thread-safe; ``flush()`` makes every written line durable."""

    def __init__(self, path: Path, schemas: t.Callable[[str], dict | None]) -> None:
        self.path = path
        self._schemas = schemas
        self._lock = threading.Lock()
        self._file: t.IO[str] | None = None
        self._streams_announced: set[str] = set()
        self._dirty = False
        self.count = 0

    def _open(self) -> t.IO[str]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _drop_torn_tail(self.path)
            # backslashreplace: a lone surrogate (a "\ud800" JSON escape in the input) is written
            # as that same JSON escape, so the record is kept exactly instead of failing the write.
            self._file = self.path.open("a", encoding="utf-8", errors="backslashreplace")
        return self._file

    def check_writable(self) -> None:
        """Fail early (before any record) when the file cannot be written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8"):
            pass

    def write(
        self,
        stream: str,
        record: t.Any,
        reason: str,
        message: str,
        *,
        field: str | None = None,
        status: int | None = None,
    ) -> None:
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
        text = dumps(line)
        with self._lock:
            handle = self._open()
            if stream not in self._streams_announced:
                schema = self._schemas(stream) or {"type": "object", "properties": {}}
                handle.write(dumps({"type": "SCHEMA", "stream": stream, "schema": schema, "key_properties": []}) + "\n")
                self._streams_announced.add(stream)
            handle.write(text + "\n")
            self._dirty = True
            self.count += 1

    def flush(self) -> None:
        with self._lock:
            if self._file is not None and self._dirty:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._dirty = False

    def close(self) -> None:
        self.flush()
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


MAX_LABEL = 120
"""Longest stream or event name the summary keeps (a 1 MB event name is counted shortened)."""


def label(name: str) -> str:
    """A stream or event name as the summary shows it: bounded, and always valid UTF-8."""
    if len(name) > MAX_LABEL:
        name = name[: MAX_LABEL - 3] + "..."
    if not name.isascii():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: shown as their escapes
            name = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return name


class RunSummary:
    """Counts of every outcome, per stream and event. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.outcomes: Counter[tuple[str, str, str, str]] = Counter()
        """(stream, event, kind, reason) -> records."""
        self.dropped: Counter[tuple[str, str, str]] = Counter()
        """(stream, event, parameter) -> times an optional field was left out."""
        self.delivery: Counter[str] = Counter()
        """requests, retries, http_429, in_doubt, ... from the delivery engine."""
        self.records_read = 0

    def read(self, count: int = 1) -> None:
        with self._lock:
            self.records_read += count

    def count(self, stream: str, event: str, kind: str, reason: str = "", n: int = 1) -> None:
        key = (label(stream), label(event), kind, reason)
        with self._lock:
            self.outcomes[key] += n

    def drop(self, stream: str, event: str, param: str) -> None:
        key = (label(stream), label(event), param)
        with self._lock:
            self.dropped[key] += 1

    def bump(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.delivery[name] += n

    def totals(self) -> dict[str, int]:
        with self._lock:
            totals: Counter[str] = Counter()
            for (_, _, kind, _), n in self.outcomes.items():
                totals[kind] += n
            return {k: totals.get(k, 0) for k in (DELIVERED, SKIPPED, DEAD_LETTER)}

    def as_dict(self, *, dry_run: bool = False) -> dict[str, t.Any]:
        with self._lock:
            wall = time.monotonic() - self.started
            streams: dict[str, dict[str, dict[str, t.Any]]] = defaultdict(dict)
            for (stream, event, kind, reason), n in sorted(self.outcomes.items()):
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
            for (_, _, kind, reason), n in self.outcomes.items():
                totals[kind] += n
                if kind in reasons:
                    reasons[kind][reason] += n
            requests = self.delivery.get("requests", 0)
            return {
                "dry_run": dry_run,
                "records_read": self.records_read,
                "delivered": totals.get(DELIVERED, 0),
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
            return sum(self.outcomes.values())

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
                out.append(f"  {stream} / {event}: " + ", ".join(parts))
        return out
