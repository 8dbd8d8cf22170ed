"""A fake Everflow postback receiver for tests and benchmarks.

Everflow's server-to-server postback is one ``GET`` per conversion with everything in the query
string (``nid``, ``transaction_id``, ``amount``, ...). :class:`Receiver` is a threaded HTTP/1.1
(keep-alive) server on ``127.0.0.1`` with an ephemeral port that records every request and
answers it the way a test tells it to::

    with Receiver() as rx:                                  # every postback gets 200 + JSON
        run_the_target(postback_url=rx.url)
        assert rx.count_by_transaction() == {"tx1": 1, "tx2": 1}

    script = Receiver.per_transaction({"tx1": [Answer.status(503), Answer.status(503)]})
    with Receiver(script=script) as rx:                     # tx1: 503, 503, then 200
        ...

    with Receiver(fault_mix={"429": 0.05, "503": 0.05, "drop": 0.02}, seed=7) as rx:
        ...                                                 # a reproducible soak
        print(rx.faults)

How an answer is chosen, per request:

1. the ``script``: a list consumed in arrival order, or a callable
   ``f(received, n_for_this_txn) -> Answer | None``;
2. if the script has nothing to say (list used up, callable returned ``None``): the seeded
   ``fault_mix``;
3. otherwise ``default`` (``Answer.ok()``).

Then ``latency`` (plus the answer's own ``slow`` delay) is slept, and the answer is sent.

"Accepted" follows the rule of ``target_everflow/delivery/postback.py`` (the README's "What Everflow's
answer means"): a 2xx other than 204 whose body is not a JSON object with an ``error`` member.
A request counts as accepted **when the receiver decides its answer**, before any delay: that
models Everflow recording the conversion even if its answer never reaches the caller (the caller
timed out on a ``slow`` answer, the receiver was stopped, or ``Answer.drop(accepted=True)``).
That is the case an exactly-once target must not turn into a duplicate.

Run as a subprocess (benchmarks, manual runs, tests that kill things)::

    python -m tests.receiver --port 0 --latency 0.02 [--fault-mix '{"503": 0.1}' --seed 1] \
        [--log requests.jsonl]

prints ``listening on http://127.0.0.1:PORT/`` on stdout and serves until SIGTERM or SIGINT. With
``--log`` (or ``Receiver(log_path=...)``) every request is appended to a JSON-lines file as soon as
its answer is decided, one flushed line each: ``{"at", "wall", "seq", "method", "path", "query",
"transaction_id", "answer", "status", "accepted", "fault"}`` (``status`` is ``null`` for a
dropped connection; ``fault`` names the fault-mix kind that chose the answer, else ``null``). :func:`read_log` and :func:`accepted_by_transaction` read it back;
:class:`ReceiverProcess` runs the CLI as a subprocess for a test.

Only the standard library is used, so the file also runs as a plain script.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import http.server
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import typing as t
import uuid
from email.message import Message
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "Answer",
    "FAULT_KINDS",
    "FakeReporting",
    "Received",
    "Receiver",
    "ReceiverProcess",
    "Script",
    "Verdict",
    "accepted_by_transaction",
    "read_log",
]

JsonDict = dict[str, t.Any]


# --- answers -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Answer:
    """How the receiver answers one request. Build it with the class methods.

    ``kind`` names the constructor (``ok``, ``ok_text``, ``no_content``, ``error_json``,
    ``status``, ``rate_limited``, ``drop``); ``code`` is the HTTP status (``None`` for ``drop``).
    """

    kind: str
    code: int | None
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    """Seconds slept before answering (``slow``), on top of the receiver's ``latency``."""
    echo: bool = False
    """``ok()`` without a body: ``{"conversion_id": <new>, "transaction_id": <echoed>}``."""
    accepts: bool | None = None
    """Overrides the accepted rule (only ``drop(accepted=True)`` sets it)."""

    # constructors

    @classmethod
    def ok(cls, json_body: JsonDict | None = None) -> Answer:
        """200 with a JSON body; by default Everflow's shape with the ``transaction_id`` echoed."""
        if json_body is None:
            return cls("ok", 200, headers=(("Content-Type", "application/json"),), echo=True)
        return cls(
            "ok", 200, json.dumps(json_body).encode(), (("Content-Type", "application/json"),)
        )

    @classmethod
    def ok_text(cls, text: str = "OK") -> Answer:
        """200 with a plain-text body (accepted)."""
        return cls("ok_text", 200, text.encode(), (("Content-Type", "text/plain; charset=utf-8"),))

    @classmethod
    def no_content(cls) -> Answer:
        """204: Everflow did not record the conversion (rejected)."""
        return cls("no_content", 204)

    @classmethod
    def error_json(cls, msg: str = "Invalid request") -> Answer:
        """200 with ``{"error": msg}`` (rejected)."""
        body = json.dumps({"error": msg}).encode()
        return cls("error_json", 200, body, (("Content-Type", "application/json"),))

    @classmethod
    def status(
        cls, code: int, body: str | bytes = "", headers: t.Mapping[str, str] | None = None
    ) -> Answer:
        """Any status with an optional body and headers (400, 401, 403, 404, 500, 503, 302 ...)."""
        raw = body.encode() if isinstance(body, str) else body
        hdrs = dict(headers or {})
        if raw and not any(k.lower() == "content-type" for k in hdrs):
            hdrs["Content-Type"] = "text/plain; charset=utf-8"
        return cls("status", code, raw, tuple(hdrs.items()))

    @classmethod
    def rate_limited(
        cls, retry_after: str | float | dt.datetime | None = "1", body: str = "Too Many Requests"
    ) -> Answer:
        """429 with ``Retry-After``: seconds, an HTTP-date string, or a datetime (sent as an
        HTTP date); ``None`` sends no ``Retry-After`` at all."""
        headers: list[tuple[str, str]] = [("Content-Type", "text/plain; charset=utf-8")]
        if isinstance(retry_after, dt.datetime):
            if retry_after.tzinfo is None:
                retry_after = retry_after.replace(tzinfo=dt.timezone.utc)
            headers.append(("Retry-After", format_datetime(retry_after, usegmt=True)))
        elif retry_after is not None:
            value = retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
            headers.append(("Retry-After", value))
        return cls("rate_limited", 429, body.encode(), tuple(headers))

    @classmethod
    def slow(cls, seconds: float, then: Answer | None = None) -> Answer:
        """``then`` (default ``ok()``), after sleeping ``seconds``. Acceptance is ``then``'s."""
        then = then if then is not None else cls.ok()
        return dataclasses.replace(then, delay=then.delay + seconds)

    @classmethod
    def drop(cls, accepted: bool = False) -> Answer:
        """Close the connection without any response. With ``accepted=True`` the conversion
        counts as accepted although the caller never hears so (the in-doubt case)."""
        return cls("drop", None, accepts=accepted)

    # behaviour

    @property
    def is_drop(self) -> bool:
        return self.kind == "drop"

    def render(self, received: Received) -> tuple[int, tuple[tuple[str, str], ...], bytes]:
        """Status, headers and body for ``received`` (not for a drop)."""
        assert self.code is not None, "a drop has nothing to render"
        body = self.body
        if self.echo:
            body = json.dumps(
                {"conversion_id": uuid.uuid4().hex[:20], "transaction_id": received.transaction_id}
            ).encode()
        return self.code, self.headers, body

    def is_accepting(self) -> bool:
        """Whether Everflow would have recorded the conversion (see the module docstring)."""
        if self.accepts is not None:
            return self.accepts
        if self.code is None or not 200 <= self.code < 300 or self.code == 204:
            return False
        if self.echo or not self.body:
            return True
        try:
            parsed = json.loads(self.body)
        except ValueError:
            return True
        return not (isinstance(parsed, dict) and (parsed.get("error") or parsed.get("Error")))


# --- what arrived ------------------------------------------------------------------------------


@dataclasses.dataclass
class Received:
    """One request as it arrived, and the answer it got."""

    method: str
    path: str
    raw_query: str
    params_list: list[tuple[str, str]]
    """Every ``(name, value)`` pair in order, repeated names included."""
    query: dict[str, str]
    """One value per name: the first one if a name is repeated (see ``params_list``)."""
    headers: Message
    """The request headers (case-insensitive ``headers["user-agent"]``, ``.get()``)."""
    body: bytes
    at: float
    """``time.monotonic()`` at arrival."""
    wall: float = 0.0
    """``time.time()`` at arrival."""
    seq: int = -1
    """0-based arrival index over the whole receiver."""
    n_for_txn: int = 0
    """How many requests with this ``transaction_id`` arrived before this one."""
    answer: Answer | None = None
    fault: str | None = None
    """The fault-mix kind that chose the answer (``"503"``, ``"slow"``, ``"drop"`` ...), if any."""

    @property
    def transaction_id(self) -> str | None:
        return self.query.get("transaction_id")

    @property
    def status(self) -> int | None:
        """The status sent, ``None`` for a dropped connection."""
        return self.answer.code if self.answer else None

    @property
    def accepted(self) -> bool:
        return bool(self.answer and self.answer.is_accepting())

    def log_entry(self) -> JsonDict:
        return {
            "at": self.at,
            "wall": time.time(),
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "transaction_id": self.transaction_id,
            "answer": self.answer.kind if self.answer else None,
            "status": self.status,
            "accepted": self.accepted,
            "fault": self.fault,
        }


Script = t.Sequence[Answer] | t.Callable[[Received, int], "Answer | None"]
"""A list of answers consumed in arrival order, or ``f(received, n_for_this_txn)``."""


# --- fault mix ---------------------------------------------------------------------------------

FAULT_KINDS = ("slow", "drop", "error")
"""Fault-mix keys besides status codes. A fault mix maps a kind to its probability per request:
a status code as a string (``"429"`` with ``Retry-After``, ``"204"``, ``"503"``, ``"500"``,
``"404"`` ...), ``"slow"`` (``slow(slow_seconds)``, then 200), ``"drop"`` (no response) or
``"error"`` (``error_json``). Settings in the same dict: ``"slow_seconds"`` (default 1.0) and
``"retry_after"`` (the 429's ``Retry-After``, default ``"1"``)."""

_FAULT_SETTINGS = {"slow_seconds", "retry_after"}


class _FaultMix:
    """Seeded random faults.

    One draw per request from a generator seeded with ``(seed, transaction_id, n_for_txn)``
    (``(seed, seq)`` without a transaction id), so which attempt of which conversion gets which
    fault does not depend on the order concurrent requests happen to arrive in.
    """

    def __init__(self, mix: t.Mapping[str, t.Any], seed: int) -> None:
        self.seed = seed
        self.slow_seconds = float(mix.get("slow_seconds", 1.0))
        self.retry_after = str(mix.get("retry_after", "1"))
        self.weights = sorted(
            (str(k), float(v)) for k, v in mix.items() if k not in _FAULT_SETTINGS
        )
        total = sum(p for _, p in self.weights)
        if total > 1.0 + 1e-9 or any(p < 0 for _, p in self.weights):
            raise ValueError(f"fault_mix probabilities must be >= 0 and sum to <= 1, got {mix}")
        for kind, _ in self.weights:
            if kind not in FAULT_KINDS and not kind.isdigit():
                raise ValueError(
                    f"unknown fault kind {kind!r}: a status code, {', '.join(FAULT_KINDS)}"
                )

    def draw(self, received: Received) -> tuple[str, Answer] | None:
        txn = received.transaction_id
        if txn is not None:
            key = f"{self.seed}:txn:{txn}:{received.n_for_txn}"
        else:
            key = f"{self.seed}:seq:{received.seq}"
        roll = random.Random(key).random()
        for kind, p in self.weights:
            if roll < p:
                return kind, self._answer(kind)
            roll -= p
        return None

    def _answer(self, kind: str) -> Answer:
        if kind == "slow":
            return Answer.slow(self.slow_seconds)
        if kind == "drop":
            return Answer.drop()
        if kind == "error":
            return Answer.error_json("fault injected")
        if kind == "204":
            return Answer.no_content()
        if kind == "429":
            return Answer.rate_limited(self.retry_after)
        return Answer.status(int(kind), f"fault injected: HTTP {kind}")


# --- the server --------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "FakeEverflow/1.0"
    sys_version = ""
    wbufsize = 64 * 1024  # status line, headers and body leave in one send (no Nagle stall)
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: t.Any) -> None:  # stdlib signature
        pass  # the receiver's own records are the log

    def _handle(self) -> None:
        receiver = self.server.receiver
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        params = parse_qsl(split.query, keep_blank_values=True)
        query: dict[str, str] = {}
        for name, value in params:
            query.setdefault(name, value)
        received = Received(
            method=self.command,
            path=split.path,
            raw_query=split.query,
            params_list=params,
            query=query,
            headers=self.headers,
            body=body,
            at=time.monotonic(),
            wall=time.time(),
        )
        reporting = receiver.reporting
        if reporting is not None and reporting.serves(received.path):
            answer = reporting.answer(received, receiver.accepted)
        else:
            answer = receiver._decide(received)
        delay = answer.delay + receiver.latency
        if delay > 0 and receiver._stopping.wait(delay):
            answer = Answer.drop()  # stopped while waiting: the caller hears nothing
        if answer.is_drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        code, headers, payload = answer.render(received)
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        if code != 204 and not 100 <= code < 200:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload and self.command != "HEAD" and code != 204:
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # server_close() never waits for a slow handler
    request_queue_size = 512  # listen backlog: bursts of new connections are not refused
    allow_reuse_address = True

    def __init__(self, receiver: Receiver, port: int = 0) -> None:
        self.receiver = receiver
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def process_request(self, request: t.Any, client_address: t.Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: t.Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut every open keep-alive connection (their handler threads then end)."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: t.Any, client_address: t.Any) -> None:
        """A caller that went away (timeout, drop, stop) is normal here: no traceback."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class Receiver:
    """The fake Everflow postback endpoint. See the module docstring.

    :param latency: seconds added before every answer (0.02 for benchmarks).
    :param script: a list of answers consumed in arrival order, or a callable
        ``f(received, n_for_this_txn) -> Answer | None`` (``None``: no opinion).
    :param default: the answer when neither the script nor the fault mix decides.
    :param seed: the fault mix's seed (random if ``None``; the one used is ``rx.seed``).
    :param fault_mix: probabilities of faults per request, e.g.
        ``{"429": 0.05, "503": 0.05, "slow": 0.02, "drop": 0.02, "204": 0.01,
        "slow_seconds": 2.0}`` (see :data:`FAULT_KINDS`). A script's answer wins.
    :param log_path: append one JSON line per request to this file (see the module docstring).
    :param port: the port to bind on 127.0.0.1 (0, the default: an ephemeral one).
    :param reporting: a :class:`FakeReporting`: Everflow's REST API under ``/v1/`` (``api_url``),
        whose Conversion Report lists the conversions this receiver accepted.
    """

    def __init__(
        self,
        latency: float = 0.0,
        script: Script | None = None,
        default: Answer | None = None,
        seed: int | None = None,
        fault_mix: t.Mapping[str, t.Any] | None = None,
        *,
        log_path: str | os.PathLike[str] | None = None,
        port: int = 0,
        reporting: FakeReporting | None = None,
    ) -> None:
        self.reporting = reporting
        self.latency = float(latency)
        self._port = port
        self.default = default if default is not None else Answer.ok()
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
        self._fault_mix = _FaultMix(fault_mix, self.seed) if fault_mix else None
        self.accepted_log_path: Path | None = Path(log_path) if log_path is not None else None
        self._lock = threading.RLock()
        self._arrived = threading.Condition(self._lock)
        self._requests: list[Received] = []
        self._accepted: list[Received] = []
        self._seen_by_txn: collections.Counter[str | None] = collections.Counter()
        self._faults: collections.Counter[str] = collections.Counter()
        self._script: Script | None = None
        self._script_pos = 0
        self.set_script(script)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._log: t.TextIO | None = None
        self._stop_lock = threading.Lock()

    # lifecycle

    def start(self) -> Receiver:
        """Bind an ephemeral port on 127.0.0.1 and serve in a daemon thread."""
        if self._server is not None:
            return self
        if self.accepted_log_path is not None:
            self._log = open(self.accepted_log_path, "a", encoding="utf-8")
        self._server = _Server(self, self._port)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"everflow-receiver:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open connections. Idempotent; never waits for slow answers."""
        with self._stop_lock:
            server, self._server = self._server, None
            if server is None:
                return
            self._stopping.set()  # slow answers in flight give up (their callers see a drop)
            server.shutdown()
            server.server_close()
            server.close_connections()
            with self._lock:
                if self._log is not None:
                    self._log.close()
                    self._log = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the receiver is not running")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/``: the postback URL (postbacks go to path ``/``)."""
        return f"http://127.0.0.1:{self.port}/"

    @property
    def api_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the REST API of ``reporting`` (setting ``api_url``)."""
        return f"http://127.0.0.1:{self.port}{FakeReporting.PREFIX}"

    # scripting

    def set_script(self, script: Script | None) -> None:
        """Replace the script (a list starts again from its first answer)."""
        with self._lock:
            self._script = list(script) if script is not None and not callable(script) else script
            self._script_pos = 0

    @staticmethod
    def per_transaction(
        answers: t.Mapping[str, t.Sequence[Answer]],
    ) -> t.Callable[[Received, int], Answer | None]:
        """A script answering the n-th attempt of transaction X with ``answers[X][n]``; other
        transactions, and attempts past the end of a list, get the receiver's default (or the
        fault mix)::

            Receiver.per_transaction({"tx1": [Answer.status(503), Answer.status(503)]})
        """
        table = {txn: list(seq) for txn, seq in answers.items()}

        def script(received: Received, n: int) -> Answer | None:
            seq = table.get(received.transaction_id or "", [])
            return seq[n] if n < len(seq) else None

        return script

    def _decide(self, received: Received) -> Answer:
        """Record ``received`` and choose its answer (atomically, in arrival order)."""
        with self._lock:
            txn = received.transaction_id
            received.seq = len(self._requests)
            received.n_for_txn = self._seen_by_txn[txn]
            self._seen_by_txn[txn] += 1
            answer: Answer | None = None
            if callable(self._script):
                answer = self._script(received, received.n_for_txn)
            elif self._script is not None and self._script_pos < len(self._script):
                answer = self._script[self._script_pos]
                self._script_pos += 1
            if answer is None and self._fault_mix is not None:
                fault = self._fault_mix.draw(received)
                if fault is not None:
                    self._faults[fault[0]] += 1
                    received.fault = fault[0]
                    answer = fault[1]
            received.answer = answer if answer is not None else self.default
            self._requests.append(received)
            if received.accepted:
                self._accepted.append(received)
            if self._log is not None:
                self._log.write(json.dumps(received.log_entry()) + "\n")
                self._log.flush()
            self._arrived.notify_all()
            return received.answer

    # what arrived (snapshots, safe to read while requests come in)

    @property
    def requests(self) -> list[Received]:
        """Every request, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def accepted(self) -> list[Received]:
        """The requests whose answer accepted the conversion, in arrival order (a copy)."""
        with self._lock:
            return list(self._accepted)

    @property
    def faults(self) -> collections.Counter[str]:
        """How many faults of each kind the fault mix injected (a copy)."""
        with self._lock:
            return collections.Counter(self._faults)

    def count_by_transaction(self) -> collections.Counter[str | None]:
        """``transaction_id`` -> number of accepted requests (2+ means a duplicate conversion)."""
        with self._lock:
            return collections.Counter(r.transaction_id for r in self._accepted)

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` requests arrived; ``False`` on timeout."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self._requests) >= count, timeout)


# --- the reporting API -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What the fake Conversion Report says of a conversion."""

    status: str = "approved"
    error_code: int = 0
    error_message: str = ""

    @classmethod
    def rejected(cls, code: int, message: str = "") -> Verdict:
        return cls("rejected", code, message or REJECTION_MESSAGES.get(code, f"error {code}"))


REJECTION_MESSAGES = {
    8: "Duplicate Transaction ID",
    13: "Click Not Found",
    21: "Invalid Verification Token",
    25: "Event Not Found On Offer",
}
"""Illustrative error messages (Everflow documents the codes, not these exact texts)."""


class FakeReporting:
    """Everflow's REST API as reconcile uses it, served by a :class:`Receiver` under ``/v1``.

    * ``POST /v1/networks/reporting/conversions?page=N&page_size=M``: the Conversion Report. Its
      rows are the postbacks the receiver **accepted** (one row each: ``transaction_id``,
      ``is_event``/``event`` from ``adv_event_id``, ``order_id``, ``sale_amount``,
      ``conversion_unix_timestamp`` = the postback's ``timestamp``, else its arrival), with the
      scripted ``verdicts`` (transaction id, or ``(transaction id, adv_event_id)`` -> Verdict;
      default approved), less the ``omit`` transaction ids. It honours the documented body:
      ``from``/``to`` (``timezone_id`` 67, UTC, only), ``show_conversions``/``show_events``,
      ``query.filters`` (``transaction_id`` and ``status``; the same resource type ORs, different
      ones AND); pages are query parameters, at most ``max_page_size`` rows.
    * ``GET /v1/networks/advertisers/{id}/events``: ``events`` (id -> name) as global events.

    A request without the ``api_key`` gets 401; ``script`` answers (e.g. a 429) come first, one
    per request (``None`` in the script: answer that request normally). With
    ``transaction_filter=False`` a transaction id filter gets HTTP 400 (to test the time-window
    fallback). Every request is kept in ``requests``.

    Hostile or odd reports: ``page_cap`` caps a page's rows whatever ``page_size`` asks (as
    Everflow may); ``ignore_page`` answers the first page to every ``page``; ``rewrite`` changes
    each row before it is answered (a :class:`Raw` value is written as raw JSON text, e.g.
    ``Raw("1e400")``); ``pages(n, body)`` answers the n-th report request with its own JSON
    object instead (the other options then do not apply).
    """

    PREFIX = "/v1"

    def __init__(
        self,
        *,
        api_key: str,
        verdicts: t.Mapping[t.Any, Verdict] | None = None,
        omit: t.Iterable[str] = (),
        events: t.Mapping[int, str] | None = None,
        advertiser_id: int = 7,
        script: t.Sequence[Answer | None] = (),
        max_page_size: int = 2000,
        transaction_filter: bool = True,
        page_cap: int | None = None,
        ignore_page: bool = False,
        rewrite: t.Callable[[JsonDict], JsonDict] | None = None,
        pages: t.Callable[[int, JsonDict], JsonDict] | None = None,
    ) -> None:
        self.api_key = api_key
        self.verdicts = dict(verdicts or {})
        self.omit = set(omit)
        self.events = dict(events if events is not None else {24: "Purchase"})
        self.advertiser_id = advertiser_id
        self.script = list(script)
        self.max_page_size = max_page_size
        self.transaction_filter = transaction_filter
        self.page_cap = page_cap
        self.ignore_page = ignore_page
        self.rewrite = rewrite
        self.pages = pages
        self._report_count = 0
        self.requests: list[Received] = []
        self._lock = threading.Lock()

    def serves(self, path: str) -> bool:
        return path == self.PREFIX or path.startswith(self.PREFIX + "/")

    # what was asked

    def report_requests(self) -> list[JsonDict]:
        """The JSON bodies of the Conversion Report requests, in order."""
        with self._lock:
            return [
                json.loads(r.body or b"{}")
                for r in self.requests
                if r.path.endswith("/reporting/conversions")
            ]

    def asked_transactions(self) -> collections.Counter[str]:
        """Transaction id -> how many report requests filtered for it."""
        asked: collections.Counter[str] = collections.Counter()
        for body in self.report_requests():
            for item in (body.get("query") or {}).get("filters") or []:
                if item.get("resource_type") == "transaction_id":
                    asked[str(item.get("filter_id_value"))] += 1
        return asked

    # rows

    def rows(self, accepted: t.Sequence[Received]) -> list[JsonDict]:
        rows = []
        for received in accepted:
            q = received.query
            tid = q.get("transaction_id", "")
            if tid in self.omit:
                continue
            raw_event_id = q.get("adv_event_id", "0")
            event_id = int(raw_event_id) if raw_event_id.isdigit() else 0
            verdict = self.verdicts.get((tid, event_id)) or self.verdicts.get(tid) or Verdict()
            when = q.get("timestamp", "")
            try:
                amount = float(q["amount"]) if "amount" in q else 0.0
            except ValueError:
                amount = 0.0
            row = {
                "conversion_id": f"c{received.seq:08d}",
                "transaction_id": tid,
                "status": verdict.status,
                "error_code": verdict.error_code,
                "error_message": verdict.error_message,
                "is_event": bool(event_id),
                "event": self.events.get(event_id, f"Event {event_id}") if event_id else "",
                "conversion_unix_timestamp": int(when) if when.isdigit() else int(received.wall),
                "order_id": q.get("order_id", ""),
                "sale_amount": amount,
                "coupon_code": q.get("coupon_code", ""),
                "adv1": q.get("adv1", ""),
                "is_scrub": False,
                "currency_id": "USD",
            }  # fmt: skip
            rows.append(self.rewrite(row) if self.rewrite is not None else row)
        return rows

    # answers

    def answer(self, received: Received, accepted: t.Sequence[Received]) -> Answer:
        with self._lock:
            received.seq = len(self.requests)
            self.requests.append(received)
            if self.script:
                scripted = self.script.pop(0)
                if scripted is not None:
                    received.answer = scripted
                    return received.answer
        if received.headers.get("X-Eflow-API-Key") != self.api_key:
            return self._json(401, {"error": "No Authentication Method Found"})
        path = received.path[len(self.PREFIX) :]
        events_path = f"/networks/advertisers/{self.advertiser_id}/events"
        if path == events_path and received.method == "GET":
            return Answer.ok({"global_events": [
                {"network_advertiser_global_event_id": eid, "entry_name": name,
                 "advertiser_id": self.advertiser_id, "status": "active"}
                for eid, name in sorted(self.events.items())
            ]})  # fmt: skip
        if path == "/networks" and received.method == "GET":
            return Answer.ok({"network_id": 1, "name": "Fake network"})
        if path != "/networks/reporting/conversions" or received.method != "POST":
            return self._json(404, {"error": "Not Found"})
        try:
            return self._report(received, accepted)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return self._json(400, {"error": f"Invalid request: {exc}"})

    @staticmethod
    def _json(code: int, body: JsonDict) -> Answer:
        return Answer.status(code, json.dumps(body), {"Content-Type": "application/json"})

    def _report(self, received: Received, accepted: t.Sequence[Received]) -> Answer:
        body = json.loads(received.body)
        if self.pages is not None:
            with self._lock:
                self._report_count += 1
                number = self._report_count
            return _raw_ok(self.pages(number, body))
        if body.get("timezone_id") != 67:
            return self._json(400, {"error": "the fake knows timezone 67 (UTC) only"})
        start = _report_time(body["from"], end=False)
        end = _report_time(body["to"], end=True)
        if end - start > 366 * 86400 or end < start:
            return self._json(400, {"error": "Invalid date range"})
        page = 1 if self.ignore_page else int(received.query.get("page", "1"))
        size = int(received.query.get("page_size", "50"))
        if not 1 <= size <= self.max_page_size or page < 1:
            return self._json(
                400, {"error": f"page_size must be between 1 and {self.max_page_size}"}
            )
        groups: dict[str, set[str]] = collections.defaultdict(set)
        for item in (body.get("query") or {}).get("filters") or []:
            kind = item["resource_type"]
            if kind not in ("transaction_id", "status") or (
                kind == "transaction_id" and not self.transaction_filter
            ):
                return self._json(400, {"error": f"Invalid filter resource_type {kind}"})
            groups[kind].add(str(item["filter_id_value"]))
        show_conversions = bool(body["show_conversions"])
        show_events = bool(body["show_events"])
        rows = [
            row for row in self.rows(accepted)
            if start <= row["conversion_unix_timestamp"] <= end
            and (show_events if row["is_event"] else show_conversions)
            and all(str(row[kind]) in values for kind, values in groups.items())
        ]  # fmt: skip
        if self.page_cap is not None:
            size = min(size, self.page_cap)
        chunk = rows[(page - 1) * size : page * size]
        return _raw_ok({
            "conversions": chunk,
            "paging": {"page": page, "page_size": size, "total_count": len(rows)},
        })  # fmt: skip


class Raw(str):
    """A value the fake report writes as raw JSON text (``Raw("1e400")``: a number no float
    holds)."""


_RAW = re.compile(r'"\\ue000(.*?)\\ue000"')


def _raw_ok(body: JsonDict) -> Answer:
    """A 200 with ``body`` as JSON, its :class:`Raw` values written as they are."""

    def mark(value: t.Any) -> t.Any:
        if isinstance(value, Raw):
            return "\ue000" + value + "\ue000"
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mark(v) for v in value]
        return value

    text = _RAW.sub(lambda m: json.loads(f'"{m.group(1)}"'), json.dumps(mark(body)))
    return Answer.status(200, text, {"Content-Type": "application/json"})


def _report_time(text: str, *, end: bool) -> int:
    """``YYYY-mm-DD`` (a whole day) or ``YYYY-mm-DD hh:mm:ss``, in UTC, as epoch seconds."""
    if len(text) == 10:
        day = dt.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
        return int(day.timestamp()) + (86399 if end else 0)
    moment = dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
    return int(moment.timestamp())


# --- the log, read back ------------------------------------------------------------------------


def read_log(path: str | os.PathLike[str]) -> list[JsonDict]:
    """The entries of a request log (``--log`` / ``log_path``); a torn last line is ignored."""
    entries = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue  # the writer was killed mid-line
    return entries


def accepted_by_transaction(path: str | os.PathLike[str]) -> collections.Counter[str | None]:
    """``transaction_id`` -> accepted requests, from a request log."""
    return collections.Counter(e["transaction_id"] for e in read_log(path) if e["accepted"])


# --- as a subprocess ---------------------------------------------------------------------------


class ReceiverProcess:
    """The CLI receiver in a subprocess, for tests that need it outside the test process::

    with ReceiverProcess(latency=0.01, log_path=tmp_path / "rx.jsonl") as rx:
        run_the_target(postback_url=rx.url)
    assert rx.accepted_by_transaction() == {...}
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        fault_mix: t.Mapping[str, t.Any] | None = None,
        seed: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.log_path = Path(log_path) if log_path is not None else None
        self.args = [sys.executable, str(Path(__file__).resolve()), "--latency", str(latency)]
        if fault_mix:
            self.args += ["--fault-mix", json.dumps(fault_mix)]
        if seed is not None:
            self.args += ["--seed", str(seed)]
        if self.log_path is not None:
            self.args += ["--log", str(self.log_path)]
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> ReceiverProcess:
        self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], self.startup_timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"the receiver did not start (said {line!r})")
        self.url = line.split("listening on ", 1)[1].strip()
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``). Idempotent; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> ReceiverProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> list[JsonDict]:
        return read_log(self.log_path) if self.log_path is not None else []

    def accepted_by_transaction(self) -> collections.Counter[str | None]:
        if self.log_path is None:
            return collections.Counter()
        return accepted_by_transaction(self.log_path)


# --- CLI ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.receiver", description="A fake Everflow postback receiver."
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument(
        "--fault-mix",
        type=json.loads,
        default=None,
        metavar="JSON",
        help='fault probabilities, e.g. \'{"503": 0.1, "slow": 0.02, "slow_seconds": 2}\'',
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault mix")
    parser.add_argument(
        "--log", type=Path, default=None, metavar="PATH", help="append one JSON line per request"
    )
    args = parser.parse_args(argv)

    receiver = Receiver(
        latency=args.latency,
        seed=args.seed,
        fault_mix=args.fault_mix,
        log_path=args.log,
        port=args.port,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with receiver:
        print(f"listening on {receiver.url}", flush=True)
        while not stop.wait(0.2):
            pass
    print(
        f"receiver stopped: {len(receiver.requests)} requests, {len(receiver.accepted)} accepted, "
        f"faults {dict(receiver.faults)}, seed {receiver.seed}",
        file=sys.stderr,
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
