"""The Singer message reader: singer-sdk's msgspec reader, with the standard reader's leniency.

``singer_sdk.contrib.msgspec.MsgSpecReader`` parses a line several times faster than the SDK's
default reader (``json.loads``), with the same result for valid JSON (floats as ``Decimal``,
integers of any size). It is stricter on two things ``json.loads`` accepts and some taps write:
``NaN`` / ``Infinity`` (Python's ``json.dumps`` default) and lone UTF-16 surrogate escapes
(``"\\ud800"``). So a line msgspec refuses is parsed again with the default reader's own
``json.loads``: a record is never refused that the default reader would take, and a line that
is not JSON at all still raises ``InvalidInputLine`` as before.

Without msgspec installed, this is the SDK's default reader.
"""

from __future__ import annotations

from singer_sdk.singerlib.encoding import SimpleSingerReader

try:
    import msgspec
    from singer_sdk.contrib.msgspec import MsgSpecReader
    from singer_sdk.contrib.msgspec import decoder as _decoder
except ImportError:  # pragma: no cover - msgspec is a dependency; this keeps the target usable
    SegmentReader: type[SimpleSingerReader] = SimpleSingerReader
else:

    class SegmentReader(MsgSpecReader):  # type: ignore[no-redef]
        """msgspec first; the standard reader for the rare line msgspec is stricter about."""

        def deserialize_json(self, line: str) -> dict:
            try:
                return _decoder.decode(line)  # type: ignore[no-any-return]
            except msgspec.DecodeError:
                return SimpleSingerReader.deserialize_json(self, line)  # type: ignore[arg-type]


__all__ = ["SegmentReader"]
