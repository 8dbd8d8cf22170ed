"""Run history (issue 14): each run's start, end, host, pid, counts, requests, retries, 429s,
exit code and version in the ledger's database, and ``target-everflow history`` showing them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from target_everflow.accounting.run_history import target_version
from tests.conftest import DEAD_LETTERS_ON_PURPOSE, run_target, singer_lines, track
from tests.ledgers import Backend, backend, cli, put, rows  # noqa: F401 - the fixture
from tests.receiver import Answer, Receiver


def three_runs(config: dict, rx: Receiver, tmp_path: Path) -> list:
    """Run 1: 5 delivered, one after a 503 and one after a 429. Run 2: 1 of 2 rejected, above the
    ratio (exit 5). Run 3: the first input again, all duplicates."""
    rx.set_script(
        Receiver.per_transaction(
            {
                "tx-1": [Answer.status(503)],
                "tx-2": [Answer.rate_limited("0")],
                "tx-7": [Answer.no_content()],
            }
        )
    )
    first = singer_lines("orders", [track(i) for i in range(1, 6)], state={"run": 1})
    results = [run_target(config, first, tmp_path, subprocess_run=True)]  # (its own pid)
    results.append(
        run_target(config, singer_lines("orders", [track(6), track(7)], state={"run": 2}), tmp_path)
    )
    results.append(run_target(config, first, tmp_path))
    return results


def test_history_after_three_runs_as_a_table_and_as_json(backend: Backend, base_config, tmp_path):
    with Receiver() as rx:
        config = {
            **base_config,
            "postback_url": rx.url,
            "ledger_url": backend.url,
            "max_concurrency": 1,
        }
        results = three_runs(config, rx, tmp_path)
    assert [r.code for r in results] == [0, 5, 0], results[1].stderr[-2000:]

    shown = cli(config, "history", "--json", tmp_path=tmp_path)
    assert shown.code == 0, shown.stderr
    runs = shown.json()
    assert [run["exit_code"] for run in runs] == [0, 5, 0]  # newest first
    counts = [
        {
            k: run[k]
            for k in (
                "records_read",
                "delivered",
                "skipped",
                "dead_lettered",
                "in_doubt",
                "requests",
                "retries",
                "http_429",
            )
        }
        for run in runs
    ]
    assert counts == [
        {
            "records_read": 5,
            "delivered": 0,
            "skipped": 5,
            "dead_lettered": 0,
            "in_doubt": 0,
            "requests": 0,
            "retries": 0,
            "http_429": 0,
        },
        {
            "records_read": 2,
            "delivered": 1,
            "skipped": 0,
            "dead_lettered": 1,
            "in_doubt": 0,
            "requests": 2,
            "retries": 0,
            "http_429": 0,
        },
        {
            "records_read": 5,
            "delivered": 5,
            "skipped": 0,
            "dead_lettered": 0,
            "in_doubt": 0,
            "requests": 7,
            "retries": 2,
            "http_429": 1,
        },
    ]
    assert runs[1]["summary"]["dead_lettered"] == {"rejected": 1}
    assert runs[1]["summary"]["streams"]["orders"]["Order Completed"]["dead_letter"] == {
        "rejected": 1
    }
    for run in runs:
        assert run["host"] == socket.gethostname() and isinstance(run["pid"], int)
        assert run["version"] == target_version() and run["version"] != "unknown"
        assert run["run_id"].startswith(f"{run['host']}:{run['pid']}:")
        assert 0 <= run["ended_at"] - run["started_at"] < 120
    assert runs[2]["pid"] != os.getpid()  # the first run's own process (a subprocess)
    assert (
        runs[0]["started_at"] >= runs[1]["ended_at"] >= runs[1]["started_at"] >= runs[2]["ended_at"]
    )
    assert len({run["run_id"] for run in runs}) == 3
    # summary_path keeps only the current run: the last run's summary, as the history has it
    assert json.loads(Path(config["summary_path"]).read_text()) == runs[0]["summary"]
    # the run that delivered a conversion is the ledger's owner of its key (the run id)
    assert backend.sql("SELECT owner FROM {t} WHERE delivery_key = 'm:msg-6'") == [
        (runs[1]["run_id"],)
    ]

    table = cli(config, "history", tmp_path=tmp_path)
    assert table.code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "The last 3 run(s)" in lines[0]
    header, rows = lines[1].split(), lines[3:]
    assert header[:5] == ["Started", "(UTC)", "Took", "Exit", "Read"]
    assert len(rows) == 3
    assert [row.split()[4] for row in rows] == ["0", "5", "0"]  # exit codes, newest first
    assert [run["run_id"] for run in runs] == [row.split()[-1] for row in rows]

    last_two = cli(config, "history", "--last", "2", "--json", tmp_path=tmp_path).json()
    assert [run["run_id"] for run in last_two] == [run["run_id"] for run in runs[:2]]


def test_a_run_is_recorded_when_it_starts(base_config, tmp_path):
    """A run killed mid-way keeps its start row without an end: shown as 'running?'."""
    lines = singer_lines("orders", [track(i) for i in range(20)])
    (tmp_path / "in.singer").write_text("\n".join(lines) + "\n")
    with Receiver(default=Answer.slow(30)) as rx:
        config = {**base_config, "postback_url": rx.url, "max_concurrency": 1}
        (tmp_path / "config.json").write_text(json.dumps(config))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "target_everflow",
                "--config",
                str(tmp_path / "config.json"),
                "--input",
                str(tmp_path / "in.singer"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert rx.wait_for(1, timeout=60), "the run sent nothing"
            shown = cli(config, "history", "--json", tmp_path=tmp_path)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    (run,) = shown.json()
    assert run["pid"] == proc.pid and run["exit_code"] is None and run["ended_at"] is None
    assert run["records_read"] is None and run["started_at"] <= time.time()
    table = cli(config, "history", tmp_path=tmp_path)
    assert "running?" in table.stdout and "killed before it could record" in table.stdout


def test_dry_runs_record_no_history_and_an_empty_history_says_so(base_config, tmp_path):
    config = {**base_config, "dry_run": True}
    assert run_target(config, singer_lines("orders", [track(1)]), tmp_path).code == 0
    shown = cli(config, "history", tmp_path=tmp_path)
    assert shown.code == 0 and "No runs recorded in ledger sqlite:///" in shown.stdout
    assert cli(config, "history", "--json", tmp_path=tmp_path).json() == []


def test_history_needs_a_ledger(base_config, tmp_path):
    config = {
        **base_config,
        "postback_url": "https://www.example-tracking.test/",
        "ledger_url": "none",
    }
    shown = cli(config, "history", tmp_path=tmp_path)
    assert shown.code == 1
    assert (
        shown.stderr.strip()
        == "target-everflow: Setting 'ledger_url' is none: there is no ledger to look into."
    )


def test_history_is_pruned_with_the_ledger_retention(backend: Backend, base_config, tmp_path):
    with Receiver() as rx:
        config = {
            **base_config,
            "postback_url": rx.url,
            "ledger_url": backend.url,
            **DEAD_LETTERS_ON_PURPOSE,
        }
        assert run_target(config, singer_lines("orders", [track(1)]), tmp_path).code == 0
        backend.sql("UPDATE {t}_runs SET started_at = started_at - 11 * 86400")
        assert (
            run_target(
                {**config, "ledger_retention_days": 10},
                singer_lines("orders", [track(2)]),
                tmp_path,
            ).code
            == 0
        )
    runs = cli(config, "history", "--json", tmp_path=tmp_path).json()
    assert [run["records_read"] for run in runs] == [1]  # the old run is gone, the new one kept
