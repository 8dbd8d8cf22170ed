"""The Everflow server-to-server postback: one ``GET`` per conversion, and what its answer means.

Everflow's answers are not a clean verdict (see README, "What Everflow's answer means"):

- 2xx, except 204, without an ``error`` member in a JSON body: **accepted**;
- 204, or a JSON body with an ``error`` member: **rejected** (never retried; dead-lettered);
- 429, 5xx, timeouts, connection errors: **transient** (retried by the delivery engine);
- 401/403 (bad token or blocked caller) and redirects: **systemic** (every conversion would fail
  the same way: the run stops);
- any other 4xx: **permanent** for that conversion (dead-lettered as ``http_<status>``).
"""

from __future__ import annotations

import enum
import functools
import http.client
import json
import re
import ssl
import threading
import typing as t
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime
from time import time
from urllib.parse import quote, quote_plus, urlsplit

import certifi
import urllib3.connection
from urllib3 import exceptions
from urllib3.util import make_headers, parse_url
from urllib3.util.wait import wait_for_read

if t.TYPE_CHECKING:
    from target_everflow.mapping import Conversion

REDACTED = "***"
USER_AGENT = "target-everflow"


class Verdict(str, enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    SYSTEMIC = "systemic"


@dataclass(slots=True)
class Answer:
    """What one attempt got back, classified."""

    verdict: Verdict
    status: int | None
    detail: str
    """Short, secret-free description: status and body excerpt, or the transport error."""
    retry_after: float | None = None
    unanswered: bool = False
    """The request left but no answer came back (a read timeout, the connection dropped): Everflow
    may have recorded the conversion, so sending it again is *in doubt* (the engine decides)."""

    @property
    def reason(self) -> str:
        """Dead-letter reason code of a final failure."""
        if self.verdict is Verdict.REJECTED:
            return "rejected"
        return f"http_{self.status}" if self.status else self.verdict.value


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")
"""What ``quote(s, safe="")`` leaves as it is: such a value (ids, numbers, IPs) is sent as is."""


_QUOTED: dict[str, str] = {}
_QUOTED_MAX, _QUOTED_MAX_LENGTH = 4096, 256
"""Quoted values seen recently (user agents, emails repeat): at most 4,096 of <= 256 characters."""


def _quote(text: str) -> str:
    """``urllib.parse.quote(text, safe="")``, skipping the byte loop when nothing needs quoting."""
    if _UNRESERVED.fullmatch(text):
        return text
    quoted = _QUOTED.get(text)
    if quoted is None:
        quoted = quote(text, safe="")
        if len(text) <= _QUOTED_MAX_LENGTH:
            if len(_QUOTED) >= _QUOTED_MAX:
                _QUOTED.clear()
            _QUOTED[text] = quoted
    return quoted


def encode_query(params: t.Iterable[tuple[str, str]]) -> str:
    """``k=v&...`` with every reserved or non-ASCII byte percent-encoded as UTF-8."""
    return "&".join(f"{_quote(k)}={_quote(v)}" for k, v in params)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # an HTTP date is always GMT
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, moment.timestamp() - (now if now is not None else time()))


def excerpt(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PostbackClient:
    """Builds postback URLs and sends them, each sending thread over its own keep-alive
    connection.

    The connections are urllib3's (what ``requests`` sends with), used directly: ``requests``
    adds about 0.8 ms of CPU per call (environment and cookie merging, URL re-parsing and
    re-quoting), and urllib3's pool another 0.2 ms (re-encoding the already percent-encoded
    query byte by byte, the shared queue of connections that 32 threads contend for); at
    hundreds of postbacks a second that CPU is the limit. Same behaviour as the ``requests``
    session it replaces: TLS verified against certifi's CA bundle, nothing taken from the
    environment (proxies), redirects not followed, ``timeout`` for connecting and for each read,
    no retries inside the client (the engine retries), a kept-alive connection the server has
    closed is replaced before it is used, and as many connections as threads sending.
    """

    def __init__(
        self,
        postback_url: str,
        *,
        verification_token: str | None = None,
        timeout: float = 30.0,
        pool_size: int = 16,  # (one connection per sending thread: the engine's concurrency)
    ) -> None:
        self.base = postback_url
        self._joiner = "&" if "?" in postback_url else "?"
        self._token = verification_token
        self.timeout = timeout
        self._headers = {
            "User-Agent": USER_AGENT,
            "Accept": "application/json, */*",
            "Accept-Encoding": make_headers(accept_encoding=True)["accept-encoding"],
        }
        where = parse_url(postback_url)
        self._https = where.scheme == "https"
        self._host = where.host or ""
        self._port = where.port or (443 if self._https else 80)
        self._local = threading.local()
        self._open: set[t.Any] = set()
        self._open_lock = threading.Lock()

    def connection(self) -> t.Any:
        """This thread's connection to the postback host (opened on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # Looked up on each use, not imported: vcrpy swaps these classes to record/replay.
            if self._https:
                conn = urllib3.connection.HTTPSConnection(
                    self._host,
                    self._port,
                    timeout=self.timeout,
                    cert_reqs="CERT_REQUIRED",  # never off: TLS protects the token in the URL
                    ca_certs=certifi.where(),
                )
            else:
                conn = urllib3.connection.HTTPConnection(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
            with self._open_lock:
                self._open.add(conn)
        else:
            sock = getattr(conn, "sock", None)
            if sock is not None and wait_for_read(sock, timeout=0.0):
                conn.close()  # the server closed it while idle (or sent garbage): reconnect
        return conn

    def _discard(self, conn: t.Any) -> None:
        conn.close()
        self._local.conn = None
        with self._open_lock:
            self._open.discard(conn)

    def url(self, conversion: Conversion, *, redact: bool = False) -> str:
        """The full postback URL; with ``redact`` the verification token shows as ``***``."""
        params = list(conversion.params)
        if self._token:
            params.append(("verification_token", REDACTED if redact else self._token))
        return f"{self.base}{self._joiner}{encode_query(params)}"

    def send(self, conversion: Conversion) -> Answer:
        """One attempt. Never raises for a network problem: that is an ``Answer`` too."""
        parts = urlsplit(self.url(conversion))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn = self.connection()
        sent = False
        try:
            conn.request("GET", target, headers=self._headers)
            sent = True  # from here on, Everflow may have it whatever happens to the answer
            response = conn.getresponse()
            body = response.data
            status, headers = response.status, response.headers
        except BaseException as exc:
            self._discard(conn)  # whatever state it is in, it is not reused
            if isinstance(exc, exceptions.SSLError | ssl.SSLError | ssl.CertificateError):
                return Answer(Verdict.SYSTEMIC, None, f"TLS error talking to the postback host: {_why(exc)}")
            if isinstance(exc, exceptions.NewConnectionError | exceptions.NameResolutionError):
                return Answer(Verdict.TRANSIENT, None, f"connection failed: {_why(exc)}")
            if isinstance(exc, exceptions.TimeoutError | TimeoutError):
                return Answer(Verdict.TRANSIENT, None, f"no answer within {self.timeout:g} s", unanswered=sent)
            if isinstance(exc, exceptions.HTTPError | http.client.HTTPException | OSError | ValueError):
                return Answer(Verdict.TRANSIENT, None, f"connection failed: {_why(exc)}", unanswered=sent)
            raise
        if self._token:  # an answer that echoes the request must not carry the token onwards
            return _scrub_answer(classify(Reply(status, headers, _scrub(body, self._token))), self._token)
        return classify(Reply(status, headers, body))

    def close(self) -> None:
        with self._open_lock:
            conns, self._open = self._open, set()
        for conn in conns:
            conn.close()


@functools.lru_cache(maxsize=8)
def _token_forms(token: str) -> tuple[str, ...]:
    """The token as it may come back in an answer: as is, and percent-encoded every usual way."""
    forms = {token, quote(token, safe=""), quote(token), quote_plus(token)}
    return tuple(sorted(forms, key=len, reverse=True))


def _scrub(body: bytes, token: str) -> bytes:
    """The body with the verification token replaced by ``***`` (before it is excerpted)."""
    for form in _token_forms(token):
        raw = form.encode()
        if raw in body:
            body = body.replace(raw, REDACTED.encode())
    return body


def _scrub_answer(answer: Answer, token: str) -> Answer:
    """The answer with the token removed from its detail (a redirect's Location, say)."""
    for form in _token_forms(token):
        if form in answer.detail:
            answer.detail = answer.detail.replace(form, REDACTED)
    return answer


class Reply:
    """An HTTP answer as ``classify`` reads it (the attributes a ``requests.Response`` has)."""

    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: t.Mapping[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        """The body as text: the charset the answer names, else what ``requests`` would assume
        (ISO-8859-1 for text/*, else UTF-8), undecodable bytes replaced."""
        content_type, params = _parse_content_type(self.headers.get("Content-Type", ""))
        encoding = params.get("charset") or ("ISO-8859-1" if content_type.startswith("text/") else "utf-8")
        try:
            return str(self.content, encoding, errors="replace")
        except LookupError:
            return str(self.content, "utf-8", errors="replace")


def _parse_content_type(header: str) -> tuple[str, dict[str, str]]:
    content_type, *rest = header.split(";")
    params: dict[str, str] = {}
    for item in rest:
        key, _, value = item.strip().partition("=")
        if value:
            params[key.strip().lower()] = value.strip().strip("'\"")
    return content_type.strip().lower(), params


def _why(exc: Exception) -> str:
    """A transport error's gist, without the URL (which carries the token)."""
    root: BaseException = exc
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    text = type(root).__name__
    reason = getattr(root, "reason", None) or (root.args[0] if root.args else "")
    if isinstance(reason, str) and "?" not in reason:
        text += f": {excerpt(reason, 120)}"
    return text


def classify(response: Reply | t.Any) -> Answer:
    """The verdict on one answer (a ``Reply``, or anything with the same attributes)."""
    status = response.status_code
    body = response.text[:2000] if response.content else ""
    shown = f"HTTP {status}" + (f": {excerpt(body)}" if body else "")
    if status == 204:
        return Answer(Verdict.REJECTED, status, "HTTP 204 (no content): Everflow did not record the conversion")
    if 200 <= status < 300:
        error = _error_member(body, response.headers.get("Content-Type", ""))
        if error is not None:
            return Answer(Verdict.REJECTED, status, f"HTTP {status} with error: {excerpt(error)}")
        return Answer(Verdict.ACCEPTED, status, f"HTTP {status}")
    if status == 429:
        return Answer(
            Verdict.TRANSIENT, status, shown, retry_after_seconds(response.headers.get("Retry-After"))
        )
    if status >= 500:
        return Answer(
            Verdict.TRANSIENT, status, shown, retry_after_seconds(response.headers.get("Retry-After"))
        )
    if status in (401, 403):
        return Answer(
            Verdict.SYSTEMIC,
            status,
            f"{shown} (the postback host refuses this caller: check network_id, "
            "verification_token and postback_url)",
        )
    if 300 <= status < 400:
        location = response.headers.get("Location", "")
        where = location.split("?", 1)[0]
        return Answer(
            Verdict.SYSTEMIC,
            status,
            f"HTTP {status}: the postback URL redirects to {where or 'elsewhere'}; "
            "set postback_url to the final URL",
        )
    return Answer(Verdict.PERMANENT, status, shown)


def _error_member(body: str, content_type: str) -> str | None:
    if not body or ("json" not in content_type and body.lstrip()[:1] not in "{["):
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if isinstance(parsed, dict):
        for key in ("error", "Error"):
            if parsed.get(key):
                value = parsed[key]
                return value if isinstance(value, str) else json.dumps(value)
    return None
