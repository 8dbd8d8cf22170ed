"""The fault soak: conversions through the live path, faults injected at random, the run killed
(SIGKILL) or frozen and taken over several times and restarted from its last STATE until the
input is done.

Four soaks run side by side against one fake Everflow (``ReceiverProcess`` with a request log, so
the kills never touch it), each with its own ledger and its own transaction ids: ``in_doubt:
resend`` (the default) and ``in_doubt: dead_letter``, each on SQLite and on PostgreSQL
(``TARGET_EVERFLOW_TEST_POSTGRES_URL``), 10,000 conversions each. The receiver answers
~10% of requests 429 or 503 (few 429s: a 429 pauses every sender, by design, and
test_delivery.py covers it), ~0.5% slow past ``request_timeout``, ~0.5% by dropping the
connection, ~0.2% 204 (rejected); which attempt of which conversion gets which fault is seeded.
Each soak is killed ``KILLS`` times at seeded random moments and resumed from the last STATE
its run emitted, inclusive (as taps resume), until a run ends with exit code 0.

It is also paused ``PAUSES`` times (the takeover fault): the run is frozen (SIGSTOP, outside a
ledger transaction), its leases are made to run out (the ledger's ``lease_until`` set to the past:
what 60 s of wall time would do; ``tests/test_ledger_fencing.py`` waits the real 60 s out), a new
run starts from its last STATE and takes its claims over, and a few seconds later the frozen run
is resumed (SIGCONT): both then run to their end side by side. The frozen run must not send what
the new one took over (the fence: it counts those ``claimed_elsewhere``).

The model of Everflow (tests/receiver.py): a conversion is *accepted* when Everflow decides to
record it, whether or not its answer reaches the target. So a slow answer that the target gave
up on (timeout) was accepted, and so is anything in flight when the target is killed. That is
what a real Everflow does, and it is why the target treats a postback that left without an
answer as *in doubt*, exactly as it treats a claim left by a killed run: it logs
``In doubt: conversion <key> (stream <s>, event '<e>', transaction <tx>) ...`` and counts it,
then resends it (``in_doubt: resend``) or keeps it in the dead-letter file for a person
(``in_doubt: dead_letter``). (For base conversions Everflow would also refuse the resend as a
duplicate transaction; the fake does not, so every resend shows.)

What must hold at the end, for each soak:

- lost: 0 -- every conversion was accepted by Everflow or is in the dead-letter file with its
  reason;
- a conversion accepted twice was reported in doubt; reports of claims left by a killed run are
  at most restarts x max_concurrency, reports of postbacks without an answer at most the slow
  answers and dropped connections injected into that soak (plus the few requests that timed out
  on their own on a busy machine, at most 1%, shown in the figures);
- with ``in_doubt: dead_letter``: none accepted twice, and every in-doubt one is dead-lettered;
- the totals add up: every run that finished wrote its summary (``summary_path`` per run) where
  records read = delivered + skipped + dead-lettered = the records of its input, its delivered
  count equals the ledger rows that run recorded as delivered (for a frozen run and the run that
  took over from it, together: at most the takeover's in-doubt reports more, the postbacks the
  frozen run had in flight, which both may count), and its ``in_doubt`` count equals its in-doubt
  log lines; over all runs, killed ones included, the conversions the ledger recorded as
  delivered and those dead-lettered are all of them.

The figures (conversions, faults injected, restarts, in-doubt, duplicates, lost) are printed at
the end of the test session, written to ``soak-figures.json`` in the test's directory, and part
of every assertion message. ``make test`` runs this; ``make test-fast`` leaves it out.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import (
    DEAD_LETTERS_ON_PURPOSE,
    FIGURES,
    dead_letter_records,
    pg_execute,
    postgres_url,
    read_jsonl,
    run_in_process,
    singer_lines,
    stop,
    track,
)
from tests.receiver import Answer, Receiver, ReceiverProcess, read_log

CONVERSIONS = int(os.environ.get("TARGET_EVERFLOW_SOAK_CONVERSIONS", "10000"))
SEED = int(os.environ.get("TARGET_EVERFLOW_SOAK_SEED", "20261128"))
KILLS = 4
PAUSES = 2
MAX_RUNS = 20  # kills, pauses (two runs each), runs that stopped on their own (exit 3), plus one
MAX_CONCURRENCY = 32
BATCH_SIZE = 1000  # a STATE per batch: each faulted run delivers at least one first
STATE_EVERY = 250
FAULT_MIX = {
    "429": 0.001, "503": 0.099, "slow": 0.005, "drop": 0.005, "204": 0.002,
    "slow_seconds": 1.0, "retry_after": "0",
}  # fmt: skip
SOAKS = [
    ("resend", "sqlite", "rs"),
    ("dead_letter", "sqlite", "ds"),
    ("resend", "postgres", "rp"),
    ("dead_letter", "postgres", "dp"),
]  # + transaction id prefix

IN_DOUBT = re.compile(
    r"In doubt: conversion (\S+) \(stream (\S+), event '([^']*)', transaction (\S+)\) "
    r"(was claimed by a run that stopped|got no answer)"
)
OWNER = re.compile(r"ledger \S+ opened \(owner (\S+)\)")
LEDGER_TABLE = "everflow_ledger"
TOOK_OVER = re.compile(r"took over \d+ claim\(s\) of (\S+) \([^)]*\), (\d+) of them in doubt")


@dataclass
class Run:
    number: int
    resume: int
    records: int
    killed: bool = False
    code: int | None = None
    states: list[dict] = field(default_factory=list)
    owner: str | None = None
    summary: dict | None = None
    crash_reports: set[str] = field(default_factory=set)
    no_answer_reports: list[str] = field(default_factory=list)
    in_doubt_lines: int = 0
    paused: bool = False
    takeovers: list[tuple[str, int]] = field(default_factory=list)  # (previous owner, in doubt)
    proc: subprocess.Popen[bytes] | None = None


class Soak:
    """One soak: its input, its ledger, its runs, its kills and pauses."""

    def __init__(
        self, in_doubt: str, ledger: str, prefix: str, root: Path, url: str, log_path: Path
    ) -> None:
        self.in_doubt = in_doubt
        self.ledger = ledger
        self.prefix = prefix
        self.root = root
        self.url = url
        self.name = f"{in_doubt}/{ledger}"
        self.rng = random.Random(f"{SEED}:{in_doubt}:{ledger}")
        faults = ["kill"] * KILLS + ["pause"] * PAUSES
        self.rng.shuffle(faults)
        self.faults = faults
        self.runs: list[Run] = []
        self.error: BaseException | None = None
        self.table = f"soak_{prefix}_{os.getpid()}_{random.randrange(10**6)}"
        self.log_path = log_path
        self._log_offset = 0
        self._log_requests = 0
        root.mkdir(parents=True, exist_ok=True)

    def tx(self, i: int) -> str:
        return f"{self.prefix}-{i}"

    def record(self, i: int) -> dict:
        return track(i, tid=self.tx(i))

    def input_from(self, start: int, path: Path) -> int:
        with path.open("w", encoding="utf-8") as out:
            out.write(singer_lines("segment_tracks", [])[0] + "\n")
            for i in range(start, CONVERSIONS):
                out.write(
                    json.dumps(
                        {"type": "RECORD", "stream": "segment_tracks", "record": self.record(i)}
                    )
                    + "\n"
                )
                if (i + 1) % STATE_EVERY == 0:
                    out.write(json.dumps({"type": "STATE", "value": {"upto": i}}) + "\n")
        return CONVERSIONS - start

    def app(self, number: int) -> str:
        return f"soak-{self.table}-{number}"  # a run's PostgreSQL session, in pg_stat_activity

    def config(self, run_dir: Path, number: int) -> dict:
        config = {
            "postback_url": self.url, "network_id": 1,
            "event_mapping": {"Order Completed": 0},
            "dead_letter_path": str(self.root / "state" / "dead_letter.jsonl"),  # the SQLite ledger is beside it
            "summary_path": str(run_dir / "summary.json"), "progress_interval": 0,
            "max_concurrency": MAX_CONCURRENCY, "batch_size_rows": BATCH_SIZE, "request_timeout": 0.5,
            "in_doubt": self.in_doubt,
        }  # fmt: skip
        if self.ledger == "postgres":
            base = postgres_url()
            sep = "&" if "?" in base else "?"
            config["ledger_url"] = (
                f"{base}{sep}table={self.table}&application_name={self.app(number)}"
            )
        return config

    # -- the ledger, from outside ----------------------------------------------------------------

    def sql(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run ``sql`` (``{t}``: the table, ``?``: placeholders) on this soak's ledger."""
        if self.ledger == "sqlite":
            conn = sqlite3.connect(
                self.root / "state" / "ledger.sqlite3", timeout=5, isolation_level=None
            )
            try:
                return conn.execute(sql.format(t=LEDGER_TABLE), params).fetchall()
            finally:
                conn.close()
        return pg_execute(sql.format(t=self.table).replace("?", "%s"), params)

    def in_transaction(self, number: int) -> bool:
        """Does run ``number`` hold a ledger transaction open (frozen, it would block others)?"""
        if self.ledger == "sqlite":
            conn = sqlite3.connect(
                self.root / "state" / "ledger.sqlite3", timeout=0, isolation_level=None
            )
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return True
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                conn.close()
            return False
        return bool(pg_execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                               " AND state <> 'idle'", (self.app(number),))[0][0])  # fmt: skip

    def drop(self) -> None:
        if self.ledger == "postgres":
            self.sql("DROP TABLE IF EXISTS {t}")

    # -- the runs --------------------------------------------------------------------------------

    def drive(self) -> None:
        try:
            self._drive()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _start(self, number: int, resume: int) -> Run:
        run_dir = self.root / f"run-{number}"
        run_dir.mkdir()
        run = Run(number, resume, self.input_from(resume, run_dir / "input.singer"))
        (run_dir / "config.json").write_text(json.dumps(self.config(run_dir, number)))
        with (run_dir / "stdout").open("wb") as out, (run_dir / "stderr").open("wb") as err:
            run.proc = subprocess.Popen(
                [sys.executable, "-m", "target_everflow", "--config", str(run_dir / "config.json"),
                 "--input", str(run_dir / "input.singer")],
                stdout=out, stderr=err, cwd=run_dir,
            )  # fmt: skip
        self.runs.append(run)
        return run

    def _end(self, run: Run, timeout: float = 600) -> None:
        assert run.proc is not None
        try:
            run.code = run.proc.wait(timeout)
        finally:
            if run.proc.poll() is None:
                os.kill(run.proc.pid, signal.SIGCONT)
                run.proc.kill()
                run.proc.wait()
        self._read_run(run, self.root / f"run-{run.number}")

    def _drive(self) -> None:
        resumed: list[Run] = []  # frozen runs woken up again: they run on beside the others
        try:
            run = self._start(0, 0)
            while True:
                if self.faults and self._fault_moment(run):
                    fault = self.faults.pop(0)
                    if fault == "pause":
                        taker = self._pause_and_take_over(run)
                        if taker is not run:
                            resumed.append(run)
                            run = taker  # the next fault may hit the run that took over
                            continue
                    else:
                        assert run.proc is not None
                        os.kill(run.proc.pid, signal.SIGKILL)
                        run.killed = True
                self._end(run)
                if run.code == 0:
                    break
                resume = (
                    run.states[-1]["upto"] if run.states else run.resume
                )  # inclusive, as taps resume
                if len(self.runs) >= MAX_RUNS:
                    raise AssertionError(
                        f"soak {self.name}: the input was not done after {MAX_RUNS} runs"
                    )
                run = self._start(len(self.runs), resume)
            for frozen in resumed:
                self._end(frozen)
        finally:
            for run in self.runs:
                if run.proc is not None and run.proc.poll() is None:
                    os.kill(run.proc.pid, signal.SIGCONT)
                    run.proc.kill()
                    run.proc.wait()

    def _fault_moment(self, run: Run) -> bool:
        """Wait for the moment of the next fault: once the run has delivered a batch (a STATE:
        so every faulted run moves the soak on), after a seeded number of further requests
        (mid-batch). By progress, not by time: the same faults land on a fast or a slow machine.
        False: the run ended first."""
        assert run.proc is not None
        extra = self.rng.randint(0, BATCH_SIZE * 4 // 5)
        stdout = self.root / f"run-{run.number}" / "stdout"
        baseline: int | None = None
        deadline = time.monotonic() + 600
        while run.proc.poll() is None:
            assert time.monotonic() < deadline, (
                f"soak {self.name}: run {run.number} made no progress"
            )
            if baseline is None:
                if any(
                    line.startswith("{") for line in stdout.read_text(errors="replace").splitlines()
                ):
                    baseline = self._requests_so_far()
            elif self._requests_so_far() >= baseline + extra:
                return True
            time.sleep(0.02)
        return False

    def _requests_so_far(self) -> int:
        """Requests of this soak in the receiver's log so far (read on from where it left off)."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            chunk = log.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._log_offset += len(complete)
        self._log_requests += complete.count(f'"transaction_id": "{self.prefix}-'.encode())
        return self._log_requests

    def _pause_and_take_over(self, frozen: Run) -> Run:
        """Freeze ``frozen`` outside a ledger transaction, let its leases run out, start the
        run that takes over from its last STATE, and resume the frozen one a little later."""
        assert frozen.proc is not None
        pid = frozen.proc.pid
        stderr = self.root / f"run-{frozen.number}" / "stderr"
        deadline = time.monotonic() + 60
        while not (
            opened := OWNER.search(stderr.read_text(errors="replace"))
        ):  # its ledger is open
            if frozen.proc.poll() is not None:
                return frozen  # ended before it could be paused
            assert time.monotonic() < deadline, (
                f"soak {self.name}: run {frozen.number} never opened its ledger"
            )
            time.sleep(0.05)
        stop(pid)
        for _ in range(200):
            if not self.in_transaction(frozen.number):
                break
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.01)
            stop(pid)
        else:
            raise AssertionError(
                f"soak {self.name}: run {frozen.number} never left its ledger transaction"
            )
        frozen.paused = True
        # What 60 s of frozen wall time does to its claims (the lease minimum), without the wait.
        # (Retried: a live run's transaction may hold one of these rows, e.g. a delivered mark.)
        for attempt in range(20):
            try:
                self.sql("UPDATE {t} SET lease_until = 0 WHERE owner = ? AND status IN ('pending', 'sending')",
                         (opened.group(1),))  # fmt: skip
                break
            except Exception:  # a deadlock or a busy database: again
                if attempt == 19:
                    raise
                time.sleep(0.1)
        states = []
        for line in (
            (self.root / f"run-{frozen.number}" / "stdout").read_text(errors="replace").splitlines()
        ):
            with contextlib.suppress(ValueError):
                states.append(json.loads(line))
        taking_over = self._start(len(self.runs), states[-1]["upto"] if states else frozen.resume)
        assert taking_over.proc is not None
        before = self._requests_so_far()  # the frozen run wakes up once this one is sending
        deadline = time.monotonic() + 600
        while (
            taking_over.proc.poll() is None
            and self._requests_so_far() < before + self.rng.randint(1, BATCH_SIZE)
        ):
            assert time.monotonic() < deadline, (
                f"soak {self.name}: run {taking_over.number} made no progress"
            )
            time.sleep(0.02)
        os.kill(pid, signal.SIGCONT)
        return taking_over

    @staticmethod
    def _read_run(run: Run, run_dir: Path) -> None:
        for line in (run_dir / "stdout").read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                run.states.append(json.loads(line))
            except ValueError:
                pass  # a STATE line torn by the kill
        stderr = (run_dir / "stderr").read_text(encoding="utf-8", errors="replace")
        owner = OWNER.search(stderr)
        run.owner = owner.group(1) if owner else None
        run.takeovers = [(m.group(1), int(m.group(2))) for m in TOOK_OVER.finditer(stderr)]
        for match in IN_DOUBT.finditer(stderr):
            run.in_doubt_lines += 1
            if match.group(5).startswith("was claimed"):
                run.crash_reports.add(match.group(4))
            else:
                run.no_answer_reports.append(match.group(4))
        if (run_dir / "summary.json").exists():
            run.summary = json.loads((run_dir / "summary.json").read_text())
        if not run.killed:
            assert "Traceback" not in stderr, stderr[-3000:]

    # -- the verdict ---------------------------------------------------------------------------

    def figures(self, log: list[dict]) -> dict[str, t.Any]:
        mine = [e for e in log if str(e.get("transaction_id") or "").startswith(f"{self.prefix}-")]
        accepted = collections.Counter(e["transaction_id"] for e in mine if e["accepted"])
        faults = collections.Counter(e["fault"] for e in mine if e.get("fault"))
        dead = collections.defaultdict(list)
        for line in dead_letter_records(self.root / "state" / "dead_letter.jsonl"):
            dead[line["record"]["context"]["referrer"]["id"]].append(line["reason"])
        everyone = [self.tx(i) for i in range(CONVERSIONS)]
        crash = set().union(*(r.crash_reports for r in self.runs))
        no_answer = [tx for r in self.runs for tx in r.no_answer_reports]
        # A postback can also time out on its own on a busy machine (the fake answered, late):
        # honestly reported in doubt, but not one of the injected faults.
        unanswerable = {e["transaction_id"] for e in mine if e.get("fault") in ("slow", "drop")}
        return {
            "in_doubt": self.in_doubt,
            "ledger": self.ledger,
            "conversions": CONVERSIONS,
            "requests": len(mine),
            "faults_injected": dict(sorted(faults.items())),
            "runs": len(self.runs),
            "restarts": len(self.runs) - 1,
            "killed": sum(r.killed for r in self.runs),
            "paused": sum(r.paused for r in self.runs),
            "claimed_elsewhere": sum((r.summary or {}).get("skipped", {}).get("claimed_elsewhere", 0) for r in self.runs),
            "stopped_on_their_own": sum(1 for r in self.runs if not r.killed and r.code != 0),
            "in_doubt_after_a_kill": len(crash),
            "in_doubt_without_an_answer": len(no_answer),
            "of_which_timed_out_on_their_own": sum(1 for tx in no_answer if tx not in unanswerable),
            "accepted": len(accepted),
            "duplicates": sum(1 for n in accepted.values() if n > 1),
            "duplicates_reported": sum(1 for tx, n in accepted.items() if n > 1 and (tx in crash or tx in no_answer)),
            "dead_lettered": dict(sorted(collections.Counter(r for rs in dead.values() for r in rs).items())),
            "lost": sum(1 for tx in everyone if tx not in accepted and tx not in dead),
            "_accepted": accepted, "_dead": dead, "_crash": crash, "_no_answer": set(no_answer),
        }  # fmt: skip

    def ledger_delivered_by_owner(self) -> dict[str, set[int]]:
        rows = self.sql("SELECT owner, delivery_key FROM {t} WHERE status = 'delivered'")
        out: dict[str, set[int]] = collections.defaultdict(set)
        for owner, key in rows:
            out[owner].add(int(key.rsplit("-", 1)[1]))  # m:msg-<i>
        return out

    def check(self, figures: dict, shown: str) -> None:
        accepted, dead = figures["_accepted"], figures["_dead"]
        assert figures["lost"] == 0, f"conversions lost\n{shown}"
        twice = {tx for tx, n in accepted.items() if n > 1}
        unreported = twice - figures["_crash"] - figures["_no_answer"]
        assert not unreported, (
            f"accepted twice without an in-doubt report: {sorted(unreported)[:10]}\n{shown}"
        )
        assert figures["in_doubt_after_a_kill"] <= figures["restarts"] * MAX_CONCURRENCY, shown
        no_answer_faults = figures["faults_injected"].get("slow", 0) + figures[
            "faults_injected"
        ].get("drop", 0)
        natural = figures["of_which_timed_out_on_their_own"]
        assert figures["in_doubt_without_an_answer"] - natural <= no_answer_faults, shown
        assert natural <= CONVERSIONS // 100, (
            f"too many timeouts without an injected fault\n{shown}"
        )

        assert figures["killed"] >= 2, f"the soak was meant to be killed several times\n{shown}"
        assert figures["paused"] >= 1, f"the soak was meant to be paused and taken over\n{shown}"
        if self.in_doubt == "dead_letter":
            assert twice == set(), (
                f"in_doubt=dead_letter, yet accepted twice: {sorted(twice)[:10]}\n{shown}"
            )
            for tx in figures["_crash"] | figures["_no_answer"]:
                assert "in_doubt" in dead.get(tx, []), (
                    f"{tx} was in doubt but not dead-lettered\n{shown}"
                )
        # The totals add up.
        by_owner = self.ledger_delivered_by_owner()
        delivered = set().union(*by_owner.values()) if by_owner else set()
        dead_ids = {int(tx.rsplit("-", 1)[1]) for tx in dead}
        assert delivered | dead_ids == set(range(CONVERSIONS)), (
            f"ledger + dead letters != all\n{shown}"
        )
        finished = [r for r in self.runs if not r.killed]
        assert any(r.code == 0 for r in finished), shown
        for run in finished:
            s = run.summary
            assert s is not None, f"run {run.number} wrote no summary\n{shown}"
            outcomes = (
                s["delivered"] + sum(s["skipped"].values()) + sum(s["dead_lettered"].values())
            )
            assert s["records_read"] == outcomes == run.records, (run.number, s, shown)
            assert s["in_doubt"] == run.in_doubt_lines, (
                run.number,
                s["in_doubt"],
                run.in_doubt_lines,
                shown,
            )
            # Its delivered count is the ledger rows it recorded. Around a takeover of a frozen
            # run (by whichever live run claims them first) a postback the frozen run had in
            # flight may be counted by both (it got the answer; the other resent it, or found it
            # delivered): each was a claim taken over in doubt, which bounds the difference.
            rows = len(by_owner.get(run.owner or "", ()))
            frozen = {r.owner for r in self.runs if r.paused}
            slack = sum(
                n
                for r in self.runs
                for owner, n in r.takeovers
                if owner == run.owner and owner in frozen
            )
            slack += sum(n for owner, n in run.takeovers if owner in frozen)
            assert rows <= s["delivered"] <= rows + slack, (
                run.number,
                s["delivered"],
                rows,
                slack,
                shown,
            )
        total_dead = sum(len(v) for v in dead.values())
        assert sum(sum(r.summary["dead_lettered"].values()) for r in finished) <= total_dead, shown


def public(figures: dict) -> dict:
    return {k: v for k, v in figures.items() if not k.startswith("_")}


@pytest.mark.soak
@pytest.mark.postgres
def test_soak(tmp_path: Path) -> None:
    postgres_url()  # both ledgers, always
    started = time.monotonic()
    log = tmp_path / "receiver.jsonl"
    soaks: list[Soak] = []
    try:
        with ReceiverProcess(fault_mix=FAULT_MIX, seed=SEED, log_path=log) as rx:
            soaks = [Soak(mode, ledger, prefix, tmp_path / f"{mode}-{ledger}", rx.url, log)
                     for mode, ledger, prefix in SOAKS]  # fmt: skip
            threads = [threading.Thread(target=s.drive, name=f"soak-{s.name}") for s in soaks]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        entries = read_log(log)
        all_figures = [s.figures(entries) for s in soaks]
        wall = round(time.monotonic() - started, 1)
        shown = json.dumps({"seconds": wall, "soaks": [public(f) for f in all_figures]}, indent=1)
        (tmp_path / "soak-figures.json").write_text(shown + "\n")
        print(f"\nfault soak figures ({tmp_path / 'soak-figures.json'}):\n{shown}")
        for (
            f
        ) in all_figures:  # shown at the end of the session (tests/conftest.py), with or without -s
            FIGURES.append(
                f"fault soak, in_doubt={f['in_doubt']}, {f['ledger']}: {f['conversions']} conversions, "
                f"{f['requests']} requests, faults {f['faults_injected']}, {f['restarts']} restarts "
                f"({f['killed']} SIGKILL, {f['paused']} paused and taken over: {f['claimed_elsewhere']} claims lost "
                f"and not sent), in doubt {f['in_doubt_after_a_kill']} after a kill or takeover + "
                f"{f['in_doubt_without_an_answer']} without an answer, {f['duplicates']} duplicates "
                f"({f['duplicates_reported']} reported), lost {f['lost']}, dead letters {f['dead_lettered']}"
            )
        FIGURES.append(f"fault soak: {len(soaks)} soaks side by side took {wall} s (seed {SEED})")
        for soak in soaks:
            if soak.error is not None:
                raise AssertionError(
                    f"soak {soak.name} failed: {soak.error!r}\n{shown}"
                ) from soak.error
        for soak, figures in zip(soaks, all_figures):
            soak.check(figures, shown)
        assert sum(f["claimed_elsewhere"] for f in all_figures) > 0, (
            f"no pause ever cost a run a claim\n{shown}"
        )
    finally:
        for soak in soaks:
            with contextlib.suppress(Exception):
                soak.drop()


# --- the rules the soak relies on, one conversion at a time (fast, always run) --------------------


def live(base_config: dict, url: str, **changes: t.Any) -> dict:
    return {**base_config, "postback_url": url, "request_timeout": 0.5, **changes}


@pytest.mark.parametrize(
    "fault", [Answer.slow(2.0), Answer.drop(accepted=True)], ids=["slow", "dropped"]
)
def test_no_answer_is_in_doubt_and_resent(
    base_config: dict, fault: Answer, caplog: pytest.LogCaptureFixture
) -> None:
    """A postback left and no answer came back: Everflow has it, and the resend duplicates it.
    That is reported (the log line, the summary's in_doubt), as for a claim left by a crash."""
    with Receiver(script=Receiver.per_transaction({"tx-1": [fault]})) as rx:
        code, _ = run_in_process(
            live(base_config, rx.url), singer_lines("orders", [track(1), track(2)])
        )
        accepted = rx.count_by_transaction()
    assert code == 0
    assert accepted == {"tx-1": 2, "tx-2": 1}
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("In doubt")]
    assert (
        IN_DOUBT.match(line)
        and "transaction tx-1) got no answer" in line
        and "resending it" in line
    )
    summary = json.loads(Path(base_config["summary_path"]).read_text())
    assert (summary["delivered"], summary["in_doubt"], summary["dead_lettered"]) == (2, 1, {})


@pytest.mark.parametrize(
    "fault", [Answer.slow(2.0), Answer.drop(accepted=True)], ids=["slow", "dropped"]
)
def test_no_answer_with_in_doubt_dead_letter_is_never_sent_again(
    base_config: dict, fault: Answer
) -> None:
    config = live(base_config, "", in_doubt="dead_letter", **DEAD_LETTERS_ON_PURPOSE)
    with Receiver(script=Receiver.per_transaction({"tx-1": [fault]})) as rx:
        config["postback_url"] = rx.url
        code, _ = run_in_process(config, singer_lines("orders", [track(1), track(2)]))
        assert code == 0
        # the same input again (a re-run from an older STATE): held, not sent
        code, _ = run_in_process(config, singer_lines("orders", [track(1), track(2)]))
        assert code == 0
        accepted = rx.count_by_transaction()
        requests = collections.Counter(r.transaction_id for r in rx.requests)
    assert accepted == {"tx-1": 1, "tx-2": 1} and requests["tx-1"] == 1
    (dead,) = dead_letter_records(Path(config["dead_letter_path"]))
    assert (dead["reason"], dead["record"]["messageId"]) == ("in_doubt", "msg-1")
    assert "transaction tx-1" in dead["message"]
    summary = json.loads(Path(config["summary_path"]).read_text())
    assert summary["skipped"] == {"duplicate": 2}  # the second run: one delivered, one held


def test_connection_refused_is_not_in_doubt(base_config: dict, tmp_path: Path) -> None:
    """Nothing left: a plain transient failure, retried without a report."""
    with Receiver() as rx:
        url = rx.url
    code, _ = run_in_process(live(base_config, url, max_retries=1, in_doubt="dead_letter"),
                             singer_lines("orders", [track(1)]))  # fmt: skip
    assert code == 3
    summary = json.loads(Path(base_config["summary_path"]).read_text())
    assert summary["in_doubt"] == 0 and summary["dead_lettered"] == {}
    assert read_jsonl(Path(base_config["dead_letter_path"])) == []
