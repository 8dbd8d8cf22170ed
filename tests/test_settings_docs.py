"""Every setting is documented alike: the config schema (``--about``), README's table,
meltano.yml and sample_config.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from target_everflow.settings import CONFIG_SCHEMA, SECRET_SETTINGS
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[1]
SETTINGS = set(CONFIG_SCHEMA["properties"])


def _loader() -> dict:
    project = yaml.safe_load((REPO / "meltano.yml").read_text())
    (loader,) = [p for p in project["plugins"]["loaders"] if p["name"] == "target-everflow"]
    return loader


def test_readme_tables_are_current():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "update_readme.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


def test_meltano_declares_every_setting_with_label_description_and_kind():
    settings = {s["name"]: s for s in _loader()["settings"]}
    assert SETTINGS <= set(settings), SETTINGS - set(settings)
    for name in SETTINGS:
        assert (
            settings[name].get("label")
            and settings[name].get("description")
            and settings[name].get("kind")
        ), name
    for name in SECRET_SETTINGS:
        assert settings[name].get("sensitive") is True, name
    for name, spec in CONFIG_SCHEMA["properties"].items():
        if "default" in spec and "value" in settings[name]:
            assert settings[name]["value"] == spec["default"], name


def test_meltano_loader_definition():
    loader = _loader()
    assert loader["namespace"] == "target_everflow" and loader["executable"] == "target-everflow"
    assert loader["pip_url"].startswith("-e .")
    assert set(loader["capabilities"]) >= {
        "about",
        "stream-maps",
        "schema-flattening",
        "validate-records",
        "structured-logging",
    }
    assert ["postback_url", "network_id"] in loader["settings_group_validation"]
    assert "--check" in loader["commands"]["check"]["args"]


def test_sample_config_has_every_setting_and_is_valid():
    sample = json.loads((REPO / "sample_config.json").read_text())
    assert SETTINGS <= set(sample), SETTINGS - set(sample)
    import signal

    from target_everflow.adapter.target import TargetEverflow

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        target = TargetEverflow(config=sample, validate_config=True)  # opens nothing yet
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert target.settings.network_id == 1 and target.settings.in_doubt == "resend"


def test_about_lists_every_setting_and_marks_secrets():
    result = run_cli(["--about", "--format", "json"], cwd=Path.cwd())
    assert result.code == 0, result.stderr
    about = json.loads(result.stdout)
    properties = about["settings"]["properties"]
    assert SETTINGS <= set(properties)
    for name in SECRET_SETTINGS:
        assert (
            properties[name].get("secret") is True or properties[name].get("writeOnly") is True
        ), name
