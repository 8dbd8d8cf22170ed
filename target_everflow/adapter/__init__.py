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
}
"""Private singer-sdk names the adapter uses (overrides or reads), each with its reason."""
