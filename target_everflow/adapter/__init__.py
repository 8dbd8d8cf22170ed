"""Everything that touches singer-sdk: the target, its sink, the message reader, the command
line and the METRIC lines. The rest of target_everflow is a plain core that knows nothing of
Singer (tests/test_adapter.py checks that singer_sdk is imported only here).

Public hooks are used wherever the SDK has one: ``Sink.setup()`` (the run opens before the
first record; the sink registers itself), ``get_validator()`` returning None (the sink checks
``validate_records`` and ``key_properties`` itself and dead-letters a bad record), the sink's
``schema`` without date/time formats (the SDK parses no timestamp), ``get_sink()`` /
``sink_exists()``, the reader's own message loop (hooks before and after the SDK handles a
message), a click option callback for ``--check`` and ``print_about`` for ``--about``.

``PRIVATE_SDK_NAMES`` lists every private SDK name the adapter still uses, with why (a test
checks the list against the code).
"""

from __future__ import annotations

PRIVATE_SDK_NAMES: dict[str, str] = {
    "_validate_config": (
        "overridden: the SDK's config errors echo values (secrets too) and refuse numbers that "
        "--config ENV hands over as text; there is no hook to format or pre-convert them"
    ),
    "_config": (
        "read and written in _validate_config: number settings given as text become numbers "
        "before validation, and validation fills in the schema defaults (what the SDK's own "
        "validation does to it)"
    ),
    "_write_state_message": (
        "overridden: a STATE already emitted is not written again (the SDK re-emits the latest "
        "at every drain) and a signal never cuts a STATE line in half; no hook for STATE timing"
    ),
    "_handle_termination": (
        "overridden: SIGTERM/SIGINT stop reading and let the batch in flight settle; the SDK "
        "installs this method as the signal handler and has no hook for signals"
    ),
    "_process_record_message": (
        "overridden: the SDK's per-record steps cost more than the mapping's floor allows "
        "(timestamp parsing that parses nothing walks every record's keys); the override keeps "
        "every step that does something here, in the SDK's order; no hook per record"
    ),
    "_handle_max_record_age": (
        "called after each record, as the SDK's own _process_record_message does: every sink "
        "is drained at least every five minutes"
    ),
    "_get_context": (
        "read in EverflowSink.take, as the SDK's _process_record_message does: the batch "
        "context a record joins (BatchSink starts a batch there)"
    ),
    "_remove_sdc_metadata_from_record": (
        "called in EverflowSink.take, as the SDK's _process_record_message does: _sdc_* "
        "columns are removed before a record is mapped or dead-lettered"
    ),
}
"""Private singer-sdk names the adapter uses (overrides or reads), each with its reason."""
