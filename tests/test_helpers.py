"""The tests' own helpers: a command line run in this process leaves the process as it was,
and says what a subprocess would say."""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from pathlib import Path

from tests.conftest import (
    bytes_of,
    config_under,
    run_cli,
    run_target,
    singer_lines,
    track,
)


def _process_state() -> tuple:
    root = logging.getLogger()
    return (
        {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)},
        list(root.handlers),
        root.level,
        logging.getLogRecordFactory(),
        gc.get_threshold(),
        gc.get_freeze_count(),
        os.getcwd(),
        dict(os.environ),
        list(sys.argv),
        (sys.stdin, sys.stdout, sys.stderr),
    )


def test_an_in_process_run_leaves_the_process_as_it_was(tmp_path: Path) -> None:
    before = _process_state()
    config = {**config_under(tmp_path), "dry_run": True}
    lines = singer_lines("orders", [track(1), track(2)], state={"upto": 2})
    result = run_target(config, lines, tmp_path, env={"TARGET_EVERFLOW_HELPER_TEST": "1"})
    assert result.code == 0, result.stderr
    assert result.states == [{"upto": 2}]
    assert "Run summary: 2 records read" in result.stderr  # the run's log, on its stderr
    assert _process_state() == before


def test_in_process_and_subprocess_runs_say_the_same(tmp_path: Path) -> None:
    answers = []
    for subprocess_run in (False, True):
        where = tmp_path / str(subprocess_run)
        where.mkdir()
        config = {**config_under(where), "dry_run": True, "network_id": "x"}  # a bad setting
        answers.append(run_target(config, [], where, subprocess_run=subprocess_run))
    (inside, outside) = answers
    assert inside.code == outside.code == 1
    assert inside.stdout == outside.stdout == ""
    said = [
        [line.partition(" | ")[2] for line in run.stderr.splitlines() if "network_id" in line]
        for run in (inside, outside)
    ]  # (each line after its time)
    assert said[0] == said[1] != []


def test_a_failing_in_process_command_gives_its_exit_code_and_bytes(tmp_path: Path) -> None:
    result = run_cli(["ledger", "status", "--config", str(tmp_path / "none.json")], cwd=tmp_path)
    assert result.code == 1 and "was not found" in result.stderr
    assert bytes_of("caf\udce9") == b"caf\xe9"  # a byte that is not UTF-8 comes back as it was
