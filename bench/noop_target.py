"""The do-nothing singer-sdk target: the floor the mapping cost is measured against.

Same SDK, same reader class and the same record validation settings as target-everflow (the
reader is taken from ``TargetEverflow.message_reader_class``), a ``BatchSink`` whose
``process_batch`` does nothing. Run it like the target::

    python bench/noop_target.py --config c.json --input file.singer
"""

from __future__ import annotations

import typing as t

from singer_sdk import typing as th
from singer_sdk.sinks import BatchSink
from singer_sdk.target_base import Target

from target_everflow.adapter.target import TargetEverflow


class NoopSink(BatchSink):
    MAX_SIZE_DEFAULT = TargetEverflow.default_sink_class.MAX_SIZE_DEFAULT

    def process_batch(self, context: dict) -> None:
        pass


class NoopTarget(Target):
    name = "target-noop"
    config_jsonschema = th.PropertiesList(th.Property("anything", th.StringType)).to_dict()
    default_sink_class = NoopSink
    message_reader_class: t.ClassVar = TargetEverflow.message_reader_class


if __name__ == "__main__":
    NoopTarget.cli()
