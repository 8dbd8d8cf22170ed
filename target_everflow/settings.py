"""The target's settings: the config schema (plain JSON schema) and a validated, frozen view of it.

The JSON schema (``CONFIG_SCHEMA``) is what ``--about``, Meltano and the SDK's own validation
see. ``Settings.from_config`` adds the rules a JSON schema cannot say well (live mode needs a
postback URL, a remote URL must be https, event ids are integers >= 0) and fails with a
``ConfigError`` that names the setting, before any record is read.

Every rule about a setting lives here, once. The rules that matter only when Everflow's REST API
is called (an API key, a usable ``api_url``, ``advertiser_id`` for non-zero event ids) are
``Settings.api_access`` and ``Settings.api_check``, asked by the API check and reconcile when
they are about to call it: a run that calls nothing needs none of them.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import typing as t
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import SplitResult, parse_qsl, quote, urlsplit, urlunsplit

from target_everflow.clock import CLOCK_ENV, Clock, InvalidClock, from_environment
from target_everflow.errors import ConfigError, TargetEverflowError
from target_everflow.fields import POSTBACK_PARAMETERS

STATE_DIR = ".target-everflow"

CONFIG_SCHEMA: dict[str, t.Any] = {
    "type": "object",
    "properties": {
        "postback_url": {
            "type": ["string", "null"],
            "title": "Postback URL",
            "description": (
                "Everflow S2S postback base URL (your tracking domain), e.g. "
                "https://www.your-tracking-domain.com/. Required unless dry_run. Must be https "
                "(loopback hosts excepted, for tests); no fragment, credentials, or query "
                "parameter the target sends itself, but currency=XXX, which fixes the currency "
                "of every postback; a non-ASCII path is percent-encoded."
            ),
        },
        "network_id": {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": 2147483647,
            "title": "Network ID",
            "description": ("Everflow network id, sent as `nid`. Required unless dry_run."),
        },
        "advertiser_id": {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": 2147483647,
            "title": "Advertiser ID",
            "description": (
                "Everflow advertiser (brand) id, sent as `aid`; needed by the API check when "
                "event_mapping has non-zero event ids."
            ),
        },
        "verification_token": {
            "type": ["string", "null"],
            "title": "Verification token",
            "description": (
                "The advertiser's postback verification token, sent as `verification_token`."
            ),
            "secret": True,
            "writeOnly": True,
        },
        "event_mapping": {
            "type": ["object", "null"],
            "properties": {},
            "additionalProperties": {
                "type": ["integer"],
                "minimum": 0,
                "maximum": 2147483647,
            },
            "title": "Event mapping",
            "default": {
                "Order Completed": 0,
            },
            "description": (
                "Segment event name -> Everflow advertiser event id (integer >= 0). 0 is the "
                "base conversion. Names also match by Segment's slug (Order Completed = "
                "order_completed)."
            ),
        },
        "platform": {
            "type": ["string", "null"],
            "enum": ["auto", "web", "mobile"],
            "title": "Platform",
            "default": "auto",
            "description": (
                "auto: a record is mobile when its context says so (os, device type or a "
                "Segment mobile library); web/mobile: treat every record as that platform."
            ),
        },
        "strict_types": {
            "type": ["boolean", "null"],
            "title": "Strict types",
            "default": False,
            "description": (
                "Dead-letter a record (type_mismatch) when an optional field cannot be coerced "
                "to its Everflow type, instead of leaving the field out with a warning."
            ),
        },
        "send_timestamp": {
            "type": ["boolean", "null"],
            "title": "Send timestamp",
            "default": True,
            "description": "Send the event time as `timestamp` (Unix seconds).",
        },
        "send_currency": {
            "type": ["boolean", "null"],
            "title": "Send currency",
            "default": True,
            "description": (
                "Send the event's properties.currency (three letters, upper-cased: eur -> EUR) "
                "as `currency`, so Everflow converts the amount into the offer's currency. "
                "Never invented: an event without one is sent without. A postback_url that "
                "carries currency=XXX fixes the currency of every postback instead."
            ),
        },
        "max_conversion_age_days": {
            "type": ["integer", "null"],
            "minimum": 0,
            "maximum": 3650,
            "title": "Max conversion age (days)",
            "default": 90,
            "description": (
                "Skip (reason too_old) a conversion whose event time is more than this many "
                "days before it would be sent: Everflow credits a conversion only within 90 "
                "days of its click. 0 turns the check off; an event without a time is never "
                "too old."
            ),
        },
        "api_key": {
            "type": ["string", "null"],
            "title": "API key",
            "description": (
                "Everflow network API key (Control Center > Security). Enables the pre-flight "
                "check of the key and of every mapped event id."
            ),
            "secret": True,
            "writeOnly": True,
        },
        "api_url": {
            "type": ["string", "null"],
            "title": "API URL",
            "default": "https://api.eflow.team/v1",
            "description": (
                "Everflow REST API base URL (EU accounts: https://api-eu.eflow.team/v1)."
            ),
        },
        "preflight": {
            "type": ["boolean", "null"],
            "title": "Pre-flight check",
            "description": (
                "Check the API key and event mapping before reading records. Default: true when"
                " api_key is set (never in dry run, which touches no network; --check runs it)."
            ),
        },
        "reconcile": {
            "type": ["boolean", "null"],
            "title": "Reconcile after each run",
            "default": False,
            "description": (
                "After a normal (not dry) run, in the same process and after the last STATE, "
                "check the conversions delivered by earlier runs against Everflow's conversion "
                "report, as `target-everflow reconcile` does (needs api_key). A reporting API "
                "failure is then only a warning."
            ),
        },
        "reconcile_after_minutes": {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": 129600,
            "title": "Reconcile after (minutes)",
            "default": 30,
            "description": (
                "A delivered conversion is checked once it was sent at least this long ago "
                "(Everflow's report lags); one Everflow still has as pending is checked again "
                "after as long."
            ),
        },
        "reconcile_not_found_after_hours": {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": 2160,
            "title": "Not found after (hours)",
            "default": 24,
            "description": (
                "A conversion still missing from Everflow's conversion report this long after "
                "it was sent is reported not_found."
            ),
        },
        "api_requests_per_second": {
            "type": ["number", "null"],
            "exclusiveMinimum": 0,
            "maximum": 1000,
            "title": "API requests per second",
            "default": 5,
            "description": (
                "Rate limit of reconcile's Everflow REST API requests (one token bucket; 429 "
                "answers and their Retry-After are honoured too). Everflow allows a network key"
                " about 30 requests/s."
            ),
        },
        "reconcile_report_path": {
            "type": ["string", "null"],
            "title": "Reconcile report file",
            "description": (
                "Where reconcile writes its JSON report of the rejected and not-found "
                "conversions. Default: reconcile_report.json in dead_letter_path's directory."
            ),
        },
        "dry_run": {
            "type": ["boolean", "null"],
            "title": "Dry run",
            "default": False,
            "description": ("Send nothing: write each planned postback to dry_run_output instead."),
        },
        "dry_run_output": {
            "type": ["string", "null"],
            "title": "Dry run output",
            "default": "everflow_dry_run.jsonl",
            "description": "Where dry run writes its planned postbacks (JSON lines).",
        },
        "dead_letter_path": {
            "type": ["string", "null"],
            "title": "Dead letter path",
            "default": ".target-everflow/dead_letter.jsonl",
            "description": (
                "Where records that could not be delivered are kept, with the reason (a Singer "
                "stream you can replay with --input)."
            ),
        },
        "summary_path": {
            "type": ["string", "null"],
            "title": "Summary path",
            "description": "Also write the run summary as JSON to this file.",
        },
        "progress_interval": {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": 86400,
            "title": "Progress interval",
            "default": 10,
            "description": ("Seconds between progress log lines on long runs (0 turns them off)."),
        },
        "max_concurrency": {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": 512,
            "title": "Max concurrency",
            "default": 16,
            "description": ("Postbacks in flight at once (one pooled keep-alive session)."),
        },
        "max_requests_per_second": {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": 100000,
            "title": "Max requests per second",
            "default": 0,
            "description": (
                "Global request rate limit over all streams and retries (0 = unlimited)."
            ),
        },
        "max_retries": {
            "type": ["integer", "null"],
            "minimum": 0,
            "maximum": 50,
            "title": "Max retries",
            "default": 5,
            "description": (
                "Retries of a transient failure (timeout, connection error, 429, 5xx)."
            ),
        },
        "request_timeout": {
            "type": ["number", "null"],
            "exclusiveMinimum": 0,
            "maximum": 3600,
            "title": "Request timeout",
            "default": 30,
            "description": "Seconds per request attempt.",
        },
        "batch_size_rows": {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": 1000000,
            "title": "Batch size (rows)",
            "default": 5000,
            "description": (
                "Records per batch (the SDK's setting): a batch's postbacks go out "
                "concurrently, and STATE moves on after each batch is settled."
            ),
        },
        "max_batch_age_seconds": {
            "type": ["number", "null"],
            "exclusiveMinimum": 0,
            "maximum": 86400,
            "title": "Max batch age (seconds)",
            "default": 5,
            "description": (
                "A record waits at most this long for its batch to fill: when the oldest record"
                " read is this old, every batch is delivered and the STATE after it emitted, "
                "even while the tap sends nothing more (a streaming tap, a slow extraction)."
            ),
        },
        "ledger_url": {
            "type": ["string", "null"],
            "title": "Ledger URL",
            "description": (
                "Where delivered conversions are recorded: sqlite:///path (default: "
                ".target-everflow/ledger.sqlite3), postgresql://user:pass@host/db or a libpq "
                "connection string (shared by parallel runs), or none (no protection against "
                "re-sends)."
            ),
            "secret": True,
            "writeOnly": True,
        },
        "ledger_timeout": {
            "type": ["number", "null"],
            "exclusiveMinimum": 0,
            "maximum": 3600,
            "title": "Ledger timeout (seconds)",
            "default": 30,
            "description": (
                "Seconds the ledger may take to answer: PostgreSQL's connect, lock and "
                "statement timeouts and SQLite's wait for another process's lock. A ledger that"
                " does not answer within it (plus 5 s) fails the run with exit code 4, naming "
                "the wait."
            ),
        },
        "in_doubt": {
            "type": ["string", "null"],
            "enum": ["resend", "dead_letter"],
            "title": "In doubt",
            "default": "resend",
            "description": (
                "What to do with a conversion claimed by a run that died before recording "
                "Everflow's answer: resend it (at-least-once) or dead-letter it (at-most-once)."
            ),
        },
        "validate_records": {
            "type": ["boolean", "null"],
            "title": "Validate records",
            "default": False,
            "description": (
                "Validate each record against its stream's SCHEMA first; a record that breaks "
                "it is dead-lettered (invalid_record). Off by default: records are read by "
                "Segment's names whatever the tap declared (file taps often declare every "
                "column a string)."
            ),
        },
        "ledger_retention_days": {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": 36500,
            "title": "Ledger retention (days)",
            "default": 400,
            "description": "Delivered keys older than this are pruned at start-up.",
        },
        "max_dead_letter_ratio": {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": 1,
            "title": "Max dead-letter ratio",
            "default": 0.05,
            "description": (
                "The run exits with code 5 when dead letters / (delivered + dead letters) is "
                "above this (0.05 = 5%; 1 turns it off). A dry run counts planned postbacks as "
                "delivered; skipped records are not failures."
            ),
        },
        "max_dead_letters": {
            "type": ["integer", "null"],
            "minimum": 0,
            "maximum": 1000000000,
            "title": "Max dead letters",
            "description": (
                "The run exits with code 5 when it dead-letters more records than this. Unset: "
                "no limit on the count."
            ),
        },
    },
    "$schema": "https://json-schema.org/draft/2020-12/schema",
}


def schema_default(name: str) -> t.Any:
    """A setting's default, as the config schema states it (the one place defaults live)."""
    return CONFIG_SCHEMA["properties"][name].get("default")


def _setting(config: t.Mapping[str, t.Any], name: str) -> t.Any:
    """A setting's value, or its schema default when it is not given (or given as null)."""
    value = config.get(name)
    return schema_default(name) if value is None else value


# --- numbers: every number a person gives is finite and within the schema's bounds ----------------

_NUMBER_TEXT = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*")
"""A number written as text (``--config ENV``, Meltano's ``kind: string``): digits, a point, an
exponent; never ``nan``, ``inf``, ``1_000`` or hex."""
_BOUNDS = (
    ("minimum", ">=", lambda v, b: v >= b),
    ("exclusiveMinimum", ">", lambda v, b: v > b),
    ("maximum", "<=", lambda v, b: v <= b),
    ("exclusiveMaximum", "<", lambda v, b: v < b),
)


def json_types(spec: t.Mapping[str, t.Any]) -> list[str]:
    """The JSON types a schema entry allows, ``null`` left out."""
    types = spec.get("type", [])
    return [x for x in (types if isinstance(types, list) else [types]) if x != "null"]


def is_number_spec(spec: t.Mapping[str, t.Any]) -> bool:
    """Whether a schema entry is a number or an integer (and nothing else but null)."""
    types = json_types(spec)
    return bool(types) and set(types) <= {"number", "integer"}


def number_rule(spec: t.Mapping[str, t.Any]) -> str:
    """What a number setting must be, in words: ``an integer >= 1 and <= 512``."""
    kind = "a number" if "number" in json_types(spec) else "an integer"
    bounds = [f"{sign} {_num(spec[key])}" for key, sign, _ in _BOUNDS if key in spec]
    return " ".join([kind, " and ".join(bounds)]).strip()


def check_number(
    setting: str, value: t.Any, spec: t.Mapping[str, t.Any] | None = None
) -> int | float:
    """The number ``value`` gives for ``setting`` (an ``int`` for an integer setting), or a
    ``ConfigError`` in one line: it must be finite and within the schema's ``minimum``/``maximum``
    (``spec``: the setting's schema entry, by default ``CONFIG_SCHEMA``'s). Text that is a plain
    decimal number is read as one (environment variables and Meltano pass text)."""
    if spec is None:
        spec = CONFIG_SCHEMA["properties"][setting]
    integer = "number" not in json_types(spec)
    rule = f"must be {number_rule(spec)}"
    number: int | float
    if isinstance(value, str):
        if len(value) > 100 or not _NUMBER_TEXT.fullmatch(value):
            raise ConfigError(setting, f"{rule}, not the text {value[:40]!r}")
        text = value.strip()
        try:
            number = int(text)
        except ValueError:
            number = float(text)
    elif isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ConfigError(setting, f"{rule}, not {_kind_of(value)}")
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ConfigError(setting, f"{rule}, not {value}")
        number = int(value) if value == value.to_integral_value() else float(value)
    else:
        number = value
    if isinstance(number, float) and not math.isfinite(number):
        raise ConfigError(setting, f"{rule}, not {value!r}"[:200])
    if integer and isinstance(number, float):
        if not number.is_integer():
            raise ConfigError(setting, f"{rule}, not {number:g}")
        number = int(number)
    for key, _sign, holds in _BOUNDS:
        if key in spec and not holds(number, spec[key]):
            shown = (
                f"{number:g}"
                if isinstance(number, float) or abs(number) < 10**15
                else "a number that large"
            )
            raise ConfigError(setting, f"{rule}, not {shown}")
    return number


def _num(value: float) -> str:
    """A bound as people write it: ``2147483647``, ``0.5``."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def _kind_of(value: t.Any) -> str:
    if value is None:
        return "null"
    return {bool: "true or false", list: "a list", dict: "an object"}.get(
        type(value), "a " + type(value).__name__
    )


def numbers_checked(
    config: t.Mapping[str, t.Any], properties: t.Mapping[str, t.Any]
) -> tuple[dict[str, t.Any], list[ConfigError]]:
    """``config`` with every number setting of ``properties`` given (not null) checked and read
    as a number, and the errors of those that are not valid numbers (left as they were)."""
    out = dict(config)
    errors: list[ConfigError] = []
    for name, spec in properties.items():
        if isinstance(spec, t.Mapping) and is_number_spec(spec) and out.get(name) is not None:
            try:
                out[name] = check_number(name, out[name], spec)
            except ConfigError as exc:
                errors.append(exc)
    return out, errors


def _number(config: t.Mapping[str, t.Any], name: str) -> t.Any:
    """A number setting's value (checked), or its schema default."""
    return check_number(name, _setting(config, name))


DEFAULT_EVENT_MAPPING: dict[str, int] = schema_default("event_mapping")
DEFAULT_API_URL: str = schema_default("api_url")
EU_API_URL = "https://api-eu.eflow.team/v1"
NETWORK_KEY = "a network API key, created under Control Center > Security"
"""The kind of key the REST API calls need (said in messages about api_key)."""


SECRET_SETTINGS = ("api_key", "verification_token", "ledger_url")
# Sending needs these; a dry run needs none (Meltano's settings_group_validation says the same).
LIVE_REQUIRED = ("postback_url", "network_id")
SETTINGS_GROUP_VALIDATION = [list(LIVE_REQUIRED), ["dry_run"]]


class ClockError(ConfigError):
    """``TARGET_EVERFLOW_CLOCK`` is set to something that is not a time (exit 1, one line)."""

    def __init__(self, problem: str) -> None:
        self.setting = CLOCK_ENV
        TargetEverflowError.__init__(self, f"Environment variable {problem}")


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: the only hosts plain http is accepted for (tests)."""
    if host.lower() in {"localhost", "localhost."}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_URL_SAFE = "/!$&'()*+,;=:@%-._~?"
"""What stays as it is when a postback URL's path or query is percent-encoded: every printable
ASCII character that may appear there (``%`` too: what is encoded already stays encoded)."""
_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")


def _http_url(
    setting: str,
    url: str,
    *,
    invalid: t.Callable[[str], str],
    https: str,
    credentials: str,
) -> tuple[SplitResult, str]:
    """The parts and host of a URL setting, or ``ConfigError``: http(s) with a host and a valid
    port, https unless the host is loopback, no credentials. The rules of both URL settings
    (``postback_url``, ``api_url``); each words its problems (``invalid(detail)``: the URL does
    not parse, ``detail`` says why, or is not http(s) with a host, ``detail`` is empty)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError as exc:
        raise ConfigError(setting, invalid(str(exc))) from None
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:  # (its message would echo the text after the host)
        raise ConfigError(setting, invalid("its port is not a number from 0 to 65535")) from None
    if parts.scheme not in {"http", "https"} or not host:
        raise ConfigError(setting, invalid(""))
    if parts.scheme != "https" and not is_loopback(host):
        raise ConfigError(setting, https)
    if "@" in parts.netloc:
        raise ConfigError(setting, credentials)
    return parts, host


def check_postback_url(url: str) -> str:
    """The postback base URL to use, or ``ConfigError`` naming what is wrong (never echoing the
    URL, whose query string could hold a secret).

    A path or query holding non-ASCII characters or spaces is percent-encoded as UTF-8 (a
    request line is ASCII: sent as it is, every postback would fail as a network error). A
    fragment, credentials, or a query string setting a parameter the target sends itself are
    refused: the postback would go out without its parameters, or with two values for one.
    """
    if "#" in url:
        raise ConfigError(
            "postback_url",
            "must not have a fragment ('#...'): nothing after '#' reaches the server, so every "
            "postback would arrive without its parameters",
        )
    parts, host = _http_url(
        "postback_url",
        url,
        invalid=lambda why: (
            f"is not a valid URL ({why})" if why else "must be an https:// URL with a host"
        ),
        https=(
            "must use https (the verification token travels in the query string); "
            "plain http is only accepted for loopback hosts"
        ),
        credentials="must not contain credentials (user:password@)",
    )
    if not _HOST.fullmatch(host) and not _is_ip(host):
        raise ConfigError(
            "postback_url",
            "must name its host in ASCII (an internationalised domain in its xn-- form)",
        )
    postback_currency(url)
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if name.strip().lower() in POSTBACK_PARAMETERS - FIXABLE_PARAMETERS:
            raise ConfigError(
                "postback_url",
                f"its query string sets {name.strip().lower()!r}, a parameter the target sends "
                "itself: remove it (set network_id, advertiser_id or verification_token instead)",
            )
    path, query = quote(parts.path, safe=_URL_SAFE), quote(parts.query, safe=_URL_SAFE)
    if (path, query) == (parts.path, parts.query):
        return url
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


FIXABLE_PARAMETERS = frozenset({"currency"})
"""Postback parameters ``postback_url`` may fix for every postback (a one-currency shop's
``currency=EUR``): the target then never sends its own."""
_CURRENCY = re.compile(r"[A-Za-z]{3}", re.ASCII)


def postback_currency(url: str | None) -> str | None:
    """The currency ``postback_url`` fixes (``currency=EUR`` in its query string), upper-cased,
    or None; ``ConfigError`` when it is not one three-letter code."""
    if not url:
        return None
    try:
        query = urlsplit(url).query
    except ValueError:
        return None  # (check_postback_url says what is wrong with the URL)
    found = [
        v for k, v in parse_qsl(query, keep_blank_values=True) if k.strip().lower() == "currency"
    ]
    if not found:
        return None
    if len(found) > 1 or not _CURRENCY.fullmatch(found[0]):
        raise ConfigError(
            "postback_url",
            "its query string's currency must be one three-letter ISO 4217 code (e.g. "
            "currency=EUR), the currency of every postback",
        )
    return found[0].upper()


def check_api_url(url: str) -> str:
    """The host of the REST API's base URL (``api_url``), or ``ConfigError``."""
    _, host = _http_url(
        "api_url",
        url,
        invalid=lambda _why: (
            f"{url!r} is not an https:// URL (the default is {DEFAULT_API_URL}; EU accounts "
            f"use {EU_API_URL})."
        ),
        https=(
            "must use https (the API key travels in a request header); plain http is only "
            "accepted for loopback hosts."
        ),
        credentials="must not contain credentials.",
    )
    return host


@dataclass(frozen=True)
class ApiAccess:
    """Everflow's REST API as a call needs it (``Settings.api_access``): the key (stripped),
    the base URL (no trailing slash) and its host."""

    key: str = field(repr=False)
    url: str
    host: str


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Settings:
    """The validated settings one run works with."""

    postback_url: str | None
    network_id: int | None
    advertiser_id: int | None
    verification_token: str | None = field(repr=False)
    api_key: str | None = field(repr=False)
    api_url: str
    preflight: bool
    event_mapping: dict[str, int]
    platform: str
    strict_types: bool
    send_timestamp: bool
    send_currency: bool
    max_conversion_age_days: int
    dry_run: bool
    dry_run_output: Path
    dead_letter_path: Path
    summary_path: Path | None
    progress_interval: float
    max_concurrency: int
    max_requests_per_second: float
    max_retries: int
    request_timeout: float
    max_batch_age_seconds: float
    ledger_url: str | None = field(repr=False)
    ledger_timeout: float
    in_doubt: str
    ledger_retention_days: int
    reconcile: bool
    reconcile_after_minutes: float
    reconcile_not_found_after_hours: float
    api_requests_per_second: float
    reconcile_report_path: Path
    max_dead_letter_ratio: float
    max_dead_letters: int | None
    fixed_currency: str | None = None
    """The currency ``postback_url`` fixes for every postback (``currency=EUR``), if any."""
    clock: Clock = field(default_factory=Clock)
    """What "now" is when a conversion's age is judged (``TARGET_EVERFLOW_CLOCK`` pins it)."""

    @property
    def state_dir(self) -> Path:
        """Directory for the embedded ledger: next to the dead letters."""
        return self.dead_letter_path.parent

    def api_access(self, needed_by: str = "the Everflow API check") -> ApiAccess:
        """The API key and URL for a call to Everflow's REST API, or ``ConfigError``. Asked
        when a call is to be made (the check, reconcile): a run that makes none needs neither."""
        key = (self.api_key or "").strip()
        if not key:
            raise ConfigError(
                "api_key",
                f"{needed_by} needs an API key ({NETWORK_KEY}); set api_key, or set "
                "preflight: false to skip the check.",
            )
        # The HTTP layer would put an invalid header value into its exception text: refuse it.
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in key):
            raise ConfigError(
                "api_key",
                "contains whitespace or control characters; paste the key exactly as shown "
                "under Control Center > Security.",
            )
        return ApiAccess(key, self.api_url, check_api_url(self.api_url))

    def api_check(self) -> ApiAccess:
        """``api_access`` for the Everflow API check, which also needs ``advertiser_id`` when a
        mapped event id is not 0 (the advertiser's events are read to check it)."""
        access = self.api_access()
        non_zero = [(name, eid) for name, eid in self.event_mapping.items() if eid]
        if self.advertiser_id is None and non_zero:
            listed = ", ".join(f"'{name}' -> {eid}" for name, eid in non_zero)
            raise ConfigError(
                "advertiser_id",
                "is needed to check the non-zero event ids in event_mapping "
                f"({listed}); set it to the Everflow advertiser (brand) id.",
            )
        return access

    @classmethod
    def from_config(cls, config: t.Mapping[str, t.Any]) -> Settings:
        """Validate the cross-setting rules; raise ``ConfigError`` naming the setting."""
        dry_run = bool(_setting(config, "dry_run"))

        postback_url = config.get("postback_url") or None
        network_id = None if config.get("network_id") is None else _number(config, "network_id")
        if postback_url is not None:
            postback_url = check_postback_url(postback_url)
        if not dry_run:
            for name in LIVE_REQUIRED:
                if config.get(name) in (None, ""):
                    raise ConfigError(name, "is required unless dry_run is true")

        mapping = config.get("event_mapping")
        if mapping is None:
            mapping = DEFAULT_EVENT_MAPPING
        if not isinstance(mapping, t.Mapping) or not mapping:
            raise ConfigError(
                "event_mapping",
                'must be a non-empty object of Segment event name -> event id, e.g. {"Order Completed": 0}',
            )
        event_mapping: dict[str, int] = {}
        id_spec = CONFIG_SCHEMA["properties"]["event_mapping"]["additionalProperties"]
        for name, event_id in mapping.items():
            if isinstance(event_id, bool) or not isinstance(event_id, int):
                raise ConfigError(
                    "event_mapping",
                    f"the id for event {str(name)[:100]!r} must be {number_rule(id_spec)} "
                    "(0 = base conversion)",
                )
            try:
                event_mapping[str(name)] = int(check_number("event_mapping", event_id, id_spec))
            except ConfigError:
                raise ConfigError(
                    "event_mapping",
                    f"the id for event {str(name)[:100]!r} must be {number_rule(id_spec)} "
                    "(0 = base conversion)",
                ) from None

        advertiser_id = config.get("advertiser_id")
        if advertiser_id is not None:
            advertiser_id = _number(config, "advertiser_id")
        request_timeout = _number(config, "request_timeout")

        api_key = config.get("api_key") or None
        preflight = config.get("preflight")
        preflight = bool(api_key) if preflight is None else bool(preflight)
        if preflight and not api_key:
            raise ConfigError("preflight", "is true but api_key is not set")
        preflight = preflight and not dry_run  # a dry run touches no network (--check still can)

        in_doubt = _setting(config, "in_doubt")
        if in_doubt not in {"resend", "dead_letter"}:
            raise ConfigError("in_doubt", "must be resend or dead_letter")

        reconcile = bool(_setting(config, "reconcile"))
        if reconcile and not api_key:
            raise ConfigError(
                "reconcile",
                "is true but api_key is not set (reconcile reads Everflow's conversion report "
                "with a network API key)",
            )
        if reconcile and str(config.get("ledger_url") or "").strip().lower() == "none":
            raise ConfigError(
                "reconcile", "is true but ledger_url is none: nothing records what was delivered"
            )
        dead_letter_path = Path(
            config.get("dead_letter_path") or schema_default("dead_letter_path")
        )
        report_path = config.get("reconcile_report_path")

        summary_path = config.get("summary_path")
        max_age = int(_number(config, "max_conversion_age_days"))
        try:
            clock = from_environment()
        except InvalidClock as exc:
            raise ClockError(str(exc)) from None
        return cls(
            postback_url=postback_url,
            network_id=network_id,
            advertiser_id=advertiser_id,
            verification_token=config.get("verification_token") or None,
            api_key=api_key,
            api_url=(config.get("api_url") or DEFAULT_API_URL).rstrip("/"),
            preflight=preflight,
            event_mapping=event_mapping,
            platform=_setting(config, "platform"),
            strict_types=bool(_setting(config, "strict_types")),
            send_timestamp=bool(_setting(config, "send_timestamp")),
            send_currency=bool(_setting(config, "send_currency")),
            max_conversion_age_days=max_age,
            dry_run=dry_run,
            dry_run_output=Path(config.get("dry_run_output") or schema_default("dry_run_output")),
            dead_letter_path=dead_letter_path,
            summary_path=Path(summary_path) if summary_path else None,
            progress_interval=float(_number(config, "progress_interval")),
            max_concurrency=int(_number(config, "max_concurrency")),
            max_requests_per_second=float(_number(config, "max_requests_per_second")),
            max_retries=int(_number(config, "max_retries")),
            request_timeout=float(request_timeout),
            max_batch_age_seconds=float(_number(config, "max_batch_age_seconds")),
            ledger_url=config.get("ledger_url") or None,
            ledger_timeout=float(_number(config, "ledger_timeout")),
            in_doubt=in_doubt,
            ledger_retention_days=int(_number(config, "ledger_retention_days")),
            reconcile=reconcile,
            reconcile_after_minutes=float(_number(config, "reconcile_after_minutes")),
            reconcile_not_found_after_hours=float(
                _number(config, "reconcile_not_found_after_hours")
            ),
            api_requests_per_second=float(_number(config, "api_requests_per_second")),
            reconcile_report_path=(
                Path(report_path)
                if report_path
                else dead_letter_path.parent / "reconcile_report.json"
            ),
            max_dead_letter_ratio=float(_number(config, "max_dead_letter_ratio")),
            max_dead_letters=(
                None
                if config.get("max_dead_letters") is None
                else int(_number(config, "max_dead_letters"))
            ),
            fixed_currency=postback_currency(postback_url),
            clock=clock,
        )


def markdown_table(properties: t.Mapping[str, dict] | None = None) -> str:
    """README's settings table, generated from ``CONFIG_SCHEMA`` (a test keeps README in step)."""
    lines = ["| Setting | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for name, spec in (CONFIG_SCHEMA["properties"] if properties is None else properties).items():
        types = spec.get("type", "")
        types = [x for x in (types if isinstance(types, list) else [types]) if x != "null"]
        kind = " or ".join(types)
        if "enum" in spec:
            kind = " \\| ".join(f"`{v}`" for v in spec["enum"] if v is not None)
        bounds = [f"{sign} {_num(spec[key])}" for key, sign, _ in _BOUNDS if key in spec]
        if bounds:
            kind += f" ({', '.join(bounds)})"
        if spec.get("secret") or spec.get("writeOnly"):
            kind += " (secret)"
        default = spec.get("default")
        shown = "" if default is None else f"`{json.dumps(default)}`"
        lines.append(f"| `{name}` | {kind} | {shown} | {spec.get('description', '')} |")
    return "\n".join(lines)
