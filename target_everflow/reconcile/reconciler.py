"""Did Everflow count it? Check every delivered conversion against Everflow's own verdict.

A postback's HTTP 200 does not mean the conversion counted: Everflow answers 200 and then blocks
duplicates (its error 8), clicks it no longer has (13), bad verification tokens (21), events not
on the offer (25). The verdict shows only in its Conversion Report. ``target-everflow reconcile``
(and, with ``reconcile: true``, the end of every normal run) reads that report for the
conversions the ledger says were delivered:

1. It claims the due keys (``ledger/verdicts.py``): delivered, unchecked or ``pending``, sent at
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

Paging: pages are read until ``paging.total_count`` rows were read or a page comes back empty
(a page may hold fewer rows than asked for: Everflow caps a page at its own size). A page that
repeats the last one (an API ignoring ``page``) stops the paging with a warning; then, as after
``MAX_PAGES`` pages, the keys the rows read did not match stay unchecked (never ``not_found``).
Only rows of the transactions being checked are kept (at most a few per transaction), every
value read is checked and clamped (an error code that is no 32-bit integer is kept as "unknown
code" with its raw text; text loses control characters, is masked and clipped), so a hostile
answer costs bounded memory and one bad row is reported, never fatal.

The requests go through the one REST client (``everflow/client.py``: one HTTP layer, the
``retry.API_RETRY`` policy, typed errors) and one token bucket of ``api_requests_per_second``.
It never sends a postback. A dry run never calls the reporting API.

What the user gets: a summary per event (confirmed / pending / rejected by error code, named in
Everflow's words, the age codes 5, 13 and 20 grouped as "lost to age" / not found, with the
amounts sent per currency), the JSON report at ``reconcile_report_path`` (every rejected and
not-found conversion in the ledger, each with transaction id, event, order id, currency,
Everflow's error code and message and the Segment message id), and exit code 6 when there is a
rejected or not-found conversion no completed reconcile reported yet, else 0. A finding is
reported once a reconcile that completed printed it (``ReconcileStore.mark_reported``); a
reconcile that failed part-way leaves its findings to the next one. When nothing was checked,
the summary says how many keys are due, wait for ``reconcile_after_minutes``, or are held by
another reconciler (and until when).
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
import typing as t
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from target_everflow.accounting.summary import check_output
from target_everflow.errors import (
    EXIT_CONFIG,
    EXIT_LEDGER,
    EXIT_OK,
    EXIT_RECONCILE,
    ReconcileError,
)
from target_everflow.everflow.client import (
    MAX_ATTEMPTS,
    MAX_RETRY_AFTER,
    ApiBadAnswer,
    ApiError,
    ApiRefused,
    RestClient,
)
from target_everflow.everflow.codes import AGE_CODES, code_name, is_age_code
from target_everflow.everflow.preflight import advertiser_events
from target_everflow.ledger import Ledger, LedgerError, open_ledger
from target_everflow.ledger.verdicts import (
    CONFIRMED,
    INT32_MAX,
    INT32_MIN,
    MESSAGE_LIMIT,
    NOT_FOUND,
    PENDING,
    PROBLEMS,
    REJECTED,
    DueKey,
    DueOverview,
    Problem,
    ReconcileStore,
    Verdict,
)
from target_everflow.retry import RateLimiter
from target_everflow.settings import ConfigError
from target_everflow.text import excerpt, utc_time

if t.TYPE_CHECKING:
    from target_everflow.settings import Settings
    from target_everflow.transport import HttpClient

REPORT_PATH = "/networks/reporting/conversions"
PAGE_SIZE = 2000
"""Everflow's largest page size ("typically 2,000", developers.everflow.io: Paging)."""
REPORT_BODY_LIMIT = 8 * 1024 * 1024
"""A report page is read up to 8 MB (2,000 rows of about 2-3 KB each); more fails the request."""
MAX_PAGE_CONTAINERS = 400_000
MAX_PAGE_STRINGS = 1_500_000
MAX_PAGE_VALUES = 1_500_000
"""A page's JSON holds at most this many objects and arrays, strings, and values (counted by
brackets, quotes and commas before parsing: 2,000 real rows use a fraction): the memory one page
can take stays bounded whatever the API sends."""
ROWS_PER_TRANSACTION = 8
"""Report rows kept per transaction id being checked, at least (4 per key of it, if more)."""
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
NO_CURRENCY = "(no currency)"
"""The currency label of amounts sent without one: never summed with another currency."""
DAY = 86400.0

_LOG = logging.getLogger("target-everflow")


# --- the report API ------------------------------------------------------------------------------

_ROW_FIELDS = frozenset({
    "transaction_id", "is_event", "event", "order_id", "conversion_unix_timestamp", "status",
    "error_code", "error_message",
})  # fmt: skip
_KEEP = _ROW_FIELDS | {"conversions", "paging", "total_count"}
_NOTHING: t.Mapping[str, t.Any] = MappingProxyType({})


def _slim(pairs: list[tuple[str, t.Any]]) -> t.Mapping[str, t.Any]:
    """A JSON object with only the members reconcile reads (one shared empty one for the rest):
    the nested objects of a row never reach memory whole."""
    kept = {k: v for k, v in pairs if k in _KEEP}
    return kept or _NOTHING


def _number(text: str) -> float | str:
    """A JSON number that is no finite float stays its text (``1e400`` is not infinity)."""
    value = float(text)
    return value if math.isfinite(value) else text


def _integer(text: str) -> int | str:
    """A JSON integer of more than 19 digits stays its text (no huge int, no conversion limit)."""
    return int(text) if len(text) <= 20 else text


def parse_page(content: bytes) -> t.Any:
    """A report page, bounded (see :data:`MAX_PAGE_CONTAINERS`) and slimmed (``_slim``)."""
    containers = content.count(b"{") + content.count(b"[")
    if (
        containers > MAX_PAGE_CONTAINERS
        or content.count(b'"') > 2 * MAX_PAGE_STRINGS
        or content.count(b",") > MAX_PAGE_VALUES
    ):
        raise ApiBadAnswer(
            "Everflow's conversion report answered a page with more values than "
            f"{PAGE_SIZE} rows hold; check api_url.",
            status=200,
        )
    return json.loads(content, object_pairs_hook=_slim, parse_float=_number, parse_int=_integer)


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One row of the Conversion Report, as reconcile keeps it: every value checked and
    cleaned (text masked, one line, clipped; times finite)."""

    transaction_id: str
    is_event: bool
    event: str
    order_id: str
    time: float | None
    status: str
    error_code: t.Any
    error_message: str


@dataclass
class Page:
    """What one report query read: the rows of the wanted transactions, whether every page was
    read (``complete``), and the rows that were dropped as too many for their transaction."""

    rows: list[ReportRow] = field(default_factory=list)
    complete: bool = True
    dropped: int = 0


def _is_event(value: t.Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return value is True or (isinstance(value, (int, float)) and value == 1)


def _tid(value: t.Any) -> str | None:
    """A row's transaction id as text, or None when it is no id at all."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value).strip()
    return text if 0 < len(text) <= 200 else None


class ReportingClient:
    """Everflow's Conversion Report (network key), through the one REST client."""

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
            raise _config(str(exc)) from None
        self.settings = settings
        self.log = logger or _LOG
        self.api = RestClient(
            access,
            settings.request_timeout,
            http=client,
            body_limit=REPORT_BODY_LIMIT,
            sleep=sleep,
            logger=self.log,
            limiter=limiter or RateLimiter(settings.api_requests_per_second),
            secrets=(settings.verification_token,),
            user_agent=USER_AGENT,
            hint=HINT,
            purpose="the request",
        )
        self._names: dict[int, str] | None = None

    @property
    def requests_made(self) -> int:
        return self.api.requests_made

    def close(self) -> None:
        self.api.close()

    def clean(self, value: t.Any, limit: int = 300) -> str:
        """A value read from Everflow as text fit to store, print and write."""
        return self.api.clean(value, limit)

    def event_names(self, advertiser_id: int) -> dict[int, str]:
        """The advertiser's event id -> name (read once per run)."""
        if self._names is None:
            try:
                events = advertiser_events(self.api, advertiser_id)
            except ApiError as exc:
                raise _failed(exc) from None
            self._names = {eid: name for eid, (name, _status) in events.items()}
        return self._names

    def conversions(
        self,
        start: float,
        end: float,
        transaction_ids: t.Sequence[str] | None,
        before_page: t.Callable[[], t.Any] | None = None,
        *,
        wanted: t.Mapping[str, int] | None = None,
    ) -> Page:
        """The rows (conversions and events) between ``start`` and ``end`` (epoch seconds, sent
        in UTC), of these transaction ids (``None``: every row of the window), of which only
        the rows of ``wanted`` transactions (id -> rows to keep at most; default: the filter's
        ids) are kept. ``before_page`` runs before each page is asked (the claims' lease is
        renewed). Raises :class:`ApiError` (the REST client's typed errors)."""
        keep = dict(wanted) if wanted is not None else {
            tid.strip(): ROWS_PER_TRANSACTION for tid in transaction_ids or ()
        }  # fmt: skip
        body: dict[str, t.Any] = {
            "from": utc_time(start),
            "to": utc_time(end),
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
        page = Page()
        kept: collections.Counter[str] = collections.Counter()
        read = 0
        last: bytes | None = None
        what = f"{utc_time(start)} to {utc_time(end)}"
        for number in range(1, MAX_PAGES + 1):
            if before_page is not None:
                before_page()
            answer = self.api.request(
                "POST", REPORT_PATH, params=[("page", number), ("page_size", PAGE_SIZE)],
                body=body, parse=parse_page,
            )  # fmt: skip
            items = answer.get("conversions") if isinstance(answer, t.Mapping) else None
            if not isinstance(items, list):
                raise ApiBadAnswer(
                    f"Everflow's conversion report answered POST {self.api.api_url}{REPORT_PATH} "
                    "without a conversions list; check api_url.",
                    status=200,
                )
            if not items:
                return page
            fingerprint = hashlib.sha256(
                json.dumps(items, sort_keys=True, default=str).encode()
            ).digest()
            if fingerprint == last:
                self.log.warning(
                    "Everflow's conversion report answered page %d of %s with the same rows as "
                    "page %d; stopped reading it (the conversions it did not list stay "
                    "unchecked, asked again by the next reconcile).",
                    number, what, number - 1,
                )  # fmt: skip
                page.complete = False
                return page
            last = fingerprint
            read += len(items)
            for item in items:
                tid = _tid(item.get("transaction_id")) if isinstance(item, t.Mapping) else None
                if tid is None or tid not in keep:
                    continue
                if kept[tid] >= keep[tid]:
                    page.dropped += 1
                    continue
                kept[tid] += 1
                page.rows.append(self._row(tid, item))
            paging = answer.get("paging")
            total = paging.get("total_count") if isinstance(paging, t.Mapping) else None
            if isinstance(total, int) and not isinstance(total, bool) and read >= total:
                return page
        self.log.warning(
            "Everflow's conversion report had more than %d pages for %s; stopped reading it "
            "(the conversions it did not list stay unchecked).",
            MAX_PAGES, what,
        )  # fmt: skip
        page.complete = False
        return page

    def _row(self, tid: str, item: t.Mapping[str, t.Any]) -> ReportRow:
        when = item.get("conversion_unix_timestamp")
        return ReportRow(
            transaction_id=tid,
            is_event=_is_event(item.get("is_event")),
            event=self.clean(item.get("event"), 200),
            order_id=self.clean(_integral_text(item.get("order_id")), 200),
            time=float(when)
            if isinstance(when, (int, float)) and not isinstance(when, bool)
            and math.isfinite(float(when))
            else None,
            status=self.clean(item.get("status"), 40).lower(),
            error_code=_bounded(item.get("error_code")),
            error_message=self.clean(item.get("error_message"), MESSAGE_LIMIT // 2),
        )  # fmt: skip


def _bounded(value: t.Any) -> t.Any:
    """An ``error_code`` as read, kept small: a number as it is, anything else as at most 64
    characters of its text (a code is never longer; the rest only goes into a message)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:64]


def _integral_text(value: t.Any) -> t.Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _failed(exc: ApiError) -> ReconcileError:
    """A REST client error as reconcile's: its exit code (1 for the key or a path, else 3)."""
    error = ReconcileError(f"Everflow's conversion report could not be read: {exc}")
    error.exit_code = exc.exit_code
    return error


def _day(epoch: float) -> float:
    return epoch - (epoch % DAY)


# --- matching ---------------------------------------------------------------------------------------


def _fits(key: DueKey, row: ReportRow, names: dict[int, str] | None) -> bool:
    if key.adv_event_id == 0:
        if row.is_event:
            return False
    else:
        if not row.is_event:
            return False
        wanted = (names or {}).get(key.adv_event_id)
        if wanted is not None and row.event.casefold() != wanted.strip().casefold():
            return False
    return not (key.order_id and row.order_id and row.order_id != key.order_id.strip())


def match(
    keys: t.Sequence[DueKey], rows: t.Sequence[ReportRow], names: dict[int, str] | None
) -> dict[str, ReportRow]:
    """Key -> its report row (see the module docstring); keys without one are left out."""
    by_tid: dict[str, list[ReportRow]] = collections.defaultdict(list)
    for row in rows:
        by_tid[row.transaction_id].append(row)
    used: set[int] = set()
    found: dict[str, ReportRow] = {}
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

        def rank(row: ReportRow, key: DueKey = key, moment: float = moment) -> tuple:
            exact = bool(key.order_id) and row.order_id == (key.order_id or "").strip()
            return (not exact, abs(row.time - moment) if row.time is not None else float("inf"))

        best = min(candidates, key=rank)
        used.add(id(best))
        found[key.key] = best
    return found


_INTEGER = re.compile(r"-?[0-9]{1,19}")


def error_code_of(value: t.Any) -> tuple[int | None, str | None]:
    """Everflow's ``error_code`` as (a 32-bit code or None, the raw text when it was no such
    code). 0, null and "" are no code."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        number = int(value.strip())
    if number == 0:
        return None, None
    if number is None or not INT32_MIN <= number <= INT32_MAX:
        raw = value if isinstance(value, str) else json.dumps(value, default=str)
        return None, raw
    return number, None


def verdict_of(key: DueKey, row: ReportRow, clean: t.Callable[[t.Any, int], str]) -> Verdict:
    """The verdict a report row gives a key; a value out of range never fails it (an error code
    that is no 32-bit integer: no code, its raw text kept in the message)."""
    if row.status == "approved":
        return Verdict(key.key, CONFIRMED)
    if row.status == "pending" or not row.status:
        return Verdict(key.key, PENDING)
    code, raw = error_code_of(row.error_code)
    message = row.error_message
    if not message and row.status not in ("rejected", "invalid"):
        message = f"status {row.status}"
    if raw is not None:
        odd = f"error_code {clean(raw, 60)} is not a code"
        message = f"{odd}; {message}" if message else odd
    return Verdict(key.key, REJECTED, code, clean(message, MESSAGE_LIMIT) or None)


# --- the summary ------------------------------------------------------------------------------------


@dataclass
class _Tally:
    """How many, and their amounts per currency (never summed across currencies)."""

    count: int = 0
    amounts: dict[str, float] = field(default_factory=dict)

    def add(self, amount: float | None, currency: str | None) -> None:
        self.count += 1
        if amount is not None and math.isfinite(amount):
            label = (currency or "").strip().upper() or NO_CURRENCY
            self.amounts[label] = self.amounts.get(label, 0.0) + amount

    def money(self) -> str:
        """``USD 12.00; EUR 3.50; (no currency) 1.00``, or '' without amounts."""
        return "; ".join(
            f"{cur} {amount:.2f}"
            for cur, amount in sorted(
                self.amounts.items(), key=lambda kv: (kv[0] == NO_CURRENCY, kv[0])
            )
            if amount
        )

    def as_dict(self) -> dict[str, t.Any]:
        return {
            "count": self.count,
            "amount_by_currency": {cur: round(a, 2) for cur, a in sorted(self.amounts.items())},
        }


def _code_label(code: int | None) -> str:
    return "no error code" if code is None else f"error {code} ({code_name(code)})"


def _sorted_codes(codes: dict[int | None, _Tally]) -> list[tuple[int | None, _Tally]]:
    return sorted(codes.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))


AGE_LABEL = "lost to age (codes " + ", ".join(str(c) for c in sorted(AGE_CODES)) + ")"


@dataclass
class ReconcileResult:
    """What one reconcile did."""

    checked: int = 0
    requests: int = 0
    by_event: dict[str, dict[str, _Tally]] = field(default_factory=dict)
    rejected_codes: dict[str, dict[int | None, _Tally]] = field(default_factory=dict)
    found: list[tuple[DueKey, Verdict]] = field(default_factory=list)
    """The rejected and not-found conversions this run found."""
    unreported: list[Problem] = field(default_factory=list)
    """Every rejected and not-found conversion no completed reconcile reported yet (this run's
    findings and those of an earlier reconcile that did not complete)."""
    odd_rows: int = 0
    """Report rows with a value out of range (an error code that is no code)."""
    overview: DueOverview | None = None
    after_minutes: float = 0.0
    uncheckable: int = 0
    report_path: Path | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_RECONCILE if (self.found or self.unreported) else EXIT_OK

    def count(self, key: DueKey, verdict: Verdict) -> None:
        event = key.event or "(unknown)"
        kind = verdict.status or "missing"
        tallies = self.by_event.setdefault(event, {})
        tallies.setdefault(kind, _Tally()).add(key.amount, key.currency)
        if verdict.status == REJECTED:
            codes = self.rejected_codes.setdefault(event, {})
            codes.setdefault(verdict.error_code, _Tally()).add(key.amount, key.currency)
        if verdict.status in PROBLEMS:
            self.found.append((key, verdict))
        self.checked += 1

    def _unreported_tallies(self) -> tuple[_Tally, _Tally, _Tally, dict[int | None, _Tally]]:
        rejected, not_found, age = _Tally(), _Tally(), _Tally()
        codes: dict[int | None, _Tally] = {}
        for p in self.unreported:
            if p.status == REJECTED:
                rejected.add(p.key.amount, p.key.currency)
                codes.setdefault(p.error_code, _Tally()).add(p.key.amount, p.key.currency)
                if is_age_code(p.error_code):
                    age.add(p.key.amount, p.key.currency)
            else:
                not_found.add(p.key.amount, p.key.currency)
        return rejected, not_found, age, codes

    def as_dict(self) -> dict[str, t.Any]:
        events = {}
        for event, tallies in sorted(self.by_event.items()):
            row: dict[str, t.Any] = {
                kind: tallies[kind].as_dict()
                for kind in (CONFIRMED, PENDING, REJECTED, NOT_FOUND, "missing")
                if kind in tallies
            }
            codes = self.rejected_codes.get(event)
            if codes:
                row["rejected_by_error_code"] = {
                    str(code) if code is not None else "none": {
                        **tally.as_dict(), "meaning": code_name(code), "age": is_age_code(code),
                    }
                    for code, tally in _sorted_codes(codes)
                }  # fmt: skip
                age = _Tally()
                for code, tally in codes.items():
                    if is_age_code(code):
                        age.count += tally.count
                        for cur, amount in tally.amounts.items():
                            age.amounts[cur] = age.amounts.get(cur, 0.0) + amount
                row["rejected_lost_to_age"] = age.as_dict()
            events[event] = row
        rejected, not_found, age, codes = self._unreported_tallies()
        overview = self.overview
        return {
            "checked": self.checked,
            "requests": self.requests,
            "found_rejected_or_not_found": len(self.found),
            "by_event": events,
            "reported_now": {
                "count": len(self.unreported),
                "rejected": rejected.as_dict(),
                "not_found": not_found.as_dict(),
                "rejected_lost_to_age": age.as_dict(),
                "rejected_by_error_code": {
                    str(code) if code is not None else "none": {
                        **tally.as_dict(),
                        "meaning": code_name(code),
                        "age": is_age_code(code),
                    }
                    for code, tally in _sorted_codes(codes)
                },
            },  # fmt: skip
            "rows_with_values_out_of_range": self.odd_rows,
            "still_to_check": None
            if overview is None
            else {
                "due": overview.due,
                "waiting": overview.waiting,
                "held": overview.held,
                "held_until": _iso(overview.held_until),
            },  # fmt: skip
            "not_checkable": self.uncheckable,
        }

    def lines(self) -> list[str]:
        head = (
            f"Reconciled {self.checked} delivered conversion(s) with Everflow's conversion report "
            f"({self.requests} request(s))"
        )
        out = [f"{head}:" if self.checked else f"{head}: none was due now."]
        for event, tallies in sorted(self.by_event.items()):

            def part(kind: str, label: str, tallies: dict[str, _Tally] = tallies) -> str:
                tally = tallies.get(kind, _Tally())
                money = tally.money()
                return f"{tally.count} {label}" + (f" ({money})" if money else "")

            line = (
                f"  {event!r}: {part(CONFIRMED, 'confirmed')}, {part(PENDING, 'pending')}, "
                f"{part(REJECTED, 'rejected')}, {part(NOT_FOUND, 'not found')}"
            )
            if "missing" in tallies:
                line += (
                    f", {tallies['missing'].count} not in the report yet (asked again next time)"
                )
            out.append(line)
            codes = self.rejected_codes.get(event, {})
            age = _Tally()
            for code, tally in _sorted_codes(codes):
                money = tally.money()
                out.append(
                    f"    rejected, {_code_label(code)}: {tally.count}"
                    + (f", amount {money}" if money else "")
                )
                if is_age_code(code):
                    age.count += tally.count
                    for cur, amount in tally.amounts.items():
                        age.amounts[cur] = age.amounts.get(cur, 0.0) + amount
            if age.count:
                money = age.money()
                out.append(
                    f"    rejected, {AGE_LABEL}: {age.count}"
                    + (f", amount {money}" if money else "")
                )
        if self.odd_rows:
            out.append(
                f"{self.odd_rows} report row(s) had an error code that is no code: kept as "
                "'unknown code' with its raw text in the error message."
            )
        out += self._still_to_check()
        if self.uncheckable:
            out.append(
                f"{self.uncheckable} delivered conversion(s) were recorded by a release that kept "
                "no transaction id: they cannot be checked."
            )
        if self.unreported:
            rejected, not_found, age, codes = self._unreported_tallies()
            earlier = len(self.unreported) - len(
                {k.key for k, _ in self.found} & {p.key.key for p in self.unreported}
            )

            def paren(tally: _Tally) -> str:
                text = tally.money()
                return f" ({text})" if text else ""

            by_code = ", ".join(
                f"{code if code is not None else 'none'} {code_name(code)}: {tally.count}"
                for code, tally in _sorted_codes(codes)
            )
            out.append(
                f"{len(self.unreported)} conversion(s) Everflow rejected or does not have, "
                f"reported now ({len(self.unreported) - earlier} found by this run, {earlier} "
                f"by an earlier reconcile that did not complete): {rejected.count} rejected"
                f"{paren(rejected)}"
                + (f" [{by_code}]" if by_code else "")
                + f", {AGE_LABEL}: {age.count}{paren(age)}, {not_found.count} not found"
                f"{paren(not_found)}; listed in {self.report_path}"
            )
        elif self.found:
            out.append(
                f"{len(self.found)} conversion(s) Everflow rejected or does not have: listed in "
                f"{self.report_path}"
            )
        return [excerpt(line, 4000) if "\n" in line else line for line in out]

    def _still_to_check(self) -> list[str]:
        o = self.overview
        if o is None or not (o.due or o.waiting or o.held):
            return []
        parts = [f"{o.due} due"]
        parts.append(
            f"{o.waiting} waiting for reconcile_after_minutes ({self.after_minutes:g} min after "
            "being sent or last checked)"
        )
        if o.held:
            parts.append(
                f"{o.held} held by another reconciler until {_iso(o.held_until)} (a reconcile "
                "that was stopped keeps its claims until its lease runs out)"
            )
        return ["Still to check: " + ", ".join(parts) + "."]


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
        """Check every due key, record the verdicts, write the report. The caller prints
        :meth:`ReconcileResult.lines` and then calls :meth:`mark_reported`."""
        result = ReconcileResult(
            report_path=self.settings.reconcile_report_path,
            after_minutes=self.settings.reconcile_after_minutes,
        )
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
        except ApiError as exc:
            raise _failed(exc) from None
        finally:
            try:
                self.store.release()  # whatever is still ours (an error, a signal): due again
            finally:
                result.requests = self.client.requests_made
                self.client.close()
        result.uncheckable = self.store.uncheckable()
        result.unreported = self.store.problems(unreported_only=True)
        result.overview = self.store.overview(after_seconds=after)
        self.write_report(result)
        return result

    def mark_reported(self, result: ReconcileResult) -> None:
        """The summary was printed and the reconcile completed: its findings are reported."""
        keys = {p.key.key for p in result.unreported} | {k.key for k, _ in result.found}
        self.store.mark_reported(sorted(keys))

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
        not_found_after = self.settings.reconcile_not_found_after_hours * 3600.0
        for day in sorted(days):
            for batch in self._batches(days[day]):
                now = self.store.now()
                start = max(day - DAY, _day(now) - MAX_REPORT_DAYS * DAY)
                end = min(_day(max(k.sent_at for k in batch)) + 2 * DAY, _day(now) + DAY) - 1
                page = self._rows(start, end, batch)
                if page.dropped:
                    self.logger.warning(
                        "Everflow's conversion report listed %d more row(s) for the "
                        "transactions checked than they can have; left out.",
                        page.dropped,
                    )
                found = match(batch, page.rows, names)
                verdicts = []
                for key in batch:
                    row = found.get(key.key)
                    if row is not None:
                        verdict = self._verdict(key, row, result)
                    elif page.complete and now - key.sent_at >= not_found_after:
                        verdict = Verdict(key.key, NOT_FOUND)
                    else:
                        verdict = Verdict(key.key, None)
                    verdicts.append(verdict)
                    result.count(key, verdict)
                self.store.record(verdicts)

    def _verdict(self, key: DueKey, row: ReportRow, result: ReconcileResult) -> Verdict:
        verdict = verdict_of(key, row, self.client.clean)
        if verdict.status == REJECTED and error_code_of(row.error_code)[1] is not None:
            result.odd_rows += 1
            self.logger.warning(
                "Everflow's report row for transaction %s has an error code that is no code "
                "(%s); kept as 'unknown code'.",
                self.client.clean(key.transaction_id, 80),
                self.client.clean(error_code_of(row.error_code)[1], 60),
            )
        return verdict

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

    def _rows(self, start: float, end: float, batch: list[DueKey]) -> Page:
        renew = self.store.renew
        per_tid = collections.Counter(k.transaction_id.strip() for k in batch)
        wanted = {tid: max(ROWS_PER_TRANSACTION, 4 * n) for tid, n in per_tid.items()}
        if self.by_window:
            return self.client.conversions(start, end, None, renew, wanted=wanted)
        try:
            return self.client.conversions(start, end, sorted(wanted), renew, wanted=wanted)
        except ApiRefused as exc:
            if exc.status != 400:
                raise
            self.logger.warning(
                "Everflow refused the transaction id filter (%s); querying whole days instead "
                "for the rest of this run.",
                exc,
            )
            self.by_window = True
            return self.client.conversions(start, end, None, renew, wanted=wanted)

    def write_report(self, result: ReconcileResult) -> None:
        """The JSON report: this run's summary and every rejected or not-found conversion."""
        found_now = {key.key for key, _ in result.found}
        clean = self.client.clean
        conversions = []
        for p in self.store.problems():
            key = p.key
            conversions.append({
                "transaction_id": key.transaction_id,
                "event": key.event,
                "adv_event_id": key.adv_event_id,
                "order_id": key.order_id,
                "amount": key.amount,
                "currency": key.currency,
                "status": p.status,
                "error_code": p.error_code,
                "error_meaning": code_name(p.error_code) if p.status == REJECTED else None,
                "lost_to_age": is_age_code(p.error_code),
                "error_message": clean(p.error_message, MESSAGE_LIMIT) if p.error_message else None,
                "message_id": key.message_id,
                "delivery_key": key.key,
                "stream": key.stream,
                "event_time": _iso(key.event_time),
                "sent_at": _iso(key.sent_at),
                "checked_at": _iso(p.checked_at),
                "found_in_this_run": key.key in found_now,
                "reported_before": p.reported_at is not None,
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
                out.write(self.client.api.mask(text) + "\n")
            os.replace(tmp, path)
        except OSError as exc:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            error = ReconcileError(
                f"Setting 'reconcile_report_path': cannot write {path}: {exc.strerror} (the "
                "verdicts are in the ledger; the next reconcile reports them again)"
            )
            error.exit_code = EXIT_CONFIG
            raise error from None


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat().replace("+00:00", "Z")


# --- entry points -----------------------------------------------------------------------------------


def reconcile_after_run(settings: Settings, ledger: Ledger | None, logger: logging.Logger) -> int:
    """``reconcile: true``: after a normal run, check what earlier runs delivered. A reporting
    API failure (or a report that cannot be written) is a warning: the delivery run stands, and
    the findings are reported again next time (a ledger error fails the run, exit 4). Returns 6 when there is a
    rejected or not-found conversion not reported before, else 0."""
    if not settings.reconcile or settings.dry_run or ledger is None:
        return EXIT_OK
    try:
        reconciler = Reconciler(settings, ledger, logger=logger, exclude_owner=ledger.owner)
        result = reconciler.run()
        for line in result.lines():
            logger.info("%s", line)
        reconciler.mark_reported(result)
    except ReconcileError as exc:
        logger.warning(
            "Reconcile after the run did not finish (the delivery is not affected): %s", exc
        )
        return EXIT_OK
    return result.exit_code


def reconcile(settings: Settings, logger: logging.Logger, echo: t.Callable[[str], None]) -> int:
    """The reconcile command's work; returns its exit code (errors raise, with theirs)."""
    if settings.dry_run:
        echo("Dry run: reconcile calls no reporting API and checks nothing.")
        return EXIT_OK
    if not settings.api_key:
        raise _config(
            "Setting 'api_key': reconcile reads Everflow's conversion report with a network API "
            "key (Control Center > Security); set api_key."
        )
    if (settings.ledger_url or "").strip().lower() == "none":
        raise _config(
            "Setting 'ledger_url': is none: no ledger records what was delivered, so there is "
            "nothing to reconcile."
        )
    check_output("reconcile_report_path", settings.reconcile_report_path)
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
        raise _ledger_failed(exc) from None
    try:
        reconciler = Reconciler(settings, ledger, logger=logger)
        result = reconciler.run()
        for line in result.lines():
            echo(line)
        reconciler.mark_reported(result)
    except LedgerError as exc:
        raise _ledger_failed(exc) from None
    finally:
        try:
            ledger.close()
        except LedgerError as exc:
            logger.error("%s", exc)
    return result.exit_code


def _config(message: str) -> ReconcileError:
    error = ReconcileError(message)
    error.exit_code = EXIT_CONFIG
    return error


def _ledger_failed(exc: LedgerError) -> ReconcileError:
    error = ReconcileError(str(exc))
    error.exit_code = EXIT_LEDGER
    return error
