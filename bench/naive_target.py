"""The naive reference: one blocking ``requests.get`` per record in ``process_record``.

This is how most API targets are written: a ``RecordSink`` that sends each record as it
arrives and waits for the answer. It maps with target-everflow's own ``Mapper`` and builds the
same URL, so it sends exactly the same postbacks; it uses one keep-alive ``requests.Session``
(no TCP handshake per request, which would make it slower still). No ledger, no retries, no
dead letters: only the request. Run it like the target::

    python bench/naive_target.py --config c.json --input file.singer
"""

from __future__ import annotations

import typing as t

import requests
from singer_sdk.sinks import RecordSink
from singer_sdk.target_base import Target

from target_everflow.adapter.target import TargetEverflow
from target_everflow.delivery.postback import PostbackClient
from target_everflow.mapping import Conversion, Mapper
from target_everflow.settings import CONFIG_SCHEMA, Settings


class NaiveSink(RecordSink):
    def __init__(self, target: NaiveTarget, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(target, *args, **kwargs)
        self.settings = target.settings
        self.mapper = target.everflow_mapper
        self.urls = target.urls
        self.session = target.session

    def process_record(self, record: dict, context: dict) -> None:
        result = self.mapper.map(record, self.stream_name)
        if isinstance(result, Conversion):
            response = self.session.get(
                self.urls.url(result), timeout=self.settings.request_timeout, allow_redirects=False
            )
            response.raise_for_status()


class NaiveTarget(Target):
    name = "target-naive"
    config_jsonschema = CONFIG_SCHEMA
    default_sink_class = NaiveSink
    message_reader_class: t.ClassVar = TargetEverflow.message_reader_class

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = Settings.from_config(self.config)
        self.everflow_mapper = Mapper(self.settings, self.logger)  # (Target.mapper is the SDK's)
        self.urls = PostbackClient(  # only its url(): the naive sink sends with requests.get
            self.settings.postback_url or "https://dry-run.invalid/",
            verification_token=self.settings.verification_token,
            timeout=self.settings.request_timeout,
        )
        self.session = requests.Session()


if __name__ == "__main__":
    NaiveTarget.cli()
