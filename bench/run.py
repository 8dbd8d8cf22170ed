"""target-everflow benchmarks (issue 7): mapping cost, delivery throughput, memory.

    make bench                                  # the defaults below: about 33 minutes on 2 cores
    make bench BENCH_ARGS=--quick               # smoke: tiny sizes, one run each
    make bench BENCH_ARGS=--only-trickle        # only the latency behind a streaming tap
    .venv/bin/python bench/run.py --help

Prints one table and writes it to ``bench/RESULTS.md`` with the machine's cores and Python
version. Every figure is the median of ``--repeats`` runs, and every comparison is measured side
by side in the same invocation (runs of the compared configurations are interleaved), because
on a shared machine only ratios measured together mean anything.

Every run is a separate process, started the way a pipeline starts it
(``python -m target_everflow --config c.json --input file``); its wall time (from start to
exit, interpreter start-up included) and its peak RSS (``wait4`` rusage of that child) are
measured from outside. The input is generated (``bench/generate.py``): web and mobile Segment
events, mixed event names, about 70% with an Everflow transaction id, raw, warehouse-shaped and
tap-flattened streams.

1. Mapping: target-everflow in dry run vs a do-nothing singer-sdk target (``noop_target.py``) that
   reads with the SDK's default message reader (so that a faster reader of ours counts as ours),
   record validation off, on the same ``--records`` input: the goal. Beside it, the do-nothing
   target with target-everflow's reader, and (unless ``--no-validate``) both with record
   validation on.
2. Delivery: live runs against the fake Everflow receiver (``tests/receiver.py``, a separate
   process) answering after a fixed ``--latency``, at each ``--concurrency``, ledger on (the
   default SQLite ledger); as a fraction of the bound concurrency / latency. Also the naive
   reference (``naive_target.py``: one blocking ``requests.get`` per record) and the ledger off
   (``ledger_url: none``) at concurrency 32, and the floor: ``bare_client.py`` sending the
   same requests (a dry run's planned postbacks) to the same receiver at concurrency 32 and
   128 with urllib3 at its plainest, its CPU per request beside the target's per delivered
   conversion. The receiver shares the machine's cores: its CPU per record is shown beside.
3. Memory: peak RSS over ``--memory-records`` records (100,000 and 1,000,000; fed through a
   pipe from the generator), once each: a dry run, and a live run (SQLite ledger on) against
   the receiver.
4. Latency behind a streaming tap (``--only-trickle`` runs only this): a tap that writes
   ``--trickle-rate`` records/s for ``--trickle-seconds`` through a pipe it keeps open, into a
   live target (default ``max_batch_age_seconds``) against the receiver with ``--latency``. For
   each record: from the moment the tap writes it to the moment the receiver sees its postback
   (its request log), and to the moment the STATE written after it appears on the target's
   stdout; p50 / p99 / max. The pipe is closed only once every postback arrived, so no record is
   delivered by the end of input. ``RESULTS.md``'s latency section is replaced on its own: a
   ``--only-trickle`` run keeps the rest of the file.
5. Scaling (``bench/SCALING.md``): ``--only-parallel`` runs N = ``--parallel-runs`` targets at
   once on one PostgreSQL ledger (``--postgres-url``), each its own ``--parallel-conversions``
   and, for N > 1, all on the same input, against a receiver answering in
   ``--parallel-latency``; the aggregate rate from the first postback to the last, the ledger's
   wait per conversion (what the ledger logs when closed), conversions accepted twice.
   ``--only-ledger-cost``: CPU per delivered conversion at concurrency 32 with the SQLite ledger
   and without one. Both beside ``--baseline``. The targets run with ``TARGET_EVERFLOW_CLOCK``
   pinned, so the generated events never age out.

The "before" figures: ``--baseline REF`` (default ``BASELINE_REF``) is unpacked from git and
its dry runs and its delivery at concurrency 32 and 128 run interleaved with the current code's,
in the same invocation.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from bench import bare_client, generate  # noqa: E402 - after the sys.path line above
from target_everflow.settings import schema_default  # noqa: E402 - after the sys.path line above
from tests.receiver import ReceiverProcess, read_log  # noqa: E402 - after the sys.path line above

PY = sys.executable
TOKEN = "bench-verification-token"
TARGET = [PY, "-m", "target_everflow"]
NOOP = [PY, str(BENCH / "noop_target.py")]
NAIVE = [PY, str(BENCH / "naive_target.py")]
BARE = [PY, str(BENCH / "bare_client.py")]


# --- running one child ------------------------------------------------------------------------


@dataclass
class Run:
    wall: float
    rss_mb: float
    code: int
    records: int
    cpu: float = 0.0
    """User + system CPU seconds of the process (steadier than wall time on a shared machine)."""
    summary: dict = field(default_factory=dict)
    receiver_cpu: float = 0.0
    """User + system CPU seconds of the delivery runs' receiver process, over the same run."""

    @property
    def rate(self) -> float:
        return self.records / self.wall

    @property
    def cpu_us(self) -> float:
        """CPU microseconds per record."""
        return self.cpu / self.records * 1e6

    @property
    def receiver_us(self) -> float:
        """The receiver's CPU microseconds per record."""
        return self.receiver_cpu / self.records * 1e6


class BenchError(RuntimeError):
    pass


def run_child(
    argv: list[str],
    *,
    records: int,
    workdir: Path,
    stdin_file: Path | None = None,
    generator: list[str] | None = None,
    summary: Path | None = None,
    source: Path = REPO,
    env: dict[str, str] | None = None,
) -> Run:
    """Run one target process to the end; its wall time and peak RSS (from ``wait4``).
    ``source``: the tree whose ``target_everflow`` runs (the baseline's, for "before");
    ``env``: added to the environment."""
    log = workdir / "stderr.log"
    env = {**os.environ, "PYTHONPATH": str(source), **(env or {})}
    with open(log, "wb") as err:
        feeder = None
        if generator is not None:
            feeder = subprocess.Popen(generator, stdout=subprocess.PIPE, env=env, cwd=workdir)
            stdin: t.Any = feeder.stdout
        else:
            stdin = open(stdin_file, "rb") if stdin_file else subprocess.DEVNULL
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=workdir
        )
        if feeder is not None and feeder.stdout is not None:
            feeder.stdout.close()  # the target holds the pipe now
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if feeder is not None:
            feeder.wait()
        elif stdin_file:
            stdin.close()
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise BenchError(f"{' '.join(argv[:3])} exited {proc.returncode}:\n{tail}")
    data = json.loads(summary.read_text()) if summary is not None and summary.exists() else {}
    return Run(
        wall,
        usage.ru_maxrss / 1024,
        proc.returncode,
        records,
        usage.ru_utime + usage.ru_stime,
        data,
    )


def fresh_dir(root: Path, name: str) -> Path:
    path = root / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


BASELINE_REF = "c10ff94"
"""The commit the "before" figures are measured from, side by side: main when issue 23's work
(parallel runs, the ledger's cost, delivery and mapping near their floors) began."""


def baseline_tree(root: Path, ref: str) -> Path | None:
    """``ref``'s source tree, unpacked under ``root`` (``git archive``), or None without git
    history (an unpacked sdist): the "before" figures are then the ones quoted."""
    tree = root / f"baseline-{ref}"
    if (tree / "target_everflow").is_dir():
        return tree
    tree.mkdir(parents=True, exist_ok=True)
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", ref],
            capture_output=True,
            check=True,
            timeout=120,
        )
        subprocess.run(
            ["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True, timeout=120
        )
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"  no baseline: cannot unpack {ref} ({exc}); the quoted figures stand", flush=True)
        shutil.rmtree(tree, ignore_errors=True)
        return None
    return tree


def compile_tree(tree: Path) -> None:
    """Byte-compile ``tree``'s ``target_everflow``, as installing a package does: with
    ``PYTHONDONTWRITEBYTECODE`` set (as on CI machines) every target process would otherwise
    compile the package from source at start-up, which the do-nothing target, whose
    singer-sdk came compiled with its install, never pays."""
    subprocess.run(
        [PY, "-m", "compileall", "-q", str(tree / "target_everflow")],
        check=True,
        timeout=300,
        stdout=subprocess.DEVNULL,
    )


def write_config(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config))
    return path


def base_config(run_dir: Path) -> dict:
    return {
        "network_id": 1,
        "advertiser_id": 7,
        "verification_token": TOKEN,
        "event_mapping": generate.EVENT_MAPPING,
        "dead_letter_path": str(run_dir / "state" / "dead_letter.jsonl"),
        "dry_run_output": str(run_dir / "dry_run.jsonl"),
        "summary_path": str(run_dir / "summary.json"),
        "progress_interval": 0,
    }


def input_file(root: Path, records: int, *, conversions: bool = False) -> Path:
    path = root / f"input-{'conversions' if conversions else 'mixed'}-{records}.singer"
    if not path.exists():
        generate.write(str(path), records, conversions_only=conversions)
    return path


def median(runs: list[Run], attr: str = "rate") -> float:
    return statistics.median(getattr(r, attr) for r in runs)


# --- the three benchmarks ---------------------------------------------------------------------


MAPPING_SERIES = (
    "noop_default_reader",
    "target",
    "before",
    "noop",
    "noop_validate",
    "target_validate",
    "before_validate",
)
MAPPING_GOAL = 0.8
"""The dry run (validation off): at least this fraction of the do-nothing target's records/s,
the do-nothing target reading with the SDK's default message reader."""


def bench_mapping(
    root: Path,
    records: int,
    repeats: int,
    *,
    validate: bool,
    baseline: Path | None,
) -> dict[str, list[Run]]:
    """Dry run vs the do-nothing target reading with the SDK's default reader, record
    validation off (target-everflow's default): the goal; beside it the do-nothing target with
    our reader, and with ``validate`` the dry run and that do-nothing target with validation
    on (the SDK's default); with ``baseline``, the baseline's dry runs too ("before"). Runs
    of one repeat are interleaved, in turn forwards and backwards."""
    source = input_file(root, records)
    runs: dict[str, list[Run]] = {name: [] for name in MAPPING_SERIES}
    for i in range(repeats):
        pairs: list[tuple[str, ...]] = [("noop_default_reader", "target", "before"), ("noop",)]
        if validate:
            pairs.append(("noop_validate", "target_validate", "before_validate"))
        if baseline is None:
            pairs = [tuple(w for w in pair if not w.startswith("before")) for pair in pairs]
        order = [name for pair in pairs for name in (pair if i % 2 == 0 else reversed(pair))]
        for which in order:
            run_dir = fresh_dir(root, f"mapping-{which}")
            validation = {"validate_records": which.endswith("_validate")}  # (else: off)
            if which.startswith(("target", "before")):
                cfg = write_config(
                    run_dir / "config.json", {**base_config(run_dir), "dry_run": True, **validation}
                )
                run = run_child(
                    [*TARGET, "--config", str(cfg), "--input", str(source)],
                    records=records,
                    workdir=run_dir,
                    summary=run_dir / "summary.json",
                    source=baseline if which.startswith("before") and baseline else REPO,
                )
                if run.summary.get("records_read") != records:
                    raise BenchError(
                        f"the target read {run.summary.get('records_read')} of {records} records"
                    )
            else:
                cfg = write_config(run_dir / "config.json", validation)
                argv = [*NOOP]
                if which == "noop_default_reader":
                    argv = [
                        PY,
                        "-c",
                        "import sys; sys.argv[0] = 'noop'; "
                        "from bench.noop_target import NoopTarget; "
                        "from singer_sdk.io_base import SingerReader; "
                        "NoopTarget.message_reader_class = SingerReader; NoopTarget.cli()",
                    ]
                run = run_child(
                    [*argv, "--config", str(cfg), "--input", str(source)],
                    records=records,
                    workdir=run_dir,
                )
            runs[which].append(run)
            print(
                f"  mapping  {which:<20} {run.rate:>9,.0f} records/s  {run.rss_mb:6.0f} MB",
                flush=True,
            )
    return runs


@dataclass
class Goal:
    """One goal of the performance issue, measured in this invocation, beside its figure before."""

    what: str
    now: str
    met: bool
    before: str
    issue: int = 23
    """The performance issue that set it (the earlier ones are kept: nothing may regress)."""

    def __str__(self) -> str:
        return (
            f"{self.what}: {self.now} ({'met' if self.met else 'NOT met'}; before: {self.before})"
        )


BEFORE_SOURCE = (
    "issue 23's figures, measured before its work (2026-12-06, 2 cores) and bench/RESULTS.md of "
    "2026-12-01"
)
BEFORE = {
    "mapping_default_reader": (
        "0.48x (issue 23: 100,000 mixed events, a do-nothing target with the SDK's default reader)"
    ),
    "c32": "49% (issue 23, a busier machine; 75% (1,202 records/s) on 2026-12-01)",
    "c128": "1,016 records/s (issue 23; 1,901 on 2026-12-01)",
    "bare": "not measured (no bare client)",
    "naive": "26.8x",
    "memory_dry": "105 MB (100,000 and 1,000,000 records)",
    "memory_live": "98 MB (100,000 and 1,000,000 records)",
    "latency": "5.00 s",
}
"""The figures before, as ``BEFORE_SOURCE`` recorded them (same machine kind, 2 cores)."""


def goals_table(goals: list[Goal]) -> str:
    """Issue 23's goals first, then the earlier issues' (kept so that none regresses)."""
    rows = ["| Goal | Issue | Now | Met | Before |", "| --- | ---: | --- | --- | --- |"]
    rows += [
        f"| {g.what} | {g.issue} | **{g.now}** | {'met' if g.met else 'NOT met'} | {g.before} |"
        for g in sorted(goals, key=lambda g: -g.issue)
    ]
    return "\n".join(rows)


BASELINE_CONCURRENCIES = (32, 128)
"""The delivery runs measured for the baseline too."""
DELIVERY_C32_GOAL = 0.8
"""Delivery at concurrency 32: at least this fraction of the bound (concurrency / latency)."""
DELIVERY_C128_GOAL = 2500
"""Delivery at concurrency 128: at least this many records/s."""
BARE_GOAL_CONCURRENCY = 128
BARE_GOAL = 2.0
"""At BARE_GOAL_CONCURRENCY, the target's CPU per delivered conversion (SQLite ledger on) is at
most this times the bare client's (``bare_client.py``) on the same requests."""


def bench_delivery(
    root: Path,
    conversions: int,
    repeats: int,
    concurrencies: list[int],
    latency: float,
    seconds: float,
    baseline: Path | None,
) -> dict[str, list[Run]]:
    """Live runs at each concurrency, the ledger off at 32, the naive target; with
    ``baseline``, the baseline at 32 and 128 too ("before")."""

    def size(concurrency: int) -> int:
        # Enough for about `seconds` at the bound, at most --conversions.
        return int(max(200, min(conversions, round(concurrency / latency * seconds, -2))))

    plans: list[tuple[str, list[str] | None, int, dict, Path]] = []
    for c in concurrencies:
        plans.append((f"c{c}", None, size(c), {"max_concurrency": c}, REPO))
        if baseline is not None and c in BASELINE_CONCURRENCIES:
            plans.append((f"before_c{c}", None, size(c), {"max_concurrency": c}, baseline))
    plans.append(
        ("c32_no_ledger", None, size(32), {"max_concurrency": 32, "ledger_url": "none"}, REPO)
    )
    plans.append(("naive", NAIVE, size(1), {}, REPO))
    targets: dict[int, Path] = {}  # the bare client's requests, by input size
    for c in concurrencies:
        if c in BASELINE_CONCURRENCIES:
            plans.append((f"bare_c{c}", BARE, size(c), {"concurrency": c}, REPO))
            targets.setdefault(size(c), bare_targets(root, size(c)))
    runs: dict[str, list[Run]] = {name: [] for name, *_ in plans}
    for i in range(repeats):
        ordered = plans if i % 2 == 0 else list(reversed(plans))
        for name, argv, n, extra, tree in ordered:
            source = input_file(root, n, conversions=True)
            run_dir = fresh_dir(root, f"delivery-{name}")
            before = _children_cpu()
            with ReceiverProcess(latency=latency) as rx:
                cfg = {
                    **base_config(run_dir),
                    "postback_url": rx.url,
                    "request_timeout": 30,
                    **extra,
                }
                path = write_config(run_dir / "config.json", cfg)
                command = [*(argv or TARGET), "--config", str(path), "--input", str(source)]
                if argv is BARE:
                    command = [*BARE, "--url", rx.url, "--targets", str(targets[n])]
                    command += ["--concurrency", str(extra["concurrency"])]
                run = run_child(
                    command,
                    records=n,
                    workdir=run_dir,
                    summary=None if argv else run_dir / "summary.json",
                    source=tree,
                )
            # The receiver is reaped on leaving the block: the children's CPU that is not the
            # target's is its own.
            run.receiver_cpu = max(0.0, _children_cpu() - before - run.cpu)
            if argv is None and run.summary.get("delivered") != n:
                raise BenchError(
                    f"{name}: {run.summary.get('delivered')} of {n} delivered: {run.summary}"
                )
            runs[name].append(run)
            print(
                f"  delivery {name:<20} {run.rate:>9,.0f} records/s  ({n} records; CPU "
                f"{run.cpu_us:.0f} µs/record, receiver {run.receiver_us:.0f})",
                flush=True,
            )
    return runs


def bare_targets(root: Path, n: int) -> Path:
    """The request targets the live runs on the ``n`` conversions' input send, for the bare
    client: a dry run's planned postbacks, with the real token."""
    run_dir = fresh_dir(root, f"delivery-plan-{n}")
    cfg = write_config(run_dir / "config.json", {**base_config(run_dir), "dry_run": True})
    source = input_file(root, n, conversions=True)
    run_child([*TARGET, "--config", str(cfg), "--input", str(source)], records=n, workdir=run_dir)
    with open(run_dir / "dry_run.jsonl", encoding="utf-8") as planned:
        lines = bare_client.request_targets(planned, TOKEN)
    if len(lines) != n:
        raise BenchError(f"the dry run planned {len(lines)} of {n} postbacks")
    path = root / f"bare-targets-{n}.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


MEMORY_CONCURRENCY = 64
"""max_concurrency of the live memory runs (enough that 1,000,000 records take minutes)."""
MEMORY_GOAL_MB = 200
"""Peak RSS of every memory run, dry and live, stays below this."""


def bench_memory(root: Path, sizes: list[int], latency: float) -> dict[str, dict[int, Run]]:
    """Peak RSS over ``sizes`` records fed through a pipe: a dry run, and a live run (SQLite
    ledger on) against the receiver. Each size once: the figure is a peak, not a speed."""
    out: dict[str, dict[int, Run]] = {"dry": {}, "live": {}}
    for mode in ("dry", "live"):
        for n in sizes:
            run_dir = fresh_dir(root, f"memory-{mode}-{n}")
            before = _children_cpu()
            with contextlib.ExitStack() as stack:
                extra: dict[str, t.Any] = {"dry_run": True}
                if mode == "live":
                    rx = stack.enter_context(ReceiverProcess(latency=latency))
                    extra = {
                        "postback_url": rx.url,
                        "request_timeout": 30,
                        "max_concurrency": MEMORY_CONCURRENCY,
                    }
                cfg = write_config(run_dir / "config.json", {**base_config(run_dir), **extra})
                run = run_child(
                    [*TARGET, "--config", str(cfg)],
                    records=n,
                    workdir=run_dir,
                    generator=[PY, str(BENCH / "generate.py"), "--records", str(n)],
                    summary=run_dir / "summary.json",
                )
            if mode == "live":
                run.receiver_cpu = max(0.0, _children_cpu() - before - run.cpu)
            if run.summary.get("records_read") != n:
                raise BenchError(
                    f"memory run ({mode}) read {run.summary.get('records_read')} of {n} records"
                )
            out[mode][n] = run
            print(
                f"  memory   {mode:<4} {n:>10,} records  peak RSS {run.rss_mb:6.0f} MB  "
                f"({run.rate:,.0f} records/s, {run.summary.get('delivered', 0):,} "
                f"{'planned' if mode == 'dry' else 'delivered'})",
                flush=True,
            )
    return out


@dataclass
class Trickle:
    records: int
    rate: float
    age: float
    latency: float
    delivery: list[float]
    """Seconds from the tap writing each record to the receiver seeing its postback."""
    state: list[float]
    """Seconds from the tap writing each record to the STATE written after it on stdout."""
    delivered: int
    wall: float
    cpu: float


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]  # nearest rank


def bench_trickle(root: Path, rate: float, seconds: float, latency: float) -> Trickle:
    """A streaming tap: ``rate`` records/s for ``seconds`` through a pipe that stays open."""
    run_dir = fresh_dir(root, "trickle")
    log = run_dir / "requests.jsonl"
    n = max(1, round(rate * seconds))
    age = float(schema_default("max_batch_age_seconds"))
    gen = generate.Generator(7, conversions_only=True)
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    written: dict[str, float] = {}
    states_seen: list[tuple[float, int]] = []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with (
        ReceiverProcess(latency=latency, log_path=log) as rx,
        open(run_dir / "stderr.log", "wb") as err,
    ):
        cfg = write_config(
            run_dir / "config.json",
            {**base_config(run_dir), "postback_url": rx.url, "request_timeout": 30},
        )
        started = time.perf_counter()
        proc = subprocess.Popen(
            [*TARGET, "--config", str(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            cwd=run_dir,
        )
        assert proc.stdin is not None and proc.stdout is not None
        stdout = proc.stdout

        def read_states() -> None:
            for line in stdout:
                if line.strip():
                    states_seen.append((time.time(), json.loads(line)["bookmarks"]["position"]))

        reader = threading.Thread(target=read_states, daemon=True)
        reader.start()
        try:
            # Ready: the target echoes a STATE that covers no record once it reads its input
            # (start-up, the ledger, ... are not latency behind a tap).
            proc.stdin.write(
                (
                    dumps(
                        {
                            "type": "SCHEMA",
                            "stream": generate.RAW,
                            "schema": generate.RAW_SCHEMA,
                            "key_properties": [],
                        }
                    )
                    + "\n"
                    + dumps({"type": "STATE", "value": {"bookmarks": {"position": 0}}})
                    + "\n"
                ).encode()
            )
            proc.stdin.flush()
            ready = time.monotonic() + 60
            while not states_seen and proc.poll() is None and time.monotonic() < ready:
                time.sleep(0.05)
            begin = time.monotonic()
            for i in range(n):
                pause = begin + i / rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                record = gen.raw_web()
                tid = f"trickle-{i}"
                record["context"]["referrer"] = {"type": "everflow", "id": tid}
                line = (
                    dumps({"type": "RECORD", "stream": generate.RAW, "record": record})
                    + "\n"
                    + dumps({"type": "STATE", "value": {"bookmarks": {"position": i + 1}}})
                    + "\n"
                )
                written[tid] = time.time()
                proc.stdin.write(line.encode())
                proc.stdin.flush()
            # The pipe stays open until every postback arrived (or age + 60 s passed): the last
            # records too must be delivered by age, not by the end of input.
            deadline = time.monotonic() + age + 60
            while time.monotonic() < deadline:
                if len({e["transaction_id"] for e in read_log(log) if e["accepted"]}) >= n:
                    break
                time.sleep(0.2)
            proc.stdin.close()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            wall = time.perf_counter() - started
            reader.join(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.returncode != 0:
        tail = (run_dir / "stderr.log").read_text(errors="replace")[-3000:]
        raise BenchError(f"the trickle target exited {proc.returncode}:\n{tail}")
    seen: dict[str, float] = {}
    for entry in read_log(log):
        if entry["accepted"]:
            seen.setdefault(entry["transaction_id"], entry["wall"])
    delivery = [seen[tid] - at for tid, at in written.items() if tid in seen]
    state = []
    for i, at in enumerate(written.values()):
        covering = [when for when, position in states_seen if position >= i + 1]
        if covering:
            state.append(min(covering) - at)
    result = Trickle(
        n, rate, age, latency, delivery, state, len(seen), wall, usage.ru_utime + usage.ru_stime
    )
    print(
        f"  trickle  {n} records at {rate:g}/s: delivery p50 {_percentile(delivery, 50):.2f} s, "
        f"p99 {_percentile(delivery, 99):.2f} s; STATE p50 {_percentile(state, 50):.2f} s, "
        f"p99 {_percentile(state, 99):.2f} s ({len(seen)} of {n} delivered)",
        flush=True,
    )
    return result


# --- the table ----------------------------------------------------------------------------------


def _n(x: float) -> str:
    return f"{x:,.0f}"


def table(
    mapping: dict[str, list[Run]] | None,
    delivery: dict[str, list[Run]] | None,
    memory: dict[str, dict[int, Run]] | None,
    *,
    latency: float,
    concurrencies: list[int],
    baseline: str | None,
) -> tuple[str, list[Goal]]:
    rows = [
        "| Benchmark | Configuration | Records | Records/s (median) | Compared | CPU µs/record | Peak RSS |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    goals: list[Goal] = []
    if mapping:
        n = mapping["target"][0].records

        def rss(k: str) -> str:
            return f"{median(mapping[k], 'cpu_us'):.0f} | {median(mapping[k], 'rss_mb'):.0f} MB"

        off = "record validation off (target-everflow's default)"
        # The goal: the dry run against the do-nothing target reading with the SDK's default
        # reader (so that a faster reader of ours counts as ours).
        floor, ours = median(mapping["noop_default_reader"]), median(mapping["target"])
        rows.append(
            f"| mapping | do-nothing singer-sdk target (BatchSink), the SDK's default (json) "
            f"reader, {off} | {_n(n)} | {_n(floor)} | 1.00x | {rss('noop_default_reader')} |"
        )
        rows.append(
            f"| mapping | target-everflow dry run, {off} | {_n(n)} | {_n(ours)} | "
            f"**{ours / floor:.2f}x** the do-nothing target | {rss('target')} |"
        )
        before = BEFORE["mapping_default_reader"]
        if mapping["before"]:
            then = median(mapping["before"])
            rows.append(
                f"| mapping | before ({baseline}): target-everflow dry run, {off} | {_n(n)} | "
                f"{_n(then)} | {then / floor:.2f}x the do-nothing target | {rss('before')} |"
            )
            before = f"{then / floor:.2f}x measured beside it ({baseline}); {before} recorded"
        goals.append(
            Goal(
                f"dry run >= {MAPPING_GOAL}x the do-nothing target with the SDK's default "
                "reader, validation off",
                f"{ours / floor:.2f}x",
                ours / floor >= MAPPING_GOAL,
                before,
            )
        )
        # Beside it: the do-nothing target with our reader, and both with validation on.
        for suffix, label in (("", off), ("_validate", "record validation on (the SDK's default)")):
            if not mapping["noop" + suffix]:
                continue
            noop = median(mapping["noop" + suffix])
            rows.append(
                f"| mapping | do-nothing target with target-everflow's reader, {label} | {_n(n)} "
                f"| {_n(noop)} | {noop / floor:.2f}x | {rss('noop' + suffix)} |"
            )
            for who in ("target", "before"):
                if not mapping[who + suffix]:
                    continue
                dry = median(mapping[who + suffix])
                what = "" if who == "target" else f"before ({baseline}): "
                rows.append(
                    f"| mapping | {what}target-everflow dry run, {label} | {_n(n)} | {_n(dry)} "
                    f"| {dry / noop:.2f}x the do-nothing target with our reader "
                    f"| {rss(who + suffix)} |"
                )
    if delivery:

        def cpu(runs: list[Run]) -> str:
            return (
                f"{median(runs, 'cpu_us'):.0f} (receiver {median(runs, 'receiver_us'):.0f}) "
                f"| {median(runs, 'rss_mb'):.0f} MB"
            )

        for c in concurrencies:
            for prefix, who in (("", ""), ("before_", f"before ({baseline}): ")):
                runs = delivery.get(f"{prefix}c{c}", [])
                if not runs:
                    continue
                rate, bound = median(runs), c / latency
                rows.append(
                    f"| delivery | {who}concurrency {c}, ledger on (SQLite) | "
                    f"{_n(runs[0].records)} | {_n(rate)} | {rate / bound:.0%} of the bound "
                    f"{_n(bound)}/s | {cpu(runs)} |"
                )

        def measured_before(c: int, quoted: str) -> str:
            runs = delivery.get(f"before_c{c}") if delivery else None
            if not runs:
                return quoted
            rate = median(runs)
            return (
                f"{rate / (c / latency):.0%} ({_n(rate)} records/s) measured beside it "
                f"({baseline}); {quoted} recorded"
            )

        off = delivery["c32_no_ledger"]
        naive = delivery["naive"]
        c32 = median(delivery["c32"]) if "c32" in delivery else None
        rate_off = median(off)
        rows.append(
            f"| delivery | concurrency 32, no ledger (`ledger_url: none`) | {_n(off[0].records)} | "
            f"{_n(rate_off)} | {rate_off / (32 / latency):.0%} of the bound; ledger on is "
            f"{(c32 or 0) / rate_off:.2f}x this | {cpu(off)} |"
        )
        rate_naive = median(naive)
        rows.append(
            f"| delivery | naive: one blocking `requests.get` per record | {_n(naive[0].records)} | "
            f"{_n(rate_naive)} | {rate_naive / (1 / latency):.0%} of the bound {_n(1 / latency)}/s"
            + (f"; concurrency 32 is **{c32 / rate_naive:.1f}x** this" if c32 else "")
            + f" | {cpu(naive)} |"
        )
        if c32:
            frac = c32 / (32 / latency)
            goals.append(
                Goal(
                    "delivery at concurrency 32 >= 80% of the bound (SQLite ledger on)",
                    f"{frac:.0%} ({_n(c32)} records/s)",
                    frac >= DELIVERY_C32_GOAL,
                    measured_before(32, BEFORE["c32"]),
                )
            )
        if "c128" in delivery:
            c128 = median(delivery["c128"])
            goals.append(
                Goal(
                    f"delivery at concurrency 128 >= {_n(DELIVERY_C128_GOAL)} records/s "
                    "(SQLite ledger on)",
                    f"{_n(c128)} records/s",
                    c128 >= DELIVERY_C128_GOAL,
                    measured_before(128, BEFORE["c128"]),
                    issue=15,
                )
            )
        for c in BASELINE_CONCURRENCIES:
            bare = delivery.get(f"bare_c{c}")
            if not bare:
                continue
            rate = median(bare)
            rows.append(
                f"| delivery | bare client: the same requests, one urllib3 connection per thread, "
                f"nothing else (`bench/bare_client.py`), concurrency {c} | {_n(bare[0].records)} | "
                f"{_n(rate)} | {rate / (c / latency):.0%} of the bound | {cpu(bare)} |"
            )
        if delivery.get(f"bare_c{BARE_GOAL_CONCURRENCY}") and delivery.get(
            f"c{BARE_GOAL_CONCURRENCY}"
        ):
            c, floor = BARE_GOAL_CONCURRENCY, delivery[f"bare_c{BARE_GOAL_CONCURRENCY}"]

            def over_bare(runs: list[Run]) -> str:
                ours, bare_us = median(runs, "cpu_us"), median(floor, "cpu_us")
                return (
                    f"{ours / bare_us:.2f}x ({ours:.0f} µs against {bare_us:.0f} µs; the "
                    f"receiver's {median(runs, 'receiver_us'):.0f} µs beside them)"
                )

            then = delivery.get(f"before_c{c}")
            goals.append(
                Goal(
                    f"target CPU per delivered conversion at concurrency {c} (SQLite ledger on) "
                    f"<= {BARE_GOAL:g}x the bare client's",
                    over_bare(delivery[f"c{c}"]),
                    median(delivery[f"c{c}"], "cpu_us") <= BARE_GOAL * median(floor, "cpu_us"),
                    f"{over_bare(then)} measured beside it ({baseline})"
                    if then
                    else "not measured (no bare client before)",
                )
            )
        if c32:
            goals.append(
                Goal(
                    "delivery at concurrency 32 >= 15x the naive reference",
                    f"{c32 / rate_naive:.1f}x",
                    c32 / rate_naive >= 15,
                    BEFORE["naive"],
                    issue=15,
                )
            )
    if memory:
        for mode, label in (("dry", "dry run"), ("live", "live, SQLite ledger on, receiver")):
            for n, run in memory[mode].items():
                extra = ""
                if mode == "live":
                    extra = f" {latency * 1000:g} ms, concurrency {MEMORY_CONCURRENCY}"
                    cpu_text = f"{run.cpu_us:.0f} (receiver {run.receiver_us:.0f})"
                else:
                    cpu_text = f"{run.cpu_us:.0f}"
                rows.append(
                    f"| memory | {label}{extra}, input through a pipe | {_n(n)} | {_n(run.rate)} | "
                    f"| {cpu_text} | **{run.rss_mb:.0f} MB** |"
                )
        for mode in ("dry", "live"):
            runs = memory[mode]
            if not runs:
                continue
            sizes = sorted(runs)
            peak = max(r.rss_mb for r in runs.values())
            growth = runs[sizes[-1]].rss_mb - runs[sizes[0]].rss_mb
            goals.append(
                Goal(
                    f"peak RSS < {MEMORY_GOAL_MB} MB from {_n(sizes[0])} to {_n(sizes[-1])} "
                    f"records, {'dry run' if mode == 'dry' else 'live'}",
                    f"{peak:.0f} MB at most ({growth:+.0f} MB from {_n(sizes[0])} to "
                    f"{_n(sizes[-1])})",
                    peak < MEMORY_GOAL_MB,
                    BEFORE["memory_" + mode],
                )
            )
    return "\n".join(rows), goals


TRICKLE_START, TRICKLE_END = "<!-- trickle:start -->", "<!-- trickle:end -->"
TRICKLE_BEFORE = (
    "no postback until the end of input: 5 records written over 15 s were "
    "delivered 13-25 s after they arrived, all at the end"
)


def trickle_section(run: Trickle, command: str, took: float) -> tuple[str, Goal]:
    """RESULTS.md's latency section (between its markers) and the goal line."""
    p50, p99 = _percentile(run.delivery, 50), _percentile(run.delivery, 99)
    worst = max(run.delivery, default=float("nan"))
    s50, s99 = _percentile(run.state, 50), _percentile(run.state, 99)
    bound = run.age + 1
    met = run.delivered == run.records and p99 <= bound
    goal = Goal(
        f"latency behind a streaming tap: p99 <= max_batch_age_seconds + 1 s = {bound:g} s",
        f"{p99:.2f} s ({run.delivered} of {run.records} delivered while the input was open)",
        met,
        BEFORE["latency"],
        issue=15,
    )
    text = "\n".join(
        [
            "## Latency behind a streaming tap",
            "",
            f"Command: `{command}` ({time.strftime('%Y-%m-%d')}, {took:.0f} s). A tap writes "
            f"{run.rate:g} records/s (each followed by a STATE) for {run.records / run.rate:g} s into "
            "one live target through a pipe it keeps open until every postback arrived; the receiver "
            f"answers after {run.latency * 1000:g} ms; `max_batch_age_seconds` is {run.age:g} (the "
            "default). Delivery: from the tap writing a record to the receiver seeing its postback. "
            "STATE: to the STATE written after it appearing on the target's stdout.",
            "",
            "| Benchmark | Configuration | Records | Delivery p50 | Delivery p99 | Delivery max | "
            "STATE p50 | STATE p99 | Target CPU | Before |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
            f"| latency | {run.rate:g} records/s for {run.records / run.rate:g} s, pipe kept open, "
            f"receiver {run.latency * 1000:g} ms | {_n(run.records)} | {p50:.2f} s | **{p99:.2f} s** | "
            f"{worst:.2f} s | {s50:.2f} s | {s99:.2f} s | {run.cpu:.1f} s in {run.wall:.0f} s | "
            f"{TRICKLE_BEFORE} |",
        ]
    )
    return text, goal


ALL_BENCHMARKS = ("mapping", "delivery", "memory", "trickle", "parallel", "ledger_cost")
RESULTS = BENCH / "RESULTS.md"
SUMMARY = REPO / "docs" / "performance.md"
"""The performance summary: its goals table (between its markers) is written by a full run."""
SUMMARY_START, SUMMARY_END = "<!-- goals:start -->", "<!-- goals:end -->"


def write_summary(path: Path, goals_text: str) -> None:
    """Replace the goals table between the summary's markers (the prose around it stays)."""
    text = path.read_text(encoding="utf-8")
    if SUMMARY_START not in text or SUMMARY_END not in text:
        raise BenchError(f"{path} has no {SUMMARY_START} ... {SUMMARY_END} section")
    head, rest = text.split(SUMMARY_START, 1)
    tail = rest.split(SUMMARY_END, 1)[1]
    path.write_text(f"{head}{SUMMARY_START}\n{goals_text}\n{SUMMARY_END}{tail}", encoding="utf-8")


def write_results(out: Path, main: str | None, trickle: str | None) -> None:
    """Write RESULTS.md: the main part and the latency section each replaced only when run."""
    existing = out.read_text() if out.exists() else ""
    old_main, old_trickle = existing, ""
    if TRICKLE_START in existing and TRICKLE_END in existing:
        head, rest = existing.split(TRICKLE_START, 1)
        old_trickle = TRICKLE_START + rest.split(TRICKLE_END, 1)[0] + TRICKLE_END
        old_main = head + rest.split(TRICKLE_END, 1)[1]
    if trickle is not None:
        trickle = f"{TRICKLE_START}\n{trickle}\n{TRICKLE_END}"
    parts = [(main if main is not None else old_main).rstrip(), trickle or old_trickle]
    out.write_text("\n\n".join(p for p in parts if p) + "\n")


def machine() -> str:

    try:
        import msgspec

        reader = f"msgspec {msgspec.__version__}"
    except ImportError:
        reader = "no msgspec"
    from importlib.metadata import version

    return (
        f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, singer-sdk {version('singer-sdk')} ({reader}), "
        f"{platform.system()} {platform.release()}"
    )


# --- scaling: parallel runs on one PostgreSQL ledger, and the ledger's cost -------------------

PARALLEL_RUNS = "1,2,4"
PARALLEL_CONVERSIONS = 6000
PARALLEL_LATENCY = 0.1
PARALLEL_CONCURRENCY = 64
PARALLEL_OWN_GOAL = 3.5
"""N=4 runs with their own input: aggregate at least this times N=1 (or PARALLEL_BOUND_GOAL)."""
PARALLEL_BOUND_GOAL = 0.8
"""... or at least this fraction of the bound, N x concurrency / latency."""
PARALLEL_SAME_GOAL = 1.8
"""N runs on the same input: aggregate at least this times N=1."""
PARALLEL_WAIT_GOAL = 1.5
"""The ledger's wait per conversion at N=4: at most this times N=1."""
LEDGER_COST_CONCURRENCY = 32
LEDGER_COST_GOAL = 1.2
"""CPU per delivered conversion, SQLite ledger on / off, at concurrency 32: at most this."""
BENCH_CLOCK = "2026-11-30T00:00:00Z"
"""``TARGET_EVERFLOW_CLOCK`` of the target processes: the generated events (November 2026)
never age out, whatever the calendar says."""
POSTGRES_ENVS = ("TARGET_EVERFLOW_BENCH_POSTGRES_URL", "TARGET_EVERFLOW_TEST_POSTGRES_URL")
CLOSED_LINE = re.compile(r"ledger \S+ closed: (\d+) call\(s\), ([0-9.]+) s waited")


@dataclass
class Parallel:
    """N target processes at once on one PostgreSQL ledger, against one receiver."""

    runs: int
    same_input: bool
    conversions: int
    """Distinct conversions Everflow accepted (each input's conversions, or the one input's)."""
    span: float
    """Seconds from the first postback to the last (the receiver's clock)."""
    duplicates: int
    """Conversions accepted more than once (must be 0)."""
    cpu: float
    """CPU seconds of the target processes, together."""
    ledger_wait: float | None
    """Seconds the runs' threads waited for the ledger, together (None: the code does not say)."""

    @property
    def rate(self) -> float:
        return self.conversions / self.span if self.span > 0 else 0.0

    @property
    def wait_us(self) -> float | None:
        """The ledger's wait per conversion, microseconds."""
        if self.ledger_wait is None:
            return None
        return self.ledger_wait / self.conversions * 1e6


def seeded_input(root: Path, records: int, seed: int) -> Path:
    """Conversions only, each seed its own transaction ids and message ids."""
    path = root / f"input-conversions-{records}-seed{seed}.singer"
    if not path.exists():
        generate.write(str(path), records, seed, conversions_only=True)
    return path


def target_env(source: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(source), "TARGET_EVERFLOW_CLOCK": BENCH_CLOCK}


def postgres_bench_url(given: str | None) -> str | None:
    return given or next((os.environ[e] for e in POSTGRES_ENVS if os.environ.get(e)), None)


def _drop_table(url: str, table: str) -> None:
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        conn.close()


def run_parallel(
    root: Path,
    *,
    name: str,
    pg_url: str,
    runs: int,
    same_input: bool,
    conversions: int,
    latency: float,
    concurrency: int,
    source: Path,
) -> Parallel:
    """Start ``runs`` targets at once (own inputs, or one input for all), wait for them all."""
    table = f"bench_{name}_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    ledger_url = f"{pg_url}{'&' if '?' in pg_url else '?'}table={table}"
    inputs = [seeded_input(root, conversions, 1 if same_input else 100 + k) for k in range(runs)]
    base = fresh_dir(root, f"parallel-{name}")
    log = base / "rx.jsonl"
    procs: list[tuple[subprocess.Popen[bytes], Path, t.Any]] = []
    try:
        with ReceiverProcess(latency=latency, log_path=log) as rx:
            for k, source_file in enumerate(inputs):
                run_dir = fresh_dir(base, f"run{k}")
                cfg = {
                    **base_config(run_dir),
                    "postback_url": rx.url,
                    "request_timeout": 30,
                    "max_concurrency": concurrency,
                    "ledger_url": ledger_url,
                }
                path = write_config(run_dir / "config.json", cfg)
                err = (run_dir / "stderr.log").open("wb")
                proc = subprocess.Popen(
                    [*TARGET, "--config", str(path), "--input", str(source_file)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    env=target_env(source), cwd=run_dir,
                )  # fmt: skip
                procs.append((proc, run_dir, err))
            cpu = 0.0
            for proc, run_dir, err in procs:
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                err.close()
                cpu += usage.ru_utime + usage.ru_stime
                if proc.returncode != 0:
                    tail = (run_dir / "stderr.log").read_text(errors="replace")[-3000:]
                    raise BenchError(f"parallel {name}: a run exited {proc.returncode}:\n{tail}")
        entries = [e for e in read_log(log) if e["accepted"]]
    finally:
        with contextlib.suppress(Exception):
            _drop_table(pg_url, table)
    counts = collections.Counter(e["transaction_id"] for e in entries)
    expected = conversions * (1 if same_input else runs)
    if len(counts) != expected:
        raise BenchError(f"parallel {name}: {len(counts)} of {expected} conversions accepted")
    walls = [float(e["wall"]) for e in entries]
    waits = []
    for _, run_dir, _ in procs:
        found = CLOSED_LINE.findall((run_dir / "stderr.log").read_text(errors="replace"))
        waits.append(float(found[-1][1]) if found else None)
    known = [w for w in waits if w is not None]
    return Parallel(
        runs=runs,
        same_input=same_input,
        conversions=expected,
        span=max(walls) - min(walls),
        duplicates=sum(1 for n in counts.values() if n > 1),
        cpu=cpu,
        ledger_wait=sum(known) if len(known) == len(waits) else None,
    )


def bench_parallel(
    root: Path,
    *,
    pg_url: str,
    runs: list[int],
    conversions: int,
    latency: float,
    concurrency: int,
    repeats: int,
    baseline: Path | None,
) -> dict[str, list[Parallel]]:
    """N = ``runs`` targets on one PostgreSQL ledger, each its own ``conversions``, and (N > 1)
    N targets on the same input; with ``baseline``, the same beside it ("before_"), interleaved."""
    plans: list[tuple[str, int, bool, Path]] = []
    trees = [("", REPO)] + ([("before_", baseline)] if baseline is not None else [])
    for prefix, tree in trees:
        for n in runs:
            plans.append((f"{prefix}own_n{n}", n, False, tree))
            if n > 1:
                plans.append((f"{prefix}same_n{n}", n, True, tree))
    out: dict[str, list[Parallel]] = {name: [] for name, *_ in plans}
    for i in range(repeats):
        for name, n, same, tree in plans if i % 2 == 0 else list(reversed(plans)):
            result = run_parallel(
                root, name=name, pg_url=pg_url, runs=n, same_input=same,
                conversions=conversions, latency=latency, concurrency=concurrency, source=tree,
            )  # fmt: skip
            out[name].append(result)
            wait = "-" if result.wait_us is None else f"{result.wait_us:.0f} µs"
            print(
                f"  parallel {name:<16} {result.rate:>8,.0f} conversions/s  ({result.conversions}"
                f" conversions, {result.duplicates} twice; first to last postback "
                f"{result.span:.1f} s; ledger wait {wait}/conversion)",
                flush=True,
            )
    return out


def bench_ledger_cost(
    root: Path, *, conversions: int, latency: float, repeats: int, baseline: Path | None
) -> dict[str, list[Run]]:
    """CPU per delivered conversion at concurrency 32: the SQLite ledger on and off (``none``),
    and with ``baseline`` the same beside it, interleaved."""
    plans: list[tuple[str, dict, Path]] = []
    trees = [("", REPO)] + ([("before_", baseline)] if baseline is not None else [])
    for prefix, tree in trees:
        plans.append((f"{prefix}ledger", {}, tree))
        plans.append((f"{prefix}no_ledger", {"ledger_url": "none"}, tree))
    out: dict[str, list[Run]] = {name: [] for name, *_ in plans}
    source = input_file(root, conversions, conversions=True)
    for i in range(repeats):
        for name, extra, tree in plans if i % 2 == 0 else list(reversed(plans)):
            run_dir = fresh_dir(root, f"ledger-cost-{name}")
            with ReceiverProcess(latency=latency) as rx:
                cfg = {
                    **base_config(run_dir),
                    "postback_url": rx.url,
                    "request_timeout": 30,
                    "max_concurrency": LEDGER_COST_CONCURRENCY,
                    **extra,
                }
                path = write_config(run_dir / "config.json", cfg)
                run = run_child(
                    [*TARGET, "--config", str(path), "--input", str(source)],
                    records=conversions, workdir=run_dir, summary=run_dir / "summary.json",
                    source=tree, env={"TARGET_EVERFLOW_CLOCK": BENCH_CLOCK},
                )  # fmt: skip
            if run.summary.get("delivered") != conversions:
                raise BenchError(f"ledger cost {name}: {run.summary}")
            out[name].append(run)
            print(
                f"  ledger cost {name:<16} CPU {run.cpu_us:>6.0f} µs/conversion "
                f"({run.rate:,.0f} conversions/s)",
                flush=True,
            )
    return out


def scaling_section(
    parallel: dict[str, list[Parallel]] | None,
    cost: dict[str, list[Run]] | None,
    *,
    baseline: str | None,
    latency: float,
    concurrency: int,
    conversions: int,
) -> tuple[str, list[Goal]]:
    """The scaling figures (a table) and their goals."""
    lines = ["| Figure | Now | Before |", "| --- | --- | --- |"]
    goals: list[Goal] = []

    def med(runs: list[Parallel], attr: str) -> float | None:
        values = [getattr(r, attr) for r in runs]
        return None if not values or None in values else statistics.median(values)

    def fmt(x: float | None, unit: str = "") -> str:
        return "-" if x is None else f"{x:,.0f}{unit}"

    if parallel:

        def get(prefix: str, kind: str, n: int, attr: str = "rate") -> float | None:
            return med(parallel.get(f"{prefix}{kind}_n{n}", []), attr)

        ns = sorted({r.runs for rs in parallel.values() for r in rs})
        for kind, what in (("own", "own input"), ("same", "the same input")):
            for n in ns:
                if kind == "same" and n == 1:
                    continue
                now, then = get("", kind, n), get("before_", kind, n)
                base_now, base_then = get("", "own", 1), get("before_", "own", 1)
                ratio = "" if not (now and base_now) else f" ({now / base_now:.2f}x N=1)"
                ratio_then = "" if not (then and base_then) else f" ({then / base_then:.2f}x N=1)"
                lines.append(
                    f"| {n} run(s), {what}: conversions/s, first to last postback "
                    f"| {fmt(now)}{ratio} | {fmt(then)}{ratio_then} |"
                )
            if kind == "own":
                for n in ns:
                    lines.append(
                        f"| {n} run(s), own input: ledger wait per conversion "
                        f"| {fmt(get('', 'own', n, 'wait_us'), ' µs')} "
                        f"| {fmt(get('before_', 'own', n, 'wait_us'), ' µs')} |"
                    )
        top = max(ns)
        one, own_top = get("", "own", 1), get("", "own", top)
        then_one, then_top = get("before_", "own", 1), get("before_", "own", top)
        before = "not measured" if then_one is None or then_top is None else (
            f"{then_top / then_one:.2f}x"
        )  # fmt: skip
        if one and own_top:
            bound = top * concurrency / latency
            goals.append(Goal(
                f"{top} runs with their own {conversions:,} conversions on one PostgreSQL ledger: "
                f">= {PARALLEL_OWN_GOAL}x 1 run or >= {PARALLEL_BOUND_GOAL:.0%} of the bound "
                f"({bound:,.0f}/s)",
                f"{own_top / one:.2f}x ({own_top / bound:.0%} of the bound)",
                own_top / one >= PARALLEL_OWN_GOAL or own_top >= PARALLEL_BOUND_GOAL * bound,
                before,
            ))  # fmt: skip
        for n in ns:
            same, then_same = get("", "same", n), get("before_", "same", n)
            if n > 1 and same and one:
                goals.append(Goal(
                    f"{n} runs on the same input: >= {PARALLEL_SAME_GOAL}x 1 run",
                    f"{same / one:.2f}x", same / one >= PARALLEL_SAME_GOAL,
                    "not measured" if not (then_same and then_one) else f"{then_same / then_one:.2f}x",
                ))  # fmt: skip
        w1, wtop = get("", "own", 1, "wait_us"), get("", "own", top, "wait_us")
        if w1 and wtop:
            goals.append(Goal(
                f"ledger wait per conversion at {top} runs: <= {PARALLEL_WAIT_GOAL}x 1 run",
                f"{wtop / w1:.2f}x ({wtop:,.0f} vs {w1:,.0f} µs)", wtop / w1 <= PARALLEL_WAIT_GOAL,
                "not measured (the code before does not report it)",
            ))  # fmt: skip
        dups = sum(r.duplicates for rs in parallel.values() for r in rs)
        lines.append(f"| conversions accepted twice, all parallel runs | {dups} | |")
    if cost:

        def cpu(name: str) -> float | None:
            runs = cost.get(name, [])
            return median(runs, "cpu_us") if runs else None

        on, off = cpu("ledger"), cpu("no_ledger")
        b_on, b_off = cpu("before_ledger"), cpu("before_no_ledger")
        for label, a, b in (("SQLite ledger", on, b_on), ("no ledger", off, b_off)):
            lines.append(
                f"| CPU per delivered conversion at concurrency {LEDGER_COST_CONCURRENCY}, {label} "
                f"| {fmt(a, ' µs')} | {fmt(b, ' µs')} |"
            )
        if on and off:
            goals.append(Goal(
                f"CPU per delivered conversion, SQLite ledger / no ledger, concurrency "
                f"{LEDGER_COST_CONCURRENCY}: <= {LEDGER_COST_GOAL}x",
                f"{on / off:.2f}x", on / off <= LEDGER_COST_GOAL,
                "not measured" if not (b_on and b_off) else f"{b_on / b_off:.2f}x",
            ))  # fmt: skip
    head = f"Before: {baseline or 'not measured'}, measured beside it."
    if parallel:
        head = (
            f"Parallel runs: receiver answering in {latency * 1000:g} ms, concurrency "
            f"{concurrency} each, {conversions:,} conversions per run, one PostgreSQL ledger. "
            + head
        )
    if cost:
        head += (
            f" Ledger cost: CPU of the target process (start-up included) per delivered "
            f"conversion, concurrency {LEDGER_COST_CONCURRENCY}."
        )
    return head + "\n\n" + "\n".join(lines), goals


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=200_000, help="mapping input size (200000)")
    parser.add_argument(
        "--conversions",
        type=int,
        default=20_000,
        help="most conversions per delivery run (20000); low concurrencies get "
        "fewer, enough for --seconds at their bound",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=12.0,
        help="delivery run length aimed at, at the bound (12)",
    )
    parser.add_argument("--concurrency", default="1,16,32,64,128")
    parser.add_argument("--latency", type=float, default=0.02, help="receiver latency, s (0.02)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per figure; the median counts (3)"
    )
    parser.add_argument(
        "--memory-records",
        default="100000,1000000",
        help="sizes of the memory runs, dry and live (100000,1000000)",
    )
    parser.add_argument("--only", default=",".join(ALL_BENCHMARKS))
    parser.add_argument(
        "--only-parallel",
        action="store_true",
        help="only the parallel runs on one PostgreSQL ledger (--only parallel)",
    )
    parser.add_argument(
        "--only-ledger-cost",
        action="store_true",
        help="only the ledger's CPU cost at concurrency 32 (--only ledger_cost)",
    )
    parser.add_argument(
        "--parallel-runs", default=PARALLEL_RUNS, help=f"parallel: the N runs ({PARALLEL_RUNS})"
    )
    parser.add_argument(
        "--parallel-conversions",
        type=int,
        default=PARALLEL_CONVERSIONS,
        help=f"parallel: conversions per run ({PARALLEL_CONVERSIONS})",
    )
    parser.add_argument(
        "--parallel-latency",
        type=float,
        default=PARALLEL_LATENCY,
        help=f"parallel: receiver latency, s ({PARALLEL_LATENCY})",
    )
    parser.add_argument(
        "--parallel-concurrency",
        type=int,
        default=PARALLEL_CONCURRENCY,
        help=f"parallel: max_concurrency of each run ({PARALLEL_CONCURRENCY})",
    )
    parser.add_argument(
        "--postgres-url",
        help="parallel: the PostgreSQL server (default: $" + " or $".join(POSTGRES_ENVS) + ")",
    )
    parser.add_argument(
        "--only-trickle",
        action="store_true",
        help="only the latency behind a streaming tap (--only trickle)",
    )
    parser.add_argument(
        "--trickle-rate", type=float, default=10.0, help="trickle: records/s the tap writes (10)"
    )
    parser.add_argument(
        "--trickle-seconds",
        type=float,
        default=60.0,
        help="trickle: seconds the tap writes for (60)",
    )
    parser.add_argument(
        "--no-validate", action="store_true", help="mapping: skip the pair with validate_records on"
    )
    parser.add_argument(
        "--default-reader",
        action="store_true",
        help="mapping: (always measured now: the goal's do-nothing target reads with the SDK's "
        "default reader; accepted for older command lines)",
    )
    parser.add_argument(
        "--baseline",
        default=BASELINE_REF,
        help=f"git ref measured side by side for the 'before' figures ({BASELINE_REF}); "
        "'none' skips it",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, one run each")
    parser.add_argument(
        "--workdir", help="keep inputs and run directories here (default: a temp dir)"
    )
    parser.add_argument(
        "--out",
        default=str(RESULTS),
        help="where the results go (bench/RESULTS.md; SCALING.md beside it); a full run to the "
        "default also rewrites docs/performance.md's goals table",
    )
    args = parser.parse_args()
    if args.quick:
        args.records, args.conversions, args.repeats, args.seconds = 3000, 1000, 1, 1.0
        args.memory_records = "2000,5000"
        args.trickle_seconds = 3.0
        args.parallel_conversions = 500
    if args.only_trickle:
        args.only = "trickle"
    if args.only_parallel or args.only_ledger_cost:
        args.only = ",".join(
            k
            for k, on in (("parallel", args.only_parallel), ("ledger_cost", args.only_ledger_cost))
            if on
        )
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if 32 not in concurrencies:
        concurrencies.append(32)
    memory_sizes = [int(n) for n in args.memory_records.split(",")]
    only = set(args.only.split(","))

    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="everflow-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"target-everflow benchmarks on {machine()}\nwork directory {root}", flush=True)
    started = time.time()
    try:
        mapping = delivery = memory = trickle = parallel = cost = None
        baseline = None
        if args.baseline != "none" and only & {"mapping", "delivery", "parallel", "ledger_cost"}:
            baseline = baseline_tree(root, args.baseline)
        for tree in (REPO, baseline):
            if tree is not None:
                compile_tree(tree)
        if "mapping" in only:
            print(f"mapping: {args.records:,} records, {args.repeats} runs each", flush=True)
            mapping = bench_mapping(
                root,
                args.records,
                args.repeats,
                validate=not args.no_validate,
                baseline=baseline,
            )
        if "delivery" in only:
            print(
                f"delivery: receiver latency {args.latency * 1000:g} ms, {args.repeats} runs each",
                flush=True,
            )
            delivery = bench_delivery(
                root,
                args.conversions,
                args.repeats,
                concurrencies,
                args.latency,
                args.seconds,
                baseline,
            )
        if "memory" in only:
            print("memory:", flush=True)
            memory = bench_memory(root, memory_sizes, args.latency)
        if "trickle" in only:
            print(
                f"latency behind a streaming tap: {args.trickle_rate:g} records/s for "
                f"{args.trickle_seconds:g} s",
                flush=True,
            )
            trickle = bench_trickle(root, args.trickle_rate, args.trickle_seconds, args.latency)
        if "ledger_cost" in only:
            print(
                f"ledger cost: concurrency {LEDGER_COST_CONCURRENCY}, receiver latency "
                f"{args.latency * 1000:g} ms, {args.conversions:,} conversions",
                flush=True,
            )
            cost = bench_ledger_cost(
                root, conversions=args.conversions, latency=args.latency,
                repeats=args.repeats, baseline=baseline,
            )  # fmt: skip
        if "parallel" in only:
            pg_url = postgres_bench_url(args.postgres_url)
            if pg_url is None:
                print(
                    "parallel: skipped, no PostgreSQL server (--postgres-url or $"
                    + " or $".join(POSTGRES_ENVS)
                    + ")",
                    flush=True,
                )
            else:
                print(
                    f"parallel: N = {args.parallel_runs} runs of {args.parallel_conversions:,} "
                    f"conversions, one PostgreSQL ledger, receiver latency "
                    f"{args.parallel_latency * 1000:g} ms, concurrency {args.parallel_concurrency}",
                    flush=True,
                )
                parallel = bench_parallel(
                    root, pg_url=pg_url,
                    runs=[int(n) for n in args.parallel_runs.split(",")],
                    conversions=args.parallel_conversions, latency=args.parallel_latency,
                    concurrency=args.parallel_concurrency, repeats=args.repeats, baseline=baseline,
                )  # fmt: skip
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    rows, goals = table(
        mapping,
        delivery,
        memory,
        latency=args.latency,
        concurrencies=concurrencies,
        baseline=args.baseline if baseline is not None else None,
    )
    command = "make bench" + (f" BENCH_ARGS='{' '.join(sys.argv[1:])}'" if sys.argv[1:] else "")
    trickle_text = None
    if trickle is not None:
        trickle_text, goal = trickle_section(trickle, command, time.time() - started)
        goals.append(goal)
        trickle_text += f"\n\n- {goal}"
    scaling_text = None
    if parallel or cost:
        scaling_text, scaling_goals = scaling_section(
            parallel, cost, baseline=args.baseline if baseline is not None else None,
            latency=args.parallel_latency, concurrency=args.parallel_concurrency,
            conversions=args.parallel_conversions,
        )  # fmt: skip
        goals += scaling_goals
        scaling_text += "".join(f"\n- {g}" for g in scaling_goals)
    took = time.time() - started
    goals_text = (
        f"Measured in this one invocation (`{command}`, {time.strftime('%Y-%m-%d')}, "
        f"{took:.0f} s, {machine()}); before: {BEFORE_SOURCE}. "
        f"{sum(g.met for g in goals)} of {len(goals)} goals met.\n\n{goals_table(goals)}"
    )
    text = (
        None
        if not (mapping or delivery or memory)
        else "\n".join(
            [
                "# Benchmark results",
                "",
                f"Machine: {machine()}.  ",
                f"Command: `{command}` ({time.strftime('%Y-%m-%d')}, {took:.0f} s).  ",
                f"Each figure is the median of {args.repeats} runs (a memory run: once); compared "
                "configurations ran interleaved in the same invocation. Records/s is records / wall "
                "time of the whole process (interpreter start-up included). The scaling figures "
                "(parallel runs, the ledger's cost) are in SCALING.md.",
                "",
                "## Goals",
                "",
                goals_text,
                "",
                "## Figures",
                "",
                rows,
                "",
            ]
        )
    )
    print()
    if text is not None:
        print(rows)
        print()
    if trickle_text is not None:
        print(trickle_text.rsplit("\n\n", 1)[0])  # (its goal line follows with the others)
        print()
    if scaling_text is not None:
        print(scaling_text.split("\n- ", 1)[0])
        print()
    for g in goals:
        print(f"- {g}")
    print(f"\n{sum(g.met for g in goals)} of {len(goals)} goals met.")
    if not args.quick:
        if text is not None or trickle_text is not None:
            write_results(Path(args.out), text, trickle_text)
            print(f"\nwritten to {args.out}")
        if scaling_text is not None:
            scaling_out = Path(args.out).with_name("SCALING.md")
            scaling_out.parent.mkdir(parents=True, exist_ok=True)
            scaling_out.write_text(
                f"# Scaling: parallel runs and the ledger's cost\n\nMachine: {machine()}.  \n"
                f"Command: `{command}` ({time.strftime('%Y-%m-%d')}).  \nEach figure is the "
                f"median of {args.repeats} runs.\n\n{scaling_text}\n"
            )
            print(f"written to {scaling_out}")
        if only >= set(ALL_BENCHMARKS) and Path(args.out).resolve() == RESULTS.resolve():
            write_summary(SUMMARY, goals_text)
            print(f"written to {SUMMARY} (its goals table)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
