"""The one client of Everflow's REST API: the pre-flight check (``everflow/preflight.py``) and
reconcile (``reconcile/reconciler.py``) both call the API through :class:`RestClient`.

* One HTTP layer: requests go through ``transport.HttpClient`` (each attempt has a total
  deadline of ``request_timeout`` seconds; at most ``body_limit`` bytes of an answer are read,
  after decompression). The key is only ever put in the ``X-Eflow-API-Key`` header; requests
  are never logged with their headers and redirects are not followed (a client that follows
  them may forward a custom header to another host).
* One retry policy: ``retry.API_RETRY``. 429 and 5xx answers and connection errors are retried
  (at most ``MAX_ATTEMPTS`` attempts per call, exponential backoff with equal jitter, capped; a
  ``Retry-After`` is honoured up to ``MAX_RETRY_AFTER``, a longer one fails the call at once).
  A timeout is not retried: the request already waited ``request_timeout`` seconds. A TLS
  failure is not retried either: a certificate that does not verify will not on a retry.
* One token bucket (``retry.RateLimiter``, optional) every attempt waits for; a 429 holds it,
  so every user of the bucket slows down, not only the request that got it.
* Typed errors: every failure raises an :class:`ApiError` subclass, each a
  ``TargetEverflowError`` with its exit code, whose ``str()`` is one line with every secret
  masked (``masking.mask``): :class:`ApiAuthError` (401, 403), :class:`ApiNotFound` (404),
  :class:`ApiRefused` (another 4xx: the request itself), :class:`ApiRateLimited` (429),
  :class:`ApiUnavailable` (5xx, no connection, no answer in time) and :class:`ApiBadAnswer`
  (a redirect, a body too large or not JSON, a JSON body of the wrong shape).

:meth:`RestClient.clean` is how a caller keeps a string it read from Everflow: secrets masked,
control characters (NUL included) dropped, clipped.
"""

from __future__ import annotations

import json
import logging
import time
import typing as t
from urllib.parse import urlencode, urlsplit

from urllib3.util import make_headers

from target_everflow.errors import EXIT_CONFIG, EXIT_DELIVERY, TargetEverflowError
from target_everflow.masking import mask
from target_everflow.retry import API_RETRY, RateLimiter, retry_after_seconds
from target_everflow.settings import DEFAULT_API_URL, EU_API_URL, NETWORK_KEY
from target_everflow.text import excerpt
from target_everflow.transport import (
    DeadlineExceeded,
    HttpClient,
    Reply,
    TlsFailed,
    TransportError,
)

if t.TYPE_CHECKING:
    from target_everflow.settings import ApiAccess

API_KEY_HEADER = "X-Eflow-API-Key"
MAX_ATTEMPTS = API_RETRY.max_attempts  # per API call: the first try and up to three retries
MAX_RETRY_AFTER = API_RETRY.retry_after_max  # a longer Retry-After is not waited for: fail instead
USER_AGENT = "target-everflow"
BODY_LIMIT = 4 * 1024 * 1024  # an API answer is read up to this, decoded
REDACTED = "[redacted]"
TEXT_LIMIT = 300
"""Characters kept of a string read from Everflow (an error message, a name)."""

_LOG = logging.getLogger(__name__)


# --- the errors ----------------------------------------------------------------------------


class ApiError(TargetEverflowError):
    """A call to Everflow's REST API failed. ``str()`` is one line, secrets masked.

    ``status`` is the HTTP status of the answer (None without one); ``reason`` a short
    machine-readable kind the pre-flight check reports (``auth``, ``realm``, ``forbidden``,
    ``not_found``, ``bad_request``, ``rate_limited``, ``server``, ``unreachable``,
    ``unexpected``)."""

    exit_code = EXIT_DELIVERY
    reason = "unexpected"

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        if reason:
            self.reason = reason


class ApiAuthError(ApiError):
    """401 or 403: the key is wrong, of the wrong kind, or lacks a permission."""

    exit_code = EXIT_CONFIG
    reason = "auth"


class ApiNotFound(ApiError):
    """404: the path (the API, an advertiser) does not exist."""

    exit_code = EXIT_CONFIG
    reason = "not_found"


class ApiRefused(ApiError):
    """Another 4xx: Everflow refused the request itself (400: a filter, a field)."""

    reason = "unexpected"


class ApiRateLimited(ApiError):
    """429 after every attempt, or with a ``Retry-After`` longer than the policy waits."""

    reason = "rate_limited"


class ApiUnavailable(ApiError):
    """5xx after every attempt, no connection, or no answer within ``request_timeout``."""

    reason = "server"


class ApiBadAnswer(ApiError):
    """An answer that is not what the API gives: a redirect, too large, not JSON, the wrong
    shape."""

    reason = "unexpected"


# --- helpers -------------------------------------------------------------------------------


def one_line(text: str) -> str:
    """``text`` on one line: line breaks and other control characters become spaces."""
    return " ".join(
        "".join(" " if (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0) else c for c in text).split()
    )


def clean_text(text: str, secrets: t.Iterable[str | None], limit: int = TEXT_LIMIT) -> str:
    """A string read from Everflow, fit to store, print and write: every secret masked (the one
    masking function), NUL and every other control character removed, whitespace runs
    collapsed, at most ``limit`` characters."""
    masked = mask(one_line(text.replace("\x00", "")), tuple(secrets), REDACTED)
    return excerpt(masked, limit)


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


def http_client(api_url: str, timeout: float, body_limit: int = BODY_LIMIT) -> HttpClient:
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


def region_hint(host: str) -> str:
    """What to try when a key is refused at one of Everflow's two platforms."""
    if host == urlsplit(DEFAULT_API_URL).hostname:
        return f" If the account is on Everflow's EU platform, set api_url to {EU_API_URL}."
    if host == urlsplit(EU_API_URL).hostname:
        return (
            f" If the account is not on Everflow's EU platform, set api_url to {DEFAULT_API_URL}."
        )
    return ""


# --- the client ----------------------------------------------------------------------------


class RestClient:
    """Everflow's REST API with a network key; see the module docstring.

    ``http``: the HTTP client to use (default: one of its own, closed by :meth:`close`);
    ``limiter``: the token bucket every attempt waits for; ``secrets``: more values to mask (the
    key always is); ``hint``: what the user can do when the API fails (ends messages);
    ``purpose``: what the requests are for, in messages; ``parse``: reads a 200's body (default
    ``json.loads``; a caller may bound what it keeps of a large answer)."""

    def __init__(
        self,
        access: ApiAccess,
        timeout: float,
        *,
        http: HttpClient | None = None,
        body_limit: int = BODY_LIMIT,
        sleep: t.Callable[[float], None] = time.sleep,
        logger: logging.Logger | None = None,
        limiter: RateLimiter | None = None,
        secrets: t.Iterable[str | None] = (),
        user_agent: str = USER_AGENT,
        hint: str = "",
        purpose: str = "the request",
    ) -> None:
        self.api_url = access.url
        self.host = access.host
        self._key = access.key
        self._secrets = (access.key, *(s for s in secrets if s))
        self.timeout = timeout
        self._own_http = http is None
        self.http = http if http is not None else http_client(access.url, timeout, body_limit)
        self.body_limit = body_limit
        self._path = urlsplit(access.url).path
        self.sleep = sleep
        self.log = logger or _LOG
        self.limiter = limiter
        self.user_agent = user_agent
        self.hint = hint
        self.purpose = purpose
        self.requests_made = 0

    def close(self) -> None:
        if self._own_http:
            self.http.close()

    # -- strings ---------------------------------------------------------------------------

    def mask(self, text: str) -> str:
        """``text`` with the key and every other secret masked (the one masking function)."""
        return mask(text, self._secrets, REDACTED)

    def clean(self, value: object, limit: int = TEXT_LIMIT) -> str:
        """A value read from Everflow as text fit to keep: see :func:`clean_text`."""
        if value is None or isinstance(value, bool):
            return ""
        return clean_text(str(value), self._secrets, limit)

    def _error(self, cls: type[ApiError], message: str, **kwargs: t.Any) -> ApiError:
        return cls(one_line(self.mask(message)), **kwargs)

    def _tail(self) -> str:
        return f", {self.hint}" if self.hint else ""

    # -- requests --------------------------------------------------------------------------

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
        parse: t.Callable[[bytes], t.Any] = json.loads,
    ) -> t.Any:
        """``method {api_url}{path}`` (query ``params``, JSON ``body``) with retries; return the
        body of a 200 as ``parse`` reads it. Raises an :class:`ApiError` subclass."""
        query = urlencode(list(params or ()))
        target = f"{self._path}{path}" + (f"?{query}" if query else "")
        what = f"{method} {self.api_url}{path}" + (f"?{query}" if query else "")
        headers = {API_KEY_HEADER: self._key, "Accept": "application/json",
                   "User-Agent": self.user_agent}  # fmt: skip
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
                reply = self.http.request(method, target, headers, payload)
            except DeadlineExceeded:
                raise self._error(
                    ApiUnavailable,
                    f"The Everflow API could not be reached at {self.host}: no answer within "
                    f"{self.timeout:g}s to {what}. Check api_url and this machine's network "
                    f"access{self._tail()}.",
                    reason="unreachable",
                ) from None
            except TransportError as exc:
                why = _connection_reason(exc)
                if attempt < MAX_ATTEMPTS and not isinstance(exc, TlsFailed):
                    self._wait(why, what, attempt, API_RETRY.delay(attempt))
                    continue
                raise self._error(
                    ApiUnavailable,
                    f"The Everflow API could not be reached at {self.host}: {why} "
                    f"({what}, {attempt} attempts). Check api_url and this machine's network "
                    f"access{self._tail()}.",
                    reason="unreachable",
                ) from None
            status = reply.status_code
            self.log.debug("Everflow API: %s -> HTTP %d", what, status)
            if status == 200:
                return self._read(reply, what, parse)
            if status == 429 or status >= 500:
                delay = self._retry_delay(reply, what, attempt)
                if delay is not None:
                    if status == 429 and self.limiter is not None:
                        self.limiter.hold(delay)  # the bucket's other users wait too
                    self._wait(f"HTTP {status}", what, attempt, delay)
                    continue
            raise self._refused(reply, what, attempt)

    def _wait(self, why: str, what: str, attempt: int, delay: float) -> None:
        """Say why attempt ``attempt`` is retried and wait ``delay`` seconds."""
        self.log.warning(
            "Everflow API: %s on %s; retrying in %.1fs (attempt %d of %d)",
            why, what, delay, attempt + 1, MAX_ATTEMPTS,
        )  # fmt: skip
        self.sleep(delay)

    def _read(self, reply: Reply, what: str, parse: t.Callable[[bytes], t.Any]) -> t.Any:
        if reply.truncated:
            raise self._error(
                ApiBadAnswer,
                f"The Everflow API answered {what} with more than "
                f"{self.body_limit // (1024 * 1024)} MB; check api_url (it should look like "
                f"{DEFAULT_API_URL}).",
                status=200,
            )
        try:
            return parse(reply.content)
        except (ValueError, RecursionError):
            raise self._error(
                ApiBadAnswer,
                f"The Everflow API answered {what} with HTTP 200 but the body is not JSON; "
                f"check api_url (it should look like {DEFAULT_API_URL}).",
                status=200,
            ) from None

    def _retry_delay(self, reply: Reply, what: str, attempt: int) -> float | None:
        """How long to wait before retrying a 429 or 5xx; None after the last attempt. Raises
        when the server asks for a longer wait than the policy's."""
        status = reply.status_code
        retry_after = (
            retry_after_seconds(reply.headers.get("Retry-After")) if status in (429, 503) else None
        )
        if retry_after is not None and not API_RETRY.waits_for(retry_after):
            if status == 429:
                raise self._error(
                    ApiRateLimited,
                    f"The Everflow API is rate limiting this key: {what} answered HTTP 429 "
                    f"with Retry-After {retry_after:.0f}s. Another process may be using the "
                    f"same network key (limit: 30 requests/s); try again later{self._tail()}.",
                    status=status,
                )
            raise self._error(
                ApiUnavailable,
                f"The Everflow API is unavailable: {what} answered HTTP {status} with "
                f"Retry-After {retry_after:.0f}s; try again later{self._tail()}.",
                status=status,
            )
        if attempt < MAX_ATTEMPTS:
            return API_RETRY.delay(attempt, retry_after)
        return None

    def _error_text(self, reply: Reply) -> str:
        """Everflow's error message from a JSON ``{"error": ...}`` body (or ``Error``,
        ``message``), cleaned; else ''."""
        try:
            body = json.loads(reply.content)
        except (ValueError, RecursionError):
            return ""
        if isinstance(body, t.Mapping):
            for name in ("error", "Error", "message"):
                value = body.get(name)
                if isinstance(value, str) and value.strip():
                    return self.clean(value)
        return ""

    def _refused(self, reply: Reply, what: str, attempt: int) -> ApiError:
        """The error for an answer that is not retried (any more)."""
        status = reply.status_code
        if status == 429:
            return self._error(
                ApiRateLimited,
                f"The Everflow API kept answering HTTP 429 (rate limited) to {what} after "
                f"{attempt} attempts. Another process may be using the same network key "
                f"(limit: 30 requests/s); try again later{self._tail()}.",
                status=status,
            )
        if status >= 500:
            return self._error(
                ApiUnavailable,
                f"The Everflow API kept answering HTTP {status} to {what} after {attempt} "
                f"attempts (an error on Everflow's side); try again later{self._tail()}.",
                status=status,
            )
        error = self._error_text(reply)
        answered = f"{what} answered HTTP {status}" + (f" ({error})" if error else "")
        if status == 401:
            return self._error(
                ApiAuthError,
                f"Everflow rejected the API key: {answered}. Check api_key: it must be "
                f"{NETWORK_KEY}.{region_hint(self.host)}",
                status=status,
            )
        if status == 403:
            if "out of realm" in error.lower():
                return self._error(
                    ApiAuthError,
                    f"The API key is the wrong kind: {answered}. The check needs {NETWORK_KEY}; "
                    "advertiser and affiliate keys cannot call /networks paths.",
                    status=status,
                    reason="realm",
                )
            return self._error(
                ApiAuthError,
                f"The API key lacks a permission: {answered}. Check the key's permissions "
                "under Control Center > Security.",
                status=status,
                reason="forbidden",
            )
        if 300 <= status < 400:
            location = self.clean(reply.headers.get("Location", ""), 120)
            to = f" to {location}" if location else ""
            return self._error(
                ApiBadAnswer,
                f"The Everflow API answered {what} with a redirect (HTTP {status}{to}); check "
                f"api_url (it should look like {DEFAULT_API_URL}).",
                status=status,
            )
        if status == 404:
            return self._error(ApiNotFound, answered, status=status)  # the caller words it
        return self._error(
            ApiRefused,
            f"The Everflow API refused {self.purpose}: {answered}.",
            status=status,
            reason="bad_request" if status == 400 else "unexpected",
        )
