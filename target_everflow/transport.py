"""The one HTTP client layer (urllib3) of the postbacks and of the Everflow API check.

``HttpClient.request`` makes one attempt and promises three things, whatever the server does:

- **a total deadline**: connecting, sending and reading the whole answer take at most
  ``timeout`` seconds together. The body is read in chunks, each with a socket timeout no longer
  than what is left; a watchdog thread shuts the socket down at the deadline, which also ends a
  read that trickles (status line, headers or TLS handshake one byte at a time);
- **a bounded read**: at most ``body_limit`` bytes of the body, counted after decompression (a
  gzip bomb is inflated no further than that); the rest is never read and the connection is
  dropped. ``Reply.truncated`` says so;
- **an abandonable request**: ``close()`` shuts down the sockets of requests in flight and
  returns at once; their threads get ``Abandoned`` instead of waiting on the socket.

Each calling thread has its own keep-alive connection (the delivery engine's workers). TLS is
verified against certifi's CA bundle, nothing is taken from the environment (proxies, CA
overrides), redirects are not followed, and nothing is retried here (the callers retry).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
import typing as t

import certifi
import urllib3.connection
from urllib3 import exceptions
from urllib3.util import parse_url
from urllib3.util.wait import wait_for_read

from target_everflow.text import excerpt

READ_CHUNK = 16 * 1024
WATCH_INTERVAL = 0.05  # how often the watchdog looks for requests past their deadline
WATCH_LINGER = 5.0  # an idle watchdog thread ends after this long
STALL = 1.0
"""A watchdog tick this much later than due means the process was stopped (SIGSTOP, a frozen VM
or container, a debugger) or starved: that time is added to every deadline in flight, so an
answer that arrived meanwhile is still read, and the deadline counts time the process could act."""
MIN_WAIT = 0.05  # the shortest socket timeout (only the watchdog decides a deadline passed)


class TransportError(Exception):
    """No complete answer. ``sent``: the request left, so the server may have acted on it."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent

    @property
    def why(self) -> str:
        """The underlying error's gist, without the URL (which may carry a secret)."""
        return _why(self.__cause__) if self.__cause__ is not None else str(self)


class ConnectFailed(TransportError):
    """No connection (name resolution, refused, unreachable): nothing was sent."""


class TlsFailed(TransportError):
    """The TLS handshake failed (an untrusted certificate, a protocol error)."""


class DeadlineExceeded(TransportError):
    """No complete answer within the deadline."""


class Abandoned(TransportError):
    """The client was closed while the request was in flight (the run is stopping)."""


class ConnectionLost(TransportError):
    """The connection broke (reset, dropped, not HTTP)."""


class Reply:
    """An HTTP answer: status, headers and at most ``body_limit`` bytes of its body (decoded).

    Has the attributes of a ``requests.Response`` that the classifiers read."""

    __slots__ = ("status_code", "headers", "content", "truncated")

    def __init__(
        self,
        status_code: int,
        headers: t.Mapping[str, str],
        content: bytes,
        truncated: bool = False,
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content
        self.truncated = truncated

    @property
    def text(self) -> str:
        """The body as text: the charset the answer names, else what ``requests`` would assume
        (ISO-8859-1 for text/*, else UTF-8), undecodable bytes replaced."""
        content_type, params = _parse_content_type(self.headers.get("Content-Type", ""))
        encoding = params.get("charset") or (
            "ISO-8859-1" if content_type.startswith("text/") else "utf-8"
        )
        try:
            return str(self.content, encoding, errors="replace")
        except LookupError:
            return str(self.content, "utf-8", errors="replace")


class _Call:
    """One request in flight, as the watchdog sees it."""

    __slots__ = ("deadline", "conn", "sock", "cut")

    def __init__(self, deadline: float, conn: t.Any) -> None:
        self.deadline = deadline
        self.conn = conn
        self.sock: t.Any = None
        self.cut: str | None = None
        """Why it was ended from outside: ``deadline`` (the watchdog) or ``closed`` (``close()``)."""

    def remaining(self) -> float:
        """Seconds left for the next socket operation; raises once the watchdog cut the call.

        Only the watchdog decides that a deadline passed (after discounting a stopped process's
        time, see ``STALL``): past the deadline this returns ``MIN_WAIT`` until it does."""
        if self.cut is not None:
            raise TimeoutError("the deadline passed")
        return max(self.deadline - time.monotonic(), MIN_WAIT)

    def shutdown(self) -> None:
        """Wake whatever blocks on this request's socket (a read returns at once)."""
        sock = self.sock or getattr(self.conn, "sock", None)
        if isinstance(sock, socket.socket):
            try:  # socket.socket's own: SSLSocket.shutdown would also drop its TLS state
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


class HttpClient:
    """Requests to one origin (``scheme://host:port`` of ``base_url``); see the module docstring."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        body_limit: int,
        headers: t.Mapping[str, str] | None = None,
    ) -> None:
        where = parse_url(base_url)
        self._https = where.scheme == "https"
        self._host = where.host or ""
        self._port = where.port or (443 if self._https else 80)
        self.origin = f"{where.scheme}://{where.netloc}"
        self.timeout = timeout
        self.body_limit = body_limit
        self.headers = dict(headers or {})
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[t.Any] = set()
        self._calls: set[_Call] = set()
        self._closed = False
        self._watchdog: threading.Thread | None = None

    # -- connections -----------------------------------------------------------------------

    def connection(self) -> t.Any:
        """This thread's connection (opened on first use; replaced when the server closed it)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # Looked up on each use, not imported: vcrpy swaps these classes to record/replay.
            if self._https:
                conn = urllib3.connection.HTTPSConnection(
                    self._host,
                    self._port,
                    timeout=self.timeout,
                    cert_reqs="CERT_REQUIRED",  # never off: TLS protects the secrets we send
                    ca_certs=certifi.where(),
                )
            else:
                conn = urllib3.connection.HTTPConnection(
                    self._host, self._port, timeout=self.timeout
                )
            self._local.conn = conn
            with self._lock:
                self._open.add(conn)
        else:
            sock = getattr(conn, "sock", None)
            if sock is not None and wait_for_read(sock, timeout=0.0):
                conn.close()  # the server closed it while idle (or sent garbage): reconnect
        return conn

    def _discard(self, conn: t.Any) -> None:
        self._local.conn = None
        with self._lock:
            self._open.discard(conn)
        try:
            conn.close()
        except Exception:  # it is gone either way
            pass

    # -- one request -----------------------------------------------------------------------

    def request(
        self,
        method: str,
        target: str,
        headers: t.Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Reply:
        """One attempt: ``method target`` (path and query), with ``body`` if given. Raises a
        ``TransportError`` when no complete answer came within ``timeout``; never waits longer."""
        conn = self.connection()
        call = _Call(time.monotonic() + self.timeout, conn)
        self._begin(call)
        sent = False
        response = None
        try:
            conn.timeout = self.timeout  # each socket operation; the watchdog bounds them all
            conn.request(
                method,
                target,
                body=body,
                headers={**self.headers, **headers} if headers else self.headers,
                preload_content=False,
                decode_content=True,
            )
            sent = True  # from here on, the server may have it whatever happens to the answer
            call.sock = getattr(conn, "sock", None)
            conn.timeout = call.remaining()  # getresponse() puts it on the socket
            response = conn.getresponse()
            content, truncated = self._read(response, call)
            reply = Reply(response.status, response.headers, content, truncated)
        except BaseException as exc:
            self._end(call)
            if response is not None:
                _close_quietly(response)
            self._discard(conn)  # whatever state it is in, it is not reused
            failure = self._failure(exc, call, sent)
            if failure is None:
                raise
            raise failure from exc
        self._end(call)
        if truncated:
            _close_quietly(response)
            self._discard(conn)  # the rest of the body is never read
        return reply

    def _read(self, response: t.Any, call: _Call) -> tuple[bytes, bool]:
        """At most ``body_limit`` decoded bytes, one socket read at a time, each within the
        deadline; True when there was more."""
        limit = self.body_limit
        parts: list[bytes] = []
        size = 0
        while True:
            _set_timeout(call.sock, call.remaining())
            chunk = response.read1(min(READ_CHUNK, limit + 1 - size))
            call.remaining()  # cut meanwhile: the socket was shut down, this is no end of body
            if not chunk:
                return b"".join(parts), False
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(parts)[:limit], True

    def _failure(self, exc: BaseException, call: _Call, sent: bool) -> TransportError | None:
        """The ``TransportError`` for what went wrong; None for what is not ours to translate
        (a signal handler's exception, a bug)."""
        if not isinstance(
            exc, exceptions.HTTPError | http.client.HTTPException | OSError | ValueError
        ):
            return None
        if call.cut == "closed":
            return Abandoned("abandoned: the client was closed", sent=sent)
        if isinstance(exc, exceptions.NewConnectionError) and call.cut is None:
            return ConnectFailed("connection failed", sent=False)  # (a ConnectTimeoutError too)
        if (
            call.cut == "deadline"
            or isinstance(exc, exceptions.TimeoutError | TimeoutError)
            or time.monotonic() >= call.deadline
        ):
            return DeadlineExceeded(f"no answer within {self.timeout:g} s", sent=sent)
        if isinstance(exc, exceptions.SSLError | ssl.SSLError):  # (ssl.CertificateError too)
            return TlsFailed("TLS error", sent=sent)
        return ConnectionLost("connection failed", sent=sent)

    # -- the watchdog and close ------------------------------------------------------------

    def _begin(self, call: _Call) -> None:
        with self._lock:
            if self._closed:
                raise Abandoned("abandoned: the client was closed", sent=False)
            self._calls.add(call)
            if self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._watch, name="http-watchdog", daemon=True
                )
                self._watchdog.start()

    def _end(self, call: _Call) -> None:
        with self._lock:  # after this the watchdog never touches the call's socket
            self._calls.discard(call)

    def _watch(self) -> None:
        idle_since = last = time.monotonic()
        while True:
            with self._lock:
                now = time.monotonic()
                stalled = now - last - WATCH_INTERVAL
                last = now
                for call in self._calls:
                    if stalled > STALL:
                        call.deadline += stalled
                for call in self._calls:
                    if call.cut is None and now >= call.deadline:
                        call.cut = "deadline"
                        call.shutdown()
                if self._calls:
                    idle_since = now
                elif self._closed or now - idle_since > WATCH_LINGER:
                    self._watchdog = None
                    return
            time.sleep(WATCH_INTERVAL)

    def close(self) -> None:
        """Abandon every request in flight (their sockets are shut down, their threads get
        ``Abandoned``) and close idle connections. Never waits on a socket."""
        with self._lock:
            self._closed = True
            busy = set()
            for call in self._calls:
                busy.add(call.conn)
                if call.cut is None:
                    call.cut = "closed"
                    call.shutdown()
            idle = self._open - busy
            self._open = busy  # closed by their own threads
        for conn in idle:
            try:
                conn.close()
            except Exception:  # best effort while closing
                pass


def _set_timeout(sock: t.Any, seconds: float) -> None:
    try:
        sock.settimeout(seconds)
    except (AttributeError, OSError):  # no socket (a replayed cassette), or already closed
        pass


def _close_quietly(response: t.Any) -> None:
    try:
        response.close()
    except Exception:  # best effort while closing
        pass


def _parse_content_type(header: str) -> tuple[str, dict[str, str]]:
    content_type, *rest = header.split(";")
    params: dict[str, str] = {}
    for item in rest:
        key, _, value = item.strip().partition("=")
        if value:
            params[key.strip().lower()] = value.strip().strip("'\"")
    return content_type.strip().lower(), params


def _why(exc: BaseException) -> str:
    """A transport error's gist, without the URL (which carries the token)."""
    root: BaseException = exc
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__  # type: ignore[assignment]  # a cause is an exception too
    text = type(root).__name__
    reason = getattr(root, "reason", None) or (root.args[0] if root.args else "")
    if isinstance(reason, str) and "?" not in reason:
        text += f": {excerpt(reason, 120)}"
    return text
