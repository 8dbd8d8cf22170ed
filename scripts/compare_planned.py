"""Check that this checkout plans the same postbacks as an earlier commit, but for what issue 19
changed: ``order_id`` (text: ids that were dropped are now sent), ``currency`` (sent when the
record has one) and ``amount`` (only for records without total or revenue, from value). The
age check is off (``max_conversion_age_days: 0``) so that both plan the same conversions.

python scripts/compare_planned.py --base c10ff94 --records 200000
python scripts/compare_planned.py --base c10ff94 --input samples/segment_events.singer

The input is bench/generate.py's mixed input (or ``--input``); both runs are dry runs of the CLI
with the same event mapping as the bench and the demo. Exit 1 on the
first difference that is not allowed, with the delivery key.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import generate  # noqa: E402 - after the sys.path line above

CHANGED = ("order_id", "currency", "amount")


def planned(source: Path, input_path: Path, work: Path) -> tuple[dict[str, list], dict]:
    """Dry-run ``input_path`` with the code in ``source``: key -> query parameters, summary."""
    work.mkdir(parents=True)
    config = {
        "dry_run": True, "network_id": 1, "advertiser_id": 7, "verification_token": "t",
        "event_mapping": generate.EVENT_MAPPING, "max_conversion_age_days": 0,
        "dry_run_output": str(work / "planned.jsonl"), "dead_letter_path": str(work / "dl.jsonl"),
        "summary_path": str(work / "summary.json"), "progress_interval": 0,
        "max_dead_letter_ratio": 1,
    }  # fmt: skip
    (work / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(source)}
    with input_path.open() as stdin:
        proc = subprocess.run(
            [sys.executable, "-m", "target_everflow", "--config", str(work / "config.json")],
            stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
            cwd=work, timeout=3600, check=False,
        )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"the run of {source} exited {proc.returncode}: {proc.stderr[-2000:]}")
    out = {}
    for line in (work / "planned.jsonl").read_text().splitlines():
        entry = json.loads(line)
        out[entry["key"]] = parse_qsl(urlsplit(entry["url"]).query, keep_blank_values=True)
    return out, json.loads((work / "summary.json").read_text())


def compare(before: dict[str, list], after: dict[str, list], records: dict[str, dict]) -> dict:
    if set(before) != set(after):
        raise SystemExit(f"planned keys differ: {len(before)} before, {len(after)} after")
    changed = dict.fromkeys(CHANGED, 0)
    for key, old in before.items():
        new = after[key]
        kept = [kv for kv in old if kv[0] not in CHANGED]
        if kept != [kv for kv in new if kv[0] not in CHANGED]:
            raise SystemExit(f"{key}: parameters other than {CHANGED} differ")
        was, now = dict(old), dict(new)
        for name in CHANGED:
            if was.get(name) != now.get(name):
                changed[name] += 1
        if was.get("order_id") != now.get("order_id") and "order_id" in was:
            raise SystemExit(f"{key}: order_id {was['order_id']!r} became {now.get('order_id')!r}")
        if was.get("amount") != now.get("amount"):
            props = records.get(key, {})
            if props.get("total") is not None or props.get("revenue") is not None:
                raise SystemExit(f"{key}: amount changed though the record has total or revenue")
    return changed


def properties_by_key(input_path: Path) -> dict[str, dict]:
    """Each raw record's properties by delivery key (m:<messageId>; warehouse rows: m:<id>)."""
    out = {}
    with input_path.open() as lines:
        for line in lines:
            msg = json.loads(line)
            if msg.get("type") != "RECORD":
                continue
            record = msg["record"]
            mid = record.get("messageId") or record.get("id")
            props = record.get("properties")
            if not isinstance(props, dict):  # warehouse rows and flattened records
                props = {
                    k.removeprefix("properties__"): v
                    for k, v in record.items()
                    if k in ("total", "revenue") or k.startswith("properties__")
                }
            out[f"m:{mid}"] = props
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="c10ff94", help="the commit to compare with")
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--input", type=Path, help="a Singer input instead of a generated one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="compare-planned-") as tmp:
        root = Path(tmp)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.base], capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            # (the "data" filter where this Python has it: 3.10.12, 3.11.4 and later)
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(root / "base", **safe)
        input_path = args.input.resolve() if args.input else root / "input.singer"
        if not args.input:
            generate.write(str(input_path), args.records)
        before, sb = planned(root / "base", input_path, root / "before")
        after, sa = planned(REPO, input_path, root / "after")
        changed = compare(before, after, properties_by_key(input_path))
        for summary in (sb, sa):
            for moving in ("wall_seconds", "requests_per_second", "dropped_fields", "streams"):
                summary.pop(moving)
        if sb != sa:
            raise SystemExit(f"the summaries differ: {sb} before, {sa} after")
    print(
        f"{len(before)} planned postbacks compared with {args.base}: the same but order_id in "
        f"{changed['order_id']} (dropped before, text now), currency in {changed['currency']}, "
        f"amount in {changed['amount']}; the same counts"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
