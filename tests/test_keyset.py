"""The within-run dedupe of ``ledger_url: none`` and dry run keeps its memory bounded: keys move
to a private SQLite file past ``memory_keys``, and the set answers the same."""

from __future__ import annotations

import os

from target_everflow.ledger import NullLedger
from target_everflow.ledger.base import ClaimStatus
from target_everflow.ledger.keyset import KeySet


def test_keys_past_the_memory_limit_move_to_a_file_and_still_count() -> None:
    keys = KeySet(memory_keys=10)
    for i in range(35):
        keys.add(f"m:{i}")
    assert keys.spilled == 30  # three moves of 10
    assert keys.among([f"m:{i}" for i in range(40)] + ["m:3"]) == {f"m:{i}" for i in range(35)}
    assert "m:0" in keys and "m:34" in keys and "m:35" not in keys
    path = keys._path  # the file must go with close()
    assert path is not None and os.path.exists(path)
    keys.close()
    assert not os.path.exists(path)
    assert "m:0" not in keys


def test_a_key_with_any_text_round_trips_through_the_file() -> None:
    odd = ["m:'; DROP TABLE keys; --", "m:é✓", "m:" + "x" * 5000, "m:a\x00b", "h:?"]
    keys = KeySet(memory_keys=1)
    for key in odd:
        keys.add(key)
    assert keys.among(odd + ["m:other"]) == set(odd)
    keys.close()


def test_null_ledger_dedupes_beyond_its_memory_limit() -> None:
    ledger = NullLedger(memory_keys=100)
    batch = [f"m:{i}" for i in range(1000)]
    assert set(ledger.claim(batch).values()) == {ClaimStatus.CLAIMED}
    for key in batch:
        ledger.mark_delivered(key, 200)
    again = ledger.claim([*batch, "m:new", "m:new"])
    assert again.pop("m:new") is ClaimStatus.CLAIMED
    assert set(again.values()) == {ClaimStatus.DELIVERED} and len(again) == 1000
    assert ledger.status("m:5") == "delivered" and ledger.status("m:new") == "pending"
    assert ledger.claim(["m:new"]) == {"m:new": ClaimStatus.BUSY}
    ledger.close()


def test_threads_adding_at_once_lose_no_key() -> None:
    import threading

    keys = KeySet(memory_keys=97)
    threads = [
        threading.Thread(target=lambda n=n: [keys.add(f"m:{n}:{i}") for i in range(2000)])
        for n in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    every = [f"m:{n}:{i}" for n in range(8) for i in range(2000)]
    assert keys.among(every) == set(every)
    keys.close()
