"""The report's memory is bounded by one page of run summaries, not by the run history.

Before, ``report`` read every summary of the period at once: 4,320 runs with 286 KB summaries took
1.2 GB. Now the summaries are read ``SUMMARY_PAGE`` runs per transaction and folded one at a
time, so the peak is the process's baseline plus at most ``SUMMARY_PAGE * MAX_SUMMARY_CHARS``
characters of text (8 MB) and one parsed summary, whatever the number of runs.

The arithmetic behind the small history: ``report --days 365`` over a year of hourly runs is
8,760 summaries of up to 300 KB (2.6 GB of JSON). This test writes :data:`RUNS` summaries of the
same 300 KB (about 210 MB of JSON, more than the 200 MB bound by itself: reading them all at once
fails it, as the code before did), measures the report's peak RSS in a subprocess, and asserts
the 200 MB bound. Since a page holds at most ``SUMMARY_PAGE`` runs, the peak of 8,760 runs is the
peak of 700 runs: the number of pages grows, not the page.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

from target_everflow.ledger.reporting import SUMMARY_PAGE
from target_everflow.report.data import MAX_SUMMARY_CHARS
from tests.known_ledger import LEDGER_COLUMNS, RUNS_COLUMNS
from tests.test_report import Dom, report_config

RUNS = 700
SUMMARY_BYTES = 300_000
LIMIT_MB = 200


EVENTS = 60


def big_summary(fields: int) -> str:
    """A run summary: :data:`EVENTS` event rows, each with dead letters and a too-old skip (so
    folding it is real work), padded to size with ``fields`` dropped optional fields per row."""
    rows = {
        f"Event number {i:03d}": {
            "delivered": 3,
            "skipped": {"duplicate": 2, "too_old": 1},
            "dead_letter": {"rejected": 1, "http_400": 1},
            "dropped_fields": {f"properties.optional_field_{j:05d}": j for j in range(fields)},
        }
        for i in range(EVENTS)
    }
    events = EVENTS
    return json.dumps(
        {
            "records_read": 10,
            "delivered": 3 * events,
            "skipped": {"duplicate": 2 * events, "too_old": events},
            "dead_lettered": {"rejected": events, "http_400": events},
            "streams": {"tracks": rows},
        }
    )


def test_report_memory_stays_bounded_by_a_page_of_summaries(tmp_path):
    probe = big_summary(100)
    summary = big_summary(round(100 * SUMMARY_BYTES / len(probe)))
    assert SUMMARY_BYTES * 0.95 < len(summary) < SUMMARY_BYTES * 1.05
    assert len(summary) <= MAX_SUMMARY_CHARS  # read, not skipped as too large
    now = time.time()
    con = sqlite3.connect(tmp_path / "ledger.db")
    con.execute(f"CREATE TABLE everflow_ledger ({LEDGER_COLUMNS.format(real='REAL')})")
    con.execute(f"CREATE TABLE everflow_ledger_runs ({RUNS_COLUMNS.format(real='REAL')})")
    con.execute("CREATE INDEX everflow_ledger_runs_started_at ON everflow_ledger_runs (started_at)")
    con.executemany(  # hourly runs, the latest an hour ago
        "INSERT INTO everflow_ledger_runs (run_id, started_at, ended_at, host, pid, version,"
        " exit_code, summary) VALUES (?, ?, ?, 'h', 1, '0.1.0', 0, ?)",
        (
            (f"h:1:{i:06d}", now - 3600 * (i + 1), now - 3600 * (i + 1) + 60, summary)
            for i in range(RUNS)
        ),
    )
    con.commit()
    con.close()
    config = report_config(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}")
    out = tmp_path / "report.html"
    # A parent of its own: RUSAGE_CHILDREN is then the report's peak RSS alone (kB on Linux).
    probe_code = (
        "import resource, subprocess, sys, time\n"
        "started = time.monotonic()\n"
        "proc = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=600)\n"
        "sys.stderr.write(proc.stderr)\n"
        "print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
        " round(time.monotonic() - started, 1))\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            probe_code,
            sys.executable,
            "-m",
            "target_everflow",
            "report",
            "--config",
            str(config),
            "--output",
            str(out),
            "--days",
            "365",
        ],
        capture_output=True,
        text=True,
        timeout=660,
        cwd=tmp_path,
    )
    code, peak_kb, seconds = result.stdout.split()
    assert code == "0", result.stderr
    peak_mb = int(peak_kb) / 1024
    print(f"report of {RUNS} runs x {len(summary):,} chars: peak RSS {peak_mb:.0f} MB, {seconds} s")
    assert peak_mb < LIMIT_MB, f"peak RSS {peak_mb:.0f} MB for {RUNS} runs"
    assert SUMMARY_PAGE * MAX_SUMMARY_CHARS <= 8_000_000  # the page bound the docstring states

    # Every summary was folded: each event row's dead letters and too-old skips, all runs.
    dom = Dom(out.read_text(encoding="utf-8"))
    events = EVENTS
    assert dom.by_id("total-dead-lettered").attrs["data-value"] == str(2 * events * RUNS)
    assert dom.by_id("total-too-old").attrs["data-value"] == str(events * RUNS)
