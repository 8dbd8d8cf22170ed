"""Each record is read once: one SegmentEvent per record, built at the door (the sink's
process_record, through Mapper.view); outcomes, log lines and dead letters use what it read."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pytest

from target_everflow.records import SegmentEvent
from tests.conftest import (
    DEAD_LETTERS_ON_PURPOSE,
    config_under,
    run_in_process,
    singer_lines,
    track,
)


def test_each_record_is_wrapped_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrapped: list[str] = []
    original = SegmentEvent.__init__

    def counting(self: SegmentEvent, record: dict, stream: str) -> None:
        wrapped.append(str(record.get("messageId")))
        original(self, record, stream)

    monkeypatch.setattr(SegmentEvent, "__init__", counting)
    records: list[t.Any] = [
        track(1),  # delivered (planned)
        track(1),  # the same conversion twice in one batch: skipped as duplicate
        track(2, event="Page Viewed"),  # unmapped
        {**track(3), "type": "identify"},  # not a track
        track(4, tid=None),  # no transaction id
        track(5, products=[{"product_id": "p1", "price": 3}, {"product_id": "p2"}]),  # line items
        track(6, total="abc"),  # left-out optional field
        {
            "messageId": "msg-7",
            "event": "Order Completed",
            "event_text": "Order Completed",
            "context_referrer_type": "everflow",
            "context_referrer_id": "tx-7",
        },  # a warehouse row
        track(8, transaction_id=["not", "text"], tid=None),  # type mismatch: dead-lettered
    ]
    lines = singer_lines("orders", records, state={"upto": 9})
    lines.insert(
        3, json.dumps({"type": "RECORD", "stream": "orders", "record": ["not", "an", "object"]})
    )
    config = {**config_under(tmp_path), "dry_run": True, **DEAD_LETTERS_ON_PURPOSE}
    code, target = run_in_process(config, lines)
    assert code == 0
    summary = target.run.summary
    assert summary.records_read == len(records) + 1 == summary.accounted()
    data = summary.as_dict(dry_run=True)
    assert data["skipped"] == {
        "duplicate": 1,
        "unmapped_event": 1,
        "not_track": 1,
        "no_transaction_id": 1,
    }
    assert data["dead_lettered"] == {"invalid_record": 1, "type_mismatch": 1}
    # One view per record that is an object (the list is dead-lettered unread), each of a
    # different record; products and the log lines of the outcomes did not wrap again.
    assert sorted(wrapped) == sorted(r["messageId"] for r in records)  # msg-1 twice: two records
