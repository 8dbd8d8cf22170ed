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

import contextlib
import enum
import json
import typing as t
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from target_everflow.masking import REDACTED, mask
from target_everflow.retry import retry_after_seconds
from target_everflow.text import excerpt
from target_everflow.transport import (
    Abandoned,
    ConnectFailed,
    DeadlineExceeded,
    HttpClient,
    Reply,
    TlsFailed,
    TransportError,
)

if t.TYPE_CHECKING:
    from target_everflow.mapping import Conversion

USER_AGENT = "target-everflow"
BODY_LIMIT = 64 * 1024
"""At most this much of an answer is read (after decompression): Everflow's are ~100 bytes."""

__all__ = [
    "REDACTED",
    "Answer",
    "PostbackClient",
    "Reply",
    "Verdict",
    "classify",
    "encode_query",
    "excerpt",
    "retry_after_seconds",
]


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
    abandoned: bool = False
    """The client was closed while it was in flight (the run is stopping): nothing is known,
    nothing is to be accounted; its claim stays, so the next run treats it as in doubt."""

    @property
    def reason(self) -> str:
        """Dead-letter reason code of a final failure."""
        if self.verdict is Verdict.REJECTED:
            return "rejected"
        return f"http_{self.status}" if self.status else self.verdict.value


_SAFE_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"
"""The bytes ``quote(s, safe="")`` leaves as they are."""
_BYTE_ESCAPES = tuple((bytes((byte,)), b"%%%02X" % byte) for byte in range(256))
"""A byte, and how ``quote`` writes it when it must be quoted."""


def encode_query(params: t.Iterable[tuple[str, str]]) -> str:
    """``k=v&...`` with every reserved or non-ASCII byte percent-encoded as UTF-8: the one place
    a postback is percent-encoded (the sender, and dry run's URL).

    The whole query in one pass: joined as it is, encoded to UTF-8 once, and each reserved byte
    it holds replaced everywhere at once (a handful of distinct bytes, whatever the number of
    parameters); byte for byte what quoting each name and value would give, as ``quote``
    works byte by byte. A name or value holding ``=`` or ``&`` (which the query's own
    separators could not then be told from), or a lone surrogate, is quoted one by one."""
    params = params if isinstance(params, list) else list(params)
    query = "&".join(map("=".join, params))
    try:
        data = query.encode()
    except UnicodeEncodeError:  # a lone surrogate: quote raises it, name by name
        return _encode_each(params)
    reserved = data.translate(None, _SAFE_BYTES)
    n = len(params)
    if reserved.count(b"=") != n or reserved.count(b"&") != n - 1:
        return _encode_each(params)
    if len(reserved) == 2 * n - 1:  # the separators only: nothing to quote
        return query
    found = set(reserved.translate(None, b"=&"))
    if 0x25 in found:  # "%" first: the escapes written next hold one
        data = data.replace(b"%", b"%25")
        found.discard(0x25)
    escapes = _BYTE_ESCAPES
    for byte in found:
        plain, escaped = escapes[byte]
        data = data.replace(plain, escaped)
    return data.decode("ascii")


def _encode_each(params: list[tuple[str, str]]) -> str:
    """``encode_query`` by ``quote`` itself, a name and a value at a time (the reference the
    one-pass encoding gives byte for byte)."""
    return "&".join([quote(name, safe="") + "=" + quote(value, safe="") for name, value in params])


class PostbackClient:
    """Builds postback URLs and sends them over the shared HTTP layer (``transport``): each
    sending thread has its own keep-alive connection, each attempt a total deadline of
    ``timeout`` seconds, each answer is read up to ``BODY_LIMIT`` bytes.

    The connections are urllib3's, used directly: ``requests`` adds about 0.8 ms of CPU per
    call (environment and cookie merging, URL re-parsing and re-quoting), and urllib3's pool
    another 0.2 ms (re-encoding the already percent-encoded query byte by byte, the shared queue
    of connections that 32 threads contend for); at hundreds of postbacks a second that CPU is
    the limit. TLS is verified against certifi's CA bundle, nothing is taken from the
    environment (proxies), redirects are not followed, no retries inside the client (the engine
    retries), no compression is asked for (``Accept-Encoding: identity``).
    """

    def __init__(
        self,
        postback_url: str,
        *,
        verification_token: str | None = None,
        timeout: float,
    ) -> None:
        self.base = postback_url
        self._joiner = "&" if "?" in postback_url else "?"
        # The request target (path and query) is this prefix and the encoded query, which
        # holds no character urlsplit treats specially: what urlsplit(url()) would give. A URL
        # it would split otherwise (a fragment: settings refuse those) is split each time.
        probe = urlsplit(f"{postback_url}{self._joiner}x")
        self._target_prefix = (
            f"{probe.path or '/'}?{probe.query[:-1]}"
            if probe.query.endswith("x") and not probe.fragment
            else None
        )
        self._token = verification_token
        # ``verification_token=...``, the last parameter, encoded once (a token no URL can
        # carry, a lone surrogate, fails each postback's encoding, as any such value does).
        self._token_query = {True: encode_query([("verification_token", REDACTED)])}
        with contextlib.suppress(UnicodeEncodeError):
            self._token_query[False] = encode_query([("verification_token", self._token or "")])
        self._secrets = (verification_token,) if verification_token else ()
        self.timeout = timeout
        self._http = HttpClient(
            postback_url,
            timeout=timeout,
            body_limit=BODY_LIMIT,
            headers={
                "User-Agent": USER_AGENT,
                "Accept": "application/json, */*",
                "Accept-Encoding": "identity",
            },
        )

    def connection(self) -> t.Any:
        """This thread's connection to the postback host (opened on first use)."""
        return self._http.connection()

    def _query(self, conversion: Conversion, redact: bool) -> str:
        query = encode_query(conversion.params)
        if not self._token:
            return query
        token = self._token_query.get(redact) or encode_query([("verification_token", self._token)])
        return f"{query}&{token}" if query else token

    def url(self, conversion: Conversion, *, redact: bool = False) -> str:
        """The full postback URL; with ``redact`` the verification token shows as ``***``."""
        return f"{self.base}{self._joiner}{self._query(conversion, redact)}"

    def target(self, conversion: Conversion) -> str:
        """The request target (path and query) of the postback: that of :meth:`url`."""
        if self._target_prefix is not None:
            return self._target_prefix + self._query(conversion, False)
        parts = urlsplit(self.url(conversion))
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def send(self, conversion: Conversion) -> Answer:
        """One attempt. Never raises for a network problem: that is an ``Answer`` too."""
        target = self.target(conversion)
        try:
            reply = self._http.request("GET", target)
        except Abandoned as exc:
            return Answer(
                Verdict.TRANSIENT,
                None,
                "abandoned: the run is stopping",
                unanswered=exc.sent,
                abandoned=True,
            )
        except TlsFailed as exc:
            return self._failed(
                Verdict.SYSTEMIC, f"TLS error talking to the postback host: {exc.why}"
            )
        except ConnectFailed as exc:
            return self._failed(Verdict.TRANSIENT, f"connection failed: {exc.why}")
        except DeadlineExceeded as exc:
            return Answer(
                Verdict.TRANSIENT, None, f"no answer within {self.timeout:g} s", unanswered=exc.sent
            )
        except TransportError as exc:
            return self._failed(
                Verdict.TRANSIENT, f"connection failed: {exc.why}", unanswered=exc.sent
            )
        return classify(reply, self._secrets)

    def _failed(self, verdict: Verdict, detail: str, *, unanswered: bool = False) -> Answer:
        return Answer(verdict, None, mask(detail, self._secrets), unanswered=unanswered)

    def close(self) -> None:
        """Abandon the postbacks in flight (never waits on a socket) and close the connections."""
        self._http.close()


def classify(response: Reply | t.Any, secrets: t.Sequence[str] = ()) -> Answer:
    """The verdict on one answer (a ``Reply``, or anything with the same attributes), judged by
    its status and the (bounded) body. ``secrets`` are masked out of the detail (an answer that
    echoes the request may carry the verification token, in any encoding), before any excerpt
    is taken so that no part of one is left."""
    status = response.status_code

    def hide(text: str) -> str:
        return mask(text, secrets)  # (and every secret of the run: the one rule)

    def shown() -> str:
        body = hide(response.text)[:2000] if response.content else ""
        return f"HTTP {status}" + (f": {excerpt(body)}" if body else "")

    if status == 204:
        return Answer(
            Verdict.REJECTED,
            status,
            "HTTP 204 (no content): Everflow did not record the conversion",
        )
    if 200 <= status < 300:
        body = response.text[:2000] if response.content else ""
        error = _error_member(body, response.headers.get("Content-Type", ""))
        if error is not None:
            return Answer(
                Verdict.REJECTED, status, f"HTTP {status} with error: {excerpt(hide(error))}"
            )
        return Answer(Verdict.ACCEPTED, status, f"HTTP {status}")
    if status == 429 or status >= 500:
        return Answer(
            Verdict.TRANSIENT,
            status,
            shown(),
            retry_after_seconds(response.headers.get("Retry-After")),
        )
    if status in (401, 403):
        return Answer(
            Verdict.SYSTEMIC,
            status,
            f"{shown()} (the postback host refuses this caller: check network_id, "
            "verification_token and postback_url)",
        )
    if 300 <= status < 400:
        where = hide(response.headers.get("Location", "").split("?", 1)[0])
        return Answer(
            Verdict.SYSTEMIC,
            status,
            f"HTTP {status}: the postback URL redirects to {where or 'elsewhere'}; "
            "set postback_url to the final URL",
        )
    return Answer(Verdict.PERMANENT, status, shown())


def _error_member(body: str, content_type: str) -> str | None:
    if not body or ("json" not in content_type and body.lstrip()[:1] not in "{["):
        return None
    if "rror" not in body and "\\" not in body:  # no "error" member, even escaped: not parsed
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
