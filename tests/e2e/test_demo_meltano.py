"""`make demo-meltano` on a machine with no database: Meltano installs the file tap and the
target, reads the shipped sample of Segment's raw archive (samples/segment-archive/) and plans
its conversions in a dry run; run again, the tap's bookmark (Meltano's state) means nothing new
is planned. The warehouse URL points at a closed port: nothing may need it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.e2e.conftest import INSTALL_TIMEOUT, Meltano, Ran, Warehouse, run_command

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "output" / "meltano"
SAMPLE = REPO / "samples" / "segment-archive"
# The sample's conversions: mapped events (meltano.yml's event_mapping) with a transaction id.
PLANNED = {
    "ajs-next-1a2b3c4d5e6f7085": "Order Completed",
    "ajs-next-3c4d5e6f70819203": "Order Completed",
    "8D1F0C7A-5B2E-4F5A-9C3D-2E1F0A9B8C71": "Order Completed",
    "c0a8012e-5e2f-4c1b-9f6e-0b3d2a1f0005": "Subscription Started",
    "c0a8012e-5e2f-4c1b-9f6e-0b3d2a1f0006": "Order Completed",
}


def make_demo_meltano(env: dict[str, str]) -> Ran:
    return run_command(["make", "demo-meltano"], env, INSTALL_TIMEOUT).check()


def planned() -> dict[str, str]:
    lines = (OUT / "everflow_dry_run.jsonl").read_text(encoding="utf-8").splitlines()
    return {json.loads(line)["message_id"]: json.loads(line)["event"] for line in lines}


def test_make_demo_meltano_plans_the_sample_once(meltano_bin: str, tmp_path: Path) -> None:
    # The sample is Segment's raw archive shape: gzipped JSON lines, camelCase, nested.
    (sample,) = SAMPLE.rglob("*.jsonl.gz")
    with gzip.open(sample, "rt", encoding="utf-8") as fh:
        events = [json.loads(line) for line in fh]
    assert all("messageId" in e and "type" in e for e in events)
    assert PLANNED.keys() <= {e["messageId"] for e in events}

    env = {
        "MELTANO_DATABASE_URI": f"sqlite:///{tmp_path / 'meltano.db'}",  # state starts empty
        "SEGMENT_WAREHOUSE_URL": "postgresql://nobody:nothing@127.0.0.1:9/closed",
        "NO_COLOR": "1",
    }
    first = make_demo_meltano(env)
    assert "Planned postbacks: output/meltano/everflow_dry_run.jsonl" in first.stdout
    assert planned() == PLANNED
    summary = json.loads((OUT / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["planned"] == len(PLANNED)
    assert summary["dead_lettered"] == {}, summary  # a first run passes its thresholds
    assert summary["records_read"] == len(events)

    second = make_demo_meltano(env)
    assert "Planned postbacks: output/meltano/everflow_dry_run.jsonl" in second.stdout
    assert planned() == {}, "the second run planned again what the first had planned"
    summary = json.loads((OUT / "summary.json").read_text())
    assert (summary["records_read"], summary["planned"]) == (0, 0), summary


def test_the_warehouse_sample_passes_a_first_dev_run(
    meltano: Meltano, warehouse: Warehouse, e2e_dir: Path
) -> None:
    """samples/segment-warehouse.sql, loaded as its header says, then `meltano run tap-postgres
    target-everflow` in the default (dev) environment: a dry run that exits 0, nothing
    dead-lettered, the conversions planned."""
    warehouse.execute((REPO / "samples" / "segment-warehouse.sql").read_text(encoding="utf-8"))
    result = meltano(
        "run",
        "tap-postgres",
        "target-everflow",
        env={"SEGMENT_WAREHOUSE_URL": warehouse.url, "SEGMENT_SCHEMA": warehouse.schema},
    )
    result.check()
    summary = json.loads((OUT / "summary.json").read_text())
    assert summary["dry_run"] is True and summary["dead_lettered"] == {}, summary
    assert summary["planned"] >= 5, summary
