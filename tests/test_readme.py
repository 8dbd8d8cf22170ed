"""README as a user reads it: short, every link there, every command run by a test (here or in
the test it names), nothing stale; the generated tables current; the quick start's `make demo`
works."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from target_everflow import fields
from tests.conftest import singer_lines, track
from tests.receiver import Receiver

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FIELDS_DOC = REPO / "docs" / "fields.md"
START, END = "<!-- fields:start -->", "<!-- fields:end -->"
TARGET = Path(sys.executable).with_name("target-everflow")

# Every command in README's ```sh blocks, and what runs it:
# - RUN_HERE: test_readme_commands_run below runs it as written, in a scratch directory;
# - "tests/<file>::<test>": that test runs it (or, where said, the nearest safe equivalent);
# - NOT_RUN: the few no test may run, with the reason.
RUN_HERE = "run here"
NOT_RUN = "not run"
COMMANDS: dict[str, str | tuple[str, str]] = {
    "make demo": "tests/test_readme.py::test_make_demo",
    "make demo-meltano": "tests/e2e/test_demo_meltano.py::test_make_demo_meltano_plans_the_sample_once",
    "make test": (NOT_RUN, "the whole suite, this test among it"),
    "make wheel": "tests/test_packaging.py::test_make_wheel_installs_only_build",
    # A wheel from the source, installed into a fresh virtualenv, --about: the Hub test does it
    # into the virtualenv Meltano makes (CI's `make wheel-check` into a plain one).
    "python -m venv ~/.venvs/target-everflow": "tests/e2e/test_hub_definition.py::test_a_new_meltano_project_adds_the_hub_definition_and_runs_the_wheel",
    "~/.venvs/target-everflow/bin/pip install './dist/target_everflow-0.1.0-py3-none-any.whl[postgres]'": "tests/e2e/test_hub_definition.py::test_a_new_meltano_project_adds_the_hub_definition_and_runs_the_wheel",
    "~/.venvs/target-everflow/bin/target-everflow --about": "tests/test_readme.py::test_about_shows_titles_only_as_json",
    "meltano add --plugin-type loader target-everflow --from-ref path/to/target-everflow/plugin/loaders/target-everflow/maintainers.yml --no-install": "tests/e2e/test_hub_definition.py::test_a_new_meltano_project_adds_the_hub_definition_and_runs_the_wheel",
    "meltano install": "tests/e2e/test_demo_meltano.py::test_make_demo_meltano_plans_the_sample_once",
    "meltano config list target-everflow": "tests/e2e/test_pipelines.py::test_meltano_yml_validates_and_lists_every_setting",
    "meltano run tap-filesanywhere target-everflow": "tests/e2e/test_pipelines.py::test_archive_pipeline_sends_each_conversion_once",
    "meltano run tap-postgres target-everflow": "tests/e2e/test_pipelines.py::test_warehouse_pipeline_sends_each_conversion_once",
    "meltano invoke target-everflow:check": "tests/e2e/test_pipelines.py::test_check_command_gets_its_config_from_meltano",
    "meltano --environment=prod run tap-postgres target-everflow": (
        NOT_RUN,
        "a live prod run sends real postbacks; nearest: the same pipeline in the e2e environment "
        "against a local receiver (tests/e2e/test_pipelines.py::test_warehouse_pipeline_sends_each_conversion_once)",
    ),
    "meltano config set target-everflow max_dead_letter_ratio 0.5": "tests/e2e/test_meltano_config_set.py::test_meltano_config_set_leaves_a_meltano_yml_the_checks_accept",
    "target-everflow ledger status --config config.json": RUN_HERE,
    "target-everflow history --config config.json --last 5": RUN_HERE,
    "target-everflow report --config config.json --output report.html": RUN_HERE,
    "target-everflow reconcile --config config.json": "tests/test_reconcile_e2e.py::test_reconcile_end_to_end_finds_exactly_the_rejected_and_missing",
    "target-everflow --config config.json --check": "tests/test_secrets.py::test_api_check_success_prints_no_secret",
    "make plugin-files": "tests/test_plugin_files.py::test_the_generated_files_are_current",
    "make bench": (NOT_RUN, "33 minutes of benchmarks on a shared machine (bench/run.py)"),
}


def readme() -> str:
    return README.read_text(encoding="utf-8")


def readme_commands() -> list[str]:
    """Each command line of README's ```sh blocks, without its comment."""
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", readme(), re.S | re.M):
        for line in block.splitlines():
            command = line.split("  #", 1)[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def test_readme_is_short_and_in_a_readers_order() -> None:
    text = readme()
    assert len(text.splitlines()) < 450
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings == [
        "Quick start",
        "Install",
        "Configure",
        "Meltano",
        "Running on a schedule",
        "Troubleshooting",
        "Development",
    ], headings


def test_every_relative_link_exists() -> None:
    for path in (README, *sorted((REPO / "docs").glob("*.md"))):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (path.parent / target).exists(), f"{path.name} links to missing {target}"


def test_nothing_stale() -> None:
    text = readme()
    assert "meltano config target-everflow set" not in text  # Meltano 4's form is config set
    assert "Python 3.10" not in text
    assert "<!-- fields:start -->" not in text  # the field table lives in docs/fields.md
    for make_target in re.findall(r"`make ([a-z0-9-]+)", text):
        assert re.search(rf"^{make_target}:", (REPO / "Makefile").read_text(), re.M), make_target


def test_every_readme_command_is_run_by_a_test() -> None:
    commands = readme_commands()
    unknown = [c for c in commands if c not in COMMANDS]
    assert not unknown, f"README commands no test runs (add them to COMMANDS): {unknown}"
    stale = [c for c in COMMANDS if c not in commands]
    assert not stale, f"COMMANDS lists what README no longer says: {stale}"
    for command, how in COMMANDS.items():
        if isinstance(how, tuple):
            assert how[0] == NOT_RUN and how[1], command
            continue
        if how == RUN_HERE:
            continue
        path, name = how.split("::")
        source = (REPO / path).read_text(encoding="utf-8")
        assert re.search(rf"^def {name}\(", source, re.M), f"{command}: no {how}"
    not_run = sorted(c for c, how in COMMANDS.items() if isinstance(how, tuple))
    assert not_run == [
        "make bench",
        "make test",
        "meltano --environment=prod run tap-postgres target-everflow",
    ]


@pytest.fixture
def scratch_with_history(tmp_path: Path) -> Path:
    """A directory with README's config.json (a live config against a local receiver) and a
    ledger holding two delivered conversions and one run of history."""
    with Receiver() as rx:
        config = {
            "postback_url": rx.url,
            "network_id": 1,
            "progress_interval": 0,
            "request_timeout": 5,
        }
        (tmp_path / "config.json").write_text(json.dumps(config))
        proc = subprocess.run(
            [str(TARGET), "--config", "config.json"],
            input="\n".join(singer_lines("orders", [track(1), track(2)])) + "\n",
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert len(rx.requests) == 2
    return tmp_path


EXPECTED_OUTPUT = {
    "target-everflow ledger status --config config.json": "delivered",
    "target-everflow history --config config.json --last 5": "newest first",
}


def test_readme_commands_run(scratch_with_history: Path) -> None:
    here = [c for c, how in COMMANDS.items() if how == RUN_HERE]
    assert here
    for command in here:
        words = shlex.split(command)
        assert words[0] == "target-everflow"
        proc = subprocess.run(
            [str(TARGET), *words[1:]],
            cwd=scratch_with_history,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"{command}: {proc.stderr[-2000:]}"
        if command in EXPECTED_OUTPUT:
            assert EXPECTED_OUTPUT[command] in proc.stdout, (command, proc.stdout)
    report = (scratch_with_history / "report.html").read_text(encoding="utf-8")
    assert "<html" in report.lower() and "Order Completed" in report


def test_about_shows_titles_only_as_json() -> None:
    """README: `--about` lists settings with type and environment variable; `--about --format
    json` adds the titles."""
    plain = subprocess.run([str(TARGET), "--about"], capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0
    assert "TARGET_EVERFLOW_POSTBACK_URL" in plain.stdout and "Postback URL" not in plain.stdout
    as_json = subprocess.run(
        [str(TARGET), "--about", "--format", "json"], capture_output=True, text=True, timeout=60
    )
    settings = json.loads(as_json.stdout)["settings"]["properties"]
    assert settings["postback_url"]["title"] == "Postback URL"
    assert "--about --format json` adds each setting's title" in readme()


def test_the_field_table_in_docs_fields_is_current() -> None:
    text = FIELDS_DOC.read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1, (
        "the field table markers must appear once each"
    )
    between = text.split(START, 1)[1].split(END, 1)[0]
    assert between.strip() == fields.markdown_table(), (
        "docs/fields.md's field table is out of date: run python scripts/update_readme.py"
    )


def demo_command() -> list[str]:
    """The target-everflow command line of the Makefile's demo recipe."""
    lines = (REPO / "Makefile").read_text(encoding="utf-8").splitlines()
    start = lines.index(next(line for line in lines if line.startswith("demo:")))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    (command,) = [line for line in recipe if "target-everflow " in line]
    words = shlex.split(command.split(">", 1)[0])
    assert Path(words[0]).name == "target-everflow"
    return words[1:]


def test_make_demo(tmp_path: Path) -> None:
    args = demo_command()
    assert args == [
        "--config",
        "samples/demo_config.json",
        "--input",
        "samples/segment_events.singer",
    ]
    # The same command, from a scratch directory holding a copy of samples/ (the demo's
    # outputs are relative to the working directory: output/demo/...).
    shutil.copytree(REPO / "samples", tmp_path / "samples")
    executable = Path(sys.executable).with_name("target-everflow")
    assert executable.exists(), executable
    proc = subprocess.run(
        [str(executable), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "samples" / "demo_config.json").read_text())
    assert config["dry_run"] is True  # the demo never sends anything
    summary = json.loads((tmp_path / config["summary_path"]).read_text())
    for reason in ("not_track", "unmapped_event", "no_transaction_id", "duplicate"):
        assert summary["skipped"].get(reason, 0) >= 1, reason
    for reason in ("missing_required_field", "type_mismatch"):
        assert summary["dead_lettered"].get(reason, 0) >= 1, reason
    assert summary["delivered"] >= 1
    assert summary["dropped_fields"] >= 1
    planned = (tmp_path / config["dry_run_output"]).read_text().splitlines()
    dead_lettered = sum(summary["dead_lettered"].values())
    ratio = round(100 * dead_lettered / (dead_lettered + len(planned)))
    assert (  # the numbers README's quick start gives
        f"It dead-letters {dead_lettered} records on purpose: with {len(planned)} planned\n"
        f"postbacks that is {ratio}%" in readme()
    )
    # a dry run says what it did: planned (and "delivered", kept for scripts, the same number)
    assert summary["dry_run"] is True and summary["planned"] == len(planned) == summary["delivered"]
    assert f"{len(planned)} planned" in proc.stderr
    dead_count = sum(summary["dead_lettered"].values())
    kept = "1 record was kept" if dead_count == 1 else f"{dead_count} records were kept"
    assert f"{kept} in " in proc.stderr
    dead = [
        json.loads(line)
        for line in (tmp_path / config["dead_letter_path"]).read_text().splitlines()
    ]
    assert len([line for line in dead if line["type"] == "RECORD"]) == sum(
        summary["dead_lettered"].values()
    )
    # the demo token is shown only as ***
    token = config["verification_token"]
    for text in (proc.stdout, proc.stderr, "\n".join(planned), json.dumps(summary)):
        assert token not in text
