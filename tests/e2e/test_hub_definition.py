"""The Meltano Hub plugin definition and the wheel, used as someone outside this repository would:
a new Meltano project adds the loader from the definition file, installs it from the wheel that
``python -m build`` makes, and runs it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from target_everflow.adapter.target import plugin_settings_schema
from tests.conftest import singer_lines, track
from tests.e2e.conftest import INSTALL_TIMEOUT, RUN_TIMEOUT, Ran, run_command

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
(HUB_FILE,) = sorted((REPO / "plugin" / "loaders" / "target-everflow").glob("*.yml"))


def test_a_new_meltano_project_adds_the_hub_definition_and_runs_the_wheel(
    meltano_bin: str, tmp_path: Path
) -> None:
    env = {
        "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
        "NO_COLOR": "1",
        "MELTANO_CLI_LOG_FORMAT": "uncolored",
    }

    def run(args: list[str], cwd: Path, timeout: float = RUN_TIMEOUT, **extra: str) -> Ran:
        return run_command(args, {**env, **extra}, timeout, cwd=cwd).check()

    run(
        [
            sys.executable,
            "-m",
            "build",
            "--outdir",
            str(tmp_path / "dist"),
            str(REPO),
        ],  # wheel from the sdist
        cwd=tmp_path,
        timeout=INSTALL_TIMEOUT,
    )
    (wheel,) = (tmp_path / "dist").glob("target_everflow-*-py3-none-any.whl")

    run([meltano_bin, "init", "project", "--no_usage_stats"], cwd=tmp_path)
    project = tmp_path / "project"
    run(
        [
            meltano_bin,
            "add",
            "--plugin-type",
            "loader",
            "target-everflow",
            "--from-ref",
            str(HUB_FILE),
            "--no-install",
        ],
        cwd=project,
    )

    meltano_yml = project / "meltano.yml"
    definition = yaml.safe_load(meltano_yml.read_text())
    (loader,) = definition["plugins"]["loaders"]
    hub = yaml.safe_load(HUB_FILE.read_text())
    assert loader["settings"] == hub["settings"]  # Meltano took every setting as written
    assert loader["settings_group_validation"] == hub["settings_group_validation"]
    assert "pip_url" not in loader  # on no index yet: the definition names none
    loader["pip_url"] = str(wheel)  # what its prereq (and README) say to do meanwhile
    meltano_yml.write_text(yaml.safe_dump(definition, sort_keys=False))
    run([meltano_bin, "install"], cwd=project, timeout=INSTALL_TIMEOUT)

    about = json.loads(
        run(
            [meltano_bin, "invoke", "target-everflow", "--about", "--format", "json"], cwd=project
        ).stdout
    )
    assert {n: s.get("title") for n, s in about["settings"]["properties"].items()} == {
        n: s.get("title") for n, s in plugin_settings_schema()["properties"].items()
    }

    listing = run([meltano_bin, "config", "list", "target-everflow"], cwd=project).stdout
    assert "Postback URL:" in listing and "Network ID:" in listing  # the labels

    events = project / "events.singer"
    events.write_text("\n".join(singer_lines("tracks", [track(i) for i in range(1, 4)])) + "\n")
    out = project / "out"
    run(
        [meltano_bin, "invoke", "target-everflow", "--input", str(events)],
        cwd=project,
        TARGET_EVERFLOW_DRY_RUN="true",
        TARGET_EVERFLOW_NETWORK_ID="1",
        TARGET_EVERFLOW_DRY_RUN_OUTPUT=str(out / "planned.jsonl"),
        TARGET_EVERFLOW_DEAD_LETTER_PATH=str(out / "state" / "dead_letter.jsonl"),
        TARGET_EVERFLOW_SUMMARY_PATH=str(out / "summary.json"),
    )
    planned = [json.loads(line) for line in (out / "planned.jsonl").read_text().splitlines()]
    assert len(planned) == 3
    assert json.loads((out / "summary.json").read_text())["delivered"] == 3
    venv = project / ".meltano" / "loaders" / "target-everflow" / "venv"
    where = run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import target_everflow; print(target_everflow.__file__)",
        ],
        cwd=tmp_path,
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), (
        where
    )  # the wheel's copy, not the repo
