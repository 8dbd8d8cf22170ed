"""The delivery engine: claim, send concurrently, retry, account; or stop the run cleanly.

For one batch of conversions, ``DeliveryEngine.deliver``:

1. claims the keys in the ledger in chunks (one transaction each, :func:`claim_chunk` keys, the
   next chunk claimed while the one before is being sent): keys already delivered are
   duplicates, keys left pending by a dead run are *in doubt* (``in_doubt`` decides), keys
   pending under a live run are waited for (what this run claimed is sent first; they are
   claimed again after :data:`FIRST_BUSY_WAIT`, then twice as long each time). Chunks let
   runs reading the same input share it: each claims the chunks the others have not taken yet;
2. sends the claimed ones over one pooled session, ``max_concurrency`` at a time, each attempt
   through the global ``RateLimiter``, transient failures retried per the ``RetryPolicy``;
3. accounts for each: accepted -> marked delivered in the ledger (group-committed); rejected or
   other permanent answer -> dead letter, claim released; a systemic failure -> the run stops:
   nothing more is sent, unsent claims are released, ``DeliveryAborted`` is raised.

It returns only when every conversion has its final outcome and the ledger and dead-letter
file are durable, which is what lets the SDK emit STATE after it.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
import typing as t
from dataclasses import dataclass
from pathlib import Path

from target_everflow.accounting.metrics import conversion_fields
from target_everflow.accounting.summary import DeadLetters, RunSummary, dumps
from target_everflow.delivery.postback import REDACTED, Answer, PostbackClient, Verdict
from target_everflow.errors import DeliveryAborted, OutputError
from target_everflow.ledger import ClaimStatus, Ledger, LedgerError
from target_everflow.outcomes import (
    CLAIMED_ELSEWHERE,
    DEAD_LETTER,
    DELIVERED,
    DUPLICATE,
    IN_DOUBT_COUNT,
    IN_DOUBT_REASON,
    SKIPPED,
)
from target_everflow.retry import RateLimiter, RetryPolicy

if t.TYPE_CHECKING:
    from target_everflow.accounting.metrics import RunMetrics
    from target_everflow.mapping import Conversion


SETTLE_EVERY = 0.005
"""The dispatcher's fence commits start at least this many seconds apart: a result that comes
later than that after the last one is settled (and its slot fenced) at once; results that come
sooner, or while a commit is in progress, gather and ride the next commit together. Only for a
ledger whose fence is a commit (``Ledger.fences_commit``): without one (``ledger_url: none``) a
freed slot is filled at once."""
MIN_CLAIM_CHUNK = 64
"""The fewest keys claimed in one transaction (each claim is a durable commit)."""
FIRST_BUSY_WAIT = 0.02
"""Seconds before a batch first claims again the keys another live run was sending; each
wait after it is twice the last, up to ``busy_wait``."""


def claim_chunk(concurrency: int) -> int:
    """Keys claimed per transaction: about two rounds of the senders, so a run holds few claims
    it is not sending yet (another run reading the same input takes the rest of the batch)."""
    return max(MIN_CLAIM_CHUNK, 2 * concurrency)


class _Raised:
    """What a call run by a ``_Workers`` thread raised, handed to whoever waits for it."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Workers:
    """``max_concurrency`` sending threads. Unlike ``ThreadPoolExecutor``'s, they are daemon
    threads that the interpreter does not join at exit: a postback abandoned in flight (still
    connecting, say, where no socket can be shut down yet) never keeps a stopping run alive.

    No future per call: ``submit(fn, arg, done)`` runs ``fn(arg)`` and hands ``done`` its result
    (or a ``_Raised``), which is all the engine needs, without a condition variable per call."""

    def __init__(self, count: int, name: str) -> None:
        self._count = count
        self._name = name
        self._queue: queue.SimpleQueue[
            tuple[t.Callable[[t.Any], t.Any], t.Any, t.Callable[[t.Any], None]] | None
        ] = queue.SimpleQueue()
        self._started = False

    def submit(
        self, fn: t.Callable[[t.Any], t.Any], arg: t.Any, done: t.Callable[[t.Any], None]
    ) -> None:
        if not self._started:
            self._started = True
            for i in range(self._count):
                threading.Thread(target=self._work, name=f"{self._name}_{i}", daemon=True).start()
        self._queue.put((fn, arg, done))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, arg, done = item
            try:
                result = fn(arg)
            except BaseException as exc:  # handed to whoever waits on it
                result = _Raised(exc)
            done(result)

    def discard_queued(self) -> None:
        """Drop the calls no thread has taken yet (they never run)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is None:  # (only shutdown() queues these: keep them)
                self._queue.put(None)
                return

    def shutdown(self) -> None:
        """Drop what has not started; idle threads end, busy ones when their call returns."""
        self.discard_queued()
        if self._started:
            for _ in range(self._count):
                self._queue.put(None)


try:
    from msgspec.json import Encoder as _MsgspecEncoder
except ImportError:  # pragma: no cover - msgspec comes with singer-sdk[msgspec]
    _encode_line: t.Callable[[t.Any], bytes] | None = None
else:
    _encode_line = _MsgspecEncoder().encode
    """A dry-run line holds only strings (and a null message id): msgspec writes it exactly as
    ``accounting.dumps`` would (UTF-8, compact, the same escapes), several times faster; a lone
    surrogate (which UTF-8 cannot hold) falls back to ``dumps``."""


class DryRunWriter:
    """Dry run's output: one JSON line per planned postback, the token shown as ``***``."""

    def __init__(self, path: Path, client: PostbackClient) -> None:
        self.path = path
        self._client = client
        path.parent.mkdir(parents=True, exist_ok=True)
        # Bytes: msgspec's line as it encodes it. A line only ``dumps`` can write (a lone
        # surrogate, from a "\ud800" JSON escape) is encoded with backslashreplace: the
        # surrogate is written as that same JSON escape, instead of failing the write.
        self._file = path.open("wb")
        self.count = 0

    def write(self, conversion: Conversion) -> None:
        params = dict(conversion.params)
        if self._client._token:  # the dry run shows the client's own token as ***
            params["verification_token"] = REDACTED
        line = {
            "message_id": conversion.message_id,
            "key": conversion.key,
            "stream": conversion.stream,
            "event": conversion.event,
            "url": self._client.url(conversion, redact=True),
            "params": params,
        }
        data = None
        if _encode_line is not None:
            try:  # (a try, not a context manager per line: cheaper)
                data = _encode_line(line) + b"\n"
            except (TypeError, UnicodeEncodeError):
                pass
        if data is None:
            data = (dumps(line) + "\n").encode("utf-8", "backslashreplace")
        try:
            self._file.write(data)
        except OSError as exc:
            raise self._failed(exc) from None
        self.count += 1

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> OutputError:
        return OutputError(
            f"Cannot write the planned postbacks to {self.path}: {exc.strerror or exc}. Stopping: "
            "the next run resumes from the last STATE."
        )

    def close(self) -> None:
        self._file.close()


@dataclass(slots=True)
class _Result:
    conversion: Conversion
    answer: Answer | None
    """None: never sent (the run was stopping)."""
    attempts: int
    settled: bool = False
    """Its outcome is accounted for already (dead-lettered in doubt by the worker)."""
    claim_lost: bool = False
    """Not sent (again): the fence found the claim taken over by another run."""


class DeliveryEngine:
    """Delivers batches of conversions; see the module docstring."""

    def __init__(
        self,
        *,
        client: PostbackClient,
        ledger: Ledger,
        summary: RunSummary,
        dead_letters: DeadLetters,
        policy: RetryPolicy,
        limiter: RateLimiter,
        concurrency: int,
        in_doubt: str,
        dry_run: DryRunWriter | None = None,
        logger: logging.Logger | None = None,
        busy_wait: float = 0.5,
        stop_grace: float,
        metrics: RunMetrics | None = None,
        on_claimed: t.Callable[[Conversion], None] | None = None,
    ) -> None:
        self.client = client
        self.on_claimed = on_claimed  # each conversion claimed to be sent (not a duplicate)
        self.ledger = ledger
        self.summary = summary
        self.dead_letters = dead_letters
        self.policy = policy
        self.limiter = limiter
        self.in_doubt = in_doubt
        self.dry_run = dry_run
        self.logger = logger or logging.getLogger("target-everflow")
        self.busy_wait = busy_wait
        self.stop_grace = stop_grace
        self.metrics = metrics
        self.concurrency = concurrency
        self.claim_chunk = claim_chunk(concurrency)
        self._pool = _Workers(concurrency, "postback")
        self._stop = threading.Event()
        self._stop_reason = ""
        self._lock = threading.Lock()
        self.in_flight = 0

    # -- control ---------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Stop sending: queued conversions are not sent; in-flight ones get ``stop_grace``."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown()
        self.client.close()
        if self.dry_run is not None:
            self.dry_run.close()

    # -- one batch -------------------------------------------------------------------------

    def deliver(self, conversions: list[Conversion]) -> None:
        """Deliver a batch (keys unique within it); return when every one has its outcome.

        What it claims it sends at once; keys another live run holds are waited for only
        after that, so two runs on overlapping input never wait for each other while each
        holds claims the other needs."""
        if not conversions:
            return
        if self._stop.is_set():
            raise DeliveryAborted(self._stop_reason or "the run is stopping")
        todo = conversions
        lost_keys: set[str] = set()
        deadline: float | None = None
        pause = FIRST_BUSY_WAIT
        try:
            while True:
                waiting, lost = self._claim_and_send(todo, lost_keys)
                # Claims another run took over while this one was paused: it sends them. They
                # are waited for like any claim a live run holds, until it has recorded them
                # (skipped here: claimed_elsewhere) or let them go (ours again), so that no
                # STATE of this run passes a conversion only a run that may die still holds.
                lost_keys.update(c.key for c in lost)
                waiting += lost
                if not waiting:
                    break
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.policy.worst_case_seconds(self.client.timeout) + 60
                    self.logger.info(
                        "%d conversions are being sent by another run right now; waiting for it.",
                        len(waiting),
                    )
                # Another run is sending them now, so they are usually settled within one
                # request: look again soon, then less often (this run's slots are idle).
                pause = min(self.busy_wait, pause)
                if now > deadline or self._stop.wait(pause):
                    self.request_stop(
                        self._stop_reason
                        or f"{len(waiting)} conversions stayed claimed by another live run"
                    )
                    raise DeliveryAborted(self._stop_reason)
                todo = waiting
                pause *= 2
        finally:  # (the batch's dead letters are flushed once, by the run, after this)
            self.ledger.flush()
        if self._stop.is_set():
            raise DeliveryAborted(self._stop_reason)

    def _claim_and_send(
        self, todo: list[Conversion], lost_keys: set[str]
    ) -> tuple[list[Conversion], list[Conversion]]:
        """Claim and send (or, in a dry run, plan) ``todo``; return those another live run
        holds (to claim again later) and those whose claim was lost while sending."""
        if self.dry_run is not None:  # (no other run shares a dry run's ledger: one claim)
            to_plan, busy = self._claim(todo, lost_keys)
            self._plan(to_plan)
            return busy, []
        waiting: list[Conversion] = []
        starts = iter(range(0, len(todo), self.claim_chunk))

        def feed() -> list[Conversion] | None:
            """The next chunk's conversions to send (maybe none); None when all are claimed."""
            start = next(starts, None)
            if start is None:
                return None
            to_send, busy = self._claim(todo[start : start + self.claim_chunk], lost_keys)
            waiting.extend(busy)
            return to_send

        lost = self._send_all(feed)
        return waiting, lost

    def _plan(self, to_send: list[Conversion]) -> None:
        """Dry run: write the planned postbacks."""
        assert self.dry_run is not None
        for conversion in to_send:
            self.dry_run.write(conversion)
            self.ledger.mark_delivered(conversion.key, 0)
            self._count(conversion, DELIVERED)
        self.dry_run.flush()

    def _count(self, conversion: Conversion, kind: str, reason: str = "") -> None:
        self.summary.count(conversion.stream, conversion.event, kind, reason)

    def _dead_letter(
        self, conversion: Conversion, reason: str, message: str, status: int | None = None
    ) -> bool:
        """Dead-letter a conversion's record; False when the file could not take it (the run
        stops: the record has no outcome, and comes again from the last STATE)."""
        try:
            self.dead_letters.write(
                conversion.stream,
                conversion.record,
                reason,
                message,
                field=None,
                status=status,
                message_id=conversion.message_id,
            )
        except OutputError as exc:
            self.request_stop(str(exc))
            return False
        self._count(conversion, DEAD_LETTER, reason)
        return True

    def _claim(
        self, conversions: list[Conversion], lost: set[str] | frozenset[str] = frozenset()
    ) -> tuple[list[Conversion], list[Conversion]]:
        """Claim every key (one transaction); account for those not to be sent; return those
        to send and those another live run holds (to claim again later).

        A key found delivered (or held) is a ``duplicate``, or ``claimed_elsewhere`` when it is
        one of ``lost``: another run took it over from this one and delivered it."""
        metadata = (
            {c.key: c.ledger_metadata() for c in conversions}
            if self.ledger.keeps_metadata
            else None
        )
        statuses = self.ledger.claim([c.key for c in conversions], metadata)
        to_send: list[Conversion] = []
        busy: list[Conversion] = []
        held: list[str] = []
        for conversion in conversions:
            status = statuses[conversion.key]
            if status is ClaimStatus.CLAIMED:
                to_send.append(conversion)
                if self.on_claimed is not None:
                    self.on_claimed(conversion)
            elif status in (ClaimStatus.DELIVERED, ClaimStatus.HELD):
                self._count(
                    conversion, SKIPPED, CLAIMED_ELSEWHERE if conversion.key in lost else DUPLICATE
                )
            elif status is ClaimStatus.TAKEN_OVER:
                self.summary.bump(IN_DOUBT_COUNT)
                if self.in_doubt == "resend":
                    self.logger.warning(
                        "In doubt: conversion %s (stream %s, event %r, transaction %s) was "
                        "claimed by a run that stopped before recording Everflow's answer; "
                        "resending it (in_doubt=resend).",
                        conversion.key,
                        conversion.stream,
                        conversion.event,
                        conversion.transaction_id,
                        extra=conversion_fields(conversion, IN_DOUBT_REASON),
                    )
                    to_send.append(conversion)
                    if self.on_claimed is not None:
                        self.on_claimed(conversion)
                else:
                    self.logger.warning(
                        "In doubt: conversion %s (stream %s, event %r, transaction %s) was "
                        "claimed by a run that stopped before recording Everflow's answer; "
                        "kept in the dead-letter file for a person to check (in_doubt=dead_letter).",
                        conversion.key,
                        conversion.stream,
                        conversion.event,
                        conversion.transaction_id,
                        extra=conversion_fields(conversion, IN_DOUBT_REASON),
                    )
                    if self._dead_letter(
                        conversion,
                        IN_DOUBT_REASON,
                        "a previous run claimed this conversion and stopped before recording "
                        "Everflow's answer: check Everflow's conversion report for transaction "
                        f"{conversion.transaction_id} before replaying it",
                    ):
                        held.append(conversion.key)
            else:  # BUSY: another live run is sending it right now
                busy.append(conversion)
        if held:
            # The dead letters first: a key held in the ledger is never sent again, so its
            # record must already be safe in the file if the run dies right after.
            self.dead_letters.flush()
            self.ledger.mark_held(held)
        return to_send, busy

    def _send_all(self, feed: t.Callable[[], list[Conversion] | None]) -> list[Conversion]:
        """Send what ``feed()`` claims, chunk by chunk (None: nothing left); return those whose
        claim another run took over (not sent, not counted).

        The main thread dispatches: ``max_concurrency`` slots, and each tick (the results that
        arrived while the last commit was in progress, or within :data:`SETTLE_EVERY` of its
        start; a result that comes later is settled at once) one ledger commit,
        :meth:`Ledger.fence`, records the answers of the slots that freed up (delivered marks)
        and fences the conversions that take them (sending marks, before they leave). A slot's
        next postback is fenced in the commit that records its last one, so a killed run
        leaves at most ``max_concurrency`` conversions in doubt. The next chunk is claimed once
        fewer than ``max_concurrency`` claimed conversions wait for a slot: the slots never run
        dry, and the run holds few claims it is not sending (another run reading the same input
        takes the rest)."""
        # Each call reports its result on a queue: settling one is O(1), and results that
        # arrived together are settled together (group commit): a freed slot waits for no
        # fixed tick, and the ledger commits once per tick, not once per postback.
        finished: queue.SimpleQueue[_Result | _Raised] = queue.SimpleQueue()
        ready: collections.deque[Conversion] = collections.deque()
        fed_all = False
        claim_failed: LedgerError | None = None
        free = self.concurrency
        pending = 0
        grace_deadline: float | None = None
        release: list[str] = []
        lost: list[Conversion] = []
        delivered: list[tuple[str, int]] = []
        fenced_at = 0.0  # time.monotonic() when the last fence commit began
        spacing = SETTLE_EVERY if self.ledger.fences_commit else 0.0

        def dispatch() -> None:
            """Claim ahead, then fence and start what the free slots take (one commit, with the
            delivered marks gathered since the last one); again while claims found lost leave
            slots free."""
            nonlocal pending, free, delivered, fenced_at, fed_all, claim_failed
            while True:
                while not fed_all and len(ready) < self.concurrency and not self._stop.is_set():
                    try:
                        chunk = feed()
                    except LedgerError as exc:
                        # Nothing more is claimed or sent; what is in flight is settled (its
                        # answers recorded, not left in doubt), then the error ends the batch.
                        claim_failed = exc
                        self.request_stop(str(exc))
                        chunk = None
                    if chunk is None:
                        fed_all = True
                    else:
                        ready.extend(chunk)
                take = (
                    []
                    if self._stop.is_set()
                    else [ready.popleft() for _ in range(min(free, len(ready)))]
                )
                if not take and not delivered:
                    return
                marks, delivered = delivered, []
                if take:  # (delivered marks alone are only queued: the writer commits them)
                    fenced_at = time.monotonic()
                fenced = self.ledger.fence([c.key for c in take], marks)
                for conversion in take:
                    if conversion.key in fenced:
                        self._pool.submit(self._send_one, conversion, finished.put)
                        free -= 1
                        pending += 1
                    else:  # another run took the claim over (this run was paused): it sends it
                        lost.append(conversion)
                if len(fenced) == len(take):
                    return

        try:
            dispatch()
            while pending:
                try:
                    result = finished.get(timeout=0.25)
                except queue.Empty:
                    pass
                else:
                    early = fenced_at + spacing - time.monotonic()
                    if early > 0 and not self._stop.is_set():
                        time.sleep(early)  # (what else comes meanwhile rides the same commit)
                    while True:
                        pending -= 1
                        free += 1
                        if isinstance(result, _Raised):
                            raise result.error
                        self._settle(result, release, lost, delivered)
                        try:
                            result = finished.get_nowait()
                        except queue.Empty:
                            break
                    dispatch()
                if self._stop.is_set() and pending:
                    now = time.monotonic()
                    if grace_deadline is None:
                        grace_deadline = now + self.stop_grace
                    elif now > grace_deadline:
                        # Abandoned in flight: Everflow may have them. Their claims stay
                        # pending, so the next run treats them as in doubt. Their sockets are
                        # shut down (nothing waits on them); their workers account for nothing.
                        self._pool.discard_queued()
                        self.client.close()
                        self.logger.warning(
                            "Abandoned %d postbacks still in flight after %.0f s; the next run "
                            "treats them as in doubt.",
                            pending,
                            self.stop_grace,
                        )
                        pending = 0
            if claim_failed is not None:
                raise claim_failed
        finally:
            if delivered:  # (queued: the writer commits them; flush() waits for that)
                self.ledger.fence((), delivered)
            release.extend(c.key for c in ready)  # claimed, never sent: the run is stopping
            if lost:
                self.logger.warning(
                    "%d conversion(s) of this batch were not sent: another run took their claims "
                    "over (this run's ledger lease had expired: was it paused, suspended or cut "
                    "off from the ledger?) and sends them; once it has, they are counted as "
                    "skipped (%s) here: %s%s",
                    len(lost),
                    CLAIMED_ELSEWHERE,
                    ", ".join(json.dumps(c.key) for c in lost[:5]),
                    ", ..." if len(lost) > 5 else "",
                )
            if release:
                self.ledger.release(release)
        return lost

    def _settle(
        self,
        result: _Result,
        release: list[str],
        lost: list[Conversion],
        delivered: list[tuple[str, int]],
    ) -> None:
        conversion, answer = result.conversion, result.answer
        if result.claim_lost:  # another run owns it now and sends it: counted once it has
            lost.append(conversion)
            return
        if answer is None:  # not sent: the run is stopping; a later run sends it
            release.append(conversion.key)
            return
        if answer.verdict is Verdict.ACCEPTED:  # marked delivered with the next fence
            delivered.append((conversion.key, answer.status or 0))
            self._count(conversion, DELIVERED)
        elif result.settled:  # dead-lettered as in doubt by its worker
            pass
        elif answer.verdict in (Verdict.REJECTED, Verdict.PERMANENT):  # released by its worker
            self._dead_letter(conversion, answer.reason, answer.detail, answer.status)
            self.logger.warning(
                "Dead-lettered a conversion of stream %s (message id %r, event %r, transaction %r):"
                " %s: %s",
                conversion.stream,
                conversion.message_id or conversion.key,
                conversion.event,
                conversion.transaction_id,
                answer.reason,
                answer.detail,
                extra=conversion_fields(conversion, answer.reason, http_status=answer.status),
            )
        else:  # systemic, or transient after every retry: stop the run, keep the record
            if not answer.unanswered:  # (an unanswered one stays claimed: in doubt next run)
                release.append(conversion.key)
            tries = f" after {result.attempts} attempts" if result.attempts > 1 else ""
            self.request_stop(
                f"Everflow postback failed{tries}: {answer.detail}. Stopping: records not yet "
                "delivered are not dead-lettered; the next run resumes from the last STATE."
            )

    def _in_doubt_after(self, conversion: Conversion, answer: Answer) -> bool:
        """A postback left and got no answer: Everflow may have recorded it. Report it; return
        whether to send it again (``in_doubt: resend``) or not (``dead_letter``: kept for a
        person). Either way the summary counts it as in doubt."""
        self.summary.bump(IN_DOUBT_COUNT)
        resend = self.in_doubt == "resend"
        self.logger.warning(
            "In doubt: conversion %s (stream %s, event %r, transaction %s) got no answer (%s) "
            "after it was sent, so Everflow may have recorded it; %s",
            conversion.key,
            conversion.stream,
            conversion.event,
            conversion.transaction_id,
            answer.detail,
            "resending it (in_doubt=resend)."
            if resend
            else "kept in the dead-letter file for a person to check (in_doubt=dead_letter).",
            extra=conversion_fields(conversion, IN_DOUBT_REASON),
        )
        if not resend and self._dead_letter(
            conversion,
            IN_DOUBT_REASON,
            f"no answer from Everflow ({answer.detail}) after the postback was sent: check "
            f"Everflow's conversion report for transaction {conversion.transaction_id} before "
            "replaying it",
        ):
            self.dead_letters.flush()  # durable before the hold (see _claim)
            self.ledger.mark_held([conversion.key])  # no later run sends it either
        return resend

    def _send_one(self, conversion: Conversion) -> _Result:
        attempts = 0
        answer: Answer | None = None
        while True:
            if self._stop.is_set() or not self.limiter.acquire(self._stop):
                return _Result(conversion, None if attempts == 0 else answer, attempts)
            # The fence, before every attempt: a committed write that proves this run still
            # holds the claim (a run paused past its lease may have lost it to another run,
            # which sends it). Durable before it leaves: only claims that may have been sent
            # can be in doubt after a crash, so a killed run leaves at most its in-flight
            # requests in doubt. The dispatcher fenced the first attempt (Ledger.fence).
            if attempts and not self.ledger.mark_sending(conversion.key):
                return _Result(conversion, answer, attempts, claim_lost=True)
            with self._lock:
                self.in_flight += 1
            started = time.monotonic()
            try:
                answer = self.client.send(conversion)
            finally:
                with self._lock:
                    self.in_flight -= 1
            if self.metrics is not None:
                self.metrics.answered(answer.status, time.monotonic() - started)
            attempts += 1
            if answer.abandoned:  # the run gave up on it: its claim stays, in doubt next run
                return _Result(conversion, answer, attempts, settled=True)
            self.summary.bump("requests")
            if answer.status == 429:
                self.summary.bump("http_429")
            # Accepted: the dispatcher marks it delivered in the commit that fences the next
            # postback of this slot, so a slot never has more than one unrecorded postback.
            if answer.verdict in (Verdict.REJECTED, Verdict.PERMANENT):
                # Everflow answered and did not record it: not in doubt if this run dies now,
                # so the claim goes before the worker takes its next conversion (a killed run
                # leaves at most max_concurrency claims in doubt). A later run may send it again.
                self.ledger.release([conversion.key])
            if answer.unanswered and (
                self.in_doubt != "resend" or attempts <= self.policy.max_retries
            ):
                if not self._in_doubt_after(conversion, answer):
                    return _Result(conversion, answer, attempts, settled=True)
            if answer.verdict is not Verdict.TRANSIENT or attempts > self.policy.max_retries:
                return _Result(conversion, answer, attempts)
            delay = self.policy.delay(attempts, answer.retry_after)
            if answer.status == 429:
                self.limiter.hold(delay)  # everyone slows down, not only this request
            self.summary.bump("retries")
            self.logger.debug(
                "Retrying %s in %.2f s: %s",
                conversion.key,
                delay,
                answer.detail,
                extra=conversion_fields(conversion, "retry", http_status=answer.status),
            )
            if self._stop.wait(delay):
                return _Result(conversion, answer, attempts)
