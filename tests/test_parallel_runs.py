"""Parallel runs on one ledger: claims are made in chunks, so runs reading the same input share
it, and runs with their own input never wait for each other. Correctness only (no duplicate,
none lost); the throughput figures are in the benchmark (``bench/run.py --only-parallel``)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from target_everflow.delivery.engine import (
    FIRST_BUSY_WAIT,
    MIN_CLAIM_CHUNK,
    DeliveryEngine,
    claim_chunk,
)
from target_everflow.ledger import ClaimStatus, SQLLedger
from tests.conftest import postgres_url, run_in_process, singer_lines, track
from tests.receiver import Receiver, ReceiverProcess, accepted_by_transaction


def test_the_claim_chunk_follows_the_concurrency() -> None:
    assert claim_chunk(1) == MIN_CLAIM_CHUNK
    assert claim_chunk(32) == 64
    assert claim_chunk(500) == 1000


def test_a_batch_is_claimed_in_chunks(base_config, monkeypatch) -> None:
    sizes: list[int] = []
    claim = SQLLedger.claim

    def counting(
        self: SQLLedger, keys: Sequence[str], metadata: Any = None
    ) -> dict[str, ClaimStatus]:
        sizes.append(len(keys))
        return claim(self, keys, metadata)

    monkeypatch.setattr(SQLLedger, "claim", counting)
    records = [track(i) for i in range(500)]
    with Receiver() as rx:
        config = {**base_config, "postback_url": rx.url, "max_concurrency": 8}
        code, _ = run_in_process(config, singer_lines("orders", records))
        counts = rx.count_by_transaction()
    assert code == 0
    assert counts == {f"tx-{i}": 1 for i in range(500)}
    assert sum(sizes) == 500 and max(sizes) == MIN_CLAIM_CHUNK and len(sizes) == 8


def _spawn(config: dict, records: list[dict], run_dir: Path) -> tuple[subprocess.Popen, Path]:
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "input.singer").write_text("\n".join(singer_lines("orders", records)) + "\n")
    err = run_dir / "stderr.txt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "target_everflow", "--config", str(run_dir / "config.json"),
         "--input", str(run_dir / "input.singer")],
        stdout=subprocess.DEVNULL, stderr=err.open("w"), cwd=run_dir,
    )  # fmt: skip
    return proc, err


def _parallel(base_config: dict, tmp_path: Path, inputs: list[list[dict]]) -> tuple[Counter, list]:
    """Run one target per input at once on one PostgreSQL ledger (a table of its own); the
    receiver's accepted requests by transaction id, and each run's summary."""
    url = postgres_url()
    ledger_url = f"{url}{'&' if '?' in url else '?'}table=par_{uuid.uuid4().hex[:10]}"
    log = tmp_path / "rx.jsonl"
    with ReceiverProcess(latency=0.02, log_path=log) as rx:
        runs = []
        for n, records in enumerate(inputs):
            run_dir = tmp_path / f"run{n}"
            config = {
                **base_config,
                "postback_url": rx.url,
                "ledger_url": ledger_url,
                "max_concurrency": 8,
                "dead_letter_path": str(run_dir / "dl.jsonl"),
                "summary_path": str(run_dir / "summary.json"),
            }
            runs.append((*_spawn(config, records, run_dir), run_dir))
        for proc, err, _ in runs:
            assert proc.wait(180) == 0, err.read_text()[-2000:]
        counts = accepted_by_transaction(log)
    summaries = [json.loads((d / "summary.json").read_text()) for _, _, d in runs]
    return counts, summaries


@pytest.mark.slow
def test_runs_on_the_same_input_share_it_each_conversion_once(base_config, tmp_path) -> None:
    total = 1200
    records = [track(i) for i in range(total)]
    counts, summaries = _parallel(base_config, tmp_path, [records] * 3)
    assert counts == Counter({f"tx-{i}": 1 for i in range(total)})  # none lost, none twice
    delivered = [s["delivered"] for s in summaries]
    assert sum(delivered) == total
    for s in summaries:
        assert s["records_read"] == total
        assert s["delivered"] + s["skipped"].get("duplicate", 0) == total, s
        assert s["dead_lettered"] == {} and s["in_doubt"] == 0
    # Shared: a run holds at most one chunk it is not sending, so the others take the rest
    # (1,200 conversions at 8 x 50/s take seconds; the runs start within a second).
    assert sum(1 for d in delivered if d > 0) >= 2, delivered


@pytest.mark.slow
def test_runs_with_their_own_input_on_one_ledger(base_config, tmp_path) -> None:
    per_run = 500
    inputs = [[track(n * per_run + i) for i in range(per_run)] for n in range(4)]
    counts, summaries = _parallel(base_config, tmp_path, inputs)
    assert counts == Counter({f"tx-{i}": 1 for i in range(4 * per_run)})
    assert [s["delivered"] for s in summaries] == [per_run] * 4
    assert all(s["skipped"] == {} and s["in_doubt"] == 0 for s in summaries)


def test_answers_and_fences_share_commits(base_config, monkeypatch) -> None:
    """The ledger nearly free: a dispatcher tick records the answers of the slots that freed
    up and fences the postbacks that take them in one commit, not a commit per mark."""
    commits: list[int] = []
    close = SQLLedger.close

    def counting(self: SQLLedger) -> None:
        commits.append(self.writer_commits)
        close(self)

    monkeypatch.setattr(SQLLedger, "close", counting)
    records = [track(i) for i in range(1000)]
    with Receiver(latency=0.02) as rx:
        config = {**base_config, "postback_url": rx.url, "max_concurrency": 16}
        code, _ = run_in_process(config, singer_lines("orders", records))
        counts = rx.count_by_transaction()
    assert code == 0 and counts == {f"tx-{i}": 1 for i in range(1000)}
    # 1,000 sending marks and 1,000 delivered marks: a freed slot's answer rides the commit
    # that fences the postback taking its slot, and slots freed together share one, so the
    # 2,000 marks take at most a commit per postback (how many share one depends on timing).
    assert commits and commits[0] <= 1000, commits


def test_keys_another_run_is_sending_are_claimed_again_soon_then_less_often(
    base_config, monkeypatch
) -> None:
    """A key another live run is sending (BUSY) is usually settled within one request: the
    batch claims it again after FIRST_BUSY_WAIT, then after twice as long each time, up to
    busy_wait, and sends it once the other run lets it go."""
    busy_claims = 6
    claims: list[list[str]] = []
    claim = SQLLedger.claim

    def busy_at_first(
        self: SQLLedger, keys: Sequence[str], metadata: Any = None
    ) -> dict[str, ClaimStatus]:
        claims.append(list(keys))
        if len(claims) == 1:  # the second key is held by another live run
            statuses = claim(self, [k for k in keys if k != keys[1]], metadata)
            return {**statuses, keys[1]: ClaimStatus.BUSY}
        if len(claims) <= busy_claims:
            return {k: ClaimStatus.BUSY for k in keys}
        return claim(self, keys, metadata)

    pauses: list[float | None] = []

    class Paused(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            pauses.append(timeout)  # (recorded, not slept: the test does not wait)
            return self.is_set()

    engine_init = DeliveryEngine.__init__

    def recording(self: DeliveryEngine, *args: Any, **kwargs: Any) -> None:
        engine_init(self, *args, **kwargs)
        self._stop = Paused()

    monkeypatch.setattr(SQLLedger, "claim", busy_at_first)
    monkeypatch.setattr(DeliveryEngine, "__init__", recording)
    records = [track(i) for i in range(3)]
    with Receiver() as rx:
        config = {**base_config, "postback_url": rx.url}
        code, _ = run_in_process(config, singer_lines("orders", records))
        counts = rx.count_by_transaction()
    assert code == 0
    assert counts == {f"tx-{i}": 1 for i in range(3)}
    assert [len(keys) for keys in claims] == [3] + [1] * busy_claims
    assert pauses == [FIRST_BUSY_WAIT * 2**n for n in range(5)] + [0.5], pauses
