"""The Meltano files agree with the config schema: meltano.yml's target settings and the Meltano
Hub plugin definition are generated from it (scripts/update_plugin_files.py), and say the same."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

from target_everflow.adapter.target import (
    HIDDEN_SDK_SETTINGS,
    TargetEverflow,
    plugin_settings_schema,
)
from target_everflow.settings import CONFIG_SCHEMA, SECRET_SETTINGS, SETTINGS_GROUP_VALIDATION

REPO = Path(__file__).resolve().parents[1]
HUB_FILES = sorted((REPO / "plugin" / "loaders" / "target-everflow").glob("*.yml"))
SCRIPT = REPO / "scripts" / "update_plugin_files.py"

# The Hub's loader definition schema (meltano/hub schemas/plugin_definitions/loaders.schema.json
# and common/base_setting.schema.json): the keys a definition and a setting may have.
HUB_REQUIRED = {"name", "namespace", "variant", "label", "quality"}
HUB_KEYS = HUB_REQUIRED | {
    "capabilities",
    "pip_url",
    "description",
    "executable",
    "repo",
    "logo_url",
    "settings",
    "docs",
    "python",
    "settings_group_validation",
    "commands",
    "dialect",
    "target_schema",
    "hidden",
    "requires",
    "maintenance_status",
    "domain_url",
    "keywords",
    "definition",
    "next_steps",
    "settings_preamble",
    "usage",
    "prereq",
    "supported_python_versions",
    "log_parser",
}
SETTING_KEYS = {
    "name",
    "aliases",
    "label",
    "value",
    "placeholder",
    "kind",
    "description",
    "tooltip",
    "documentation",
    "env",
    "value_processor",
    "value_post_processor",
    "oauth",
    "options",
    "docs",
    "hidden",
    "sensitive",
}
KINDS = {
    "oauth",
    "hidden",
    "password",
    "date_iso8601",
    "file",
    "email",
    "integer",
    "options",
    "object",
    "array",
    "boolean",
    "string",
    "decimal",
}
LOADER_CAPABILITIES = {
    "about",
    "stream-maps",
    "activate-version",
    "batch",
    "soft-delete",
    "hard-delete",
    "datatype-failsafe",
    "schema-flattening",
    "target-schema",
    "validate-records",
    "structured-logging",
}


def hub_definition() -> dict:
    assert len(HUB_FILES) == 1, (
        f"one Hub definition expected under plugin/loaders/target-everflow/: {HUB_FILES}"
    )
    return yaml.safe_load(HUB_FILES[0].read_text(encoding="utf-8"))


def meltano_loader() -> dict:
    project = yaml.safe_load((REPO / "meltano.yml").read_text(encoding="utf-8"))
    (loader,) = [p for p in project["plugins"]["loaders"] if p["name"] == "target-everflow"]
    return loader


def expected_kind(spec: dict) -> str:
    types = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
    (json_type,) = [x for x in types if x != "null"]
    if "enum" in spec:
        return "options"
    return {"number": "string"}.get(json_type, json_type)  # Meltano 4.4.1: no decimal from the env


def test_the_generated_files_are_current() -> None:
    """Fails when a setting was added to or changed in the schema without `make plugin-files`."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hub_definition_follows_the_hub_loader_schema() -> None:
    hub = hub_definition()
    assert HUB_REQUIRED <= set(hub), HUB_REQUIRED - set(hub)
    assert set(hub) <= HUB_KEYS, set(hub) - HUB_KEYS
    assert HUB_FILES[0].stem == hub["variant"] and hub["name"] == "target-everflow"
    assert hub["namespace"] == "target_everflow" and hub["executable"] == "target-everflow"
    assert set(hub["capabilities"]) <= LOADER_CAPABILITIES
    assert "meltano_sdk" in hub["keywords"]
    assert hub["quality"] in {"gold", "silver", "bronze", "unknown"}
    assert hub["maintenance_status"] in {"active", "beta", "development", "inactive", "unknown"}
    for setting in hub["settings"]:
        assert set(setting) <= SETTING_KEYS, (setting["name"], set(setting) - SETTING_KEYS)
        assert setting["kind"] in KINDS, setting
    for group in hub["settings_group_validation"]:
        assert all(isinstance(name, str) for name in group)


def test_every_offered_setting_is_in_the_hub_file_as_the_schema_says() -> None:
    """Label = title, description, kind from the JSON type, value = default, sensitive = secret
    (Meltano 4 spells a secret `kind: string` + `sensitive: true`; it rewrites `kind: password`)."""
    properties = plugin_settings_schema()["properties"]
    settings = {s["name"]: s for s in hub_definition()["settings"]}
    assert list(settings) == list(properties)  # nothing missing, nothing extra, the schema's order
    for name, spec in properties.items():
        setting = settings[name]
        assert setting["label"] == spec["title"], name
        assert setting["description"] == spec["description"], name
        assert setting["kind"] == expected_kind(spec), name
        assert setting.get("value") == spec.get("default"), name
        assert setting.get("sensitive", False) == bool(spec.get("secret")), name
        if "enum" in spec:
            assert [o["value"] for o in setting["options"]] == [
                v for v in spec["enum"] if v is not None
            ]
            assert all(o["label"] for o in setting["options"])
    for name in SECRET_SETTINGS:
        assert settings[name]["sensitive"] is True and settings[name]["kind"] == "string"
    for name in HIDDEN_SDK_SETTINGS:
        assert name not in settings
    assert set(CONFIG_SCHEMA["properties"]) <= set(settings)


def test_hub_file_and_meltano_yml_say_the_same() -> None:
    hub, loader = hub_definition(), meltano_loader()
    for key in ("settings", "settings_group_validation", "capabilities", "namespace", "executable"):
        assert hub[key] == loader[key], key
    assert hub["settings_group_validation"] == SETTINGS_GROUP_VALIDATION
    assert hub["capabilities"] == [str(c) for c in TargetEverflow.capabilities]
    assert hub["commands"] == loader.get("commands", {})


def test_hub_file_takes_the_project_facts_from_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    hub = hub_definition()
    assert hub["description"] == project["description"]
    assert hub["keywords"] == project["keywords"]
    assert hub.get("repo") == project.get("urls", {}).get("Repository")


def test_a_new_setting_makes_the_check_fail(tmp_path: Path) -> None:
    """The agreement check has teeth: a schema with one more setting is reported out of date."""
    code = (
        "import runpy, sys\n"
        "from singer_sdk import typing as th\n"
        "from target_everflow import settings\nfrom target_everflow.adapter import target\n"
        "extra = th.Property('brand_new', th.StringType, title='Brand new', description='x').to_dict()\n"
        "for schema in (settings.CONFIG_SCHEMA, target.TargetEverflow.config_jsonschema):\n"
        "    schema['properties'].update(extra)\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--check']\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "meltano.yml" in result.stdout and "out of date" in result.stdout


def test_hub_definition_validates_against_the_shipped_hub_schema() -> None:
    import json

    import jsonschema

    schema = json.loads((REPO / "tests" / "fixtures" / "hub_loader_schema.json").read_text())
    jsonschema.validate(hub_definition(), schema)  # raises, naming the key, when it does not


def test_hub_definition_points_at_nothing_that_does_not_exist() -> None:
    """No package index entry and no repository exist yet: no pip_url, no docs page; prereq
    says how to install it meanwhile."""
    hub = hub_definition()
    assert "pip_url" not in hub and "docs" not in hub, hub.get("pip_url") or hub.get("docs")
    assert "not on a package index" in hub["prereq"] and "pip_url" in hub["prereq"]
    assert not [v for v in map(str, hub.values()) if "pypi.org" in v]


def test_meltano_yml_sets_no_source_variable() -> None:
    """The warehouse, schema and archive come from the user's environment only: an `env:` block
    in meltano.yml would override what they exported (Meltano's precedence)."""
    project = yaml.safe_load((REPO / "meltano.yml").read_text(encoding="utf-8"))
    blocks = [project.get("env") or {}] + [e.get("env") or {} for e in project["environments"]]
    assert not [name for block in blocks for name in block if name.startswith("SEGMENT_")]
