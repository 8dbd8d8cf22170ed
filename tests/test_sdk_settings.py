"""The settings the SDK would add on its own: the ones that mean nothing for this target are
neither offered (``--about``, Meltano, README) nor acted on; every setting offered has a title."""

from __future__ import annotations

import json
from pathlib import Path

from target_everflow.adapter.target import HIDDEN_SDK_SETTINGS, plugin_settings_schema
from target_everflow.settings import CONFIG_SCHEMA
from tests.conftest import (
    DEAD_LETTERS_ON_PURPOSE,
    config_under,
    dead_letter_records,
    run_cli,
    run_in_process,
    singer_lines,
    track,
)


def about() -> dict:
    result = run_cli(["--about", "--format", "json"], cwd=Path.cwd())
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def test_every_setting_of_the_config_schema_has_a_title() -> None:
    untitled = [name for name, spec in CONFIG_SCHEMA["properties"].items() if not spec.get("title")]
    assert not untitled, f"give these settings a title= in settings.py: {untitled}"


def test_about_shows_a_title_for_every_setting_and_hides_the_sdk_settings_that_do_nothing() -> None:
    properties = about()["settings"]["properties"]
    assert {"load_method", "add_record_metadata", "faker_config"} <= set(HIDDEN_SDK_SETTINGS)
    for name in HIDDEN_SDK_SETTINGS:
        assert name not in properties, name
    for name, spec in properties.items():
        assert spec.get("title"), f"--about shows {name} without a title"
    for name, spec in CONFIG_SCHEMA["properties"].items():
        assert properties[name]["title"] == spec["title"], name
    # the SDK settings that do something here are still offered
    assert {"stream_maps", "flattening_enabled", "batch_size_rows", "validate_records"} <= set(
        properties
    )
    assert properties == plugin_settings_schema()["properties"]


def test_batch_size_rows_is_the_targets_own_setting_with_its_default() -> None:
    spec = plugin_settings_schema()["properties"]["batch_size_rows"]
    assert spec["title"] == "Batch size (rows)" and spec["default"] == 5000
    assert "STATE" in spec["description"]


def test_add_record_metadata_adds_nothing(tmp_path: Path) -> None:
    """The SDK would add _sdc_* columns to every record (and so to the dead letters)."""
    config = {**config_under(tmp_path), "dry_run": True, "add_record_metadata": True}
    lines = singer_lines(
        "tracks", [track(1), track(2, tid=None), {**track(3), "properties": {"total": "x"}}]
    )
    code, _ = run_in_process({**config, "strict_types": True, **DEAD_LETTERS_ON_PURPOSE}, lines)
    assert code == 0
    dead = dead_letter_records(Path(config["dead_letter_path"]))
    assert dead, "the test needs a dead letter to look at"
    for line in dead:
        assert not [k for k in line["record"] if k.startswith("_sdc_")], line["record"]
    planned = [json.loads(x) for x in Path(config["dry_run_output"]).read_text().splitlines()]
    assert planned and all("_sdc_" not in json.dumps(p) for p in planned)
