"""The Everflow REST API pre-flight check.

Before the target reads a record it can ask Everflow's REST API (``api_url``, header
``X-Eflow-API-Key``) two questions:

1. ``GET {api_url}/networks``: is the key a valid *network* API key (and which network is it)?
2. ``GET {api_url}/networks/advertisers/{advertiser_id}/events``: does every non-zero event id
   in ``event_mapping`` exist for the advertiser, and is it active? Id 0 is the base conversion
   and needs no event; when every mapped id is 0 this call is not made.

``run_preflight`` returns a ``PreflightReport`` (what was verified, as human lines) or raises
``PreflightError`` whose ``str()`` is the message for the user. The API key never appears in a
message or a log line: it is only ever put in the request header, requests are never logged with
their headers, redirects are not followed (a client that follows them may forward a custom header
to another host), and every message goes through ``secrets.mask`` as a last guard.

The requests go through the postbacks' HTTP layer (``transport``): each attempt has a total
deadline of ``request_timeout`` seconds (connect, send, read the whole answer), and at most
``BODY_LIMIT`` bytes of an answer are read (after decompression).

429 and 5xx answers, and connection errors, are retried (at most ``MAX_ATTEMPTS`` attempts per
call, exponential backoff with equal jitter, capped; ``Retry-After`` is honoured up to
``MAX_RETRY_AFTER``): ``retry.API_RETRY``. A timeout is not retried: the request already waited
``request_timeout`` seconds.
"""

from __future__ import annotations

import json
import logging
import time
import typing as t
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from urllib3.util import make_headers

from target_everflow.masking import mask
from target_everflow.retry import API_RETRY, retry_after_seconds
from target_everflow.settings import (
    DEFAULT_API_URL,
    EU_API_URL,
    NETWORK_KEY,
    ConfigError,
)
from target_everflow.text import excerpt
from target_everflow.transport import (
    DeadlineExceeded,
    HttpClient,
    Reply,
    TlsFailed,
    TransportError,
)

if t.TYPE_CHECKING:
    from target_everflow.settings import ApiAccess, Settings

API_KEY_HEADER = "X-Eflow-API-Key"
MAX_ATTEMPTS = API_RETRY.max_attempts  # per API call: the first try and up to three retries
MAX_RETRY_AFTER = API_RETRY.retry_after_max  # a longer Retry-After is not waited for: fail instead
USER_AGENT = "target-everflow (preflight)"
BODY_LIMIT = 4 * 1024 * 1024  # an API page (the advertiser's events) is read up to this, decoded
REDACTED = "[redacted]"
SKIP_HINT = "or set preflight: false to skip the check"

_LOG = logging.getLogger(__name__)


class PreflightError(Exception):
    """The pre-flight check failed. ``str()`` is the user-facing message; never holds the key.

    ``reason`` is a short machine-readable kind: ``config``, ``auth``, ``realm``, ``forbidden``,
    ``not_found``, ``bad_request``, ``event``, ``rate_limited``, ``server``, ``unreachable``,
    ``unexpected``.
    """

    def __init__(self, message: str, reason: str = "unexpected") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class PreflightReport:
    """What the check verified."""

    api_url: str
    advertiser_id: int | None
    events: list[
        tuple[str, int, str]
    ]  # (Segment event, Everflow id, Everflow name or "base conversion")
    network_id: int | None = None
    network_name: str | None = None

    def lines(self) -> list[str]:
        """Human lines: what was verified."""
        if self.network_name and self.network_id is not None:
            network = f"network '{self.network_name}' (id {self.network_id})"
        elif self.network_name:
            network = f"network '{self.network_name}'"
        elif self.network_id is not None:
            network = f"network id {self.network_id}"
        else:
            network = "network key"
        out = [f"Everflow API check passed: {network} at {self.api_url}"]
        if self.advertiser_id is None:
            out.append("Advertiser: not set (every mapped event is the base conversion)")
        elif any(event_id for _, event_id, _ in self.events):
            out.append(f"Advertiser {self.advertiser_id}: every mapped event exists and is active")
        else:
            out.append(
                f"Advertiser {self.advertiser_id}: not queried (every mapped event is the base "
                "conversion)"
            )
        for segment_event, event_id, name in self.events:
            if event_id == 0:
                out.append(f"  '{segment_event}' -> 0 (base conversion)")
            else:
                out.append(f"  '{segment_event}' -> event {event_id} '{name}'")
        return out


# --- helpers -------------------------------------------------------------------------------


def _redact(text: str, secret: str | None) -> str:
    return mask(text, (secret,), REDACTED)


def _retry_after(response: Reply) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), or None."""
    return retry_after_seconds(response.headers.get("Retry-After"))


def _error_text(response: Reply, secret: str | None = None) -> str:
    """Everflow's error message from a JSON ``{"error": ...}`` body (or ``Error``), else ''.

    The key is redacted before the message is shortened (never a partial key in an error).
    """
    try:
        body = json.loads(response.content)
    except ValueError:
        return ""
    if isinstance(body, t.Mapping):
        for key in ("error", "Error", "message"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                return excerpt(_redact(value, secret))
    return ""


def _connection_reason(exc: TransportError) -> str:
    if isinstance(exc, TlsFailed):
        return "TLS handshake failed"
    text = f"{type(exc.__cause__).__name__} {exc.why}".lower()
    if "nameresolution" in text or "name or service not known" in text or "getaddrinfo" in text:
        return "the host name could not be resolved"
    if "refused" in text:
        return "connection refused"
    if "ssl" in text or "certificate" in text:
        return "TLS handshake failed"
    if "reset" in text or "aborted" in text or "remotedisconnected" in text:
        return "connection reset"
    return "connection failed"


# --- the client ----------------------------------------------------------------------------


def api_client(api_url: str, timeout: float, body_limit: int = BODY_LIMIT) -> HttpClient:
    """The HTTP client of the REST API: the postbacks' layer, answers read up to ``body_limit``."""
    return HttpClient(
        api_url,
        timeout=timeout,
        body_limit=body_limit,
        headers={
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": make_headers(accept_encoding=True)["accept-encoding"],
        },
    )


class _Api:
    def __init__(
        self,
        access: ApiAccess,
        timeout: float,
        client: HttpClient,
        sleep: t.Callable[[float], None],
        logger: logging.Logger,
        *,
        limiter: t.Any = None,
        hint: str = SKIP_HINT,
        purpose: str = "the check",
    ) -> None:
        """``limiter``: a token bucket (``delivery.RateLimiter``) every attempt waits for, and
        that a 429 holds; ``hint``: what the user can do when the API fails (ends messages);
        ``purpose``: what the requests are for, in messages."""
        self.api_url = access.url
        self.host = access.host
        self._key = access.key
        self.timeout = timeout
        self.client = client
        self._path = urlsplit(access.url).path
        self.sleep = sleep
        self.log = logger
        self.limiter = limiter
        self.hint = hint
        self.purpose = purpose
        self.user_agent = USER_AGENT
        self.requests_made = 0

    def _wait_to_retry(self, why: str, what: str, attempt: int, delay: float) -> None:
        """Say why attempt ``attempt`` is retried and wait ``delay`` seconds."""
        self.log.warning(
            "Everflow API: %s on %s; retrying in %.1fs (attempt %d of %d)",
            why, what, delay, attempt + 1, MAX_ATTEMPTS,
        )  # fmt: skip
        self.sleep(delay)

    def fail(self, message: str, reason: str) -> t.NoReturn:
        """Raise the check's error (the API key masked in its message)."""
        raise PreflightError(_redact(message, self._key), reason) from None

    def _region_hint(self) -> str:
        if self.host == urlsplit(DEFAULT_API_URL).hostname:
            return f" If the account is on Everflow's EU platform, set api_url to {EU_API_URL}."
        if self.host == urlsplit(EU_API_URL).hostname:
            return f" If the account is not on Everflow's EU platform, set api_url to {DEFAULT_API_URL}."
        return ""

    def get(self, path: str) -> t.Any:
        """GET ``{api_url}{path}`` with retries; return the JSON body of a 200."""
        return self.request("GET", path)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: t.Sequence[tuple[str, t.Any]] | None = None,
        body: t.Any = None,
    ) -> t.Any:
        """``method {api_url}{path}`` (query ``params``, JSON ``body``) with retries; return the
        JSON body of a 200."""
        url = f"{self.api_url}{path}"
        query = urlencode(list(params or ()))
        target = f"{self._path}{path}" + (f"?{query}" if query else "")
        what = f"{method} {url}" + (f"?{query}" if query else "")
        headers = {
            API_KEY_HEADER: self._key,
            "Accept": "application/json",
            "User-Agent": self.user_agent,
        }
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            attempt += 1
            if self.limiter is not None:
                self.limiter.acquire()
            self.requests_made += 1
            try:
                response = self.client.request(method, target, headers, payload)
            except DeadlineExceeded:
                self.fail(
                    f"The Everflow API could not be reached at {self.host}: no answer within "
                    f"{self.timeout:g}s to {what}. Check api_url and this machine's network "
                    f"access, {self.hint}.",
                    "unreachable",
                )
            except TransportError as exc:
                reason = _connection_reason(exc)
                # A certificate that does not verify will not verify on a retry either.
                if attempt < MAX_ATTEMPTS and not isinstance(exc, TlsFailed):
                    self._wait_to_retry(reason, what, attempt, API_RETRY.delay(attempt))
                    continue
                self.fail(
                    f"The Everflow API could not be reached at {self.host}: {reason} "
                    f"({what}, {attempt} attempts). Check api_url and this machine's network "
                    f"access, {self.hint}.",
                    "unreachable",
                )

            status = response.status_code
            self.log.debug("Everflow API: %s -> HTTP %d", what, status)
            if status == 200:
                if response.truncated:
                    self.fail(
                        f"The Everflow API answered {what} with more than "
                        f"{BODY_LIMIT // (1024 * 1024)} MB; check api_url (it should look like "
                        f"{DEFAULT_API_URL}).",
                        "unexpected",
                    )
                try:
                    return json.loads(response.content)
                except ValueError:
                    self.fail(
                        f"The Everflow API answered {what} with HTTP 200 but the body is not "
                        f"JSON; check api_url (it should look like {DEFAULT_API_URL}).",
                        "unexpected",
                    )

            if status == 429 or status >= 500:
                retry_after = _retry_after(response) if status == 429 or status == 503 else None
                if retry_after is not None and not API_RETRY.waits_for(retry_after):
                    if status == 429:
                        self.fail(
                            f"The Everflow API is rate limiting this key: {what} answered HTTP "
                            f"429 with Retry-After {retry_after:.0f}s. Another process may be "
                            "using the same network key (limit: 30 requests/s); try again "
                            f"later, {self.hint}.",
                            "rate_limited",
                        )
                    self.fail(
                        f"The Everflow API is unavailable: {what} answered HTTP {status} with "
                        f"Retry-After {retry_after:.0f}s; try again later, {self.hint}.",
                        "server",
                    )
                if attempt < MAX_ATTEMPTS:
                    delay = API_RETRY.delay(attempt, retry_after)
                    if status == 429 and self.limiter is not None:
                        self.limiter.hold(delay)  # the bucket's other users wait too
                    self._wait_to_retry(f"HTTP {status}", what, attempt, delay)
                    continue
                if status == 429:
                    self.fail(
                        f"The Everflow API kept answering HTTP 429 (rate limited) to {what} "
                        f"after {attempt} attempts. Another process may be using the same "
                        f"network key (limit: 30 requests/s); try again later, {self.hint}.",
                        "rate_limited",
                    )
                self.fail(
                    f"The Everflow API kept answering HTTP {status} to {what} after {attempt} "
                    f"attempts (an error on Everflow's side); try again later, {self.hint}.",
                    "server",
                )

            error = _error_text(response, self._key)
            answered = f"{what} answered HTTP {status}" + (f" ({error})" if error else "")
            if status == 401:
                self.fail(
                    f"Everflow rejected the API key: {answered}. Check api_key: it must be "
                    f"{NETWORK_KEY}.{self._region_hint()}",
                    "auth",
                )
            if status == 403:
                if "out of realm" in error.lower():
                    self.fail(
                        f"The API key is the wrong kind: {answered}. The check needs "
                        f"{NETWORK_KEY}; advertiser and affiliate keys cannot call /networks "
                        "paths.",
                        "realm",
                    )
                self.fail(
                    f"The API key lacks a permission: {answered}. Check the key's permissions "
                    "under Control Center > Security.",
                    "forbidden",
                )
            if 300 <= status < 400:
                location = excerpt(_redact(response.headers.get("Location", ""), self._key), 120)
                to = f" to {location}" if location else ""
                self.fail(
                    f"The Everflow API answered {what} with a redirect (HTTP {status}{to}); "
                    f"check api_url (it should look like {DEFAULT_API_URL}).",
                    "unexpected",
                )
            if status == 404:
                self.fail(answered, "not_found")  # the caller words it
            self.fail(
                f"The Everflow API refused {self.purpose}: {answered}.",
                "bad_request" if status == 400 else "unexpected",
            )


def _describe_event(event_id: int, name: str, status: str) -> str:
    if status.lower() == "active":
        return f"  {event_id}: {name}"
    return f"  {event_id}: {name} ({status})"


def advertiser_events(api: _Api, advertiser_id: int) -> dict[int, tuple[str, str]]:
    """The advertiser's global events, ``id -> (name, status)``: the ids ``adv_event_id`` takes."""
    path = f"/networks/advertisers/{advertiser_id}/events"
    try:
        body = api.get(path)
    except PreflightError as exc:
        if exc.reason == "not_found":
            api.fail(
                f"Everflow has no advertiser {advertiser_id}: {exc}. Check advertiser_id "
                "(Advertisers (Brands) > Manage shows the ids).",
                "not_found",
            )
        raise
    raw = body.get("global_events") if isinstance(body, t.Mapping) else None
    if not isinstance(raw, list):
        api.fail(
            f"The Everflow API answered GET {api.api_url}{path} without a global_events list; "
            "check api_url.",
            "unexpected",
        )
    events: dict[int, tuple[str, str]] = {}
    for item in raw:
        if not isinstance(item, t.Mapping):
            continue
        eid = item.get("network_advertiser_global_event_id")
        if isinstance(eid, bool) or not isinstance(eid, int):
            continue
        name = item.get("entry_name")
        status = item.get("status")
        events[eid] = (
            excerpt(name) if isinstance(name, str) and name.strip() else f"event {eid}",
            # No status member: nothing says it is off, take it as active.
            status.strip() if isinstance(status, str) and status.strip() else "active",
        )
    return events


def run_preflight(
    settings: Settings,
    *,
    client: HttpClient | None = None,
    sleep: t.Callable[[float], None] = time.sleep,
    logger: logging.Logger | None = None,
) -> PreflightReport:
    """Check the API key and every mapped event id against Everflow; see the module docstring.

    ``settings`` are validated already; what only the check needs (the key, the URL, an
    advertiser for non-zero event ids: ``Settings.api_check``) is asked of them first. Raises
    ``PreflightError`` (one clear message, never the key) before any request when a setting is
    missing or wrong (reason ``config``), or after the API answered no.
    """
    try:
        access = settings.api_check()
    except ConfigError as exc:
        raise PreflightError(str(exc), "config") from None
    http = client if client is not None else api_client(access.url, settings.request_timeout)
    api = _Api(access, settings.request_timeout, http, sleep, logger or _LOG)
    try:
        return _check(api, access.url, settings.advertiser_id, settings.event_mapping)
    finally:
        if client is None:
            http.close()


def _check(
    api: _Api, api_url: str, advertiser_id: int | None, mapping: dict[str, int]
) -> PreflightReport:
    # 1. The key: a network key answers /networks with the network's info.
    try:
        network = api.get("/networks")
    except PreflightError as exc:
        if exc.reason == "not_found":
            api.fail(
                f"The Everflow API was not found at {api_url}: {exc}. Check api_url (it should "
                f"look like {DEFAULT_API_URL}).",
                "unexpected",
            )
        raise
    network_id = network_name = None
    if isinstance(network, t.Mapping):
        nid = network.get("network_id")
        network_id = nid if isinstance(nid, int) and not isinstance(nid, bool) else None
        name = network.get("name")
        network_name = name.strip() if isinstance(name, str) and name.strip() else None

    # 2. The events: only when a non-zero id is mapped.
    verified: list[tuple[str, int, str]] = []
    events: dict[int, tuple[str, str]] = {}  # id -> (name, status)
    if any(mapping.values()):
        assert advertiser_id is not None  # Settings.api_check() made sure
        events = advertiser_events(api, advertiser_id)

        problems: list[str] = []
        for segment_event, event_id in mapping.items():
            if event_id == 0:
                continue
            if event_id not in events:
                problems.append(
                    f"Segment event '{segment_event}' is mapped to Everflow event id {event_id}, "
                    f"but advertiser {advertiser_id} has no event with that id."
                )
            elif events[event_id][1].lower() != "active":
                name, status = events[event_id]
                problems.append(
                    f"Segment event '{segment_event}' is mapped to Everflow event id {event_id} "
                    f"('{name}'), but that event is {status}, not active."
                )
        if problems:
            if events:
                listing = [f"Advertiser {advertiser_id}'s events in Everflow (id: name):"]
                listing += [
                    _describe_event(eid, name, status)
                    for eid, (name, status) in sorted(events.items())
                ]
            else:
                listing = [f"Advertiser {advertiser_id} has no events in Everflow."]
            api.fail("\n".join(problems + listing), "event")

    for segment_event, event_id in mapping.items():
        if event_id == 0:
            verified.append((segment_event, 0, "base conversion"))
        else:
            verified.append((segment_event, event_id, events[event_id][0]))

    return PreflightReport(
        api_url=api_url,
        advertiser_id=advertiser_id,
        events=verified,
        network_id=network_id,
        network_name=network_name,
    )
