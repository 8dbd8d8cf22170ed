"""One run of the target: the resources every sink shares, opened before any record is read.

``Run.open()`` does everything that can fail for a reason other than a record: the Everflow API
check, the dead-letter file, the ledger (and this run's row in the run history).
``Run.finish()`` logs the summary (and writes it to ``summary_path``), applies the failure
thresholds, records the run's end and closes everything, whatever way the run ended.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import typing as t

from target_everflow.accounting.metrics import RunMetrics, conversion_fields, log_fields
from target_everflow.accounting.run_history import RunHistory
from target_everflow.accounting.summary import (
    DeadLetters,
    RunSummary,
    check_output,
    dumps,
    records_kept,
    shown,
)
from target_everflow.accounting.thresholds import verdict
from target_everflow.delivery.engine import DeliveryEngine, DryRunWriter, RateLimiter, RetryPolicy
from target_everflow.delivery.postback import PostbackClient
from target_everflow.errors import EXIT_OK, EXIT_THRESHOLD, LedgerUnavailable, TargetEverflowError
from target_everflow.ledger import Ledger, LedgerError, NullLedger, SQLLedger, open_ledger
from target_everflow.mapping import Mapper
from target_everflow.outcomes import DEAD_LETTER, DELIVERED, SKIPPED, UNKNOWN_EVENT, Outcome

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from target_everflow.accounting.metrics import PointWriter
    from target_everflow.mapping import Conversion
    from target_everflow.records import SegmentEvent
    from target_everflow.settings import Settings

DROPPED_WARNINGS_PER_FIELD = 20
DRY_RUN_POSTBACK_URL = "https://dry-run.invalid/"


class Run:
    """Shared resources and bookkeeping of one run."""

    def __init__(
        self,
        settings: Settings,
        logger: logging.Logger,
        schemas: Callable[[str], dict | None],
        metric_writer: PointWriter,
    ) -> None:
        self.settings = settings
        self.logger = logger
        self.mapper = Mapper(settings, logger)
        self.summary = RunSummary(self.mapper.summary_event)
        self.metrics = RunMetrics(self.summary, metric_writer, dry_run=settings.dry_run)
        self.dead_letters = DeadLetters(settings.dead_letter_path, schemas)
        self.ledger: Ledger | None = None
        self.history: RunHistory | None = None
        self.engine: DeliveryEngine | None = None
        self.opened = False
        self._active_batches = 0
        self._lock = threading.Lock()
        self._dropped_warned: dict[tuple[str, str], int] = {}
        self._progress_stop = threading.Event()
        self._progress: threading.Thread | None = None

    # -- start -----------------------------------------------------------------------------

    def open(self) -> None:
        """Everything that must work before the first record is read."""
        if self.opened:
            return
        s = self.settings
        if s.preflight:
            self.check_api()
        # Every file the run writes, checked before anything is read: a path that cannot be
        # written fails now (exit 1, naming the setting), not after the work is done.
        check_output("dead_letter_path", s.dead_letter_path)
        if s.dry_run:
            check_output("dry_run_output", s.dry_run_output)
        if s.summary_path:
            check_output("summary_path", s.summary_path)
        if s.reconcile and not s.dry_run:
            check_output("reconcile_report_path", s.reconcile_report_path)
        policy = RetryPolicy(max_retries=s.max_retries)
        lease = max(60.0, min(policy.worst_case_seconds(s.request_timeout), 900.0))
        try:
            if s.dry_run:
                # Dry run never touches the real ledger: a NullLedger dedupes within the run.
                self.ledger = NullLedger(description="in memory (dry run)")
            else:
                self.ledger = open_ledger(
                    s.ledger_url,
                    default_dir=s.state_dir,
                    lease_seconds=lease,
                    retention_days=s.ledger_retention_days,
                    timeout=s.ledger_timeout,
                    logger=self.logger,
                )
                if isinstance(self.ledger, SQLLedger):  # (ledger_url none keeps no history)
                    self.history = RunHistory.begin(self.ledger, s.ledger_retention_days)
        except LedgerError as exc:
            raise LedgerUnavailable(str(exc)) from None
        client = PostbackClient(
            s.postback_url or DRY_RUN_POSTBACK_URL,
            verification_token=s.verification_token,
            timeout=s.request_timeout,
        )
        dry_run = DryRunWriter(s.dry_run_output, client) if s.dry_run else None
        self.engine = DeliveryEngine(
            client=client,
            ledger=self.ledger,
            summary=self.summary,
            dead_letters=self.dead_letters,
            policy=policy,
            limiter=RateLimiter(s.max_requests_per_second),
            concurrency=s.max_concurrency,
            in_doubt=s.in_doubt,
            dry_run=dry_run,
            logger=self.logger,
            stop_grace=self.stop_grace,
            metrics=self.metrics,
            on_claimed=self.report_dropped,
        )
        self.logger.info(
            "target-everflow: %s, ledger %s, dead letters in %s",
            f"dry run, planned postbacks go to {s.dry_run_output}"
            if s.dry_run
            else f"sending to {_host(s.postback_url)} with up to {s.max_concurrency} requests in flight",
            self.ledger.description,
            s.dead_letter_path,
        )
        if s.progress_interval > 0:
            self._progress = threading.Thread(
                target=self._report_progress, name="progress", daemon=True
            )
            self._progress.start()
        self.opened = True

    def check_api(self) -> list[str]:
        """The Everflow API check; returns the lines saying what was verified."""
        # only when the check runs
        from target_everflow.everflow.preflight import PreflightError, run_preflight

        try:
            report = run_preflight(self.settings, logger=self.logger)
        except PreflightError as exc:
            raise TargetEverflowError(f"Everflow API check failed: {exc}") from None
        lines = report.lines()
        for line in lines:
            self.logger.info("%s", line)
        return lines

    # -- during the run: one record -------------------------------------------------------

    def count_read(self) -> None:
        """A record read that has no view (a RECORD message whose record is not an object)."""
        self.summary.count_read()

    def view(self, record: dict, stream: str) -> SegmentEvent:
        """A record read: counted, and wrapped into its one event view (the only wrapping)."""
        self.summary.count_read()
        return self.mapper.view(record, stream)

    def map(self, event: SegmentEvent) -> Conversion | Outcome:
        """The event's conversion, or its final outcome (to :meth:`account` for). Its dropped
        optional fields are reported when it is claimed (:meth:`report_dropped`): not for a
        duplicate, which is skipped."""
        return self.mapper.map(event)

    def report_dropped(self, conversion: Conversion) -> None:
        """Count and warn about the optional fields a conversion about to be sent left out."""
        for param, why in conversion.dropped:
            self.summary.drop(conversion.stream, conversion.event, param)
            self.warn_dropped(conversion.stream, conversion, param, why)

    def account(self, stream: str, outcome: Outcome, record: t.Any) -> None:
        """A record's final outcome: a dead letter is written (record as received) and logged,
        then every outcome is counted. Written first, counted after: a dead letter the file
        could not take (``OutputError``: the run stops) is not counted, and its record comes
        again from the last STATE."""
        event = outcome.event or UNKNOWN_EVENT
        if outcome.kind == DEAD_LETTER:
            self.dead_letters.write(
                stream,
                record,
                outcome.reason,
                outcome.message,
                field=outcome.field,
                message_id=outcome.message_id,
            )
            message_id = "unknown" if outcome.message_id is None else shown(outcome.message_id, 100)
            self.logger.warning(
                "Dead-lettered a record of stream %s (message id %s): %s: %s",
                shown(stream),
                message_id,
                outcome.reason,
                outcome.message,
                extra=log_fields(
                    stream=stream,
                    event=event,
                    reason=outcome.reason,
                    message_id=message_id,
                    field=outcome.field,
                ),
            )
        self.summary.count(stream, event, outcome.kind, outcome.reason)

    def flush_dead_letters(self) -> None:
        """Every dead letter written so far is durable (before any STATE that follows)."""
        self.dead_letters.flush()

    def deliver(self, conversions: list[Conversion]) -> None:
        """Deliver one batch; returns when every conversion has its final outcome (its dead
        letters durable, the mapping's dead letters of the batch too)."""
        engine = self.engine
        if engine is None:
            raise RuntimeError("the run opens before any batch is delivered")
        with self.batch():
            try:
                engine.deliver(conversions)
            finally:
                self.dead_letters.flush()

    @property
    def output_failure(self) -> TargetEverflowError | None:
        """The dead-letter file's failure, when one stopped the run (the cause to report)."""
        return self.dead_letters.failed

    def reconcile_after(self) -> int:
        """``reconcile: true``: check what earlier runs delivered (exit code 0 or 6)."""
        # only when reconcile is on
        from target_everflow.reconcile.reconciler import reconcile_after_run

        return reconcile_after_run(self.settings, self.ledger, self.logger)

    # -- during the run --------------------------------------------------------------------

    @property
    def stop_grace(self) -> float:
        """Seconds a stopping run gives what is in flight (postbacks, ledger writes)."""
        return min(self.settings.request_timeout, 10.0)

    def interrupt(self, reason: str) -> None:
        """A signal: stop sending; every wait for Everflow or the ledger ends within the grace."""
        if self.engine is not None:
            self.engine.request_stop(reason)
        if self.ledger is not None:
            self.ledger.stop_waiting_after(self.stop_grace)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        with self._lock:
            self._active_batches += 1
        try:
            yield
        finally:
            with self._lock:
                self._active_batches -= 1

    @property
    def in_batch(self) -> bool:
        return self._active_batches > 0

    def warn_dropped(self, stream: str, conversion: Conversion, param: str, why: str) -> None:
        key = (stream, param)
        seen = self._dropped_warned.get(key, 0)
        self._dropped_warned[key] = seen + 1
        if seen < DROPPED_WARNINGS_PER_FIELD:
            self.logger.warning(
                "Left out optional field %s of a record of stream %s (message id %s, event %r): %s",
                param,
                shown(stream),
                shown(conversion.message_id or conversion.key),
                conversion.event,
                why,
                extra=conversion_fields(conversion, "dropped_field", field=param),
            )
            if seen + 1 == DROPPED_WARNINGS_PER_FIELD:
                self.logger.warning(
                    "Further dropped %s fields on stream %s are counted in the run summary only.",
                    param,
                    shown(stream),
                    extra=log_fields(stream=stream, reason="dropped_field", field=param),
                )

    def _report_progress(self) -> None:
        last_requests, last_at = 0, time.monotonic()
        while not self._progress_stop.wait(self.settings.progress_interval):
            totals = self.summary.totals()
            requests = self.summary.delivery.get("requests", 0)
            now = time.monotonic()
            rate = (requests - last_requests) / max(now - last_at, 1e-9)
            last_requests, last_at = requests, now
            self.logger.info(
                "Progress: %d records read, %d %s, %d skipped, %d dead-lettered, %d in flight, "
                "%.1f requests/s",
                self.summary.records_read,
                totals[DELIVERED],
                "planned" if self.settings.dry_run else "delivered",
                totals[SKIPPED],
                totals[DEAD_LETTER],
                self.engine.in_flight if self.engine else 0,
                rate,
            )
            self.metrics.emit()

    # -- end -------------------------------------------------------------------------------

    def finish(self, code: int = EXIT_OK) -> int:
        """Log the summary, write ``summary_path``, apply the failure thresholds, record the
        run's end in the history, close everything; return the run's exit code (``code``, or
        5 when it was 0 and a threshold was passed). The threshold's line is the last."""
        self._progress_stop.set()
        if self._progress is not None:
            self._progress.join(timeout=5.0)  # its last METRIC lines come before the final ones
        errors: list[str] = []
        for closer in (self.dead_letters.close, self.engine.close if self.engine else None):
            if closer is None:
                continue
            try:
                closer()
            except Exception as exc:  # report every failure, close the rest
                errors.append(str(exc))
        data = self.summary.as_dict(dry_run=self.settings.dry_run)
        code, threshold = verdict(
            self.settings, data["delivered"], sum(data["dead_lettered"].values()), code
        )
        if self.history is not None:
            try:
                self.history.end(code, data)
            except LedgerError as exc:
                errors.append(str(exc))
            self.history = None
        if self.ledger is not None:
            try:
                self.ledger.close()
            except Exception as exc:  # reported like the others
                errors.append(str(exc))
        self.engine = None
        self.ledger = None
        for line in self.summary.lines(dry_run=self.settings.dry_run):
            self.logger.info("%s", line)
        self.metrics.emit(final=True)
        if self.settings.dry_run:
            self.logger.info("Planned postbacks were written to %s", self.settings.dry_run_output)
        if self.dead_letters.count:
            self.logger.info(
                "%s in %s (replay: see docs/delivery.md, 'Dead letters')",
                records_kept(self.dead_letters.count),
                self.settings.dead_letter_path,
            )
        # After the last STATE nothing can fail the run: a summary file that cannot be written
        # (checked at start-up; a disk that filled since) or a close that fails is a warning.
        if self.settings.summary_path:
            path = self.settings.summary_path
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(dumps(data) + "\n", encoding="utf-8")
            except OSError as exc:
                self.logger.warning(
                    "Could not write the run summary to %s: %s", path, exc.strerror or exc
                )
        for error in errors:
            self.logger.warning("While closing: %s", error)
        if threshold is not None:
            (self.logger.error if code == EXIT_THRESHOLD else self.logger.warning)("%s", threshold)
        return code


def _host(url: str | None) -> str:
    from urllib.parse import urlsplit  # one use

    return urlsplit(url or "").netloc or "?"
