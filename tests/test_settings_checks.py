"""Settings and numbers from people are checked, and a config that is wrong says so in one line
(issues 20.6, 20.7): every number a setting, an environment variable or a command-line option
gives is finite and within the bounds the config schema states (once: ``minimum``/``maximum``);
a config file that is not JSON names the file, line and column; a ``TARGET_EVERFLOW_*`` variable
that cannot be read names the variable; a key that is no setting gets a warning naming the
closest one. Exit 1, never a traceback. The hypothesis test at the end throws hostile values at
every setting, through a config file and through its environment variable."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from singer_sdk.exceptions import ConfigValidationError

from target_everflow.adapter.target import HIDDEN_SDK_SETTINGS, TargetEverflow
from target_everflow.settings import (
    CONFIG_SCHEMA,
    ConfigError,
    Settings,
    check_number,
    is_number_spec,
)
from tests.conftest import config_under, singer_lines, track

ALL_SETTINGS = TargetEverflow.settings_schema()["properties"]
NUMBER_SETTINGS = {name: spec for name, spec in ALL_SETTINGS.items() if is_number_spec(spec)}


def cli(
    tmp: Path, *args: str, env: dict | None = None, stdin: str = ""
) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TARGET_EVERFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "target_everflow", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp,
        env={**clean, **(env or {})},
    )


def error_lines(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "ERROR" in line or line.startswith("target-everflow:")
    ]


def dry(tmp: Path, **changes: t.Any) -> dict:
    return {**config_under(tmp), "dry_run": True, **changes}


# --- the schema states every bound once ---------------------------------------------------------


def test_every_number_setting_states_a_minimum_and_a_maximum() -> None:
    assert {
        "request_timeout",
        "max_dead_letter_ratio",
        "network_id",
        "flattening_max_depth",
    } <= set(NUMBER_SETTINGS)
    for name, spec in NUMBER_SETTINGS.items():
        assert {"minimum", "exclusiveMinimum"} & set(spec), name
        assert {"maximum", "exclusiveMaximum"} & set(spec), name
    ids = CONFIG_SCHEMA["properties"]["event_mapping"]["additionalProperties"]
    assert ids["minimum"] == 0 and ids["maximum"] == 2147483647


def test_the_readme_table_shows_the_bounds() -> None:
    from target_everflow.settings import markdown_table

    table = markdown_table()
    assert "| `request_timeout` | number (> 0, <= 3600) |" in table
    assert "| `max_dead_letter_ratio` | number (>= 0, <= 1) |" in table
    assert "| `max_concurrency` | integer (>= 1, <= 512) |" in table


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("request_timeout", float("nan"), "must be a number > 0 and <= 3600, not nan"),
        ("request_timeout", float("inf"), "must be a number > 0 and <= 3600, not inf"),
        ("request_timeout", 1e10, "must be a number > 0 and <= 3600, not 1e+10"),
        ("request_timeout", "1e400", "must be a number > 0 and <= 3600, not '1e400'"),
        ("request_timeout", "Infinity", "must be a number > 0 and <= 3600, not the text 'Infinity'"),
        ("max_dead_letter_ratio", float("nan"), "must be a number >= 0 and <= 1, not nan"),
        ("max_dead_letter_ratio", "nan", "must be a number >= 0 and <= 1, not the text 'nan'"),
        ("max_dead_letter_ratio", -0.1, "must be a number >= 0 and <= 1, not -0.1"),
        ("max_retries", 2.5, "must be an integer >= 0 and <= 50, not 2.5"),
        ("max_retries", True, "must be an integer >= 0 and <= 50, not true or false"),
        ("network_id", 10**400, "must be an integer >= 1 and <= 2147483647, not a number that large"),
        ("network_id", "abc", "must be an integer >= 1 and <= 2147483647, not the text 'abc'"),
        ("max_dead_letters", [3], "must be an integer >= 0 and <= 1000000000, not a list"),
    ],
)  # fmt: skip
def test_a_number_that_is_not_finite_or_out_of_bounds_is_refused(
    setting: str, value: t.Any, says: str
) -> None:
    with pytest.raises(ConfigError) as info:
        check_number(setting, value)
    assert str(info.value) == f"Setting '{setting}': {says}"


def test_a_number_given_as_text_is_read(tmp_path: Path) -> None:
    assert check_number("max_dead_letter_ratio", "0.5") == 0.5
    assert check_number("max_retries", " 7 ") == 7
    assert check_number("max_retries", "7.0") == 7
    settings = Settings.from_config(dry(tmp_path, max_dead_letter_ratio="1", request_timeout="2.5"))
    assert (settings.max_dead_letter_ratio, settings.request_timeout) == (1.0, 2.5)


@pytest.mark.parametrize(
    ("setting", "value"),
    [("request_timeout", 1e10), ("request_timeout", float("inf")), ("max_dead_letter_ratio", float("nan")),
     ("ledger_retention_days", 10**30), ("progress_interval", float("nan")), ("event_mapping", {"Order Completed": 2**40})],
)  # fmt: skip
def test_settings_from_config_checks_every_number(
    tmp_path: Path, setting: str, value: t.Any
) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_config(dry(tmp_path, **{setting: value}))
    assert info.value.setting == setting


def test_a_request_timeout_of_1e10_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    """Before: an OverflowError mid-run, claims left `sending`."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**config_under(tmp_path), "postback_url": "http://127.0.0.1:9/",
                                  "request_timeout": 1e10}))  # fmt: skip
    proc = cli(
        tmp_path, "--config", str(config), stdin="\n".join(singer_lines("orders", [track(1)]))
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert error_lines(proc.stderr) == [
        line for line in proc.stderr.splitlines() if "Setting 'request_timeout'" in line
    ]
    assert len(error_lines(proc.stderr)) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "state" / "ledger.sqlite3").exists()


def test_a_nan_ratio_from_the_environment_is_refused(tmp_path: Path) -> None:
    """Before: max_dead_letter_ratio NaN silently turned the threshold off."""
    env = {"TARGET_EVERFLOW_DRY_RUN": "true", "TARGET_EVERFLOW_MAX_DEAD_LETTER_RATIO": "nan"}
    proc = cli(tmp_path, "--config", "ENV", env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    (line,) = error_lines(proc.stderr)
    assert line.endswith(
        "Setting 'max_dead_letter_ratio': must be a number >= 0 and <= 1, not the text 'nan'"
    )


# --- config errors are one line (issue 20.7) -----------------------------------------------------

COMMANDS = [(), ("--check",), ("history",), ("report", "-o", "r.html"), ("reconcile",),
            ("ledger", "status"), ("ledger", "in-doubt"), ("ledger", "forget", "--older-than", "30"),
            ("check",)]  # fmt: skip


def _with_config(command: tuple[str, ...], config: str) -> list[str]:
    if command[:1] == ("ledger",):
        return [*command[:2], "--config", config, *command[2:]]
    if command and not command[0].startswith("-"):
        return [command[0], "--config", config, *command[1:]]
    return ["--config", config, *command]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "target")
def test_a_config_file_that_is_not_json_is_one_line(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    config = tmp_path / "config.json"
    config.write_text('{\n  "dry_run": true,\n  "network_id": 1,\n}\n')
    proc = cli(tmp_path, *_with_config(command, str(config)))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert line.endswith(
        f"Config file '{config}' is not valid JSON: Expecting property name enclosed in double "
        "quotes at line 4, column 1."
    ), line


@pytest.mark.parametrize(
    ("text", "says"),
    [("[1, 2]", "must hold a JSON object of settings, not a list"),
     ('{"request_timeout": NaN}', "is not valid JSON: NaN is not a JSON number"),
     ("\xff\xfe", "is not UTF-8 text"), ("", "is not valid JSON: Expecting value at line 1, column 1.")],
)  # fmt: skip
def test_other_broken_config_files(tmp_path: Path, text: str, says: str) -> None:
    config = tmp_path / "config.json"
    config.write_bytes(text.encode("latin-1"))
    for command in [(), ("history",)]:
        proc = cli(tmp_path, *_with_config(command, str(config)))
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        (line,) = error_lines(proc.stderr)
        assert f"Config file '{config}' {says}" in line


def test_a_missing_config_file_is_one_line(tmp_path: Path) -> None:
    for command in [(), ("history",)]:
        proc = cli(tmp_path, *_with_config(command, str(tmp_path / "nope.json")))
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        (line,) = error_lines(proc.stderr)
        assert line.endswith(f"Config file '{tmp_path / 'nope.json'}' was not found.")


@pytest.mark.parametrize(
    "command", [(), ("history",), ("check",)], ids=lambda c: " ".join(c) or "target"
)
@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [("TARGET_EVERFLOW_NETWORK_ID", "abc", "Setting 'network_id': must be an integer >= 1 and <= 2147483647, not the text 'abc'"),
     ("TARGET_EVERFLOW_DRY_RUN", "maybe", "Environment variable TARGET_EVERFLOW_DRY_RUN must be true or false, not 'maybe'."),
     ("TARGET_EVERFLOW_EVENT_MAPPING", "{oops", "Environment variable TARGET_EVERFLOW_EVENT_MAPPING must be JSON (an object).")],
)  # fmt: skip
def test_a_bad_environment_variable_is_one_line(
    tmp_path: Path, command: tuple[str, ...], variable: str, value: str, says: str
) -> None:
    env = {"TARGET_EVERFLOW_DRY_RUN": "true", variable: value}
    proc = cli(tmp_path, *_with_config(command, "ENV"), env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = error_lines(proc.stderr)
    assert line.endswith(says), line


def test_a_key_that_is_no_setting_gets_a_warning_naming_the_closest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = {**dry(tmp_path), "network-id": 1, "request_timout": 5, "Dry_Run": True,
              "load_method": "append-only", "zzzz": 1}  # fmt: skip
    TargetEverflow(config=config)
    warnings = [r.getMessage() for r in caplog.records if "is not a setting" in r.getMessage()]
    assert warnings == [
        "Config key 'network-id' is not a setting of target-everflow; did you mean 'network_id'?",
        "Config key 'request_timout' is not a setting of target-everflow; did you mean "
        "'request_timeout'?",
        "Config key 'Dry_Run' is not a setting of target-everflow; did you mean 'dry_run'?",
        "Config key 'zzzz' is not a setting of target-everflow (it is ignored).",
    ]
    assert "load_method" in HIDDEN_SDK_SETTINGS  # an SDK setting: known, no warning


def test_environment_variables_that_are_no_setting_are_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TARGET_EVERFLOW_NETWORK_IDD", "1")
    monkeypatch.setenv("TARGET_EVERFLOW_TEST_SOMETHING", "x")
    TargetEverflow(config=dry(tmp_path), parse_env_config=True)
    assert not [r for r in caplog.records if "is not a setting" in r.getMessage()]


@pytest.mark.parametrize("name", ["stream_maps", "stream_map_config", "event_mapping"])
def test_null_is_not_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Before: `stream_maps: null` (or TARGET_EVERFLOW_STREAM_MAPS=null) was a TypeError traceback
    from the SDK's mapper."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**dry(tmp_path), name: None}))
    assert TargetEverflow(config=[str(path)]).settings.dry_run
    monkeypatch.setenv("TARGET_EVERFLOW_" + name.upper(), "null")
    assert TargetEverflow(config=dry(tmp_path), parse_env_config=True).settings.dry_run


# --- numeric command-line options -----------------------------------------------------------------

NUMERIC_OPTIONS = [("ledger", "forget", "--older-than"), ("history", "--last"), ("report", "--days"),
                   ("report", "--runs")]  # fmt: skip


@pytest.mark.parametrize(
    ("option", "value"),
    [(NUMERIC_OPTIONS[0], v) for v in ("nan", "inf", "1e400", "-1", "1e30", "abc", "")]
    + [(option, "nan") for option in NUMERIC_OPTIONS[1:]]
    + [(NUMERIC_OPTIONS[1], "1e30"), (NUMERIC_OPTIONS[2], "0")],
    ids=str,
)  # (every value against every option: the in-process hypothesis test below)
def test_a_numeric_option_is_finite_and_in_bounds(
    tmp_path: Path, option: tuple[str, ...], value: str
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dry(tmp_path)))
    *command, name = option
    proc = cli(tmp_path, *_with_config(tuple(command), str(config)), name, value)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"target-everflow: Option {name}: must be "), line


def _ledger_keys(path: Path) -> int:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT COUNT(*) FROM everflow_ledger").fetchone()[0]


def test_ledger_forget_older_than_nan_forgets_nothing(tmp_path: Path) -> None:
    """Before: `--older-than nan` was accepted (on PostgreSQL it forgot every key and run)."""
    from tests.receiver import Receiver

    with Receiver() as rx:
        config_path = tmp_path / "config.json"
        config_path.write_text(json.dumps({**config_under(tmp_path), "postback_url": rx.url}))
        run = cli(
            tmp_path,
            "--config",
            str(config_path),
            stdin="\n".join(singer_lines("orders", [track(1)])),
        )
    assert run.returncode == 0, run.stderr[-2000:]
    ledger = tmp_path / "state" / "ledger.sqlite3"
    assert _ledger_keys(ledger) == 1
    for value in ("nan", "NaN", "-nan"):
        proc = cli(
            tmp_path, "ledger", "forget", "--config", str(config_path), "--older-than", value
        )
        assert proc.returncode == 1
    assert _ledger_keys(ledger) == 1
    ok = cli(tmp_path, "ledger", "forget", "--config", str(config_path), "--older-than", "0.5")
    assert ok.returncode == 0 and "Forgot 0 delivered" in ok.stdout, ok.stderr


# --- hostile values, every setting, a config file and an environment variable (hypothesis) -------

HOSTILE = st.one_of(
    st.sampled_from(
        [
            float("nan"),
            float("inf"),
            float("-inf"),
            -1,
            0,
            1,
            10**400,
            -(10**400),
            True,
            False,
            None,
            [],
            {},
            [1, "a"],
            {"a": 1},
            {"Order Completed": -1},
            "",
            " ",
            "nan",
            "NaN",
            "Infinity",
            "-Infinity",
            "1e400",
            "-1",
            "0.5",
            "1_000",
            "0x10",
            "abc",
            "x" * 100_000,
            "\x00\n\u2028",
            '{"a": 1}',
            "[1]",
            "true",
            "null",
        ]
    ),  # fmt: skip
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _env_text(value: t.Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, allow_nan=True)


def _assert_accepted_or_one_line(make: t.Callable[[], TargetEverflow], name: str) -> None:
    try:
        target = make()
    except ConfigValidationError as exc:
        assert len(exc.errors) == 1, exc.errors
        (error,) = exc.errors
        assert "\n" not in error and len(error) < 1000, error
        return
    except SystemExit:  # a click exit cannot happen here: nothing else may leave __init__
        pytest.fail("SystemExit from the target's construction")
    value = target.config.get(name)
    if name in NUMBER_SETTINGS and value is not None:
        assert isinstance(value, (int, float)) and math.isfinite(value), (name, value)
        assert check_number(name, value, NUMBER_SETTINGS[name]) == value


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.sampled_from(sorted(ALL_SETTINGS)), value=HOSTILE)
def test_hostile_values_through_a_config_file(tmp_path: Path, name: str, value: t.Any) -> None:
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps({**dry(tmp_path), name: value}, allow_nan=True))
    _assert_accepted_or_one_line(lambda: TargetEverflow(config=[str(path)]), name)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.sampled_from(sorted(ALL_SETTINGS)), value=HOSTILE)
def test_hostile_values_through_an_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: t.Any
) -> None:
    text = _env_text(value)
    if "\x00" in text:
        return  # an environment variable cannot hold a NUL
    with monkeypatch.context() as patch:
        patch.setenv("TARGET_EVERFLOW_" + name.upper(), text)
        _assert_accepted_or_one_line(
            lambda: TargetEverflow(config=dry(tmp_path), parse_env_config=True), name
        )


@settings(max_examples=150, deadline=None)
@given(value=HOSTILE.map(_env_text), option=st.sampled_from(NUMERIC_OPTIONS))
def test_hostile_values_for_numeric_options(value: str, option: tuple[str, ...]) -> None:
    """In process: the option's callback alone (the command never runs on a refused value)."""
    import click

    from target_everflow.adapter.commands import history, ledger, report

    command = {"forget": ledger.forget_command, "history": history.history_command,
               "report": report.report_command}[option[-2]]  # fmt: skip
    (param,) = [p for p in command.params if option[-1] in getattr(p, "opts", ())]
    ctx = click.Context(command)
    try:
        number = param.callback(ctx, param, value)  # type: ignore[misc]  # click's callback
    except click.exceptions.Exit as exc:
        assert exc.exit_code == 1
        return
    assert isinstance(number, (int, float)) and math.isfinite(number)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.one_of(
        st.text(max_size=60),
        st.sampled_from(
            [
                '{"dry_run": true,}',
                '{"dry_run": tru}',
                "{" * 5000,
                "[" * 100_000,
                '{"a": 1} {"b": 2}',
                '{"dry_run": true, "x": NaN}',
                "\ufeff{}",
                "null",
            ]
        ),  # fmt: skip
    )
)
def test_hostile_config_file_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "hostile.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        TargetEverflow(config=[str(path)])
    except ConfigValidationError as exc:
        (error,) = exc.errors
        assert "\n" not in error and len(error) < 1000, error
