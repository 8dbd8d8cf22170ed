"""The Meltano SDK's standard target tests, and the SDK's test streams through a real run.

The SDK's suite (``singer_sdk.testing.suites.target_tests``) runs its ``target_test_streams``
through ``process_lines``. None of those streams is a Segment event, so for this target every
record in them ends as *skipped, unmapped_event*: the tests pass when the target reads them
without failing. Which of them apply, per test:

- array_data, camelcase, camelcase_complex_schema, duplicate_records, encoded_string_data,
  no_primary_keys, optional_attributes, pk_updates, record_missing_fields,
  schema_no_properties, schema_updates, special_chars_in_attributes, cli_prints: included,
  they must simply pass (every record skipped as unmapped_event, ``--about`` and ``--version``
  print).
- invalid_schema: included; the SDK expects an exception (``pytest.raises(Exception)``) when
  the SCHEMA message has no schema, and the target raises one (the CLI turns it into exit 2).
- record_before_schema: included; the SDK expects ``RecordsWithoutSchemaException``.
- record_missing_key_property: replaced. The SDK expects ``MissingKeyPropertiesError`` out of
  ``process_lines``; this target dead-letters such a record (``invalid_record``, naming the
  missing key) and goes on, because one bad record must not take the others down. The
  replacement asserts exactly that.

Left out:

- multiple_state_messages (``TargetMultipleStateMessages``): the SDK itself leaves it out of
  its suite ("TODO: add TargetMultipleStateMessages" in singer_sdk/testing/suites.py), and
  as written it cannot pass for any target: it compares the runner's parsed STATE dicts with
  JSON strings. ``test_state_messages_pass_through`` below checks the same thing properly.
- record_missing_required_property (``TargetRecordMissingRequiredProperty``): not in the SDK's
  suite either. See ``test_sdk_stream_through_main`` below for what the target does with it.
"""

from __future__ import annotations

import importlib.resources
import io
import json
import tempfile
from pathlib import Path

import pytest
from singer_sdk.testing import get_target_test_class, target_test_streams

from target_everflow.adapter.target import TargetEverflow
from tests.conftest import DEAD_LETTERS_ON_PURPOSE

# Outputs of the SDK's runs go to a directory of their own, created once for this module.
OUTPUT_DIR = Path(tempfile.mkdtemp(prefix="target-everflow-sdk-tests-"))

SDK_TEST_CONFIG = {
    "dry_run": True,
    "network_id": 1,
    "event_mapping": {"Order Completed": 0},
    "dry_run_output": str(OUTPUT_DIR / "everflow_dry_run.jsonl"),
    "dead_letter_path": str(OUTPUT_DIR / "state" / "dead_letter.jsonl"),
    "summary_path": str(OUTPUT_DIR / "summary.json"),
    "progress_interval": 0,
    "validate_records": True,  # the SDK's default; this target's is false
}


class TestTargetEverflowStandard(get_target_test_class(TargetEverflow, config=SDK_TEST_CONFIG)):
    def test_target_record_missing_key_property(self, tmp_path: Path) -> None:  # type: ignore[override]
        """Replaces the SDK's (see the module docstring): dead-lettered, not raised."""
        text = _read("record_missing_key_property")
        target = TargetEverflow(config={**_config(tmp_path), **DEAD_LETTERS_ON_PURPOSE})
        assert target.main(io.StringIO(text)) == 0
        assert target.run.summary.as_dict()["dead_lettered"] == {"invalid_record": _records(text)}
        (line,) = [
            json.loads(x)
            for x in Path(_config(tmp_path)["dead_letter_path"]).read_text().splitlines()
            if json.loads(x)["type"] == "RECORD"
        ]
        assert line["reason"] == "invalid_record" and "lacks key properties" in line["message"]
        assert line["field"] == "id"


# --- the same streams through a whole run (``main``), as the CLI runs them ----------------------

STREAM_FILES = sorted(
    f.name[: -len(".singer")]
    for f in importlib.resources.files(target_test_streams).iterdir()
    if f.name.endswith(".singer")
)
BROKEN_INPUT = {"invalid_schema", "record_before_schema"}
"""Not a valid Singer stream: exit 2 (input error), as any broken input."""
REPORTED = {
    "record_missing_key_property": "lacks a key property",
    "record_missing_required_property": "breaks its stream's schema (validate_records)",
}
"""Records that break their own stream's schema: dead-lettered as invalid_record, the run goes on."""


def _read(name: str) -> str:
    return (importlib.resources.files(target_test_streams) / f"{name}.singer").read_text(
        encoding="utf-8"
    )


def test_every_sdk_stream_is_covered() -> None:
    assert "array_data" in STREAM_FILES and "record_before_schema" in STREAM_FILES
    assert BROKEN_INPUT | set(REPORTED) <= set(STREAM_FILES)


def _config(tmp_path: Path) -> dict:
    return {
        **SDK_TEST_CONFIG,
        "dry_run_output": str(tmp_path / "dry.jsonl"),
        "dead_letter_path": str(tmp_path / "state" / "dl.jsonl"),
        "summary_path": str(tmp_path / "summary.json"),
    }


def _records(text: str) -> int:
    return sum(
        1 for line in text.splitlines() if line.strip() and json.loads(line)["type"] == "RECORD"
    )


@pytest.mark.parametrize("name", [name for name in STREAM_FILES if name not in REPORTED])
def test_sdk_stream_through_main(name: str, tmp_path: Path) -> None:
    text = _read(name)
    target = TargetEverflow(config=_config(tmp_path))
    code = target.main(io.StringIO(text))
    summary = json.loads((tmp_path / "summary.json").read_text())
    if name in BROKEN_INPUT:
        assert code == 2
        assert summary["records_read"] == 0
        return
    assert code == 0
    records = _records(text)
    assert summary["records_read"] == records
    assert target.run.summary.accounted() == records  # every record has exactly one outcome
    assert summary["delivered"] == 0
    assert summary["dead_lettered"] == {}
    assert summary["skipped"] == ({"unmapped_event": records} if records else {})
    assert (
        not (tmp_path / "state" / "dl.jsonl").exists()
        or (tmp_path / "state" / "dl.jsonl").read_text() == ""
    )
    assert (tmp_path / "dry.jsonl").read_text() == ""


@pytest.mark.parametrize("name", sorted(REPORTED))
def test_record_breaking_its_schema_does_not_crash_the_run(name: str, tmp_path: Path) -> None:
    """Either every record gets an outcome (dead letter invalid_record), or the run stops as
    on broken input (exit 2): never an exception out of main() with the config exit code."""
    text = _read(name)
    target = TargetEverflow(config={**_config(tmp_path), **DEAD_LETTERS_ON_PURPOSE})
    code = target.main(io.StringIO(text))
    assert code == 0
    assert target.run.summary.accounted() == _records(text)
    assert target.run.summary.as_dict()["dead_lettered"] == {"invalid_record": _records(text)}


def test_state_messages_pass_through(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What TargetMultipleStateMessages means to check: STATE reaches stdout, the last one last."""
    code = TargetEverflow(config=_config(tmp_path)).main(
        io.StringIO(_read("multiple_state_messages"))
    )
    assert code == 0
    states = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")
    ]
    assert states
    assert states[-1] == {"test_multiple_state_messages_a": 5, "test_multiple_state_messages_b": 6}
