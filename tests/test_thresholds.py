"""Failure thresholds (issue 14): a run that dead-letters too much exits 5, after everything is
settled and STATE emitted, and its last log line says which threshold it passed and by how much."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import (
    REPO,
    config_under,
    dead_letter_records,
    run_in_process,
    run_target,
    singer_lines,
    track,
)
from tests.receiver import Answer, Receiver

STATE = {"bookmarks": {"orders": {"upto": 9}}}


def last_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if line.strip()][-1]


def rejecting(*transactions: str) -> Receiver:
    """A receiver that rejects (204) the postbacks of ``transactions`` and accepts the rest."""
    return Receiver(
        script=Receiver.per_transaction({tx: [Answer.no_content()] for tx in transactions})
    )


def dry(base_config: dict, **changes: object) -> dict:
    return {**base_config, "dry_run": True, **changes}


def mobile_without_app(i: int) -> dict:
    """A conversion the mapper dead-letters (missing_required_field)."""
    record = track(i)
    record["context"]["os"] = {"name": "iOS"}
    return record


def test_a_run_above_the_ratio_exits_5_after_settling_and_emitting_state(base_config, tmp_path):
    records = [track(i) for i in range(10)]
    with rejecting("tx-2", "tx-5") as rx:
        config = {**base_config, "postback_url": rx.url}  # the default max_dead_letter_ratio: 0.05
        result = run_target(config, singer_lines("orders", records, state=STATE), tmp_path)
        accepted = rx.count_by_transaction()
    assert result.code == 5, result.stderr[-2000:]
    assert result.states[-1] == STATE  # STATE still emitted: every record has its outcome
    assert sum(accepted.values()) == 8
    summary = json.loads(Path(config["summary_path"]).read_text())
    assert (summary["delivered"], summary["dead_lettered"]) == (8, {"rejected": 2})
    assert len(dead_letter_records(Path(config["dead_letter_path"]))) == 2
    line = last_line(result.stderr)
    assert "ERROR" in line and "Failure threshold passed" in line
    assert "2 of 10 conversions were dead-lettered (20.00%)" in line
    assert "max_dead_letter_ratio 0.05 (5.00%) by 15.00 percentage points" in line
    assert "Exit code 5" in line


def test_max_dead_letters_counts_and_says_by_how_many(base_config, tmp_path):
    lines = singer_lines("orders", [track(i) for i in range(10)], state=STATE)
    with rejecting("tx-2", "tx-5", "tx-7") as rx:
        config = {
            **base_config,
            "postback_url": rx.url,
            "max_dead_letter_ratio": 1,
            "max_dead_letters": 1,
        }
        over = run_target(config, lines, tmp_path)
    assert over.code == 5 and over.states[-1] == STATE
    line = last_line(over.stderr)
    assert "3 records were dead-lettered, above max_dead_letters 1 by 2" in line
    assert "max_dead_letter_ratio" not in line  # 1 turns the ratio off
    # exactly at the limit is not above it
    with rejecting("tx-12", "tx-15", "tx-17") as rx:
        config = {**config, "postback_url": rx.url, "max_dead_letters": 3}
        at = run_target(config, singer_lines("orders", [track(i) for i in range(10, 20)]), tmp_path)
    assert at.code == 0, at.stderr[-2000:]
    assert "Failure threshold" not in at.stderr


def test_both_thresholds_passed_are_named_in_one_last_line(base_config, tmp_path):
    records = [track(1), mobile_without_app(2), mobile_without_app(3)]
    result = run_target(
        dry(base_config, max_dead_letters=0), singer_lines("orders", records), tmp_path
    )
    assert result.code == 5
    line = last_line(result.stderr)
    assert (
        "2 of 3 conversions were dead-lettered (66.67%), above max_dead_letter_ratio 0.05" in line
    )
    assert (
        "by 61.67 percentage points; 2 records were dead-lettered, above max_dead_letters 0 by 2"
        in line
    )


@pytest.mark.parametrize(("planned", "dead", "code"), [(19, 1, 0), (9, 1, 5), (0, 0, 0), (0, 1, 5)])
def test_a_dry_run_counts_planned_postbacks_as_delivered(base_config, planned, dead, code):
    records = [track(i) for i in range(planned)] + [
        mobile_without_app(100 + i) for i in range(dead)
    ]
    got, target = run_in_process(dry(base_config), singer_lines("orders", records))
    assert got == code
    assert target.run.summary.totals()["delivered"] == planned


def test_skips_are_not_failures(base_config, tmp_path):
    """100 skipped records (unmapped, no transaction id, duplicates) change nothing: 1 dead letter
    of 11 conversions is above 5% (it would be under it if skips counted), none of 1 is fine."""
    skipped = (
        [track(i, event="Product Viewed") for i in range(40)]
        + [track(i, tid=None) for i in range(40, 80)]
        + [track(1)] * 20
    )
    with_dead = [track(i) for i in range(1, 11)] + [mobile_without_app(99)]
    code, target = run_in_process(dry(base_config), singer_lines("orders", skipped + with_dead))
    assert sum(target.run.summary.as_dict()["skipped"].values()) == 100
    assert code == 5
    code, target = run_in_process(
        dry(config_under(tmp_path / "no-dead-letters")),
        singer_lines("orders", skipped[:80] + [track(500)]),
    )
    assert sum(target.run.summary.as_dict()["skipped"].values()) == 80
    assert code == 0


def test_an_other_failure_keeps_its_exit_code_and_the_threshold_is_a_warning(base_config, tmp_path):
    """Input broken at a line (exit 2) after records above the threshold: 2 wins, and says why."""
    lines = singer_lines("orders", [track(1), mobile_without_app(2)], state=STATE) + ["{not json"]
    result = run_target(dry(base_config), lines, tmp_path)
    assert result.code == 2
    assert result.states[-1] == STATE
    warning = [line for line in result.stderr.splitlines() if "Failure threshold" in line]
    assert len(warning) == 1 and "WARNING" in warning[0]
    assert "1 of 2 conversions" in warning[0] and "exit code 2 takes precedence" in warning[0]


def test_a_systemic_delivery_failure_keeps_exit_3(base_config, tmp_path):
    script = Receiver.per_transaction({"tx-1": [Answer.no_content()], "tx-2": [Answer.status(401)]})
    with Receiver(script=script) as rx:
        config = {
            **base_config,
            "postback_url": rx.url,
            "max_concurrency": 1,
            "max_dead_letters": 0,
        }
        result = run_target(
            config, singer_lines("orders", [track(1), track(2), track(3)]), tmp_path
        )
    assert result.code == 3, result.stderr[-2000:]
    assert "exit code 3 takes precedence" in result.stderr


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        (
            {"max_dead_letter_ratio": 1.5},
            "Setting 'max_dead_letter_ratio': must be a number >= 0 and <= 1, not 1.5",
        ),
        (
            {"max_dead_letter_ratio": -0.1},
            "Setting 'max_dead_letter_ratio': must be a number >= 0 and <= 1, not -0.1",
        ),
        (
            {"max_dead_letters": -1},
            "Setting 'max_dead_letters': must be an integer >= 0 and <= 1000000000, not -1",
        ),
        (
            {"max_dead_letters": 2.5},
            "Setting 'max_dead_letters': must be an integer >= 0 and <= 1000000000, not 2.5",
        ),
    ],
)
def test_bad_threshold_settings_exit_1_naming_the_setting(base_config, tmp_path, changes, says):
    result = run_target(dry(base_config, **changes), singer_lines("orders", [track(1)]), tmp_path)
    assert result.code == 1
    assert says in result.stderr


def test_the_demo_sets_no_threshold_and_stays_under_the_default(tmp_path):
    """`make demo` dead-letters on purpose and exits 0 with the default threshold: its sample
    has enough ordinary conversions (tests/test_readme.py runs the demo command itself)."""
    demo = json.loads((REPO / "samples" / "demo_config.json").read_text())
    assert not {"max_dead_letter_ratio", "max_dead_letters"} & set(demo)
    config = {
        **demo,
        **{
            k: str(tmp_path / Path(demo[k]).name)
            for k in ("dry_run_output", "dead_letter_path", "summary_path")
        },
    }
    lines = (REPO / "samples" / "segment_events.singer").read_text().splitlines()
    result = run_target(config, lines, tmp_path)
    assert result.code == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    dead = sum(summary["dead_lettered"].values())
    assert dead >= 2
    assert dead / (dead + summary["delivered"]) <= 0.05


# --- exit-code precedence (issue 20.9): 2/3/4/7/128+n, then 5, then 6 -----------------------------

RUN_FAILURES = (1, 2, 3, 4, 7, 130, 143)


@pytest.mark.parametrize("failure", RUN_FAILURES)
@pytest.mark.parametrize("other", [0, 5, 6])
def test_a_failure_of_the_run_outranks_5_and_6(failure: int, other: int) -> None:
    from target_everflow.errors import precedence

    assert precedence(failure, other) == failure
    assert precedence(other, failure) == failure


@pytest.mark.parametrize(("a", "b", "expected"), [(5, 6, 5), (6, 5, 5), (0, 5, 5), (0, 6, 6),
                                                  (6, 0, 6), (5, 0, 5), (0, 0, 0), (5, 5, 5)])  # fmt: skip
def test_5_outranks_6_which_outranks_0(a: int, b: int, expected: int) -> None:
    from target_everflow.errors import precedence

    assert precedence(a, b) == expected


def test_between_two_failures_of_the_run_the_first_stands() -> None:
    from target_everflow.errors import precedence

    assert precedence(3, 4) == 3
    assert precedence(4, 3) == 4
    assert precedence(2, 143, 5, 6) == 2


def test_the_threshold_verdict_follows_the_precedence(base_config: dict) -> None:
    from target_everflow.accounting.thresholds import verdict
    from target_everflow.errors import EXIT_RECONCILE, EXIT_THRESHOLD
    from target_everflow.settings import Settings

    settings = Settings.from_config(dry(base_config))
    assert verdict(settings, 1, 1, EXIT_RECONCILE)[0] == EXIT_THRESHOLD
    code, line = verdict(settings, 1, 1, 4)
    assert code == 4 and line is not None and "exit code 4 takes precedence" in line
    assert verdict(settings, 10, 0, EXIT_RECONCILE) == (EXIT_RECONCILE, None)


def test_over_the_threshold_and_reconcile_finds_rejections_exits_5(tmp_path: Path) -> None:
    """A run that dead-letters above the ratio and whose reconcile then finds a rejection:
    5 (the threshold), not 6."""
    from tests.conftest import SECRET_API_KEY
    from tests.receiver import FakeReporting, Verdict

    reporting = FakeReporting(api_key=SECRET_API_KEY, verdicts={"tx-1": Verdict.rejected(21)})
    with Receiver(reporting=reporting) as rx:
        config = {**config_under(tmp_path), "postback_url": rx.url, "api_url": rx.api_url,
                  "api_key": SECRET_API_KEY, "preflight": False, "request_timeout": 5,
                  "reconcile_after_minutes": 0, "reconcile_not_found_after_hours": 0}  # fmt: skip
        first = [track(1), track(2)]
        for record in first:
            record["timestamp"] = "2026-11-30T10:00:00Z"
        delivered = run_target(config, singer_lines("orders", first), tmp_path)
        assert delivered.code == 0, delivered.stderr[-2000:]
        only_reconcile = run_target({**config, "reconcile": True}, [], tmp_path)
        assert only_reconcile.code == 6, only_reconcile.stderr[-2000:]
        rx.set_script(Receiver.per_transaction({"tx-3": [Answer.no_content()]}))
        result = run_target(
            {**config, "reconcile": True}, singer_lines("orders", [track(3)]), tmp_path
        )
    assert result.code == 5, result.stderr[-2000:]
    assert "Failure threshold passed" in last_line(result.stderr)
