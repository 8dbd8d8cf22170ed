"""README keeps the generated field table; the quick start's `make demo` works."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from target_everflow import fields

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- fields:start -->", "<!-- fields:end -->"


def test_readme_has_the_field_table_between_markers() -> None:
    readme = REPO / "README.md"
    assert readme.is_file(), "README.md is missing"
    text = readme.read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1, (
        "the field table markers must appear once each"
    )
    between = text.split(START, 1)[1].split(END, 1)[0]
    assert between.strip() == fields.markdown_table(), (
        "README's field table is out of date: paste fields.markdown_table() between the markers"
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
