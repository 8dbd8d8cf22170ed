"""A dead letter holds the record as it came in: no timestamp parsing by the SDK, number text
unchanged (issue 12, "Records as received")."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import (
    DEAD_LETTERS_ON_PURPOSE,
    config_under,
    dead_letter_records,
    run_in_process,
)

SCHEMA = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "event": {"type": "string"},
        "messageId": {"type": "string"},
        "timestamp": {"type": "string", "format": "date-time"},
        "sentAt": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]},
        "day": {"type": "string", "format": "date"},
        "total": {"type": "number"},
        "quantity": {"type": "integer"},
        "context": {"type": "object"},
    },
}
# Written by hand: json.dumps would write 12.50 as 12.5.
RECORD = (
    '{"type": "RECORD", "stream": "orders", "record": {"type": "track", "event": "Order Completed", '
    '"messageId": "msg-1", "timestamp": "2026-11-20T18:14:08.612Z", "sentAt": "2026-11-20T18:14:09Z", '
    '"day": "2026-11-20", "total": 12.50, "quantity": "three", '
    '"context": {"referrer": {"type": "everflow", "id": "tx-1"}, "ip": "203.0.113.7"}}}'
)


def test_a_dead_letter_holds_timestamps_and_number_text_as_received(tmp_path: Path) -> None:
    config = {
        **config_under(tmp_path),
        "dry_run": True,
        "validate_records": True,
        **DEAD_LETTERS_ON_PURPOSE,
    }
    schema = json.dumps(
        {"type": "SCHEMA", "stream": "orders", "schema": SCHEMA, "key_properties": []}
    )
    code, target = run_in_process(config, [schema, RECORD])
    assert code == 0
    assert target.run.summary.as_dict(dry_run=True)["dead_lettered"] == {"invalid_record": 1}

    path = Path(config["dead_letter_path"])
    line = next(x for x in path.read_text(encoding="utf-8").splitlines() if '"RECORD"' in x)
    assert '"2026-11-20T18:14:08.612Z"' in line
    assert '"2026-11-20T18:14:09Z"' in line
    assert '"2026-11-20"' in line
    assert "12.50" in line
    [kept] = dead_letter_records(path)
    assert kept["record"] == json.loads(RECORD)["record"]  # JSON-equal to what came in
