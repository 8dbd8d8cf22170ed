"""Metrics in singer-sdk's METRIC format and the ``extra`` fields of log lines (issue 14).

The METRIC lines are read back the way a log collector would: from the stderr of a CLI run,
``METRIC: {json}`` per line (or ``metric_info`` in JSON logs), counters summed per metric and
tags. The sums must be the run summary's numbers.
"""

from __future__ import annotations

import json
import logging
import random
import typing as t
from collections import Counter
from pathlib import Path

from target_everflow.accounting.metrics import LatencyHistogram, RunMetrics, status_class
from target_everflow.accounting.summary import RunSummary
from target_everflow.adapter.metrics import point_writer
from tests.conftest import run_in_process, run_target, singer_lines, track
from tests.receiver import Answer, Receiver

OUR_METRICS = {
    "conversions_delivered",
    "conversions_in_doubt",
    "records_skipped",
    "records_dead_lettered",
    "postback_retries",
    "http_request_count",
    "http_request_duration",
}


def metric_points(stderr: str) -> list[dict]:
    """Every METRIC point in a stderr, as the SDK's console format writes them."""
    points = []
    for line in stderr.splitlines():
        _, marker, payload = line.partition("METRIC: ")
        if marker:
            points.append(json.loads(payload))
    return points


def counter_sums(points: t.Iterable[dict]) -> Counter:
    """Counter values summed per (metric, the tag that splits it)."""
    sums: Counter = Counter()
    for p in points:
        if p["type"] == "counter" and p["metric"] in OUR_METRICS:
            tags = p["tags"]
            sums[(p["metric"], tags.get("reason") or tags.get("http_status_class") or "")] += p[
                "value"
            ]
    return sums


def mixed_input() -> tuple[list[str], dict]:
    """Conversions answered every way, plus records skipped and dead-lettered by the mapping."""
    records = [track(i) for i in range(24)]
    records.append({**track(100), "type": "page"})  # not_track
    records.append(track(101, event="Product Viewed"))  # unmapped_event
    records.append(track(102, tid=None))  # no_transaction_id
    mobile = track(103)
    mobile["context"]["os"] = {"name": "iOS"}  # no app namespace:
    records.append(mobile)  # missing_required_field
    records.append(track(5))  # duplicate (batch)
    script = Receiver.per_transaction(
        {
            "tx-3": [Answer.no_content()],  # rejected (a 204: 2xx class)
            "tx-4": [Answer.status(400, "bad")],  # http_400
            "tx-6": [Answer.error_json("Invalid")],  # rejected (a 200)
            "tx-8": [Answer.status(503), Answer.status(500)],  # two retries, then delivered
            "tx-9": [Answer.drop()],  # no answer: in doubt, resent, delivered
        }
    )
    return singer_lines("orders", records), {"script": script}


def test_latency_histogram_quantiles_within_five_percent_in_fixed_memory():
    rng = random.Random(7)
    samples = [rng.lognormvariate(-3.5, 1.0) for _ in range(20_000)]
    histogram = LatencyHistogram()
    for s in samples:
        histogram.add(s)
    ordered = sorted(samples)
    for q in (0.5, 0.95):
        exact = ordered[int(q * len(ordered)) - 1]
        assert exact <= histogram.quantile(q) <= exact * 1.05 + 1e-4
    assert histogram.max == max(samples)
    assert histogram.count == 20_000
    assert len(histogram.counts) == LatencyHistogram.SIZE  # the same whatever the samples
    for odd in (0.0, -1.0, 1e-9, 10_000.0):
        histogram.add(odd)
    assert len(histogram.counts) == LatencyHistogram.SIZE
    assert LatencyHistogram().quantile(0.5) == 0.0


def test_status_classes():
    assert [status_class(s) for s in (200, 204, 302, 400, 429, 503, None, 99)] == [
        "2xx",
        "2xx",
        "3xx",
        "4xx",
        "4xx",
        "5xx",
        "error",
        "error",
    ]


def test_emit_logs_increments_and_nothing_when_nothing_moved(caplog):
    summary = RunSummary()
    metrics = RunMetrics(summary, point_writer())
    summary.count("orders", "Order Completed", "delivered", n=3)
    summary.count("orders", "Order Completed", "dead_letter", "rejected")
    metrics.answered(200, 0.02)
    with caplog.at_level(logging.INFO, logger="singer_sdk.metrics"):
        metrics.emit()
        first = metric_points(caplog.text)
        caplog.clear()
        assert metrics.emit() == 0  # nothing moved: no line at all
        summary.count("orders", "Order Completed", "delivered", n=2)
        metrics.emit(final=True)
        second = metric_points(caplog.text)
        caplog.clear()
        assert metrics.emit(final=True) == 0  # the final emission happens once
    assert counter_sums(first) == Counter(
        {
            ("conversions_delivered", ""): 3,
            ("records_dead_lettered", "rejected"): 1,
            ("http_request_count", "2xx"): 1,
        }
    )
    assert counter_sums(second) == Counter({("conversions_delivered", ""): 2})
    assert all(p["tags"]["pid"] > 0 for p in first + second)


def test_metric_lines_parsed_from_stderr_match_the_summary(base_config, tmp_path):
    lines, receiver_args = mixed_input()
    config = {
        **base_config,
        "max_concurrency": 4,
        "max_dead_letter_ratio": 1.0,
    }  # dead letters on purpose: no failure threshold
    with Receiver(**receiver_args) as rx:
        result = run_target({**config, "postback_url": rx.url}, lines, tmp_path)
        statuses = [r.status for r in rx.requests]
    assert result.code == 0, result.stderr[-2000:]
    summary = json.loads(Path(base_config["summary_path"]).read_text())
    points = [p for p in metric_points(result.stderr) if p["metric"] in OUR_METRICS]
    sums = counter_sums(points)

    assert sums[("conversions_delivered", "")] == summary["delivered"] == 21
    assert (
        {r: n for (m, r), n in sums.items() if m == "records_skipped"}
        == summary["skipped"]
        == {"duplicate": 1, "no_transaction_id": 1, "not_track": 1, "unmapped_event": 1}
    )
    assert (
        {r: n for (m, r), n in sums.items() if m == "records_dead_lettered"}
        == summary["dead_lettered"]
        == {"http_400": 1, "missing_required_field": 1, "rejected": 2}
    )
    assert sums[("postback_retries", "")] == summary["retries"] == 3
    assert sums[("conversions_in_doubt", "")] == summary["in_doubt"] == 1
    by_class = {r: n for (m, r), n in sums.items() if m == "http_request_count"}
    assert by_class == dict(Counter(status_class(s) for s in statuses))
    assert by_class == {"2xx": 23, "4xx": 1, "5xx": 2, "error": 1}
    assert sum(by_class.values()) == summary["requests"] == len(statuses)

    latency = {
        p["tags"]["quantile"]: p
        for p in points
        if p["metric"] == "http_request_duration" and p["tags"]["window"] == "run"
    }
    assert set(latency) == {"p50", "p95", "max"}
    assert all(
        p["type"] == "timer" and p["tags"]["requests"] == len(statuses) for p in latency.values()
    )
    assert 0 < latency["p50"]["value"] <= latency["p95"]["value"] <= latency["max"]["value"]
    # Aggregated: with progress lines off, each metric and tag set is logged once, at the end.
    keys = [
        (
            p["metric"],
            json.dumps({k: v for k, v in p["tags"].items() if k != "pid"}, sort_keys=True),
        )
        for p in points
    ]
    assert len(keys) == len(set(keys)) < len(statuses)


def test_metrics_every_progress_interval_add_up_to_the_totals(base_config, caplog):
    records = [track(i) for i in range(60)]
    config = {**base_config, "max_concurrency": 2, "progress_interval": 0.2}
    with Receiver(latency=0.05) as rx, caplog.at_level(logging.INFO, logger="singer_sdk.metrics"):
        rx_url = rx.url
        code, _ = run_in_process(
            {**config, "postback_url": rx_url}, singer_lines("orders", records)
        )
        requests = len(rx.requests)
    assert code == 0
    points = [p for p in metric_points(caplog.text) if p["metric"] in OUR_METRICS]
    delivered = [p["value"] for p in points if p["metric"] == "conversions_delivered"]
    assert len(delivered) > 1, "no METRIC line before the end of a run of several intervals"
    assert sum(delivered) == 60
    windows = [
        p
        for p in points
        if p["metric"] == "http_request_duration" and p["tags"]["quantile"] == "p50"
    ]
    interval = [p["tags"]["requests"] for p in windows if p["tags"]["window"] == "interval"]
    (run,) = [p["tags"]["requests"] for p in windows if p["tags"]["window"] == "run"]
    assert len(interval) > 1 and sum(interval) == run == requests == 60
    assert all(p["value"] >= 0.05 * 0.95 for p in windows)  # the receiver's latency, seen


JSON_LOG_CONFIG = """\
version: 1
disable_existing_loggers: false
formatters:
  json:
    (): singer_sdk.logging.StructuredFormatter
handlers:
  stderr:
    class: logging.StreamHandler
    formatter: json
    stream: ext://sys.stderr
root:
  level: INFO
  handlers: [stderr]
"""


def test_json_logs_carry_stream_event_reason_and_message_id(base_config, tmp_path):
    log_config = tmp_path / "logging.yml"
    log_config.write_text(JSON_LOG_CONFIG)
    lines, receiver_args = mixed_input()
    coupon = track(200, orderId={"id": "ORD-42"})  # an order id that is an object: dropped
    lines.insert(-1, json.dumps({"type": "RECORD", "stream": "orders", "record": coupon}))
    config = {**base_config, "max_concurrency": 4, "max_dead_letter_ratio": 1.0}
    with Receiver(**receiver_args) as rx:
        result = run_target(
            {**config, "postback_url": rx.url},
            lines,
            tmp_path,
            env={"SINGER_SDK_LOG_CONFIG": str(log_config)},
        )
    assert result.code == 0, result.stderr[-2000:]
    entries = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert entries, "no JSON log lines"

    def by_reason(reason: str) -> list[dict]:
        return [e for e in entries if e["extra"].get("reason") == reason]

    (mapped,) = by_reason("missing_required_field")
    assert mapped["level"] == "warning" and mapped["stream_name"] == "orders"
    assert (
        mapped["extra"]["event_name"] == "Order Completed"
        and mapped["extra"]["message_id"] == "msg-103"
    )
    assert mapped["extra"]["field"] == "app_id"
    rejected = by_reason("rejected")
    assert sorted(e["extra"]["message_id"] for e in rejected) == ["msg-3", "msg-6"]
    assert {e["extra"]["transaction_id"] for e in rejected} == {"tx-3", "tx-6"}
    assert all(
        e["stream_name"] == "orders" and e["extra"]["event_name"] == "Order Completed"
        for e in rejected
    )
    (http_400,) = by_reason("http_400")
    assert (
        http_400["extra"]["http_status"] == 400 and http_400["extra"]["delivery_key"] == "m:msg-4"
    )
    (in_doubt,) = by_reason("in_doubt")
    assert in_doubt["extra"]["message_id"] == "msg-9"
    (dropped,) = by_reason("dropped_field")
    assert dropped["extra"]["field"] == "order_id" and dropped["extra"]["message_id"] == "msg-200"
    metric_lines = [e for e in entries if e["message"] == "METRIC"]
    delivered = [
        e["metric_info"]["value"]
        for e in metric_lines
        if e["metric_info"]["metric"] == "conversions_delivered"
    ]
    assert sum(delivered) == 22
