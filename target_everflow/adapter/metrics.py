"""The SDK's METRIC lines: the writer ``RunMetrics`` hands its points to."""

from __future__ import annotations

import os
import typing as t

from singer_sdk import metrics as sdk_metrics

if t.TYPE_CHECKING:
    import logging

    from target_everflow.accounting.metrics import Metric, PointWriter


def point_writer(logger: logging.Logger | None = None) -> PointWriter:
    """Writes one point as singer-sdk does (``METRIC: {...}`` on its metrics logger, with the
    SDK's ``pid`` tag), so ``SINGER_SDK_LOG_CONFIG`` and its ``StructuredFormatter`` apply."""
    target = logger or sdk_metrics.get_metrics_logger()

    def write(kind: str, metric: Metric, value: float, tags: dict[str, t.Any]) -> None:
        tags[sdk_metrics.Tag.PID.value] = os.getpid()
        sdk_metrics.log(target, sdk_metrics.Point(kind, metric, value, tags))  # type: ignore[arg-type]  # kind is one of the SDK literals

    return write
