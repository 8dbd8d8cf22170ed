"""README's `meltano config set target-everflow max_dead_letter_ratio 0.5` (Meltano 4.4.1's
form) works on the project, and the file Meltano rewrites (comments and the generated-section
markers gone, keys reordered, lines rewrapped) is still accepted by the generator's check and
still says what the Hub file says."""

from __future__ import annotations

import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import RUN_TIMEOUT, run_command

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "update_plugin_files.py"


def test_meltano_config_set_leaves_a_meltano_yml_the_checks_accept(
    meltano_bin: str, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "meltano.yml", project / "meltano.yml")
    env = {
        "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
        "MELTANO_DATABASE_URI": f"sqlite:///{tmp_path / 'meltano.db'}",
        "NO_COLOR": "1",
    }
    run_command(
        [meltano_bin, "config", "set", "target-everflow", "max_dead_letter_ratio", "0.5"],
        env,
        RUN_TIMEOUT,
        cwd=project,
    ).check()
    text = (project / "meltano.yml").read_text(encoding="utf-8")
    assert "generated from settings.py" not in text  # Meltano's rewrite: the markers are gone
    (loader,) = [
        p for p in yaml.safe_load(text)["plugins"]["loaders"] if p["name"] == "target-everflow"
    ]
    assert Decimal(str(loader["config"]["max_dead_letter_ratio"])) == Decimal("0.5")

    check = [sys.executable, str(SCRIPT), "--check", "--meltano-yml", str(project / "meltano.yml")]
    result = subprocess.run(check, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

    hub = yaml.safe_load(next((REPO / "plugin/loaders/target-everflow").glob("*.yml")).read_text())
    for key in ("settings", "settings_group_validation", "capabilities", "commands"):
        assert hub[key] == loader[key], key

    # A setting changed meanwhile: the check notices, and regenerating keeps Meltano's edit.
    loader["settings"][0]["description"] = "stale"
    data = yaml.safe_load(text)
    [p for p in data["plugins"]["loaders"] if p["name"] == "target-everflow"][0]["settings"] = (
        loader["settings"]
    )
    (project / "meltano.yml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    stale = subprocess.run(check, capture_output=True, text=True, timeout=120)
    assert stale.returncode == 1 and "meltano.yml out of date" in stale.stdout
    subprocess.run(check[:2] + check[3:], check=True, timeout=120)  # rewrite that copy
    assert subprocess.run(check, timeout=120).returncode == 0
    again = yaml.safe_load((project / "meltano.yml").read_text(encoding="utf-8"))
    (loader,) = [p for p in again["plugins"]["loaders"] if p["name"] == "target-everflow"]
    assert Decimal(str(loader["config"]["max_dead_letter_ratio"])) == Decimal("0.5")


def test_the_exported_warehouse_url_is_the_one_tap_postgres_gets(
    meltano_plugins: str, tmp_path: Path
) -> None:
    """In every environment, `meltano run tap-postgres ...` reads the database you exported:
    meltano.yml sets no SEGMENT_* variable that would override it."""
    url = "postgresql://me:secret@db.internal.test:5433/my_warehouse"
    env = {
        "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
        "SEGMENT_WAREHOUSE_URL": url,
        "SEGMENT_SCHEMA": "my_source",
        "MELTANO_DATABASE_URI": f"sqlite:///{tmp_path / 'meltano.db'}",
    }
    import json

    for environment in ("dev", "prod", "e2e"):
        proc = run_command(
            [meltano_plugins, f"--environment={environment}", "invoke", "--dump=config",
             "tap-postgres"],
            env, RUN_TIMEOUT,
        ).check()  # fmt: skip
        config = json.loads(proc.stdout)
        assert config["sqlalchemy_url"] == url, (environment, config)
        assert config["filter_schemas"] == ["my_source"], (environment, config)
