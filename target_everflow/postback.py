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
import json
import typing as t
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from time import time
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

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

    @property
    def reason(self) -> str:
        """Dead-letter reason code of a final failure."""
        if self.verdict is Verdict.REJECTED:
            return "rejected"
        return f"http_{self.status}" if self.status else self.verdict.value


def encode_query(params: t.Iterable[tuple[str, str]]) -> str:
    """``k=v&...`` with every reserved or non-ASCII byte percent-encoded as UTF-8."""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)


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
    return max(0.0, moment.timestamp() - (now if now is not None else time()))


def excerpt(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PostbackClient:
    """Builds postback URLs and sends them over one pooled keep-alive session."""

    def __init__(
        self,
        postback_url: str,
        *,
        verification_token: str | None = None,
        timeout: float = 30.0,
        pool_size: int = 16,
    ) -> None:
        self.base = postback_url
        self._joiner = "&" if "?" in postback_url else "?"
        self._token = verification_token
        self.timeout = timeout
        self.session = requests.Session()
        self.session.verify = True  # never silently off: TLS protects the token in the URL
        self.session.trust_env = False  # a proxy from the environment must not see tokens
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json, */*"})
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)

    def url(self, conversion: Conversion, *, redact: bool = False) -> str:
        """The full postback URL; with ``redact`` the verification token shows as ``***``."""
        params = list(conversion.params)
        if self._token:
            params.append(("verification_token", REDACTED if redact else self._token))
        return f"{self.base}{self._joiner}{encode_query(params)}"

    def send(self, conversion: Conversion) -> Answer:
        """One attempt. Never raises for a network problem: that is an ``Answer`` too."""
        try:
            response = self.session.get(
                self.url(conversion),
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.exceptions.SSLError as exc:
            return Answer(Verdict.SYSTEMIC, None, f"TLS error talking to the postback host: {_why(exc)}")
        except requests.exceptions.Timeout:
            return Answer(Verdict.TRANSIENT, None, f"no answer within {self.timeout:g} s")
        except requests.exceptions.RequestException as exc:
            return Answer(Verdict.TRANSIENT, None, f"connection failed: {_why(exc)}")
        return classify(response)

    def close(self) -> None:
        self.session.close()


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


def classify(response: requests.Response) -> Answer:
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
