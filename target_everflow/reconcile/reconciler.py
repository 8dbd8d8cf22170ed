"""Did Everflow count it? Check every delivered conversion against Everflow's own verdict.

A postback's HTTP 200 does not mean the conversion counted: Everflow answers 200 and then blocks
duplicates (its error 8), clicks it no longer has (13), bad verification tokens (21), events not
on the offer (25). The verdict shows only in its Conversion Report. ``target-everflow reconcile``
(and, with ``reconcile: true``, the end of every normal run) reads that report for the
conversions the ledger says were delivered:

1. It claims the due keys (``reconcile_store``): delivered, unchecked or ``pending``, sent at
   least ``reconcile_after_minutes`` ago.
2. It groups them by the UTC day of the earlier of event time and sent time (postbacks carry
   the event's ``timestamp``, so a backfill is recorded on the event's day), and asks, per day,
   ``POST {api_url}/networks/reporting/conversions?page=N&page_size=2000`` for conversions and
   post-conversion events both, filtered by their transaction ids (up to
   ``TRANSACTION_IDS_PER_REQUEST`` per request; the window is the day, widened by a day each way
   and kept within Everflow's last 365 days). Should Everflow refuse the transaction id filter
   (HTTP 400), it queries the day's whole window instead, for the rest of the run.
3. It matches rows to keys by transaction id; then base conversion (``adv_event_id`` 0) against
   a base row, a mapped event against an event row of that event's name (the advertiser's
   events, as the API check reads them); then order id when both have one; ties go to the row
   whose time is nearest the event's. Each row matches one key.
4. approved -> ``confirmed``; pending -> ``pending`` (checked again later); rejected or invalid
   -> ``rejected`` with Everflow's ``error_code`` and ``error_message``; a key missing from the
   report ``reconcile_not_found_after_hours`` after it was sent -> ``not_found`` (until then it
   stays unchecked and is asked again).

The requests go through the API check's client (``everflow_api``: one HTTP layer, one retry
policy: 429/5xx retried with backoff, ``Retry-After`` honoured) and one token bucket of
``api_requests_per_second``. It never sends a postback. A dry run never calls the reporting API.

What the user gets: a summary per event (confirmed / pending / rejected by error code / not
found, with the amounts sent), the JSON report at ``reconcile_report_path`` (every rejected and
not-found conversion in the ledger, each with transaction id, event, order id, Everflow's error
code and message and the Segment message id), and exit code 6 when this run found any rejected
or not-found conversion, else 0.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import json
import logging
import os
import tempfile
import time
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

from target_everflow.delivery.engine import RateLimiter
from target_everflow.errors import (
    EXIT_CONFIG,
    EXIT_DELIVERY,
    EXIT_LEDGER,
    EXIT_OK,
    EXIT_RECONCILE,
    ReconcileError,
)
from target_everflow.everflow.api import (
    MAX_ATTEMPTS,
    MAX_RETRY_AFTER,
    PreflightError,
    _Api,
    _redact,
    advertiser_events,
    api_client,
)
from target_everflow.ledger import Ledger, LedgerError, open_ledger
from target_everflow.reconcile.store import (
    CONFIRMED,
    NOT_FOUND,
    PENDING,
    PROBLEMS,
    REJECTED,
    DueKey,
    ReconcileStore,
    Verdict,
)
from target_everflow.settings import ConfigError
from target_everflow.text import excerpt
from target_everflow.transport import HttpClient

if t.TYPE_CHECKING:
    from target_everflow.settings import Settings

REPORT_PATH = "/networks/reporting/conversions"
PAGE_SIZE = 2000
REPORT_BODY_LIMIT = 8 * 1024 * 1024
"""A report page is read up to 8 MB (2,000 rows of about 2-3 KB each); more fails the request."""
"""Everflow's largest page size ("typically 2,000", developers.everflow.io: Paging)."""
TRANSACTION_IDS_PER_REQUEST = 500
"""Transaction ids filtered for in one request (a JSON body of about 45 KB)."""
UTC_TIMEZONE_ID = 67
"""Everflow's timezone id of UTC (``GET /v1/meta/timezones``); windows are sent in UTC."""
MAX_REPORT_DAYS = 364
"""The report covers the prior 365 days at most; windows start no earlier than this."""
MAX_PAGES = 500
"""Pages read for one query at most (1,000,000 rows): a bound, never reached with the filter."""
CLAIM_CHUNK = 5000
"""Keys claimed (and leased) at once."""
USER_AGENT = "target-everflow (reconcile)"
HINT = "or let the next reconcile try again (unchecked conversions stay due)"
ERROR_NAMES = {
    8: "duplicate",
    11: "invalid network",
    12: "invalid transaction id",
    13: "click not found",
    21: "invalid verification token",
    25: "event not on the offer",
}
DAY = 86400.0

_LOG = logging.getLogger("target-everflow")


# --- the report API ------------------------------------------------------------------------------


class ReportingClient:
    """Everflow's Conversion Report (network key), through the API check's client."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: HttpClient | None = None,
        sleep: t.Callable[[float], None] = time.sleep,
        logger: logging.Logger | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        try:
            access = settings.api_access("reconcile")
        except ConfigError as exc:
            raise _failure(str(exc), EXIT_CONFIG) from None
        self.settings = settings
        self._own_client = client is None
        self.http = client or api_client(
            settings.api_url, settings.request_timeout, body_limit=REPORT_BODY_LIMIT
        )
        self.api = _Api(
            access,
            settings.request_timeout,
            self.http,
            sleep,
            logger or _LOG,
            limiter=limiter or RateLimiter(settings.api_requests_per_second),
            hint=HINT,
            purpose="the request",
        )
        self.api.user_agent = USER_AGENT
        self._key = access.key
        self._names: dict[int, str] | None = None

    @property
    def requests_made(self) -> int:
        return self.api.requests_made

    def close(self) -> None:
        if self._own_client:
            self.http.close()

    def _call(self, fn: t.Callable[[], t.Any]) -> t.Any:
        try:
            return fn()
        except PreflightError as exc:
            config = exc.reason in ("config", "auth", "realm", "forbidden", "not_found")
            raise _failure(
                f"Everflow's conversion report could not be read: {exc}",
                EXIT_CONFIG if config else EXIT_DELIVERY,
                exc.reason,
            ) from None

    def event_names(self, advertiser_id: int) -> dict[int, str]:
        """The advertiser's event id -> name (read once per run)."""
        if self._names is None:
            events = self._call(lambda: advertiser_events(self.api, advertiser_id))
            self._names = {eid: name for eid, (name, _status) in events.items()}
        return self._names

    def conversions(
        self,
        start: float,
        end: float,
        transaction_ids: t.Sequence[str] | None,
        before_page: t.Callable[[], t.Any] | None = None,
    ) -> list[t.Mapping[str, t.Any]]:
        """Every row (conversions and events) between ``start`` and ``end`` (epoch seconds,
        sent in UTC), of these transaction ids (``None``: every row of the window).
        ``before_page`` runs before each page is asked (the claims' lease is renewed)."""
        body: dict[str, t.Any] = {
            "from": _when(start),
            "to": _when(end),
            "timezone_id": UTC_TIMEZONE_ID,
            "currency_id": "USD",
            "show_conversions": True,
            "show_events": True,
            "query": {
                "filters": [
                    {"resource_type": "transaction_id", "filter_id_value": tid}
                    for tid in transaction_ids or ()
                ],
                "search_terms": [],
            },
        }
        rows: list[t.Mapping[str, t.Any]] = []
        for page in range(1, MAX_PAGES + 1):
            if before_page is not None:
                before_page()
            answer: t.Any = self._call(
                functools.partial(
                    self.api.request,
                    "POST",
                    REPORT_PATH,
                    params=[("page", page), ("page_size", PAGE_SIZE)],
                    body=body,
                )
            )
            items = answer.get("conversions") if isinstance(answer, t.Mapping) else None
            if not isinstance(items, list):
                raise ReconcileError(
                    f"Everflow's conversion report answered POST {self.api.api_url}{REPORT_PATH} "
                    "without a conversions list; check api_url."
                )
            rows += [row for row in items if isinstance(row, t.Mapping)]
            paging = answer.get("paging") if isinstance(answer, t.Mapping) else None
            total = paging.get("total_count") if isinstance(paging, t.Mapping) else None
            if len(items) < PAGE_SIZE or (isinstance(total, int) and page * PAGE_SIZE >= total):
                return rows
        raise ReconcileError(
            f"Everflow's conversion report had more than {MAX_PAGES} pages of {PAGE_SIZE} rows for "
            f"{_when(start)} to {_when(end)}; nothing was marked for them."
        )

    def redact(self, text: str) -> str:
        return _redact(text, self._key)


def _when(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _day(epoch: float) -> float:
    return epoch - (epoch % DAY)


# --- matching ---------------------------------------------------------------------------------------


def _is_event(row: t.Mapping[str, t.Any]) -> bool:
    value = row.get("is_event")
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _text(value: t.Any) -> str:
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _row_time(row: t.Mapping[str, t.Any]) -> float | None:
    value = row.get("conversion_unix_timestamp")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _fits(key: DueKey, row: t.Mapping[str, t.Any], names: dict[int, str] | None) -> bool:
    if key.adv_event_id == 0:
        if _is_event(row):
            return False
    else:
        if not _is_event(row):
            return False
        wanted = (names or {}).get(key.adv_event_id)
        if wanted is not None and _text(row.get("event")).casefold() != wanted.strip().casefold():
            return False
    theirs = _text(row.get("order_id"))
    return not (key.order_id and theirs and theirs != key.order_id.strip())


def match(
    keys: t.Sequence[DueKey], rows: t.Sequence[t.Mapping[str, t.Any]], names: dict[int, str] | None
) -> dict[str, t.Mapping[str, t.Any]]:
    """Key -> its report row (see the module docstring); keys without one are left out."""
    by_tid: dict[str, list[t.Mapping[str, t.Any]]] = collections.defaultdict(list)
    for row in rows:
        by_tid[_text(row.get("transaction_id"))].append(row)
    used: set[int] = set()
    found: dict[str, t.Mapping[str, t.Any]] = {}
    # Keys with an order id first: their rows are the surest.
    for key in sorted(keys, key=lambda k: (not k.order_id, k.earliest, k.key)):
        candidates = [
            r
            for r in by_tid.get(key.transaction_id.strip(), ())
            if id(r) not in used and _fits(key, r, names)
        ]
        if not candidates:
            continue
        moment = key.event_time if key.event_time is not None else key.sent_at

        def rank(row: t.Mapping[str, t.Any], key: DueKey = key, moment: float = moment) -> tuple:
            exact = (
                bool(key.order_id) and _text(row.get("order_id")) == (key.order_id or "").strip()
            )
            when = _row_time(row)
            return (not exact, abs(when - moment) if when is not None else float("inf"))

        best = min(candidates, key=rank)
        used.add(id(best))
        found[key.key] = best
    return found


def verdict_of(key: DueKey, row: t.Mapping[str, t.Any], redact: t.Callable[[str], str]) -> Verdict:
    status = _text(row.get("status")).lower()
    if status == "approved":
        return Verdict(key.key, CONFIRMED)
    if status == "pending" or not status:
        return Verdict(key.key, PENDING)
    code = row.get("error_code")
    try:
        error_code = int(code) if code not in (None, "", 0, "0") else None
    except (TypeError, ValueError):
        error_code = None
    message = _text(row.get("error_message"))
    if not message and status not in ("rejected", "invalid"):
        message = f"status {status}"
    return Verdict(key.key, REJECTED, error_code, excerpt(redact(message)) or None)


# --- the summary ------------------------------------------------------------------------------------


@dataclass
class _Tally:
    count: int = 0
    amount: float = 0.0

    def add(self, amount: float | None) -> None:
        self.count += 1
        self.amount += amount or 0.0


@dataclass
class ReconcileResult:
    """What one reconcile did."""

    checked: int = 0
    requests: int = 0
    by_event: dict[str, dict[str, _Tally]] = field(default_factory=dict)
    rejected_codes: dict[str, dict[int | None, _Tally]] = field(default_factory=dict)
    found: list[tuple[DueKey, Verdict]] = field(default_factory=list)
    """The rejected and not-found conversions this run found."""
    uncheckable: int = 0
    report_path: Path | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_RECONCILE if self.found else EXIT_OK

    def count(self, key: DueKey, verdict: Verdict) -> None:
        event = key.event or "(unknown)"
        kind = verdict.status or "missing"
        tallies = self.by_event.setdefault(event, {})
        tallies.setdefault(kind, _Tally()).add(key.amount)
        if verdict.status == REJECTED:
            codes = self.rejected_codes.setdefault(event, {})
            codes.setdefault(verdict.error_code, _Tally()).add(key.amount)
        if verdict.status in PROBLEMS:
            self.found.append((key, verdict))
        self.checked += 1

    def as_dict(self) -> dict[str, t.Any]:
        events = {}
        for event, tallies in sorted(self.by_event.items()):
            row: dict[str, t.Any] = {
                kind: {"count": tallies[kind].count, "amount": round(tallies[kind].amount, 2)}
                for kind in (CONFIRMED, PENDING, REJECTED, NOT_FOUND, "missing")
                if kind in tallies
            }
            codes = self.rejected_codes.get(event)
            if codes:
                row["rejected_by_error_code"] = {
                    str(code) if code is not None else "none": {
                        "count": tally.count, "amount": round(tally.amount, 2),
                        "meaning": ERROR_NAMES.get(code or -1, ""),
                    }
                    for code, tally in sorted(codes.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
                }  # fmt: skip
            events[event] = row
        return {
            "checked": self.checked,
            "requests": self.requests,
            "found_rejected_or_not_found": len(self.found),
            "by_event": events,
            "not_checkable": self.uncheckable,
        }

    def lines(self) -> list[str]:
        head = (
            f"Reconciled {self.checked} delivered conversion(s) with Everflow's conversion report "
            f"({self.requests} request(s))"
        )
        if not self.checked:
            out = [f"{head}: nothing was due."]
        else:
            out = [f"{head}:"]
        for event, tallies in sorted(self.by_event.items()):

            def part(kind: str, label: str, tallies: dict[str, _Tally] = tallies) -> str:
                tally = tallies.get(kind, _Tally())
                money = f" (amount {tally.amount:.2f})" if tally.count and tally.amount else ""
                return f"{tally.count} {label}{money}"

            line = (
                f"  {event!r}: {part(CONFIRMED, 'confirmed')}, {part(PENDING, 'pending')}, "
                f"{part(REJECTED, 'rejected')}, {part(NOT_FOUND, 'not found')}"
            )
            if "missing" in tallies:
                line += (
                    f", {tallies['missing'].count} not in the report yet (asked again next time)"
                )
            out.append(line)
            for code, tally in sorted(
                self.rejected_codes.get(event, {}).items(),
                key=lambda kv: (kv[0] is None, kv[0] or 0),
            ):
                what = f"error {code}" + (f" ({ERROR_NAMES[code]})" if code in ERROR_NAMES else "")
                if code is None:
                    what = "no error code"
                money = f" (amount {tally.amount:.2f})" if tally.amount else ""
                out.append(f"    rejected, {what}: {tally.count}{money}")
        if self.uncheckable:
            out.append(
                f"{self.uncheckable} delivered conversion(s) were recorded by a release that kept "
                "no transaction id: they cannot be checked."
            )
        if self.found:
            out.append(
                f"{len(self.found)} conversion(s) Everflow rejected or does not have: listed in "
                f"{self.report_path}"
            )
        return out


# --- the reconciler ---------------------------------------------------------------------------------


class Reconciler:
    """Checks the due keys of one ledger; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        *,
        logger: logging.Logger | None = None,
        client: HttpClient | None = None,
        sleep: t.Callable[[float], None] = time.sleep,
        limiter: RateLimiter | None = None,
        exclude_owner: str | None = None,
    ) -> None:
        self.settings = settings
        self.logger = logger or _LOG
        self.client = ReportingClient(
            settings, client=client, sleep=sleep, logger=self.logger, limiter=limiter
        )
        lease = MAX_ATTEMPTS * (settings.request_timeout + MAX_RETRY_AFTER) + 60.0
        self.store = ReconcileStore(ledger, lease_seconds=lease)
        self.exclude_owner = exclude_owner
        self.by_window = False  # Everflow refused the transaction id filter: whole windows

    def run(self) -> ReconcileResult:
        result = ReconcileResult(report_path=self.settings.reconcile_report_path)
        after = self.settings.reconcile_after_minutes * 60.0
        try:
            while True:
                now, due = self.store.claim_due(
                    after_seconds=after, limit=CLAIM_CHUNK, exclude_owner=self.exclude_owner
                )
                if not due:
                    break
                if len(due) >= CLAIM_CHUNK:
                    # A full chunk may end within a day: that day goes back, to be asked whole
                    # with the next chunk (one request per day, not two).
                    last_day = _day(due[-1].earliest)
                    whole = [k for k in due if _day(k.earliest) < last_day]
                    if whole:
                        self.store.give_back([k.key for k in due[len(whole) :]])
                        due = whole
                self._check(due, now, result)
        finally:
            try:
                self.store.release()  # whatever is still ours (an error, a signal): due again
            finally:
                result.requests = self.client.requests_made
                self.client.close()
        result.uncheckable = self.store.uncheckable()
        self.write_report(result)
        return result

    def _names(self, keys: t.Sequence[DueKey]) -> dict[int, str] | None:
        if not any(k.adv_event_id for k in keys):
            return None
        advertiser_id = self.settings.advertiser_id
        if advertiser_id is None:
            self.logger.warning(
                "advertiser_id is not set: event conversions are matched to any event row of "
                "their transaction (set it so that the event's name is compared too)."
            )
            return None
        return self.client.event_names(advertiser_id)

    def _check(self, due: list[DueKey], now: float, result: ReconcileResult) -> None:
        names = self._names(due)
        days: dict[float, list[DueKey]] = collections.defaultdict(list)
        for key in due:
            days[_day(key.earliest)].append(key)
        for day in sorted(days):
            for batch in self._batches(days[day]):
                now = self.store.now()
                start = max(day - DAY, _day(now) - MAX_REPORT_DAYS * DAY)
                end = min(_day(max(k.sent_at for k in batch)) + 2 * DAY, _day(now) + DAY) - 1
                rows = self._rows(start, end, batch)
                found = match(batch, rows, names)
                verdicts = []
                not_found_after = self.settings.reconcile_not_found_after_hours * 3600.0
                for key in batch:
                    row = found.get(key.key)
                    if row is not None:
                        verdict = verdict_of(key, row, self.client.redact)
                    elif now - key.sent_at >= not_found_after:
                        verdict = Verdict(key.key, NOT_FOUND)
                    else:
                        verdict = Verdict(key.key, None)
                    verdicts.append(verdict)
                    result.count(key, verdict)
                self.store.record(verdicts)

    def _batches(self, keys: list[DueKey]) -> t.Iterator[list[DueKey]]:
        """Keys of one day, at most ``TRANSACTION_IDS_PER_REQUEST`` transaction ids a batch (a
        transaction's keys stay together); in window mode the whole day at once."""
        if self.by_window:
            yield keys
            return
        by_tid: dict[str, list[DueKey]] = collections.defaultdict(list)
        for key in keys:
            by_tid[key.transaction_id.strip()].append(key)
        tids = list(by_tid)
        for i in range(0, len(tids), TRANSACTION_IDS_PER_REQUEST):
            yield [k for tid in tids[i : i + TRANSACTION_IDS_PER_REQUEST] for k in by_tid[tid]]

    def _rows(self, start: float, end: float, batch: list[DueKey]) -> list[t.Mapping[str, t.Any]]:
        renew = self.store.renew
        if self.by_window:
            return self.client.conversions(start, end, None, renew)
        tids = sorted({k.transaction_id.strip() for k in batch})
        try:
            return self.client.conversions(start, end, tids, renew)
        except ReconcileError as exc:
            if getattr(exc, "reason", "") != "bad_request":
                raise
            self.logger.warning(
                "Everflow refused the transaction id filter (%s); querying whole days instead "
                "for the rest of this run.",
                exc,
            )
            self.by_window = True
            return self.client.conversions(start, end, None, renew)

    def write_report(self, result: ReconcileResult) -> None:
        """The JSON report: this run's summary and every rejected or not-found conversion."""
        found_now = {key.key for key, _ in result.found}
        conversions = []
        for key, status, code, message, checked_at in self.store.problems():
            conversions.append({
                "transaction_id": key.transaction_id,
                "event": key.event,
                "adv_event_id": key.adv_event_id,
                "order_id": key.order_id,
                "amount": key.amount,
                "status": status,
                "error_code": code,
                "error_meaning": ERROR_NAMES.get(code or -1),
                "error_message": self.client.redact(message) if message else message,
                "message_id": key.message_id,
                "delivery_key": key.key,
                "stream": key.stream,
                "event_time": _iso(key.event_time),
                "sent_at": _iso(key.sent_at),
                "checked_at": _iso(checked_at),
                "found_in_this_run": key.key in found_now,
            })  # fmt: skip
        report = {
            "generated_at": _iso(time.time()),
            "this_run": result.as_dict(),
            "rejected_or_not_found": conversions,
        }
        path = self.settings.reconcile_report_path
        text = json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False)
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".reconcile-", dir=path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(self.client.redact(text) + "\n")
            os.replace(tmp, path)
        except OSError as exc:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise _failure(
                f"Setting 'reconcile_report_path': cannot write {path}: {exc.strerror} (the "
                "verdicts are in the ledger; the next reconcile writes the report again)",
                EXIT_CONFIG,
            ) from None


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat().replace("+00:00", "Z")


# --- entry points -----------------------------------------------------------------------------------


def reconcile_after_run(settings: Settings, ledger: Ledger | None, logger: logging.Logger) -> int:
    """``reconcile: true``: after a normal run, check what earlier runs delivered. A reporting
    API failure is a warning (the delivery run stands); returns 6 when something was found
    rejected or not found, else 0."""
    if not settings.reconcile or settings.dry_run or ledger is None:
        return EXIT_OK
    try:
        reconciler = Reconciler(settings, ledger, logger=logger, exclude_owner=ledger.owner)
        result = reconciler.run()
    except ReconcileError as exc:
        logger.warning(
            "Reconcile after the run did not finish (the delivery is not affected): %s", exc
        )
        return EXIT_OK
    for line in result.lines():
        logger.info("%s", line)
    return result.exit_code


def reconcile(settings: Settings, logger: logging.Logger, echo: t.Callable[[str], None]) -> int:
    """The reconcile command's work; returns its exit code (errors raise, with theirs)."""
    if settings.dry_run:
        echo("Dry run: reconcile calls no reporting API and checks nothing.")
        return EXIT_OK
    if not settings.api_key:
        raise _failure(
            "Setting 'api_key': reconcile reads Everflow's conversion report with a network API "
            "key (Control Center > Security); set api_key.",
            EXIT_CONFIG,
        )
    if (settings.ledger_url or "").strip().lower() == "none":
        raise _failure(
            "Setting 'ledger_url': is none: no ledger records what was delivered, so there is "
            "nothing to reconcile.",
            EXIT_CONFIG,
        )
    try:
        ledger = open_ledger(
            settings.ledger_url,
            default_dir=settings.state_dir,
            lease_seconds=60.0,
            retention_days=settings.ledger_retention_days,
            timeout=settings.ledger_timeout,
            logger=logger,
        )
    except LedgerError as exc:
        raise _failure(str(exc), EXIT_LEDGER) from None
    try:
        result = Reconciler(settings, ledger, logger=logger).run()
    except LedgerError as exc:
        raise _failure(str(exc), EXIT_LEDGER) from None
    finally:
        try:
            ledger.close()
        except LedgerError as exc:
            logger.error("%s", exc)
    for line in result.lines():
        echo(line)
    return result.exit_code


def _failure(message: str, exit_code: int, reason: str = "") -> ReconcileError:
    error = ReconcileError(message)
    error.exit_code = exit_code
    error.reason = reason
    return error
