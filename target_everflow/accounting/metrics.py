"""Run metrics in singer-sdk's METRIC format, aggregated: never a line per postback.

Every ``progress_interval`` seconds (beside the human progress line) and once at the end of the
run, the ``singer_sdk.metrics`` logger gets one line per counter that moved since the last
emission, and the postback latency of that interval::

    METRIC: {"type":"counter","metric":"conversions_delivered","value":118,"tags":{...}}
    METRIC: {"type":"timer","metric":"http_request_duration","value":0.021,"tags":{"quantile":"p95",...}}

Counters carry the *increase* since the previous line with the same metric and tags, as the
SDK's own counters do, so summing a run's lines gives its totals (the run summary's numbers):

- ``conversions_delivered`` (in dry run: planned, tag ``dry_run``), ``conversions_in_doubt``;
- ``records_skipped`` and ``records_dead_lettered``, tag ``reason``;
- ``postback_retries``;
- ``http_request_count``, tag ``http_status_class``: ``2xx``, ``3xx``, ``4xx``, ``5xx``, or
  ``error`` (no HTTP answer: connection failed, timed out, dropped).

Timers are the postback latency (seconds per request attempt, answer or error): tag
``quantile`` ``p50``, ``p95`` or ``max``, tag ``window`` ``interval`` (the requests since the
previous emission) or ``run`` (the whole run, at the end), tag ``requests`` (how many). The
quantiles come from a fixed log-scale histogram (:class:`LatencyHistogram`, within 5%), so the
memory does not grow with the number of postbacks.

Every metric line also has the SDK's tag ``pid``. With ``SINGER_SDK_LOG_CONFIG`` and the SDK's
``StructuredFormatter`` the same points arrive as JSON, in ``metric_info``.
"""

from __future__ import annotations

import enum
import math
import threading
import typing as t
from collections import Counter

from target_everflow.accounting.summary import label
from target_everflow.outcomes import DELIVERED

if t.TYPE_CHECKING:
    from target_everflow.accounting.summary import RunSummary
    from target_everflow.mapping import Conversion


class Metric(str, enum.Enum):
    """The target's metric names (``http_request_*`` are the SDK's own)."""

    CONVERSIONS_DELIVERED = "conversions_delivered"
    CONVERSIONS_IN_DOUBT = "conversions_in_doubt"
    RECORDS_SKIPPED = "records_skipped"
    RECORDS_DEAD_LETTERED = "records_dead_lettered"
    POSTBACK_RETRIES = "postback_retries"
    HTTP_REQUEST_COUNT = "http_request_count"
    HTTP_REQUEST_DURATION = "http_request_duration"


PointWriter = t.Callable[[str, Metric, float, dict[str, t.Any]], None]
"""Writes one point (kind ``counter``/``timer``, metric, value, tags): the adapter's
``point_writer`` writes it as singer-sdk's METRIC line."""


STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "error")
ENDPOINT = "postback"


def status_class(status: int | None) -> str:
    """``2xx`` .. ``5xx`` for an HTTP status; ``error`` when no answer came (None) or an odd one."""
    if status is None or not 200 <= status < 600:
        return "error"
    return f"{status // 100}xx"


class LatencyHistogram:
    """Latencies in a fixed set of log-scale buckets (each 5% wider than the one below).

    Covers 0.1 ms to 10 minutes in 321 buckets whatever the number of samples; a quantile is
    the upper edge of its bucket (at most 5% above the true value), never above the maximum.
    """

    LOW = 1e-4
    HIGH = 600.0
    GROWTH = 1.05
    SIZE = math.ceil(math.log(HIGH / LOW) / math.log(GROWTH)) + 1

    def __init__(self) -> None:
        self.counts = [0] * self.SIZE
        self.count = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        if seconds <= self.LOW:
            index = 0
        else:
            index = min(
                self.SIZE - 1, math.ceil(math.log(seconds / self.LOW) / math.log(self.GROWTH))
            )
        self.counts[index] += 1
        self.count += 1
        self.max = max(self.max, seconds)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0 < q <= 1) in seconds; 0.0 when empty."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(self.LOW * self.GROWTH**index, self.max)
        return self.max  # pragma: no cover - the counts add up to self.count


class RunMetrics:
    """Collects what the run summary does not count (HTTP status classes, latency) and emits
    every metric in the SDK's METRIC format. Thread-safe; :meth:`answered` is O(1)."""

    def __init__(self, summary: RunSummary, writer: PointWriter, *, dry_run: bool = False) -> None:
        self.summary = summary
        self.dry_run = dry_run
        self.writer = writer
        self._lock = threading.Lock()
        self._classes: Counter[str] = Counter()
        self._window = LatencyHistogram()
        self._run = LatencyHistogram()
        self._emit_lock = threading.Lock()
        self._finished = False
        self._emitted: dict[tuple[Metric, tuple[tuple[str, str], ...]], int] = {}

    def answered(self, status: int | None, seconds: float) -> None:
        """One postback attempt got ``status`` (None: no HTTP answer) after ``seconds``."""
        with self._lock:
            self._classes[status_class(status)] += 1
            self._window.add(seconds)
            self._run.add(seconds)

    def _totals(self) -> Counter[tuple[Metric, tuple[tuple[str, str], ...]]]:
        data = self.summary.as_dict(dry_run=self.dry_run)
        totals: Counter[tuple[Metric, tuple[tuple[str, str], ...]]] = Counter()
        totals[(Metric.CONVERSIONS_DELIVERED, ())] = data[DELIVERED]
        for reason, n in data["skipped"].items():
            totals[(Metric.RECORDS_SKIPPED, (("reason", reason),))] = n
        for reason, n in data["dead_lettered"].items():
            totals[(Metric.RECORDS_DEAD_LETTERED, (("reason", reason),))] = n
        totals[(Metric.CONVERSIONS_IN_DOUBT, ())] = data["in_doubt"]
        totals[(Metric.POSTBACK_RETRIES, ())] = data["retries"]
        with self._lock:
            for name, n in self._classes.items():
                totals[
                    (
                        Metric.HTTP_REQUEST_COUNT,
                        (("endpoint", ENDPOINT), ("http_status_class", name)),
                    )
                ] = n
        return totals

    def emit(self, *, final: bool = False) -> int:
        """Log what moved since the last emission (at the end also the whole run's latency);
        return the number of METRIC lines written."""
        with self._emit_lock:
            if self._finished:
                return 0
            self._finished = final
            return self._emit(final=final)

    def _emit(self, *, final: bool) -> int:
        lines = 0
        for key, total in sorted(self._totals().items(), key=lambda kv: (kv[0][0].value, kv[0][1])):
            previous = self._emitted.get(key)
            delta = total - (previous or 0)
            # At the end a run that delivered nothing still says so (one line with 0).
            first_delivered = final and previous is None and key[0] is Metric.CONVERSIONS_DELIVERED
            if delta <= 0 and not first_delivered:
                continue
            self._emitted[key] = total
            metric, tags = key
            self._log("counter", metric, delta, dict(tags))
            lines += 1
        with self._lock:
            window, self._window = self._window, LatencyHistogram()
            whole = self._run
        windows = [("interval", window)] + ([("run", whole)] if final else [])
        for name, histogram in windows:
            if not histogram.count:
                continue
            for quantile, value in (
                ("p50", histogram.quantile(0.5)),
                ("p95", histogram.quantile(0.95)),
                ("max", histogram.max),
            ):
                self._log(
                    "timer",
                    Metric.HTTP_REQUEST_DURATION,
                    round(value, 6),
                    {
                        "endpoint": ENDPOINT,
                        "quantile": quantile,
                        "window": name,
                        "requests": histogram.count,
                    },
                )
                lines += 1
        return lines

    def _log(self, kind: str, metric: Metric, value: float, tags: dict[str, t.Any]) -> None:
        if self.dry_run:
            tags["dry_run"] = True
        self.writer(kind, metric, value, tags)


MAX_FIELD = 200
"""Longest value a log line's ``extra`` field keeps (they come from records)."""


def log_fields(
    *,
    stream: str,
    event: str | None = None,
    reason: str | None = None,
    message_id: str | None = None,
    **more: t.Any,
) -> dict[str, t.Any]:
    """A log call's ``extra``: the fields JSON logs (``SINGER_SDK_LOG_CONFIG``) are filtered by.

    ``stream_name`` is the SDK's own field (its ``StructuredFormatter`` puts it at the top
    level); the others (``event_name``, ``reason``, ``message_id``, and e.g. ``delivery_key``,
    ``transaction_id``, ``field``) land in the line's ``extra`` object. Values are bounded;
    None values are left out.
    """
    # "event_name", not "event": Meltano reads a plugin's JSON log lines into structlog, whose
    # own "event" key (the message) an "event" field would collide with.
    fields = {
        "stream_name": stream,
        "event_name": event,
        "reason": reason,
        "message_id": message_id,
        **more,
    }
    return {
        k: label(v)[:MAX_FIELD] if isinstance(v, str) else v
        for k, v in fields.items()
        if v is not None
    }


def conversion_fields(
    conversion: Conversion, reason: str | None = None, **more: t.Any
) -> dict[str, t.Any]:
    """:func:`log_fields` of a conversion (with its delivery key and transaction id)."""
    return log_fields(
        stream=conversion.stream,
        event=conversion.event,
        reason=reason,
        message_id=conversion.message_id,
        delivery_key=conversion.key,
        transaction_id=conversion.transaction_id,
        **more,
    )
